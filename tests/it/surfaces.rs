//! The second hardening round's breaks on the surfaces beside the sandbox (`sandbox.rs` has
//! the sandbox's): cross-site sockets, socket.io sizes, stored settings' types, slow bodies,
//! conversation caps, LLM redirects, anonymous billing returns, webhook replays.

use oh_e2e::{llm::FakeLlm, sio::SioClient, Deployment, TestHost};
use serde_json::{json, Value};
use std::time::Duration;

const MANAGER: &str = "[extensions.conversation_manager]\nlibrary = \"standalone_manager\"\n\
                       implementation = \"StandaloneConversationManager\"\n\
                       config = { llm_retry_initial_ms = 20, llm_timeout_secs = 10 }\n";

async fn oss(manager: &str, env: &[(&str, &str)]) -> (Deployment, TestHost, FakeLlm) {
    let llm = FakeLlm::start().await;
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", manager);
    let host = d.start_with_env(env);
    let settings = json!({ "llm_model": "fake-model", "llm_base_url": llm.base_url, "llm_api_key": "sk-test" });
    assert_eq!(host.post_json("/api/settings", &settings).await.status, 200);
    (d, host, llm)
}

async fn events(host: &TestHost, id: &str) -> Vec<Value> {
    host.get(&format!("/api/conversations/{id}/events?limit=100")).await.json()["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Item 9 and 12: the socket handshake follows the HTTP routes' origin rule, and a socket
/// message is bounded as an HTTP body is (`max_body_bytes`).
#[tokio::test]
async fn a_socket_from_another_site_is_refused_and_socket_messages_are_bounded_like_bodies() {
    let (_d, host, _llm) = oss(MANAGER, &[]).await;
    let r = host.post_json("/api/conversations", &json!({ "initial_user_msg": "hi" })).await;
    let id = r.json()["conversation_id"].as_str().unwrap().to_owned();
    let query = format!("conversation_id={id}&latest_event_id=-1");
    let refused = SioClient::connect(&host.base, &query, &[("Origin", "https://evil.example")]).await;
    assert!(refused.as_ref().is_err_and(|e| e.contains("403")), "{:?}", refused.as_ref().err());
    let port = host.base.rsplit(':').next().unwrap();
    let own = format!("http://127.0.0.1:{port}");
    let socket = SioClient::connect(&host.base, &query, &[("Origin", &own)]).await.unwrap();
    // Over 4 MiB: the connection is closed and nothing is stored.
    let huge = "x".repeat(5 << 20);
    socket.emit("oh_user_action", &json!({ "action": "message", "args": { "content": huge } }));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stored = events(&host, &id).await;
    assert!(
        stored.iter().all(|e| e["args"]["content"].as_str().is_none_or(|c| c.len() < 1 << 20)),
        "a 5 MiB message was stored"
    );
    // Without an Origin (not a browser), as before.
    assert!(SioClient::connect(&host.base, &query, &[]).await.is_ok());
}

/// Item 13: settings of the wrong type or out of range are refused (422 naming the field)
/// and nothing is stored.
#[tokio::test]
async fn settings_of_the_wrong_type_or_range_are_refused_and_not_stored() {
    let (_d, host, _llm) = oss(MANAGER, &[]).await;
    for (field, value) in [
        ("mcp_config", json!("notobject")),
        ("mcp_config", json!([1, 2])),
        ("mcp_config", json!({ "sse_servers": "one" })),
        ("max_iterations", json!(-5)),
        ("max_iterations", json!(0)),
        ("max_budget_per_task", json!(-1.0)),
    ] {
        let r = host.post_json("/api/settings", &json!({ field: value })).await;
        assert_eq!(r.status, 422, "{field} = {value}: {}", r.text);
        assert!(r.json()["error"].as_str().unwrap().contains(field), "{}", r.text);
    }
    let stored = host.get("/api/settings").await.json();
    assert_eq!(
        (stored["mcp_config"].clone(), stored["max_iterations"].clone()),
        (Value::Null, Value::Null),
        "{stored}"
    );
    let good = json!({ "max_iterations": 30, "mcp_config": { "sse_servers": [], "stdio_servers": [] } });
    assert_eq!(host.post_json("/api/settings", &good).await.status, 200);
    assert_eq!(host.get("/api/settings").await.json()["max_iterations"], 30);
}

/// Item 11: a pin is checked before any library is opened: an earlier entry of the same
/// library does not get to run its initialisers or its factory (which makes a key file).
#[test]
fn a_wrong_pin_stops_the_host_before_any_plugin_code_runs() {
    let d = Deployment::new();
    d.install_bundled();
    let pinned = format!(
        "[extensions.settings_store]\nlibrary = \"file_stores\"\nimplementation = \"FileSettingsStore\"\nsha256 = \"{}\"\n",
        "0".repeat(64)
    );
    d.write_profile("", &pinned);
    let out = d.run_cli(&["serve"]);
    out.assert_refused();
    assert!(out.stderr.contains("but the profile pins 0000"), "{}", out.stderr);
    let made = oh_e2e::files_under(&d.state_dir());
    assert!(made.is_empty(), "plugin code ran before the pin was checked: {made:?}");
}

/// Item 16: a user's stored conversations are bounded (`max_conversations_per_user`), with
/// a clear refusal, lifted by deleting one.
#[tokio::test]
async fn stored_conversations_are_bounded_per_user() {
    let llm = FakeLlm::start().await;
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("max_conversations_per_user = 5", MANAGER);
    let host = d.start();
    let settings = json!({ "llm_model": "fake-model", "llm_base_url": llm.base_url, "llm_api_key": "sk-test" });
    assert_eq!(host.post_json("/api/settings", &settings).await.status, 200);
    let mut ids = Vec::new();
    for _ in 0..5 {
        let r = host.post_json("/api/conversations", &json!({})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        ids.push(r.json()["conversation_id"].as_str().unwrap().to_owned());
    }
    let refused = host.post_json("/api/conversations", &json!({})).await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert_eq!(refused.json()["msg_id"], "CONVERSATION$TOO_MANY_STORED");
    assert!(refused.json()["message"].as_str().unwrap().contains("max_conversations_per_user"), "{}", refused.text);
    let deleted = host.send(host.http.delete(host.url(&format!("/api/conversations/{}", ids[0])))).await;
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    assert_eq!(host.post_json("/api/conversations", &json!({})).await.status, 200);
}

/// Item 10: a body that stalls after its headers gets a 408 and its connection closed at the
/// body deadline; one client address holds at most `max_connections_per_client`
/// connections, so it cannot starve the others (here 127.0.0.2 against 127.0.0.1).
#[tokio::test]
async fn stalled_bodies_time_out_and_one_client_cannot_hold_every_connection() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("body_read_timeout_ms = 500\nmax_connections_per_client = 10\nmax_connections = 40", "");
    let host = d.start();
    let address: std::net::SocketAddr = host.base.trim_start_matches("http://").parse().unwrap();
    let from = |ip: &str| {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        socket.connect(address)
    };
    // Headers complete, then 10 of the 100 bytes announced, then nothing (anonymous, on a
    // route that reads its body).
    let mut stalled = from("127.0.0.2").await.unwrap();
    let head = format!(
        "POST /api/settings HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"langua"
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut answer)).await.expect("closed").unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 500 ms"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    // 30 idle connections from one address: 10 are kept (until the header deadline), the
    // others closed at once.
    let mut idle = Vec::new();
    for _ in 0..30 {
        idle.push(from("127.0.0.2").await.unwrap());
    }
    let mut closed = 0;
    for stream in &mut idle {
        let mut buf = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 20, "connections past the per-client bound are closed");
    let started = std::time::Instant::now();
    assert_eq!(host.get("/alive").await.status, 200);
    assert!(started.elapsed() < Duration::from_secs(2), "/alive took {:?}", started.elapsed());
}

/// An internal error reaches the client as a generic body with a correlation id; its cause
/// (here: which master key sealed the stored secret) is in the server's log under that id.
#[tokio::test]
async fn an_internal_error_answers_a_correlation_id_and_keeps_its_cause_in_the_log() {
    let db = oh_e2e::pg::TestDb::create().await;
    let stores = |master: &str| {
        let config = format!("{{ database_url = \"{}\", master_key = \"{master}\" }}", db.url);
        format!(
            "[extensions.settings_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasSettingsStore\"\nconfig = {config}\n"
        )
    };
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", &stores("first-master-key-0123456789abcdef"));
    let host = d.start();
    assert_eq!(host.post_json("/api/settings", &json!({ "llm_api_key": "sk-sealed" })).await.status, 200);
    drop(host);
    // Restarted with another master key and without the first as a previous one.
    d.write_profile("", &stores("second-master-key-0123456789abcdef"));
    let host = d.start();
    let r = host.get("/api/settings").await;
    assert_eq!(r.status, 500, "{}", r.text);
    let body = r.json();
    let id = body["correlation_id"].as_str().expect("a correlation id").to_owned();
    assert!(!r.text.contains("master key") && !r.text.contains("previous_master_keys"), "{}", r.text);
    let log = host.log_containing(&id, Duration::from_secs(5)).await;
    let line = log.lines().find(|l| l.contains(&id)).unwrap_or_else(|| panic!("{log}")).to_owned();
    assert!(line.contains("master key"), "{line}");
}

/// `oh-host check` (and `/ready`) find a master key changed without its predecessor kept as a
/// previous one, before any user's request does.
#[tokio::test]
async fn check_finds_secrets_sealed_with_a_key_the_deployment_does_not_have() {
    let db = oh_e2e::pg::TestDb::create().await;
    let stores = |master: &str, previous: &[&str]| {
        let config = format!(
            "{{ database_url = \"{}\", master_key = \"{master}\", previous_master_keys = {previous:?} }}",
            db.url
        );
        format!(
            "[extensions.settings_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasSettingsStore\"\nconfig = {config}\n\
             [extensions.secrets_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasSecretsStore\"\nconfig = {config}\n"
        )
    };
    let (first, second) = ("first-master-key-0123456789abcdef", "second-master-key-0123456789abcdef");
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", &stores(first, &[]));
    let host = d.start();
    assert_eq!(host.post_json("/api/settings", &json!({ "llm_api_key": "sk-sealed" })).await.status, 200);
    let secret = json!({ "name": "TOKEN", "value": "v" });
    assert_eq!(host.post_json("/api/secrets", &secret).await.status, 201);
    assert!(d.run_cli(&["check"]).status.success());
    drop(host);
    d.write_profile("", &stores(second, &[]));
    let out = d.run_cli(&["check"]);
    out.assert_refused();
    assert!(out.stdout.contains("previous_master_keys"), "{}{}", out.stdout, out.stderr);
    let host = d.start();
    assert_eq!(host.get("/ready").await.status, 503);
    drop(host);
    d.write_profile("", &stores(second, &[first]));
    let ok = d.run_cli(&["check"]);
    assert!(ok.status.success(), "{}{}", ok.stdout, ok.stderr);
}
