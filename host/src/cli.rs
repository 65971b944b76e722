//! The command line: `oh-host [serve]`, `oh-host check`, `oh-host plugins`.

use crate::{config, loader, registry::Registry};
use plugin_api::ExtensionPoint;
use std::{path::PathBuf, process::ExitCode, sync::Arc};

const USAGE: &str = "\
usage: oh-host [COMMAND] [--config FILE]

commands:
  serve     load the plugins and serve HTTP (the default)
  check     validate the profile and the plugins it names, print every problem, exit
  plugins   list every library in the plugins directory: file, ABI version, sha256, implementations
  migrate   apply pending database migrations of the configured stores, then exit
  rotate-keys
            re-encrypt every stored secret with the current master key (resumable, safe while serving)

options:
  --config FILE   the profile (default: $OPENHANDS_PLUGINS_TOML, else ./plugins.toml)
  --dir DIR       for `plugins`: the directory to list (default: the profile's plugins_dir)
  -h, --help      this text
  -V, --version   the version
";

struct Args {
    command: String,
    config: Option<PathBuf>,
    dir: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { command: "serve".to_owned(), config: None, dir: None };
    let mut it = std::env::args().skip(1);
    let mut command_seen = false;
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--config" | "-c" => args.config = Some(it.next().ok_or("--config needs a file")?.into()),
            "--dir" => args.dir = Some(it.next().ok_or("--dir needs a directory")?.into()),
            "-h" | "--help" => args.command = "help".to_owned(),
            "-V" | "--version" => args.command = "version".to_owned(),
            s if s.starts_with("--config=") => args.config = Some(s["--config=".len()..].into()),
            "serve" | "check" | "plugins" | "migrate" | "rotate-keys" if !command_seen => {
                args.command = arg;
                command_seen = true;
            }
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    Ok(args)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env(crate::env::RUST_LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

pub fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("oh-host: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match args.command.as_str() {
        "help" => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        "version" => {
            println!(
                "oh-host {} (plugin-api {}.{})",
                env!("CARGO_PKG_VERSION"),
                plugin_api::API_MAJOR,
                plugin_api::API_MINOR
            );
            ExitCode::SUCCESS
        }
        "check" => {
            init_logging();
            check(&args)
        }
        "plugins" => {
            init_logging();
            plugins(&args)
        }
        "migrate" => {
            init_logging();
            admin(&args, "migrate")
        }
        "rotate-keys" => {
            init_logging();
            admin(&args, "rotate_keys")
        }
        _ => {
            init_logging();
            serve(&args)
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("oh-host").build().expect("tokio runtime")
}

/// Loads the profile and builds every instance: everything `serve` and `check` do before
/// binding. Problems are printed; `None` then.
fn load(args: &Args, rt: &tokio::runtime::Runtime) -> Option<(PathBuf, config::Config, Arc<Registry>)> {
    let path = config::profile_path(args.config.as_deref(), &crate::env::process);
    let config = config::load(&path).map_err(|e| eprint!("oh-host: {e}")).ok()?;
    let registry =
        Registry::build(&config, rt.handle().clone()).map_err(|e| eprint!("oh-host: {}: {e}", path.display())).ok()?;
    if let Err(problems) = crate::http::plugin_routes::collect(&registry) {
        eprintln!("oh-host: {}: cannot mount the plugins' routes:", path.display());
        for p in problems {
            eprintln!("  - {p}");
        }
        return None;
    }
    Some((path, config, registry))
}

fn serve(args: &Args) -> ExitCode {
    let rt = runtime();
    let Some((path, config, registry)) = load(args, &rt) else {
        return ExitCode::FAILURE;
    };
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.server.bind)
            .await
            .map_err(|e| format!("cannot listen on {} (server.bind in {}): {e}", config.server.bind, path.display()))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(profile = %path.display(), "oh-host listening on http://{addr}");
        crate::serve(&config, registry, listener, crate::shutdown_signal()).await.map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oh-host: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(args: &Args) -> ExitCode {
    let rt = runtime();
    match load(args, &rt) {
        Some((path, config, registry)) => {
            println!("{}: OK", path.display());
            for m in registry.metas() {
                println!(
                    "  {:<22} {}::{} ({} ms timeout)",
                    m.point.key(),
                    m.library,
                    m.implementation,
                    m.timeout.as_millis()
                );
            }
            rt.block_on(registry.shutdown(config.server.shutdown_timeout));
            ExitCode::SUCCESS
        }
        None => ExitCode::FAILURE,
    }
}

/// `oh-host migrate` / `oh-host rotate-keys`: the command on every configured store.
fn admin(args: &Args, command: &str) -> ExitCode {
    let rt = runtime();
    let Some((path, config, registry)) = load(args, &rt) else {
        return ExitCode::FAILURE;
    };
    let results = rt.block_on(registry.admin(command, &serde_json::json!({})));
    let mut failed = false;
    println!("{}: {command}", path.display());
    for (store, result) in results {
        match result {
            Ok(Some(report)) => println!("  {store}: {report}"),
            Ok(None) => println!("  {store}: nothing to do (this store has no `{command}`)"),
            Err(e) => {
                failed = true;
                println!("  {store}: FAILED: {e}");
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

fn plugins(args: &Args) -> ExitCode {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            let path = config::profile_path(args.config.as_deref(), &crate::env::process);
            match config::load(&path) {
                Ok(c) => c.server.plugins_dir,
                Err(e) => {
                    eprintln!("{e}(use --dir DIR to list a directory without a valid profile)");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let libraries = match loader::scan(&dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("oh-host: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "plugins in {} (this host speaks plugin-api {}.{})",
        dir.display(),
        plugin_api::API_MAJOR,
        plugin_api::API_MINOR
    );
    if libraries.is_empty() {
        println!("  (none; run `make plugins`)");
    }
    let mut failed = false;
    for (name, lib) in libraries {
        match lib {
            Ok(lib) => {
                println!("\n{name}  {}", lib.path.display());
                println!("  version {}  plugin-api {}  {}", lib.version, lib.api_version(), lib.api.rustc.as_str());
                println!("  sha256  {}", lib.sha256);
                for point in ExtensionPoint::ALL {
                    for i in lib.implementations.iter().filter(|i| i.point == point) {
                        println!("  {:<22} {:<26} {}", point.key(), i.name, i.description);
                    }
                }
            }
            Err(e) => {
                failed = true;
                println!("\n{name}  REFUSED: {e}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
