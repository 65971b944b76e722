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
