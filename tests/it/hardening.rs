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
async fn temp_files_left_by_a_crash_are_removed_after_start() {
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
    // Removed by a walk that runs beside serving (a big state directory must not hold up
    // the start): done within a few seconds.
    let started = Instant::now();
    while stale.exists() || !host.log().contains("removed temp files left by a crash") {
        assert!(started.elapsed() < Duration::from_secs(5), "a dead process's temp file is still there");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(live.exists(), "a live process's temp file was removed");
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

/// Sends raw bytes on a new connection; the raw answer (until the server closes or 5 s).
fn raw(host: &TestHost, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(host.base.trim_start_matches("http://")).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn body_of(raw: &str) -> Value {
    serde_json::from_str(raw.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_cross_site_page_cannot_change_settings_or_read_through_dns_rebinding() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "");
    let host = d.start();
    let address = host.base.trim_start_matches("http://").to_owned();
    assert_eq!(
        host.post_json("/api/settings", &json!({ "llm_base_url": "https://api.openai.com/v1" })).await.status,
        200
    );
    // A "simple" cross-site request: text/plain needs no preflight, so a browser sends it.
    let body = r#"{"llm_base_url":"http://attacker/v1","llm_model":"openai/gpt-4o"}"#;
    let text_plain = raw(
        &host,
        &format!(
            "POST /api/settings HTTP/1.1\r\nHost: {address}\r\nOrigin: http://evil.com\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(text_plain.starts_with("HTTP/1.1 403"), "{text_plain}");
    assert!(body_of(&text_plain)["error"].as_str().unwrap().contains("cross-site request refused"), "{text_plain}");
    // Without an Origin (curl), a non-JSON body is still refused: 415.
    let no_json =
        host.send(host.http.post(host.url("/api/settings")).header("content-type", "text/plain").body(body)).await;
    assert_eq!(no_json.status, 415, "{}", no_json.text);
    assert!(no_json.json()["error"].as_str().unwrap().contains("Content-Type: application/json"));
    // The page's own origin (the web client served here) may.
    let own = host
        .send(
            host.http
                .post(host.url("/api/settings"))
                .header("origin", host.base.as_str())
                .json(&json!({ "language": "de" })),
        )
        .await;
    assert_eq!(own.status, 200, "{}", own.text);
    assert_eq!(
        host.get("/api/settings").await.json()["llm_base_url"],
        "https://api.openai.com/v1",
        "changed cross-site"
    );
    // DNS rebinding: another name resolved to 127.0.0.1 reaches us with its own Host.
    let rebound = raw(
        &host,
        &format!(
            "GET /api/settings HTTP/1.1\r\nHost: evil.com:{}\r\nConnection: close\r\n\r\n",
            host.base.rsplit(':').next().unwrap()
        ),
    );
    assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");
    assert!(!rebound.contains("api.openai.com"), "{rebound}");
}

#[tokio::test]
async fn operators_routes_are_served_only_on_the_admin_address() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("app_mode = \"saas\"", "");
    let host = d.start();
    for path in ["/internal/plugins", "/internal/metrics", "/internal/ready"] {
        assert_eq!(host.get(path).await.status, 404, "{path} on the public address");
        assert_eq!(host.admin_get(path).await.status, 200, "{path} on the admin address");
    }
    let ready = host.get("/ready").await;
    assert_eq!(ready.json(), json!({ "status": "ready" }), "/ready says more than ready: {}", ready.text);
    let plugins = host.admin_get("/internal/plugins").await.text;
    assert!(plugins.contains("sha256") && plugins.contains(&d.state_dir().display().to_string()), "{plugins}");
}

#[tokio::test]
async fn slow_idle_and_oversized_requests_are_bounded() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("header_read_timeout_ms = 1000\nmax_connections = 20", "");
    let host = d.start();
    let address = host.base.trim_start_matches("http://").to_owned();
    use std::io::{Read, Write};
    let closed_within = |mut stream: std::net::TcpStream| {
        let started = Instant::now();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => continue,
            }
        }
    };
    // Slowloris: part of the headers, then nothing.
    let mut slow = std::net::TcpStream::connect(&address).unwrap();
    slow.write_all(format!("GET /alive HTTP/1.1\r\nHost: {address}\r\nX-Slow: ").as_bytes()).unwrap();
    assert!(closed_within(slow) < Duration::from_secs(4));
    // A connection that never sends a byte.
    assert!(closed_within(std::net::TcpStream::connect(&address).unwrap()) < Duration::from_secs(4));
    // A keep-alive connection left idle after a request.
    let mut idle = std::net::TcpStream::connect(&address).unwrap();
    idle.write_all(format!("GET /alive HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes()).unwrap();
    assert!(closed_within(idle) < Duration::from_secs(4));
    // All 20 slots held by idle sockets: a real request waits only until they time out.
    let held: Vec<_> = (0..40).map(|_| std::net::TcpStream::connect(&address).unwrap()).collect();
    let started = Instant::now();
    assert_eq!(host.get("/alive").await.status, 200);
    assert!(started.elapsed() < Duration::from_secs(6), "/alive took {:?}", started.elapsed());
    drop(held);
    // Oversized headers: 431 with a JSON body.
    let big = raw(
        &host,
        &format!(
            "GET /alive HTTP/1.1\r\nHost: {address}\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "x".repeat(20_000)
        ),
    );
    assert!(big.starts_with("HTTP/1.1 431"), "{}", &big[..big.len().min(200)]);
    assert!(body_of(&big)["error"].as_str().unwrap().contains("too large"), "{big}");
}

#[tokio::test]
async fn more_idle_sockets_than_file_descriptors_do_not_stop_the_server() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("header_read_timeout_ms = 1000", "");
    let mut host = d.start_wrapped(&["prlimit", "--nofile=128:128", "--"], &[], &[]);
    let address = host.base.trim_start_matches("http://").to_owned();
    let held: Vec<_> = (0..300).filter_map(|_| std::net::TcpStream::connect(&address).ok()).collect();
    assert!(held.len() > 200);
    let started = Instant::now();
    let alive = host.get("/alive").await;
    assert_eq!(alive.status, 200);
    assert!(started.elapsed() < Duration::from_secs(10), "/alive took {:?}", started.elapsed());
    // The stores still have descriptors: a write works.
    assert_eq!(host.post_json("/api/settings", &json!({ "language": "en" })).await.status, 200);
    assert!(host.alive());
    drop(held);
}

/// A profile with `saas_auth` (static keys for alice and bob) and `extra` settings.
fn saas_auth(db: &TestDb, extra: &str) -> String {
    let config = format!(
        "{{ database_url = \"{}\", redis_key_prefix = \"ohtest:hard:{}:{}:\", \
         static_keys = [{{ user_id = \"alice\", sha256 = \"{}\" }}]{extra} }}",
        db.url,
        std::process::id(),
        db.name,
        sha256_hex("alice-hardening-key")
    );
    format!("[extensions.user_auth]\nlibrary = \"saas_auth\"\nimplementation = \"SaasUserAuth\"\nconfig = {config}\n")
}

#[tokio::test]
async fn guessing_api_keys_is_limited_per_client_address() {
    let db = TestDb::create().await;
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", &saas_auth(&db, ", failed_auth_per_minute = 5"));
    let host = d.start();
    let try_key = |key: String| host.send(host.http.get(host.url("/api/settings")).bearer_auth(key));
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(try_key(format!("oh_guess_{i}")).await.status);
    }
    // Whether the minute turned over mid-run or not, at most 5 guesses a minute get answered.
    let answered = statuses.iter().filter(|s| **s == 401).count();
    assert!(answered <= 10 && statuses.contains(&429), "{statuses:?}");
    let limited = try_key("alice-hardening-key".into()).await;
    assert_eq!(limited.status, 429, "the address is refused for the minute, even with a good key");
    assert_eq!(limited.json()["error"], "RateLimitError");
    assert!(limited.headers["retry-after"].to_str().unwrap().parse::<u64>().unwrap() <= 60);
}

/// A "Redis" that accepts connections and never answers.
fn hung_redis() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_redis_does_not_hold_requests() {
    let db = TestDb::create().await;
    let d = Deployment::new();
    d.install_bundled();
    let port = hung_redis();
    d.write_profile("", &saas_auth(&db, &format!(", redis_url = \"redis://127.0.0.1:{port}/\"")));
    let host = d.start();
    let started = Instant::now();
    let requests =
        (0..20).map(|_| host.send(host.http.get(host.url("/api/settings")).bearer_auth("alice-hardening-key")));
    let answers = futures_util::future::join_all(requests).await;
    assert!(answers.iter().all(|r| r.status == 404), "{:?}", answers.iter().map(|r| r.status).collect::<Vec<_>>());
    assert!(started.elapsed() < Duration::from_secs(3), "20 requests took {:?} with Redis hung", started.elapsed());
    // And again: the limiter does not wait on the hung connection any more.
    let started = Instant::now();
    assert_eq!(
        host.send(host.http.get(host.url("/api/settings")).bearer_auth("alice-hardening-key")).await.status,
        404
    );
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_outage_answers_every_request_with_503_in_bounded_time() {
    let pg = oh_e2e::pg::OwnPostgres::start();
    pg.stop();
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", &pg_stores(&pg.url()));
    let host = d.start();
    let started = Instant::now();
    let requests = (0..30).map(|i| {
        host.send(host.http.post(host.url("/api/secrets")).json(&json!({ "name": format!("S{i}"), "value": "v" })))
    });
    let answers = futures_util::future::join_all(requests).await;
    let elapsed = started.elapsed();
    assert!(
        answers.iter().all(|r| r.status == 503),
        "{:?}",
        answers.iter().map(|r| (r.status, &r.text)).collect::<Vec<_>>()
    );
    assert!(answers[0].json()["error"].as_str().unwrap().contains("PostgreSQL"), "{}", answers[0].text);
    // Each waits at most the acquire timeout (3 s), not in turn.
    assert!(elapsed < Duration::from_secs(6), "30 requests during the outage took {elapsed:?}");
    let started = Instant::now();
    assert_eq!(host.get("/ready").await.status, 503);
    assert!(started.elapsed() < Duration::from_millis(1500), "/ready took {:?}", started.elapsed());
    // PostgreSQL back: the background migrator catches up, requests succeed, no restart.
    pg.start_again();
    let mut ok = false;
    for _ in 0..100 {
        if host.post_json("/api/secrets", &json!({ "name": "AFTER", "value": "v" })).await.status == 201 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "no recovery after the outage");
}

#[test]
fn every_entry_checks_its_pin_even_when_an_earlier_entry_loaded_the_library() {
    let d = Deployment::new();
    d.install_bundled();
    // secrets_store loads file_stores first (entries load in key order); settings_store pins
    // another build of the same library.
    d.write_profile(
        "",
        &format!(
            "[extensions.settings_store]\nlibrary = \"file_stores\"\nimplementation = \"FileSettingsStore\"\nsha256 = \"{}\"\n",
            "0".repeat(64)
        ),
    );
    let out = d.run_cli(&["check"]);
    out.assert_refused();
    assert!(out.stderr.contains("extensions.settings_store"), "{}", out.stderr);
    assert!(out.stderr.contains("but the profile pins 0000"), "{}", out.stderr);
}

#[test]
fn group_writable_plugins_and_writable_parent_directories_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let chgrp = |path: &std::path::Path| {
        assert!(std::process::Command::new("chgrp").arg("100").arg(path).status().unwrap().success());
    };
    let refused = |d: &Deployment, needle: &str| {
        let out = d.run_cli(&["check"]);
        out.assert_refused();
        assert!(out.stderr.contains(needle), "expected `{needle}` in:\n{}", out.stderr);
    };
    // The plugins directory, group-writable by a group other than root's.
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "");
    chgrp(&d.plugins_dir());
    std::fs::set_permissions(d.plugins_dir(), std::fs::Permissions::from_mode(0o775)).unwrap();
    refused(&d, "is writable by its group (gid 100");
    // A library file.
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "");
    let lib = d.plugins_dir().join("libfile_stores.so");
    chgrp(&lib);
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o664)).unwrap();
    refused(&d, "libfile_stores.so is writable by its group");
    // A directory above the plugins directory, writable by everyone (and not sticky).
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "");
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    refused(&d, "above the plugins directory, is writable by every user");
    // Group-writable by root's group is fine (as sshd), and so is the sticky /tmp above.
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "");
    std::fs::set_permissions(d.plugins_dir(), std::fs::Permissions::from_mode(0o775)).unwrap();
    let ok = d.run_cli(&["check"]);
    assert!(ok.status.success(), "{}", ok.stderr);
}

#[tokio::test]
async fn in_saas_mode_a_users_llm_base_url_cannot_reach_local_or_private_addresses() {
    let llm = FakeLlm::start().await;
    let port = llm.base_url.split(':').nth(2).unwrap().split('/').next().unwrap().to_owned();
    let start = |allowed: &str| {
        let d = Deployment::new();
        d.install_bundled();
        d.write_profile(
            "app_mode = \"saas\"",
            &MANAGER.replace(
                "llm_chunk_timeout_secs = 5",
                &format!("llm_chunk_timeout_secs = 5, llm_max_retries = 0{allowed}"),
            ),
        );
        let host = d.start();
        (d, host)
    };
    let try_url = |host: &TestHost, url: String| {
        let host_url = host.url("/api/settings");
        let create = host.url("/api/conversations");
        let http = host.http.clone();
        async move {
            let r = http
                .post(host_url)
                .json(&json!({ "llm_model": "m", "llm_api_key": "sk-user-key", "llm_base_url": url }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let r = http.post(create).json(&json!({ "initial_user_msg": "hi" })).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (_d, host) = start("");
    for url in [
        format!("http://127.0.0.1:{port}/v1"),
        format!("http://localhost:{port}/v1"),
        "http://169.254.169.254/latest".to_owned(),
    ] {
        let (status, text) = try_url(&host, url.clone()).await;
        assert_eq!(status, 400, "{url}: {text}");
        assert!(text.contains("local or private address"), "{url}: {text}");
    }
    // A name that resolves to a loopback address is refused when it resolves.
    let name =
        String::from_utf8(std::process::Command::new("hostname").output().unwrap().stdout).unwrap().trim().to_owned();
    let resolved: Vec<std::net::SocketAddr> =
        tokio::net::lookup_host((name.as_str(), 0)).await.map(|a| a.collect()).unwrap_or_default();
    if !resolved.is_empty() && resolved.iter().all(|a| a.ip().is_loopback()) {
        let (status, text) = try_url(&host, format!("http://{name}:{port}/v1")).await;
        assert_eq!(status, 200, "the loop starts; its call is refused: {text}");
        let id = serde_json::from_str::<Value>(&text).unwrap()["conversation_id"].as_str().unwrap().to_owned();
        let mut refused = false;
        for _ in 0..50 {
            let events = all_events(&host, &id).await;
            if events.iter().any(|e| {
                e["observation"] == "error" && e["content"].as_str().is_some_and(|c| c.contains("does not call"))
            }) {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(refused, "no refusal stored for {name}");
    }
    assert!(llm.requests().is_empty(), "the server called a private address with the user's key");
    // An operator may allow an internal gateway by name.
    let (_d, host) = start(", llm_private_hosts_allowed = [\"127.0.0.1\"]");
    let (status, text) = try_url(&host, format!("http://127.0.0.1:{port}/v1")).await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn edge_inputs_get_clear_errors_and_never_a_panic() {
    let llm = FakeLlm::start().await;
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", MANAGER);
    let mut host = d.start();
    let settings = host.post_json("/api/settings", &json!([null, "lang"])).await;
    assert_eq!(settings.status, 422, "{}", settings.text);
    assert!(settings.json()["error"].as_str().unwrap().contains("JSON object"));
    assert_eq!(host.get("/api/settings").await.status, 404, "nothing was stored");
    host.post_json("/api/settings", &json!({ "llm_model": "f", "llm_base_url": llm.base_url, "llm_api_key": "k" }))
        .await;
    let id = host.post_json("/api/conversations", &json!({ "initial_user_msg": "hi" })).await.json()["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let zero = host.get(&format!("/api/conversations/{id}/events?limit=0")).await;
    assert_eq!((zero.status, zero.json()["error"].as_str()), (400, Some("limit must be between 1 and 100")));
    for latest in ["9223372036854775807", "-9223372036854775808", "18446744073709551616", "abc"] {
        let connected =
            SioClient::connect(&host.base, &format!("conversation_id={id}&latest_event_id={latest}"), &[]).await;
        match latest {
            "abc" | "18446744073709551616" => assert!(connected.err().unwrap().contains("is not an integer")),
            _ => connected.unwrap().close(),
        }
    }
    assert!(host.alive(), "{}", host.log());
    assert!(!host.log().contains("panicked"), "{}", host.log());
}

/// Every page of `GET /api/conversations` (limit 7), newest first, as ids.
async fn listed_ids(host: &TestHost) -> Vec<String> {
    let mut ids = Vec::new();
    let mut page_id: Option<String> = None;
    loop {
        let path = match &page_id {
            Some(p) => format!("/api/conversations?limit=7&page_id={p}"),
            None => "/api/conversations?limit=7".to_owned(),
        };
        let page = host.get(&path).await.json();
        ids.extend(
            page["results"].as_array().unwrap().iter().map(|m| m["conversation_id"].as_str().unwrap().to_owned()),
        );
        match page["next_page_id"].as_str() {
            Some(next) => page_id = Some(next.to_owned()),
            None => return ids,
        }
    }
}

/// What the files say, in search order (newest first, then by id).
fn ids_on_disk(state: &std::path::Path) -> Vec<String> {
    let mut all: Vec<(String, String)> = std::fs::read_dir(state.join("sessions"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let doc: Value = serde_json::from_slice(&std::fs::read(e.path().join("metadata.json")).ok()?).ok()?;
            Some((doc["created_at"].as_str()?.to_owned(), doc["conversation_id"].as_str()?.to_owned()))
        })
        .collect();
    all.sort();
    all.into_iter().rev().map(|(_, id)| id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_conversation_index_follows_two_hosts_and_a_kill_9_mid_write() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", MANAGER);
    let (mut a, b) = (d.start(), d.start());
    let settings = json!({ "llm_model": "fake", "llm_base_url": "http://127.0.0.1:9/v1", "llm_api_key": "sk-x" });
    assert_eq!(a.post_json("/api/settings", &settings).await.status, 200);

    // Eight writers create conversations on both hosts; `a` is killed while they write.
    let bases = [a.base.clone(), b.base.clone()];
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut writers = Vec::new();
    for w in 0..8 {
        let (bases, acknowledged) = (bases.clone(), acknowledged.clone());
        writers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut i = 0;
            while Instant::now() < deadline {
                let r = http.post(format!("{}/api/conversations", bases[(w + i) % 2])).json(&json!({})).send().await;
                if let Ok(r) = r {
                    if r.status() == 200 {
                        let id = r.json::<Value>().await.unwrap()["conversation_id"].as_str().unwrap().to_owned();
                        acknowledged.lock().unwrap().push(id);
                    }
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.signal("KILL");
    for w in writers {
        w.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > 20, "too few conversations to mean anything: {}", acknowledged.len());

    // What a crash between a file and its index line leaves: a conversation on disk the index
    // does not know, and an index line for one whose directory is gone.
    let sessions = d.state_dir().join("sessions");
    let orphan = json!({ "conversation_id": "0rphan", "created_at": "2099-01-01T00:00:00.000000Z", "title": "crash" });
    std::fs::create_dir_all(sessions.join("0rphan")).unwrap();
    std::fs::write(sessions.join("0rphan/metadata.json"), orphan.to_string()).unwrap();
    let gone = acknowledged[0].clone();
    std::fs::remove_dir_all(sessions.join(&gone)).unwrap();

    // A restarted host repairs the index; the host that kept running follows the rewrite.
    let a = d.start();
    let truth = ids_on_disk(&d.state_dir());
    assert_eq!(listed_ids(&a).await, truth, "the restarted host's pages differ from the files");
    assert_eq!(listed_ids(&b).await, truth, "the surviving host's pages differ from the files");
    assert_eq!(truth[0], "0rphan");
    assert!(!truth.contains(&gone));
    for id in &acknowledged[1..] {
        assert!(truth.contains(id), "{id} was acknowledged but is not listed");
    }

    // Writes on one host are on the other's next page: a rename and a delete.
    let r = b
        .send(
            reqwest::Client::new()
                .patch(b.url(&format!("/api/conversations/{}", truth[1])))
                .json(&json!({ "title": "renamed on b" })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let page = a.get("/api/conversations?limit=2").await.json();
    assert_eq!(page["results"][1]["title"], "renamed on b");
    assert_eq!(a.send(reqwest::Client::new().delete(a.url("/api/conversations/0rphan"))).await.status, 200);
    assert_eq!(listed_ids(&b).await, truth[1..]);
}
