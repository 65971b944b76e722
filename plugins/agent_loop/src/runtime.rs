//! Where the agent's tools act: a directory per conversation (its workspace) and commands run
//! in it, either as a shell of the host's user (`local`: no isolation of files or network,
//! SaaS mode refuses it; a PID namespace of its own when the machine allows, so nothing it
//! starts outlives it or the host)
//! or in a bubblewrap sandbox (`bubblewrap`: the system read-only, the workspace read-write, a
//! private /tmp, its own PID namespace, no network unless allowed, CPU time and memory
//! bounded, killed with the host). Each command runs in its own process group, so a timeout
//! or a stop kills everything it started.

use std::{
    path::{Component, Path, PathBuf},
    process::Stdio,
    time::Duration,
};
use tokio::io::AsyncReadExt as _;

/// How commands are isolated.
#[derive(Clone, Debug, PartialEq)]
pub enum Isolation {
    /// A shell of the host's user in the workspace.
    Local,
    /// bubblewrap (`bwrap`), with `prlimit` bounding CPU seconds and memory (address space),
    /// and a pids cgroup bounding the processes (0: no bound).
    Bubblewrap { network: bool, cpu_secs: u64, memory_mb: u64, max_processes: u64 },
}

impl Isolation {
    /// The program and arguments that run `script` (bash) in `root`; with `cgroup`, a shell
    /// first moves itself into it (`cgroup.procs`), then becomes the sandbox, so nothing the
    /// command starts is outside the cgroup.
    fn command(&self, root: &Path, script: &str, cgroup: Option<&Path>) -> tokio::process::Command {
        match self {
            Isolation::Local => match local_reaper() {
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
            },
            Isolation::Bubblewrap { network, cpu_secs, memory_mb, .. } => {
                let mut c = match cgroup {
                    Some(procs) => {
                        let mut c = tokio::process::Command::new("sh");
                        c.args(["-c", "echo $$ > \"$1\" || exit 125; shift; exec \"$@\"", "sh"])
                            .arg(procs)
                            .arg("bwrap");
                        c
                    }
                    None => tokio::process::Command::new("bwrap"),
                };
                // In order: later mounts go on top (the workspace may be under /tmp).
                c.args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"])
                    .arg("--bind")
                    .arg(root)
                    .arg(root)
                    .args(["--unshare-pid", "--unshare-ipc", "--unshare-uts"]);
                if !network {
                    c.arg("--unshare-net");
                }
                c.args(["--die-with-parent", "--new-session", "--chdir"])
                    .arg(root)
                    .arg("--setenv")
                    .arg("HOME")
                    .arg(root)
                    .args(["--", "prlimit"])
                    .arg(format!("--cpu={cpu_secs}"))
                    .arg(format!("--as={}", memory_mb.saturating_mul(1024 * 1024)))
                    .args(["--", "bash", "-c", script]);
                c
            }
        }
    }

    fn max_processes(&self) -> u64 {
        match self {
            Isolation::Bubblewrap { max_processes, .. } => *max_processes,
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

/// A pids cgroup for one command: it and everything it starts may be at most `pids.max`
/// processes (a fork bomb fails to fork instead of filling the machine). Under
/// `/sys/fs/cgroup/pids/oh-host` (cgroup v1) or `/sys/fs/cgroup/oh-host` (v2 with the pids
/// controller). Removed when dropped, after killing what is left in it.
pub struct PidsCgroup {
    dir: PathBuf,
}

impl PidsCgroup {
    /// The directory the commands' cgroups are made in: found and made once per process
    /// (not per command).
    fn base() -> Result<PathBuf, String> {
        static BASE: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
        BASE.get_or_init(Self::find_base).clone()
    }

    fn find_base() -> Result<PathBuf, String> {
        let v1 = Path::new("/sys/fs/cgroup/pids");
        let v2 = Path::new("/sys/fs/cgroup");
        let base = if v1.join("cgroup.procs").exists() {
            v1.join("oh-host")
        } else if std::fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "pids"))
        {
            let base = v2.join("oh-host");
            std::fs::create_dir_all(&base).map_err(|e| format!("cannot make {}: {e}", base.display()))?;
            let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+pids");
            std::fs::write(base.join("cgroup.subtree_control"), "+pids")
                .map_err(|e| format!("cannot enable the pids controller in {}: {e}", base.display()))?;
            base
        } else {
            return Err("no pids cgroup controller is mounted under /sys/fs/cgroup".to_owned());
        };
        std::fs::create_dir_all(&base).map_err(|e| format!("cannot make {}: {e}", base.display()))?;
        Ok(base)
    }

    /// A new cgroup allowing `max` processes.
    pub fn create(max: u64) -> Result<PidsCgroup, String> {
        let mut id = [0u8; 8];
        getrandom_id(&mut id);
        let dir = Self::base()?.join(id.iter().map(|b| format!("{b:02x}")).collect::<String>());
        std::fs::create_dir(&dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
        let cgroup = PidsCgroup { dir };
        std::fs::write(cgroup.dir.join("pids.max"), max.to_string())
            .map_err(|e| format!("cannot set pids.max in {}: {e}", cgroup.dir.display()))?;
        Ok(cgroup)
    }

    /// Whether commands can be given a pids cgroup here (root, or a delegated hierarchy).
    /// Also removes the empty cgroups a host killed with -9 left behind (over ten minutes
    /// old: a command's shell joins its cgroup within milliseconds of its making).
    pub fn available() -> Result<(), String> {
        let base = Self::base()?;
        for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let dir = entry.path();
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > Duration::from_secs(600)));
            let empty = std::fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty());
            if dir.is_dir() && stale && empty {
                let _ = std::fs::remove_dir(&dir);
            }
        }
        Self::create(8).map(drop)
    }

    fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        // A cgroup can only go once empty.
        for _ in 0..50 {
            let pids = std::fs::read_to_string(self.procs()).unwrap_or_default();
            let pids: Vec<&str> = pids.split_whitespace().collect();
            if pids.is_empty() && std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            if !pids.is_empty() {
                let _ = std::process::Command::new("kill").arg("-KILL").args(&pids).stderr(Stdio::null()).status();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(cgroup = %self.dir.display(), "a command's cgroup could not be removed");
    }
}

/// Random bytes for a name (the time, when the system has no randomness to give).
fn getrandom_id(buf: &mut [u8]) {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (nanos >> (i * 8)) as u8 ^ (std::process::id() >> (i % 4 * 8)) as u8;
    }
    let mut extra = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut extra)).is_ok() {
        for (b, e) in buf.iter_mut().zip(extra) {
            *b ^= e;
        }
    }
}

/// Whether bubblewrap runs here (installed, and allowed to make namespaces).
pub fn bubblewrap_works() -> Result<(), String> {
    let out = std::process::Command::new("bwrap")
        .args(["--ro-bind", "/", "/", "--unshare-pid", "--die-with-parent", "--", "true"])
        .output()
        .map_err(|e| format!("bwrap cannot be run ({e}): install bubblewrap (apt-get install bubblewrap)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("bwrap cannot make a sandbox here: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A conversation's workspace.
#[derive(Clone, Debug)]
pub struct Workspace {
    root: PathBuf,
    isolation: Isolation,
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
        Ok(Workspace { root: root.canonicalize()?, isolation })
    }

    /// Makes a new workspace a git repository: a clone of `repository` when given (on the
    /// host, with the token in a header of that one command: never in the repository's
    /// config, its remote URL or a log), else an empty one, as OpenHands' runtime makes one
    /// (the web client's Changes tab lists what the agent changed). A workspace that is a
    /// repository already is left as it is. An error says why the clone failed.
    pub async fn prepare(&self, repository: Option<&Clone>) -> Result<(), String> {
        if self.root.join(".git").exists() {
            return Ok(());
        }
        let mut git = tokio::process::Command::new("git");
        git.envs([("GIT_TERMINAL_PROMPT", "0")]).current_dir(&self.root).stdin(Stdio::null()).stdout(Stdio::null());
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

    /// A path the agent named, inside the workspace: relative to it, or absolute within it.
    /// `..` may not climb out, and an existing path may not lead out through a symlink.
    pub fn resolve(&self, path: &str) -> Result<PathBuf, String> {
        let given = Path::new(path);
        let relative = if given.is_absolute() {
            given
                .strip_prefix(&self.root)
                .map_err(|_| format!("{path} is outside the workspace {}", self.root.display()))?
        } else {
            given
        };
        let mut out = self.root.clone();
        for c in relative.components() {
            match c {
                Component::Normal(part) => out.push(part),
                Component::CurDir => {}
                _ => return Err(format!("{path} is outside the workspace {}", self.root.display())),
            }
        }
        // The deepest existing ancestor, resolved, must still be inside.
        let mut probe = out.as_path();
        while !probe.exists() {
            probe = probe.parent().unwrap_or(&self.root);
        }
        let real = probe.canonicalize().map_err(|e| format!("{path}: {e}"))?;
        if !real.starts_with(&self.root) {
            return Err(format!("{path} leads outside the workspace {}", self.root.display()));
        }
        Ok(out)
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
        let _ = std::fs::create_dir_all(&state);
        let (cwd, env) = (state.join("cwd"), state.join("env"));
        let q = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
        format!(
            "exec 2>&1\n\
             [ -f {env} ] && . {env} 2>/dev/null\n\
             __oh_cwd=$(cat {cwd} 2>/dev/null); cd \"${{__oh_cwd:-.}}\" 2>/dev/null || cd {root}\n\
             unset __oh_cwd\n\
             trap 'pwd > {cwd}; export -p > {env}' EXIT\n\
             {command}",
            cwd = q(&cwd),
            env = q(&env),
            root = q(&self.root),
        )
    }

    /// Starts `command` with bash in the workspace (stdout and stderr together, stdin open for
    /// input), in its own process group (and pids cgroup in the sandbox); it is killed once it
    /// has run for `limit`, whoever waits for it.
    pub fn start(&self, command: &str, limit: Duration) -> std::io::Result<Running> {
        let cgroup = match self.isolation.max_processes() {
            0 => None,
            max => Some(PidsCgroup::create(max).map_err(std::io::Error::other)?),
        };
        let mut child = self
            .isolation
            .command(&self.root, &self.session_script(command), cgroup.as_ref().map(|c| c.procs()).as_deref())
            .current_dir(&self.root)
            .env("HOME", &self.root)
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
    cgroup: Option<PidsCgroup>,
}

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
        let state = loop {
            let next = tokio::select! {
                chunk = self.output.recv() => Next::Chunk(chunk),
                status = self.child.wait() => Next::Exited(status.ok().and_then(|s| s.code()).unwrap_or(-1)),
                () = tokio::time::sleep_until(until.unwrap_or(self.deadline)), if until.is_some() => Next::Waited,
                () = tokio::time::sleep_until(self.deadline) => Next::Limit,
                () = &mut stop => Next::Stopped,
            };
            match next {
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
            targets.extend(
                std::fs::read_to_string(cgroup.procs()).unwrap_or_default().split_whitespace().map(str::to_owned),
            );
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
mod tests {
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
        assert_eq!(ws.resolve("a/b.txt").unwrap(), ws.root().join("a/b.txt"));
        let inside = ws.root().join("x.py");
        assert_eq!(ws.resolve(inside.to_str().unwrap()).unwrap(), inside);
        assert!(ws.resolve("../escape").is_err());
        assert!(ws.resolve("/etc/passwd").is_err());
        std::os::unix::fs::symlink("/etc", ws.root().join("link")).unwrap();
        assert!(ws.resolve("link/passwd").is_err(), "through a symlink");
        assert!(Workspace::open(ws.root(), "../x", Isolation::Local).is_err());
    }

    #[tokio::test]
    async fn the_sandbox_keeps_the_system_read_only_the_network_out_and_its_own_pids() {
        bubblewrap_works().expect("bubblewrap (apt-get install bubblewrap)");
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Isolation::Bubblewrap { network: false, cpu_secs: 10, memory_mb: 1024, max_processes: 0 };
        let ws = Workspace::open(dir.path(), "5a4db0c", sandbox).unwrap();
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
        let bounded = Isolation::Bubblewrap { network: false, cpu_secs: 1, memory_mb: 1024, max_processes: 0 };
        let ws = Workspace::open(dir.path(), "b0unded", bounded).unwrap();
        let started = std::time::Instant::now();
        let spin = ws.run("while :; do :; done", Duration::from_secs(30), 100, std::future::pending()).await.unwrap();
        assert_ne!(spin.exit_code, 0);
        assert!(spin.killed.is_none() && started.elapsed() < Duration::from_secs(15), "{spin:?}");
    }

    #[tokio::test]
    async fn a_sandboxed_command_cannot_start_more_processes_than_allowed() {
        PidsCgroup::available().expect("a writable pids cgroup (root)");
        let dir = tempfile::tempdir().unwrap();
        let bounded = Isolation::Bubblewrap { network: false, cpu_secs: 30, memory_mb: 1024, max_processes: 20 };
        let ws = Workspace::open(dir.path(), "f0rk", bounded).unwrap();
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
