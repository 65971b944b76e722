//! git, run by the host on a workspace (the web client's Changes tab) without running
//! anything the workspace controls. A repository's own config (`.git/config`, what it
//! includes, `.gitattributes`) is the agent's to write, and git runs commands it names:
//! `core.fsmonitor` on every `status`, hooks (`post-index-change`), `filter.<driver>.clean`
//! and `.process` when content is compared, textconv and external diff drivers, and
//! `core.sshCommand` or a remote helper for a partial clone's lazy fetch. So:
//!
//! - where bubblewrap works, git runs in the sandbox (`bwrap`): the workspace read-only, no
//!   network, an empty environment; whatever git starts is confined as the agent's own
//!   commands are;
//! - in any case the dangerous keys are overridden on the command line (which wins over
//!   every config file), filter drivers the config names are made the identity, system and
//!   global config are not read, lazy fetches and every transport are off, the environment is
//!   empty but for what git needs, `.git` must be a real directory of the workspace (not a
//!   link or a `gitdir:` file leading elsewhere), and only plumbing that applies no textconv
//!   or external diff (`status --porcelain`, `cat-file blob`) is used;
//! - output is bounded and git is killed after a deadline.

use crate::bwrap::{Policy, PATH};
use std::{path::Path, process::Stdio, time::Duration};
use tokio::io::AsyncReadExt as _;

/// How long one git command may run.
const DEADLINE: Duration = Duration::from_secs(15);

/// Why git gave no answer.
#[derive(Debug, PartialEq)]
pub enum GitError {
    /// The workspace is not a repository (or its `.git` leads elsewhere).
    NotARepository,
    /// Its output passed the bound.
    TooLarge(usize),
    /// It failed, or ran past its deadline (what it said, shortened).
    Failed(String),
}

/// Overrides given to every git command (`-c` wins over every config file).
const OVERRIDES: &[&str] = &[
    "core.fsmonitor=false",
    "core.hooksPath=/dev/null",
    "core.sshCommand=false",
    "core.askPass=false",
    "core.pager=cat",
    "core.editor=false",
    "core.untrackedCache=false",
    "credential.helper=",
    "protocol.allow=never",
    "diff.external=false",
    "gc.auto=0",
    "maintenance.auto=false",
    "safe.directory=*",
];

/// The sandbox git runs in on the host's behalf: read-only, no network, small bounds.
fn host_policy() -> Policy {
    Policy {
        network: false,
        cpu_secs: 15,
        memory_mb: 1024,
        max_processes: 0,
        tmp_mb: 16,
        file_mb: 0,
        read_only: Vec::new(),
        cgroups: false,
    }
}

/// What changed since the last commit, for the web client's Changes tab: `(status, path)`
/// with status `A` (new files too), `M`, `D`, `R` or `U`, from `git status`.
pub async fn changes(workspace: &Path, max_output: usize) -> Result<Vec<(String, String)>, GitError> {
    let out = run(workspace, &["status", "--porcelain=v1", "-uall"], max_output).await?;
    Ok(parse_status(&String::from_utf8_lossy(&out)))
}

/// `git status --porcelain=v1` as `(status, path)` pairs (see [`changes`]); also what a
/// runtime that runs git elsewhere (in OpenHands' sandbox) reads back.
pub fn parse_status(out: &str) -> Vec<(String, String)> {
    out.lines()
        // What another machine printed is not trusted to start with two ASCII bytes.
        .filter(|l| l.len() > 3 && l.is_char_boundary(2))
        .map(|line| {
            let (code, path) = line.split_at(2);
            let path = path.trim().rsplit(" -> ").next().unwrap_or("").trim_matches('"');
            let status = match code.trim() {
                "??" | "A" | "AM" => "A",
                c if c.contains('D') => "D",
                c if c.contains('R') => "R",
                c if c.contains('M') => "M",
                _ => "U",
            };
            (status.to_owned(), path.to_owned())
        })
        .collect()
}

/// A file (relative to the workspace) as of the last commit; `None` when it was not
/// committed or git cannot say. Only `TooLarge` is an error.
pub async fn original(workspace: &Path, rel: &Path, max_output: usize) -> Result<Option<Vec<u8>>, GitError> {
    match run(workspace, &["cat-file", "blob", &format!("HEAD:{}", rel.display())], max_output).await {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e @ GitError::TooLarge(_)) => Err(e),
        Err(_) => Ok(None),
    }
}

/// Runs `git args...` on the repository `workspace`; its standard output, at most
/// `max_output` bytes.
pub async fn run(workspace: &Path, args: &[&str], max_output: usize) -> Result<Vec<u8>, GitError> {
    let dot_git = workspace.join(".git");
    match std::fs::symlink_metadata(&dot_git) {
        Ok(m) if m.file_type().is_dir() => {}
        _ => return Err(GitError::NotARepository),
    }
    let sandboxed = crate::bwrap::works().is_ok();
    let mut argv: Vec<String> = vec!["git".into(), "--no-optional-locks".into()];
    for o in OVERRIDES {
        argv.extend(["-c".into(), (*o).into()]);
    }
    for driver in filter_drivers(workspace, sandboxed).await {
        for (key, value) in [("clean", "cat"), ("smudge", "cat"), ("process", ""), ("required", "false")] {
            argv.extend(["-c".into(), format!("filter.{driver}.{key}={value}")]);
        }
    }
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    let out = execute(workspace, sandboxed, &argv, max_output).await?;
    Ok(out)
}

/// The filter drivers the repository's config (and what it includes) defines.
async fn filter_drivers(workspace: &Path, sandboxed: bool) -> Vec<String> {
    let argv: Vec<String> =
        ["git", "--no-optional-locks", "config", "--name-only", "--list"].iter().map(|s| (*s).to_owned()).collect();
    let Ok(out) = execute(workspace, sandboxed, &argv, 1 << 20).await else { return Vec::new() };
    let mut drivers: Vec<String> = String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|key| {
            let rest = key.strip_prefix("filter.")?;
            let (driver, _) = rest.rsplit_once('.')?;
            Some(driver.to_owned())
        })
        .collect();
    drivers.sort();
    drivers.dedup();
    drivers
}

/// The environment of every git command: only what git needs, and what pins the repository
/// to the workspace (`GIT_DIR`, `GIT_WORK_TREE` win over `core.worktree`).
fn git_env(workspace: &Path) -> Vec<(String, String)> {
    let ws = workspace.display().to_string();
    [
        ("GIT_DIR", format!("{ws}/.git")),
        ("GIT_WORK_TREE", ws),
        ("GIT_CONFIG_NOSYSTEM", "1".into()),
        ("GIT_CONFIG_GLOBAL", "/dev/null".into()),
        ("GIT_ATTR_NOSYSTEM", "1".into()),
        ("GIT_NO_LAZY_FETCH", "1".into()),
        ("GIT_TERMINAL_PROMPT", "0".into()),
        ("GIT_OPTIONAL_LOCKS", "0".into()),
        ("GIT_PROTOCOL_FROM_USER", "0".into()),
        ("LC_ALL", "C".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

async fn execute(workspace: &Path, sandboxed: bool, argv: &[String], max_output: usize) -> Result<Vec<u8>, GitError> {
    let env = git_env(workspace);
    let mut command = if sandboxed {
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        let prepared =
            host_policy().prepare(workspace, false, &env, &args).map_err(|e| GitError::Failed(e.to_string()))?;
        prepared.command
    } else {
        let mut c = tokio::process::Command::new(&argv[0]);
        c.args(&argv[1..]).env_clear().env("PATH", PATH).env("HOME", "/nonexistent").envs(env).current_dir(workspace);
        c
    };
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true).process_group(0);
    let mut child = command.spawn().map_err(|e| GitError::Failed(format!("cannot run git: {e}")))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let work = async {
        let mut out = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = stdout.read(&mut chunk).await.map_err(|e| GitError::Failed(e.to_string()))?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
            if out.len() > max_output {
                return Err(GitError::TooLarge(max_output));
            }
        }
        let mut err = Vec::new();
        let _ = (&mut stderr).take(4096).read_to_end(&mut err).await;
        let status = child.wait().await.map_err(|e| GitError::Failed(e.to_string()))?;
        if status.success() {
            Ok(out)
        } else {
            let said = String::from_utf8_lossy(&err);
            if said.contains("not a git repository") {
                Err(GitError::NotARepository)
            } else {
                Err(GitError::Failed(said.chars().take(300).collect::<String>().trim().to_owned()))
            }
        }
    };
    match tokio::time::timeout(DEADLINE, work).await {
        Ok(result) => result,
        Err(_) => Err(GitError::Failed(format!("git did not finish within {} s", DEADLINE.as_secs()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) {
        let ok = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "core.hooksPath=/dev/null"])
            .args(args)
            .current_dir(dir)
            .envs([("GIT_CONFIG_NOSYSTEM", "1"), ("GIT_CONFIG_GLOBAL", "/dev/null")])
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    }

    /// A repository whose config names a command for every hook git offers, each of which
    /// would leave a marker outside the workspace (and one inside).
    #[tokio::test]
    async fn nothing_the_repository_configures_runs() {
        let outside = tempfile::tempdir_in(std::env::var("CARGO_TARGET_TMPDIR").unwrap_or("/var/tmp".into())).unwrap();
        let ws = tempfile::tempdir().unwrap();
        let root = ws.path();
        git(root, &["init", "-q"]);
        std::fs::write(root.join("a.txt"), "one\n").unwrap();
        std::fs::write(root.join(".gitattributes"), "*.txt filter=evil diff=evil\n").unwrap();
        git(root, &["add", "."]);
        git(root, &["commit", "-qm", "first"]);
        let marker = |name: &str| {
            format!(
                "touch {}/{name}; touch pwned-{name}; env > {}/env-{name}",
                outside.path().display(),
                outside.path().display()
            )
        };
        for (key, value) in [
            ("core.fsmonitor", marker("fsmonitor")),
            ("core.hooksPath", outside.path().display().to_string()),
            ("filter.evil.clean", marker("clean")),
            ("filter.evil.smudge", marker("smudge")),
            ("filter.evil.process", marker("process")),
            ("diff.evil.textconv", marker("textconv")),
            ("diff.external", marker("external")),
            ("core.sshCommand", marker("ssh")),
            ("core.worktree", "/".to_owned()),
        ] {
            git(root, &["config", key, &value]);
        }
        let hooks = root.join(".git/hooks");
        std::fs::create_dir_all(&hooks).unwrap();
        for hook in ["post-index-change", "pre-commit", "reference-transaction"] {
            let path = hooks.join(hook);
            std::fs::write(&path, format!("#!/bin/sh\n{}\n", marker(hook))).unwrap();
            std::process::Command::new("chmod").arg("+x").arg(&path).status().unwrap();
        }
        // Changed content, so status compares it (through the clean filter, were it run).
        std::fs::write(root.join("a.txt"), "two\n").unwrap();
        std::fs::write(root.join("b.txt"), "new\n").unwrap();
        let status = run(root, &["status", "--porcelain=v1", "-uall"], 1 << 20).await.unwrap();
        let status = String::from_utf8(status).unwrap();
        assert!(status.contains(" M a.txt") && status.contains("?? b.txt"), "{status}");
        assert!(!status.contains("etc/"), "core.worktree is ignored: {status}");
        let blob = run(root, &["cat-file", "blob", "HEAD:a.txt"], 1 << 20).await.unwrap();
        assert_eq!(blob, b"one\n");
        let left: Vec<_> = std::fs::read_dir(outside.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "ran: {left:?}");
        let inside: Vec<_> = std::fs::read_dir(root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("pwned"))
            .collect();
        assert!(inside.is_empty(), "ran: {inside:?}");
    }

    #[tokio::test]
    async fn a_dot_git_that_leads_elsewhere_is_not_a_repository_and_output_is_bounded() {
        let other = tempfile::tempdir().unwrap();
        git(other.path(), &["init", "-q"]);
        let ws = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(other.path().join(".git"), ws.path().join(".git")).unwrap();
        assert_eq!(run(ws.path(), &["status"], 1000).await, Err(GitError::NotARepository));
        let ws2 = tempfile::tempdir().unwrap();
        std::fs::write(ws2.path().join(".git"), format!("gitdir: {}/.git\n", other.path().display())).unwrap();
        assert_eq!(run(ws2.path(), &["status"], 1000).await, Err(GitError::NotARepository));
        let ws3 = tempfile::tempdir().unwrap();
        git(ws3.path(), &["init", "-q"]);
        for i in 0..200 {
            std::fs::write(ws3.path().join(format!("file-with-a-long-name-{i}.txt")), "x").unwrap();
        }
        assert_eq!(run(ws3.path(), &["status", "--porcelain=v1", "-uall"], 1000).await, Err(GitError::TooLarge(1000)));
    }
}
