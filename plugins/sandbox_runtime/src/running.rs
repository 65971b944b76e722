//! A command started in a workspace, while it runs: waits (to its end, or until it is
//! quiet), input and keys, its workspace's disk quota, and killing all it started.

use sandbox::{cgroup::Cgroup, fs::Confined};
use std::{process::Stdio, sync::Arc, time::Duration};

/// A command started in a workspace: waited for (maybe several times, as OpenHands' bash
/// session returns after a while without output and the command goes on), given input,
/// interrupted. Dropped, it is killed with all it started.
pub struct Running {
    pub(super) child: tokio::process::Child,
    pub(super) pgid: Option<u32>,
    pub(super) stdin: Option<tokio::process::ChildStdin>,
    pub(super) output: tokio::sync::mpsc::Receiver<Vec<u8>>,
    pub(super) deadline: tokio::time::Instant,
    pub(super) limit: Duration,
    pub(super) cgroup: Option<Cgroup>,
    /// The workspace and the most disk it may take: looked at every few seconds while the
    /// command runs.
    pub(super) quota: Option<(Arc<Confined>, u64)>,
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

/// SIGKILL to a process group (with the system's `kill`: no unsafe code here). Starting
/// `kill` can fail on a loaded machine (no process slot, no memory): tried again, and said.
async fn kill_group(pgid: u32) {
    for attempt in 1..=5 {
        let sent = tokio::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        match sent {
            // A failure status is a group already gone.
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(pgid, attempt, error = %e, "cannot run kill to end a command's processes");
                tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
            }
        }
    }
}
