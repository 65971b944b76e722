//! The workspace and its commands, locally and in the sandbox (as root: the cgroups).

use crate::workspace::*;
use sandbox::{bwrap::Policy, cgroup::Cgroup};
use std::{path::Path, time::Duration};

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
pub(crate) fn sandbox(cpu_secs: u64, memory_mb: u64, max_processes: u64, tmp_mb: u64, workspace_mb: u64) -> Isolation {
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
        assert!(["HOME", "LANG", "OLDPWD", "PATH", "PWD", "SHLVL", "TERM", "_"].contains(key), "{key} leaked: {env:?}");
    }
    assert!(!ran.output.lines().any(|l| l.starts_with("SEEN ")), "{}", ran.output);
    assert!(!ran.output.contains("cargo") && !ran.output.contains("agent_loop"), "the host's /proc: {}", ran.output);
    let top: Vec<&str> = ran.output.lines().skip_while(|l| !l.chars().all(|c| c.is_ascii_digit())).skip(1).collect();
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
        .run("head -c 20M /dev/zero > /tmp/fill; echo tmp:$?", Duration::from_secs(30), 10_000, std::future::pending())
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
    ws.run("mkdir -p sub && cd sub && export GREETING=hello", Duration::from_secs(10), 1000, never()).await.unwrap();
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
    let stopped =
        ws.run("sleep 30", Duration::from_secs(60), 100, tokio::time::sleep(Duration::from_millis(200))).await.unwrap();
    assert_eq!(stopped.killed, Some("stopped"));
}
