//! Hardening: no acknowledged write lost (several hosts, kill -9), no key leaked, bounded work
//! under hostile load. Each test reproduces a failure found by probing the running server.

use oh_e2e::{
    llm::{FakeLlm, Reply},
    pg::TestDb,
    sha256_hex,
    sio::SioClient,
    Deployment, TestHost,
};
use serde_json::{json, Value};
use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

const MANAGER: &str = "[extensions.conversation_manager]\nlibrary = \"standalone_manager\"\n\
                       implementation = \"StandaloneConversationManager\"\n\
                       config = { llm_retry_initial_ms = 20, llm_chunk_timeout_secs = 5 }\n";

fn pg_stores(url: &str) -> String {
    let config = format!("{{ database_url = \"{url}\", master_key = \"hardening-master-key-0123456789\" }}");
    ["SaasSettingsStore:settings_store", "SaasSecretsStore:secrets_store", "SaasConversationStore:conversation_store"]
        .iter()
        .map(|s| {
            let (imp, point) = s.split_once(':').unwrap();
            format!(
                "[extensions.{point}]\nlibrary = \"postgres_stores\"\nimplementation = \"{imp}\"\nconfig = {config}\n"
            )
        })
        .collect()
}

/// 18 writers create secrets and two change one settings field each, for 10 s, spread over
/// both hosts; then every acknowledged secret must be there, and each settings field must hold
/// its writer's last acknowledged value.
async fn no_acknowledged_write_is_lost(a: &TestHost, b: &TestHost) {
    let bases = [a.base.clone(), b.base.clone()];
    let deadline = Instant::now() + Duration::from_secs(10);
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..18 {
        let (bases, acknowledged) = (bases.clone(), acknowledged.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut i = 0;
            while Instant::now() < deadline {
                let name = format!("S{w}_{i}");
                let r = http
                    .post(format!("{}/api/secrets", bases[(w + i) % 2]))
                    .json(&json!({ "name": name, "value": format!("v-{name}") }))
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status() == 201) {
                    acknowledged.lock().unwrap().push(name);
                }
                i += 1;
            }
        }));
    }
    let settings_writer = |field: &'static str| {
        let bases = bases.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut last = None;
            let mut i = 0;
            while Instant::now() < deadline {
                let value = format!("{field}-{i}");
                let r = http.post(format!("{}/api/settings", bases[i % 2])).json(&json!({ field: value })).send().await;
                if r.is_ok_and(|r| r.status() == 200) {
                    last = Some(value);
                }
                i += 1;
            }
            last
        })
    };
    let (model, url) = (settings_writer("llm_model"), settings_writer("llm_base_url"));
    for t in tasks {
        t.await.unwrap();
    }
    let (model, url) = (model.await.unwrap(), url.await.unwrap());
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > 100, "too few writes to mean anything: {}", acknowledged.len());
    let listed: BTreeSet<String> = a.get("/api/secrets").await.json()["custom_secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    let lost: Vec<&String> = acknowledged.iter().filter(|n| !listed.contains(*n)).collect();
    assert!(lost.is_empty(), "{} of {} acknowledged secrets lost: {lost:?}", lost.len(), acknowledged.len());
    let settings = b.get("/api/settings").await.json();
    assert_eq!(settings["llm_model"].as_str(), model.as_deref(), "the last acknowledged model was lost");
    assert_eq!(settings["llm_base_url"].as_str(), url.as_deref(), "the last acknowledged base URL was lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hosts_on_one_database_lose_no_acknowledged_write() {
    let db = TestDb::create().await;
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", &pg_stores(&db.url));
    let (a, b) = (d.start(), d.start());
    no_acknowledged_write_is_lost(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hosts_on_one_state_directory_lose_no_acknowledged_write() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "");
    let (a, b) = (d.start(), d.start());
    no_acknowledged_write_is_lost(&a, &b).await;
}

async fn all_events(host: &TestHost, id: &str) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let page =
            host.get(&format!("/api/conversations/{id}/events?start_id={}&limit=100", events.len())).await.json();
        let got = page["events"].as_array().unwrap().clone();
        let more = page["has_more"] == true && !got.is_empty();
        events.extend(got);
        if !more {
            return events;
        }
    }
}

fn user_says(e: &Value) -> Option<&str> {
    (e["action"] == "message" && e["source"] == "user").then(|| e["args"]["content"].as_str()).flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_acknowledged_message_is_stored_before_the_answer_and_survives_kill_9() {
    let llm = FakeLlm::start().await;
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", MANAGER);
    let mut host = d.start();
    let r = host
        .post_json(
            "/api/settings",
            &json!({ "llm_model": "fake", "llm_base_url": llm.base_url, "llm_api_key": "sk-x" }),
        )
        .await;
    assert_eq!(r.status, 200);
    // The agent is slow: the first answer takes 5 s, so messages wait.
    llm.push([Reply::Tokens { n: 100, gap: Duration::from_millis(50) }]);
    let id = host.post_json("/api/conversations", &json!({ "initial_user_msg": "start" })).await.json()
        ["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for i in 0..100 {
        let text = format!("queued message {i}");
        let r = host.post_json(&format!("/api/conversations/{id}/message"), &json!({ "message": text })).await;
        match r.status {
            200 => acknowledged.push(text),
            429 => {
                refused += 1;
                assert_eq!(r.headers["retry-after"], "1");
                assert_eq!(r.json()["success"], false);
            }
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    // The queue is bounded (64 waiting), and every acknowledged message is stored at once.
    assert_eq!((acknowledged.len(), refused), (64, 36));
    let stored: Vec<String> = all_events(&host, &id).await.iter().filter_map(user_says).map(str::to_owned).collect();
    for text in &acknowledged {
        assert!(stored.contains(text), "{text} was acknowledged but is not stored");
    }

    // kill -9 while the agent works through them: nothing acknowledged is lost, and the
    // restarted loop answers what was left unanswered.
    host.signal("KILL");
    let host = d.start();
    let mut socket =
        SioClient::connect(&host.base, &format!("conversation_id={id}&latest_event_id=-1"), &[]).await.unwrap();
    let stored: Vec<String> = all_events(&host, &id).await.iter().filter_map(user_says).map(str::to_owned).collect();
    for text in &acknowledged {
        assert!(stored.contains(text), "{text} was lost to kill -9");
    }
    let last = acknowledged.last().unwrap().clone();
    socket
        .until(Duration::from_secs(20), |e| {
            e["action"] == "message"
                && e["source"] == "agent"
                && e["args"]["content"].as_str().is_some_and(|c| c.contains(&last))
        })
        .await;
}

#[tokio::test]
async fn socket_actions_count_against_the_users_rate_limit() {
    let db = TestDb::create().await;
    let llm = FakeLlm::start().await;
    let d = Deployment::new();
    d.install_bundled();
    let key = "rate-limited-socket-key";
    let config = format!(
        "{{ database_url = \"{}\", redis_key_prefix = \"ohtest:sock:{}:\", rate_limit_per_second = 5, rate_limit_per_minute = 0, \
         static_keys = [{{ user_id = \"alice\", sha256 = \"{}\" }}] }}",
        db.url,
        std::process::id(),
        sha256_hex(key)
    );
    d.write_profile(
        "",
        &format!("{MANAGER}[extensions.user_auth]\nlibrary = \"saas_auth\"\nimplementation = \"SaasUserAuth\"\nconfig = {config}\n"),
    );
    let host = d.start();
    let auth = format!("Bearer {key}");
    let post =
        |path: &str, body: Value| host.send(host.http.post(host.url(path)).header("authorization", &auth).json(&body));
    assert_eq!(
        post("/api/settings", json!({ "llm_model": "f", "llm_base_url": llm.base_url, "llm_api_key": "k" }))
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let id = post("/api/conversations", json!({})).await.json()["conversation_id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut socket = SioClient::connect(
        &host.base,
        &format!("conversation_id={id}&latest_event_id=-1"),
        &[("authorization", &auth)],
    )
    .await
    .unwrap();
    for i in 0..50 {
        socket.emit("oh_user_action", &json!({ "action": "message", "args": { "content": format!("burst {i}") } }));
    }
    let mut limited = 0;
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        if let Some(e) = socket.next(Duration::from_millis(200)).await {
            if e["error"] == true && e["message"].as_str().is_some_and(|m| m.starts_with("RateLimitError")) {
                limited += 1;
            }
        }
    }
    assert!(limited >= 35, "only {limited} of 50 burst actions were rate limited");
    assert!(llm.requests().len() <= 15, "{} LLM calls for a rate-limited burst", llm.requests().len());
}

#[tokio::test]
async fn temp_files_left_by_a_crash_are_removed_at_start() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "");
    let dead = (3_000_000u32..4_000_000).find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()).unwrap();
    let dir = d.state_dir().join("users/u1");
    std::fs::create_dir_all(&dir).unwrap();
    let stale = dir.join(format!(".settings.json.tmp-{dead}-0"));
    let live = dir.join(".secrets.json.tmp-1-0"); // pid 1 is alive: its writes may be in flight
    std::fs::write(&stale, b"{").unwrap();
    std::fs::write(&live, b"{").unwrap();
    let host = d.start();
    assert!(!stale.exists(), "a dead process's temp file is still there");
    assert!(live.exists(), "a live process's temp file was removed");
    assert!(host.log().contains("removed temp files left by a crash"), "{}", host.log());
}

#[tokio::test]
async fn mcp_secrets_are_sealed_at_rest_masked_in_answers_and_kept_when_posted_back_masked() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "");
    let host = d.start();
    let mcp = json!({
        "sse_servers": [{ "url": "https://mcp.example.com/sse", "api_key": "mcp-api-key-111" }],
        "shttp_servers": [{ "url": "https://mcp.example.com/mcp", "api_key": "mcp-api-key-222", "timeout": 60 }],
        "stdio_servers": [{ "name": "fetch", "command": "uvx", "args": ["mcp-fetch"], "env": { "TOKEN": "mcp-env-333" } }],
    });
    assert_eq!(host.post_json("/api/settings", &json!({ "language": "en", "mcp_config": mcp })).await.status, 200);
    let got = host.get("/api/settings").await;
    for secret in ["mcp-api-key-111", "mcp-api-key-222", "mcp-env-333"] {
        assert!(!got.text.contains(secret), "{secret} in the answer: {}", got.text);
        assert!(oh_e2e::files_containing(&d.state_dir(), secret).is_empty(), "{secret} on disk in plain text");
    }
    let shown = got.json()["mcp_config"].clone();
    assert_eq!(shown["sse_servers"][0]["api_key"], "**********");
    assert_eq!(shown["stdio_servers"][0]["env"]["TOKEN"], "**********");
    assert_eq!(shown["stdio_servers"][0]["command"], "uvx");
    // The web client posts what it was shown: masked values keep the stored ones.
    let mut back = got.json();
    back["language"] = json!("fr");
    assert_eq!(host.post_json("/api/settings", &back).await.status, 200);
    drop(host);
    let text = std::fs::read_to_string(d.profile_path()).unwrap();
    let config = oh_host::config::parse(&d.profile_path(), &text, &|k| std::env::var(k).ok()).unwrap();
    let registry = oh_host::registry::Registry::build(&config, tokio::runtime::Handle::current()).unwrap();
    let stored = registry.load_settings(plugin_api::CallContext::default()).await.unwrap().unwrap();
    let mcp = stored.mcp_config.unwrap();
    assert_eq!(stored.language.as_deref(), Some("fr"));
    assert_eq!(mcp["sse_servers"][0]["api_key"], "mcp-api-key-111");
    assert_eq!(mcp["shttp_servers"][0]["api_key"], "mcp-api-key-222");
    assert_eq!(mcp["stdio_servers"][0]["env"]["TOKEN"], "mcp-env-333");
}
