//! Where the agent's tools act: a directory per conversation (its workspace) and commands run
//! in it. This is the `local` runtime: a shell of the host's user in the workspace, no
//! isolation (SaaS mode refuses it). Each command runs in its own process group, so a
//! timeout or a stop kills everything it started.

use std::{
    path::{Component, Path, PathBuf},
    process::Stdio,
    time::Duration,
};
use tokio::io::AsyncReadExt as _;

/// A conversation's workspace.
#[derive(Clone, Debug)]
pub struct Workspace {
    root: PathBuf,
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
    pub fn open(root: &Path, conversation_id: &str) -> std::io::Result<Workspace> {
        if conversation_id.is_empty() || !conversation_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a conversation id"));
        }
        let root = root.join(conversation_id);
        std::fs::create_dir_all(&root)?;
        // A git repository from the start, as OpenHands' runtime makes one: the web client's
        // Changes tab lists what the agent changed. Best effort: without git, no changes list.
        if !root.join(".git").exists() {
            let made = std::process::Command::new("git")
                .args(["init", "-q"])
                .current_dir(&root)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !made.is_ok_and(|s| s.success()) {
                tracing::warn!(workspace = %root.display(), "git init failed: the workspace's changes will not be listed");
            }
        }
        Ok(Workspace { root: root.canonicalize()? })
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

    /// Runs `command` with bash in the workspace, stdout and stderr together, at most
    /// `max_output` characters kept (the rest noted), killed (its whole process group) after
    /// `timeout` or when `stop` fires.
    pub async fn run(
        &self,
        command: &str,
        timeout: Duration,
        max_output: usize,
        stop: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<Ran> {
        let mut child = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(format!("exec 2>&1\n{command}"))
            .current_dir(&self.root)
            .env("HOME", &self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id();
        let mut stdout = child.stdout.take().expect("piped");
        let mut total = 0usize;
        let read = async {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                let n = stdout.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                total += n;
                // Keep a little more than the limit: the cut is made on characters below.
                if buf.len() < max_output * 4 + 4 {
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
            let status = child.wait().await?;
            Ok::<_, std::io::Error>((buf, status))
        };
        let outcome = tokio::select! {
            r = read => Ok(r?),
            () = tokio::time::sleep(timeout) => Err("timed out"),
            () = stop => Err("stopped"),
        };
        let (buf, exit_code, killed) = match outcome {
            Ok((buf, status)) => (buf, status.code().unwrap_or(-1), None),
            Err(why) => {
                if let Some(pid) = pid {
                    kill_group(pid).await;
                }
                (Vec::new(), -1, Some(why))
            }
        };
        let text = String::from_utf8_lossy(&buf);
        let output = if total > buf.len() || text.chars().count() > max_output {
            let kept: String = text.chars().take(max_output).collect();
            format!("{kept}\n[... output truncated: the first {max_output} characters of {total} bytes are shown]")
        } else {
            text.into_owned()
        };
        Ok(Ran { exit_code, output, killed })
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
        let ws = Workspace::open(dir.path(), "c0ffee").unwrap();
        (dir, ws)
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
        assert!(Workspace::open(ws.root(), "../x").is_err());
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
