//! Feedback (OpenHands `feedback.py`): ratings of a user's own conversations and events, in
//! OpenHands' shapes, refused for anyone else's.

use oh_e2e::{llm::FakeLlm, Deployment};
use serde_json::{json, Value};
use std::time::Duration;

const ALICE: &str = "alice-feedback-key-0123456789";
const BOB: &str = "bob-feedback-key-0123456789";

fn profile(db: &str) -> String {
    let base = oh_e2e::saas_base_profile(db, &[("alice", ALICE), ("bob", BOB)], "");
    format!(
        "{base}[[extensions.routes]]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasFeedbackRoutes\"\nconfig = {{ database_url = \"{db}\" }}\n"
    )
}

#[tokio::test]
async fn ratings_are_stored_per_user_and_listed_per_event() {
    let db = oh_e2e::pg::TestDb::create().await;
    let llm = FakeLlm::start().await;
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("app_mode = \"saas\"\n", &profile(&db.url));
    let host = d.start();
    let settings = json!({ "llm_model": "openai/fake-model", "llm_base_url": llm.base_url, "llm_api_key": "sk-test" });
    assert_eq!(host.as_key(ALICE, reqwest::Method::POST, "/api/settings", Some(settings)).await.status, 200);
    let r = host
        .as_key(ALICE, reqwest::Method::POST, "/api/conversations", Some(json!({ "initial_user_msg": "hi" })))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.json()["conversation_id"].as_str().unwrap().to_owned();
    // Wait for the answer and the state after it: the conversation then has all its events
    // (state changes, message, answer), and no more come while the batch is compared.
    let started = std::time::Instant::now();
    let events = loop {
        let r =
            host.as_key(ALICE, reqwest::Method::GET, &format!("/api/conversations/{id}/events?limit=100"), None).await;
        let events = r.json()["events"].as_array().cloned().unwrap_or_default();
        let answered = events.iter().any(|e| e["source"] == "agent" && e["action"] == "message");
        let settled = events.last().is_some_and(|e| e["extras"]["agent_state"] == "awaiting_user_input");
        if answered && settled {
            break events;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "no answer: {events:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let answer =
        events.iter().find(|e| e["source"] == "agent" && e["action"] == "message").unwrap()["id"].as_i64().unwrap();

    // The web client's likert-scale submission, then a second rating of the same answer.
    let submit = |body: Value| host.as_key(ALICE, reqwest::Method::POST, "/feedback/conversation", Some(body));
    let r = submit(json!({ "conversation_id": id, "event_id": answer, "rating": 2, "reason": "too short",
                           "metadata": { "source": "likert-scale" } }))
    .await;
    assert_eq!(
        (r.status, r.json()),
        (201, json!({ "status": "success", "message": "Feedback submitted successfully" }))
    );
    assert_eq!(submit(json!({ "conversation_id": id, "event_id": answer, "rating": 5 })).await.status, 201);
    // The whole conversation, without an event.
    assert_eq!(submit(json!({ "conversation_id": id, "rating": 4, "reason": null })).await.status, 201);

    let batch = host.as_key(ALICE, reqwest::Method::GET, &format!("/feedback/conversation/{id}/batch"), None).await;
    assert_eq!(batch.status, 200, "{}", batch.text);
    let batch = batch.json();
    let map = batch.as_object().unwrap();
    assert_eq!(map.len(), events.len(), "an entry per stored event: {batch}");
    assert_eq!(map[&answer.to_string()], json!({ "exists": true, "rating": 5, "reason": null }), "the latest counts");
    assert!(map.iter().filter(|(k, _)| **k != answer.to_string()).all(|(_, v)| *v == json!({ "exists": false })));

    // Bad input: 422 with FastAPI's `detail`; nothing stored.
    for bad in [
        json!({ "conversation_id": id, "rating": 0 }),
        json!({ "conversation_id": id, "rating": 6 }),
        json!({ "conversation_id": id, "rating": 3.5 }),
        json!({ "conversation_id": id, "rating": "5" }),
        json!({ "conversation_id": id }),
        json!({ "conversation_id": id, "rating": 3, "event_id": -1 }),
        json!({ "conversation_id": id, "rating": 3, "reason": "x".repeat(10_001) }),
        json!({ "rating": 3 }),
    ] {
        let r = submit(bad.clone()).await;
        assert_eq!(r.status, 422, "{bad}: {}", r.text);
        assert!(r.json()["detail"].is_string());
    }

    // Bob can neither rate Alice's conversation nor read its ratings.
    let theirs = host
        .as_key(
            BOB,
            reqwest::Method::POST,
            "/feedback/conversation",
            Some(json!({ "conversation_id": id, "rating": 1 })),
        )
        .await;
    assert_eq!(theirs.status, 404, "{}", theirs.text);
    assert_eq!(theirs.json()["detail"], format!("Conversation {id} not found"));
    let theirs = host.as_key(BOB, reqwest::Method::GET, &format!("/feedback/conversation/{id}/batch"), None).await;
    assert_eq!(theirs.status, 404);
    assert_eq!(host.get(&format!("/feedback/conversation/{id}/batch")).await.status, 401, "signed-in users only");

    let mut conn = db.connect().await;
    let (rows, users): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT user_id) FROM conversation_feedback")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!((rows, users), (3, 1));
}
