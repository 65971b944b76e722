//! A conversation's sandbox: an action execution server the plugin started (`spawn`), the one
//! it was given (`url`), or one the remote runtime API runs; how it is reached, and how it
//! ends.
//!
//! A spawned server runs in a PID namespace of its own whose first process dies with the
//! plugin's thread that started it (`sandbox::reaper`), and with its own tmux server
//! (`TMUX_TMPDIR`, in a home of its own outside the workspace): stopping it, or the host dying, ends everything it started, the shells'
//! tmux daemon included. It starts from an empty environment plus an allow-list: the host's
//! secrets never reach it.

use crate::{
    action::Server,
    config::{RuntimeApi, Setup, Source},
    remote,
};
use plugin_sdk::{ErrorCode, PluginError};
use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// The variables of the host's environment a spawned server keeps: how to find programs and
/// speak, never a secret.
const SPAWN_ENV: &[&str] = &["PATH", "LANG", "LC_ALL", "TZ"];

/// Lines of a spawned server's output kept to say why it failed to start.
const TAIL_LINES: usize = 12;

pub(crate) struct Sandbox {
    pub(crate) server: Server,
    /// The workspace as the server's commands see it.
    pub(crate) working_dir: String,
    end: End,
}

enum End {
    Spawned { child: tokio::sync::Mutex<Option<tokio::process::Child>>, tmux: PathBuf },
    Attached,
    Remote { api: RuntimeApi, runtime_id: String, http: reqwest::Client },
}

/// Starts (or finds) the conversation's sandbox and waits until its server answers `/alive`.
pub(crate) async fn start(setup: &Setup, http: &reqwest::Client, id: &str) -> Result<Sandbox, PluginError> {
    let until = Instant::now() + setup.startup_timeout;
    match &setup.source {
        Source::Spawn { argv, root, environment } => spawn(setup, http, id, argv, root, environment, until).await,
        Source::Attach { url, key } => {
            let server = Server::new(url, key.clone(), http.clone());
            wait_alive(&server, until, None).await?;
            Ok(Sandbox { server, working_dir: working_dir(setup, id, "/workspace"), end: End::Attached })
        }
        Source::RuntimeApi(api) => {
            let found = remote::open(api, http, id).await?;
            let sandbox = Sandbox {
                server: Server::new(&found.url, found.session_api_key, http.clone()),
                working_dir: working_dir(setup, id, "/workspace"),
                end: End::Remote { api: api.clone(), runtime_id: found.runtime_id.clone(), http: http.clone() },
            };
            let became = async {
                remote::ready(api, http, &found.runtime_id, until).await?;
                wait_alive(&sandbox.server, until, None).await
            };
            if let Err(e) = became.await {
                sandbox.end(false).await;
                return Err(e);
            }
            Ok(sandbox)
        }
    }
}

/// The workspace as the conversation's server sees it.
fn working_dir(setup: &Setup, id: &str, default: &str) -> String {
    setup.working_dir.as_deref().unwrap_or(default).replace("{conversation_id}", id)
}

/// The workspace directory of a spawned conversation (`{workspace}`).
pub(crate) fn workspace_of(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

async fn spawn(
    setup: &Setup,
    http: &reqwest::Client,
    id: &str,
    argv: &[String],
    root: &Path,
    environment: &std::collections::BTreeMap<String, String>,
    until: Instant,
) -> Result<Sandbox, PluginError> {
    let workspace = workspace_of(root, id);
    // The server's home and its tmux socket's directory: its own, outside the workspace.
    let tmux = root.join(".home").join(id);
    for dir in [&workspace, &tmux] {
        std::fs::create_dir_all(dir)
            .map_err(|e| PluginError::internal(format!("cannot make {}: {e}", dir.display())))?;
    }
    set_private(&tmux);
    let port = free_port()?;
    let key = crate::random_hex(32);
    let workspace_text = workspace.display().to_string();
    let fill = |arg: &String| {
        arg.replace("{port}", &port.to_string())
            .replace("{workspace}", &workspace_text)
            .replace("{session_api_key}", &key)
            .replace("{conversation_id}", id)
    };
    let argv: Vec<String> = argv.iter().map(fill).collect();
    let mut command = match sandbox::reaper::local_reaper() {
        Some(prefix) => {
            let mut c = tokio::process::Command::new("setpriv");
            c.args(["--pdeathsig", "KILL", "--"]).args(prefix).args(&argv);
            c
        }
        None => {
            let mut c = tokio::process::Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    command.env_clear();
    for name in SPAWN_ENV {
        if let Ok(value) = std::env::var(name) {
            command.env(name, value);
        }
    }
    command
        .env("HOME", &tmux)
        .env("SESSION_API_KEY", &key)
        .env("TMUX_TMPDIR", &tmux)
        // The shell starts as the server's user, in the workspace (not `su -` to a home).
        .env("SU_TO_USER", "false")
        .envs(environment)
        .current_dir(&workspace)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // On the library's own thread, which lives as long as the library: the server's
    // `--pdeathsig` follows the thread that started it.
    let started = tokio::spawn(async move { command.spawn() })
        .await
        .map_err(|e| PluginError::internal(format!("cannot start the sandbox's server: {e}")))?;
    let mut child = started.map_err(|e| {
        PluginError::new(ErrorCode::UNAVAILABLE, format!("cannot start the sandbox's server `{}`: {e}", argv[0]))
    })?;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    for out in [
        child.stdout.take().map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child.stderr.take().map(|e| Box::new(e) as _),
    ]
    .into_iter()
    .flatten()
    {
        let tail = tail.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
    }
    let server = Server::new(&format!("http://127.0.0.1:{port}"), Some(key), http.clone());
    let working_dir = working_dir(setup, id, &workspace_text);
    let sandbox =
        Sandbox { server, working_dir, end: End::Spawned { child: tokio::sync::Mutex::new(Some(child)), tmux } };
    let End::Spawned { child, .. } = &sandbox.end else { unreachable!() };
    if let Err(mut e) = wait_alive(&sandbox.server, until, Some(child)).await {
        sandbox.end(true).await;
        let tail: Vec<String> = tail.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
        if !tail.is_empty() {
            e.message = format!("{}; its last output: {}", e.message, tail.join(" | ")).into();
        }
        return Err(e);
    }
    Ok(sandbox)
}

fn set_private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
}

fn free_port() -> Result<u16, PluginError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| PluginError::internal(format!("no free port for the sandbox's server: {e}")))
}

/// Polls `/alive` until the server answers `ok`; a spawned server that exits first is the
/// error.
async fn wait_alive(
    server: &Server,
    until: Instant,
    child: Option<&tokio::sync::Mutex<Option<tokio::process::Child>>>,
) -> Result<(), PluginError> {
    loop {
        if server.alive().await {
            return Ok(());
        }
        if let Some(child) = child {
            let mut guard = child.lock().await;
            if let Some(Ok(Some(status))) = guard.as_mut().map(|c| c.try_wait()) {
                return Err(PluginError::new(
                    ErrorCode::UNAVAILABLE,
                    format!("the sandbox's server exited ({status}) before it answered /alive"),
                ));
            }
        }
        if Instant::now() >= until {
            return Err(PluginError::new(
                ErrorCode::DEADLINE_EXCEEDED,
                format!(
                    "the sandbox's server at {} did not answer /alive in time (startup_timeout_secs)",
                    server.base()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Sandbox {
    /// Ends the sandbox: a spawned server is killed with everything it started; a remote one
    /// paused (`pause`, when its API is set to) or stopped; an attached one is left running.
    pub(crate) async fn end(&self, destroy: bool) {
        match &self.end {
            End::Spawned { child, tmux } => {
                if let Some(mut child) = child.lock().await.take() {
                    // Its process group first (all of it, where no PID namespace holds it),
                    // then the server itself, whose namespace goes with it.
                    if let Some(pid) = child.id() {
                        let _ = tokio::process::Command::new("kill")
                            .args(["-KILL", "--", &format!("-{pid}")])
                            .stderr(Stdio::null())
                            .status()
                            .await;
                    }
                    let _ = child.start_kill();
                    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
                }
                let _ = std::fs::remove_dir_all(tmux);
            }
            End::Attached => {}
            End::Remote { api, runtime_id, http } => {
                if let Err(e) = remote::end(api, http, runtime_id, api.pause_on_close && !destroy).await {
                    tracing::warn!(runtime_id = %runtime_id, error = %e.message, "the remote sandbox did not end");
                }
            }
        }
    }

    /// Whether its server was started per conversation and goes with it.
    pub(crate) fn is_attached(&self) -> bool {
        matches!(self.end, End::Attached)
    }
}
