//! The agent's tools, as OpenHands' CodeAct agent offers them (`execute_bash`,
//! `str_replace_editor`, `think`, `finish`), and the events each call becomes: an action and
//! its observation in OpenHands' shapes (reference: OpenHands 0.62 `event_to_dict`), each with
//! `tool_call_metadata`, plus the text that goes back to the LLM as the tool's result.

use crate::runtime::{truncate, Running, Wait, Waited, Workspace};
use sandbox::fs::{FsError, Kind};
use serde_json::{json, Value};
use std::time::Duration;

/// The largest file the editor reads or rewrites, in bytes (more with a larger output limit).
const MAX_EDITED_BYTES: u64 = 4 << 20;

pub use crate::{llm::ToolCall, toolspec::definitions};

/// What a manager configured for tools: where workspaces live, the limits.
#[derive(Clone, Debug)]
pub struct ToolSetup {
    /// Each conversation's workspace is `<root>/<conversation id>`.
    pub root: std::path::PathBuf,
    pub limits: ToolLimits,
    /// LLM calls per user message at most (when the user's settings name none).
    pub max_iterations: usize,
    /// How commands are isolated.
    pub isolation: crate::runtime::Isolation,
    /// Git hosts cloned over plain HTTP (an internal server); all others over HTTPS.
    pub git_http_hosts: Vec<String>,
}

impl ToolSetup {
    /// The manager command `workspace` (`{"conversation_id"}`): where that conversation's
    /// tools act, for the host's workspace routes (the host checked the caller owns it).
    pub fn workspace_of(setup: Option<&ToolSetup>, id: &str) -> Result<Option<String>, plugin_sdk::PluginError> {
        let Some(setup) = setup else { return Ok(None) };
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(plugin_sdk::PluginError::invalid_argument("conversation_id is malformed"));
        }
        let path = setup.root.join(id);
        Ok(path.is_dir().then(|| path.display().to_string()))
    }
}

/// Limits of tool execution (the manager's config).
#[derive(Clone, Debug)]
pub struct ToolLimits {
    /// The longest a command may run.
    pub command_timeout: Duration,
    /// Characters of output kept (per command, per file view).
    pub max_output_chars: usize,
}

/// A call, ready to run: its action event (stored before it runs, so clients see it start)
/// and what it will do.
pub struct Planned {
    pub action: Value,
    meta: Value,
    work: Work,
}

enum Work {
    Bash { command: String, is_input: bool, timeout: Option<Duration> },
    Editor(Value),
    Think,
    Finish,
    Refused(String),
}

/// What a call did: its observation (without an id; `cause` is set by the caller), the result
/// that goes back to the LLM, and whether the agent finished.
pub struct Outcome {
    pub observation: Option<Value>,
    pub result: String,
    pub finished: bool,
}

fn metadata(call: &ToolCall, total: usize) -> Value {
    json!({ "function_name": call.name, "tool_call_id": call.id, "model_response": null, "total_calls_in_response": total })
}

/// The action a call is, before it runs.
pub fn plan(call: &ToolCall, total_calls: usize, limits: &ToolLimits) -> Planned {
    let meta = metadata(call, total_calls);
    let now = crate::events::now();
    let refused = |why: String| Planned {
        action: json!({ "timestamp": now, "source": "agent", "message": format!("Calling {}", call.name), "action": "message",
                        "args": { "content": "", "image_urls": null, "file_urls": null, "wait_for_response": false },
                        "tool_call_metadata": meta }),
        meta: meta.clone(),
        work: Work::Refused(why),
    };
    let args: Value = match serde_json::from_str(if call.arguments.trim().is_empty() { "{}" } else { &call.arguments })
    {
        Ok(v) => v,
        Err(e) => return refused(format!("the arguments of {} are not JSON: {e}", call.name)),
    };
    let text = |k: &str| args[k].as_str().map(str::to_owned);
    match call.name.as_str() {
        "execute_bash" => {
            let Some(command) = text("command") else { return refused("execute_bash needs `command`".to_owned()) };
            let timeout = args["timeout"]
                .as_f64()
                .filter(|t| t.is_finite() && *t > 0.0)
                .map(|t| Duration::from_secs_f64(t).min(limits.command_timeout));
            // "true"/"false" as OpenHands' schema says; a boolean from models that send one.
            let is_input =
                args["is_input"] == true || args["is_input"].as_str().is_some_and(|v| v.eq_ignore_ascii_case("true"));
            Planned {
                action: json!({
                    "timestamp": now, "source": "agent", "message": format!("Running command: {command}"), "action": "run",
                    "args": { "command": command, "is_input": is_input, "thought": "", "blocking": false, "is_static": false,
                              "cwd": null, "hidden": false, "confirmation_state": "confirmed", "security_risk": -1 },
                    "tool_call_metadata": meta,
                }),
                meta,
                work: Work::Bash { command, is_input, timeout },
            }
        }
        "str_replace_editor" => {
            let path = text("path").unwrap_or_default();
            let action = if args["command"] == "view" {
                json!({ "timestamp": now, "source": "agent", "message": format!("Reading file: {path}"), "action": "read",
                        "args": { "path": path, "start": 0, "end": -1, "thought": "", "security_risk": -1,
                                  "impl_source": "oh_aci", "view_range": args["view_range"] },
                        "tool_call_metadata": meta })
            } else {
                json!({ "timestamp": now, "source": "agent", "message": "", "action": "edit",
                        "args": { "path": path, "command": args["command"], "file_text": args["file_text"], "old_str": args["old_str"],
                                  "new_str": args["new_str"], "insert_line": args["insert_line"], "content": "", "start": 1, "end": -1,
                                  "thought": "", "security_risk": -1, "impl_source": "oh_aci" },
                        "tool_call_metadata": meta })
            };
            Planned { action, meta, work: Work::Editor(args) }
        }
        "think" => {
            let thought = text("thought").unwrap_or_default();
            Planned {
                action: json!({ "timestamp": now, "source": "agent", "message": format!("I am thinking...: {thought}"),
                                "action": "think", "args": { "thought": thought }, "tool_call_metadata": meta }),
                meta,
                work: Work::Think,
            }
        }
        "finish" => {
            let message = text("message").unwrap_or_default();
            Planned {
                action: json!({ "timestamp": now, "source": "agent", "message": message, "action": "finish",
                                "args": { "final_thought": message, "outputs": {}, "thought": "" }, "tool_call_metadata": meta }),
                meta,
                work: Work::Finish,
            }
        }
        other => refused(format!("there is no tool named {other}")),
    }
}

/// How long a command may print nothing before the call returns and it goes on (OpenHands'
/// bash session's no-change timeout).
pub const NO_OUTPUT_WAIT: Duration = Duration::from_secs(10);

/// The conversation's shell: the command still running after its call returned, if any.
#[derive(Default)]
pub struct Shell {
    running: Option<Running>,
}

impl Shell {
    /// Kills the running command (the user stopped the agent).
    pub async fn kill(&mut self) {
        if let Some(mut running) = self.running.take() {
            running.kill().await;
        }
    }
}

/// `execute_bash`, as OpenHands' bash session: a new command, input to the running one, or
/// more of its output. The exit code (-1 while it runs), what the model and the user see,
/// and whether the command is over.
async fn bash(
    shell: &mut Shell,
    ws: &Workspace,
    limits: &ToolLimits,
    command: &str,
    is_input: bool,
    timeout: Option<Duration>,
    stop: impl std::future::Future<Output = ()>,
) -> (i32, String, bool) {
    let wait = timeout.map_or(Wait::NoOutputFor(NO_OUTPUT_WAIT), Wait::For);
    let running = match (shell.running.as_mut(), is_input, command.trim().is_empty()) {
        (None, true, _) => return (-1, "ERROR: No previous running command to interact with.".to_owned(), true),
        (None, false, true) => {
            return (-1, "ERROR: No previous running command to retrieve logs from.".to_owned(), true)
        }
        (Some(_), false, false) => {
            let refused = format!(
                "[Your command \"{command}\" is NOT executed. The previous command is still running - You CANNOT send new commands until the previous command is completed. By setting `is_input` to `true`, you can interact with the current process: You may wait longer to see additional output of the previous command by sending empty command '', send other commands to interact with the current process, send keys (\"C-c\", \"C-z\", \"C-d\") to interrupt/kill the previous command before sending your new command, or use the timeout parameter in execute_bash for future commands.]"
            );
            return (-1, refused, false);
        }
        (Some(running), true, _) => {
            match command.trim() {
                "C-c" => running.signal("INT").await,
                "C-z" => running.signal("TSTP").await,
                "C-d" => running.close_input(),
                _ => {
                    if let Err(e) = running.input(command).await {
                        return (-1, format!("ERROR: the running command takes no input: {e}"), false);
                    }
                }
            }
            running
        }
        (Some(running), false, true) => running,
        (None, false, false) => match ws.start(command, limits.command_timeout) {
            Ok(started) => shell.running.insert(started),
            Err(e) => return (-1, format!("cannot run the command: {e}"), true),
        },
    };
    let limit = running.limit();
    let seen = running.wait(wait, limits.max_output_chars, stop).await;
    let (code, note, done) = match seen.state {
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
        shell.running = None;
    }
    (code, format!("{}{note}", seen.output), done)
}

/// Runs a planned call. `stop` ends a running command (the conversation was stopped).
pub async fn perform(
    planned: Planned,
    ws: &Workspace,
    shell: &mut Shell,
    limits: &ToolLimits,
    stop: impl std::future::Future<Output = ()>,
) -> Outcome {
    let meta = planned.meta;
    match planned.work {
        Work::Bash { command, is_input, timeout } => {
            let (exit_code, content, done) = bash(shell, ws, limits, &command, is_input, timeout, stop).await;
            let observation = json!({
                "timestamp": crate::events::now(), "source": "agent",
                "message": format!("Command `{command}` executed with exit code {exit_code}."),
                "observation": "run", "content": content,
                "extras": { "command": command, "hidden": false, "metadata": {
                    "exit_code": exit_code, "pid": -1, "username": null, "hostname": null,
                    "working_dir": ws.root().display().to_string(), "py_interpreter_path": null, "prefix": "", "suffix": "" } },
                "success": exit_code == 0, "tool_call_metadata": meta,
            });
            let result =
                if done { format!("{content}\n[Command finished with exit code {exit_code}]") } else { content };
            Outcome { observation: Some(observation), result, finished: false }
        }
        Work::Editor(args) => editor(&meta, &args, ws, limits),
        Work::Think => {
            let observation = json!({ "timestamp": crate::events::now(), "source": "agent", "message": "Your thought has been logged.",
                                      "observation": "think", "content": "Your thought has been logged.", "extras": {},
                                      "tool_call_metadata": meta });
            Outcome {
                observation: Some(observation),
                result: "Your thought has been logged.".to_owned(),
                finished: false,
            }
        }
        Work::Finish => Outcome { observation: None, result: "The task is finished.".to_owned(), finished: true },
        Work::Refused(why) => refused(&meta, &why),
    }
}

/// A call that cannot be carried out: an error observation the model reads and can correct.
fn refused(meta: &Value, why: &str) -> Outcome {
    let observation = json!({ "timestamp": crate::events::now(), "source": "agent", "message": why, "observation": "error",
                              "content": why, "extras": { "error_id": "" }, "tool_call_metadata": meta });
    Outcome { observation: Some(observation), result: format!("ERROR: {why}"), finished: false }
}

/// `str_replace_editor`: view gives a `read` observation, the rest an `edit` one.
fn editor(meta: &Value, args: &Value, ws: &Workspace, limits: &ToolLimits) -> Outcome {
    let command = args["command"].as_str().unwrap_or("");
    let given = args["path"].as_str().unwrap_or("");
    let rel = match ws.resolve(given) {
        Ok(p) => p,
        Err(why) => return refused(meta, &why),
    };
    let files = ws.files();
    let shown = ws.root().join(&rel).display().to_string();
    // What the agent may read or edit: the output limit's worth of text and more, never a
    // file so large that reading it would weigh on the host.
    let max_bytes = (limits.max_output_chars as u64).saturating_mul(4).max(MAX_EDITED_BYTES);
    let before = match files.read(&rel, max_bytes) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => Some(text),
            Err(_) => return refused(meta, &format!("{shown} is not a text file")),
        },
        Err(FsError::NotFound(_)) => None,
        Err(FsError::NotAFile(_)) if files.kind(&rel).ok().flatten() == Some(Kind::Dir) => None,
        Err(e) => return refused(meta, &format!("{given}: {e}")),
    };
    if command == "view" {
        let content = match &before {
            Some(text) => {
                let range: Vec<i64> = args["view_range"]
                    .as_array()
                    .map(|r| r.iter().filter_map(Value::as_i64).collect())
                    .unwrap_or_default();
                let (from, to) = match range.as_slice() {
                    [a, b] => (*a.max(&1) as usize, if *b < 0 { usize::MAX } else { *b as usize }),
                    _ => (1, usize::MAX),
                };
                let numbered: String = text
                    .lines()
                    .enumerate()
                    .filter(|(i, _)| i + 1 >= from && *i < to)
                    .map(|(i, l)| format!("{:>6}\t{l}\n", i + 1))
                    .collect();
                truncate(&numbered, limits.max_output_chars)
            }
            None => match files.list(&rel) {
                Ok(entries) => entries.into_iter().map(|e| e.name).collect::<Vec<_>>().join("\n"),
                Err(_) => return refused(meta, &format!("{shown} does not exist")),
            },
        };
        let observation = json!({ "timestamp": crate::events::now(), "source": "agent", "message": format!("I read the file {shown}."),
                                  "observation": "read", "content": content, "extras": { "path": shown, "impl_source": "oh_aci" },
                                  "tool_call_metadata": meta });
        return Outcome { observation: Some(observation), result: content, finished: false };
    }
    let backup = rel.with_file_name(format!(
        ".{}.oh-undo",
        rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let after: Result<(String, String), String> = match command {
        "create" => {
            if before.is_some() {
                Err(format!("{shown} exists already: use str_replace to change it"))
            } else {
                let text = args["file_text"].as_str().unwrap_or("").to_owned();
                Ok((text, format!("File created successfully at: {shown}")))
            }
        }
        "str_replace" => match (&before, args["old_str"].as_str()) {
            (None, _) => Err(format!("{shown} does not exist")),
            (_, None) => Err("str_replace needs `old_str`".to_owned()),
            (Some(text), Some(old)) => match text.matches(old).count() {
                1 => Ok((
                    text.replacen(old, args["new_str"].as_str().unwrap_or(""), 1),
                    format!("The file {shown} has been edited."),
                )),
                0 => Err(format!("No replacement was performed: old_str did not appear verbatim in {shown}.")),
                n => {
                    Err(format!("No replacement was performed: old_str appears {n} times in {shown}; make it unique."))
                }
            },
        },
        "insert" => match (&before, args["insert_line"].as_i64()) {
            (None, _) => Err(format!("{shown} does not exist")),
            (_, None) => Err("insert needs `insert_line`".to_owned()),
            (Some(text), Some(at)) => {
                let mut lines: Vec<&str> = text.lines().collect();
                if at < 0 || at as usize > lines.len() {
                    Err(format!("insert_line {at} is outside 0..={}", lines.len()))
                } else {
                    let new = args["new_str"].as_str().unwrap_or("");
                    lines.insert(at as usize, new);
                    Ok((format!("{}\n", lines.join("\n")), format!("The file {shown} has been edited.")))
                }
            }
        },
        "undo_edit" => match files.read(&backup, max_bytes).map(String::from_utf8) {
            Ok(Ok(previous)) => Ok((previous, format!("Last edit to {shown} undone successfully."))),
            _ => Err(format!("No edit history found for {shown}.")),
        },
        other => Err(format!("str_replace_editor has no command {other:?}")),
    };
    let (new_content, message) = match after {
        Ok(v) => v,
        Err(why) => return refused(meta, &why),
    };
    if let Some(old) = &before {
        let _ = files.write(&backup, old.as_bytes());
    }
    if let Err(e) = files.write(&rel, new_content.as_bytes()) {
        return refused(meta, &format!("cannot write {given}: {e}"));
    }
    let observation = json!({ "timestamp": crate::events::now(), "source": "agent", "message": format!("I edited the file {shown}."),
                              "observation": "edit", "content": message,
                              "extras": { "path": shown, "prev_exist": before.is_some(), "old_content": before,
                                          "new_content": new_content, "impl_source": "oh_aci", "diff": "" },
                              "tool_call_metadata": meta });
    Outcome { observation: Some(observation), result: message, finished: false }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Isolation;

    fn limits() -> ToolLimits {
        ToolLimits { command_timeout: Duration::from_secs(30), max_output_chars: 10_000 }
    }

    async fn call(
        shell: &mut Shell,
        ws: &Workspace,
        command: &str,
        is_input: bool,
        timeout: Option<f64>,
    ) -> (i32, String, bool) {
        let timeout = timeout.map(Duration::from_secs_f64);
        bash(shell, ws, &limits(), command, is_input, timeout, std::future::pending()).await
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
        a_running_command_takes_input_and_keys_in(crate::runtime::tests::sandbox(30, 1024, 64, 64, 0)).await;
    }

    #[tokio::test]
    async fn a_command_is_killed_at_the_servers_limit_even_between_calls() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::open(dir.path(), "l1m17", Isolation::Local).unwrap();
        let mut shell = Shell::default();
        let short = ToolLimits { command_timeout: Duration::from_millis(600), max_output_chars: 1000 };
        let wait = Some(Duration::from_millis(200));
        let (_, _, done) = bash(&mut shell, &ws, &short, "echo a; sleep 20", false, wait, std::future::pending()).await;
        assert!(!done);
        let wait = Some(Duration::from_secs(5));
        let (code, out, done) = bash(&mut shell, &ws, &short, "", false, wait, std::future::pending()).await;
        assert_eq!((code, done), (-1, true));
        assert!(out.contains("killed after 0.6 s"), "{out}");
    }
}
