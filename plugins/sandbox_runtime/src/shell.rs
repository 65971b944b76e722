//! A conversation's shell, as OpenHands' bash session behaves for `execute_bash`: a new
//! command, input to the running one, or more of its output; the command goes on between
//! calls until it ends or its limit kills it.

use crate::workspace::{Running, Wait, Waited, Workspace};
use std::time::Duration;

/// How long a command may print nothing before the call returns and it goes on (OpenHands'
/// bash session's no-change timeout).
pub(crate) const NO_OUTPUT_WAIT: Duration = Duration::from_secs(10);

/// The conversation's shell: the command still running after its call returned, if any.
#[derive(Default)]
pub(crate) struct Shell {
    running: Option<Running>,
}

/// What one call did: the exit code (-1 while it runs or when killed), what the agent reads,
/// and whether the command is over.
#[derive(Debug, PartialEq)]
pub(crate) struct Step {
    pub(crate) exit_code: i32,
    pub(crate) output: String,
    pub(crate) done: bool,
}

/// The bounds of a command: how long it may run, how much of its output one call keeps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    pub(crate) limit: Duration,
    pub(crate) max_output: usize,
}

impl Shell {
    /// Kills the running command (the user stopped the agent, the conversation closed).
    pub(crate) async fn kill(&mut self) -> bool {
        match self.running.take() {
            Some(mut running) => {
                running.kill().await;
                true
            }
            None => false,
        }
    }

    /// One call: `command` is new (refused while one runs), input or a key for the running
    /// one (`is_input`), or empty to read more of it. `wait` bounds this call (default: until
    /// it prints nothing for [`NO_OUTPUT_WAIT`]); `limit` the command; `stop` kills it.
    pub(crate) async fn step(
        &mut self,
        ws: &Workspace,
        command: &str,
        is_input: bool,
        wait: Option<Duration>,
        bounds: Bounds,
        stop: impl std::future::Future<Output = ()>,
    ) -> Step {
        let Bounds { limit, max_output } = bounds;
        let early = |output: &str, done: bool| Step { exit_code: -1, output: output.to_owned(), done };
        let wait = wait.map_or(Wait::NoOutputFor(NO_OUTPUT_WAIT), Wait::For);
        let running = match (self.running.as_mut(), is_input, command.trim().is_empty()) {
            (None, true, _) => return early("ERROR: No previous running command to interact with.", true),
            (None, false, true) => return early("ERROR: No previous running command to retrieve logs from.", true),
            (Some(_), false, false) => {
                let refused = format!(
                    "[Your command \"{command}\" is NOT executed. The previous command is still running - You CANNOT send new commands until the previous command is completed. By setting `is_input` to `true`, you can interact with the current process: You may wait longer to see additional output of the previous command by sending empty command '', send other commands to interact with the current process, send keys (\"C-c\", \"C-z\", \"C-d\") to interrupt/kill the previous command before sending your new command, or use the timeout parameter in execute_bash for future commands.]"
                );
                return early(&refused, false);
            }
            (Some(running), true, _) => {
                match command.trim() {
                    "C-c" => running.signal("INT").await,
                    "C-z" => running.signal("TSTP").await,
                    "C-d" => running.close_input(),
                    _ => {
                        if let Err(e) = running.input(command).await {
                            return early(&format!("ERROR: the running command takes no input: {e}"), false);
                        }
                    }
                }
                running
            }
            (Some(running), false, true) => running,
            (None, false, false) => match ws.start(command, limit) {
                Ok(started) => self.running.insert(started),
                Err(e) => return early(&format!("cannot run the command: {e}"), true),
            },
        };
        let limit = running.limit();
        let seen = running.wait(wait, max_output, stop).await;
        let (exit_code, note, done) = match seen.state {
            Waited::Exited(code) => (code, String::new(), true),
            Waited::Killed("timed out") => {
                (-1, format!("\n[The command was killed after {} s.]", limit.as_secs_f64()), true)
            }
            Waited::Killed(why) => (-1, format!("\n[The command was {why}.]"), true),
            Waited::Running => {
                let waited = match wait {
                    Wait::For(t) => format!("The command timed out after {} seconds.", t.as_secs_f64()),
                    _ => format!("The command has no new output after {} seconds.", NO_OUTPUT_WAIT.as_secs()),
                };
                let note = format!(
                    "\n[{waited} You may wait longer to see additional output by sending empty command '', send other commands to interact with the current process, send keys to interrupt/kill the command, or use the timeout parameter in execute_bash for future commands.]"
                );
                (-1, note, false)
            }
        };
        if done {
            self.running = None;
        }
        Step { exit_code, output: format!("{}{note}", seen.output), done }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::Isolation;

    async fn call(
        shell: &mut Shell,
        ws: &Workspace,
        command: &str,
        is_input: bool,
        timeout: Option<f64>,
    ) -> (i32, String, bool) {
        let wait = timeout.map(Duration::from_secs_f64);
        let bounds = Bounds { limit: Duration::from_secs(30), max_output: 10_000 };
        let s = shell.step(ws, command, is_input, wait, bounds, std::future::pending()).await;
        (s.exit_code, s.output, s.done)
    }

    async fn a_running_command_takes_input_and_keys_in(isolation: Isolation) {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::open(dir.path(), "1npu7", isolation).unwrap();
        let mut shell = Shell::default();
        assert!(call(&mut shell, &ws, "hi", true, None)
            .await
            .1
            .contains("No previous running command to interact with"));
        assert!(call(&mut shell, &ws, "", false, None)
            .await
            .1
            .contains("No previous running command to retrieve logs"));

        // A command waiting for input returns after its timeout and goes on running.
        let (code, out, done) =
            call(&mut shell, &ws, "echo asking; read name; echo hello $name", false, Some(0.5)).await;
        assert_eq!((code, done), (-1, false), "{out}");
        assert!(out.starts_with("asking\n") && out.contains("timed out after 0.5 seconds"), "{out}");
        // Meanwhile, a new command is refused; input reaches it.
        let (_, out, _) = call(&mut shell, &ws, "ls", false, None).await;
        assert!(out.contains("is NOT executed"), "{out}");
        let (code, out, done) = call(&mut shell, &ws, "bob", true, Some(5.0)).await;
        assert_eq!((code, done, out.as_str()), (0, true, "hello bob\n"));

        // C-c interrupts a command that would run long; the shell takes new commands again.
        let (_, out, done) = call(&mut shell, &ws, "echo start; sleep 25; echo never", false, Some(0.5)).await;
        assert!(!done && out.starts_with("start"), "{out}");
        let (_, out, done) = call(&mut shell, &ws, "C-c", true, Some(5.0)).await;
        assert!(done && !out.contains("never"), "{out}");
        // C-d ends a reader's input.
        let (_, _, done) = call(&mut shell, &ws, "wc -l", false, Some(0.3)).await;
        assert!(!done);
        call(&mut shell, &ws, "one", true, Some(0.2)).await;
        let (code, out, done) = call(&mut shell, &ws, "C-d", true, Some(5.0)).await;
        assert_eq!((code, done, out.trim()), (0, true, "1"));
        // An empty command shows what a running command printed since.
        let (_, _, done) = call(&mut shell, &ws, "sleep 0.6; echo later", false, Some(0.2)).await;
        assert!(!done);
        let (code, out, done) = call(&mut shell, &ws, "", false, Some(5.0)).await;
        assert_eq!((code, done, out.as_str()), (0, true, "later\n"));
    }

    #[tokio::test]
    async fn a_running_command_takes_input_and_keys_in_a_local_shell() {
        a_running_command_takes_input_and_keys_in(Isolation::Local).await;
    }

    #[tokio::test]
    async fn a_running_command_takes_input_and_keys_in_the_sandbox() {
        a_running_command_takes_input_and_keys_in(crate::tests::sandbox(30, 1024, 64, 64, 0)).await;
    }

    #[tokio::test]
    async fn a_command_is_killed_at_the_servers_limit_even_between_calls() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::open(dir.path(), "l1m17", Isolation::Local).unwrap();
        let mut shell = Shell::default();
        let bounds = Bounds { limit: Duration::from_millis(600), max_output: 1000 };
        let wait = Some(Duration::from_millis(200));
        let s = shell.step(&ws, "echo a; sleep 20", false, wait, bounds, std::future::pending()).await;
        assert!(!s.done);
        let wait = Some(Duration::from_secs(5));
        let s = shell.step(&ws, "", false, wait, bounds, std::future::pending()).await;
        assert_eq!((s.exit_code, s.done), (-1, true));
        assert!(s.output.contains("killed after 0.6 s"), "{}", s.output);
    }
}
