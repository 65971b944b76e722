//! Conversations that run: the standalone manager, the agent loop against a fake
//! OpenAI-compatible LLM, and the socket.io event stream, all through the real binary.

use oh_e2e::conversation::agent_says;
use oh_e2e::{
    llm::{FakeLlm, Reply},
    sha256_hex,
    sio::{is_state, pretty, SioClient},
    Deployment, TestHost,
};
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn manager(config: &str) -> String {
    format!(
        "[extensions.conversation_manager]\nlibrary = \"standalone_manager\"\nimplementation = \"StandaloneConversationManager\"\n\
         config = {{ llm_retry_initial_ms = 20, llm_chunk_timeout_secs = 1, llm_timeout_secs = 10{config} }}\n\
         [[extensions.monitoring]]\nlibrary = \"log_monitoring\"\nimplementation = \"LogMonitoringListener\"\n\
         config = {{ level = \"info\" }}\n"
    )
}

/// A deployment whose agent has tools: the bundled runtime `implementation` with
/// `runtime_config`, and the manager with `manager_config`.
async fn setup_with_runtime(
    implementation: &str,
    runtime_config: &str,
    manager_config: &str,
) -> (Deployment, TestHost, FakeLlm) {
    let llm = FakeLlm::start().await;
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", &(manager(manager_config) + &oh_e2e::runtime_entry(implementation, runtime_config)));
    let host = d.start();
    configure(&host, &llm, None).await;
    (d, host, llm)
}

async fn setup(manager_config: &str) -> (Deployment, TestHost, FakeLlm) {
    setup_with_env(manager_config, &[]).await
}

async fn setup_with_env(manager_config: &str, env: &[(&str, &str)]) -> (Deployment, TestHost, FakeLlm) {
    let llm = FakeLlm::start().await;
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", &manager(manager_config));
    let host = d.start_with_env(env);
    configure(&host, &llm, None).await;
    (d, host, llm)
}

async fn configure(host: &TestHost, llm: &FakeLlm, token: Option<&str>) {
    let mut req = host.http.post(host.url("/api/settings")).json(&json!({
        "llm_model": "fake-model", "llm_base_url": llm.base_url, "llm_api_key": "sk-test-key",
    }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    assert_eq!(host.send(req).await.status, 200);
}

async fn create(host: &TestHost, message: &str) -> String {
    let r = host.post_json("/api/conversations", &json!({ "initial_user_msg": message })).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let body = r.json();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["conversation_status"], "RUNNING");
    body["conversation_id"].as_str().unwrap().to_owned()
}

fn stored(events: &[Value]) -> Vec<Value> {
    events.iter().filter(|e| e["id"].is_u64()).cloned().collect()
}

fn ids(events: &[Value]) -> Vec<u64> {
    events.iter().filter_map(|e| e["id"].as_u64()).collect()
}

async fn connect(host: &TestHost, id: &str, latest: i64) -> SioClient {
    SioClient::connect(&host.base, &format!("conversation_id={id}&latest_event_id={latest}"), &[])
        .await
        .unwrap_or_else(|e| panic!("socket refused: {e}"))
}

#[tokio::test]
async fn a_conversation_replays_streams_and_answers_user_actions() {
    let (_d, host, llm) = setup("").await;
    let id = create(&host, "hello there").await;

    // Everything stored so far is replayed, in order, then live events follow.
    let mut socket = connect(&host, &id, -1).await;
    let mut first = socket.until(WAIT, |e| agent_says(e, "Echo: hello there.")).await;
    let first_ids = ids(&first);
    assert_eq!(first_ids, (0..first_ids.len() as u64).collect::<Vec<_>>(), "{}", pretty(&first));
    assert!(is_state(&first[0], "loading"), "{}", pretty(&first));
    assert!(first
        .iter()
        .any(|e| e["action"] == "message" && e["source"] == "user" && e["args"]["content"] == "hello there"));
    first.extend(socket.until(WAIT, |e| is_state(e, "awaiting_user_input")).await);

    socket.emit("oh_user_action", &json!({ "action": "message", "args": { "content": "second", "image_urls": [] } }));
    let second = socket.until(WAIT, |e| agent_says(e, "Echo: second.")).await;
    // Streamed: the deltas arrive live before the stored message.
    let deltas: Vec<&str> = second
        .iter()
        .filter(|e| e["action"] == "streaming_message")
        .filter_map(|e| e["args"]["delta"].as_str())
        .collect();
    assert_eq!(deltas, ["Echo: ", "second", "."], "{}", pretty(&second));
    let all_ids: Vec<u64> = ids(&first).into_iter().chain(ids(&second)).collect();
    assert_eq!(all_ids, (0..all_ids.len() as u64).collect::<Vec<_>>(), "ids must be dense");
    let metrics = &second.iter().find(|e| agent_says(e, "Echo: second.")).unwrap()["llm_metrics"];
    assert!((metrics["accumulated_cost"].as_f64().unwrap() - 0.005).abs() < 1e-9, "{metrics}");

    // The LLM saw the user's key, the model, and the whole history.
    let requests = llm.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].0.as_deref(), Some("sk-test-key"));
    assert_eq!(requests[1].1["model"], "fake-model");
    let roles: Vec<&str> =
        requests[1].1["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);

    // Search and get show the live status and the metadata the manager keeps.
    let list = host.get("/api/conversations").await.json();
    assert_eq!(list["results"][0]["status"], "RUNNING");
    let one = host.get(&format!("/api/conversations/{id}")).await.json();
    assert_eq!(one["title"], "hello there");
    assert_eq!(one["status"], "RUNNING");

    // Stored events, over REST, match what the socket delivered.
    let page = host.get(&format!("/api/conversations/{id}/events?limit=100")).await.json();
    let rest_ids = ids(page["events"].as_array().unwrap());
    assert_eq!(rest_ids[..all_ids.len()], all_ids[..], "REST and socket disagree");

    // The manager called the monitoring hooks (LogMonitoringListener logs each).
    let log = host.log();
    for hook in ["on_create_conversation", "on_agent_session_start", "on_session_event"] {
        assert!(log.contains(&format!("hook={hook}")), "no {hook} in the log:\n{log}");
    }

    // Reconnect with latest_event_id: only the later events come back.
    socket.close();
    let n = 3;
    let mut again = connect(&host, &id, n).await;
    let replay = again.until(WAIT, |e| agent_says(e, "Echo: second.")).await;
    assert_eq!(ids(&stored(&replay))[0], n as u64 + 1, "{}", pretty(&replay));
}

#[tokio::test]
async fn rest_routes_send_messages_stop_and_start() {
    let (_d, host, _llm) = setup("").await;
    let id = create(&host, "one").await;
    let mut socket = connect(&host, &id, -1).await;
    socket.until(WAIT, |e| agent_says(e, "Echo: one.")).await;

    let sent = host.post_json(&format!("/api/conversations/{id}/message"), &json!({ "message": "two" })).await;
    assert_eq!((sent.status, sent.json()), (200, json!({ "success": true })));
    socket.until(WAIT, |e| agent_says(e, "Echo: two.")).await;
    let raw = json!({ "action": "message", "args": { "content": "three" } });
    assert_eq!(
        host.post_json(&format!("/api/conversations/{id}/events"), &raw).await.json(),
        json!({ "success": true })
    );
    socket.until(WAIT, |e| agent_says(e, "Echo: three.")).await;

    let stop = host.post_json(&format!("/api/conversations/{id}/stop"), &json!({})).await.json();
    assert_eq!(stop["message"], "Conversation stopped successfully");
    socket.until(WAIT, |e| is_state(e, "stopped")).await;
    assert_eq!(host.get(&format!("/api/conversations/{id}")).await.json()["status"], "STOPPED");
    let again = host.post_json(&format!("/api/conversations/{id}/stop"), &json!({})).await.json();
    assert_eq!(again["message"], "Conversation was not running");
    let not_running = host.post_json(&format!("/api/conversations/{id}/message"), &json!({ "message": "x" })).await;
    assert_eq!((not_running.status, not_running.json()["success"].as_bool()), (404, Some(false)));

    let start =
        host.post_json(&format!("/api/conversations/{id}/start"), &json!({ "providers_set": null })).await.json();
    assert_eq!((start["status"].as_str(), start["conversation_status"].as_str()), (Some("ok"), Some("RUNNING")));
    assert_eq!(host.get(&format!("/api/conversations/{id}")).await.json()["status"], "RUNNING");
    let missing = host.post_json("/api/conversations/nope123/start", &json!({})).await;
    assert_eq!((missing.status, missing.json()), (404, json!({ "status": "error", "conversation_id": "nope123" })));
}

#[tokio::test]
async fn creation_needs_settings_and_an_llm_key() {
    let llm = FakeLlm::start().await;
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", &manager(""));
    let host = d.start();
    let none = host.post_json("/api/conversations", &json!({ "initial_user_msg": "hi" })).await;
    assert_eq!((none.status, none.json()["msg_id"].as_str()), (400, Some("CONFIGURATION$SETTINGS_NOT_FOUND")));
    host.post_json("/api/settings", &json!({ "llm_model": "fake-model", "llm_base_url": llm.base_url })).await;
    let keyless = host.post_json("/api/conversations", &json!({ "initial_user_msg": "hi" })).await;
    assert_eq!((keyless.status, keyless.json()["msg_id"].as_str()), (400, Some("STATUS$ERROR_LLM_AUTHENTICATION")));
    let unknown = host.post_json("/api/conversations", &json!({ "initial_user_msg": "hi", "bogus": 1 })).await;
    assert_eq!(unknown.status, 422);
    assert!(llm.requests().is_empty());
    assert_eq!(host.get("/api/conversations").await.json()["results"], json!([]), "nothing half-created");
}

#[tokio::test]
async fn sockets_are_refused_for_unknown_or_foreign_conversations() {
    let llm = FakeLlm::start().await;
    let d = Deployment::new();
    d.install_bundled();
    d.install("token_auth");
    let (alice, bob) = ("alice-sock-token", "bob-sock-token");
    d.write_profile(
        "",
        &format!(
            "{}[extensions.user_auth]\nlibrary = \"token_auth\"\nimplementation = \"TokenAuth\"\n\
             config = {{ tokens = [{{ user_id = \"alice\", sha256 = \"{}\" }}, {{ user_id = \"bob\", sha256 = \"{}\" }}] }}\n",
            manager(""),
            sha256_hex(alice),
            sha256_hex(bob)
        ),
    );
    let host = d.start();
    configure(&host, &llm, Some(alice)).await;
    configure(&host, &llm, Some(bob)).await;
    let r = host
        .send(
            host.http
                .post(host.url("/api/conversations"))
                .bearer_auth(alice)
                .json(&json!({ "initial_user_msg": "mine" })),
        )
        .await;
    let id = r.json()["conversation_id"].as_str().unwrap().to_owned();
    assert_eq!(r.json()["conversation_status"], "RUNNING");

    let as_user = |t: &str| format!("Bearer {t}");
    let q = format!("conversation_id={id}&latest_event_id=-1");
    let bob_h = as_user(bob);
    let refused = SioClient::connect(&host.base, &q, &[("authorization", &bob_h)]).await.err().unwrap();
    assert!(refused.contains("not found"), "{refused}");
    let no_token = SioClient::connect(&host.base, &q, &[]).await.err().unwrap();
    assert!(no_token.contains("NoCredentialsError"), "{no_token}");
    let unknown =
        SioClient::connect(&host.base, "conversation_id=doesnotexist", &[("authorization", &as_user(alice))]).await;
    assert!(unknown.err().unwrap().contains("not found"));
    let missing = SioClient::connect(&host.base, "latest_event_id=-1", &[("authorization", &as_user(alice))]).await;
    assert_eq!(missing.err().unwrap(), "No conversation_id in request");

    let alice_h = as_user(alice);
    let mut ok = SioClient::connect(&host.base, &q, &[("authorization", &alice_h)]).await.unwrap();
    ok.until(WAIT, |e| agent_says(e, "Echo: mine.")).await;
    // Bob cannot talk to it over REST either.
    let r = host
        .send(
            host.http
                .post(host.url(&format!("/api/conversations/{id}/message")))
                .bearer_auth(bob)
                .json(&json!({ "message": "x" })),
        )
        .await;
    assert_eq!(r.status, 404);
    assert!(d.state_dir().join(format!("users/alice/conversations/{id}/events/0.json")).exists());
}

#[tokio::test]
async fn the_per_user_limit_closes_the_oldest() {
    let (_d, host, _llm) = setup(", max_concurrent_conversations = 2").await;
    let first = create(&host, "a").await;
    let mut socket = connect(&host, &first, -1).await;
    socket.until(WAIT, |e| agent_says(e, "Echo: a.")).await;
    // Its turn over (the state stored last), it is the least recently active.
    socket.until(WAIT, |e| is_state(e, "awaiting_user_input")).await;
    let _second = create(&host, "b").await;
    let _third = create(&host, "c").await;
    let closing = socket.until(WAIT, |e| is_state(e, "stopped")).await;
    assert!(
        closing.iter().any(|e| e["status_update"] == true && e["id"] == "AGENT_ERROR$TOO_MANY_CONVERSATIONS"),
        "{}",
        pretty(&closing)
    );
    let list = host.get("/api/conversations").await.json();
    let running = list["results"].as_array().unwrap().iter().filter(|c| c["status"] == "RUNNING").count();
    assert_eq!(running, 2, "{list}");
    assert_eq!(host.get(&format!("/api/conversations/{first}")).await.json()["status"], "STOPPED");
}

#[tokio::test]
async fn idle_conversations_close_after_the_configured_delay() {
    let (_d, host, _llm) = setup(", close_delay_secs = 1, cleanup_interval_ms = 100").await;
    let id = create(&host, "quiet").await;
    let mut waited = Duration::ZERO;
    loop {
        let status = host.get(&format!("/api/conversations/{id}")).await.json()["status"].clone();
        if status == "STOPPED" {
            break;
        }
        assert!(waited < WAIT, "still {status} after {waited:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        waited += Duration::from_millis(200);
    }
    let events = host.get(&format!("/api/conversations/{id}/events?limit=100")).await.json();
    let last = events["events"].as_array().unwrap().last().unwrap().clone();
    assert!(is_state(&last, "stopped"), "{last}");
}

#[tokio::test]
async fn llm_failures_become_status_updates_and_errors() {
    let (_d, host, llm) = setup(", llm_max_retries = 2").await;
    // 401: no retry, the OpenHands authentication status.
    llm.push([Reply::Status(401)]);
    let id = create(&host, "auth").await;
    let mut s = connect(&host, &id, -1).await;
    let events = s.until(WAIT, |e| is_state(e, "error")).await;
    assert!(events.iter().any(|e| e["id"] == "STATUS$ERROR_LLM_AUTHENTICATION"), "{}", pretty(&events));
    assert!(events.iter().any(|e| e["observation"] == "error"), "{}", pretty(&events));

    // 429 then 500, then success: two retries announced, then the answer.
    llm.push([Reply::Status(429), Reply::Status(500)]);
    s.emit("oh_user_action", &json!({ "action": "message", "args": { "content": "retry me" } }));
    let events = s.until(WAIT, |e| agent_says(e, "Echo: retry me.")).await;
    let retries = events.iter().filter(|e| e["id"] == "STATUS$LLM_RETRY").count();
    assert_eq!(retries, 2, "{}", pretty(&events));

    // A stall past the chunk deadline, every time: retried, then an error; never a hang.
    llm.push([Reply::Stall, Reply::Stall, Reply::Stall]);
    s.emit("oh_user_action", &json!({ "action": "message", "args": { "content": "stall" } }));
    let events = s.until(WAIT, |e| is_state(e, "error")).await;
    assert!(
        events.iter().any(|e| e["observation"] == "error" && e["content"].as_str().unwrap().contains("stalled")),
        "{}",
        pretty(&events)
    );

    // And the conversation still works after.
    s.emit("oh_user_action", &json!({ "action": "message", "args": { "content": "fine" } }));
    s.until(WAIT, |e| agent_says(e, "Echo: fine.")).await;
}

#[tokio::test]
async fn events_survive_a_restart_and_replay_in_order() {
    let llm = FakeLlm::start().await;
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", &manager(""));
    let host = d.start();
    configure(&host, &llm, None).await;
    let id = create(&host, "remember me").await;
    let mut s = connect(&host, &id, -1).await;
    let before = stored(&s.until(WAIT, |e| is_state(e, "awaiting_user_input")).await);
    s.close();
    assert!(host.stop().success());

    let host = d.start();
    let mut s = connect(&host, &id, -1).await;
    let after = s.until(WAIT, |e| agent_says(e, "Echo: remember me.")).await;
    let after = stored(&after);
    assert_eq!(after[..before.len() - 1], before[..before.len() - 1], "replay differs after restart");
    // The loop restarts on connect and knows the history.
    s.emit("oh_user_action", &json!({ "action": "message", "args": { "content": "and now?" } }));
    s.until(WAIT, |e| agent_says(e, "Echo: and now?.")).await;
    let last = llm.requests().pop().unwrap().1;
    let contents: Vec<&str> =
        last["messages"].as_array().unwrap().iter().filter_map(|m| m["content"].as_str()).collect();
    assert!(contents.contains(&"remember me") && contents.contains(&"Echo: remember me."), "{contents:?}");
}

#[tokio::test]
async fn the_llm_is_reached_over_https_trusting_the_systems_certificates() {
    let d = Deployment::new();
    let (llm, cert) = FakeLlm::start_tls(d.dir.path()).await;
    d.install_bundled();
    d.write_profile("", &manager(", llm_max_retries = 0"));
    // Trusted through SSL_CERT_FILE (as a private CA in the system store would be).
    let host = d.start_with_env(&[("SSL_CERT_FILE", cert.to_str().unwrap())]);
    configure(&host, &llm, None).await;
    let id = create(&host, "over tls").await;
    let mut socket = connect(&host, &id, -1).await;
    socket.until(WAIT, |e| agent_says(e, "Echo: over tls.")).await;
    assert_eq!(llm.requests()[0].0.as_deref(), Some("sk-test-key"));
    drop(host);
    // Not trusted: the call fails (and says so); nothing is sent.
    let host = d.start();
    let id = create(&host, "untrusted").await;
    let mut socket = connect(&host, &id, -1).await;
    let events = socket.until(WAIT, |e| is_state(e, "error")).await;
    let error = events.iter().find(|e| e["observation"] == "error").expect("an error observation");
    assert!(error["content"].as_str().unwrap().to_lowercase().contains("certificate"), "{error}");
    assert_eq!(llm.requests().len(), 1);
}

/// `MAINTENANCE_START_TIME`: announced before (SaaS options), and from then on a new
/// conversation answers 503 with Retry-After while running ones go on and reads work.
#[tokio::test]
async fn from_the_maintenance_start_new_conversations_wait_and_running_ones_go_on() {
    let start = chrono::Utc::now() + chrono::Duration::seconds(3);
    let start_text = start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (d, host, _llm) = setup_with_env("", &[("MAINTENANCE_START_TIME", start_text.as_str())]).await;
    let running = create(&host, "before").await;
    let mut socket = connect(&host, &running, -1).await;
    socket.until(WAIT, |e| agent_says(e, "Echo: before.")).await;

    while chrono::Utc::now() < start + chrono::Duration::milliseconds(200) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = host.post_json("/api/conversations", &json!({ "initial_user_msg": "during" })).await;
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert_eq!(refused.headers["retry-after"], "300");
    let message = refused.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("maintenance") && message.contains(&start_text), "{message}");
    // Reads work; the running conversation still answers.
    assert_eq!(host.get("/api/conversations").await.status, 200);
    assert_eq!(host.get("/api/settings").await.status, 200);
    socket.emit("oh_user_action", &json!({ "action": "message", "args": { "content": "during" } }));
    socket.until(WAIT, |e| agent_says(e, "Echo: during.")).await;

    // A time that does not parse stops the host at start, naming the variable and the fix.
    let out = d.run_cli_env(&["check"], &[("MAINTENANCE_START_TIME", "next tuesday")]);
    out.assert_refused();
    assert!(
        out.stderr.contains("MAINTENANCE_START_TIME") && out.stderr.contains("2026-12-01T02:00:00Z"),
        "{}",
        out.stderr
    );
}

/// `HIDE_LLM_SETTINGS`: the deployment chooses the LLM. The web client posts the settings
/// back with the LLM fields unchanged, which passes; a change to any of them is refused.
#[tokio::test]
async fn hidden_llm_settings_cannot_be_changed_but_the_rest_can() {
    // The deployment's settings, stored before the flag is on.
    let (d, host, llm) = setup("").await;
    drop(host);
    let host = d.start_with_env(&[("HIDE_LLM_SETTINGS", "true")]);
    assert_eq!(host.get("/api/options/config").await.json()["FEATURE_FLAGS"]["HIDE_LLM_SETTINGS"], true);
    let mut shown = host.get("/api/settings").await.json();
    shown["language"] = json!("fr");
    let kept = host.post_json("/api/settings", &shown).await;
    assert_eq!(kept.status, 200, "{}", kept.text);
    assert_eq!(host.get("/api/settings").await.json()["language"], "fr");
    for (field, value) in
        [("llm_model", "openai/gpt-5"), ("llm_base_url", "https://example.com/v1"), ("llm_api_key", "sk-mine")]
    {
        let mut changed = shown.clone();
        changed[field] = json!(value);
        let refused = host.post_json("/api/settings", &changed).await;
        assert_eq!(refused.status, 403, "{field}: {}", refused.text);
        assert!(refused.json()["error"].as_str().unwrap().contains(field), "{}", refused.text);
    }
    let after = host.get("/api/settings").await.json();
    assert_eq!(after["llm_model"], "fake-model");
    assert_eq!(after["llm_base_url"], llm.base_url.as_str());
    // The deployment's model answers.
    let id = create(&host, "hello").await;
    let mut socket = connect(&host, &id, -1).await;
    socket.until(WAIT, |e| agent_says(e, "Echo: hello.")).await;
}

/// The events of a conversation, once `done` holds for them (waits up to 20 s).
async fn events_until(host: &TestHost, id: &str, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    oh_e2e::conversation::events_until(host, id, what, Duration::from_secs(20), done).await
}

#[tokio::test]
async fn with_a_local_runtime_the_agent_edits_files_runs_commands_and_finishes() {
    edits_files_runs_commands_and_finishes(false).await;
}

/// The same with the manager, the runtime and the monitoring listener each in a runner of its
/// own (`isolation = "process"`): the agent's tools go from the manager's runner through the
/// host to the runtime's runner, the workspace routes cross the socket with file contents,
/// and the listener's log lines reach the host's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_manager_runtime_and_monitoring_isolated_the_agent_works_as_in_process() {
    edits_files_runs_commands_and_finishes(true).await;
}

async fn edits_files_runs_commands_and_finishes(isolated: bool) {
    let (d, host, llm) = if isolated {
        let llm = FakeLlm::start().await;
        let d = Deployment::new();
        d.install_bundled();
        let profile = manager("") + &oh_e2e::runtime_entry("LocalRuntime", "command_timeout_secs = 20");
        let isolate = "isolation = \"process\"\n";
        let (monitoring, named) =
            ("config = { level = \"info\" }\n", "implementation = \"StandaloneConversationManager\"\n");
        let profile = profile.replace(monitoring, &format!("{monitoring}{isolate}"));
        d.write_profile("", &(profile.replace(named, &format!("{named}{isolate}")) + isolate));
        let host = d.start();
        configure(&host, &llm, None).await;
        (d, host, llm)
    } else {
        setup_with_runtime("LocalRuntime", "command_timeout_secs = 20", "").await
    };
    llm.push([
        Reply::Tools(vec![(
            "str_replace_editor".into(),
            json!({ "command": "create", "path": "notes/hello.txt", "file_text": "hi from the agent\n", "security_risk": "LOW" }),
        )]),
        Reply::Tools(vec![
            ("think".into(), json!({ "thought": "check it" })),
            ("execute_bash".into(), json!({ "command": "cat notes/hello.txt && echo done", "security_risk": "LOW" })),
        ]),
        Reply::Tools(vec![("str_replace_editor".into(), json!({ "command": "create", "path": "/etc/oh-escape", "file_text": "x" }))]),
        Reply::Tools(vec![("finish".into(), json!({ "message": "The file is there." }))]),
    ]);
    let id = create(&host, "make a note").await;
    let events = events_until(&host, &id, "the agent to finish", |e| {
        e.iter().any(|e| e["observation"] == "agent_state_changed" && e["extras"]["agent_state"] == "finished")
    })
    .await;

    // OpenHands' event pairs, each with its tool call, observations caused by their action.
    let find = |pred: &dyn Fn(&Value) -> bool| {
        events.iter().find(|e| pred(e)).cloned().unwrap_or_else(|| panic!("{events:#?}"))
    };
    let edit = find(&|e| e["action"] == "edit");
    assert_eq!(edit["args"]["command"], "create");
    assert_eq!(edit["tool_call_metadata"]["function_name"], "str_replace_editor");
    let edited = find(&|e| e["observation"] == "edit");
    assert_eq!(edited["cause"], edit["id"]);
    assert_eq!(edited["extras"]["new_content"], "hi from the agent\n");
    let workspace = d.state_dir().join("workspaces").join(&id);
    assert_eq!(std::fs::read_to_string(workspace.join("notes/hello.txt")).unwrap(), "hi from the agent\n");
    let run = find(&|e| e["action"] == "run");
    assert_eq!(run["args"]["command"], "cat notes/hello.txt && echo done");
    let ran = find(&|e| e["observation"] == "run");
    assert_eq!(
        (ran["cause"].clone(), ran["content"].clone(), ran["success"].clone()),
        (run["id"].clone(), json!("hi from the agent\ndone\n"), json!(true))
    );
    assert_eq!(ran["extras"]["metadata"]["exit_code"], 0);
    assert_eq!(find(&|e| e["action"] == "think")["args"]["thought"], "check it");
    // Out of the workspace: refused, nothing written, and the model is told.
    let refused = find(&|e| e["observation"] == "error");
    assert!(refused["content"].as_str().unwrap().contains("outside the workspace"), "{refused}");
    assert!(!std::path::Path::new("/etc/oh-escape").exists());
    assert_eq!(find(&|e| e["action"] == "finish")["message"], "The file is there.");

    // Each tool's result went back to the model, answering its call.
    let requests = llm.requests();
    assert_eq!(requests.len(), 4);
    assert!(requests[0].1["tools"].as_array().unwrap().iter().any(|t| t["function"]["name"] == "execute_bash"));
    let messages = requests[2].1["messages"].as_array().unwrap().clone();
    let tool_results: Vec<(&str, &str)> = messages
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| (m["tool_call_id"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(tool_results[0].0, "call_0");
    assert!(tool_results[0].1.contains("File created successfully"));
    assert!(tool_results[2].1.starts_with("hi from the agent\ndone\n"), "{tool_results:?}");
    assert_eq!(messages.iter().filter(|m| m["tool_calls"].is_array()).count(), 2);

    // The web client's workspace routes read the workspace.
    let base = format!("/api/conversations/{id}");
    assert_eq!(host.get(&format!("{base}/list-files")).await.json(), json!(["notes/"]));
    assert_eq!(host.get(&format!("{base}/list-files?path=notes")).await.json(), json!(["notes/hello.txt"]));
    let file = host.get(&format!("{base}/select-file?file=notes/hello.txt")).await;
    assert_eq!(file.json(), json!({ "code": "hi from the agent\n" }));
    assert_eq!(host.get(&format!("{base}/select-file?file=../../../etc/passwd")).await.status, 400);
    assert_eq!(host.get(&format!("{base}/select-file?file=nope.txt")).await.status, 404);
    let changes = host.get(&format!("{base}/git/changes")).await;
    assert_eq!(changes.json(), json!([{ "status": "A", "path": "notes/hello.txt" }]), "{}", changes.text);
    let diff = host.get(&format!("{base}/git/diff?path=notes/hello.txt")).await;
    assert_eq!(diff.json(), json!({ "modified": "hi from the agent\n", "original": "" }));

    // The web client's upload: files land in the workspace's root, by name only.
    let body = "--b0undary\r\nContent-Disposition: form-data; name=\"files\"; filename=\"data.csv\"\r\n\r\nx,y\n1,2\n\r\n\
                --b0undary\r\nContent-Disposition: form-data; name=\"files\"; filename=\"../../escape.txt\"\r\n\r\nnope\r\n\
                --b0undary--\r\n";
    let uploaded = host
        .send(
            host.http
                .post(host.url(&format!("{base}/upload-files")))
                .header("content-type", "multipart/form-data; boundary=b0undary")
                .body(body),
        )
        .await;
    assert_eq!(
        uploaded.json(),
        json!({ "uploaded_files": ["data.csv", "escape.txt"], "skipped_files": [] }),
        "{}",
        uploaded.text
    );
    assert_eq!(std::fs::read_to_string(workspace.join("data.csv")).unwrap(), "x,y\n1,2\n");
    assert!(workspace.join("escape.txt").exists() && !workspace.parent().unwrap().join("escape.txt").exists());
    if isolated {
        let plugins = host.admin_get("/internal/plugins").await.json();
        let isolated: Vec<_> = plugins["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["isolation"]["process"] == true)
            .map(|i| i["extension_point"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(isolated, ["conversation_manager", "runtime", "monitoring"], "{plugins}");
        let log = host.log();
        assert!(
            log.lines().any(|l| l.contains("conversation created") && l.contains("plugin=\"log_monitoring\"")),
            "the isolated listener's log line did not reach the host's log:\n{log}"
        );
    }

    // Deleting the conversation removes its workspace (the runtime's `destroy`).
    let deleted = host.send(host.http.delete(host.url(&base))).await;
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    assert!(!workspace.exists(), "the workspace outlived its conversation");
}

/// The runtime's keys left in the manager's config (plugin-api 1.0's layout) are refused with
/// where they go now.
#[test]
fn a_runtime_key_in_the_manager_says_it_moved() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", &manager(", runtime = \"bubblewrap\", command_timeout_secs = 30"));
    let out = d.run_cli(&["check"]);
    out.assert_refused();
    assert!(out.stderr.contains("moved") && out.stderr.contains("[extensions.runtime]"), "{}", out.stderr);
}

/// `sleep <secs>.<this test process's id>`: a command line no other process on the machine
/// has, for `none_left` and `pgrep`, which look machine-wide (an operator's own `sleep 300`
/// once failed a test here).
fn marked_sleep(secs: u32) -> String {
    format!("sleep {secs}.{}", std::process::id())
}

/// Waits (15 s at most: the full suite loads 2 cores with hundreds of processes) until no
/// process runs whose command line contains `pattern`. A failure shows each one's parent,
/// group and state (`ps`), for the cause.
async fn none_left(pattern: &str) {
    let killed = std::time::Instant::now();
    loop {
        let left = std::process::Command::new("pgrep").args(["-f", pattern]).output().unwrap();
        if left.stdout.is_empty() {
            return;
        }
        if killed.elapsed() >= Duration::from_secs(15) {
            let pids: Vec<String> =
                String::from_utf8_lossy(&left.stdout).split_whitespace().map(str::to_owned).collect();
            let ps = |pids: &[String]| {
                let out = std::process::Command::new("ps")
                    .args(["-o", "pid,ppid,pgid,sid,stat,etimes,wchan:20,cmd", "-p", &pids.join(",")])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            // Each one's namespace pid (1: a namespace's first process) and signals, and its
            // parent as it is now.
            let mut report = ps(&pids);
            for pid in &pids {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let keep = ["State", "PPid", "NSpid", "NSpgid", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt"];
                let lines: Vec<&str> = status.lines().filter(|l| keep.iter().any(|k| l.starts_with(k))).collect();
                report.push_str(&format!("{pid}: {}\n", lines.join("; ")));
                let ppid = lines.iter().find_map(|l| l.strip_prefix("PPid:")).map(|p| p.trim().to_owned());
                if let Some(ppid) = ppid {
                    report.push_str(&format!("its parent:\n{}", ps(&[ppid])));
                }
            }
            panic!("left running:\n{report}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_command_waiting_for_input_goes_on_running_and_takes_the_agents_input() {
    let (_d, host, llm) = setup_with_runtime("LocalRuntime", "command_timeout_secs = 30", "").await;
    llm.push([
        Reply::Tools(vec![(
            "execute_bash".into(),
            json!({ "command": "echo 'name?'; read name; echo \"hello $name\"", "timeout": 1 }),
        )]),
        Reply::Tools(vec![("execute_bash".into(), json!({ "command": "ls" }))]),
        Reply::Tools(vec![("execute_bash".into(), json!({ "command": "Ada", "is_input": "true" }))]),
        Reply::Tools(vec![("finish".into(), json!({ "message": "Greeted." }))]),
    ]);
    let id = create(&host, "greet someone").await;
    let events = events_until(&host, &id, "the agent to finish", |e| {
        e.iter().any(|e| e["observation"] == "agent_state_changed" && e["extras"]["agent_state"] == "finished")
    })
    .await;
    let runs: Vec<&Value> = events.iter().filter(|e| e["observation"] == "run").collect();
    assert_eq!(runs.len(), 3, "{events:#?}");
    // It asked, and went on waiting: the call returned, the command did not end.
    let asked = runs[0]["content"].as_str().unwrap();
    assert!(asked.starts_with("name?\n") && asked.contains("timed out after 1 seconds"), "{asked}");
    assert_eq!(
        (runs[0]["extras"]["metadata"]["exit_code"].as_i64(), runs[0]["success"].as_bool()),
        (Some(-1), Some(false))
    );
    // A new command meanwhile is not run; input goes to the running one.
    assert!(runs[1]["content"].as_str().unwrap().contains("is NOT executed"), "{}", runs[1]);
    let input = events.iter().find(|e| e["action"] == "run" && e["args"]["command"] == "Ada").unwrap();
    assert_eq!(input["args"]["is_input"], true);
    assert_eq!((runs[2]["content"].as_str(), runs[2]["success"].as_bool()), (Some("hello Ada\n"), Some(true)));
    assert_eq!(runs[2]["cause"], input["id"]);
}

#[tokio::test]
async fn a_stop_kills_a_running_command_and_its_children() {
    let (_d, host, llm) = setup_with_runtime("LocalRuntime", "command_timeout_secs = 60", "").await;
    let sleep = marked_sleep(300);
    llm.push([Reply::Tools(vec![(
        "execute_bash".into(),
        json!({ "command": format!("trap '' TERM; ({sleep} &) ; echo started; {sleep}") }),
    )])]);
    let id = create(&host, "wait a long time").await;
    events_until(&host, &id, "the command to start", |e| e.iter().any(|e| e["action"] == "run")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let stop = host.post_json(&format!("/api/conversations/{id}/stop"), &json!({})).await;
    assert_eq!(stop.status, 200, "{}", stop.text);
    let events = events_until(&host, &id, "the stop", |e| {
        e.iter().any(|e| e["observation"] == "agent_state_changed" && e["extras"]["agent_state"] == "stopped")
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(10), "stopped in {:?}", started.elapsed());
    let ran = events.iter().find(|e| e["observation"] == "run").expect("the command's observation");
    assert!(ran["content"].as_str().unwrap().contains("stopped"), "{ran}");
    // Nothing of it is left running (its whole process group was killed; a loaded machine
    // may take a moment to reap them).
    none_left(&sleep).await;
}

#[tokio::test]
async fn with_the_local_runtime_a_host_killed_with_9_leaves_no_command_behind() {
    let (_d, mut host, llm) = setup_with_runtime("LocalRuntime", "command_timeout_secs = 60", "").await;
    // A daemon in a session of its own, and a command still running.
    let sleep = marked_sleep(303);
    llm.push([Reply::Tools(vec![(
        "execute_bash".into(),
        json!({ "command": format!("(setsid {sleep} &); echo started; {sleep}") }),
    )])]);
    let id = create(&host, "run something long").await;
    events_until(&host, &id, "the command to start", |e| e.iter().any(|e| e["action"] == "run")).await;
    let started = std::time::Instant::now();
    loop {
        let running = std::process::Command::new("pgrep").args(["-c", "-f", &format!("^{sleep}$")]).output().unwrap();
        if String::from_utf8_lossy(&running.stdout).trim() == "2" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the command did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    host.signal("KILL");
    none_left(&sleep).await;
}

#[tokio::test]
async fn saas_mode_refuses_the_local_runtime_at_start() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("app_mode = \"saas\"\n", &(manager("") + &oh_e2e::runtime_entry("LocalRuntime", "")));
    let out = d.run_cli(&["check"]);
    out.assert_refused();
    assert!(out.stderr.contains("SaaS mode refuses it") && out.stderr.contains("extensions.runtime"), "{}", out.stderr);
}

#[tokio::test]
async fn in_the_bubblewrap_sandbox_commands_cannot_touch_the_system_or_the_network_and_die_with_the_host() {
    let (_d, mut host, llm) = setup_with_runtime("BubblewrapRuntime", "", "").await;
    let sleep = marked_sleep(301);
    let llm_port = llm.base_url.rsplit(':').next().unwrap().trim_end_matches("/v1").to_owned();
    let probe = format!(
        "echo made > made.txt; touch /etc/oh-escape-probe 2>/dev/null || echo system-read-only; \
         (exec 3<>/dev/tcp/127.0.0.1/{llm_port}) 2>/dev/null && echo net-reached || echo net-blocked"
    );
    llm.push([
        Reply::Tools(vec![("execute_bash".into(), json!({ "command": probe }))]),
        Reply::Tools(vec![("execute_bash".into(), json!({ "command": format!("({sleep} &); {sleep}") }))]),
    ]);
    let id = create(&host, "probe the sandbox").await;
    let events = events_until(&host, &id, "the probe's output", |e| e.iter().any(|e| e["observation"] == "run")).await;
    let ran = events.iter().find(|e| e["observation"] == "run").unwrap();
    let out = ran["content"].as_str().unwrap();
    assert!(out.contains("system-read-only") && out.contains("net-blocked"), "{out}");
    assert!(!std::path::Path::new("/etc/oh-escape-probe").exists());
    // A command still running when the host is killed with -9 does not outlive it.
    events_until(&host, &id, "the second command", |e| e.iter().filter(|e| e["action"] == "run").count() == 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let running = std::process::Command::new("pgrep").args(["-f", &sleep]).output().unwrap();
    assert!(!running.stdout.is_empty(), "the command runs in the sandbox");
    host.signal("KILL");
    none_left(&sleep).await;
}

#[tokio::test]
async fn a_selected_repository_is_cloned_with_the_users_token_which_stays_out_of_the_workspace() {
    let token = "gho_user_token_0123456789";
    let server = oh_e2e::git_http::GitHttp::start(
        "acme/widgets",
        &[("README.md", "# Widgets\n"), ("src/lib.rs", "fn main() {}\n")],
        token,
    )
    .await;
    let (d, host, llm) =
        setup_with_runtime("LocalRuntime", &format!("git_http_hosts = [\"{}\"]", server.host), "").await;
    let tokens = json!({ "provider_tokens": { "github": { "token": token, "host": server.host } } });
    assert_eq!(host.post_json("/api/add-git-providers", &tokens).await.status, 200);
    llm.push([Reply::Tools(vec![(
        "execute_bash".into(),
        json!({ "command": "ls; git branch --show-current; cat FEATURE.md" }),
    )])]);
    let r = host
        .post_json(
            "/api/conversations",
            &json!({ "initial_user_msg": "look around", "repository": "acme/widgets", "git_provider": "github", "selected_branch": "feature" }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.json()["conversation_id"].as_str().unwrap().to_owned();
    let events =
        events_until(&host, &id, "the command's output", |e| e.iter().any(|e| e["observation"] == "run")).await;
    let out = events.iter().find(|e| e["observation"] == "run").unwrap()["content"].as_str().unwrap().to_owned();
    for expected in ["README.md", "src", "feature", "on the feature branch"] {
        assert!(out.contains(expected), "{expected}: {out}");
    }
    // The token was sent for the clone only: not in the repository's config or remote.
    let workspace = d.state_dir().join("workspaces").join(&id);
    let config = std::fs::read_to_string(workspace.join(".git/config")).unwrap();
    assert!(
        !config.contains(token) && config.contains(&format!("url = http://{}/acme/widgets.git", server.host)),
        "{config}"
    );
    // Without the right token, the clone is refused and said so; the agent gets an empty
    // workspace.
    let wrong = json!({ "provider_tokens": { "github": { "token": "gho_wrong", "host": server.host } } });
    assert_eq!(host.post_json("/api/add-git-providers", &wrong).await.status, 200);
    let r = host
        .post_json(
            "/api/conversations",
            &json!({ "initial_user_msg": "hi", "repository": "acme/widgets", "git_provider": "github" }),
        )
        .await;
    let other = r.json()["conversation_id"].as_str().unwrap().to_owned();
    events_until(&host, &other, "the answer", |e| e.iter().any(|e| agent_says(e, "Echo: hi."))).await;
    let empty = d.state_dir().join("workspaces").join(&other);
    assert!(empty.join(".git").exists() && !empty.join("README.md").exists());
}

/// A message posted while its conversation starts (the web client creates an empty
/// conversation, then sends the first message at once) is answered once: the session's
/// start finds it in the history and answers it there, and the queued copy is not answered
/// again.
#[tokio::test]
async fn a_message_sent_while_its_conversation_starts_is_answered_once() {
    let (_d, host, llm) = setup_with_runtime("LocalRuntime", "", ", max_concurrent_conversations = 10").await;
    let mut ids = Vec::new();
    for i in 0..8 {
        let r = host.post_json("/api/conversations", &json!({})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let id = r.json()["conversation_id"].as_str().unwrap().to_owned();
        let sent =
            host.post_json(&format!("/api/conversations/{id}/message"), &json!({ "message": format!("m{i}") })).await;
        assert_eq!(sent.status, 200, "{}", sent.text);
        ids.push(id);
    }
    for (i, id) in ids.iter().enumerate() {
        let expected = format!("Echo: m{i}.");
        let events = events_until(&host, id, "the answer", |e| e.iter().any(|e| agent_says(e, &expected))).await;
        // Give a second answer the time to come, were there one.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let events = events_until(&host, id, "the events", |e| e.len() >= events.len()).await;
        let answers = events.iter().filter(|e| e["action"] == "message" && e["source"] == "agent").count();
        assert_eq!(answers, 1, "conversation {i}: {events:#?}");
    }
    assert_eq!(llm.requests().len(), 8);
}

/// A conversation closed for idleness is reported STOPPED only once its final `stopped`
/// state is stored. The store is made slow on purpose (its events table locked while the idle
/// close happens), so the order is checked, not the timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_close_is_stored_before_the_status_says_stopped() {
    const KEY: &str = "idle-close-key-0123456789";
    let db = oh_e2e::pg::TestDb::create().await;
    let llm = FakeLlm::start().await;
    let d = Deployment::new();
    d.install_bundled();
    let profile =
        oh_e2e::saas_base_profile(&db.url, &[("alice", KEY)], ", close_delay_secs = 1, cleanup_interval_ms = 50");
    d.write_profile("app_mode = \"saas\"\n", &profile);
    let host = d.start();
    let settings = json!({ "llm_model": "openai/fake-model", "llm_base_url": llm.base_url, "llm_api_key": "sk-test" });
    assert_eq!(host.as_key(KEY, reqwest::Method::POST, "/api/settings", Some(settings)).await.status, 200);
    let r = host
        .as_key(KEY, reqwest::Method::POST, "/api/conversations", Some(json!({ "initial_user_msg": "quiet" })))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.json()["conversation_id"].as_str().unwrap().to_owned();
    let last_event = || async {
        let events =
            host.as_key(KEY, reqwest::Method::GET, &format!("/api/conversations/{id}/events?limit=100"), None).await;
        events.json()["events"].as_array().unwrap().last().cloned().unwrap_or_default()
    };
    let started = std::time::Instant::now();
    while !is_state(&last_event().await, "awaiting_user_input") {
        assert!(started.elapsed() < WAIT, "no answer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Appends wait while the table is locked; reads go on.
    let mut lock = db.connect().await;
    sqlx::query("BEGIN").execute(&mut lock).await.unwrap();
    sqlx::query("LOCK TABLE conversation_events IN EXCLUSIVE MODE").execute(&mut lock).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let status = host.as_key(KEY, reqwest::Method::GET, &format!("/api/conversations/{id}"), None).await.json()
        ["status"]
        .clone();
    let last = last_event().await;
    assert!(status != "STOPPED" || is_state(&last, "stopped"), "{status} while the last stored event is {last}");
    sqlx::query("COMMIT").execute(&mut lock).await.unwrap();
    let started = std::time::Instant::now();
    loop {
        let status = host.as_key(KEY, reqwest::Method::GET, &format!("/api/conversations/{id}"), None).await.json()
            ["status"]
            .clone();
        if status == "STOPPED" {
            break;
        }
        assert!(started.elapsed() < WAIT, "still {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(is_state(&last_event().await, "stopped"));
}

/// A host started with signals ignored (in the background, under `nohup`, by a supervisor:
/// SIGINT, SIGQUIT, SIGTSTP) does not pass that on: commands start with every signal at its
/// default action, so the agent's `C-c` and `C-z` reach them.
#[tokio::test]
async fn commands_start_with_default_signal_actions_even_when_the_host_ignores_some() {
    let llm = FakeLlm::start().await;
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", &(manager("") + &oh_e2e::runtime_entry("LocalRuntime", "command_timeout_secs = 60")));
    let wrapper = ["bash", "-c", "trap '' INT QUIT TSTP; exec \"$@\"", "ignoring-signals"];
    let host = d.start_wrapped(&wrapper, &[], &[]);
    configure(&host, &llm, None).await;
    llm.push([
        Reply::Tools(vec![("execute_bash".into(), json!({ "command": "grep SigIgn /proc/self/status" }))]),
        Reply::Tools(vec![("execute_bash".into(), json!({ "command": "sleep 50; echo slept", "timeout": 1 }))]),
        Reply::Tools(vec![("execute_bash".into(), json!({ "command": "C-c", "is_input": "true" }))]),
        Reply::Tools(vec![("finish".into(), json!({ "message": "Interrupted." }))]),
    ]);
    let id = create(&host, "look at your signals").await;
    let events = events_until(&host, &id, "the agent to finish", |e| {
        e.iter().any(|e| e["observation"] == "agent_state_changed" && e["extras"]["agent_state"] == "finished")
    })
    .await;
    let runs: Vec<&Value> = events.iter().filter(|e| e["observation"] == "run").collect();
    assert_eq!(runs.len(), 3, "{events:#?}");
    let ignored = runs[0]["content"].as_str().unwrap();
    let mask = ignored.split_whitespace().nth(1).and_then(|m| u64::from_str_radix(m, 16).ok()).unwrap();
    // Bit n-1 is signal n: SIGINT 2, SIGQUIT 3, SIGTSTP 20.
    assert_eq!(mask & (1 << 1 | 1 << 2 | 1 << 19), 0, "{ignored}");
    let interrupted = runs[2]["content"].as_str().unwrap();
    assert!(!interrupted.contains("slept"), "{interrupted}");
    assert_eq!(runs[2]["extras"]["metadata"]["exit_code"].as_i64(), Some(130), "{}", runs[2]);
}

/// A reload that replaces what the conversation does not live in (here the monitoring
/// listener) leaves the conversation running: its socket stays connected, the next turn is
/// answered on it, and the event ids go on densely.
#[tokio::test]
async fn a_conversation_goes_on_through_a_reload() {
    let (d, host, _llm) = setup("").await;
    let id = create(&host, "hello there").await;
    let mut socket = connect(&host, &id, -1).await;
    let mut seen = socket.until(WAIT, |e| agent_says(e, "Echo: hello there.")).await;
    seen.extend(socket.until(WAIT, |e| is_state(e, "awaiting_user_input")).await);

    d.write_profile("", &manager("").replace("level = \"info\"", "level = \"debug\""));
    let out = d.run_cli(&["reload", "--admin", host.admin.as_deref().unwrap()]);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("replaced  extensions.monitoring[0]"), "{}", out.stdout);
    assert!(out.stdout.contains("extensions.conversation_manager"), "the manager is kept: {}", out.stdout);

    socket.emit("oh_user_action", &json!({ "action": "message", "args": { "content": "after", "image_urls": [] } }));
    seen.extend(socket.until(WAIT, |e| agent_says(e, "Echo: after.")).await);
    let all = ids(&seen);
    assert_eq!(all, (0..all.len() as u64).collect::<Vec<_>>(), "ids must stay dense: {}", pretty(&seen));
}

/// A reload that replaces the conversation manager hands its conversations over: the old one
/// stops the loop (its state stored), the new one resumes it, and the client's socket, never
/// reconnected, sees the new manager answer its next message, with ids still dense.
#[tokio::test]
async fn a_replaced_manager_takes_over_the_conversation_without_a_reconnect() {
    let (d, host, _llm) = setup("").await;
    let id = create(&host, "hello there").await;
    let mut socket = connect(&host, &id, -1).await;
    let mut seen = socket.until(WAIT, |e| agent_says(e, "Echo: hello there.")).await;
    seen.extend(socket.until(WAIT, |e| is_state(e, "awaiting_user_input")).await);

    let busy = oh_e2e::Busy::start(&host, None);
    d.write_profile("", &manager(", max_concurrent_conversations = 4"));
    let out = d.run_cli(&["reload", "--admin", host.admin.as_deref().unwrap()]);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("replaced  extensions.conversation_manager"), "{}", out.stdout);
    // The new manager resumed the conversation: it is waiting for the user again.
    seen.extend(socket.until(WAIT, |e| is_state(e, "awaiting_user_input")).await);

    socket.emit("oh_user_action", &json!({ "action": "message", "args": { "content": "after", "image_urls": [] } }));
    seen.extend(socket.until(WAIT, |e| agent_says(e, "Echo: after.")).await);
    let all = ids(&seen);
    assert_eq!(all, (0..all.len() as u64).collect::<Vec<_>>(), "ids must stay dense: {}", pretty(&seen));
    let answers = seen.iter().filter(|e| agent_says(e, "Echo: hello there.")).count();
    assert_eq!(answers, 1, "the first message is answered once: {}", pretty(&seen));
    busy.stop().await;
}

/// `isolation = "process"` for the manager: its runner killed mid-conversation, the socket
/// stays connected, the conversation runs again from the stores, and the next answer
/// streams to the same socket with the whole history behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_manager_killed_mid_conversation_resumes_and_the_socket_streams_on() {
    let llm = FakeLlm::start().await;
    let d = Deployment::outside_tmp();
    d.install_bundled();
    let named = "implementation = \"StandaloneConversationManager\"\n";
    d.write_profile("", &manager("").replace(named, &format!("{named}isolation = \"process\"\n")));
    let host = d.start();
    configure(&host, &llm, None).await;
    let id = create(&host, "hello there").await;
    let mut socket = connect(&host, &id, -1).await;
    socket.until(WAIT, |e| agent_says(e, "Echo: hello there.")).await;
    socket.until(WAIT, |e| is_state(e, "awaiting_user_input")).await;

    let manager_instance = || async {
        let plugins = host.admin_get("/internal/plugins").await.json();
        let all = plugins["instances"].as_array().unwrap().clone();
        all.into_iter().find(|i| i["extension_point"] == "conversation_manager").unwrap()
    };
    let pid = manager_instance().await["isolation"]["pid"].as_u64().unwrap();
    let killed = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(killed.success());
    // Back: a new runner, the conversation running again.
    let started = std::time::Instant::now();
    loop {
        let instance = manager_instance().await;
        let status = host.get(&format!("/api/conversations/{id}")).await.json()["status"].clone();
        if instance["isolation"]["restarts"] == 1 && status == "RUNNING" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "not resumed: {instance} {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    socket.emit("oh_user_action", &json!({ "action": "message", "args": { "content": "second", "image_urls": [] } }));
    let second = socket.until(WAIT, |e| agent_says(e, "Echo: second.")).await;
    assert!(second.iter().any(|e| e["action"] == "streaming_message"), "{}", pretty(&second));
    // The resumed loop answered with the stored history: nothing was lost with the runner.
    let requests = llm.requests();
    let last = &requests.last().unwrap().1;
    let roles: Vec<&str> = last["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"], "{last}");
    let page = host.get(&format!("/api/conversations/{id}/events?limit=100")).await.json();
    let stored = ids(page["events"].as_array().unwrap_or_else(|| panic!("{page}")));
    assert_eq!(stored, (0..stored.len() as u64).collect::<Vec<_>>(), "ids must stay dense across the restart");
}
