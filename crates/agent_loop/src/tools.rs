//! The agent's tools, as OpenHands' CodeAct agent offers them (`execute_bash`,
//! `str_replace_editor`, `think`, `finish`), and the events each call becomes: an action and
//! its observation in OpenHands' shapes (reference: OpenHands 0.62 `event_to_dict`), each with
//! `tool_call_metadata`, plus the text that goes back to the LLM as the tool's result.

use plugin_sdk::{models::CommandRequest, CallContext, ErrorCode, RuntimeClient};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The largest file the editor reads or rewrites, in bytes (more with a larger output limit).
const MAX_EDITED_BYTES: u64 = 4 << 20;

pub use crate::{llm::ToolCall, toolspec::definitions};

/// What a manager has for tools: the deployment's runtime (`[extensions.runtime]`) and limits.
#[derive(Clone)]
pub struct ToolSetup {
    pub runtime: RuntimeClient,
    pub limits: ToolLimits,
    /// LLM calls per user message at most (when the user's settings name none).
    pub max_iterations: usize,
}

/// Limits of tool execution (the manager's config).
#[derive(Clone, Debug)]
pub struct ToolLimits {
    /// Characters of output kept (per command, per file view).
    pub max_output_chars: usize,
}

/// A conversation's workspace, as its tools reach it: through the runtime.
#[derive(Clone)]
pub struct Workspace {
    pub runtime: RuntimeClient,
    pub conversation_id: String,
    /// The workspace's directory as the agent's commands see it.
    pub root: String,
    /// The session's context (its user), for the runtime's calls.
    pub ctx: CallContext,
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

/// A path the agent named, relative to the workspace's root (see `sandbox::fs::relative_to`):
/// lexical only, the runtime checks links when it opens the file.
fn resolve(root: &str, given: &str) -> Result<PathBuf, String> {
    sandbox::fs::relative_to(Path::new(root), given).map_err(|e| e.to_string())
}

/// A call, ready to run: its action event (stored before it runs, so clients see it start)
/// and what it will do.
pub struct Planned {
    pub action: Value,
    meta: Value,
    work: Work,
}

enum Work {
    Bash { command: String, is_input: bool, timeout: Option<f64> },
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
pub fn plan(call: &ToolCall, total_calls: usize) -> Planned {
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
            // The runtime bounds every command itself; this bounds one call's wait.
            let timeout = args["timeout"].as_f64().filter(|t| t.is_finite() && *t > 0.0);
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

/// `execute_bash` through the runtime: what it printed, its exit code (-1 while it runs),
/// whether it is over. `stop` interrupts it (the conversation was stopped).
async fn bash(
    ws: &Workspace,
    limits: &ToolLimits,
    command: &str,
    is_input: bool,
    timeout: Option<f64>,
    stop: impl std::future::Future<Output = ()>,
) -> (i32, String, bool) {
    let request = CommandRequest {
        command: command.to_owned(),
        is_input,
        timeout_secs: timeout,
        max_output_chars: limits.max_output_chars,
    };
    let run = ws.runtime.run(ws.ctx.clone(), &ws.conversation_id, &request);
    tokio::pin!(run, stop);
    let result = tokio::select! {
        r = &mut run => r,
        () = &mut stop => loop {
            // Again until the call answers: an interrupt can reach the runtime before the
            // call it is meant for (both cross the host), and would then stop nothing.
            if let Err(e) = ws.runtime.interrupt(ws.ctx.clone(), &ws.conversation_id).await {
                tracing::warn!(conversation_id = %ws.conversation_id, error = %e, "the runtime did not interrupt the command");
            }
            tokio::select! {
                r = &mut run => break r,
                () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            }
        },
    };
    match result {
        Ok(r) => (r.exit_code, r.output, r.done),
        Err(e) => (-1, format!("cannot run the command: {}", e.message), true),
    }
}

/// Runs a planned call. `stop` ends a running command (the conversation was stopped).
pub async fn perform(
    planned: Planned,
    ws: &Workspace,
    limits: &ToolLimits,
    stop: impl std::future::Future<Output = ()>,
) -> Outcome {
    let meta = planned.meta;
    match planned.work {
        Work::Bash { command, is_input, timeout } => {
            let (exit_code, content, done) = bash(ws, limits, &command, is_input, timeout, stop).await;
            let observation = json!({
                "timestamp": crate::events::now(), "source": "agent",
                "message": format!("Command `{command}` executed with exit code {exit_code}."),
                "observation": "run", "content": content,
                "extras": { "command": command, "hidden": false, "metadata": {
                    "exit_code": exit_code, "pid": -1, "username": null, "hostname": null,
                    "working_dir": ws.root, "py_interpreter_path": null, "prefix": "", "suffix": "" } },
                "success": exit_code == 0, "tool_call_metadata": meta,
            });
            let result =
                if done { format!("{content}\n[Command finished with exit code {exit_code}]") } else { content };
            Outcome { observation: Some(observation), result, finished: false }
        }
        Work::Editor(args) => editor(&meta, &args, ws, limits).await,
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
async fn editor(meta: &Value, args: &Value, ws: &Workspace, limits: &ToolLimits) -> Outcome {
    let command = args["command"].as_str().unwrap_or("");
    let given = args["path"].as_str().unwrap_or("");
    let rel = match resolve(&ws.root, given) {
        Ok(p) => p,
        Err(why) => return refused(meta, &why),
    };
    let (runtime, id, ctx) = (&ws.runtime, ws.conversation_id.as_str(), || ws.ctx.clone());
    let rel_path = rel.display().to_string();
    let shown = Path::new(&ws.root).join(&rel).display().to_string();
    // What the agent may read or edit: the output limit's worth of text and more, never a
    // file so large that reading it would weigh on the host.
    let max_bytes = (limits.max_output_chars as u64).saturating_mul(4).max(MAX_EDITED_BYTES);
    let before = match runtime.read_file(ctx(), id, &rel_path, max_bytes).await {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => Some(text),
            Err(_) => return refused(meta, &format!("{shown} is not a text file")),
        },
        // Absent, or a directory (which `view` lists).
        Err(e) if e.code == ErrorCode::NOT_FOUND || e.code == ErrorCode::NOT_A_FILE => None,
        Err(e) => return refused(meta, &format!("{given}: {}", e.message)),
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
            None => match runtime.list_files(ctx(), id, &rel_path).await {
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
        "undo_edit" => {
            match runtime.read_file(ctx(), id, &backup.display().to_string(), max_bytes).await.map(String::from_utf8) {
                Ok(Ok(previous)) => Ok((previous, format!("Last edit to {shown} undone successfully."))),
                _ => Err(format!("No edit history found for {shown}.")),
            }
        }
        other => Err(format!("str_replace_editor has no command {other:?}")),
    };
    let (new_content, message) = match after {
        Ok(v) => v,
        Err(why) => return refused(meta, &why),
    };
    if let Some(old) = &before {
        let _ = runtime.write_file(ctx(), id, &backup.display().to_string(), old.as_bytes()).await;
    }
    if let Err(e) = runtime.write_file(ctx(), id, &rel_path, new_content.as_bytes()).await {
        return refused(meta, &format!("cannot write {given}: {}", e.message));
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
    use super::resolve;
    use std::path::Path;

    #[test]
    fn paths_stay_inside_lexically() {
        assert_eq!(resolve("/ws/c1", "a/b.txt").unwrap(), Path::new("a/b.txt"));
        assert_eq!(resolve("/ws/c1", "/ws/c1/x.py").unwrap(), Path::new("x.py"));
        assert_eq!(resolve("/ws/c1", "/workspace/x.py").unwrap(), Path::new("x.py"));
        assert!(resolve("/ws/c1", "../escape").unwrap_err().contains("outside the workspace"));
        assert!(resolve("/ws/c1", "/etc/passwd").is_err());
        assert!(resolve("/ws/c1", "a/../../b").is_err());
    }
}
