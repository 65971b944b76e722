//! The profile (`plugins.toml`): parsed, expanded and validated in one pass that reports every
//! problem at once, before any port is bound.
//!
//! Each problem names the file, the key and the fix. Paths in the profile are relative to the
//! profile's own directory; `~` is the user's home.

use crate::env;
use plugin_api::ExtensionPoint;
use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};
use toml::{Table, Value};

/// `[server] app_mode` (or `APP_MODE`): the one definition, `seed_env`'s.
pub use seed_env::AppMode;

/// The validated `[server]` table.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub app_mode: AppMode,
    pub bind: SocketAddr,
    pub plugins_dir: PathBuf,
    pub state_dir: PathBuf,
    /// Default deadline of one plugin call.
    pub call_timeout: Duration,
    /// How long shutdown waits for in-flight requests and then for each plugin.
    pub shutdown_timeout: Duration,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Conversations older than this are left out of searches (OpenHands' default: 10 days).
    pub conversation_max_age: Duration,
    /// Where `/internal/*` is served (loopback by default); `None` when set to `"off"`.
    pub admin_bind: Option<SocketAddr>,
    /// The deadline for a request's headers, which is also how long a keep-alive connection
    /// may sit idle.
    pub header_read_timeout: Duration,
    /// Open connections at most, per listener.
    pub max_connections: usize,
    /// The largest request head (request line and headers) accepted; 431 beyond.
    pub max_header_bytes: usize,
    /// The longest a client may take to send a request's body, once its headers are in.
    pub body_read_timeout: Duration,
    /// Open connections at most from one client address (0: no bound).
    pub max_connections_per_client: usize,
    /// Stored conversations at most per user (0: no bound).
    pub max_conversations_per_user: usize,
    /// The git providers' API addresses (`/api/user/*`).
    pub git: crate::git::ApiUrls,
    /// What the host reads of its environment (read once, with the profile).
    pub env: env::HostEnv,
}

/// One `[extensions.*]` entry, validated and with `${VAR}` expanded.
#[derive(Clone, Debug)]
pub struct ExtensionConfig {
    pub point: ExtensionPoint,
    /// Where it came from in the profile, e.g. `extensions.routes[1]`, for messages.
    pub key: String,
    pub library: String,
    pub implementation: String,
    /// The `config` table as JSON, handed to the plugin.
    pub config_json: String,
    pub sha256: Option<String>,
    pub timeout: Duration,
    /// False when this is a bundled default standing in for an unnamed extension point.
    pub explicit: bool,
    /// `None`: in the host's process; `Some`: in a runner process of its own.
    pub process: Option<ProcessIsolation>,
}

/// `isolation = "process"`: the entry runs in a process of its own (`host/src/isolation`),
/// which may die without taking the host down.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProcessIsolation {
    /// A program that speaks `docs/plugin-protocol.md` itself (argv); `None`: the bundled
    /// `oh-plugin-runner` loading `library`.
    pub command: Option<Vec<String>>,
    /// The runner's address-space bound (`prlimit --as`), in MiB.
    pub memory_mb: Option<u64>,
    /// The runner's CPU-time bound (`prlimit --cpu`), in seconds: a runaway loop is killed
    /// and the runner restarted.
    pub cpu_seconds: Option<u64>,
    /// Run the runner in bubblewrap: no network, the system read-only, only the state
    /// directory writable.
    pub sandbox: bool,
}

/// The whole validated profile.
#[derive(Clone, Debug)]
pub struct Config {
    pub path: PathBuf,
    pub server: ServerConfig,
    pub extensions: Vec<ExtensionConfig>,
    /// `[libraries.<name>]` tables as JSON (runtime sizing), by library name.
    pub libraries: BTreeMap<String, String>,
}

/// Every problem found in a profile.
#[derive(Debug)]
pub struct ConfigErrors {
    pub path: PathBuf,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(f, "{}: {n} problem{}", self.path.display(), if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The bundled OSS default of each extension point that has one.
pub fn oss_default(point: ExtensionPoint) -> Option<(&'static str, &'static str)> {
    match point {
        ExtensionPoint::SETTINGS_STORE => Some(("file_stores", "FileSettingsStore")),
        ExtensionPoint::SECRETS_STORE => Some(("file_stores", "FileSecretsStore")),
        ExtensionPoint::CONVERSATION_STORE => Some(("file_stores", "FileConversationStore")),
        ExtensionPoint::CONVERSATION_MANAGER => Some(("standalone_manager", "StandaloneConversationManager")),
        ExtensionPoint::USER_AUTH => Some(("default_auth", "DefaultUserAuth")),
        ExtensionPoint::MONITORING => Some(("log_monitoring", "LogMonitoringListener")),
        _ => None,
    }
}

/// Which profile to read: `--config`, else `OPENHANDS_PLUGINS_TOML`, else `./plugins.toml`.
pub fn profile_path(cli: Option<&Path>, lookup: env::Lookup<'_>) -> Result<PathBuf, String> {
    if let Some(path) = cli.map(Path::to_path_buf).or_else(|| lookup(env::OPENHANDS_PLUGINS_TOML).map(PathBuf::from)) {
        return Ok(path);
    }
    let Some(class) = lookup(env::OPENHANDS_CONFIG_CLS).filter(|v| !v.trim().is_empty()) else {
        return Ok(PathBuf::from("plugins.toml"));
    };
    // Where the bundled profiles are: a checkout (./, ./examples/) or the image (/etc/oh-host/).
    let bundled = |candidates: &[&str]| {
        let found = candidates.iter().map(PathBuf::from).find(|p| p.is_file());
        found.unwrap_or_else(|| PathBuf::from(candidates[0]))
    };
    let path = match seed_env::config_cls(&class)
        .map_err(|e| format!("environment variable {}: {e}", env::OPENHANDS_CONFIG_CLS))?
    {
        seed_env::ConfigCls::Profile(path) => PathBuf::from(path),
        seed_env::ConfigCls::Default => bundled(&["plugins.toml", "/etc/oh-host/plugins.toml"]),
        seed_env::ConfigCls::Saas => bundled(&["examples/plugins.saas.toml", "/etc/oh-host/plugins.saas.toml"]),
    };
    tracing::info!(
        "{}={class}: serving the profile {} (--config or {} choose one directly)",
        env::OPENHANDS_CONFIG_CLS,
        path.display(),
        env::OPENHANDS_PLUGINS_TOML
    );
    Ok(path)
}

/// Reads and validates a profile, with variables from the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let fail = |p: String| ConfigErrors { path: path.to_path_buf(), problems: vec![p] };
    let text = std::fs::read(path).map_err(|e| {
        fail(format!(
            "cannot read the profile: {e} (create it, or point --config / {} at one)",
            env::OPENHANDS_PLUGINS_TOML
        ))
    })?;
    let text = String::from_utf8(text).map_err(|_| fail("the profile is not UTF-8 text".to_owned()))?;
    parse(path, &text, &env::process)
}

const SERVER_KEYS: &[&str] = &[
    "app_mode",
    "bind",
    "plugins_dir",
    "state_dir",
    "call_timeout_ms",
    "shutdown_timeout_ms",
    "max_body_bytes",
    "conversation_max_age_seconds",
    "admin_bind",
    "header_read_timeout_ms",
    "max_connections",
    "max_header_bytes",
    "body_read_timeout_ms",
    "max_connections_per_client",
    "max_conversations_per_user",
    "github_api_url",
    "gitlab_api_url",
    "bitbucket_api_url",
];
const ENTRY_KEYS: &[&str] = &[
    "library",
    "implementation",
    "config",
    "sha256",
    "enabled_if_env",
    "timeout_ms",
    "isolation",
    "command",
    "memory_mb",
    "cpu_seconds",
    "sandbox",
];

/// Parses profile text; `lookup` reads variables (the environment, or a map in tests).
pub fn parse(path: &Path, text: &str, lookup: env::Lookup<'_>) -> Result<Config, ConfigErrors> {
    match parse_lenient(path, text, lookup) {
        (Some(config), problems) if problems.is_empty() => Ok(config),
        (_, problems) => Err(ConfigErrors { path: path.to_path_buf(), problems }),
    }
}

/// Reads the profile at `path` as far as it goes: the problems, and the configuration of what
/// could be read (entries with problems left out), so `check` can go on to the libraries and
/// report every problem of every kind in one run. `None` when not even `[server]` could be
/// read.
pub fn load_lenient(path: &Path) -> (Option<Config>, Vec<String>) {
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => parse_lenient(path, &text, &env::process),
            Err(_) => (None, vec![format!("{}: the profile is not UTF-8 text", path.display())]),
        },
        Err(e) => (
            None,
            vec![format!(
                "{}: cannot read the profile: {e} (create it, or point --config / {} at one)",
                path.display(),
                env::OPENHANDS_PLUGINS_TOML
            )],
        ),
    }
}

/// `parse`, keeping what could be read (see `load_lenient`).
pub fn parse_lenient(path: &Path, text: &str, lookup: env::Lookup<'_>) -> (Option<Config>, Vec<String>) {
    let mut p = Problems { file: path.display().to_string(), list: Vec::new() };
    let root: Table = match text.parse::<Table>() {
        Ok(t) => t,
        Err(e) => {
            p.list.push(format!("{}: not valid TOML: {}", p.file, e.to_string().trim()));
            return (None, p.list);
        }
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();

    for key in root.keys() {
        if !["server", "extensions", "libraries"].contains(&key.as_str()) {
            p.push(key, "unknown table; the profile has [server], [extensions.*] and [libraries.*]");
        }
    }

    let empty = Table::new();
    let server = table_at(&root, "server", &mut p).unwrap_or(&empty);
    let server = parse_server(server, &base, lookup, &mut p);

    let mut extensions = Vec::new();
    if let Some(ext) = table_at(&root, "extensions", &mut p) {
        for (name, value) in ext {
            let Some(point) = ExtensionPoint::from_key(name) else {
                let known: Vec<_> = ExtensionPoint::ALL.iter().map(|p| p.key()).collect();
                p.push(&format!("extensions.{name}"), &format!("unknown extension point; known: {}", known.join(", ")));
                continue;
            };
            let multi = matches!(point, ExtensionPoint::MONITORING | ExtensionPoint::ROUTES);
            match value {
                Value::Table(t) => {
                    let key = format!("extensions.{name}");
                    extensions.extend(parse_entry(point, &key, t, server.as_ref(), lookup, &mut p));
                }
                Value::Array(items) if multi => {
                    for (i, item) in items.iter().enumerate() {
                        let key = format!("extensions.{name}[{i}]");
                        match item {
                            Value::Table(t) => {
                                extensions.extend(parse_entry(point, &key, t, server.as_ref(), lookup, &mut p))
                            }
                            _ => p.push(&key, "must be a table ([[extensions.…]])"),
                        }
                    }
                }
                Value::Array(_) => p.push(
                    &format!("extensions.{name}"),
                    "takes one implementation: write [extensions.NAME], not [[extensions.NAME]]",
                ),
                _ => p.push(&format!("extensions.{name}"), "must be a table"),
            }
        }
    }

    let mut libraries = BTreeMap::new();
    if let Some(libs) = table_at(&root, "libraries", &mut p) {
        for (name, value) in libs {
            let key = format!("libraries.{name}");
            match value {
                Value::Table(t) => {
                    let mut t = Value::Table(t.clone());
                    expand_value(&mut t, &key, lookup, &mut p);
                    libraries.insert(name.clone(), toml_to_json(&t).to_string());
                }
                _ => p.push(&key, "must be a table"),
            }
        }
    }

    // Bundled defaults for every extension point left unnamed ("graceful degradation").
    if let Some(server) = &server {
        for point in ExtensionPoint::ALL {
            if extensions.iter().any(|e| e.point == point) {
                continue;
            }
            if let Some((library, implementation)) = oss_default(point) {
                extensions.push(ExtensionConfig {
                    point,
                    key: format!("extensions.{} (bundled default)", point.key()),
                    library: library.to_owned(),
                    implementation: implementation.to_owned(),
                    config_json: "{}".to_owned(),
                    sha256: None,
                    timeout: server.call_timeout,
                    explicit: false,
                    process: None,
                });
            }
        }
    }

    // One library, one pin.
    let mut pins: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    for e in &extensions {
        if let Some(pin) = &e.sha256 {
            if let Some((other_key, other_pin)) = pins.insert(&e.library, (&e.key, pin)) {
                if other_pin != pin {
                    p.list.push(format!(
                        "{}: {}.sha256 differs from {other_key}.sha256 for the same library `{}`; pin one hash",
                        p.file, e.key, e.library
                    ));
                }
            }
        }
    }

    let config = server.map(|server| Config { path: path.to_path_buf(), server, extensions, libraries });
    (config, p.list)
}

struct Problems {
    file: String,
    list: Vec<String>,
}

impl Problems {
    fn push(&mut self, key: &str, message: &str) {
        self.list.push(format!("{}: {key}: {message}", self.file));
    }
}

fn table_at<'a>(root: &'a Table, key: &str, p: &mut Problems) -> Option<&'a Table> {
    match root.get(key) {
        None => None,
        Some(Value::Table(t)) => Some(t),
        Some(_) => {
            p.push(key, "must be a table");
            None
        }
    }
}

/// The mode: the profile's `app_mode`, else `APP_MODE` (the document's variable), else OSS. A
/// profile and an `APP_MODE` that disagree are an error naming both.
fn app_mode(profile: Option<String>, lookup: env::Lookup<'_>, p: &mut Problems) -> AppMode {
    let variable = lookup(env::APP_MODE).filter(|v| !v.trim().is_empty());
    let by_env = variable.as_deref().and_then(|v| match seed_env::app_mode(v) {
        Ok(mode) => Some(mode),
        Err(e) => {
            p.push("server.app_mode", &format!("environment variable {}: {e}", env::APP_MODE));
            None
        }
    });
    let Some(profile) = profile else {
        return by_env.unwrap_or(AppMode::Oss);
    };
    let Ok(by_profile) = seed_env::app_mode(&profile) else {
        p.push("server.app_mode", &format!("`{profile}` is not a mode; use \"oss\" or \"saas\""));
        return AppMode::Oss;
    };
    if let Some(by_env) = by_env.filter(|m| *m != by_profile) {
        p.push(
            "server.app_mode",
            &format!(
                "the profile says \"{}\" but {}={} says {}: unset {} or make the two agree",
                by_profile.as_str(),
                env::APP_MODE,
                variable.unwrap_or_default(),
                by_env.as_str(),
                env::APP_MODE
            ),
        );
    }
    by_profile
}

fn parse_server(t: &Table, base: &Path, lookup: env::Lookup<'_>, p: &mut Problems) -> Option<ServerConfig> {
    for key in t.keys() {
        if !SERVER_KEYS.contains(&key.as_str()) {
            p.push(&format!("server.{key}"), &format!("unknown key; known: {}", SERVER_KEYS.join(", ")));
        }
    }
    let string = |key: &str, default: &str, p: &mut Problems| -> String {
        match t.get(key) {
            None => default.to_owned(),
            Some(Value::String(s)) => expand(s, &format!("server.{key}"), lookup, p),
            Some(_) => {
                p.push(&format!("server.{key}"), "must be a string");
                default.to_owned()
            }
        }
    };
    let int = |key: &str, default: i64, min: i64, p: &mut Problems| -> i64 {
        match t.get(key) {
            None => default,
            Some(Value::Integer(n)) if *n >= min => *n,
            Some(Value::String(s)) => {
                let s = expand(s, &format!("server.{key}"), lookup, p);
                s.parse::<i64>().ok().filter(|n| *n >= min).unwrap_or_else(|| {
                    p.push(&format!("server.{key}"), &format!("`{s}` is not an integer >= {min}"));
                    default
                })
            }
            Some(_) => {
                p.push(&format!("server.{key}"), &format!("must be an integer >= {min}"));
                default
            }
        }
    };
    let app_mode = app_mode(t.get("app_mode").is_some().then(|| string("app_mode", "oss", p)), lookup, p);
    let bind_text = string("bind", "127.0.0.1:3000", p);
    let bind = bind_text.parse::<SocketAddr>().unwrap_or_else(|_| {
        p.push("server.bind", &format!("`{bind_text}` is not an address; write it as \"127.0.0.1:3000\""));
        SocketAddr::from(([127, 0, 0, 1], 3000))
    });
    let admin_text = string("admin_bind", "127.0.0.1:9464", p);
    let admin_bind = if admin_text == "off" {
        None
    } else {
        match admin_text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                p.push(
                    "server.admin_bind",
                    &format!("`{admin_text}` is not an address; write \"127.0.0.1:9464\", or \"off\" to serve no /internal routes"),
                );
                None
            }
        }
    };
    let defaults = crate::git::ApiUrls::default();
    let api_url = |key: &str, default: &str, p: &mut Problems| -> String {
        let url = string(key, default, p);
        if !(url.starts_with("https://") || url.starts_with("http://")) || url.contains(char::is_whitespace) {
            p.push(&format!("server.{key}"), &format!("`{url}` is not an http(s) URL; write it as \"{default}\""));
        }
        url.trim_end_matches('/').to_owned()
    };
    let git = crate::git::ApiUrls {
        github: api_url("github_api_url", &defaults.github, p),
        gitlab: api_url("gitlab_api_url", &defaults.gitlab, p),
        bitbucket: api_url("bitbucket_api_url", &defaults.bitbucket, p),
    };
    let plugins_dir = resolve(base, &string("plugins_dir", "target/plugins", p), lookup);
    let state_dir = resolve(base, &string("state_dir", "~/.openhands-host", p), lookup);
    let mut env_problems = Vec::new();
    let mut host_env = env::HostEnv::read(lookup, &mut env_problems);
    host_env.lite_llm_api_url = seed_env::lite_llm_api_url(
        host_env.lite_llm_api_url.as_deref(),
        host_env.lite_llm_api_key.as_deref(),
        app_mode == AppMode::Saas,
    );
    p.list.extend(env_problems.into_iter().map(|e| format!("{}: {e}", p.file)));
    let server = ServerConfig {
        app_mode,
        bind,
        plugins_dir,
        state_dir,
        call_timeout: Duration::from_millis(int("call_timeout_ms", 10_000, 1, p) as u64),
        shutdown_timeout: Duration::from_millis(int("shutdown_timeout_ms", 5_000, 0, p) as u64),
        max_body_bytes: int("max_body_bytes", 4 * 1024 * 1024, 1024, p) as usize,
        conversation_max_age: Duration::from_secs(int("conversation_max_age_seconds", 864_000, 1, p) as u64),
        admin_bind,
        header_read_timeout: Duration::from_millis(int("header_read_timeout_ms", 10_000, 100, p) as u64),
        max_connections: int("max_connections", crate::server::default_max_connections() as i64, 1, p) as usize,
        max_header_bytes: int("max_header_bytes", 16 * 1024, 1024, p) as usize,
        body_read_timeout: Duration::from_millis(int("body_read_timeout_ms", 30_000, 100, p) as u64),
        max_connections_per_client: int("max_connections_per_client", 256, 0, p) as usize,
        max_conversations_per_user: int("max_conversations_per_user", 5_000, 0, p) as usize,
        git,
        env: host_env,
    };
    // With problems, the server's values fall back to their defaults: the problems are
    // reported, and `check` still goes on to the libraries with them.
    Some(server)
}

fn parse_entry(
    point: ExtensionPoint,
    key: &str,
    t: &Table,
    server: Option<&ServerConfig>,
    lookup: env::Lookup<'_>,
    p: &mut Problems,
) -> Option<ExtensionConfig> {
    for k in t.keys() {
        if !ENTRY_KEYS.contains(&k.as_str()) {
            p.push(&format!("{key}.{k}"), &format!("unknown key; an entry has {}", ENTRY_KEYS.join(", ")));
        }
    }
    // Conditional loading, as the enterprise app does: skip the entry (and its variables)
    // unless the named variable is set, not empty, and not a "no" (`0`, `false`, `no`, `off`:
    // `ENABLE_BILLING=false` turns billing off, as it does in OpenHands).
    match t.get("enabled_if_env") {
        None | Some(Value::String(_)) => {}
        Some(_) => p.push(&format!("{key}.enabled_if_env"), "must be the name of an environment variable"),
    }
    if let Some(Value::String(var)) = t.get("enabled_if_env") {
        if !seed_env::switched_on(lookup(var).as_deref()) {
            tracing::debug!(entry = key, var = %var, "skipped: enabled_if_env variable not set");
            return None;
        }
    }
    let before = p.list.len();
    let text = |k: &str, p: &mut Problems| -> Option<String> {
        match t.get(k) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(expand(s, &format!("{key}.{k}"), lookup, p)),
            Some(_) => {
                p.push(&format!("{key}.{k}"), "must be a non-empty string");
                None
            }
            None => None,
        }
    };
    let process = isolation(point, key, t, p);
    let command = process.as_ref().and_then(|i| i.command.as_ref());
    // A command names no library file: the entry is called after its program.
    let library = text("library", p).or_else(|| command.and_then(|c| command_label(c)));
    let implementation = text("implementation", p);
    if library.is_none() && !t.contains_key("library") && command.is_none() {
        p.push(
            &format!("{key}.library"),
            "missing; name the library (lib<name>.so in plugins_dir), e.g. library = \"file_stores\"",
        );
    }
    if implementation.is_none() && !t.contains_key("implementation") {
        p.push(
            &format!("{key}.implementation"),
            "missing; name the implementation, e.g. implementation = \"FileSettingsStore\"",
        );
    }
    if let Some(lib) = &library {
        if !lib.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            p.push(
                &format!("{key}.library"),
                &format!("`{lib}` is not a library name; write the name only (file_stores), not a path or file name"),
            );
        }
    }
    let sha256 = text("sha256", p).map(|s| s.to_ascii_lowercase());
    if let Some(pin) = &sha256 {
        if pin.len() != 64 || !pin.chars().all(|c| c.is_ascii_hexdigit()) {
            p.push(
                &format!("{key}.sha256"),
                "must be 64 hex digits (see `oh-host plugins` for the hash of each library)",
            );
        }
    }
    let mut config = match t.get("config") {
        None => Value::Table(Table::new()),
        Some(v @ Value::Table(_)) => v.clone(),
        Some(_) => {
            p.push(&format!("{key}.config"), "must be a table, e.g. config = { root = \"/var/lib/oh\" }");
            Value::Table(Table::new())
        }
    };
    expand_value(&mut config, &format!("{key}.config"), lookup, p);
    let timeout = match t.get("timeout_ms") {
        None => server.map(|s| s.call_timeout).unwrap_or(Duration::from_secs(10)),
        Some(Value::Integer(n)) if *n > 0 => Duration::from_millis(*n as u64),
        Some(_) => {
            p.push(&format!("{key}.timeout_ms"), "must be an integer > 0 (milliseconds)");
            Duration::from_secs(10)
        }
    };
    if p.list.len() != before {
        return None;
    }
    Some(ExtensionConfig {
        point,
        key: key.to_owned(),
        library: library?,
        implementation: implementation?,
        config_json: toml_to_json(&config).to_string(),
        sha256,
        timeout,
        explicit: true,
        process,
    })
}

/// `isolation`, `command`, `memory_mb`, `cpu_seconds` and `sandbox` of an entry.
fn isolation(point: ExtensionPoint, key: &str, t: &Table, p: &mut Problems) -> Option<ProcessIsolation> {
    let process = match t.get("isolation") {
        None => false,
        Some(Value::String(s)) if s == "none" => false,
        Some(Value::String(s)) if s == "process" => true,
        Some(_) => {
            p.push(&format!("{key}.isolation"), "must be \"none\" (in the host's process) or \"process\"");
            false
        }
    };
    let process_only = ["command", "memory_mb", "cpu_seconds", "sandbox"];
    if !process {
        for k in process_only.iter().filter(|k| t.contains_key(**k)) {
            p.push(&format!("{key}.{k}"), "applies only with isolation = \"process\"; add it or remove this key");
        }
        return None;
    }
    if !crate::isolation::supports(point) {
        p.push(
            &format!("{key}.isolation"),
            &format!(
                "{point} cannot run isolated yet (supported: {}); remove the key to run it in process",
                crate::isolation::SUPPORTED.iter().map(|p| p.key()).collect::<Vec<_>>().join(", ")
            ),
        );
    }
    let command = match t.get("command") {
        None => None,
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(|v| v.as_str().is_some_and(|s| !s.is_empty())) => {
            Some(a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        }
        Some(_) => {
            p.push(
                &format!("{key}.command"),
                "must be a non-empty array of strings, e.g. command = [\"python3\", \"store.py\"]",
            );
            None
        }
    };
    let mut bound = |k: &str| match t.get(k) {
        None => None,
        Some(Value::Integer(n)) if *n > 0 => Some(*n as u64),
        Some(_) => {
            p.push(&format!("{key}.{k}"), "must be an integer > 0");
            None
        }
    };
    let (memory_mb, cpu_seconds) = (bound("memory_mb"), bound("cpu_seconds"));
    let sandbox = match t.get("sandbox") {
        None => false,
        Some(Value::Boolean(b)) => *b,
        Some(_) => {
            p.push(&format!("{key}.sandbox"), "must be true or false");
            false
        }
    };
    Some(ProcessIsolation { command, memory_mb, cpu_seconds, sandbox })
}

/// What a `command` entry is called in messages: its last argument's file stem
/// (`python3 store.py` → `store`).
fn command_label(command: &[String]) -> Option<String> {
    let last = command.last()?;
    let stem = Path::new(last).file_stem()?.to_str()?;
    Some(stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect())
}

mod values;
use values::{expand, expand_value, resolve, toml_to_json};

#[cfg(test)]
mod tests;
