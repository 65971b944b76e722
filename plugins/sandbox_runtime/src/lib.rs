//! The bundled runtimes (`[extensions.runtime]`): `BubblewrapRuntime` runs each of the
//! agent's commands in a bubblewrap sandbox, `LocalRuntime` as a shell of the host's user (no
//! isolation; SaaS mode refuses it). Either way each conversation has a workspace under
//! `workspace_root`, a shell whose command goes on between calls, and files reached only
//! through `sandbox::fs` (no link leads out) and git only through `sandbox::git`.

mod config;
mod running;
mod shell;
#[cfg(test)]
mod tests;
pub mod workspace;

use config::{RuntimeConfig, Setup};
use plugin_sdk::{
    models::{CommandRequest, CommandResult, FileEntry, GitChange, WorkspaceInfo, WorkspaceRequest},
    CallContext, ErrorCode, PluginError, Registry, Services,
};
use sandbox::{fs::FsError, git::GitError};
use shell::Shell;
use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};
use workspace::Workspace;

/// The most `git status` may print for the Changes tab.
const MAX_GIT_OUTPUT: usize = 4 << 20;

/// One conversation's workspace and shell.
struct Conversation {
    ws: Workspace,
    shell: tokio::sync::Mutex<Shell>,
    /// Bumped to stop what runs: a `run` in progress answers at once.
    stop: tokio::sync::watch::Sender<u64>,
}

/// A runtime instance: its setup and the conversations it has open.
pub struct SandboxRuntime {
    setup: Setup,
    open: Mutex<HashMap<String, Arc<Conversation>>>,
}

fn fs_error(e: FsError) -> PluginError {
    let code = match &e {
        FsError::Outside(_) => ErrorCode::INVALID_ARGUMENT,
        FsError::NotFound(_) => ErrorCode::NOT_FOUND,
        FsError::NotAFile(_) => ErrorCode::NOT_A_FILE,
        FsError::TooLarge { .. } => ErrorCode::TOO_LARGE,
        FsError::Io(..) => ErrorCode::INTERNAL,
    };
    PluginError::new(code, e.to_string())
}

fn git_error(e: GitError) -> PluginError {
    match e {
        GitError::NotARepository => PluginError::not_found("Not a git repository"),
        GitError::TooLarge(max) => PluginError::new(
            ErrorCode::TOO_LARGE,
            format!("git's answer is over {max} bytes; too many changes to show here"),
        ),
        GitError::Failed(why) => {
            tracing::warn!(error = %why, "git on a workspace failed");
            PluginError::not_found("Not a git repository")
        }
    }
}

fn valid_id(id: &str) -> Result<(), PluginError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(PluginError::invalid_argument("conversation_id is malformed"));
    }
    Ok(())
}

/// Filesystem work off the runtime's async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, PluginError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| PluginError::internal(format!("workspace file work failed: {e}")))
}

impl SandboxRuntime {
    fn new(setup: Setup) -> Self {
        SandboxRuntime { setup, open: Mutex::new(HashMap::new()) }
    }

    fn conversations(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Conversation>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn opened(&self, ws: Workspace, id: &str) -> Arc<Conversation> {
        let fresh = Arc::new(Conversation {
            ws,
            shell: tokio::sync::Mutex::new(Shell::default()),
            stop: tokio::sync::watch::channel(0).0,
        });
        self.conversations().entry(id.to_owned()).or_insert(fresh).clone()
    }

    /// The conversation's workspace when it exists (never made here: only `open` makes one).
    fn existing(&self, id: &str) -> Result<Arc<Conversation>, PluginError> {
        valid_id(id)?;
        if let Some(c) = self.conversations().get(id) {
            return Ok(c.clone());
        }
        if !self.setup.root.join(id).is_dir() {
            return Err(PluginError::not_found(format!("conversation {id} has no workspace")));
        }
        let ws = Workspace::open(&self.setup.root, id, self.setup.isolation.clone())
            .map_err(|e| PluginError::internal(format!("workspace of {id}: {e}")))?;
        Ok(self.opened(ws, id))
    }

    /// Ends what runs in a conversation's shell; whether anything was.
    async fn stop(c: &Conversation) -> bool {
        c.stop.send_modify(|n| *n += 1);
        let mut shell = c.shell.lock().await;
        shell.kill().await
    }
}

impl plugin_sdk::Runtime for SandboxRuntime {
    async fn open(&self, _ctx: CallContext, request: WorkspaceRequest) -> Result<WorkspaceInfo, PluginError> {
        let id = request.conversation_id.as_str();
        valid_id(id)?;
        let fresh = !self.setup.root.join(id).join(".git").exists();
        let ws = Workspace::open(&self.setup.root, id, self.setup.isolation.clone())
            .map_err(|e| PluginError::internal(format!("cannot make the workspace of {id}: {e}")))?;
        let mut clone_error = None;
        if fresh {
            let clone = request.repository.as_ref().map(|r| {
                workspace::Clone::of(
                    &r.repository,
                    &r.provider,
                    r.token.as_deref(),
                    r.host.as_deref(),
                    r.branch.as_deref(),
                    &self.setup.git_http_hosts,
                )
            });
            if let Err(why) = ws.prepare(clone.as_ref()).await {
                let text = match &clone {
                    Some(c) => format!("cannot clone {}: {why}", c.url),
                    None => format!("cannot make the workspace a git repository: {why}"),
                };
                tracing::warn!(conversation_id = %id, error = %text, "workspace not prepared");
                if clone.is_some() {
                    let _ = ws.prepare(None).await;
                }
                clone_error = Some(text);
            }
        }
        let root = ws.root().display().to_string();
        self.opened(ws, id);
        Ok(WorkspaceInfo { root, clone_error })
    }

    async fn run(&self, _ctx: CallContext, id: String, request: CommandRequest) -> Result<CommandResult, PluginError> {
        let c = self.existing(&id)?;
        let mut stopped = c.stop.subscribe();
        let stop = async move {
            let _ = stopped.changed().await;
        };
        let wait = request
            .timeout_secs
            .filter(|t| t.is_finite() && *t >= 0.0)
            .map(|t| Duration::from_secs_f64(t.min(86_400.0)));
        let max_output =
            if request.max_output_chars == 0 { self.setup.max_output_chars } else { request.max_output_chars };
        let mut shell = c.shell.lock().await;
        let bounds = shell::Bounds { limit: self.setup.command_timeout, max_output };
        let step = shell.step(&c.ws, &request.command, request.is_input, wait, bounds, stop).await;
        Ok(CommandResult { exit_code: step.exit_code, output: step.output, done: step.done })
    }

    async fn interrupt(&self, _ctx: CallContext, id: String) -> Result<bool, PluginError> {
        let Some(c) = self.conversations().get(&id).cloned() else { return Ok(false) };
        Ok(Self::stop(&c).await)
    }

    async fn list_files(&self, _ctx: CallContext, id: String, path: String) -> Result<Vec<FileEntry>, PluginError> {
        let c = self.existing(&id)?;
        blocking(move || {
            let files = c.ws.files();
            let dir = files.relative(&path).map_err(fs_error)?;
            let entries = files.list(&dir).map_err(fs_error)?;
            Ok(entries
                .into_iter()
                .map(|e| FileEntry { path: dir.join(&e.name).display().to_string(), name: e.name, dir: e.dir })
                .collect())
        })
        .await?
    }

    async fn read_file(
        &self,
        _ctx: CallContext,
        id: String,
        path: String,
        max_bytes: u64,
    ) -> Result<Vec<u8>, PluginError> {
        let c = self.existing(&id)?;
        blocking(move || {
            let files = c.ws.files();
            let rel = files.relative(&path).map_err(fs_error)?;
            files.read(&rel, max_bytes).map_err(fs_error)
        })
        .await?
    }

    async fn write_file(
        &self,
        _ctx: CallContext,
        id: String,
        path: String,
        content: Vec<u8>,
    ) -> Result<(), PluginError> {
        let c = self.existing(&id)?;
        blocking(move || {
            let files = c.ws.files();
            let rel = files.relative(&path).map_err(fs_error)?;
            files.write(&rel, &content).map_err(fs_error)
        })
        .await?
    }

    async fn git_changes(&self, _ctx: CallContext, id: String) -> Result<Vec<GitChange>, PluginError> {
        let c = self.existing(&id)?;
        let changes = sandbox::git::changes(c.ws.root(), MAX_GIT_OUTPUT).await.map_err(git_error)?;
        Ok(changes.into_iter().map(|(status, path)| GitChange { status, path }).collect())
    }

    async fn git_original(
        &self,
        _ctx: CallContext,
        id: String,
        path: String,
        max_bytes: u64,
    ) -> Result<Option<Vec<u8>>, PluginError> {
        let c = self.existing(&id)?;
        let rel = c.ws.files().relative(&path).map_err(fs_error)?;
        sandbox::git::original(c.ws.root(), Path::new(&rel), max_bytes as usize).await.map_err(git_error)
    }

    async fn close(&self, _ctx: CallContext, id: String) -> Result<(), PluginError> {
        let c = self.conversations().remove(&id);
        if let Some(c) = c {
            Self::stop(&c).await;
        }
        Ok(())
    }

    async fn destroy(&self, ctx: CallContext, id: String) -> Result<bool, PluginError> {
        valid_id(&id)?;
        plugin_sdk::Runtime::close(self, ctx, id.clone()).await?;
        let dir = self.setup.root.join(&id);
        if !dir.is_dir() {
            return Ok(false);
        }
        // `remove_dir_all` does not follow the links the agent left in it.
        blocking(move || std::fs::remove_dir_all(&dir))
            .await?
            .map_err(|e| PluginError::internal(format!("cannot remove the workspace of {id}: {e}")))?;
        Ok(true)
    }

    async fn health(&self) -> Result<String, PluginError> {
        let open = self.conversations().len();
        Ok(format!("{open} workspace{} open under {}", if open == 1 { "" } else { "s" }, self.setup.root.display()))
    }

    async fn shutdown(&self) {
        let all: Vec<Arc<Conversation>> = self.conversations().drain().map(|(_, c)| c).collect();
        for c in all {
            Self::stop(&c).await;
        }
    }
}

fn build(services: &Services, setup: Result<Setup, PluginError>) -> Result<SandboxRuntime, PluginError> {
    let _ = services;
    setup.map(SandboxRuntime::new)
}

pub fn register(r: &mut Registry) {
    r.runtime(
        "BubblewrapRuntime",
        "each command in a bubblewrap sandbox: no network, the system read-only, bounded CPU, memory, processes and disk",
        |config, services| {
            let setup = RuntimeConfig::bubblewrap(config, services.app_mode(), services.state_dir());
            build(&services, setup)
        },
    );
    r.runtime(
        "LocalRuntime",
        "a shell of the host's user in the conversation's workspace, no isolation (not in SaaS mode)",
        |config, services| {
            let setup = RuntimeConfig::local(config, services.app_mode(), services.state_dir());
            build(&services, setup)
        },
    );
}

plugin_sdk::export_plugin!(register);
