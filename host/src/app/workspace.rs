//! A conversation's workspace, as the doors see it (the web client's file list, file viewer,
//! Changes tab and uploads). Through the configured `runtime` when there is one; else, for a
//! conversation manager that keeps its own workspaces (plugin-api 1.0's way), the directory
//! its `workspace` method names, reached only through `sandbox::fs` and `sandbox::git`.

use super::App;
use crate::registry::CallError;
use plugin_api::{
    models::{FileEntry, GitChange},
    CallContext, ErrorCode,
};
use sandbox::{
    fs::{Confined, FsError},
    git::GitError,
};
use std::{path::Path, sync::Arc};

/// Why a workspace operation gave no answer.
#[derive(Debug)]
pub enum WorkspaceError {
    /// The path leads out of the workspace.
    Outside(String),
    NotFound,
    /// Larger than the bound (what to say).
    TooLarge(String),
    /// Not a regular file (what to say).
    NotAFile(String),
    /// The workspace is not a git repository, or git could not answer.
    NotARepository,
    /// The runtime failed otherwise.
    Failed(CallError),
}

pub type WorkspaceResult<T> = Result<Option<T>, WorkspaceError>;

impl From<CallError> for WorkspaceError {
    fn from(e: CallError) -> Self {
        match e.error.code {
            ErrorCode::INVALID_ARGUMENT => WorkspaceError::Outside(e.error.message.into_string()),
            ErrorCode::NOT_FOUND => WorkspaceError::NotFound,
            ErrorCode::TOO_LARGE => WorkspaceError::TooLarge(e.error.message.into_string()),
            ErrorCode::NOT_A_FILE => WorkspaceError::NotAFile(e.error.message.into_string()),
            _ => WorkspaceError::Failed(e),
        }
    }
}

impl From<FsError> for WorkspaceError {
    fn from(e: FsError) -> Self {
        match e {
            FsError::Outside(_) => WorkspaceError::Outside(e.to_string()),
            FsError::NotFound(_) => WorkspaceError::NotFound,
            FsError::TooLarge { .. } => WorkspaceError::TooLarge(e.to_string()),
            FsError::NotAFile(_) => WorkspaceError::NotAFile(e.to_string()),
            FsError::Io(path, err) => {
                tracing::warn!(path = %path, error = %err, "workspace file");
                WorkspaceError::NotFound
            }
        }
    }
}

fn git_error(e: GitError) -> WorkspaceError {
    match e {
        GitError::TooLarge(max) => {
            WorkspaceError::TooLarge(format!("git's answer is over {max} bytes; too many changes to show here"))
        }
        GitError::NotARepository => WorkspaceError::NotARepository,
        GitError::Failed(why) => {
            tracing::warn!(error = %why, "git on a workspace failed");
            WorkspaceError::NotARepository
        }
    }
}

/// Filesystem work off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.expect("workspace file work panicked")
}

impl App {
    /// The directory a 1.0-style manager names for the conversation, held open.
    async fn legacy_workspace(&self, ctx: &CallContext, id: &str) -> Option<Arc<Confined>> {
        let path = self.workspace_of(ctx, id).await?;
        blocking(move || Confined::open(&path)).await.ok().map(Arc::new)
    }

    /// The entries of a workspace directory (`""`: its root); `None` without a workspace.
    pub async fn workspace_list(&self, ctx: &CallContext, id: &str, path: &str) -> WorkspaceResult<Vec<FileEntry>> {
        if let Some(answer) = self.registry().workspace_list(ctx.clone(), id, path).await {
            return match answer.map_err(WorkspaceError::from) {
                Ok(entries) => Ok(Some(entries)),
                Err(WorkspaceError::NotFound) => Ok(None),
                Err(e) => Err(e),
            };
        }
        let Some(ws) = self.legacy_workspace(ctx, id).await else { return Ok(None) };
        let dir = ws.relative(path)?;
        Ok(Some(
            blocking(move || {
                ws.list(&dir)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| FileEntry { path: dir.join(&e.name).display().to_string(), name: e.name, dir: e.dir })
                    .collect()
            })
            .await,
        ))
    }

    /// A workspace file's bytes (at most `max_bytes`); `None` without a workspace.
    pub async fn workspace_read(
        &self,
        ctx: &CallContext,
        id: &str,
        path: &str,
        max_bytes: u64,
    ) -> WorkspaceResult<Vec<u8>> {
        if let Some(answer) = self.registry().workspace_read(ctx.clone(), id, path, max_bytes).await {
            return Ok(Some(answer?));
        }
        let Some(ws) = self.legacy_workspace(ctx, id).await else { return Ok(None) };
        let rel = ws.relative(path)?;
        Ok(Some(blocking(move || ws.read(&rel, max_bytes)).await?))
    }

    /// Writes a file into the workspace; `None` without a workspace.
    pub async fn workspace_write(
        &self,
        ctx: &CallContext,
        id: &str,
        path: &str,
        content: Vec<u8>,
    ) -> WorkspaceResult<()> {
        if let Some(answer) = self.registry().workspace_write(ctx.clone(), id, path, &content).await {
            return Ok(Some(answer?));
        }
        let Some(ws) = self.legacy_workspace(ctx, id).await else { return Ok(None) };
        let rel = ws.relative(path)?;
        Ok(Some(blocking(move || ws.write(&rel, &content)).await?))
    }

    /// What changed since the last commit; `NotARepository` without a workspace or git.
    pub async fn workspace_changes(
        &self,
        ctx: &CallContext,
        id: &str,
        max_output: usize,
    ) -> Result<Vec<GitChange>, WorkspaceError> {
        if let Some(answer) = self.registry().workspace_changes(ctx.clone(), id).await {
            return answer.map_err(|e| match WorkspaceError::from(e) {
                WorkspaceError::NotFound => WorkspaceError::NotARepository,
                other => other,
            });
        }
        let ws = self.legacy_workspace(ctx, id).await.ok_or(WorkspaceError::NotARepository)?;
        let changes = sandbox::git::changes(ws.root(), max_output).await.map_err(git_error)?;
        Ok(changes.into_iter().map(|(status, path)| GitChange { status, path }).collect())
    }

    /// A file as of the last commit (`None`: not committed), and the workspace's answer for
    /// what it is now (`None`: absent or not a file); `NotARepository` without a workspace.
    pub async fn workspace_diff(
        &self,
        ctx: &CallContext,
        id: &str,
        path: &str,
        max_bytes: u64,
    ) -> Result<(Option<Vec<u8>>, Option<Vec<u8>>), WorkspaceError> {
        let now = match self.workspace_read(ctx, id, path, max_bytes).await {
            Ok(Some(bytes)) => Some(bytes),
            Ok(None) => return Err(WorkspaceError::NotARepository),
            Err(WorkspaceError::NotFound | WorkspaceError::NotAFile(_)) => None,
            Err(e) => return Err(e),
        };
        if let Some(answer) = self.registry().workspace_original(ctx.clone(), id, path, max_bytes).await {
            return match answer.map_err(WorkspaceError::from) {
                Ok(then) => Ok((then, now)),
                Err(e @ WorkspaceError::TooLarge(_)) => Err(e),
                Err(_) => Ok((None, now)),
            };
        }
        let ws = self.legacy_workspace(ctx, id).await.ok_or(WorkspaceError::NotARepository)?;
        let rel = ws.relative(path)?;
        let then = sandbox::git::original(ws.root(), Path::new(&rel), max_bytes as usize).await.map_err(git_error)?;
        Ok((then, now))
    }
}
