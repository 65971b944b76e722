//! The routes and event shapes the OpenHands 0.62 web client relies on beyond the core API:
//! `/api/options/*`, the per-conversation workspace routes, the error reason and context
//! window in events, a stop that interrupts at once, and a clean delete of a running
//! conversation.

use axum::{routing::get, Json, Router};
use oh_e2e::conversation::create;
use oh_e2e::{
    files_containing,
    llm::{FakeLlm, Reply},
    sio::{is_state, pretty, SioClient},
    Deployment, TestHost,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

const MANAGER: &str = "[extensions.conversation_manager]\nlibrary = \"standalone_manager\"\n\
    implementation = \"StandaloneConversationManager\"\n\
    config = { llm_retry_initial_ms = 20, llm_chunk_timeout_secs = 5, llm_timeout_secs = 60, llm_max_retries = 0 }\n";

async fn setup(server: &str, env: &[(&str, &str)]) -> (Deployment, TestHost, FakeLlm) {
    let llm = FakeLlm::start().await;
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile(server, MANAGER);
    let host = d.start_with_env(env);
    (d, host, llm)
}

async fn configure(host: &TestHost, llm: &FakeLlm, model: &str) {
    let settings = json!({ "llm_model": model, "llm_base_url": llm.base_url, "llm_api_key": "sk-test-key" });
    assert_eq!(host.post_json("/api/settings", &settings).await.status, 200);
}

async fn connect(host: &TestHost, id: &str) -> SioClient {
    SioClient::connect(&host.base, &format!("conversation_id={id}&latest_event_id=-1"), &[])
        .await
        .unwrap_or_else(|e| panic!("socket refused: {e}"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().unwrap_or_else(|| panic!("not a list: {v}")).iter().map(|m| m.as_str().unwrap()).collect()
}

#[tokio::test]
async fn options_list_known_models_the_default_and_the_users_own() {
    let (_d, host, llm) = setup("", &[("LITELLM_DEFAULT_MODEL", "openai/house-default")]).await;
    let before = host.get("/api/options/models").await;
    assert_eq!(before.status, 200, "public, as in OpenHands");
    let models = before.json();
    let list = strings(&models);
    for expected in ["anthropic/claude-sonnet-4-5-20250929", "openai/gpt-4o", "openai/house-default"] {
        assert!(list.contains(&expected), "{expected} missing from {list:?}");
    }
    assert!(list.iter().all(|m| m.contains('/')), "every entry is provider/model: {list:?}");
    assert!(list.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates");

    configure(&host, &llm, "custom/my-own-model").await;
    let after = host.get("/api/options/models").await.json();
    assert!(strings(&after).contains(&"custom/my-own-model"), "the user's model is offered back");

    assert_eq!(host.get("/api/options/agents").await.json(), json!(["CodeActAgent"]));
    assert_eq!(host.get("/api/options/security-analyzers").await.json(), json!([]));
}

#[tokio::test]
async fn in_saas_mode_the_litellm_proxys_models_are_offered() {
    // A LiteLLM proxy's `GET /models` (OpenAI's list shape), checking the deployment's key.
    let proxy = Router::new().route(
        "/models",
        get(|headers: axum::http::HeaderMap| async move {
            let authorized = headers.get("authorization").is_some_and(|v| v == "Bearer sk-proxy-master");
            let data = if authorized {
                json!([{ "id": "claude-sonnet-proxy" }, { "id": "litellm_proxy/gpt-proxy" }])
            } else {
                json!([])
            };
            Json(json!({ "object": "list", "data": data }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, proxy).await.unwrap() });

    let env = [("LITE_LLM_API_URL", url.as_str()), ("LITE_LLM_API_KEY", "sk-proxy-master")];
    let (_d, host, _llm) = setup("app_mode = \"saas\"\n", &env).await;
    let models = host.get("/api/options/models").await.json();
    let list = strings(&models);
    assert!(list.contains(&"openhands/claude-sonnet-proxy"), "{list:?}");
    assert!(list.contains(&"openhands/gpt-proxy"), "{list:?}");

    // A proxy that is down leaves the list usable.
    let (_d2, host2, _llm2) = setup("app_mode = \"saas\"\n", &[("LITE_LLM_API_URL", "http://127.0.0.1:9")]).await;
    let models = host2.get("/api/options/models").await;
    assert_eq!(models.status, 200);
    assert!(strings(&models.json()).contains(&"openai/gpt-4o"));
}

#[tokio::test]
async fn workspace_routes_answer_in_openhands_shapes_without_a_workspace() {
    let (d, host, llm) = setup("", &[]).await;
    configure(&host, &llm, "fake-model").await;
    let id = create(&host, "hello").await;
    let mut socket = connect(&host, &id).await;
    socket.until(WAIT, |e| is_state(e, "awaiting_user_input")).await;
    let at = |p: &str| format!("/api/conversations/{id}/{p}");

    let config = host.get(&at("config")).await;
    assert_eq!((config.status, config.json()), (200, json!({ "runtime_id": null, "session_id": id })));
    assert_eq!(host.get(&at("vscode-url")).await.json(), json!({ "vscode_url": null }));
    assert_eq!(host.get(&at("web-hosts")).await.json(), json!({ "hosts": {} }));
    assert_eq!(host.get(&at("microagents")).await.json(), json!({ "microagents": [] }));
    assert_eq!(host.get(&at("list-files")).await.json(), json!([]));
    assert_eq!(host.get(&at("list-files?path=src")).await.json(), json!([]));
    for (path, error) in [
        ("git/changes", "Not a git repository"),
        ("git/diff?path=README.md", "Not a git repository"),
        ("select-file?file=README.md", "File not found: README.md"),
    ] {
        let r = host.get(&at(path)).await;
        assert_eq!((r.status, r.json()), (404, json!({ "error": error })), "{path}");
    }
    let remember = host.get(&at("remember-prompt?event_id=1")).await;
    assert_eq!((remember.status, remember.json()["status"].as_str()), (501, Some("error")));
    let upload = host.send(host.http.post(host.url(&at("upload-files"))).body("x")).await;
    assert_eq!((upload.status, upload.json()), (404, json!({ "error": "Runtime not yet initialized" })));

    // Export: every stored event, in order, the first one the user's message.
    let trajectory = host.get(&at("trajectory")).await.json();
    let events = trajectory["trajectory"].as_array().unwrap();
    let ids: Vec<u64> = events.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (0..ids.len() as u64).collect::<Vec<_>>());
    assert!(events.iter().any(|e| e["source"] == "user" && e["args"]["content"] == "hello"), "{}", pretty(events));
    assert!(events.iter().any(|e| e["source"] == "agent" && e["args"]["content"] == "Echo: hello."));

    // Feedback in the web client's shape is stored with the conversation.
    let feedback = json!({ "email": "me@example.com", "version": "1.0", "permissions": "private", "polarity": "positive", "feedback": "positive" });
    let stored = host.post_json(&at("submit-feedback"), &feedback).await;
    assert_eq!(stored.status, 200, "{}", stored.text);
    let feedback_id = stored.json()["body"]["feedback_id"].as_str().unwrap().to_owned();
    assert_eq!(files_containing(&d.state_dir(), &feedback_id).len(), 1, "stored once, durably");
    let bad = host.post_json(&at("submit-feedback"), &json!({ "polarity": "meh" })).await;
    assert_eq!(bad.status, 422, "{}", bad.text);
    assert!(bad.json()["error"].as_str().unwrap().contains("polarity"));
    // The conversation itself is untouched by it.
    assert_eq!(host.get(&format!("/api/conversations/{id}")).await.json()["conversation_id"], id.as_str());

    // Someone else's or a missing conversation: 404, never an answer about it.
    for path in ["config", "vscode-url", "web-hosts", "git/changes", "microagents", "trajectory", "list-files"] {
        let r = host.get(&format!("/api/conversations/0123456789abcdef/{path}")).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text);
    }
}

#[tokio::test]
async fn an_llm_error_names_its_reason_and_metrics_carry_the_context_window() {
    let (_d, host, llm) = setup("", &[]).await;
    configure(&host, &llm, "anthropic/claude-sonnet-4-5-20250929").await;
    let id = create(&host, "first").await;
    let mut socket = connect(&host, &id).await;
    let events = socket.until(WAIT, |e| e["source"] == "agent" && e["action"] == "message").await;
    let reply = events.last().unwrap();
    let usage = &reply["llm_metrics"]["accumulated_token_usage"];
    assert_eq!(usage["context_window"], 200_000, "{reply}");
    assert_eq!(usage["model"], "anthropic/claude-sonnet-4-5-20250929", "{reply}");
    // The provider prefix routes; the endpoint gets the model's own name.
    assert_eq!(llm.requests().last().unwrap().1["model"], "claude-sonnet-4-5-20250929");

    llm.push([Reply::Status(401)]);
    socket.emit("oh_user_action", &json!({ "action": "message", "args": { "content": "again" } }));
    let events = socket.until(WAIT, |e| is_state(e, "error")).await;
    let state = events.iter().rfind(|e| is_state(e, "error")).unwrap();
    assert_eq!(state["extras"]["reason"], "STATUS$ERROR_LLM_AUTHENTICATION", "{}", pretty(&events));
}

#[tokio::test]
async fn a_stop_interrupts_the_answer_in_progress_and_a_running_conversation_deletes_cleanly() {
    let (_d, host, llm) = setup("", &[]).await;
    configure(&host, &llm, "fake-model").await;
    // A long answer: 600 tokens 50 ms apart (30 s).
    llm.push([Reply::Tokens { n: 600, gap: Duration::from_millis(50) }]);
    let id = create(&host, "talk a lot").await;
    let mut socket = connect(&host, &id).await;
    socket.until(WAIT, |e| is_state(e, "running")).await;
    socket.until(WAIT, |e| e["args"]["delta"] == "3 ").await;

    let asked = Instant::now();
    let stop = host.post_json(&format!("/api/conversations/{id}/stop"), &json!({})).await;
    assert_eq!(stop.status, 200, "{}", stop.text);
    socket.until(WAIT, |e| is_state(e, "stopped")).await;
    assert!(asked.elapsed() < Duration::from_secs(10), "stopped after {:?}, not at once", asked.elapsed());

    // Delete while the agent is answering: closed first, so nothing is stored after.
    llm.push([Reply::Tokens { n: 600, gap: Duration::from_millis(50) }]);
    let id = create(&host, "talk again").await;
    let mut socket = connect(&host, &id).await;
    socket.until(WAIT, |e| is_state(e, "running")).await;
    let deleted = host.send(host.http.delete(host.url(&format!("/api/conversations/{id}")))).await;
    assert_eq!((deleted.status, deleted.json()), (200, json!(true)));
    let gone = host.get(&format!("/api/conversations/{id}")).await;
    assert_eq!((gone.status, gone.json()), (200, Value::Null), "OpenHands answers null for a missing one");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = host.log();
    assert!(!log.contains("cannot store an event"), "{log}");
    assert!(!log.contains(" ERROR "), "{log}");
}
