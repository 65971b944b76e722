//! OpenHands-shaped events (as OpenHands 0.62's `event_to_dict` writes them).
//!
//! Stored events get their `id` from the conversation store; live-only payloads (status
//! updates, streaming deltas) have none.

use crate::llm::{ChatMessage, Completion};
use serde_json::{json, Value};

/// Now, as OpenHands writes timestamps.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A `MessageAction` from the user.
pub fn user_message(content: &str, image_urls: &[String]) -> Value {
    json!({
        "timestamp": now(), "source": "user", "message": content, "action": "message",
        "args": { "content": content, "image_urls": image_urls, "file_urls": [], "wait_for_response": false },
    })
}

/// A `MessageAction` from the agent, with the turn's metrics.
pub fn agent_message(completion: &Completion, model: &str, context_window: i64, totals: &Totals) -> Value {
    json!({
        "timestamp": now(), "source": "agent", "message": completion.content, "action": "message",
        "args": { "content": completion.content, "image_urls": null, "file_urls": null, "wait_for_response": true },
        "llm_metrics": llm_metrics(completion, model, context_window, totals),
    })
}

/// OpenHands' `llm_metrics` of an LLM call, with the conversation's running totals.
pub fn llm_metrics(completion: &Completion, model: &str, context_window: i64, totals: &Totals) -> Value {
    json!({
        "model_name": model,
        "accumulated_cost": totals.cost,
        "accumulated_token_usage": {
            "model": model,
            "prompt_tokens": totals.prompt_tokens,
            "completion_tokens": totals.completion_tokens,
            "cache_read_tokens": 0, "cache_write_tokens": 0,
            "context_window": context_window, "per_turn_token": completion.usage.total_tokens,
        },
        "costs": [{ "model": model, "cost": completion.cost, "timestamp": now() }],
    })
}

/// Running totals of a conversation (what its metadata keeps).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    pub cost: f64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
}

impl Totals {
    pub fn add(&mut self, c: &Completion) {
        self.cost += c.cost;
        self.prompt_tokens += c.usage.prompt_tokens;
        self.completion_tokens += c.usage.completion_tokens;
        self.total_tokens += c.usage.total_tokens;
    }
}

/// `AgentStateChangedObservation`: loading, running, awaiting_user_input, stopped, error. For
/// `error`, `reason` is the status id the web client shows (e.g.
/// `STATUS$ERROR_LLM_AUTHENTICATION`).
pub fn agent_state_changed(state: &str, reason: &str) -> Value {
    json!({
        "timestamp": now(), "source": "agent", "message": "", "observation": "agent_state_changed",
        "content": "", "extras": { "agent_state": state, "reason": reason },
    })
}

/// `ErrorObservation`.
pub fn error_observation(message: &str, error_id: &str) -> Value {
    json!({
        "timestamp": now(), "source": "agent", "message": message, "observation": "error",
        "content": message, "extras": { "error_id": error_id },
    })
}

/// A status update (`{'status_update': True, 'type': 'info'|'error', 'id': ..., 'message': ...}`).
pub fn status_update(kind: &str, id: &str, message: &str) -> Value {
    json!({ "status_update": true, "type": kind, "id": id, "message": message })
}

/// The error a conversation gets when its user's limit of running conversations closes it.
pub fn too_many_conversations() -> Value {
    status_update(
        "error",
        "AGENT_ERROR$TOO_MANY_CONVERSATIONS",
        "Too many conversations at once. If you are still using this one, try reactivating it by prompting the agent to continue",
    )
}

/// The title update OpenHands emits when it names a conversation.
pub fn title_update(conversation_id: &str, title: &str) -> Value {
    json!({ "status_update": true, "type": "info", "message": conversation_id, "conversation_title": title })
}

/// A streamed piece of the agent's reply: live only, never stored; the full message follows
/// as a `message` action.
pub fn streaming_delta(delta: &str, seq: u64) -> Value {
    json!({
        "timestamp": now(), "source": "agent", "message": delta, "action": "streaming_message",
        "args": { "delta": delta, "seq": seq }, "streaming": true,
    })
}

/// Whether a stored event is a chat message, and whose.
fn message_role(event: &Value) -> Option<&'static str> {
    if event["action"] != "message" {
        return None;
    }
    match event["source"].as_str() {
        Some("user") => Some("user"),
        Some("agent") => Some("assistant"),
        _ => None,
    }
}

/// The chat history of stored events, after an optional system prompt.
pub fn history(system_prompt: &str, events: &[Value]) -> Vec<ChatMessage> {
    let mut messages = Vec::new();
    if !system_prompt.is_empty() {
        messages.push(ChatMessage::new("system", system_prompt));
    }
    for e in events {
        // A tool call (an action with `tool_call_metadata`) joins the assistant message of
        // its response; its observation is the tool's answer.
        let meta = &e["tool_call_metadata"];
        if let Some(id) = meta["tool_call_id"].as_str() {
            let call = json!({ "id": id, "type": "function",
                               "function": { "name": meta["function_name"], "arguments": tool_arguments(e) } });
            if e.get("action").is_some() {
                match messages.last_mut() {
                    Some(last) if last.role == "assistant" && last.tool_calls.is_some() => {
                        if let Some(Value::Array(calls)) = last.tool_calls.as_mut() {
                            calls.push(call);
                        }
                    }
                    _ => messages
                        .push(ChatMessage { tool_calls: Some(json!([call])), ..ChatMessage::new("assistant", "") }),
                }
            } else if e.get("observation").is_some() {
                let content = e["content"].as_str().unwrap_or_default();
                messages.push(ChatMessage { tool_call_id: Some(id.to_owned()), ..ChatMessage::new("tool", content) });
            }
            continue;
        }
        if let Some(role) = message_role(e) {
            let content = e["args"]["content"].as_str().or(e["message"].as_str()).unwrap_or_default();
            messages.push(ChatMessage::new(role, content));
        }
    }
    // A call whose answer was never stored (the host stopped in between) is answered as
    // interrupted: the model needs an answer to every call.
    let mut answered: Vec<String> = messages.iter().filter_map(|m| m.tool_call_id.clone()).collect();
    let mut i = 0;
    while i < messages.len() {
        let ids: Vec<String> = messages[i]
            .tool_calls
            .as_ref()
            .and_then(Value::as_array)
            .map(|calls| calls.iter().filter_map(|c| c["id"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let mut at = i + 1;
        while at < messages.len() && messages[at].role == "tool" {
            at += 1;
        }
        for id in ids {
            if answered.contains(&id) {
                continue;
            }
            let filler =
                ChatMessage { tool_call_id: Some(id.clone()), ..ChatMessage::new("tool", "(no result recorded)") };
            messages.insert(at, filler);
            answered.push(id);
            at += 1;
        }
        i += 1;
    }
    messages
}

/// The arguments of a stored tool action, as the model would have written them.
fn tool_arguments(e: &Value) -> String {
    let a = &e["args"];
    let args = match e["action"].as_str() {
        Some("run") => json!({ "command": a["command"] }),
        Some("edit") => json!({ "command": a["command"], "path": a["path"], "file_text": a["file_text"],
                                "old_str": a["old_str"], "new_str": a["new_str"], "insert_line": a["insert_line"] }),
        Some("read") => json!({ "command": "view", "path": a["path"], "view_range": a["view_range"] }),
        Some("think") => json!({ "thought": a["thought"] }),
        Some("finish") => json!({ "message": e["message"] }),
        _ => json!({}),
    };
    args.to_string()
}

/// A title from the first user message (OpenHands auto-titles a conversation from it).
pub fn title_from(message: &str) -> String {
    let line = message.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("New conversation");
    let mut title: String = line.chars().take(50).collect();
    if line.chars().count() > 50 {
        title.push('…');
    }
    title
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keeps_messages_in_order_with_roles() {
        let events = vec![
            agent_state_changed("loading", ""),
            user_message("hi", &[]),
            error_observation("x", ""),
            json!({ "source": "agent", "action": "message", "args": { "content": "hello" } }),
        ];
        let h = history("sys", &events);
        let roles: Vec<_> = h.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect();
        assert_eq!(roles, [("system", "sys"), ("user", "hi"), ("assistant", "hello")]);
    }

    #[test]
    fn titles_are_short_first_lines() {
        assert_eq!(title_from("\n  Fix the bug\nin main"), "Fix the bug");
        assert_eq!(title_from(&"x".repeat(60)).chars().count(), 51);
    }
}
