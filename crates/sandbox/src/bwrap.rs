//! The sandbox a command runs in: bubblewrap (`bwrap`) with a root of its own that holds the
//! system directories a program needs (`/usr` and its links, a few files of `/etc`), the
//! workspace, a private size-bounded `/tmp`, and nothing else: not the state directory, not
//! other workspaces, not `/home`, `/root`, `/var`, `/run` (so no host Unix socket), not the
//! host's `/proc`. A user namespace of its own (no capability reaches the host's objects, a
//! root host included), new PID, IPC and UTS namespaces, no network unless allowed, a session
//! of its own, an empty environment plus an allow-list, `prlimit` bounds on CPU seconds, a
//! process's address space and the size of one file, and a cgroup (see `cgroup`) bounding its
//! processes and their memory together. It dies with the host.

use crate::cgroup::{Cgroup, Limits};
use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

/// The `PATH` every sandboxed command starts with.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The files of `/etc` a sandbox sees (those that exist here): the dynamic linker's cache,
/// alternatives' links, certificates, time zone, the user and group names, name-service and
/// interpreter configuration. No secrets live there (`shadow` is not among them).
const ETC: &[&str] = &[
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "localtime",
    "timezone",
    "passwd",
    "group",
    "nsswitch.conf",
    "host.conf",
    "hosts",
    "protocols",
    "services",
    "mime.types",
    "perl",
    "python3",
    "inputrc",
    "bash.bashrc",
    "profile",
    "environment",
    "debian_version",
    "os-release",
];

/// The top-level links and directories of a merged-/usr system (`/bin` → `usr/bin`, ...).
const TOP: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// How a sandbox is bounded.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// The host's network (loopback included): only for deployments that need it.
    pub network: bool,
    /// CPU seconds a process may use.
    pub cpu_secs: u64,
    /// Memory, in MiB: all the command's processes together (the cgroup, when `cgroups`),
    /// and each process's address space.
    pub memory_mb: u64,
    /// Processes at once (the cgroup); 0: no bound.
    pub max_processes: u64,
    /// The private `/tmp` (RAM-backed), in MiB.
    pub tmp_mb: u64,
    /// The largest file a process may write, in MiB (`RLIMIT_FSIZE`); 0: no bound.
    pub file_mb: u64,
    /// Directories the operator adds, read-only (a toolchain under `/opt`).
    pub read_only: Vec<PathBuf>,
    /// Whether each command gets a cgroup (pids and memory).
    pub cgroups: bool,
}

/// A command made ready to run in the sandbox, with its cgroup (which must live as long as
/// the command, and kills what is left in it when dropped).
pub struct Prepared {
    pub command: tokio::process::Command,
    pub cgroup: Option<Cgroup>,
}

impl Policy {
    /// The cgroup limits a command gets.
    pub fn limits(&self) -> Limits {
        Limits { max_processes: self.max_processes, memory_bytes: self.memory_mb.saturating_mul(1 << 20) }
    }

    /// `argv` in the sandbox, in `workspace` (writable or not), with `env` on top of the
    /// allow-list (`PATH`, `HOME` = the workspace, `LANG`, `TERM`). The process starts with
    /// an empty environment: nothing of the host's reaches it.
    pub fn prepare(
        &self,
        workspace: &Path,
        writable: bool,
        env: &[(String, String)],
        argv: &[&str],
    ) -> std::io::Result<Prepared> {
        let cgroup =
            if self.cgroups { Some(Cgroup::create(self.limits()).map_err(std::io::Error::other)?) } else { None };
        let mut c = match &cgroup {
            // A shell joins the cgroup first (each hierarchy's `cgroup.procs`), then becomes
            // the sandbox, so nothing the command starts is outside it.
            Some(cg) => {
                let files = cg.procs_files();
                let mut script = String::new();
                for i in 1..=files.len() {
                    script.push_str(&format!("echo $$ > \"${i}\" || exit 125; "));
                }
                script.push_str(&format!("shift {}; exec \"$@\"", files.len()));
                let mut c = tokio::process::Command::new("/bin/sh");
                c.arg("-c").arg(script).arg("sh").args(&files).arg("bwrap");
                c
            }
            None => tokio::process::Command::new("bwrap"),
        };
        c.env_clear().env("PATH", PATH);
        c.args(self.bwrap_args(workspace, writable, env));
        c.arg("--").arg("prlimit").arg(format!("--cpu={}", self.cpu_secs.max(1)));
        c.arg(format!("--as={}", self.memory_mb.max(64).saturating_mul(1 << 20)));
        if self.file_mb > 0 {
            c.arg(format!("--fsize={}", self.file_mb.saturating_mul(1 << 20)));
        }
        // Without a pids cgroup: the processes of the user, a weaker bound than the sandbox's.
        if !self.cgroups && self.max_processes > 0 {
            c.arg(format!("--nproc={}", self.max_processes));
        }
        c.arg("--").args(argv);
        Ok(Prepared { command: c, cgroup })
    }

    /// bwrap's arguments up to (not including) the command.
    fn bwrap_args(&self, workspace: &Path, writable: bool, env: &[(String, String)]) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| (*s).to_owned()));
        push(&["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]);
        if !self.network {
            push(&["--unshare-net"]);
        }
        push(&["--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv"]);
        push(&["--ro-bind", "/usr", "/usr"]);
        a.extend(system_dirs());
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| (*s).to_owned()));
        push(&["--dir", "/etc"]);
        for name in ETC {
            let path = Path::new("/etc").join(name);
            if path.exists() {
                push(&["--ro-bind", &path.display().to_string(), &path.display().to_string()]);
            }
        }
        if self.network && Path::new("/etc/resolv.conf").exists() {
            push(&["--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf"]);
        }
        for extra in &self.read_only {
            let shown = extra.display().to_string();
            push(&["--ro-bind-try", &shown, &shown]);
        }
        push(&["--dev", "/dev", "--proc", "/proc"]);
        let tmp_bytes = self.tmp_mb.max(1).saturating_mul(1 << 20).to_string();
        push(&["--size", &tmp_bytes, "--tmpfs", "/tmp", "--dir", "/var", "--symlink", "../tmp", "/var/tmp"]);
        push(&["--size", "16777216", "--tmpfs", "/home"]);
        // Last: the workspace may be under a directory mounted above (/tmp, /home).
        let ws = workspace.display().to_string();
        push(&[if writable { "--bind" } else { "--ro-bind" }, &ws, &ws]);
        push(&["--remount-ro", "/", "--chdir", &ws]);
        push(&[
            "--setenv", "PATH", PATH, "--setenv", "HOME", &ws, "--setenv", "LANG", "C.UTF-8", "--setenv", "TERM",
            "dumb",
        ]);
        for (key, value) in env {
            push(&["--setenv", key, value]);
        }
        a
    }
}

/// Whether bubblewrap runs here (installed, and allowed to make the namespaces it needs);
/// asked once per process.
pub fn works() -> Result<(), String> {
    static WORKS: OnceLock<Result<(), String>> = OnceLock::new();
    WORKS.get_or_init(probe).clone()
}

fn probe() -> Result<(), String> {
    let out = std::process::Command::new("bwrap")
        .args([
            "--unshare-user",
            "--unshare-pid",
            "--die-with-parent",
            "--cap-drop",
            "ALL",
            "--ro-bind",
            "/usr",
            "/usr",
        ])
        .args(system_dirs())
        .args(["--", "/usr/bin/true"])
        .env_clear()
        .env("PATH", PATH)
        .output()
        .map_err(|e| format!("bwrap cannot be run ({e}): install bubblewrap (apt-get install bubblewrap)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("bwrap cannot make a sandbox here: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The top-level system links or directories, as bwrap arguments.
fn system_dirs() -> Vec<String> {
    let mut a = Vec::new();
    for top in TOP {
        let path = Path::new("/").join(top);
        let shown = path.display().to_string();
        match std::fs::read_link(&path) {
            Ok(target) => a.extend(["--symlink".to_owned(), target.display().to_string(), shown]),
            Err(_) if path.is_dir() => a.extend(["--ro-bind".to_owned(), shown.clone(), shown]),
            Err(_) => {}
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same boundary when the host is not root: run as `nobody` (when the tests run as
    /// root; else as the tests' own unprivileged user). Host files are world-readable here,
    /// so only the sandbox's view hides them.
    #[tokio::test]
    async fn an_unprivileged_host_gets_the_same_view_environment_and_bounds() {
        works().expect("bubblewrap (apt-get install bubblewrap)");
        use std::os::unix::fs::PermissionsExt as _;
        let state = tempfile::tempdir_in("/var/tmp").unwrap();
        std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let secret = state.path().join("settings.json");
        std::fs::write(&secret, "host secret").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let ws = state.path().join("workspaces").join("c0ffee");
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::set_permissions(&ws, std::fs::Permissions::from_mode(0o777)).unwrap();
        let policy = Policy {
            network: false,
            cpu_secs: 10,
            memory_mb: 512,
            max_processes: 40,
            tmp_mb: 8,
            file_mb: 4,
            read_only: Vec::new(),
            cgroups: false,
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let script = format!(
            "id -u; env | cut -d= -f1 | sort | tr '\\n' ' '; echo; cat {secret} 2>&1; ls /root /run 2>&1; \
             (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo net-reached || echo net-blocked; \
             head -c 16M /dev/zero > /tmp/fill 2>&1 || echo tmp-full; head -c 8M /dev/zero > big 2>&1; echo fsize:$?; \
             perl -e 'my $n = 0; for (1..100) {{ my $p = fork(); last unless defined $p; if ($p == 0) {{ sleep 2; exit 0 }} $n++ }} print \"forked:$n\\n\"'",
            secret = secret.display(),
            port = listener.local_addr().unwrap().port(),
        );
        let mut prepared = policy.prepare(&ws, true, &[], &["bash", "-c", &script]).unwrap();
        let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
        if root {
            prepared.command.uid(65534).gid(65534);
        }
        let out = prepared.command.output().await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        let mut lines = text.lines();
        let uid: u32 = lines.next().unwrap().trim().parse().unwrap();
        assert!(!root || uid == 65534, "{text}");
        let env: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        for key in env {
            assert!(["HOME", "LANG", "PATH", "PWD", "SHLVL", "TERM", "_"].contains(&key), "{key}: {text}");
        }
        assert!(!text.contains("host secret") && text.contains("No such file"), "{text}");
        assert!(text.contains("net-blocked") && text.contains("tmp-full"), "{text}");
        assert!(!text.contains("fsize:0"), "{text}");
        assert!(std::fs::metadata(ws.join("big")).unwrap().len() <= 4 << 20);
        // Without a cgroup, the processes are bounded per user (RLIMIT_NPROC) when not root.
        if root {
            let forked: usize = text
                .split("forked:")
                .nth(1)
                .and_then(|n| n.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("no count: {text}"));
            assert!(forked < 40, "{forked} processes: {text}");
        }
    }
}
