//! `make bench`: prints, from one run,
//! 1. the cost of one async plugin call through the `.so` versus the same plugin crate linked
//!    statically (rlib), in µs per call and as a ratio;
//! 2. `GET /api/settings` requests/s and p50/p99 latency of the real `oh-host` binary under a
//!    bounded load on 127.0.0.1;
//!    the same with the PostgreSQL stores, and POST;
//! 3. conversation search with 10,000 conversations of one user, file and PostgreSQL stores;
//! 4. 200 conversations at once against a local fake LLM streaming 50 tokens each: events per
//!    second through socket.io, p50/p99 delay from the LLM's chunk to the client's `oh_event`,
//!    and the host's RSS;
//! 5. authenticated `GET /api/settings`: Keycloak cookie and API key (saas_auth) next to the
//!    OSS single-user auth;
//! 6. three clustered nodes (PostgreSQL + Redis), 100 conversations spread over them, a
//!    client on the owner and one on another node of each: LLM chunk → `oh_event` p50/p99
//!    same-node vs cross-node; failover time over 10 kills; Redis commands and bytes per
//!    conversation per second, streaming and idle;
//! 7. `GET /api/settings` and conversation starts with the SaaS monitoring listener (PostHog
//!    on a local receiver) and OpenTelemetry tracing (OTLP to a local receiver) on vs off;
//! 8. billing: signed Stripe webhooks that each credit a purchase (signature check + ledger
//!    write), and `GET /api/billing/credits` for a user with 10,000 ledger entries next to one
//!    with a single entry;
//! 9. integrations: signed 10 KiB GitHub deliveries verified and stored per second (p99 of
//!    the acknowledgement), and the delay from a delivery to the agent's answer posted on the
//!    (fake) GitHub with the fake LLM;
//! 10. the agent's tools (local runtime, then bubblewrap): a command's start to its observation, the
//!     tool round trip (the model's call → the observation stored), and 20 conversations
//!     running commands at once (host RSS and CPU).
//!
//! Usage: `oh-bench <dir with oh-host and lib*.so> [section ...]` (bench/run passes
//! target/release and `make bench SECTIONS="2 7"` picks sections; none means all).
//! Figures, not pass/fail: the machines are shared and noisy.

use plugin_api::CallContext;
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const CALLS: u32 = 20_000;
const HTTP_CONCURRENCY: usize = 16;
const HTTP_DURATION: Duration = Duration::from_secs(5);
const HTTP_MAX_REQUESTS: usize = 200_000;

/// One figure next to its target (issue "Performance"), for the closing table.
fn target(label: &str, value: String, target: &str, met: bool) {
    println!("   -> {label}: {value}   target {target}   {}", if met { "met" } else { "NOT MET" });
}

/// `oh-bench --bare-axum`: the framework's ceiling on this machine: a bare axum `/alive`
/// on the same runtime shape as the host (multi-thread, one worker per core), printing its
/// address as the host does.
fn bare_axum() {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
        let app = axum::Router::new()
            .route("/alive", axum::routing::get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        eprintln!("listening on http://{}", listener.local_addr().unwrap());
        axum::serve(listener, app).await.unwrap();
    });
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--bare-axum") {
        return bare_axum();
    }
    let mut args = std::env::args().skip(1);
    let bin_dir = PathBuf::from(args.next().unwrap_or_else(|| "target/release".to_owned()));
    let sections: Vec<u32> =
        args.map(|a| a.parse().unwrap_or_else(|_| panic!("`{a}` is not a section number (1 to 10)"))).collect();
    let run = |n: u32| sections.is_empty() || sections.contains(&n);
    let work = tempfile::tempdir().expect("tempdir");
    let plugins = work.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    for lib in oh_e2e::BUNDLED {
        let src = bin_dir.join(format!("lib{lib}.so"));
        std::fs::copy(&src, plugins.join(format!("lib{lib}.so")))
            .unwrap_or_else(|e| panic!("{}: {e} (build with `cargo build --release --workspace`)", src.display()));
    }
    let state = work.path().join("state");
    let profile = format!(
        "[server]\nbind = \"127.0.0.1:0\"\nadmin_bind = \"off\"\nplugins_dir = \"{}\"\nstate_dir = \"{}\"\n",
        plugins.display(),
        state.display()
    );
    let profile_path = work.path().join("plugins.toml");
    std::fs::write(&profile_path, &profile).unwrap();

    println!(
        "oh-host benchmarks ({} build, {} cores)",
        if cfg!(debug_assertions) { "debug" } else { "release" },
        cores()
    );
    if run(1) {
        ffi_call_cost(&profile_path, &state);
    }

    // The same server with the PostgreSQL stores, on a database of its own.
    let db = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(oh_e2e::pg::TestDb::create());
    let pg_config = format!("{{ database_url = \"{}\", master_key = \"bench-master-key-0123456789\" }}", db.url);
    let pg_stores = [
        "SaasSettingsStore:settings_store",
        "SaasSecretsStore:secrets_store",
        "SaasConversationStore:conversation_store",
    ]
    .iter()
    .map(|s| {
        let (imp, point) = s.split_once(':').unwrap();
        format!(
            "[extensions.{point}]\nlibrary = \"postgres_stores\"\nimplementation = \"{imp}\"\nconfig = {pg_config}\n"
        )
    })
    .collect::<String>();
    let pg_profile = work.path().join("plugins.pg.toml");
    std::fs::write(&pg_profile, format!("{profile}{pg_stores}")).unwrap();
    if run(2) {
        http_load(
            &bin_dir.join("oh-host"),
            &[("file stores", profile_path.clone()), ("PostgreSQL stores", pg_profile.clone())],
        );
    }
    let search_state = work.path().join("search-state");
    let search_profile = work.path().join("plugins.search.toml");
    std::fs::write(&search_profile, profile.replace(&state.display().to_string(), &search_state.display().to_string()))
        .unwrap();
    if run(3) {
        search_load(
            &bin_dir.join("oh-host"),
            &[("file stores", search_profile, search_state), ("postgres", pg_profile, PathBuf::new())],
            &db.url,
        );
    }

    let manager = "\n[extensions.conversation_manager]\nlibrary = \"standalone_manager\"\n\
                   implementation = \"StandaloneConversationManager\"\nconfig = { max_concurrent_conversations = 1000 }\n";
    std::fs::write(&profile_path, format!("{profile}{manager}")).unwrap();
    let oss_profile = work.path().join("plugins.oss.toml");
    std::fs::write(&oss_profile, &profile).unwrap();
    if run(4) {
        // Three runs (each a fresh host), the target on the median: one run's p99 moves
        // between 1.5 and 7 ms with what the disk is still flushing.
        let mut p99s: Vec<f64> = (0..3).map(|_| conversations_load(&bin_dir.join("oh-host"), &profile_path)).collect();
        p99s.sort_by(f64::total_cmp);
        target(
            &format!("LLM chunk -> oh_event p99, {CONVERSATIONS} streaming, median of 3 runs"),
            format!(
                "{:.1} ms (runs: {})",
                p99s[1],
                p99s.iter().map(|p| format!("{p:.1}")).collect::<Vec<_>>().join(", ")
            ),
            "<= 5 ms",
            p99s[1] <= 5.0,
        );
    }
    if run(5) {
        auth_load(&bin_dir.join("oh-host"), &oss_profile, work.path(), &profile, &db.url);
    }
    if run(8) {
        billing_load(&bin_dir.join("oh-host"), work.path(), &oss_profile, &db.url);
    }
    if run(9) {
        webhook_load(&bin_dir.join("oh-host"), work.path(), &oss_profile, &db.url);
    }
    if run(10) {
        tools_load(&bin_dir.join("oh-host"), work.path(), &oss_profile);
    }
    drop(db);
    if run(6) {
        cluster_load(&bin_dir.join("oh-host"), work.path(), &plugins);
    }
    if run(7) {
        monitoring_overhead(&bin_dir.join("oh-host"), work.path(), &plugins);
    }
}

/// Section 7: what the SaaS monitoring listener and tracing cost on cheap requests.
fn monitoring_overhead(bin: &Path, work: &Path, plugins: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    // A sink for PostHog batches and OTLP traces: answers 200 to anything. On a thread of its
    // own, so what it receives does not slow the load generator (a collector runs elsewhere).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async move {
            let app = axum::Router::new().fallback(|| async { "{}" });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(format!("http://{}", listener.local_addr().unwrap())).unwrap();
            axum::serve(listener, app).await.unwrap();
        })
    });
    let sink = rx.recv().unwrap();
    let manager = "[extensions.conversation_manager]\nlibrary = \"standalone_manager\"\n\
                   implementation = \"StandaloneConversationManager\"\nconfig = { max_concurrent_conversations = 100000 }\n";
    let profile = |name: &str, monitoring: &str| {
        let text = format!(
            "[server]\nbind = \"127.0.0.1:0\"\nadmin_bind = \"off\"\nplugins_dir = \"{}\"\nstate_dir = \"{}\"\n{manager}{monitoring}",
            plugins.display(),
            work.join(format!("state-{name}")).display()
        );
        let path = work.join(format!("plugins.{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let saas = format!(
        "[[extensions.monitoring]]\nlibrary = \"saas_monitoring\"\nimplementation = \"SaaSMonitoringListener\"\n\
         config = {{ posthog_key = \"phc_bench\", posthog_host = \"{sink}\" }}\n"
    );
    let otel = || vec![("OTEL_EXPORTER_OTLP_ENDPOINT", sink.clone())];
    let sampled = || {
        let mut env = otel();
        env.push(("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".to_owned()));
        env.push(("OTEL_TRACES_SAMPLER_ARG", "0.1".to_owned()));
        env
    };
    println!(
        "\n7. monitoring and tracing overhead, {HTTP_CONCURRENCY} connections, {:.0} s per figure",
        HTTP_DURATION.as_secs_f64()
    );
    let runs = [
        ("off", profile("off", ""), vec![]),
        ("SaaS monitoring", profile("saas", &saas), vec![]),
        ("tracing, every request", profile("traced", ""), otel()),
        ("SaaS monitoring + tracing", profile("both", &saas), otel()),
        ("SaaS monitoring + tracing 10%", profile("sampled", &saas), sampled()),
    ];
    // Rounds over every configuration in turn, medians reported: one pass in a fixed order
    // moved a configuration's figure by ±15% on this machine.
    const ROUNDS: usize = 3;
    let mut get_rates = vec![Vec::new(); runs.len()];
    let mut start_rates = vec![Vec::new(); runs.len()];
    for round in 0..ROUNDS {
        for (i, (label, path, env)) in runs.iter().enumerate() {
            let (mut child, addr) = spawn_host_env(bin, path, env);
            let base = format!("http://{addr}");
            rt.block_on(async {
                let settings = serde_json::json!({ "llm_model": "fake", "llm_base_url": "http://127.0.0.1:9/v1", "llm_api_key": "sk-x" });
                assert!(reqwest::Client::new().post(format!("{base}/api/settings")).json(&settings).send().await.unwrap().status().is_success());
                let url = format!("{base}/api/settings");
                get_rates[i].push(load(move |c| c.get(&url)).await.rate());
                let url = format!("{base}/api/conversations");
                start_rates[i].push(load(move |c| c.post(&url).json(&serde_json::json!({}))).await.rate());
            });
            let _ = child.kill();
            let _ = child.wait();
            if round == ROUNDS - 1 {
                let median = |v: &mut Vec<f64>| {
                    v.sort_by(f64::total_cmp);
                    v[v.len() / 2]
                };
                println!(
                    "   {label:<32} GET /api/settings {:>7.0} req/s   POST /api/conversations {:>6.0} req/s   (medians of {ROUNDS})",
                    median(&mut get_rates[i]),
                    median(&mut start_rates[i])
                );
            }
        }
    }
    let rates: Vec<(f64, f64)> =
        (0..runs.len()).map(|i| (get_rates[i][ROUNDS / 2], start_rates[i][ROUNDS / 2])).collect();
    let overhead = |off: f64, on: f64| (1.0 - on / off) * 100.0;
    for (i, (label, _, _)) in runs.iter().enumerate().skip(1) {
        let (get, start) = (overhead(rates[0].0, rates[i].0), overhead(rates[0].1, rates[i].1));
        target(
            &format!("overhead of {label}"),
            format!("GET /api/settings {get:.1}%, conversation start {start:.1}%"),
            "<= 5%",
            get <= 5.0 && start <= 5.0,
        );
    }
}

const CLUSTER_NODES: usize = 3;
const CLUSTER_CONVERSATIONS: usize = 100;
const KILLS: usize = 10;
const CLUSTER_LEASE_MS: u64 = 1500;

/// Redis's counters: commands processed, bytes in, bytes out.
async fn redis_counters(redis: &str) -> (u64, u64, u64) {
    let client = reqwest::Url::parse(redis).unwrap();
    let addr = format!("{}:{}", client.host_str().unwrap_or("127.0.0.1"), client.port().unwrap_or(6379));
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("Redis for the cluster benchmark");
    stream.write_all(b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n").await.unwrap();
    let mut text = String::new();
    let mut buf = vec![0u8; 65536];
    while !text.contains("total_net_output_bytes") || !text.ends_with("\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let field = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0)
    };
    (field("total_commands_processed:"), field("total_net_input_bytes:"), field("total_net_output_bytes:"))
}

/// Section 6: the clustered manager.
fn cluster_load(bin: &Path, work: &Path, plugins: &Path) {
    use oh_e2e::{
        llm::{now_micros, FakeLlm, Reply},
        sio::{is_state, SioClient},
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let db = oh_e2e::pg::TestDb::create().await;
        let redis = oh_e2e::redis::url();
        let prefix = oh_e2e::redis::prefix("bench");
        let llm = FakeLlm::start().await;
        let stores = format!("{{ database_url = \"{}\", master_key = \"bench-master-key-0123456789\" }}", db.url);
        let profile = |i: usize| {
            let text = format!(
                "[server]\nbind = \"127.0.0.1:0\"\nadmin_bind = \"off\"\nplugins_dir = \"{}\"\nstate_dir = \"{}\"\n\
                 [extensions.settings_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasSettingsStore\"\nconfig = {stores}\n\
                 [extensions.secrets_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasSecretsStore\"\nconfig = {stores}\n\
                 [extensions.conversation_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasConversationStore\"\nconfig = {stores}\n\
                 [extensions.conversation_manager]\nlibrary = \"clustered_manager\"\nimplementation = \"ClusteredConversationManager\"\n\
                 config = {{ redis_url = \"{redis}\", redis_key_prefix = \"{prefix}\", lease_ttl_ms = {CLUSTER_LEASE_MS}, \
                 max_concurrent_conversations = 1000, llm_max_retries = 0 }}\n",
                plugins.display(),
                work.join(format!("cluster-state-{i}")).display()
            );
            let path = work.join(format!("plugins.cluster{i}.toml"));
            std::fs::write(&path, text).unwrap();
            path
        };
        let mut nodes: Vec<(std::process::Child, String)> =
            (0..CLUSTER_NODES).map(|i| spawn_host(bin, &profile(i))).collect();
        let http = reqwest::Client::new();
        let base = |n: &(std::process::Child, String)| format!("http://{}", n.1);
        let settings = serde_json::json!({ "llm_model": "fake", "llm_base_url": llm.base_url, "llm_api_key": "sk-bench" });
        assert!(http.post(format!("{}/api/settings", base(&nodes[0]))).json(&settings).send().await.unwrap().status().is_success());

        // Conversation i is owned by node i % 3; a client on its owner and one on the next node.
        let mut clients = Vec::new();
        for i in 0..CLUSTER_CONVERSATIONS {
            let owner = i % CLUSTER_NODES;
            let id = start_conversation(&http, &base(&nodes[owner]), serde_json::json!({})).await;
            for (node, cross) in [(owner, false), ((owner + 1) % CLUSTER_NODES, true)] {
                let mut c = SioClient::connect(&base(&nodes[node]), &format!("conversation_id={id}&latest_event_id=-1"), &[])
                    .await
                    .unwrap();
                c.until(Duration::from_secs(60), |e| is_state(e, "awaiting_user_input")).await;
                clients.push((id.clone(), cross, c));
            }
        }
        // Idle: heartbeats, renewals and relay reads only.
        let (c0, i0, o0) = redis_counters(&redis).await;
        let idle_window = Duration::from_secs(5);
        tokio::time::sleep(idle_window).await;
        let (c1, i1, o1) = redis_counters(&redis).await;

        llm.push((0..CLUSTER_CONVERSATIONS).map(|_| Reply::TimedTokens { n: TOKENS, gap: Duration::from_millis(20) }));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for (id, cross, mut c) in clients {
            let send = !cross; // one message per conversation, from its owner-side client
            tasks.push(tokio::spawn(async move {
                if send {
                    c.emit("oh_user_action", &serde_json::json!({ "action": "message", "args": { "content": "go" } }));
                }
                let mut delays = Vec::new();
                let mut seen_running = false;
                loop {
                    let Some(e) = c.next(Duration::from_secs(60)).await else { break };
                    if let Some(t) = e["args"]["delta"].as_str().and_then(|d| d.trim().strip_prefix('t')) {
                        if let Ok(sent) = t.parse::<u128>() {
                            delays.push(now_micros().saturating_sub(sent) as u64);
                        }
                    }
                    seen_running |= is_state(&e, "running");
                    if seen_running && is_state(&e, "awaiting_user_input") {
                        break;
                    }
                }
                let _ = id;
                c.close();
                (cross, delays)
            }));
        }
        let (mut same, mut cross) = (Vec::new(), Vec::new());
        for t in tasks {
            let (is_cross, d) = t.await.unwrap();
            if is_cross { cross.extend(d) } else { same.extend(d) }
        }
        let streamed = start.elapsed();
        let (c2, i2, o2) = redis_counters(&redis).await;
        same.sort_unstable();
        cross.sort_unstable();
        let pct = |v: &[u64], p: f64| v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1))).copied().unwrap_or(0);
        println!("\n6. {CLUSTER_NODES} clustered nodes, {CLUSTER_CONVERSATIONS} conversations (PostgreSQL stores, Redis), {TOKENS} tokens each 20 ms apart");
        println!(
            "   LLM chunk -> client oh_event, same node:  p50 {} µs   p99 {} µs   ({} deltas)",
            pct(&same, 0.5), pct(&same, 0.99), same.len()
        );
        println!(
            "   LLM chunk -> client oh_event, cross node: p50 {} µs   p99 {} µs   ({} deltas); extra p99 {} µs",
            pct(&cross, 0.5), pct(&cross, 0.99), cross.len(),
            pct(&cross, 0.99) as i64 - pct(&same, 0.99) as i64
        );
        let per = |d: u64, secs: f64| d as f64 / CLUSTER_CONVERSATIONS as f64 / secs;
        let idle = idle_window.as_secs_f64();
        let busy = streamed.as_secs_f64();
        println!(
            "   Redis per conversation per second: idle {:.2} commands, {:.0} B in, {:.0} B out; streaming {:.1} commands, {:.0} B in, {:.0} B out",
            per(c1 - c0, idle), per(i1 - i0, idle), per(o1 - o0, idle),
            per(c2 - c1, busy), per(i2 - i1, busy), per(o2 - o1, busy)
        );

        // Failover: kill the owner mid-answer, time until a client elsewhere sees the resumed loop.
        let mut times = Vec::new();
        for k in 0..KILLS {
            let victim = k % CLUSTER_NODES;
            let watcher = (victim + 1) % CLUSTER_NODES;
            llm.push([Reply::Tokens { n: 400, gap: Duration::from_millis(25) }]);
            let id = start_conversation(&http, &base(&nodes[victim]), serde_json::json!({ "initial_user_msg": "long" })).await;
            let mut c = SioClient::connect(&base(&nodes[watcher]), &format!("conversation_id={id}&latest_event_id=-1"), &[])
                .await
                .unwrap();
            c.until(Duration::from_secs(30), |e| e["action"] == "streaming_message").await;
            let killed = Instant::now();
            let _ = nodes[victim].0.kill();
            let _ = nodes[victim].0.wait();
            let loading = c.until(Duration::from_secs(30), |e| is_state(e, "loading") && e["id"].as_u64().unwrap_or(0) > 2).await;
            let _ = loading;
            times.push(killed.elapsed());
            c.close();
            nodes[victim] = spawn_host(bin, &profile(victim));
        }
        times.sort();
        println!(
            "   failover over {KILLS} kill -9 (lease {CLUSTER_LEASE_MS} ms): min {} ms   median {} ms   max {} ms",
            times[0].as_millis(),
            times[KILLS / 2].as_millis(),
            times[KILLS - 1].as_millis()
        );
        for (mut child, _) in nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    });
}

/// Section 5: the cost of authentication on a cheap authenticated route.
fn auth_load(bin: &Path, oss_profile: &Path, work: &Path, base_profile: &str, db_url: &str) {
    use oh_e2e::oidc::{FakeKeycloak, CLIENT_ID, CLIENT_SECRET, REALM};
    const SERVICE_KEY: &str = "bench-service-key-0123456789";
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    println!("\n5. authenticated GET /api/settings, {HTTP_CONCURRENCY} connections, file stores");
    rt.block_on(async {
        // OSS: single user, no credentials.
        let (mut child, addr) = spawn_host(bin, oss_profile);
        let url = format!("http://{addr}/api/settings");
        let body = serde_json::json!({ "llm_model": "gpt-4o", "language": "en" });
        assert!(reqwest::Client::new().post(&url).json(&body).send().await.unwrap().status().is_success());
        let u = url.clone();
        load(move |c| c.get(&u)).await.row("DefaultUserAuth (no credentials)");
        let _ = child.kill();
        let _ = child.wait();

        let kc = FakeKeycloak::start().await;
        let hash: String = {
            use sha2::Digest as _;
            sha2::Sha256::digest(SERVICE_KEY.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
        };
        let config = format!(
            "{{ database_url = \"{db_url}\", rate_limit_per_second = 0, rate_limit_per_minute = 0, keycloak_server_url = \"{}\", \
             keycloak_realm_name = \"{REALM}\", keycloak_client_id = \"{CLIENT_ID}\", keycloak_client_secret = \"{CLIENT_SECRET}\", \
             jwt_secret = \"bench-jwt-secret-0123456789\", web_host = \"http://localhost:3000\", \
             static_keys = [{{ user_id = \"svc\", sha256 = \"{hash}\" }}] }}",
            kc.base
        );
        let saas = format!(
            "{base_profile}[extensions.user_auth]\nlibrary = \"saas_auth\"\nimplementation = \"SaasUserAuth\"\nconfig = {config}\n\
             [[extensions.routes]]\nlibrary = \"saas_auth\"\nimplementation = \"SaasAuthRoutes\"\nconfig = {config}\n"
        );
        let saas_profile = work.join("plugins.auth.toml");
        std::fs::write(&saas_profile, saas).unwrap();
        let (mut child, addr) = spawn_host(bin, &saas_profile);
        let base = format!("http://{addr}");
        let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        // A browser session: login, Keycloak, callback, accept the TOS.
        let start = browser.get(format!("{base}/oauth/keycloak/login")).send().await.unwrap();
        let state = cookie(&start, "oh_oauth_state");
        let at_kc = browser.get(start.headers()["location"].to_str().unwrap()).send().await.unwrap();
        let query = at_kc.headers()["location"].to_str().unwrap().split_once('?').unwrap().1.to_owned();
        let back = browser
            .get(format!("{base}/oauth/keycloak/callback?{query}"))
            .header("cookie", format!("oh_oauth_state={state}"))
            .send()
            .await
            .unwrap();
        let session = cookie(&back, "keycloak_auth");
        let tos = browser.post(format!("{base}/api/accept_tos")).header("cookie", format!("keycloak_auth={session}")).send().await.unwrap();
        let session = cookie(&tos, "keycloak_auth");
        let session_header = format!("keycloak_auth={session}");
        let settings = format!("{base}/api/settings");
        let ok = browser.post(&settings).header("cookie", &session_header).json(&body).send().await.unwrap();
        assert!(ok.status().is_success(), "{}", ok.status());
        let (u, h) = (settings.clone(), session_header.clone());
        let cookie_rate = load(move |c| c.get(&u).header("cookie", &h)).await.tap_row("SaasUserAuth, keycloak_auth cookie").rate();

        // An API key from the database (not the static one), made in the browser session.
        let created: serde_json::Value = browser
            .post(format!("{base}/api/keys"))
            .header("cookie", &session_header)
            .json(&serde_json::json!({ "name": "bench" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let key = created["key"].as_str().expect("API key created").to_owned();
        let ok = browser.post(&settings).bearer_auth(&key).json(&body).send().await.unwrap();
        assert!(ok.status().is_success());
        let u = settings.clone();
        let key_rate = load(move |c| c.get(&u).bearer_auth(&key)).await.tap_row("SaasUserAuth, API key (PostgreSQL)").rate();
        let share = key_rate / cookie_rate * 100.0;
        target("API-key auth as a share of cookie auth", format!("{share:.0}%"), ">= 80%", share >= 80.0);
        let _ = child.kill();
        let _ = child.wait();
    });
}

/// Section 8: the billing plugin's webhook and balance paths on PostgreSQL.
fn billing_load(bin: &Path, work: &Path, oss_profile: &Path, db_url: &str) {
    const KEY: &str = "bench-billing-key-0123456789";
    const SECRET: &str = "whsec_bench_secret_0123456789";
    const USERS: usize = 100;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    println!("\n8. billing on PostgreSQL, {HTTP_CONCURRENCY} connections");
    let base_profile = std::fs::read_to_string(oss_profile).unwrap();
    let hash: String = {
        use sha2::Digest as _;
        sha2::Sha256::digest(KEY.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    };
    let auth = format!(
        "{{ database_url = \"{db_url}\", rate_limit_per_second = 0, rate_limit_per_minute = 0, \
         static_keys = [{{ user_id = \"heavy\", sha256 = \"{hash}\" }}] }}"
    );
    let billing = format!(
        "{{ database_url = \"{db_url}\", stripe_api_key = \"sk_bench\", stripe_webhook_secret = \"{SECRET}\", \
         stripe_api_url = \"http://127.0.0.1:9\" }}"
    );
    let profile = work.join("plugins.billing.toml");
    std::fs::write(
        &profile,
        format!(
            "{base_profile}[extensions.user_auth]\nlibrary = \"saas_auth\"\nimplementation = \"SaasUserAuth\"\nconfig = {auth}\n\
             [[extensions.routes]]\nlibrary = \"billing\"\nimplementation = \"BillingRoutes\"\nconfig = {billing}\n"
        ),
    )
    .unwrap();
    rt.block_on(async {
        let (mut child, addr) = spawn_host(bin, &profile);
        let base = format!("http://{addr}");
        let client = reqwest::Client::new();
        // The first call applies the migrations.
        let r = client.get(format!("{base}/api/billing/credits")).bearer_auth(KEY).send().await.unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(db_url).await.unwrap();
        // Sessions to complete, spread over users (as purchases are); and the heavy user's
        // ledger of 10,000 entries next to a light user's single one.
        for sql in [
            format!(
                "INSERT INTO billing_sessions (id, user_id, status, price) \
                 SELECT 'cs_bench_' || g, 'buyer' || (g % {USERS}), 'in_progress', 10 FROM generate_series(1, {HTTP_MAX_REQUESTS}) g"
            ),
            "INSERT INTO credit_ledger (user_id, kind, amount, reference) \
             SELECT 'heavy', 'usage', -0.0025, 'bench:' || g FROM generate_series(1, 9999) g"
                .to_owned(),
            "INSERT INTO credit_ledger (user_id, kind, amount, reference) VALUES ('heavy', 'purchase', 100, 'bench:purchase')"
                .to_owned(),
            "INSERT INTO credit_balances (user_id, balance) SELECT 'heavy', sum(amount) FROM credit_ledger WHERE user_id = 'heavy'"
                .to_owned(),
        ] {
            sqlx::query(&sql).execute(&mut conn).await.unwrap();
        }
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let url = format!("{base}/api/billing/stripe-webhook");
        let hooks = load(move |c| {
            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let event = serde_json::json!({
                "id": format!("evt_bench_{n}"), "object": "event", "type": "checkout.session.completed",
                "data": { "object": { "id": format!("cs_bench_{n}"), "object": "checkout.session", "payment_status": "paid" } },
            })
            .to_string();
            let header = oh_e2e::stripe::signature(event.as_bytes(), SECRET, chrono::Utc::now().timestamp());
            c.post(&url).header("stripe-signature", header).header("content-type", "application/json").body(event)
        })
        .await
        .tap_row("signed webhook: verify + credit a purchase");
        let credited: i64 =
            sqlx::query_scalar("SELECT count(*) FROM credit_ledger WHERE kind = 'purchase' AND reference LIKE 'checkout:cs_bench_%'")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert_eq!(credited as usize, hooks.latencies.len(), "each webhook credited exactly one purchase");

        let url = format!("{base}/api/billing/credits");
        let heavy = load(move |c| c.get(&url).bearer_auth(KEY)).await.tap_row("GET credits, 10,000 ledger entries");
        // The same user with one entry: what a balance costs when nothing is summed.
        sqlx::query("DELETE FROM credit_ledger WHERE user_id = 'heavy' AND reference <> 'bench:purchase'")
            .execute(&mut conn)
            .await
            .unwrap();
        let url = format!("{base}/api/billing/credits");
        let light = load(move |c| c.get(&url).bearer_auth(KEY)).await.tap_row("GET credits, 1 ledger entry");
        let share = heavy.rate() / light.rate() * 100.0;
        target(
            "credits with 10,000 entries as a share of 1 entry",
            format!("{share:.0}%"),
            ">= 80% (flat in the ledger's length)",
            share >= 80.0,
        );
        let _ = child.kill();
        let _ = child.wait();
    });
}

/// Process CPU seconds (user + system) of `pid`, from /proc.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After the command name: state is field 0, utime 11, stime 12 (clock ticks, 100 per s).
    (ticks(11) + ticks(12)) / 100.0
}

/// Section 10: the agent's tools, with each runtime.
fn tools_load(bin: &Path, work: &Path, oss_profile: &Path) {
    for runtime in ["local", "bubblewrap"] {
        tools_load_with(bin, work, oss_profile, runtime);
    }
}

fn tools_load_with(bin: &Path, work: &Path, oss_profile: &Path, runtime: &str) {
    use oh_e2e::llm::FakeLlm;
    const CONCURRENT: usize = 20;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    println!("\n10. the agent's tools, runtime = {runtime}");
    let base_profile = std::fs::read_to_string(oss_profile).unwrap();
    let profile = work.join("plugins.tools.toml");
    std::fs::write(
        &profile,
        format!(
            "{base_profile}[extensions.conversation_manager]\nlibrary = \"standalone_manager\"\nimplementation = \"StandaloneConversationManager\"\n\
             config = {{ runtime = \"{runtime}\", max_concurrent_conversations = 100 }}\n"
        ),
    )
    .unwrap();
    rt.block_on(async {
        let llm = FakeLlm::start().await;
        let (mut child, addr) = spawn_host(bin, &profile);
        let base = format!("http://{addr}");
        let http = reqwest::Client::new();
        let settings = serde_json::json!({ "llm_model": "fake", "llm_base_url": llm.base_url, "llm_api_key": "sk-bench" });
        assert!(http.post(format!("{base}/api/settings")).json(&settings).send().await.unwrap().status().is_success());
        let ts = |e: &serde_json::Value| {
            chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap_or("")).map(|t| t.timestamp_micros()).unwrap_or(0)
        };
        // Runs conversations whose agent calls `command` once, then answers; the (action,
        // observation) timestamps of each `run`, once all are done.
        let converse = |n: usize, command: &'static str| {
            let (http, base) = (http.clone(), base.clone());
            let llm = &llm;
            async move {
                llm.call_tool_per_message("execute_bash", serde_json::json!({ "command": command }));
                let mut ids = Vec::new();
                for _ in 0..n {
                    let created = chrono::Utc::now().timestamp_micros();
                    let id = start_conversation(&http, &base, serde_json::json!({ "initial_user_msg": "run it" })).await;
                    ids.push((id, created));
                }
                let mut pairs = Vec::new();
                for (id, created) in ids {
                    let started = Instant::now();
                    loop {
                        let page: serde_json::Value = http
                            .get(format!("{base}/api/conversations/{id}/events?limit=100"))
                            .send()
                            .await
                            .unwrap()
                            .json()
                            .await
                            .unwrap();
                        let events = page["events"].as_array().cloned().unwrap_or_default();
                        let action = events.iter().find(|e| e["action"] == "run");
                        let observation = events.iter().find(|e| e["observation"] == "run");
                        if let (Some(a), Some(o)) = (action, observation) {
                            pairs.push((created, ts(a), ts(o)));
                            break;
                        }
                        assert!(started.elapsed() < Duration::from_secs(60), "no observation in {id}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                pairs
            }
        };
        let quantiles = |mut v: Vec<i64>| {
            v.sort();
            (v[v.len() / 2] as f64 / 1e3, v[(v.len() * 99 / 100).min(v.len() - 1)] as f64 / 1e3)
        };
        // One at a time: a command's start to its observation stored.
        let mut starts = Vec::new();
        for _ in 0..50 {
            let pairs = converse(1, "echo first-output").await;
            starts.extend(pairs.iter().map(|(_, a, o)| o - a));
        }
        let (p50, p99) = quantiles(starts);
        println!("   command start -> observation stored       p50 {p50:>6.1} ms   p99 {p99:>6.1} ms   (50 commands, one at a time)");
        // The whole round trip: the conversation starts, the model (fake, instant) answers with
        // the call, the command runs, its observation is stored.
        let round: Vec<i64> = converse(20, "true").await.iter().map(|(c, _, o)| o - c).collect();
        let (p50, p99) = quantiles(round);
        println!("   start -> LLM tool call -> observation     p50 {p50:>6.1} ms   p99 {p99:>6.1} ms   (20 conversations, started together)");

        // 20 conversations running commands at once.
        let pid = child.id();
        let (cpu0, wall0) = (cpu_secs(pid), Instant::now());
        let busy = converse(CONCURRENT, "for i in $(seq 1 40); do echo line $i; sleep 0.05; done").await;
        let (cpu, wall) = (cpu_secs(pid) - cpu0, wall0.elapsed().as_secs_f64());
        let (rss, peak) = rss_mib(pid);
        assert_eq!(busy.len(), CONCURRENT);
        println!(
            "   {CONCURRENT} conversations running commands       host CPU {:>5.1}% of a core   RSS {rss:.1} MiB (peak {peak:.1})",
            cpu / wall * 100.0
        );
        let _ = child.kill();
        let _ = child.wait();
    });
}

/// Section 9: the integrations' inbox and the way back.
fn webhook_load(bin: &Path, work: &Path, oss_profile: &Path, db_url: &str) {
    use oh_e2e::providers::{app_private_key, FakeProviders, APP_ID};
    const SECRET: &str = "bench-github-webhook-secret";
    const KEY: &str = "bench-integrations-key-0123456789";
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    println!("\n9. integrations on PostgreSQL, {HTTP_CONCURRENCY} connections");
    rt.block_on(async {
        let providers = FakeProviders::start().await;
        let llm = oh_e2e::llm::FakeLlm::start().await;
        let base_profile = std::fs::read_to_string(oss_profile).unwrap();
        let hash: String = {
            use sha2::Digest as _;
            sha2::Sha256::digest(KEY.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
        };
        let stores = format!("{{ database_url = \"{db_url}\", master_key = \"bench-master-key-0123456789\" }}");
        let key = app_private_key().replace('\n', "\\n");
        let profile = work.join("plugins.integrations.toml");
        std::fs::write(
            &profile,
            format!(
                "{base_profile}[extensions.settings_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasSettingsStore\"\nconfig = {stores}\n\
                 [extensions.secrets_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasSecretsStore\"\nconfig = {stores}\n\
                 [extensions.conversation_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasConversationStore\"\nconfig = {stores}\n\
                 [extensions.user_auth]\nlibrary = \"saas_auth\"\nimplementation = \"SaasUserAuth\"\n\
                 config = {{ database_url = \"{db_url}\", rate_limit_per_second = 0, rate_limit_per_minute = 0, static_keys = [{{ user_id = \"dev\", sha256 = \"{hash}\" }}] }}\n\
                 [extensions.conversation_manager]\nlibrary = \"standalone_manager\"\nimplementation = \"StandaloneConversationManager\"\n\
                 config = {{ max_concurrent_conversations = 1000 }}\n\
                 [[extensions.routes]]\nlibrary = \"integrations\"\nimplementation = \"Integrations\"\n\
                 config = {{ database_url = \"{db_url}\", rate_limit_per_minute = 0, github = {{ enabled = \"1\", webhook_secret = \"{SECRET}\", \
                 api_url = \"{}\", app_id = \"{APP_ID}\", private_key = \"{key}\" }} }}\n",
                providers.base_url
            )
        )
        .unwrap();
        let (mut child, addr) = spawn_host(bin, &profile);
        let base = format!("http://{addr}");
        let client = reqwest::Client::new();
        let settings = serde_json::json!({ "llm_model": "openai/fake", "llm_base_url": llm.base_url, "llm_api_key": "sk-bench" });
        let r = client.post(format!("{base}/api/settings")).bearer_auth(KEY).json(&settings).send().await.unwrap();
        assert!(r.status().is_success(), "{}", r.status());

        // Deliveries of 10 KiB that mention nobody: verified, stored, acknowledged (then
        // processed as "ignored" by the workers, in the background).
        let filler = "x".repeat(10 * 1024 - 300);
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let url = format!("{base}/integration/github/events");
        let delivery = move |n: usize, text: &str| {
            serde_json::json!({
                "action": "created", "issue": { "number": n, "title": "bench", "body": filler },
                "comment": { "body": text }, "sender": { "login": "dev-gh", "type": "User" },
                "repository": { "full_name": "bench/repo" }, "installation": { "id": 1 },
            })
            .to_string()
        };
        let make = delivery.clone();
        let (u, nx) = (url.clone(), next.clone());
        load(move |c| {
            let n = nx.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let body = make(n, "a plain comment");
            let signature = format!("sha256={}", oh_e2e::hmac_sha256_hex(SECRET.as_bytes(), body.as_bytes()));
            c.post(&u)
                .header("x-github-event", "issue_comment")
                .header("x-github-delivery", format!("bench-{n}"))
                .header("x-hub-signature-256", signature)
                .header("content-type", "application/json")
                .body(body)
        })
        .await
        .row("10 KiB GitHub delivery: verify + store + 2xx");

        // The workers go through what was acknowledged (each an "ignored" delivery).
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(db_url).await.unwrap();
        let drain = Instant::now();
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries").fetch_one(&mut conn).await.unwrap();
        loop {
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE status IN ('pending', 'processing')")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "   inbox processed after the load           {:>8.0} deliveries/s   ({total} in {:.1} s, 2 workers)",
            total as f64 / drain.elapsed().as_secs_f64(),
            drain.elapsed().as_secs_f64()
        );

        // Delivery -> the agent's answer on the issue: a linked user's mentions, one at a
        // time. The link is written as the operators' route writes it.
        let mut delays = Vec::new();
        sqlx::query("INSERT INTO integration_links (provider, external_id, user_id) VALUES ('github', 'dev-gh', 'dev')")
            .execute(&mut conn)
            .await
            .unwrap();
        for i in 0..20 {
            let before = providers.comments().len();
            let body = delivery(100_000 + i, "@openhands hello");
            let signature = format!("sha256={}", oh_e2e::hmac_sha256_hex(SECRET.as_bytes(), body.as_bytes()));
            let started = Instant::now();
            let r = client
                .post(&url)
                .header("x-github-event", "issue_comment")
                .header("x-github-delivery", format!("bench-e2e-{i}"))
                .header("x-hub-signature-256", signature)
                .body(body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
            while providers.comments().len() == before {
                assert!(started.elapsed() < Duration::from_secs(60), "no answer posted");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            delays.push(started.elapsed());
        }
        delays.sort();
        println!(
            "   delivery -> answer posted on the issue   p50 {:>6.0} ms   max {:>6.0} ms   (20 mentions, fake LLM)",
            delays[delays.len() / 2].as_secs_f64() * 1e3,
            delays[delays.len() - 1].as_secs_f64() * 1e3
        );
        let _ = child.kill();
        let _ = child.wait();
    });
}

fn cookie(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix(&format!("{name}=")).map(|rest| rest.split(';').next().unwrap().to_owned()))
        .unwrap_or_else(|| panic!("no {name} cookie"))
}

/// Starts the binary; returns the child and its address once it listens.
/// `POST /api/conversations` with `body`; the new conversation's id.
async fn start_conversation(http: &reqwest::Client, base: &str, body: serde_json::Value) -> String {
    let r: serde_json::Value =
        http.post(format!("{base}/api/conversations")).json(&body).send().await.unwrap().json().await.unwrap();
    r["conversation_id"].as_str().expect("conversation created").to_owned()
}

fn spawn_host(bin: &Path, profile: &Path) -> (std::process::Child, String) {
    spawn_host_env(bin, profile, &[])
}

fn spawn_host_env(bin: &Path, profile: &Path, env: &[(&str, String)]) -> (std::process::Child, String) {
    let mut command = Command::new(bin);
    command.arg("--config").arg(profile).envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    spawn_listening(command)
}

/// Starts a process that prints `listening on http://<addr>` on stderr; returns it and the address.
fn spawn_listening(mut command: Command) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let bin = PathBuf::from(command.get_program());
    let mut child = command
        .env("RUST_LOG", "warn,oh_host::cli=info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("oh-host exited before listening").unwrap();
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

/// `VmRSS` and `VmHWM` (peak) of a process, in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

const CONVERSATIONS: usize = 200;
const TOKENS: usize = 50;

/// One run of section 4; returns the p99 of LLM chunk -> client `oh_event`, in ms.
fn conversations_load(bin: &Path, profile: &Path) -> f64 {
    use oh_e2e::{
        llm::{now_micros, FakeLlm, Reply},
        sio::SioClient,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let llm = FakeLlm::start().await;
        let (mut child, addr) = spawn_host(bin, profile);
        let base = format!("http://{addr}");
        let http = reqwest::Client::new();
        let settings = serde_json::json!({ "llm_model": "fake", "llm_base_url": llm.base_url, "llm_api_key": "sk-bench" });
        assert!(http.post(format!("{base}/api/settings")).json(&settings).send().await.unwrap().status().is_success());
        let (rss_idle, _) = rss_mib(child.id());

        let mut clients = Vec::new();
        for _ in 0..CONVERSATIONS {
            let id = start_conversation(&http, &base, serde_json::json!({})).await;
            let mut c = SioClient::connect(&base, &format!("conversation_id={id}&latest_event_id=-1"), &[]).await.unwrap();
            c.until(Duration::from_secs(30), |e| oh_e2e::sio::is_state(e, "awaiting_user_input")).await;
            clients.push(c);
        }
        let (rss_ready, _) = rss_mib(child.id());
        llm.push((0..CONVERSATIONS).map(|_| Reply::TimedTokens { n: TOKENS, gap: Duration::from_millis(20) }));

        let start = Instant::now();
        let mut tasks = Vec::new();
        for mut c in clients {
            tasks.push(tokio::spawn(async move {
                c.emit("oh_user_action", &serde_json::json!({ "action": "message", "args": { "content": "go" } }));
                let mut delays = Vec::new();
                let mut events = 0usize;
                loop {
                    let Some(e) = c.next(Duration::from_secs(60)).await else { break };
                    events += 1;
                    if let Some(t) = e["args"]["delta"].as_str().and_then(|d| d.trim().strip_prefix('t')) {
                        if let Ok(sent) = t.parse::<u128>() {
                            delays.push(now_micros().saturating_sub(sent) as u64);
                        }
                    }
                    if oh_e2e::sio::is_state(&e, "awaiting_user_input") {
                        break;
                    }
                }
                c.close();
                (events, delays)
            }));
        }
        let mut events = 0;
        let mut delays = Vec::new();
        for t in tasks {
            let (n, d) = t.await.unwrap();
            events += n;
            delays.extend(d);
        }
        let elapsed = start.elapsed();
        let (rss_after, peak) = rss_mib(child.id());
        let _ = child.kill();
        let _ = child.wait();
        delays.sort_unstable();
        let pct = |p: f64| delays.get(((delays.len() as f64 * p) as usize).min(delays.len().saturating_sub(1))).copied().unwrap_or(0);
        println!("\n4. {CONVERSATIONS} conversations at once, fake LLM streaming {TOKENS} tokens each (20 ms apart), socket.io");
        println!(
            "   {events} oh_events in {:.2} s: {:.0} events/s; {} deltas timed",
            elapsed.as_secs_f64(),
            events as f64 / elapsed.as_secs_f64(),
            delays.len()
        );
        println!("   LLM chunk -> client oh_event: p50 {} µs   p99 {} µs   max {} µs", pct(0.5), pct(0.99), delays.last().copied().unwrap_or(0));
        println!("   host RSS: {rss_idle:.1} MiB idle, {rss_ready:.1} MiB with {CONVERSATIONS} connected, {rss_after:.1} MiB after, peak {peak:.1} MiB");
        pct(0.99) as f64 / 1000.0
    })
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Times `calls` sequential awaits of `call()`; µs per call.
async fn per_call<F, Fut>(calls: u32, mut call: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..calls / 10 {
        call().await; // warm up
    }
    let start = Instant::now();
    for _ in 0..calls {
        call().await;
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(calls)
}

fn ffi_call_cost(profile: &Path, state: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let config = oh_host::config::load(profile).unwrap_or_else(|e| panic!("{e}"));
    let registry = oh_host::registry::Registry::build(&config, rt.handle().clone()).unwrap_or_else(|e| panic!("{e}"));

    // The same crate through dlopen, called directly (no deadline, counters or decoding), and
    // linked into this binary.
    let store_config = serde_json::json!({ "root": state }).to_string();
    let (dynamic_settings, dynamic) = raw_instances(&config.server.plugins_dir, &store_config);
    let static_lib = plugin_sdk::Registry::from_register(file_stores::register);
    let static_conversations = static_lib.build_conversation_store("FileConversationStore", &store_config).unwrap();
    let static_settings = static_lib.build_settings_store("FileSettingsStore", &store_config).unwrap();

    rt.block_on(async {
        // A settings document to read back (about 1 KB on disk, one sealed field).
        let settings = serde_json::json!({ "llm_model": "gpt-4o", "llm_api_key": "sk-bench", "language": "en" });
        registry.store_settings(CallContext::default(), &serde_json::from_value(settings).unwrap()).await.unwrap();

        let health_so = per_call(CALLS, || async {
            dynamic.health(CallContext::default()).await.unwrap();
        })
        .await;
        let health_rlib = per_call(CALLS, || async {
            static_conversations.health(CallContext::default()).await.unwrap();
        })
        .await;
        let load_so = per_call(CALLS / 4, || async {
            dynamic_settings.load(CallContext::default()).await.unwrap();
        })
        .await;
        let load_rlib = per_call(CALLS / 4, || async {
            static_settings.load(CallContext::default()).await.unwrap();
        })
        .await;
        let host_path = per_call(CALLS / 4, || async {
            registry.load_settings(CallContext::default()).await.unwrap();
        })
        .await;

        println!("\n1. one async plugin call, .so (dlopen) vs the same crate linked statically (rlib)");
        println!("   {:<44} {:>10} {:>10} {:>8}", "call", ".so µs", "rlib µs", "ratio");
        println!(
            "   {:<44} {:>10.2} {:>10.2} {:>8.2}",
            "conversation_store.health (no I/O)",
            health_so,
            health_rlib,
            health_so / health_rlib
        );
        println!(
            "   {:<44} {:>10.2} {:>10.2} {:>8.2}",
            "settings_store.load (file read + decrypt)",
            load_so,
            load_rlib,
            load_so / load_rlib
        );
        println!(
            "   {:<44} {:>10.2}   (deadline, catch_unwind, counters, JSON decode)",
            "same load through the host's Registry", host_path
        );
    });
    rt.block_on(registry.shutdown(Duration::from_secs(2)));
}

/// A settings store and a conversation store of `libfile_stores.so`, built with its factories
/// directly (the loader's checks, then no registry around them).
fn raw_instances(
    plugins_dir: &Path,
    store_config: &str,
) -> (plugin_api::SettingsStoreObject, plugin_api::ConversationStoreObject) {
    use plugin_api::abi_stable::{sabi_trait::TD_Opaque, std_types::RStr};
    struct NoServices;
    impl plugin_api::HostServices for NoServices {
        fn call(
            &self,
            _: CallContext,
            _: plugin_api::abi_stable::std_types::RString,
            _: plugin_api::abi_stable::std_types::RString,
            _: plugin_api::abi_stable::std_types::RString,
        ) -> plugin_api::FfiFuture<plugin_api::PResult<plugin_api::abi_stable::std_types::RString>> {
            use plugin_api::async_ffi::FutureExt as _;
            async { plugin_api::PResult::RErr(plugin_api::PluginError::unavailable("benchmark")) }.into_ffi()
        }
        fn app_mode(&self) -> plugin_api::abi_stable::std_types::RString {
            "oss".into()
        }
        fn state_dir(&self) -> plugin_api::abi_stable::std_types::RString {
            "".into()
        }
    }
    let services = || plugin_api::HostServices_TO::from_value(NoServices, TD_Opaque);
    let lib = oh_host::loader::load(plugins_dir, "file_stores", None).unwrap_or_else(|e| panic!("{e}"));
    oh_host::loader::init(&lib, "{}").unwrap_or_else(|e| panic!("{e}"));
    let cfg = RStr::from_str(store_config);
    let settings = (lib.module.new_settings_store())(RStr::from_str("FileSettingsStore"), cfg, services()).unwrap();
    let conversations =
        (lib.module.new_conversation_store())(RStr::from_str("FileConversationStore"), cfg, services()).unwrap();
    (settings, conversations)
}

/// Drives `requests` (a fresh request per call) from `HTTP_CONCURRENCY` connections for
/// `HTTP_DURATION`; every answer must be 2xx. Returns (count, elapsed, sorted latencies).
async fn load(make: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder + Send + Sync + Clone + 'static) -> Stats {
    let client = reqwest::Client::builder().pool_max_idle_per_host(HTTP_CONCURRENCY).build().unwrap();
    let start = Instant::now();
    let deadline = start + HTTP_DURATION;
    let mut tasks = Vec::new();
    for _ in 0..HTTP_CONCURRENCY {
        let (client, make) = (client.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline && lat.len() < HTTP_MAX_REQUESTS / HTTP_CONCURRENCY {
                let t = Instant::now();
                let r = make(&client).send().await.expect("request");
                assert!(r.status().is_success(), "{}", r.status());
                let _ = r.bytes().await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    Stats { elapsed: start.elapsed(), latencies: all }
}

struct Stats {
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Stats {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The `p` quantile of the latencies, in µs.
    fn pct_us(&self, p: f64) -> f64 {
        let l = &self.latencies;
        l[((l.len() as f64 * p) as usize).min(l.len() - 1)].as_secs_f64() * 1e6
    }

    fn p99_ms(&self) -> f64 {
        self.pct_us(0.99) / 1e3
    }

    fn tap_row(self, label: &str) -> Self {
        self.row(label);
        self
    }

    fn row(&self, label: &str) {
        println!(
            "   {label:<38} {:>8.0} req/s   p50 {:>6.0} µs   p99 {:>6.0} µs   ({} requests)",
            self.rate(),
            self.pct_us(0.5),
            self.pct_us(0.99),
            self.latencies.len()
        );
    }
}

fn http_load(bin: &Path, profiles: &[(&str, PathBuf)]) {
    println!(
        "\n2. /api/settings on the real binary, 127.0.0.1, {HTTP_CONCURRENCY} connections, {:.0} s each",
        HTTP_DURATION.as_secs_f64()
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    // The ceilings: a bare axum handler (the framework), and the host's own /alive.
    let mut bare = Command::new(std::env::current_exe().unwrap());
    bare.arg("--bare-axum");
    let (mut child, addr) = spawn_listening(bare);
    let url = format!("http://{addr}/alive");
    let bare_rate = rt.block_on(load(move |c| c.get(&url))).tap_row("GET  /alive, bare axum handler").rate();
    let _ = child.kill();
    let _ = child.wait();
    let mut alive_rate = 0.0;
    let mut get_rates = Vec::new();
    for (label, profile) in profiles {
        let (mut child, addr) = spawn_host(bin, profile);
        let url = format!("http://{addr}/api/settings");
        rt.block_on(async {
            if alive_rate == 0.0 {
                let alive = format!("http://{addr}/alive");
                alive_rate = load(move |c| c.get(&alive)).await.tap_row("GET  /alive, oh-host").rate();
            }
            let body = serde_json::json!({ "llm_model": "gpt-4o", "llm_api_key": "sk-x", "language": "en" });
            let ok = reqwest::Client::new().post(&url).json(&body).send().await.unwrap();
            assert!(ok.status().is_success(), "POST /api/settings failed");
            let get_url = url.clone();
            let get = load(move |c| c.get(&get_url)).await.tap_row(&format!("GET  /api/settings, {label}"));
            get_rates.push(get.rate());
            let post_url = url.clone();
            load(move |c| c.post(&post_url).json(&body)).await.row(&format!("POST /api/settings, {label}"));
        });
        let _ = child.kill();
        let _ = child.wait();
    }
    let share = get_rates[0] / alive_rate * 100.0;
    target("GET /api/settings, file stores, share of /alive", format!("{share:.0}%"), ">= 50%", share >= 50.0);
    if let Some(pg) = get_rates.get(1) {
        target("GET /api/settings, PostgreSQL stores", format!("{pg:.0} req/s"), ">= 10,000 req/s", *pg >= 10_000.0);
    }
    println!("   (oh-host /alive is {:.0}% of the bare axum handler)", alive_rate / bare_rate * 100.0);
}

/// Conversation search with 1,000 then 10,000 conversations of one user, a page of 20.
fn search_load(bin: &Path, profiles: &[(&str, PathBuf, PathBuf)], pg_url: &str) {
    println!("\n3. GET /api/conversations?limit=20 with 1,000 and 10,000 conversations of one user");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    for (label, profile, state) in profiles {
        let mut made = 0;
        for n in [1_000i32, 10_000] {
            let (mut child, addr) = spawn_host(bin, profile);
            let (rss_idle, _) = rss_mib(child.id());
            rt.block_on(async {
                if *label == "postgres" {
                    use sqlx::Connection as _;
                    let mut conn = sqlx::PgConnection::connect(pg_url).await.unwrap();
                    sqlx::query(
                        "INSERT INTO conversation_metadata (conversation_id, user_id, created_at, metadata) \
                         SELECT 'c' || i, '', now() - i * interval '1 second', \
                                json_build_object('conversation_id', 'c' || i, 'created_at', \
                                  to_char((now() - i * interval '1 second') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
                                  'title', 'bench ' || i) \
                         FROM generate_series($1, $2) i",
                    )
                    .bind(made)
                    .bind(n - 1)
                    .execute(&mut conn)
                    .await
                    .unwrap();
                } else {
                    let now = chrono::Utc::now();
                    for i in made..n {
                        let dir = state.join("sessions").join(format!("c{i}"));
                        std::fs::create_dir_all(&dir).unwrap();
                        let created = (now - chrono::Duration::seconds(i.into()))
                            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                        let meta = serde_json::json!({ "conversation_id": format!("c{i}"), "created_at": created, "title": format!("bench {i}") });
                        std::fs::write(dir.join("metadata.json"), meta.to_string()).unwrap();
                    }
                }
                made = n;
                let first = format!("http://{addr}/api/conversations?limit=20");
                let stats = load(move |c| c.get(&first)).await.tap_row(&format!("first page, {n} conversations, {label}"));
                let (rss, _) = rss_mib(child.id());
                println!("   host RSS: {rss_idle:.1} MiB idle, {rss:.1} MiB after searching {n} conversations");
                if *label != "postgres" {
                    let (rate, p99) = (stats.rate(), stats.p99_ms());
                    target(
                        &format!("search, file stores, {n} conversations"),
                        format!("{rate:.0} req/s, p99 {p99:.1} ms"),
                        ">= 5,000 req/s, p99 <= 10 ms",
                        rate >= 5_000.0 && p99 <= 10.0,
                    );
                    if n == 10_000 {
                        target("RSS idle", format!("{rss_idle:.1} MiB"), "<= 15 MiB", rss_idle <= 15.0);
                        target("RSS with 10,000 conversations searched", format!("{rss:.1} MiB"), "<= 30 MiB", rss <= 30.0);
                    }
                }
            });
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
