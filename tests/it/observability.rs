//! What operators watch: Prometheus metrics on the admin address (parsed by a real parser).

use oh_e2e::metrics::{find, histogram_count, scrape};
use oh_e2e::{
    llm::FakeLlm,
    sio::{is_state, SioClient},
    Deployment, TestHost,
};
use prometheus_parse::Value as Metric;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn metrics_cover_requests_plugin_calls_the_llm_sockets_and_the_process() {
    let llm = FakeLlm::start().await;
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile(
        "",
        "[extensions.conversation_manager]\nlibrary = \"standalone_manager\"\nimplementation = \"StandaloneConversationManager\"\n",
    );
    let host = d.start();
    let settings = json!({ "llm_model": "fake-model", "llm_base_url": llm.base_url, "llm_api_key": "sk-test" });
    assert_eq!(host.post_json("/api/settings", &settings).await.status, 200);
    assert_eq!(host.get("/api/settings").await.status, 200);
    assert_eq!(host.get("/api/nothing-here").await.status, 404);
    let id = host.post_json("/api/conversations", &json!({ "initial_user_msg": "hi" })).await.json()["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut socket =
        SioClient::connect(&host.base, &format!("conversation_id={id}&latest_event_id=-1"), &[]).await.unwrap();
    socket
        .until(Duration::from_secs(20), |e| is_state(e, "awaiting_user_input") && e["id"].as_u64().unwrap_or(0) > 2)
        .await;
    assert_eq!(host.get(&format!("/api/conversations/{id}")).await.status, 200);

    let text = host.admin_get("/internal/metrics").await.text;
    let s = scrape(&text);
    let http = "oh_http_request_duration_seconds";
    assert!(histogram_count(&s, http, &[("route", "/api/settings"), ("method", "GET"), ("status", "200")]) >= 1);
    assert!(
        histogram_count(&s, http, &[("route", "/api/conversations/:id"), ("status", "200")]) >= 1,
        "templates, not ids"
    );
    assert!(histogram_count(&s, http, &[("route", "unmatched"), ("status", "404")]) >= 1);
    assert!(!text.contains(&id), "no series per conversation id");
    let call = "oh_plugin_call_duration_seconds";
    assert!(
        histogram_count(
            &s,
            call,
            &[("extension_point", "conversation_store"), ("method", "append_events"), ("outcome", "ok")]
        ) >= 1
    );
    assert!(histogram_count(&s, call, &[("extension_point", "settings_store"), ("outcome", "ok")]) >= 1);
    assert!(histogram_count(&s, "oh_llm_request_duration_seconds", &[("model", "fake-model"), ("outcome", "ok")]) >= 1);
    let tokens =
        find(&s, "oh_llm_tokens_total", &[("model", "fake-model"), ("type", "completion")]).expect("LLM tokens");
    assert!(matches!(tokens.value, Metric::Counter(n) if n >= 1.0), "{tokens:?}");
    let sockets = find(&s, "oh_socketio_connections", &[]).expect("socket gauge");
    assert!(matches!(sockets.value, Metric::Gauge(n) if n == 1.0), "{sockets:?}");
    let rss = find(&s, "process_resident_memory_bytes", &[]).expect("process metrics");
    assert!(matches!(rss.value, Metric::Gauge(n) if n > 1e6), "{rss:?}");
    assert!(find(&s, "process_open_fds", &[]).is_some() && find(&s, "process_cpu_seconds_total", &[]).is_some());

    socket.close();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = scrape(&host.admin_get("/internal/metrics").await.text);
    assert!(matches!(find(&s, "oh_socketio_connections", &[]).unwrap().value, Metric::Gauge(n) if n == 0.0));
}

/// A stand-in for PostHog's capture API (`POST /batch/`), recording what it is sent; it can be
/// made to refuse (503) to test retries.
struct FakePostHog {
    url: String,
    batches: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FakePostHog {
    async fn start() -> FakePostHog {
        use axum::{extract::State, http::StatusCode, routing::post, Json, Router};
        type Shared =
            (std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>, std::sync::Arc<std::sync::atomic::AtomicBool>);
        let batches = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let app = Router::new()
            .route(
                "/batch/",
                post(|State((batches, down)): State<Shared>, Json(body): Json<serde_json::Value>| async move {
                    if down.load(std::sync::atomic::Ordering::Relaxed) {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    batches.lock().unwrap().push(body);
                    StatusCode::OK
                }),
            )
            .with_state((batches.clone(), down.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakePostHog { url, batches, down }
    }

    /// Every event received: (event name, distinct id, properties).
    fn events(&self) -> Vec<(String, String, serde_json::Value)> {
        let batches = self.batches.lock().unwrap();
        batches
            .iter()
            .inspect(|b| assert_eq!(b["api_key"], "phc_test_key"))
            .flat_map(|b| b["batch"].as_array().cloned().unwrap_or_default())
            .map(|e| {
                (
                    e["event"].as_str().unwrap_or("").to_owned(),
                    e["distinct_id"].as_str().unwrap_or("").to_owned(),
                    e["properties"].clone(),
                )
            })
            .collect()
    }
}

const ALICE: &str = "alice-service-key-0123456789";
const BOB: &str = "bob-service-key-0123456789";

fn saas_profile(db: &str, posthog: &str, extra_monitoring: &str) -> String {
    let stores = format!("{{ database_url = \"{db}\", master_key = \"monitoring-test-master-key-0123\" }}");
    let auth = format!(
        "{{ database_url = \"{db}\", rate_limit_per_second = 0, rate_limit_per_minute = 0, redis_key_prefix = \"{}\", \
         static_keys = [{{ user_id = \"alice\", sha256 = \"{}\" }}, {{ user_id = \"bob\", sha256 = \"{}\" }}] }}",
        oh_e2e::redis::prefix("mon"),
        oh_e2e::sha256_hex(ALICE),
        oh_e2e::sha256_hex(BOB)
    );
    format!(
        "[extensions.settings_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasSettingsStore\"\nconfig = {stores}\n\
         [extensions.secrets_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasSecretsStore\"\nconfig = {stores}\n\
         [extensions.conversation_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasConversationStore\"\nconfig = {stores}\n\
         [extensions.user_auth]\nlibrary = \"saas_auth\"\nimplementation = \"SaasUserAuth\"\nconfig = {auth}\n\
         [extensions.conversation_manager]\nlibrary = \"standalone_manager\"\nimplementation = \"StandaloneConversationManager\"\n\
         config = {{ llm_max_retries = 0, llm_private_hosts_allowed = [\"127.0.0.1\"] }}\n\
         [[extensions.monitoring]]\nlibrary = \"saas_monitoring\"\nimplementation = \"SaaSMonitoringListener\"\n\
         config = {{ posthog_key = \"phc_test_key\", posthog_host = \"{posthog}\", flush_interval_ms = 100, max_retries = 2, \
         database_url = \"{db}\"{extra_monitoring} }}\n"
    )
}

async fn as_user(
    host: &oh_e2e::TestHost,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: serde_json::Value,
) -> oh_e2e::Response {
    host.send(host.http.request(method, host.url(path)).bearer_auth(key).json(&body)).await
}

async fn start_conversation(host: &oh_e2e::TestHost, key: &str, llm: &FakeLlm, model: &str, consents: bool) -> String {
    let settings = json!({ "llm_model": model, "llm_base_url": llm.base_url, "llm_api_key": "sk-test", "user_consents_to_analytics": consents });
    assert_eq!(as_user(host, key, reqwest::Method::POST, "/api/settings", settings).await.status, 200);
    let r = as_user(host, key, reqwest::Method::POST, "/api/conversations", json!({ "initial_user_msg": "hi" })).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["conversation_id"].as_str().unwrap().to_owned()
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !ok() {
        assert!(std::time::Instant::now() < deadline, "waited 15 s for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn analytics_reach_posthog_for_consenting_users_only_and_saas_metrics_count() {
    let db = oh_e2e::pg::TestDb::create().await;
    let posthog = FakePostHog::start().await;
    let llm = FakeLlm::start().await;
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("app_mode = \"saas\"\n", &saas_profile(&db.url, &posthog.url, ""));
    let host = d.start();
    start_conversation(&host, ALICE, &llm, "fake-model", true).await;
    start_conversation(&host, BOB, &llm, "fake-model", false).await;
    wait_for("alice's events", || {
        let names: Vec<String> = posthog.events().into_iter().filter(|e| e.1 == "alice").map(|e| e.0).collect();
        names.contains(&"conversation created".to_owned()) && names.contains(&"agent session started".to_owned())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = posthog.events();
    assert!(events.iter().all(|e| e.1 != "bob"), "bob declined analytics: {events:?}");
    let started = events.iter().find(|e| e.0 == "agent session started").unwrap();
    assert_eq!(started.2["success"], true);

    let s = scrape(&host.admin_get("/internal/metrics").await.text);
    assert!(matches!(find(&s, "saas_create_conversation", &[]).unwrap().value, Metric::Counter(n) if n == 2.0));
    assert_eq!(histogram_count(&s, "saas_agent_session_start", &[("success", "true")]), 2);
    assert!(matches!(find(&s, "saas_running_agent_loops", &[]).unwrap().value, Metric::Gauge(n) if n == 2.0));
    assert!(matches!(find(&s, "saas_posthog_events_sent_total", &[]).unwrap().value, Metric::Counter(n) if n >= 2.0));

    // PostHog down: requests stay fast, events are retried, then counted as dropped.
    posthog.down.store(true, std::sync::atomic::Ordering::Relaxed);
    let asked = std::time::Instant::now();
    let r = as_user(&host, ALICE, reqwest::Method::POST, "/api/conversations", json!({ "initial_user_msg": "again" }))
        .await;
    assert_eq!(r.status, 200);
    assert!(asked.elapsed() < Duration::from_secs(2), "a request waited on PostHog: {:?}", asked.elapsed());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let s = scrape(&host.admin_get("/internal/metrics").await.text);
        let dropped = find(&s, "saas_posthog_events_dropped_total", &[("reason", "send_failed")]).map_or(0.0, |m| {
            if let Metric::Counter(n) = m.value {
                n
            } else {
                0.0
            }
        });
        if dropped >= 1.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no dropped batch counted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn experiments_assign_sticky_variants_across_hosts_and_the_llm_gets_the_variant() {
    let db = oh_e2e::pg::TestDb::create().await;
    let posthog = FakePostHog::start().await;
    let llm = FakeLlm::start().await;
    let env = [
        ("ENABLE_EXPERIMENT_MANAGER", "1"),
        (
            "EXPERIMENT_LITELLM_DEFAULT_MODEL_EXPERIMENT",
            r#"{"variants": {"control": {"weight": 50}, "b": {"weight": 50, "model": "openai/gpt-variant"}}}"#,
        ),
        (
            "EXPERIMENT_SYSTEM_PROMPT_EXPERIMENT",
            r#"{"variants": {"terse": {"weight": 100, "system_prompt": "You are terse."}}}"#,
        ),
    ];
    let hosts: Vec<(Deployment, oh_e2e::TestHost)> = (0..2)
        .map(|_| {
            let d = Deployment::new();
            d.install_bundled();
            d.write_profile(
                "app_mode = \"saas\"\n",
                &saas_profile(&db.url, &posthog.url, ", default_model = \"fake-model\""),
            );
            let host = d.start_with_env(&env);
            (d, host)
        })
        .collect();
    // Alice keeps the deployment's default model: the model experiment applies to her.
    let mut alice = Vec::new();
    for i in 0..4 {
        let settings_model = "fake-model";
        alice.push(start_conversation(&hosts[i % 2].1, ALICE, &llm, settings_model, true).await);
    }
    // Bob chose his own model: it stays his.
    let settings = json!({ "llm_model": "custom-model", "llm_base_url": llm.base_url, "llm_api_key": "sk-bob" });
    assert_eq!(as_user(&hosts[1].1, BOB, reqwest::Method::POST, "/api/settings", settings).await.status, 200);
    let r = as_user(&hosts[1].1, BOB, reqwest::Method::POST, "/api/conversations", json!({ "initial_user_msg": "hi" }))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    wait_for("five answers", || llm.requests().len() >= 5).await;

    // One variant per user and experiment, whatever the conversation or host.
    let mut conn = db.connect().await;
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT conversation_id, experiment, variant, user_id FROM experiment_assignments ORDER BY user_id, experiment",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let alice_model: Vec<&str> =
        rows.iter().filter(|r| r.3 == "alice" && r.1 == "litellm_default_model").map(|r| r.2.as_str()).collect();
    assert_eq!(alice_model.len(), 4, "{rows:?}");
    assert!(alice_model.iter().all(|v| *v == alice_model[0]), "sticky: {alice_model:?}");
    assert!(rows.iter().filter(|r| r.1 == "system_prompt").all(|r| r.2 == "terse"));

    // The LLM got the variant's model and system prompt.
    let expected_model = if alice_model[0] == "b" { "gpt-variant" } else { "fake-model" };
    for (key, body) in llm.requests() {
        let system = body["messages"][0]["content"].as_str().unwrap_or("");
        assert_eq!(system, "You are terse.", "{body}");
        match key.as_deref() {
            Some(k) if k.contains("sk-bob") => assert_eq!(body["model"], "custom-model", "bob's own choice wins"),
            _ => assert_eq!(body["model"], expected_model, "{body}"),
        }
    }
    // Reported to PostHog.
    wait_for("$feature_flag_called", || {
        posthog.events().iter().any(|e| {
            e.0 == "$feature_flag_called"
                && e.1 == "alice"
                && e.2["$feature_flag"] == "litellm_default_model"
                && e.2["$feature_flag_response"] == alice_model[0]
        })
    })
    .await;
}

/// An OTLP/HTTP receiver (JSON encoding) recording every span it is sent.
async fn otlp_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>) {
    use axum::{extract::State, routing::post, Json, Router};
    type Spans = std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>;
    let spans: Spans = Default::default();
    let app = Router::new()
        .route(
            "/v1/traces",
            post(|State(spans): State<Spans>, Json(body): Json<serde_json::Value>| async move {
                for rs in body["resourceSpans"].as_array().into_iter().flatten() {
                    let service = rs["resource"]["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|a| a["key"] == "service.name")
                        .and_then(|a| a["value"]["stringValue"].as_str())
                        .unwrap_or("")
                        .to_owned();
                    for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                        for span in ss["spans"].as_array().into_iter().flatten() {
                            let mut span = span.clone();
                            span["service"] = json!(service);
                            spans.lock().unwrap().push(span);
                        }
                    }
                }
                Json(json!({}))
            }),
        )
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

fn attribute<'a>(span: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    span["attributes"].as_array()?.iter().find(|a| a["key"] == key).map(|a| &a["value"])
}

// Multi-threaded: the receiver must answer while the test waits for the host to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_nests_the_request_the_plugin_call_and_the_llm_call() {
    let (otlp, spans) = otlp_receiver().await;
    let llm = FakeLlm::start().await;
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile(
        "",
        "[extensions.conversation_manager]\nlibrary = \"standalone_manager\"\nimplementation = \"StandaloneConversationManager\"\n",
    );
    let mut host = d.start_with_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
        ("OTEL_SERVICE_NAME", "oh-host-test"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
    ]);
    let settings = json!({ "llm_model": "fake-model", "llm_base_url": llm.base_url, "llm_api_key": "sk-test" });
    assert_eq!(host.post_json("/api/settings", &settings).await.status, 200);
    // The caller's own trace: the request joins it.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let created = host
        .send(
            host.http
                .post(host.url("/api/conversations"))
                .header("traceparent", format!("00-{caller_trace}-00f067aa0ba902b7-01"))
                .json(&json!({ "initial_user_msg": "trace me" })),
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.text);
    wait_for("the LLM call", || !llm.requests().is_empty()).await;
    // A caller whose trace is not sampled: nothing of it is exported, and the LLM request
    // carries that trace on, unsampled.
    let unsampled_trace = "5cf92f3577b34da6a3ce929d0e0e4736";
    let quiet = host
        .send(
            host.http
                .post(host.url("/api/conversations"))
                .header("traceparent", format!("00-{unsampled_trace}-00f067aa0ba902b7-00"))
                .json(&json!({ "initial_user_msg": "do not trace me" })),
        )
        .await;
    assert_eq!(quiet.status, 200, "{}", quiet.text);
    wait_for("the second LLM call", || llm.requests().len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(host.interrupt().success(), "{}", host.log()); // flushes the exporter

    let spans = spans.lock().unwrap().clone();
    assert!(
        spans.iter().all(|s| s["traceId"].as_str() != Some(unsampled_trace)),
        "spans of an unsampled trace were exported"
    );
    let named = |name: &str| {
        spans.iter().find(|s| s["name"].as_str() == Some(name)).unwrap_or_else(|| {
            let names: Vec<_> = spans.iter().map(|s| s["name"].clone()).collect();
            panic!("no span `{name}` in {names:?}")
        })
    };
    let request = named("POST /api/conversations");
    let start = named("conversation_manager maybe_start");
    let chat = named("chat fake-model");
    for s in [request, start, chat] {
        assert_eq!(s["traceId"].as_str(), Some(caller_trace), "one trace, the caller's: {s}");
        assert_eq!(s["service"], "oh-host-test");
    }
    assert_eq!(request["parentSpanId"], "00f067aa0ba902b7", "the request is a child of the caller's span");
    assert_eq!(start["parentSpanId"], request["spanId"], "the plugin call is the request's child");
    assert_eq!(chat["parentSpanId"], start["spanId"], "the LLM call is the plugin call's child");
    assert_eq!(attribute(chat, "gen_ai.request.model").and_then(|v| v["stringValue"].as_str()), Some("fake-model"));
    assert!(attribute(chat, "gen_ai.usage.output_tokens").is_some(), "{chat}");
    assert_eq!(attribute(request, "http.route").and_then(|v| v["stringValue"].as_str()), Some("/api/conversations"));
    // The LLM request carried the LLM span's context.
    let sent = llm.traceparents()[0].clone().expect("traceparent sent to the LLM");
    assert_eq!(sent, format!("00-{caller_trace}-{}-01", chat["spanId"].as_str().unwrap()));
    let passed_on = llm.traceparents().iter().flatten().any(|t| t.contains(unsampled_trace) && t.ends_with("-00"));
    assert!(passed_on, "the unsampled trace was not passed on to the LLM: {:?}", llm.traceparents());
}

#[tokio::test]
async fn feature_flags_follow_their_rules_per_user_on_every_host_and_reach_the_web_client_and_posthog() {
    let db = oh_e2e::pg::TestDb::create().await;
    let posthog = FakePostHog::start().await;
    let flags = r#", cohorts = { staff = { users = ["bob"] } }, feature_flags = [
        { name = "HIDE_LLM_SETTINGS", rules = [{ cohort = "staff", variant = "true" }] },
        { name = "acme_beta", rules = [{ email_domains = ["acme.com"], variant = "true" }] },
        { name = "new_ui", default = "old", rules = [{ signed_up_after = "2025-01-01T00:00:00Z", variant = "fresh" }] },
        { name = "half", rules = [{ percentage = 50, split = { a = 1, b = 1 } }] } ]"#
        .replace('\n', " ");
    let hosts: Vec<(Deployment, oh_e2e::TestHost)> = (0..2)
        .map(|_| {
            let d = Deployment::new();
            d.install_bundled();
            d.write_profile("app_mode = \"saas\"\n", &saas_profile(&db.url, &posthog.url, &flags));
            let host = d.start();
            (d, host)
        })
        .collect();
    let config = |i: usize, key: &'static str| {
        let host = &hosts[i].1;
        async move {
            let r = host.send(host.http.get(host.url("/api/options/config")).bearer_auth(key)).await;
            assert_eq!(r.status, 200, "{}", r.text);
            r.json()["FEATURE_FLAGS"].clone()
        }
    };
    let bob = config(0, BOB).await;
    assert_eq!(bob["HIDE_LLM_SETTINGS"], true, "the staff cohort: {bob}");
    assert_eq!(bob["acme_beta"], false, "{bob}");
    assert_eq!(bob["new_ui"], "fresh", "first seen now: {bob}");
    // Alice has been a user since 2020 and her email is at acme.com (seen on an earlier
    // signed-in request; API keys carry no email). Both consent to analytics by default.
    let mut conn = db.connect().await;
    sqlx::query("INSERT INTO flag_subjects (user_id, email, first_seen) VALUES ('alice', 'alice@Acme.com', '2020-01-01T00:00:00Z')")
        .execute(&mut conn)
        .await
        .unwrap();
    let alice = config(0, ALICE).await;
    assert_eq!(alice["HIDE_LLM_SETTINGS"], false, "{alice}");
    assert_eq!(alice["acme_beta"], true, "{alice}");
    assert_eq!(alice["new_ui"], "old", "signed up before the rule's date: {alice}");
    // The same on the other host, and again: sticky.
    for _ in 0..2 {
        assert_eq!(config(1, ALICE).await, alice);
        assert_eq!(config(1, BOB).await, bob);
    }
    assert!(alice["half"] == "a" || alice["half"] == "b" || alice["half"] == false, "{alice}");
    // Anonymous: the deployment's flags only.
    let anonymous = hosts[0].1.get("/api/options/config").await.json();
    assert!(anonymous["FEATURE_FLAGS"]["acme_beta"].is_null(), "{anonymous}");
    assert_eq!(anonymous["FEATURE_FLAGS"]["HIDE_LLM_SETTINGS"], false);
    // Bob's sign-up was stored once, on his first evaluation.
    let seen: Vec<(String,)> =
        sqlx::query_as("SELECT user_id FROM flag_subjects ORDER BY user_id").fetch_all(&mut conn).await.unwrap();
    assert_eq!(seen, vec![("alice".to_owned(),), ("bob".to_owned(),)]);
    // Reported to PostHog as `$feature_flag_called`, once per user, flag and variant per host.
    wait_for("bob's HIDE_LLM_SETTINGS exposure", || {
        posthog.events().iter().any(|e| {
            e.0 == "$feature_flag_called"
                && e.1 == "bob"
                && e.2["$feature_flag"] == "HIDE_LLM_SETTINGS"
                && e.2["$feature_flag_response"] == "true"
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let exposures = posthog
        .events()
        .into_iter()
        .filter(|e| e.0 == "$feature_flag_called" && e.1 == "alice" && e.2["$feature_flag"] == "acme_beta")
        .count();
    assert_eq!(exposures, 2, "one per host, not one per page load");

    // A mistake in a rule stops the host with the flag named.
    let d = Deployment::new();
    d.install_bundled();
    let bad = ", feature_flags = [{ name = \"x\", rules = [{ percentage = 150, variant = \"true\" }] }]";
    d.write_profile("app_mode = \"saas\"\n", &saas_profile(&db.url, &posthog.url, bad));
    let out = d.run_cli(&["check"]);
    out.assert_refused();
    assert!(out.stderr.contains("feature_flags `x`, rule 1: percentage must be 0 to 100"), "{}", out.stderr);
}

/// A host with the bundled plugins at `RUST_LOG=debug` (a line per request), its stderr
/// handed to the test past the "listening" line.
fn host_logging_to_a_pipe() -> (Deployment, TestHost, oh_e2e::LogLines) {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "");
    let (host, lines) = d.start_with_stderr(&[("RUST_LOG", "debug")]);
    (d, host, lines)
}

/// `GET path` over a fresh connection: its raw answer, empty when none came back.
fn get(host: &TestHost, path: &str) -> String {
    let addr = host.base.trim_start_matches("http://");
    host.raw(&format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"))
}

/// Up to `n` `GET /api/settings` one after the other (each logs a line); how many were
/// answered before the first that was not.
fn settings_answered(host: &TestHost, n: usize) -> usize {
    (0..n).take_while(|_| !get(host, "/api/settings").is_empty()).count()
}

/// The log's reader going away (a log shipper restarted, `oh-host 2>&1 | head`) costs the
/// lines written meanwhile, never the server: it once panicked on its next log line.
#[test]
fn a_closed_log_pipe_loses_lines_not_the_server() {
    let (_d, mut host, lines) = host_logging_to_a_pipe();
    drop(lines); // the pipe's only reader: every later write fails with EPIPE

    // Requests that log (at debug, each one does), a failing one included.
    for _ in 0..20 {
        get(&host, "/api/settings");
        get(&host, "/api/conversations/not-a-conversation");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(host.alive(), "the host exited once its log pipe closed");
    assert!(get(&host, "/alive").starts_with("HTTP/1.1 200"));
}

/// A log nobody reads (a terminal paused with Ctrl-S, a stalled shipper) fills its pipe;
/// the server goes on serving, drops lines, and says how many once the log moves again.
#[test]
fn a_log_nobody_reads_drops_lines_and_the_server_serves() {
    let (_d, host, lines) = host_logging_to_a_pipe();
    // More lines than a pipe (64 KiB) and the queue hold.
    let answered = settings_answered(&host, 2500);
    let alive = get(&host, "/alive");
    // The log moves again: what was queued comes out, then the count of what was not.
    host.resume_log(lines);
    let start = std::time::Instant::now();
    while !host.log().contains("log line(s) dropped") && start.elapsed() < Duration::from_secs(20) {
        get(&host, "/alive");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(answered, 2500, "the server stopped answering while its log was not read");
    assert!(alive.starts_with("HTTP/1.1 200"), "{alive}");
    let log = host.log();
    let tail: Vec<&str> = log.lines().rev().take(20).collect();
    assert!(log.contains("log line(s) dropped: stderr was not read fast enough"), "{tail:#?}");
}

/// SIGTERM with a log nobody reads: the server still stops (its last lines get two seconds).
#[test]
fn a_log_nobody_reads_does_not_hold_the_server_at_its_exit() {
    let (_d, host, _lines) = host_logging_to_a_pipe();
    settings_answered(&host, 1500);
    let status = host.stop();
    assert!(status.success(), "{status:?}");
}

/// `LOG_JSON=1` (OpenHands' switch): every line a JSON object with OpenHands' keys, the
/// event's fields beside them and the request it belongs to.
#[tokio::test]
async fn log_json_writes_each_line_as_a_json_object() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "");
    let host = d.start_with_env(&[("LOG_JSON", "1"), ("RUST_LOG", "debug")]);
    let status = host.http.get(host.url("/api/settings")).send().await.unwrap().status();
    assert_eq!(status, 404); // no settings yet: a request that logs all the same
    let log = host.log_containing("answered", Duration::from_secs(10)).await;
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}")))
        .collect();
    for line in &lines {
        for key in ["message", "levelname", "name", "asctime"] {
            assert!(line[key].is_string(), "no `{key}` in {line}");
        }
    }
    let listening = lines.iter().find(|l| l["message"].as_str().unwrap().contains("listening on http://")).unwrap();
    assert_eq!(listening["levelname"], "INFO");
    assert_eq!(listening["name"], "oh_host::cli");
    assert_eq!(listening["profile"], d.profile_path().display().to_string());
    let answered = lines.iter().find(|l| l["message"] == "answered").expect("the request's line");
    assert_eq!(answered["status"], 404);
    let span = answered["span"].as_str().unwrap();
    assert!(span.starts_with("request{") && span.contains("path=/api/settings"), "{span}");
}
