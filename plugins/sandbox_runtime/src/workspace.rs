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

pub use crate::running::{Running, Seen, Wait, Waited, OVER_QUOTA};
pub use sandbox::{reaper::local_reaper, repo::Clone};

/// How commands are isolated.
#[derive(Clone, Debug, PartialEq)]
pub enum Isolation {
    /// A shell of the host's user in the workspace.
    Local,
    /// The bubblewrap sandbox, and the most disk its workspace may take, in MiB (0: no
    /// bound): a command that passes it is killed and told so.
    Bubblewrap { policy: Policy, workspace_mb: u64 },
}

/// Run before the shell: every signal back to its default action. A host started with
/// SIGINT ignored (in the background, under `nohup`, by a supervisor) would otherwise pass
/// the ignored disposition to every command, and the agent's `C-c` would interrupt nothing.
/// (The signal mask is reset by the process spawn itself.)
const DEFAULT_SIGNALS: [&str; 2] = ["env", "--default-signal"];

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
                        c.args(["--pdeathsig", "KILL", "--"])
                            .args(prefix)
                            .args(DEFAULT_SIGNALS)
                            .args(["bash", "-c", script]);
                        c
                    }
                    None => {
                        let mut c = tokio::process::Command::new(DEFAULT_SIGNALS[0]);
                        c.args(&DEFAULT_SIGNALS[1..]).args(["bash", "-c", script]);
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
                let mut argv: Vec<&str> = DEFAULT_SIGNALS.to_vec();
                argv.extend(["bash", "-c", script]);
                let prepared = policy.prepare(root, true, &[], &argv)?;
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

/// A conversation's workspace.
#[derive(Clone, Debug)]
pub struct Workspace {
    root: PathBuf,
    isolation: Isolation,
    /// The host's only way to its files.
    files: Arc<Confined>,
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
