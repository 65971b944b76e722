//! `isolation = "process"`: an extension's instance in a process of its own, so that a
//! plugin that crashes (a segfault, an abort, an out-of-memory kill, a runaway loop under
//! its CPU bound) fails the calls it was serving and nothing else.
//!
//! - `wire.rs`: the protocol's frames and messages (`docs/plugin-protocol.md`);
//! - `link.rs`: one end of a connection (requests in flight, the writer);
//! - `points.rs`: each extension point's methods on the wire: the host's [`Proxy`] and the
//!   runner's dispatch;
//! - `supervisor.rs`: the host's side: start, restart with backoff, relay;
//! - `runner.rs`: `oh-plugin-runner`, which loads one library with the host's checks.
//!
//! The registry builds a [`Proxy`] where it would build a library's object, so every call
//! still goes through `Meta` (deadline, counters) and nothing above the registry knows.

mod link;
mod points;
pub mod runner;
mod supervisor;
pub mod wire;

pub(crate) use points::Via;
pub use points::{Proxy, SUPPORTED};
pub use supervisor::Supervisor;

use crate::config::{Config, ExtensionConfig, ProcessIsolation};
use plugin_api::{ExtensionPoint, HostServicesObject};
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

/// Whether `point` can run isolated in this host.
pub fn supports(point: ExtensionPoint) -> bool {
    SUPPORTED.contains(&point)
}

/// `oh-plugin-runner`: `OH_PLUGIN_RUNNER`, else beside the running executable (or one
/// directory up: test binaries live in `target/<profile>/deps`).
fn runner_program() -> Result<PathBuf, String> {
    if let Some(p) = crate::env::process(crate::env::OH_PLUGIN_RUNNER) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the host's executable: {e}"))?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    [dir.join("oh-plugin-runner"), dir.join("../oh-plugin-runner")].into_iter().find(|p| p.is_file()).ok_or_else(|| {
        format!(
            "cannot find oh-plugin-runner beside {} (build it with `cargo build -p oh-host`, or set {})",
            exe.display(),
            crate::env::OH_PLUGIN_RUNNER
        )
    })
}

/// The runner's command line: `bwrap` first when the entry is sandboxed, then `prlimit` when
/// it is bounded.
fn argv(p: &ProcessIsolation, state_dir: &Path, plugins_dir: &Path) -> Result<Vec<String>, String> {
    let program = match &p.command {
        Some(command) => command.clone(),
        None => vec![runner_program()?.display().to_string()],
    };
    let mut bounds = Vec::new();
    if let Some(mb) = p.memory_mb {
        bounds.push(format!("--as={}", mb.saturating_mul(1 << 20)));
    }
    if let Some(secs) = p.cpu_seconds {
        // SIGXCPU at the bound (its log says so), SIGKILL a second later if it is caught.
        bounds.push(format!("--cpu={secs}:{}", secs + 1));
    }
    let bounded: Vec<String> = match bounds.is_empty() {
        true => program,
        false => ["prlimit".to_owned()].into_iter().chain(bounds).chain(["--".to_owned()]).chain(program).collect(),
    };
    if !p.sandbox {
        return Ok(bounded);
    }
    sandbox::bwrap::works().map_err(|e| format!("sandbox = true needs bubblewrap: {e}"))?;
    std::fs::create_dir_all(state_dir).map_err(|e| format!("cannot make {}: {e}", state_dir.display()))?;
    let sockets = supervisor::socket_parent().map_err(|e| format!("cannot make a socket directory: {e}"))?;
    let ro = |path: &Path| ["--ro-bind-try".to_owned(), path.display().to_string(), path.display().to_string()];
    // The system read-only, but the places where local sockets live (`/run`, `/tmp`,
    // `/var/tmp`: the database's, Docker's, an SSH agent's) empty; then what the runner
    // needs: the plugins, its socket's directory (connecting needs no write access), the
    // files its command names, and the state directory, writable. No network, no
    // capability.
    let mut jail: Vec<String> = [
        "bwrap",
        "--unshare-user",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/run",
        "--tmpfs",
        "/tmp",
        "--tmpfs",
        "/var/tmp",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    jail.extend(ro(plugins_dir));
    jail.extend(ro(sockets));
    for named in bounded.iter().map(Path::new).filter(|p| p.is_absolute() && p.exists()) {
        jail.extend(ro(named));
    }
    let state = state_dir.display().to_string();
    jail.extend(["--bind".to_owned(), state.clone(), state, "--".to_owned()]);
    Ok(jail.into_iter().chain(bounded).collect())
}

fn log_level() -> &'static str {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::TRACE => "trace",
        LevelFilter::DEBUG => "debug",
        LevelFilter::INFO => "info",
        LevelFilter::WARN => "warn",
        _ => "error",
    }
}

/// Starts the runner of an isolated entry and answers its proxy, the sha256 of the library
/// it loaded ("" for a `command`) and the plugin-api minor it was built against. The error
/// names the entry and says why.
pub fn start(
    e: &ExtensionConfig,
    config: &Config,
    services: HostServicesObject,
    runtime: tokio::runtime::Handle,
) -> Result<(Proxy, Arc<Supervisor>, String, u32), String> {
    let process = e.process.as_ref().ok_or_else(|| format!("{}: not isolated", e.key))?;
    let who = format!("{} ({}::{})", e.key, e.library, e.implementation);
    let argv =
        argv(process, &config.server.state_dir, &config.server.plugins_dir).map_err(|m| format!("{}: {m}", e.key))?;
    let library = process.command.is_none().then(|| wire::LibrarySpec {
        name: e.library.clone(),
        plugins_dir: config.server.plugins_dir.display().to_string(),
        sha256: e.sha256.clone(),
        config: config
            .libraries
            .get(&e.library)
            .and_then(|c| serde_json::from_str(c).ok())
            .unwrap_or_else(|| serde_json::json!({})),
    });
    let start = wire::Start {
        protocol: wire::PROTOCOL,
        point: e.point.key().to_owned(),
        implementation: e.implementation.clone(),
        config: serde_json::from_str(&e.config_json).unwrap_or_else(|_| serde_json::json!({})),
        library,
        app_mode: config.server.app_mode.as_str().to_owned(),
        state_dir: config.server.state_dir.display().to_string(),
        read_only: crate::loader::is_read_only(),
        log_level: log_level().to_owned(),
        tracing: crate::telemetry::enabled(),
        runtime: config.extensions.iter().any(|x| x.point == ExtensionPoint::RUNTIME),
    };
    let spec = supervisor::Spec {
        who,
        key: e.key.clone(),
        library: e.library.clone(),
        argv,
        start,
        start_timeout: e.timeout.max(Duration::from_secs(10)),
    };
    let (runner, ready) = Supervisor::start(spec, services, runtime)?;
    let routes = Arc::new(points::declared_routes(&ready.routes));
    let proxy = Proxy { runner: runner.clone(), routes, manager: Arc::default() };
    if e.point == ExtensionPoint::CONVERSATION_MANAGER {
        runner.on_restart(proxy.restart_hook());
    }
    // A program speaking the protocol itself (`command`) follows the current contract.
    let api_minor = ready.api.split('.').nth(1).and_then(|m| m.parse().ok()).unwrap_or(plugin_api::API_MINOR);
    Ok((proxy, runner, ready.sha256, api_minor))
}
