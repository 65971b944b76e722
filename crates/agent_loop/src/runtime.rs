//! Where the agent's tools act: a directory per conversation (its workspace) and commands run
//! in it, either as a shell of the host's user (`local`: no isolation of files or network,
//! SaaS mode refuses it; a PID namespace of its own when the machine allows, so nothing it
//! starts outlives it or the host) or in the bubblewrap sandbox (`bubblewrap`:
//! `sandbox::bwrap`, whose module comment says what it sees and what bounds it). Either way a
//! command starts from an empty environment plus an allow-list: the host's secrets never
//! reach it. Each command runs in its own process group, so a timeout or a stop kills
//! everything it started. The host reaches the workspace's files only through
//! `sandbox::fs::Confined` (no link leads out).

use sandbox::{bwrap::Policy, cgroup::Cgroup, fs::Confined};
use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};
use tokio::io::AsyncReadExt as _;

/// How commands are isolated.
#[derive(Clone, Debug, PartialEq)]
pub enum Isolation {
    /// A shell of the host's user in the workspace.
    Local,
    /// The bubblewrap sandbox, and the most disk its workspace may take, in MiB (0: no
    /// bound): a command that passes it is killed and told so.
    Bubblewrap { policy: Policy, workspace_mb: u64 },
}

/// The variables of the host's environment a local command keeps (the sandbox's are set by
/// `sandbox::bwrap`): how to find programs and speak, never a secret.
const LOCAL_ENV: &[&str] = &["PATH", "LANG", "LC_ALL", "TERM", "TZ", "USER", "LOGNAME", "SHELL"];

impl Isolation {
    /// The command that runs `script` (bash) in `root`, and the cgroup it joins (bounding its
    /// processes and memory together) when the sandbox has one.
    fn command(&self, root: &Path, script: &str) -> std::io::Result<(tokio::process::Command, Option<Cgroup>)> {
        match self {
            Isolation::Local => {
                let mut c = match local_reaper() {
                    // In a PID namespace of its own, whose first process dies with the host
                    // (`--pdeathsig` on `unshare`, `--kill-child` on its child): when either
                    // goes, everything the command started goes, daemons included.
                    Some(prefix) => {
                        let mut c = tokio::process::Command::new("setpriv");
                        c.args(["--pdeathsig", "KILL", "--"]).args(prefix).args(["bash", "-c", script]);
                        c
                    }
                    None => {
                        let mut c = tokio::process::Command::new("bash");
                        c.arg("-c").arg(script);
                        c
                    }
                };
                c.env_clear();
                for key in LOCAL_ENV {
                    if let Ok(value) = std::env::var(key) {
                        c.env(key, value);
                    }
                }
                c.env("HOME", root);
                Ok((c, None))
            }
            Isolation::Bubblewrap { policy, .. } => {
                let prepared = policy.prepare(root, true, &[], &["bash", "-c", script])?;
                Ok((prepared.command, prepared.cgroup))
            }
        }
    }

    fn workspace_bytes(&self) -> u64 {
        match self {
            Isolation::Bubblewrap { workspace_mb, .. } => workspace_mb.saturating_mul(1 << 20),
            Isolation::Local => 0,
        }
    }
}

/// How a local command is put in a PID namespace that dies with the host: `unshare` as root,
/// else in a user namespace of its own; None when neither works here (then a command's
/// background processes may outlive it, and a host killed with -9).
pub fn local_reaper() -> Option<&'static [&'static str]> {
    static REAPER: std::sync::OnceLock<Option<&'static [&'static str]>> = std::sync::OnceLock::new();
    *REAPER.get_or_init(|| {
        const ROOT: &[&str] = &["unshare", "--pid", "--fork", "--kill-child"];
        const USER: &[&str] = &["unshare", "--user", "--map-root-user", "--pid", "--fork", "--kill-child"];
        [ROOT, USER].into_iter().find(|prefix| {
            std::process::Command::new("setpriv")
                .args(["--pdeathsig", "KILL", "--"])
                .args(*prefix)
                .arg("true")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    })
}

/// A conversation's workspace.
#[derive(Clone, Debug)]
pub struct Workspace {
    root: PathBuf,
    isolation: Isolation,
    /// The host's only way to its files.
    files: Arc<Confined>,
}

/// A repository to clone into a new workspace.
#[derive(Clone, Debug, PartialEq)]
pub struct Clone {
    /// Without credentials: `https://github.com/owner/repo.git`.
    pub url: String,
    /// `Authorization: Basic …`, sent with the clone only.
    pub auth_header: Option<String>,
    pub branch: Option<String>,
}

impl Clone {
    /// The clone of `repository` (`owner/repo`) at `provider` (`github`, `gitlab`,
    /// `bitbucket`) with the user's token there; `host` is the token's (default the
    /// provider's public one); hosts in `plain_http` are reached without TLS.
    pub fn of(
        repository: &str,
        provider: &str,
        token: Option<&str>,
        host: Option<&str>,
        branch: Option<&str>,
        plain_http: &[String],
    ) -> Clone {
        use base64::Engine as _;
        let host = host.filter(|h| !h.is_empty()).unwrap_or(match provider {
            "gitlab" => "gitlab.com",
            "bitbucket" => "bitbucket.org",
            _ => "github.com",
        });
        let scheme = if plain_http.iter().any(|h| h == host) { "http" } else { "https" };
        let user = match provider {
            "gitlab" => "oauth2",
            "bitbucket" => "x-token-auth",
            _ => "x-access-token",
        };
        let auth_header = token.filter(|t| !t.is_empty()).map(|t| {
            format!("Authorization: Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{t}")))
        });
        Clone {
            url: format!("{scheme}://{host}/{}.git", repository.trim_end_matches(".git")),
            auth_header,
            branch: branch.filter(|b| !b.is_empty()).map(str::to_owned),
        }
    }
}

/// What a command did.
#[derive(Debug, PartialEq)]
pub struct Ran {
    pub exit_code: i32,
    pub output: String,
    /// It was killed: it ran past its timeout, or the conversation was stopped.
    pub killed: Option<&'static str>,
}

impl Workspace {
    /// `root/<conversation id>`, made if missing.
    pub fn open(root: &Path, conversation_id: &str, isolation: Isolation) -> std::io::Result<Workspace> {
        if conversation_id.is_empty() || !conversation_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a conversation id"));
        }
        let root = root.join(conversation_id);
        std::fs::create_dir_all(&root)?;
        let files = Confined::open(&root)?;
        Ok(Workspace { root: files.root().to_path_buf(), isolation, files: Arc::new(files) })
    }

    /// Makes a new workspace a git repository: a clone of `repository` when given (on the
    /// host, with the token in a header of that one command: never in the repository's
    /// config, its remote URL or a log), else an empty one, as OpenHands' runtime makes one
    /// (the web client's Changes tab lists what the agent changed). A workspace that is a
    /// repository already is left as it is. An error says why the clone failed.
    pub async fn prepare(&self, repository: Option<&Clone>) -> Result<(), String> {
        if std::fs::symlink_metadata(self.root.join(".git")).is_ok() {
            return Ok(());
        }
        // On the host: nothing of its environment but what reaches the network, no system
        // or user config, no hook, no transport but HTTP(S).
        let mut git = tokio::process::Command::new("git");
        git.env_clear().env("PATH", sandbox::bwrap::PATH).env("HOME", "/nonexistent").envs([
            ("GIT_TERMINAL_PROMPT", "0"),
            ("GIT_CONFIG_NOSYSTEM", "1"),
            ("GIT_CONFIG_GLOBAL", "/dev/null"),
        ]);
        for key in [
            "http_proxy",
            "https_proxy",
            "no_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "NO_PROXY",
            "SSL_CERT_FILE",
            "SSL_CERT_DIR",
        ] {
            if let Ok(value) = std::env::var(key) {
                git.env(key, value);
            }
        }
        git.args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "protocol.allow=never",
            "-c",
            "protocol.https.allow=always",
            "-c",
            "protocol.http.allow=always",
        ]);
        git.current_dir(&self.root).stdin(Stdio::null()).stdout(Stdio::null());
        match repository {
            Some(r) => {
                if let Some(header) = &r.auth_header {
                    git.arg("-c").arg(format!("http.extraHeader={header}"));
                }
                git.args(["clone", "--quiet"]);
                if let Some(branch) = &r.branch {
                    git.arg("--branch").arg(branch);
                }
                git.arg("--").arg(&r.url).arg(".");
            }
            None => {
                git.args(["init", "-q"]);
            }
        }
        let out = tokio::time::timeout(Duration::from_secs(300), git.stderr(Stdio::piped()).output())
            .await
            .map_err(|_| "git did not finish within 300 s".to_owned())?
            .map_err(|e| format!("cannot run git: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            let why: String = String::from_utf8_lossy(&out.stderr).chars().take(500).collect();
            Err(why.trim().to_owned())
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A path the agent named, inside the workspace: relative to it, or absolute within it;
    /// `..` may not climb out. Relative to the root; links are checked when it is opened.
    pub fn resolve(&self, path: &str) -> Result<PathBuf, String> {
        self.files.relative(path).map_err(|e| e.to_string())
    }

    /// The workspace's files, reached beneath its root only.
    pub fn files(&self) -> &Confined {
        &self.files
    }

    /// Where the shell's state between commands is kept: the working directory and the
    /// exported variables (inside `.git` when the workspace is a repository, so they are not
    /// among its changes).
    fn state_dir(&self) -> PathBuf {
        let git = self.root.join(".git");
        if git.is_dir() {
            git.join("oh-shell")
        } else {
            self.root.join(".oh-shell")
        }
    }

    /// `command` as one step of a shell session: it starts where the previous command left
    /// (its directory, its exported variables, as OpenHands' persistent bash session does),
    /// and what it leaves is kept for the next.
    fn session_script(&self, command: &str) -> String {
        let state = self.state_dir();
        let (cwd, env) = (state.join("cwd"), state.join("env"));
        let q = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
        // The directory is made by the command itself (in the sandbox): never by the host,
        // which would follow whatever link the agent put there.
        format!(
            "exec 2>&1\n\
             mkdir -p {state} 2>/dev/null\n\
             [ -f {env} ] && . {env} 2>/dev/null\n\
             __oh_cwd=$(cat {cwd} 2>/dev/null); cd \"${{__oh_cwd:-.}}\" 2>/dev/null || cd {root}\n\
             unset __oh_cwd\n\
             trap 'pwd > {cwd}; export -p > {env}' EXIT\n\
             {command}",
            cwd = q(&cwd),
            env = q(&env),
            state = q(&state),
            root = q(&self.root),
        )
    }

    /// Starts `command` with bash in the workspace (stdout and stderr together, stdin open for
    /// input), in its own process group (and pids cgroup in the sandbox); it is killed once it
    /// has run for `limit`, whoever waits for it.
    pub fn start(&self, command: &str, limit: Duration) -> std::io::Result<Running> {
        let (mut command, cgroup) = self.isolation.command(&self.root, &self.session_script(command))?;
        let mut child = command
            .current_dir(&self.root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        let pgid = child.id();
        let mut stdout = child.stdout.take().expect("piped");
        let (tx, output) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut chunk = vec![0u8; 8192];
            while let Ok(n) = stdout.read(&mut chunk).await {
                if n == 0 || tx.send(chunk[..n].to_vec()).await.is_err() {
                    break;
                }
            }
        });
        Ok(Running {
            stdin: child.stdin.take(),
            child,
            pgid,
            output,
            deadline: tokio::time::Instant::now() + limit,
            limit,
            cgroup,
            quota: match self.isolation.workspace_bytes() {
                0 => None,
                bytes => Some((self.files.clone(), bytes)),
            },
        })
    }

    /// Runs `command` to its end: killed (its whole process group) after `timeout` or when
    /// `stop` fires; at most `max_output` characters kept (the rest noted).
    pub async fn run(
        &self,
        command: &str,
        timeout: Duration,
        max_output: usize,
        stop: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<Ran> {
        let mut running = self.start(command, timeout)?;
        let seen = running.wait(Wait::ToEnd, max_output, stop).await;
        let (exit_code, killed) = match seen.state {
            Waited::Exited(code) => (code, None),
            Waited::Killed(why) => (-1, Some(why)),
            Waited::Running => (-1, None), // not with Wait::ToEnd
        };
        Ok(Ran { exit_code, output: seen.output, killed })
    }
}

/// A command started in a workspace: waited for (maybe several times, as OpenHands' bash
/// session returns after a while without output and the command goes on), given input,
/// interrupted. Dropped, it is killed with all it started.
pub struct Running {
    child: tokio::process::Child,
    pgid: Option<u32>,
    stdin: Option<tokio::process::ChildStdin>,
    output: tokio::sync::mpsc::Receiver<Vec<u8>>,
    deadline: tokio::time::Instant,
    limit: Duration,
    cgroup: Option<Cgroup>,
    /// The workspace and the most disk it may take: looked at every few seconds while the
    /// command runs.
    quota: Option<(Arc<Confined>, u64)>,
}

/// How often a running command's workspace is measured against its quota.
const QUOTA_EVERY: Duration = Duration::from_secs(2);

/// How long one wait for a running command lasts.
#[derive(Clone, Copy, Debug)]
pub enum Wait {
    /// Until it ends (or its limit kills it).
    ToEnd,
    /// Until it has printed nothing for this long.
    NoOutputFor(Duration),
    /// This long at most.
    For(Duration),
}

/// How a wait ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Waited {
    Exited(i32),
    /// It goes on (the wait was over first).
    Running,
    /// Killed: "timed out" (its limit) or "stopped".
    Killed(&'static str),
}

/// What a wait saw: the output printed meanwhile and how it ended.
#[derive(Debug)]
pub struct Seen {
    pub output: String,
    pub state: Waited,
}

enum Next {
    Chunk(Option<Vec<u8>>),
    Exited(i32),
    Waited,
    Limit,
    Stopped,
    Measure,
}

impl Running {
    /// The most it may run.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Waits as `wait` says, or until `stop` fires (then it is killed).
    pub async fn wait(&mut self, wait: Wait, max_output: usize, stop: impl std::future::Future<Output = ()>) -> Seen {
        tokio::pin!(stop);
        let mut buf = Vec::new();
        let mut total = 0usize;
        let keep = |buf: &mut Vec<u8>, total: &mut usize, chunk: &[u8]| {
            *total += chunk.len();
            // A little more than the limit: the cut is made on characters below.
            if buf.len() < max_output * 4 + 4 {
                buf.extend_from_slice(chunk);
            }
        };
        let now = tokio::time::Instant::now();
        let (mut quiet, until) = match wait {
            Wait::ToEnd => (None, None),
            Wait::NoOutputFor(d) => (Some(d), Some(now + d)),
            Wait::For(d) => (None, Some(now + d)),
        };
        let mut until = until;
        let mut measure = tokio::time::interval(QUOTA_EVERY);
        let state = loop {
            let next = tokio::select! {
                chunk = self.output.recv() => Next::Chunk(chunk),
                status = self.child.wait() => Next::Exited(status.ok().and_then(|s| s.code()).unwrap_or(-1)),
                () = tokio::time::sleep_until(until.unwrap_or(self.deadline)), if until.is_some() => Next::Waited,
                () = tokio::time::sleep_until(self.deadline) => Next::Limit,
                () = &mut stop => Next::Stopped,
                _ = measure.tick(), if self.quota.is_some() => Next::Measure,
            };
            match next {
                Next::Measure => {
                    if self.over_quota().await {
                        self.kill().await;
                        for chunk in self.output_on_its_way().await {
                            keep(&mut buf, &mut total, &chunk);
                        }
                        break Waited::Killed(OVER_QUOTA);
                    }
                }
                Next::Chunk(Some(chunk)) => {
                    keep(&mut buf, &mut total, &chunk);
                    if let Some(d) = quiet.as_mut() {
                        until = Some(tokio::time::Instant::now() + *d);
                    }
                }
                // Its output is closed: its end follows.
                Next::Chunk(None) => {
                    quiet = None;
                    until = None;
                }
                Next::Exited(code) => {
                    // What it printed last may still be on its way (a child it left in the
                    // background can keep the output open: not waited for).
                    for chunk in self.output_on_its_way().await {
                        keep(&mut buf, &mut total, &chunk);
                    }
                    if self.cgroup.as_ref().is_some_and(Cgroup::out_of_memory) {
                        let note = b"\n[a process was killed: the sandbox's memory bound was reached]\n";
                        keep(&mut buf, &mut total, note);
                    }
                    // Its group id may be anyone's once it is gone.
                    self.pgid = None;
                    break Waited::Exited(code);
                }
                Next::Waited => break Waited::Running,
                Next::Limit | Next::Stopped => {
                    self.kill().await;
                    // A killed command keeps what it printed until then.
                    for chunk in self.output_on_its_way().await {
                        keep(&mut buf, &mut total, &chunk);
                    }
                    break Waited::Killed(if matches!(next, Next::Limit) { "timed out" } else { "stopped" });
                }
            }
        };
        let text = String::from_utf8_lossy(&buf);
        let output = if total > buf.len() || text.chars().count() > max_output {
            let kept: String = text.chars().take(max_output).collect();
            format!("{kept}\n[... output truncated: the first {max_output} characters of {total} bytes are shown]")
        } else {
            text.into_owned()
        };
        if !matches!(state, Waited::Running) {
            self.cgroup.take(); // what the command left running goes with it
        }
        Seen { output, state }
    }

    /// Whether the workspace takes more disk than its quota (measured off the async threads).
    async fn over_quota(&self) -> bool {
        let Some((files, bytes)) = self.quota.clone() else { return false };
        tokio::task::spawn_blocking(move || files.disk_usage(bytes) > bytes).await.unwrap_or(false)
    }

    /// Output already sent when it ended: what arrives with no gap over 50 ms.
    async fn output_on_its_way(&mut self) -> Vec<Vec<u8>> {
        let mut chunks = Vec::new();
        while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_millis(50), self.output.recv()).await {
            chunks.push(chunk);
        }
        chunks
    }

    /// Writes `text` and a newline to its input.
    pub async fn input(&mut self, text: &str) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt as _;
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "its input was closed (C-d)"))?;
        stdin.write_all(format!("{text}\n").as_bytes()).await?;
        stdin.flush().await
    }

    /// Closes its input (C-d: end of file).
    pub fn close_input(&mut self) {
        self.stdin = None;
    }

    /// Sends `signal` (`INT` for C-c, `TSTP` for C-z) to its process group, and in the
    /// sandbox to every process of its cgroup (the sandbox's own session is apart).
    pub async fn signal(&self, signal: &str) {
        let mut targets: Vec<String> = self.pgid.map(|p| format!("-{p}")).into_iter().collect();
        if let Some(cgroup) = &self.cgroup {
            targets.extend(cgroup.pids());
        }
        if targets.is_empty() {
            return;
        }
        let _ = tokio::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg("--")
            .args(&targets)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }

    /// Kills it and everything it started.
    pub async fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            kill_group(pgid).await;
        }
        let _ = self.child.wait().await;
        self.cgroup.take();
    }
}

impl Drop for Running {
    /// A session that ends with a command still running (the conversation was closed or
    /// deleted) leaves nothing behind.
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Why a command was killed when its workspace passed its disk quota.
pub const OVER_QUOTA: &str =
    "killed because the workspace passed its disk quota (sandbox_workspace_mb): remove files to go on";

/// SIGKILL to a process group (with the system's `kill`: no unsafe code here).
async fn kill_group(pgid: u32) {
    let _ = tokio::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

/// The first `max` characters, and a note of what was left out.
pub fn truncate(text: &str, max: usize) -> String {
    let total = text.chars().count();
    if total <= max {
        return text.to_owned();
    }
    let kept: String = text.chars().take(max).collect();
    format!("{kept}\n[... output truncated: {} of {total} characters not shown]", total - max)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn workspace() -> (tempfile::TempDir, Workspace) {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::open(dir.path(), "c0ffee", Isolation::Local).unwrap();
        (dir, ws)
    }

    #[test]
    fn a_clone_names_the_provider_host_and_keeps_the_token_out_of_the_url() {
        let c = Clone::of("acme/app", "github", Some("gho_x"), None, Some("dev"), &[]);
        assert_eq!(c.url, "https://github.com/acme/app.git");
        assert_eq!(c.auth_header.as_deref(), Some("Authorization: Basic eC1hY2Nlc3MtdG9rZW46Z2hvX3g="));
        assert_eq!(c.branch.as_deref(), Some("dev"));
        let internal =
            Clone::of("grp/app", "gitlab", None, Some("git.internal:8080"), None, &["git.internal:8080".to_owned()]);
        assert_eq!((internal.url.as_str(), internal.auth_header), ("http://git.internal:8080/grp/app.git", None));
    }

    #[test]
    fn paths_stay_inside() {
        let (_dir, ws) = workspace();
        assert_eq!(ws.resolve("a/b.txt").unwrap(), Path::new("a/b.txt"));
        let inside = ws.root().join("x.py");
        assert_eq!(ws.resolve(inside.to_str().unwrap()).unwrap(), Path::new("x.py"));
        assert!(ws.resolve("../escape").is_err());
        assert!(ws.resolve("/etc/passwd").is_err());
        std::os::unix::fs::symlink("/etc", ws.root().join("link")).unwrap();
        assert!(ws.files().read(&ws.resolve("link/passwd").unwrap(), 1 << 20).is_err(), "through a symlink");
        assert!(Workspace::open(ws.root(), "../x", Isolation::Local).is_err());
    }

    /// The sandbox as a deployment configures it (cgroups on), with these bounds.
    pub(crate) fn sandbox(
        cpu_secs: u64,
        memory_mb: u64,
        max_processes: u64,
        tmp_mb: u64,
        workspace_mb: u64,
    ) -> Isolation {
        sandbox::bwrap::works().expect("bubblewrap (apt-get install bubblewrap)");
        let policy = Policy {
            network: false,
            cpu_secs,
            memory_mb,
            max_processes,
            tmp_mb,
            file_mb: workspace_mb,
            read_only: Vec::new(),
            cgroups: true,
        };
        Cgroup::available(policy.limits()).expect("a writable cgroup hierarchy (root)");
        Isolation::Bubblewrap { policy, workspace_mb }
    }

    /// A state directory outside /tmp, as in production (the sandbox's /tmp is its own).
    fn state_dir() -> tempfile::TempDir {
        tempfile::tempdir_in("/var/tmp").unwrap()
    }

    #[tokio::test]
    async fn the_sandbox_keeps_the_system_read_only_the_network_out_and_its_own_pids() {
        let dir = state_dir();
        let ws = Workspace::open(dir.path(), "5a4db0c", sandbox(10, 1024, 0, 64, 0)).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let script = format!(
            "echo inside > mine.txt; cat mine.txt; touch /etc/oh-sandbox-probe 2>/dev/null || echo system-read-only; \
             (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo net-reached || echo net-blocked; echo pid:$$"
        );
        let ran = ws.run(&script, Duration::from_secs(20), 1000, std::future::pending()).await.unwrap();
        assert_eq!(ran.exit_code, 0, "{}", ran.output);
        for expected in ["inside", "system-read-only", "net-blocked"] {
            assert!(ran.output.contains(expected), "{expected}: {}", ran.output);
        }
        let pid: u32 = ran.output.split("pid:").nth(1).unwrap().trim().parse().unwrap();
        assert!(pid < 10, "its own PID namespace: {pid}");
        assert!(!Path::new("/etc/oh-sandbox-probe").exists());
        assert_eq!(std::fs::read_to_string(ws.root().join("mine.txt")).unwrap(), "inside\n");
        // CPU time is bounded: a busy loop dies of SIGXCPU/SIGKILL well before the timeout.
        let ws = Workspace::open(dir.path(), "b0unded", sandbox(1, 1024, 0, 64, 0)).unwrap();
        let started = std::time::Instant::now();
        let spin = ws.run("while :; do :; done", Duration::from_secs(30), 100, std::future::pending()).await.unwrap();
        assert_ne!(spin.exit_code, 0);
        assert!(spin.killed.is_none() && started.elapsed() < Duration::from_secs(15), "{spin:?}");
    }

    /// What the host holds is out of reach: its environment, its state directory (next to
    /// the workspaces), other workspaces, `/root`, `/var`, `/run` and its Unix sockets, its
    /// `/proc`.
    #[tokio::test]
    async fn the_sandbox_sees_its_workspace_and_the_system_and_nothing_of_the_hosts() {
        let state = state_dir();
        std::fs::write(state.path().join("secrets.json"), "host secret").unwrap();
        let root = state.path().join("workspaces");
        let other = Workspace::open(&root, "0ther", Isolation::Local).unwrap();
        std::fs::write(other.root().join("code.rs"), "another user's code").unwrap();
        let ws = Workspace::open(&root, "m1ne", sandbox(10, 1024, 64, 64, 0)).unwrap();
        let socket_dir = state_dir();
        let socket = socket_dir.path().join("db.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let probe = format!(
            "env | cut -d= -f1 | sort | tr '\\n' ' '; echo; \
             for p in {state}/secrets.json {other}/code.rs /root /var/lib /run /home/* {socket} /run/postgresql/.s.PGSQL.5432 /etc/shadow; do \
               if [ -e \"$p\" ]; then echo \"SEEN $p\"; fi; done; \
             cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /proc | grep -c '^[0-9]'; ls /",
            state = state.path().display(),
            other = other.root().display(),
            socket = socket.display(),
        );
        let ran = ws.run(&probe, Duration::from_secs(20), 10_000, std::future::pending()).await.unwrap();
        assert_eq!(ran.exit_code, 0, "{}", ran.output);
        let mut lines = ran.output.lines();
        let env: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        for key in &env {
            assert!(
                ["HOME", "LANG", "OLDPWD", "PATH", "PWD", "SHLVL", "TERM", "_"].contains(key),
                "{key} leaked: {env:?}"
            );
        }
        assert!(!ran.output.lines().any(|l| l.starts_with("SEEN ")), "{}", ran.output);
        assert!(
            !ran.output.contains("cargo") && !ran.output.contains("agent_loop"),
            "the host's /proc: {}",
            ran.output
        );
        let top: Vec<&str> =
            ran.output.lines().skip_while(|l| !l.chars().all(|c| c.is_ascii_digit())).skip(1).collect();
        for dir in &top {
            assert!(
                ["bin", "dev", "etc", "home", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp", "usr", "var"]
                    .contains(dir),
                "/{dir} is visible: {top:?}"
            );
        }
    }

    /// Memory is bounded for all the command's processes together (and what they write to
    /// /tmp), /tmp has a size, and the workspace a quota.
    #[tokio::test]
    async fn the_sandbox_bounds_memory_tmp_and_disk_in_aggregate() {
        let dir = state_dir();
        let ws = Workspace::open(dir.path(), "a66", sandbox(30, 256, 64, 16, 24)).unwrap();
        // Three processes of 120 MiB each: each alone is under the bound, together over it.
        let hog = "perl -e '$x = \"a\" x (120 << 20); sleep 4; print \"held\\n\"'";
        let ran = ws
            .run(&format!("{hog} & {hog} & {hog} & wait"), Duration::from_secs(30), 10_000, std::future::pending())
            .await
            .unwrap();
        assert!(ran.output.lines().filter(|l| *l == "held").count() < 3, "{}", ran.output);
        assert!(ran.output.contains("memory bound was reached"), "{}", ran.output);
        let tmp = ws
            .run(
                "head -c 20M /dev/zero > /tmp/fill; echo tmp:$?",
                Duration::from_secs(30),
                10_000,
                std::future::pending(),
            )
            .await
            .unwrap();
        assert!(tmp.output.contains("No space left") && !tmp.output.contains("tmp:0"), "{}", tmp.output);
        // One file over the quota is stopped as it is written; many smaller ones when the
        // workspace is measured.
        let one = ws
            .run("head -c 40M /dev/zero > big; echo big:$?", Duration::from_secs(30), 10_000, std::future::pending())
            .await
            .unwrap();
        assert!(!one.output.contains("big:0"), "{}", one.output);
        assert!(std::fs::metadata(ws.root().join("big")).unwrap().len() <= 24 << 20);
        ws.run("rm -f big", Duration::from_secs(10), 100, std::future::pending()).await.unwrap();
        let many = ws
            .run(
                "for i in 1 2 3 4; do head -c 10M /dev/urandom > f$i; done; sleep 20",
                Duration::from_secs(60),
                10_000,
                std::future::pending(),
            )
            .await
            .unwrap();
        assert_eq!(many.killed, Some(OVER_QUOTA), "{many:?}");
    }

    #[tokio::test]
    async fn a_sandboxed_command_cannot_start_more_processes_than_allowed() {
        let dir = state_dir();
        let ws = Workspace::open(dir.path(), "f0rk", sandbox(30, 1024, 20, 64, 0)).unwrap();
        // 200 forks of children that sleep a second (harmless without the bound): most fail.
        let script = "perl -e 'my $n = 0; for (1..200) { my $p = fork(); next unless defined $p; if ($p == 0) { sleep 1; exit 0 } $n++ } print \"forked $n\\n\"'";
        let ran = ws.run(script, Duration::from_secs(30), 10_000, std::future::pending()).await.unwrap();
        let forked: usize = ran.output.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(999);
        assert!((1..20).contains(&forked), "{forked} forks: {}", ran.output);
    }

    #[tokio::test]
    async fn commands_run_in_the_workspace_and_are_bounded() {
        let (_dir, ws) = workspace();
        let never = std::future::pending::<()>;
        let ran = ws
            .run("echo hi > f.txt; cat f.txt; echo oops >&2; exit 3", Duration::from_secs(10), 1000, never())
            .await
            .unwrap();
        assert_eq!((ran.exit_code, ran.output.as_str(), ran.killed), (3, "hi\noops\n", None));
        // One session: the directory and exported variables carry over to the next command.
        ws.run("mkdir -p sub && cd sub && export GREETING=hello", Duration::from_secs(10), 1000, never())
            .await
            .unwrap();
        let next = ws.run("pwd; echo $GREETING", Duration::from_secs(10), 1000, never()).await.unwrap();
        assert_eq!(next.output, format!("{}\nhello\n", ws.root().join("sub").display()));
        let long = ws.run("yes | head -c 5000", Duration::from_secs(10), 100, never()).await.unwrap();
        assert!(
            long.output.ends_with("[... output truncated: the first 100 characters of 5000 bytes are shown]"),
            "{}",
            long.output
        );
        let started = std::time::Instant::now();
        let slow = ws.run("sleep 30 & sleep 30", Duration::from_millis(300), 100, never()).await.unwrap();
        assert_eq!(slow.killed, Some("timed out"));
        assert!(started.elapsed() < Duration::from_secs(5));
        let stopped = ws
            .run("sleep 30", Duration::from_secs(60), 100, tokio::time::sleep(Duration::from_millis(200)))
            .await
            .unwrap();
        assert_eq!(stopped.killed, Some("stopped"));
    }
}
