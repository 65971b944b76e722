//! `OpenHandsRuntime` (`[extensions.runtime]`): the agent's tools in OpenHands' own sandbox
//! server, its action execution server (`openhands.runtime.action_execution_server`), one
//! per conversation: a command started per conversation (`spawn`, e.g. the server from a
//! virtual environment, or a `docker run` of OpenHands' runtime image), one running server
//! (`url`), or a sandbox from OpenHands' remote runtime API (`runtime_api_url`).
//!
//! The agent's shell is the server's `run` action (its tmux-backed bash session: `is_input`,
//! `C-c`, soft timeouts); files are read with its `read` action and written with
//! `/upload_file`; the host's own commands (git for the Changes tab, a clone, reading a binary
//! file) run as hidden `run` actions in a shell of their own (`is_static`), as OpenHands' own
//! server runs its git commands. The sandbox is the boundary: paths that lead out of the
//! workspace lexically are refused here, and what the workspace's links reach is the sandbox's.

mod action;
mod config;
mod remote;
mod sandbox;

use base64::Engine as _;
use config::{RuntimeConfig, Setup, Source};
use plugin_sdk::{
    models::{CommandRequest, CommandResult, FileEntry, GitChange, WorkspaceInfo, WorkspaceRequest},
    CallContext, ErrorCode, PluginError, Registry, Services,
};
use sandbox::Sandbox;
use serde_json::Value;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// The most `git status` may print for the Changes tab.
const MAX_GIT_OUTPUT: usize = 4 << 20;

/// How long past a command's own timeout the plugin waits for the server's answer.
const ANSWER_SLACK: Duration = Duration::from_secs(60);

/// One conversation's sandbox.
struct Conversation {
    sandbox: Sandbox,
    /// When the running command started (none between commands): past the hard limit the
    /// next step interrupts it.
    running_since: Mutex<Option<Instant>>,
    /// Bumped to stop what runs: a `run` in progress answers at once.
    stop: tokio::sync::watch::Sender<u64>,
}

/// A runtime instance: its setup, the conversations it has open and the ones being opened.
pub struct OpenHandsRuntime {
    setup: Setup,
    http: reqwest::Client,
    open: Mutex<HashMap<String, Arc<Conversation>>>,
    opening: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Random hexadecimal text (keys, multipart boundaries).
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    getrandom::getrandom(&mut raw).expect("the system's random source");
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

fn valid_id(id: &str) -> Result<(), PluginError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(PluginError::invalid_argument("conversation_id is malformed"));
    }
    Ok(())
}

/// Single quotes for bash.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The agent's path within the workspace `root`: `(absolute, relative)`; one that leads out
/// (lexically) is `INVALID_ARGUMENT`.
fn resolve(root: &str, given: &str) -> Result<(String, String), PluginError> {
    let relative = match given.strip_prefix(root) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ if given.starts_with('/') => {
            return Err(PluginError::invalid_argument(format!("{given} is outside the workspace")));
        }
        _ => given,
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in relative.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(PluginError::invalid_argument(format!("{given} is outside the workspace")));
                }
            }
            p => parts.push(p),
        }
    }
    let rel = parts.join("/");
    let abs = if rel.is_empty() { root.to_owned() } else { format!("{root}/{rel}") };
    Ok((abs, rel))
}

/// At most `max` characters, the middle left out (the agent reads both ends).
fn truncate(text: String, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text;
    }
    let head: String = text.chars().take(max / 2).collect();
    let tail: String = text.chars().skip(count - max / 2).collect();
    format!("{head}\n[... {} characters left out ...]\n{tail}", count - head.chars().count() - tail.chars().count())
}

impl OpenHandsRuntime {
    fn new(setup: Setup) -> Self {
        OpenHandsRuntime {
            setup,
            http: reqwest::Client::new(),
            open: Mutex::new(HashMap::new()),
            opening: Mutex::default(),
        }
    }

    fn conversations(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Conversation>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn existing(&self, id: &str) -> Result<Arc<Conversation>, PluginError> {
        valid_id(id)?;
        self.conversations()
            .get(id)
            .cloned()
            .ok_or_else(|| PluginError::not_found(format!("conversation {id} has no sandbox running")))
    }

    /// A hidden command in a shell of its own in the workspace: its exit code and output.
    async fn host_command(c: &Conversation, script: &str, max_bytes: usize) -> Result<(i32, String), PluginError> {
        let observation = c
            .sandbox
            .server
            .run(
                script,
                false,
                Some(300.0),
                Some(&c.sandbox.working_dir),
                Duration::from_secs(300) + ANSWER_SLACK,
                max_bytes,
            )
            .await?;
        let ran = action::ran(&observation)?;
        Ok((ran.exit_code, ran.output))
    }

    /// A file's first `max + 1` bytes through a hidden command (any content, bytes exact).
    async fn read_bytes(c: &Conversation, abs: &str, max: usize) -> Result<Vec<u8>, PluginError> {
        let script = format!(
            "p={}; if [ ! -e \"$p\" ]; then echo OH_MISSING; elif [ ! -f \"$p\" ]; then echo OH_NOT_A_FILE; elif [ \"$(stat -c %s -- \"$p\")\" -gt {max} ]; then echo OH_TOO_LARGE; else head -c {} -- \"$p\" | base64 -w0; echo; fi",
            quote(abs),
            max + 1
        );
        let (_, out) = Self::host_command(c, &script, max / 3 * 4 + 4096).await?;
        decoded(&out, abs, max)
    }

    /// Makes a new workspace a git repository: a clone with the user's token in a header of
    /// that one command (never in the repository's config, its remote URL or a log), else an
    /// empty one. The clone's failure is returned, and leaves an empty repository.
    async fn prepare(&self, c: &Conversation, request: &WorkspaceRequest) -> Result<Option<String>, PluginError> {
        let names = c.sandbox.server.list(&c.sandbox.working_dir).await?;
        if names.iter().any(|n| n == ".git/" || n == ".git") {
            return Ok(None);
        }
        const GIT: &str = "GIT_TERMINAL_PROMPT=0 git -c core.hooksPath=/dev/null -c protocol.allow=never -c protocol.https.allow=always -c protocol.http.allow=always";
        let mut clone_error = None;
        if let Some(r) = &request.repository {
            let source = ::sandbox::repo::Clone::of(
                &r.repository,
                &r.provider,
                r.token.as_deref(),
                r.host.as_deref(),
                r.branch.as_deref(),
                &self.setup.git_http_hosts,
            );
            let mut script = GIT.to_owned();
            if let Some(header) = &source.auth_header {
                script += &format!(" -c {}", quote(&format!("http.extraHeader={header}")));
            }
            script += " clone --quiet";
            if let Some(branch) = &source.branch {
                script += &format!(" --branch {}", quote(branch));
            }
            script += &format!(" -- {} . 2>&1 | tail -c 500", quote(&source.url));
            script += "; exit ${PIPESTATUS[0]}";
            let (code, out) = Self::host_command(c, &script, 64 << 10).await?;
            if code == 0 {
                return Ok(None);
            }
            clone_error = Some(format!("cannot clone {}: {}", source.url, out.trim()));
        }
        let (code, out) = Self::host_command(c, &format!("{GIT} init -q 2>&1"), 64 << 10).await?;
        if code != 0 {
            return Err(PluginError::internal(format!("cannot make the workspace a git repository: {}", out.trim())));
        }
        Ok(clone_error)
    }

    /// `open` once the conversation's turn is taken.
    async fn open_locked(&self, id: &str, request: &WorkspaceRequest) -> Result<WorkspaceInfo, PluginError> {
        let known = self.conversations().get(id).cloned();
        if let Some(c) = known {
            if c.sandbox.server.alive().await {
                return Ok(WorkspaceInfo { root: c.sandbox.working_dir.clone(), clone_error: None });
            }
            self.conversations().remove(id);
            c.sandbox.end(false).await;
        }
        let sandbox = sandbox::start(&self.setup, &self.http, id).await?;
        let c =
            Arc::new(Conversation { sandbox, running_since: Mutex::new(None), stop: tokio::sync::watch::channel(0).0 });
        let clone_error = match self.prepare(&c, request).await {
            Ok(e) => e,
            Err(e) => {
                c.sandbox.end(false).await;
                return Err(e);
            }
        };
        if let Some(why) = &clone_error {
            tracing::warn!(conversation_id = %id, error = %why, "workspace not cloned");
        }
        let root = c.sandbox.working_dir.clone();
        self.conversations().insert(id.to_owned(), c);
        Ok(WorkspaceInfo { root, clone_error })
    }

    async fn stop(c: &Conversation) {
        c.stop.send_modify(|n| *n += 1);
    }
}

/// Reads what `read_bytes` printed.
fn decoded(out: &str, path: &str, max: usize) -> Result<Vec<u8>, PluginError> {
    let out = out.trim();
    match out {
        "OH_MISSING" => Err(PluginError::not_found(format!("{path} does not exist"))),
        "OH_NOT_A_FILE" => Err(PluginError::new(ErrorCode::NOT_A_FILE, format!("{path} is not a regular file"))),
        // Said before a byte of it crosses the sandbox's shell.
        "OH_TOO_LARGE" => Err(PluginError::new(ErrorCode::TOO_LARGE, format!("{path} is over {max} bytes"))),
        text => {
            let clean: String = text.chars().filter(|c| !c.is_whitespace()).collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(clean)
                .map_err(|e| PluginError::internal(format!("the sandbox's copy of {path} is garbled: {e}")))?;
            if bytes.len() > max {
                return Err(PluginError::new(ErrorCode::TOO_LARGE, format!("{path} is over {max} bytes")));
            }
            Ok(bytes)
        }
    }
}

impl plugin_sdk::Runtime for OpenHandsRuntime {
    async fn open(&self, _ctx: CallContext, request: WorkspaceRequest) -> Result<WorkspaceInfo, PluginError> {
        let id = request.conversation_id.clone();
        valid_id(&id)?;
        let turn = self.opening.lock().unwrap_or_else(|e| e.into_inner()).entry(id.clone()).or_default().clone();
        let _turn = turn.lock().await;
        let opened = self.open_locked(&id, &request).await;
        self.opening.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        opened
    }

    async fn run(&self, _ctx: CallContext, id: String, request: CommandRequest) -> Result<CommandResult, PluginError> {
        let c = self.existing(&id)?;
        let max_output =
            if request.max_output_chars == 0 { self.setup.max_output_chars } else { request.max_output_chars };
        let mut note = String::new();
        let overdue = c
            .running_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| t.elapsed() > self.setup.command_timeout);
        if overdue && !(request.is_input && request.command.trim() == "C-c") {
            c.sandbox.server.run("C-c", true, Some(10.0), None, ANSWER_SLACK, 1 << 20).await?;
            *c.running_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
            note = format!(
                "[The previous command ran past {} seconds and was interrupted (C-c).]\n",
                self.setup.command_timeout.as_secs()
            );
            if request.command.trim().is_empty() {
                return Ok(CommandResult { exit_code: 130, output: note, done: true });
            }
        }
        let timeout = request
            .timeout_secs
            .filter(|t| t.is_finite() && *t > 0.0)
            .unwrap_or(self.setup.command_timeout.as_secs_f64())
            .min(self.setup.command_timeout.as_secs_f64());
        let wait = Duration::from_secs_f64(timeout) + ANSWER_SLACK;
        let mut stopped = c.stop.subscribe();
        let step = c.sandbox.server.run(
            &request.command,
            request.is_input,
            Some(timeout),
            None,
            wait,
            max_output * 4 + (1 << 20),
        );
        let observation = tokio::select! {
            answer = step => answer?,
            _ = stopped.changed() => {
                return Ok(CommandResult { exit_code: -1, output: format!("{note}[The command was stopped.]"), done: true });
            }
        };
        let ran = action::ran(&observation)?;
        let done = ran.exit_code != -1;
        {
            let mut since = c.running_since.lock().unwrap_or_else(|e| e.into_inner());
            if done {
                *since = None;
            } else if since.is_none() {
                *since = Some(Instant::now());
            }
        }
        Ok(CommandResult { exit_code: ran.exit_code, output: truncate(note + &ran.text, max_output), done })
    }

    async fn interrupt(&self, _ctx: CallContext, id: String) -> Result<bool, PluginError> {
        let Some(c) = self.conversations().get(&id).cloned() else { return Ok(false) };
        let running = c.running_since.lock().unwrap_or_else(|e| e.into_inner()).take().is_some();
        Self::stop(&c).await;
        c.sandbox.server.run("C-c", true, Some(10.0), None, ANSWER_SLACK, 1 << 20).await?;
        Ok(running)
    }

    async fn list_files(&self, _ctx: CallContext, id: String, path: String) -> Result<Vec<FileEntry>, PluginError> {
        let c = self.existing(&id)?;
        let (abs, rel) = resolve(&c.sandbox.working_dir, &path)?;
        let names = c.sandbox.server.list(&abs).await?;
        Ok(names
            .into_iter()
            .filter(|n| !n.is_empty() && !n.contains('\0'))
            .map(|n| {
                let dir = n.ends_with('/');
                let name = n.trim_end_matches('/').to_owned();
                let path = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
                FileEntry { name, path, dir }
            })
            .collect())
    }

    async fn read_file(
        &self,
        _ctx: CallContext,
        id: String,
        path: String,
        max_bytes: u64,
    ) -> Result<Vec<u8>, PluginError> {
        let c = self.existing(&id)?;
        let (abs, _) = resolve(&c.sandbox.working_dir, &path)?;
        let max = usize::try_from(max_bytes).unwrap_or(usize::MAX).min(1 << 30);
        let action = serde_json::json!({ "action": "read", "args": { "path": abs } });
        let observation = match c.sandbox.server.execute(action, Duration::from_secs(60), max.saturating_mul(2)).await {
            Ok(observation) => observation,
            // The server's own failure on a file (its binary sniffing raises on some: a sparse
            // file of zeros): the hidden command reads it, bounded, instead.
            Err(e) if e.code == ErrorCode::INTERNAL => return Self::read_bytes(&c, &abs, max).await,
            Err(e) => return Err(e),
        };
        let content = observation.get("content").and_then(Value::as_str).unwrap_or_default();
        match observation.get("observation").and_then(Value::as_str) {
            // Images, PDFs and videos come back as data URLs; anything the server could
            // not read as text is read through a hidden command instead.
            Some("read") if content.starts_with("data:") && content.contains(";base64,") => {
                Self::read_bytes(&c, &abs, max).await
            }
            Some("read") if content.len() <= max => Ok(content.as_bytes().to_vec()),
            Some("read") => Err(PluginError::new(ErrorCode::TOO_LARGE, format!("{path} is over {max} bytes"))),
            Some("error") if content.starts_with("File not found") => {
                Err(PluginError::not_found(format!("{path} does not exist")))
            }
            Some("error") if content.starts_with("Path is a directory") => {
                Err(PluginError::new(ErrorCode::NOT_A_FILE, format!("{path} is a directory")))
            }
            Some("error") => Self::read_bytes(&c, &abs, max).await,
            other => Err(PluginError::internal(format!("the sandbox answered a read with {other:?}"))),
        }
    }

    async fn write_file(
        &self,
        _ctx: CallContext,
        id: String,
        path: String,
        content: Vec<u8>,
    ) -> Result<(), PluginError> {
        let c = self.existing(&id)?;
        let (abs, rel) = resolve(&c.sandbox.working_dir, &path)?;
        if rel.is_empty() {
            return Err(PluginError::new(ErrorCode::NOT_A_FILE, "the workspace itself is a directory"));
        }
        let (dir, name) = abs.rsplit_once('/').unwrap_or(("/", &abs));
        c.sandbox.server.upload(if dir.is_empty() { "/" } else { dir }, name, content).await
    }

    async fn git_changes(&self, _ctx: CallContext, id: String) -> Result<Vec<GitChange>, PluginError> {
        let c = self.existing(&id)?;
        let (code, out) =
            Self::host_command(&c, "git --no-pager status --porcelain=v1 -uall 2>/dev/null", MAX_GIT_OUTPUT).await?;
        if code != 0 {
            return Err(PluginError::not_found("Not a git repository"));
        }
        Ok(::sandbox::git::parse_status(&out).into_iter().map(|(status, path)| GitChange { status, path }).collect())
    }

    async fn git_original(
        &self,
        _ctx: CallContext,
        id: String,
        path: String,
        max_bytes: u64,
    ) -> Result<Option<Vec<u8>>, PluginError> {
        let c = self.existing(&id)?;
        let (_, rel) = resolve(&c.sandbox.working_dir, &path)?;
        let max = usize::try_from(max_bytes).unwrap_or(usize::MAX).min(1 << 30);
        let object = quote(&format!("HEAD:./{rel}"));
        let script = format!(
            "if ! git cat-file -e {object} 2>/dev/null; then echo OH_MISSING; elif [ \"$(git cat-file -s {object})\" -gt {max} ]; then echo OH_TOO_LARGE; else git cat-file blob {object} | head -c {} | base64 -w0; echo; fi",
            max + 1
        );
        let (_, out) = Self::host_command(&c, &script, max / 3 * 4 + 4096).await?;
        match decoded(&out, &path, max) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.code == ErrorCode::NOT_FOUND => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn close(&self, _ctx: CallContext, id: String) -> Result<(), PluginError> {
        let c = self.conversations().remove(&id);
        if let Some(c) = c {
            Self::stop(&c).await;
            c.sandbox.end(false).await;
        }
        Ok(())
    }

    async fn destroy(&self, _ctx: CallContext, id: String) -> Result<bool, PluginError> {
        valid_id(&id)?;
        let c = self.conversations().remove(&id);
        let had = c.as_ref().is_some_and(|c| !c.sandbox.is_attached());
        if let Some(c) = &c {
            Self::stop(c).await;
            c.sandbox.end(true).await;
        }
        match &self.setup.source {
            Source::Spawn { root, .. } => {
                let dir = sandbox::workspace_of(root, &id);
                if !dir.is_dir() {
                    return Ok(had);
                }
                // `remove_dir_all` does not follow the links the agent left in it.
                tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir))
                    .await
                    .map_err(|e| PluginError::internal(format!("cannot remove the workspace of {id}: {e}")))?
                    .map_err(|e| PluginError::internal(format!("cannot remove the workspace of {id}: {e}")))?;
                Ok(true)
            }
            // A sandbox paused when its conversation ended is found by the conversation.
            Source::RuntimeApi(api) if c.is_none() => remote::destroy(api, &self.http, &id).await,
            _ => Ok(had),
        }
    }

    async fn health(&self) -> Result<String, PluginError> {
        let open = self.conversations().len();
        let source = match &self.setup.source {
            Source::Spawn { argv, .. } => {
                format!("spawned with `{}`", argv.first().map(String::as_str).unwrap_or_default())
            }
            Source::Attach { url, .. } => format!("at {url}"),
            Source::RuntimeApi(api) => format!("from the runtime API at {}", api.url),
        };
        Ok(format!("{open} sandbox{} open, {source}", if open == 1 { "" } else { "es" }))
    }

    async fn shutdown(&self) {
        let all: Vec<Arc<Conversation>> = self.conversations().drain().map(|(_, c)| c).collect();
        for c in all {
            Self::stop(&c).await;
            c.sandbox.end(false).await;
        }
    }
}

pub fn register(r: &mut Registry) {
    r.runtime(
        "OpenHandsRuntime",
        "the agent's tools in OpenHands' action execution server: one spawned per conversation, one running server, or a sandbox from OpenHands' remote runtime API",
        |config, services: Services| {
            RuntimeConfig::setup(config, services.app_mode(), services.state_dir()).map(OpenHandsRuntime::new)
        },
    );
}

plugin_sdk::export_plugin!(register);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_in_the_workspace_lexically() {
        let ok = |given: &str| resolve("/workspace", given).unwrap();
        assert_eq!(ok(""), ("/workspace".to_owned(), String::new()));
        assert_eq!(ok("src/../a.txt"), ("/workspace/a.txt".to_owned(), "a.txt".to_owned()));
        assert_eq!(ok("/workspace/src/main.rs").1, "src/main.rs");
        for out in ["..", "a/../../etc/passwd", "/etc/passwd", "/workspace2/x", "/workspace/../etc"] {
            assert_eq!(resolve("/workspace", out).unwrap_err().code, ErrorCode::INVALID_ARGUMENT, "{out}");
        }
    }

    #[test]
    fn quoting_and_decoding_the_host_commands() {
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(decoded("aGVs\nbG8=\n", "a", 10).unwrap(), b"hello");
        assert_eq!(decoded("aGVsbG8=", "a", 4).unwrap_err().code, ErrorCode::TOO_LARGE);
        assert_eq!(decoded("OH_MISSING", "a", 4).unwrap_err().code, ErrorCode::NOT_FOUND);
        assert_eq!(decoded("OH_NOT_A_FILE", "a", 4).unwrap_err().code, ErrorCode::NOT_A_FILE);
        assert_eq!(decoded("OH_TOO_LARGE", "a", 4).unwrap_err().code, ErrorCode::TOO_LARGE);
        let long = truncate("x".repeat(100), 10);
        assert!(long.starts_with("xxxxx\n[... 90 characters left out ...]"));
    }
}
