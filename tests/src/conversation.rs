//! Conversations as the tests start and read them: one helper each, instead of a copy per
//! test file.

use crate::TestHost;
use serde_json::{json, Value};

/// Creates a conversation with a first message (200 asserted); its id.
pub async fn create(host: &TestHost, message: &str) -> String {
    let r = host.post_json("/api/conversations", &json!({ "initial_user_msg": message })).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["conversation_id"].as_str().unwrap().to_owned()
}

/// An agent's message with exactly `text`.
pub fn agent_says(e: &Value, text: &str) -> bool {
    e["action"] == "message" && e["source"] == "agent" && e["args"]["content"] == text
}

/// The conversation's stored events (a first page of 100) once `done` holds for them; fails
/// after `wait`, showing them.
pub async fn events_until(
    host: &TestHost,
    id: &str,
    what: &str,
    wait: std::time::Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let started = std::time::Instant::now();
    loop {
        let r = host.get(&format!("/api/conversations/{id}/events?limit=100")).await;
        let events = r.json()["events"].as_array().cloned().unwrap_or_default();
        if done(&events) {
            return events;
        }
        assert!(started.elapsed() < wait, "waited {wait:?} for {what}: {events:#?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
