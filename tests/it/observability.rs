//! What operators watch: Prometheus metrics on the admin address (parsed by a real parser).

use oh_e2e::{
    llm::FakeLlm,
    sio::{is_state, SioClient},
    Deployment,
};
use prometheus_parse::{Scrape, Value as Metric};
use serde_json::json;
use std::time::Duration;

fn scrape(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("not the exposition format: {e}\n{text}"))
}

fn find<'a>(s: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Option<&'a prometheus_parse::Sample> {
    s.samples.iter().find(|m| m.metric == name && labels.iter().all(|(k, v)| m.labels.get(k) == Some(*v)))
}

fn histogram_count(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> u64 {
    match find(s, name, labels).map(|m| &m.value) {
        Some(Metric::Histogram(buckets)) => buckets.iter().map(|b| b.count).fold(0.0, f64::max) as u64,
        other => {
            let seen: Vec<_> =
                s.samples.iter().filter(|m| m.metric == name).map(|m| format!("{:?}", m.labels)).collect();
            panic!("{name} {labels:?}: not a histogram: {other:?}; series: {seen:#?}")
        }
    }
}

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
