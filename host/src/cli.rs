//! The command line: `oh-host [serve]`, `check`, `plugins`, `migrate`, `rotate-keys`,
//! `webhooks`, `help`.
//!
//! Errors here are the end of the line: each is printed once, as a sentence that names the
//! file, the key and the fix, and the process exits non-zero.

use crate::{
    config, env, loader,
    registry::{Registry, StoreOperation},
};
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use plugin_api::ExtensionPoint;
use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

/// `println!` for the commands. A reader that went away (`oh-host plugins | head -1`) ends
/// the command quietly, as it ends any Unix tool, where `println!` would panic.
macro_rules! outln {
    ($($arg:tt)*) => { write_or_leave(&mut std::io::stdout(), format_args!("{}\n", format_args!($($arg)*))) };
}

/// `eprintln!`, and `eprint!` (`errs!`), the same way.
macro_rules! errln {
    ($($arg:tt)*) => { write_or_leave(&mut std::io::stderr(), format_args!("{}\n", format_args!($($arg)*))) };
}
macro_rules! errs {
    ($($arg:tt)*) => { write_or_leave(&mut std::io::stderr(), format_args!($($arg)*)) };
}

/// Writes, or exits as SIGPIPE would end the process (status 141, what a shell shows for it)
/// when nobody reads any more. Another error leaves nothing to report it with.
fn write_or_leave(to: &mut dyn std::io::Write, text: std::fmt::Arguments<'_>) {
    if let Err(e) = to.write_fmt(text) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
    }
}

const ABOUT: &str = "An OpenHands-compatible agent server whose every part is a plugin library.";

const AFTER_HELP: &str = "\
The profile is --config FILE, else $OPENHANDS_PLUGINS_TOML, else the one $OPENHANDS_CONFIG_CLS
names (OpenHands' ServerConfig or SaaSServerConfig, or a path), else ./plugins.toml.
Logs go to stderr; RUST_LOG sets what is logged (default `info`; e.g. RUST_LOG=debug, or
RUST_LOG=info,oh_host=debug). docs/configuration.md lists every setting and variable.";

#[derive(Parser)]
#[command(name = "oh-host", about = ABOUT, after_help = AFTER_HELP, disable_help_subcommand = false)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The profile (default: $OPENHANDS_PLUGINS_TOML, else ./plugins.toml).
    #[arg(short, long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen on this address instead of the profile's `[server] bind` (serve only).
    #[arg(long, global = true, value_name = "ADDR")]
    bind: Option<SocketAddr>,
    /// Serve the operators' routes (`/internal/*`) on this address instead of the profile's
    /// `[server] admin_bind`; `off` serves them nowhere (serve only). A second instance on one
    /// machine needs both this and `--bind`.
    #[arg(long, global = true, value_name = "ADDR|off")]
    admin_bind: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Load the plugins and serve HTTP and socket.io (the default command).
    Serve,
    /// Validate the profile and the plugins it names, and check each one's health.
    ///
    /// Loads every plugin the profile names and asks each instance for its health (a database
    /// that does not exist is found here); prints every problem and exits non-zero if there is
    /// one. Binds nothing.
    Check,
    /// List the libraries in the plugins directory.
    ///
    /// For each: file, plugin-api version, sha256, and the implementations it offers.
    /// Libraries the loader refuses are listed with the reason, and the exit code is non-zero.
    Plugins {
        /// The directory to list (default: the profile's plugins_dir).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Apply the pending database migrations of the configured stores, then exit.
    Migrate,
    /// Re-encrypt every stored secret with the current master key.
    ///
    /// The current key is OH_MASTER_KEY (else JWT_SECRET); the old one must be listed in
    /// OH_PREVIOUS_MASTER_KEYS. Works in batches for a few seconds and reports what remains:
    /// run it until `remaining` is 0. Resumable and safe while hosts are serving.
    RotateKeys,
    /// Reload the profile in the running server, without a restart (as SIGHUP does).
    ///
    /// The server re-reads the profile it started with, builds the entries that changed
    /// (a library file replaced in place counts), checks them, and switches to them; entries
    /// left as they were keep their instances. Prints what changed, or every problem (the
    /// server then goes on as it was) and exits non-zero. Talks to `[server] admin_bind` of
    /// the profile, or --admin.
    Reload {
        /// The admin listener to ask (default: the profile's admin_bind).
        #[arg(long, value_name = "URL")]
        admin: Option<String>,
    },
    /// The integrations' webhook dead letters, on a running server (its admin listener).
    ///
    /// `list` shows the deliveries that failed every attempt; `replay ID` puts one back in
    /// the queue with fresh attempts. Talks to `[server] admin_bind` of the profile, or --admin.
    Webhooks {
        #[command(subcommand)]
        action: WebhookAction,
        /// The admin listener to ask (default: the profile's admin_bind), e.g. http://127.0.0.1:9464.
        #[arg(long, value_name = "URL", global = true)]
        admin: Option<String>,
    },
    /// Sign-in sessions (saas_auth with Keycloak), on a running server.
    Sessions {
        #[command(subcommand)]
        action: SessionAction,
        /// The admin listener to ask (default: the profile's admin_bind), e.g. http://127.0.0.1:9464.
        #[arg(long, value_name = "URL", global = true)]
        admin: Option<String>,
    },
}

#[derive(Subcommand)]
enum SessionAction {
    /// End every session of a user, on every host (their cookies stop working at once).
    Revoke {
        /// The user id (Keycloak's `sub`).
        user: String,
    },
}

#[derive(Subcommand)]
enum WebhookAction {
    /// List the dead letters.
    List,
    /// Queue a dead letter again.
    Replay {
        /// Its id, from `list`.
        id: i64,
    },
}

fn version() -> String {
    format!("{} (plugin-api {}.{})", env!("CARGO_PKG_VERSION"), plugin_api::API_MAJOR, plugin_api::API_MINOR)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env(env::RUST_LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    // A line that cannot be written is dropped: with its internal errors on, the subscriber
    // reports the failure with `eprintln!`, which panics when stderr is a closed pipe (a log
    // shipper restarted, `oh-host | head`) and so took the whole server down with its agents.
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(crate::logging::line).log_internal_errors(false);
    match env::process(env::LOG_JSON).map(|v| seed_env::flag(&v)) {
        Some(Ok(true)) => {
            let _ = builder.with_ansi(false).event_format(crate::logging::Json).try_init();
        }
        json => {
            let _ = builder.with_ansi(std::io::stderr().is_terminal()).try_init();
            if let Some(Err(e)) = json {
                tracing::warn!("{}: {e}; the log is written as plain lines", env::LOG_JSON);
            }
        }
    }
}

pub fn main() -> ExitCode {
    // Leaked once: clap keeps the version as a `&'static str`.
    let version: &'static str = Box::leak(version().into_boxed_str());
    let matches = Cli::command().version(version).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_logging();
    match cli.command.as_ref().unwrap_or(&Command::Serve) {
        Command::Serve => serve(&cli),
        Command::Check => check(&cli),
        Command::Plugins { dir } => plugins(&cli, dir.as_ref()),
        Command::Migrate => admin(&cli, StoreOperation::Migrate),
        Command::RotateKeys => admin(&cli, StoreOperation::RotateKeys),
        Command::Webhooks { action, admin } => webhooks(&cli, action, admin.as_deref()),
        Command::Reload { admin } => reload(&cli, admin.as_deref()),
        Command::Sessions { action: SessionAction::Revoke { user }, admin } => revoke(&cli, user, admin.as_deref()),
    }
}

/// `oh-host sessions revoke USER`.
fn revoke(cli: &Cli, user: &str, admin: Option<&str>) -> ExitCode {
    let base = match admin_base(cli, admin) {
        Ok(base) => base,
        Err(code) => return code,
    };
    let url = format!("{base}/internal/sessions/revoke");
    let (status, body) =
        match ask_admin(&base, reqwest::Method::POST, &url, Some(&serde_json::json!({ "user_id": user }))) {
            Ok(answer) => answer,
            Err(code) => return code,
        };
    if status.as_u16() == 404 {
        errln!("oh-host: {base} keeps no sign-in sessions: they come with saas_auth's SaasAuthRoutes and Keycloak configured");
        return ExitCode::FAILURE;
    }
    if !status.is_success() {
        errln!("oh-host: {}", body["error"].as_str().or(body["message"].as_str()).unwrap_or(status.as_str()));
        return ExitCode::FAILURE;
    }
    outln!("ended {} session(s) of {user}", body["sessions_ended"]);
    ExitCode::SUCCESS
}

/// The profile's path (`--config`, `OPENHANDS_PLUGINS_TOML`, `OPENHANDS_CONFIG_CLS`); a
/// class name this server does not know is reported.
fn profile(cli: &Cli) -> Result<PathBuf, ExitCode> {
    config::profile_path(cli.config.as_deref(), &env::process).map_err(|e| {
        errln!("oh-host: {e}");
        ExitCode::FAILURE
    })
}

/// The running server's admin listener: `--admin`, else the profile's `admin_bind`.
fn admin_base(cli: &Cli, admin: Option<&str>) -> Result<String, ExitCode> {
    if let Some(url) = admin {
        return Ok(url.trim_end_matches('/').to_owned());
    }
    let path = profile(cli)?;
    // Only `[server]` is needed: a profile being edited may not load as a whole.
    let (config, problems) = config::load_lenient(&path);
    match config.and_then(|c| c.server.admin_bind) {
        Some(addr) => Ok(format!("http://{addr}")),
        None => {
            errln!(
                "oh-host: {}: no admin listener to ask ([server] admin_bind is \"off\", or the profile does not read: {}); pass --admin URL",
                path.display(),
                problems.join("; ")
            );
            Err(ExitCode::FAILURE)
        }
    }
}

/// One request to the running server's admin listener: its status and JSON body.
fn ask_admin(
    base: &str,
    method: reqwest::Method,
    url: &str,
    body: Option<&serde_json::Value>,
) -> Result<(reqwest::StatusCode, serde_json::Value), ExitCode> {
    let answer = runtime().block_on(async {
        let mut request = reqwest::Client::new().request(method, url);
        if let Some(body) = body {
            request = request.json(body);
        }
        let r = request.send().await?;
        let status = r.status();
        Ok::<_, reqwest::Error>((status, r.json::<serde_json::Value>().await.unwrap_or_default()))
    });
    answer.map_err(|e| {
        errln!("oh-host: cannot reach the admin listener at {base} ({e}); is the server running? (--admin URL)");
        ExitCode::FAILURE
    })
}

/// `oh-host reload`: asks the running server to reload its profile and prints what changed.
fn reload(cli: &Cli, admin: Option<&str>) -> ExitCode {
    let base = match admin_base(cli, admin) {
        Ok(base) => base,
        Err(code) => return code,
    };
    let (status, body) = match ask_admin(&base, reqwest::Method::POST, &format!("{base}/internal/reload"), None) {
        Ok(answer) => answer,
        Err(code) => return code,
    };
    if !status.is_success() {
        errln!("oh-host: {}", body["error"].as_str().unwrap_or(status.as_str()));
        for p in body["problems"].as_array().into_iter().flatten() {
            errln!("  - {}", p.as_str().unwrap_or_default());
        }
        return ExitCode::FAILURE;
    }
    outln!("reloaded: generation {}", body["generation"]);
    for what in ["added", "removed", "replaced", "unchanged"] {
        let list: Vec<&str> = body[what].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
        outln!("  {what:<9} {}", if list.is_empty() { "-".to_owned() } else { list.join(", ") });
    }
    ExitCode::SUCCESS
}

/// `oh-host webhooks list|replay ID`: asks the running server's admin listener.
fn webhooks(cli: &Cli, action: &WebhookAction, admin: Option<&str>) -> ExitCode {
    let base = match admin_base(cli, admin) {
        Ok(base) => base,
        Err(code) => return code,
    };
    let (method, url) = match action {
        WebhookAction::List => (reqwest::Method::GET, format!("{base}/internal/webhooks/dead-letters")),
        WebhookAction::Replay { id } => (reqwest::Method::POST, format!("{base}/internal/webhooks/{id}/replay")),
    };
    let (status, body) = match ask_admin(&base, method, &url, None) {
        Ok(answer) => answer,
        Err(code) => return code,
    };
    let ours = body["error"].as_str().is_some_and(|e| e.starts_with("no dead letter"));
    if status.as_u16() == 404 && !ours {
        errln!("oh-host: {base} serves no webhooks: load the integrations plugin ([[extensions.routes]] library = \"integrations\")");
        return ExitCode::FAILURE;
    }
    if !status.is_success() {
        errln!("oh-host: {}", body["error"].as_str().unwrap_or(status.as_str()));
        return ExitCode::FAILURE;
    }
    match action {
        WebhookAction::List => {
            let letters = body["dead_letters"].as_array().cloned().unwrap_or_default();
            if letters.is_empty() {
                outln!("no dead letters");
            }
            for l in letters {
                outln!(
                    "{}\t{}\t{}\t{}\tattempts {}\treceived {}\t{}",
                    l["id"],
                    l["source"].as_str().unwrap_or(""),
                    l["delivery_id"].as_str().unwrap_or(""),
                    l["event"].as_str().unwrap_or(""),
                    l["attempts"],
                    l["received_at"].as_str().unwrap_or(""),
                    l["last_error"].as_str().unwrap_or("")
                );
            }
        }
        WebhookAction::Replay { id } => outln!("delivery {id} queued again"),
    }
    ExitCode::SUCCESS
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("oh-host").build().expect("tokio runtime")
}

/// Loads the profile and builds every instance: everything `serve` and `check` do before
/// binding. Problems are printed; `None` then.
fn load(cli: &Cli, rt: &tokio::runtime::Runtime) -> Option<(PathBuf, config::Config, Arc<Registry>)> {
    let path = profile(cli).ok()?;
    let mut config = config::load(&path).map_err(|e| errs!("oh-host: {e}")).ok()?;
    if let Some(bind) = cli.bind {
        config.server.bind = bind;
    }
    match cli.admin_bind.as_deref() {
        None => {}
        Some("off") => config.server.admin_bind = None,
        Some(text) => match text.parse() {
            Ok(addr) => config.server.admin_bind = Some(addr),
            Err(e) => {
                errln!("oh-host: --admin-bind `{text}`: {e} (an address like 127.0.0.1:9465, or off)");
                return None;
            }
        },
    }
    let registry =
        Registry::build(&config, rt.handle().clone()).map_err(|e| errs!("oh-host: {}: {e}", path.display())).ok()?;
    if let Err(problems) = crate::http::plugin_routes::collect(&registry) {
        errln!("oh-host: {}: cannot mount the plugins' routes:", path.display());
        for p in problems {
            errln!("  - {p}");
        }
        return None;
    }
    Some((path, config, registry))
}

fn serve(cli: &Cli) -> ExitCode {
    let rt = runtime();
    let Some((path, config, registry)) = load(cli, &rt) else {
        return ExitCode::FAILURE;
    };
    if let Err(e) = crate::telemetry::init(
        config.server.env.otel_endpoint.as_deref(),
        &config.server.env.otel_service_name,
        config.server.env.otel_protocol.as_deref(),
    ) {
        errln!("oh-host: {e}");
        return ExitCode::FAILURE;
    }
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.server.bind).await.map_err(|e| {
            format!("cannot listen on {} (server.bind in {}, or --bind): {e}", config.server.bind, path.display())
        })?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        crate::reload::catch_hangups();
        let admin = match config.server.admin_bind {
            Some(bind) => {
                let admin = tokio::net::TcpListener::bind(bind)
                    .await
                    .map_err(|e| format!("cannot listen on {bind} (server.admin_bind in {}): {e}", path.display()))?;
                let admin_addr = admin.local_addr().map_err(|e| e.to_string())?;
                tracing::info!("operators' routes (/internal/*) on http://{admin_addr}");
                Some(admin)
            }
            None => None,
        };
        tracing::info!(
            profile = %path.display(),
            state_dir = %config.server.state_dir.display(),
            mode = config.server.app_mode.as_str(),
            "oh-host {} listening on http://{addr}",
            env!("CARGO_PKG_VERSION")
        );
        match &config.server.env.frontend_directory {
            Some(dir) => tracing::info!("web client: {} served at http://{addr}/", dir.display()),
            None => tracing::info!(
                "no web client: `make frontend` puts OpenHands' build in ./{}, or set FRONTEND_DIRECTORY",
                env::DEFAULT_FRONTEND_DIRECTORY
            ),
        }
        for m in registry.metas() {
            tracing::info!("  {:<22} {}::{}", m.point.key(), m.library, m.implementation);
        }
        let listeners = crate::Listeners { public: listener, admin };
        crate::logging::serving();
        crate::serve(&config, registry, listeners, crate::shutdown_signal()).await.map_err(|e| e.to_string())
    });
    crate::logging::flush(std::time::Duration::from_secs(2));
    crate::telemetry::shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            errln!("oh-host: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Loads everything, then asks every instance for its health: a database that does not
/// exist, a directory that cannot be written, are found here rather than at the first request.
/// Every problem of every kind is reported in one run: the profile's (unknown keys, unset
/// variables), the libraries' and instances' (missing, refused, failing), the routes'
/// (overlaps), each naming the file, the key and the fix.
fn check(cli: &Cli) -> ExitCode {
    // Plugins built from here on write nothing: they are read and probed only.
    loader::set_read_only();
    let rt = runtime();
    let path = match profile(cli) {
        Ok(path) => path,
        Err(code) => return code,
    };
    let (config, mut problems) = config::load_lenient(&path);
    let mut registry = None;
    if let Some(config) = &config {
        match Registry::build(config, rt.handle().clone()) {
            Ok(built) => {
                if let Err(overlaps) = crate::http::plugin_routes::collect(&built) {
                    problems.extend(overlaps);
                }
                registry = Some(built);
            }
            Err(e) => {
                problems.extend(e.problems.iter().map(|p| format!("{}: {p}", path.display())));
                let declared = e.routes.iter().map(|(i, origin, route)| (*i, origin.clone(), route));
                if let Err(overlaps) = crate::http::plugin_routes::collect_declared(declared) {
                    problems.extend(overlaps);
                }
            }
        }
    }
    if !problems.is_empty() {
        let n = problems.len();
        errln!("oh-host: {}: {n} problem{}", path.display(), if n == 1 { "" } else { "s" });
        for p in &problems {
            errln!("  - {p}");
        }
        if let (Some(registry), Some(config)) = (&registry, &config) {
            rt.block_on(registry.shutdown(config.server.shutdown_timeout));
        }
        return ExitCode::FAILURE;
    }
    let (Some(registry), Some(config)) = (registry, config) else { return ExitCode::FAILURE };
    let health = rt.block_on(registry.health());
    let failed = health.iter().filter(|(_, h)| h.is_err()).count();
    outln!("{}: {}", path.display(), if failed == 0 { "OK" } else { "FAILED" });
    for (m, h) in &health {
        let state = match h {
            Ok(detail) => format!("ok: {detail}"),
            Err(reason) => format!("FAILED: {reason}"),
        };
        outln!(
            "  {:<22} {}::{} ({} ms timeout) {state}",
            m.point.key(),
            m.library,
            m.implementation,
            m.timeout.as_millis()
        );
    }
    rt.block_on(registry.shutdown(config.server.shutdown_timeout));
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        errln!("oh-host: {failed} instance(s) are not healthy; see above");
        ExitCode::FAILURE
    }
}

/// `oh-host migrate` / `oh-host rotate-keys`: the command on every configured store.
fn admin(cli: &Cli, op: StoreOperation) -> ExitCode {
    let command = op.method();
    let rt = runtime();
    let Some((path, config, registry)) = load(cli, &rt) else {
        return ExitCode::FAILURE;
    };
    let results = rt.block_on(registry.operate(op));
    let mut failed = false;
    outln!("{}: {command}", path.display());
    for (store, result) in results {
        match result {
            Ok(Some(report)) => outln!("  {store}: {report}"),
            Ok(None) => outln!("  {store}: nothing to do (this store has no `{command}`)"),
            Err(e) => {
                failed = true;
                outln!("  {store}: FAILED: {e}");
            }
        }
    }
    rt.block_on(registry.shutdown(config.server.shutdown_timeout));
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn plugins(cli: &Cli, dir: Option<&PathBuf>) -> ExitCode {
    let dir = match dir {
        Some(d) => d.clone(),
        None => {
            let Ok(path) = profile(cli) else { return ExitCode::FAILURE };
            match config::load(&path) {
                Ok(c) => c.server.plugins_dir,
                Err(e) => {
                    errln!("{e}(use --dir DIR to list a directory without a valid profile)");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let libraries = match loader::scan(&dir) {
        Ok(l) => l,
        Err(e) => {
            errln!("oh-host: {e}");
            return ExitCode::FAILURE;
        }
    };
    outln!(
        "plugins in {} (this host speaks plugin-api {}.{})",
        dir.display(),
        plugin_api::API_MAJOR,
        plugin_api::API_MINOR
    );
    if libraries.is_empty() {
        outln!("  (none; run `make plugins`)");
    }
    let mut failed = false;
    for (name, lib) in libraries {
        match lib {
            Ok(lib) => {
                outln!("\n{name}  {}", lib.path.display());
                outln!("  version {}  plugin-api {}  {}", lib.version, lib.api_version(), lib.api.rustc.as_str());
                outln!("  sha256  {}", lib.sha256);
                for point in ExtensionPoint::ALL {
                    for i in lib.implementations.iter().filter(|i| i.point == point) {
                        outln!("  {:<22} {:<26} {}", point.key(), i.name, i.description);
                    }
                }
            }
            Err(e) => {
                failed = true;
                outln!("\n{name}  REFUSED: {e}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
