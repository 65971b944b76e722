//! Section 6: the clustered manager (three nodes, PostgreSQL and Redis).

use crate::{
    common::*,
    conversations::{percentile, stream, time_answer, Host},
};
use std::{
    path::Path,
    time::{Duration, Instant},
};

pub(crate) const CLUSTER_NODES: usize = 3;

/// As the cross-node target is stated: 50 streaming conversations over 3 nodes (with a
/// client on the owner and one on another node each, 100 sockets).
pub(crate) const CLUSTER_CONVERSATIONS: usize = 50;

pub(crate) const KILLS: usize = 10;

pub(crate) const CLUSTER_LEASE_MS: u64 = 1500;

/// Section 6: the clustered manager.
pub(crate) fn cluster_load(bin: &Path, work: &Path, plugins: &Path) {
    use oh_e2e::{
        llm::{FakeLlm, Reply},
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
                "[server]\nbind = \"127.0.0.1:0\"\nadmin_bind = \"off\"\nmax_conversations_per_user = 0\nmax_connections_per_client = 0\nplugins_dir = \"{}\"\nstate_dir = \"{}\"\n\
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
            (0..CLUSTER_NODES).map(|i| spawn_node(bin, &profile(i))).collect();
        let http = reqwest::Client::new();
        let base = |n: &(std::process::Child, String)| format!("http://{}", n.1);
        crate::conversations::save_settings(&http, &base(&nodes[0]), &llm).await;

        // Three rounds (each with new conversations), the target on the median: one round's
        // extra p99 moves between 1.5 and 5.5 ms with what else the two cores run.
        let bases: Vec<String> = nodes.iter().map(base).collect();
        println!("\n6. {CLUSTER_NODES} clustered nodes, {CLUSTER_CONVERSATIONS} conversations (PostgreSQL stores, Redis), {TOKENS} tokens each 20 ms apart");
        let mut extras = Vec::new();
        let lost_before = leases_lost();
        for round in 0..3 {
            let clients = connect_pairs(&http, &bases).await;
            let (c0, i0, o0) = redis_counters(&redis).await;
            let idle_window = Duration::from_secs(5);
            if round == 0 {
                // Idle: heartbeats, renewals and relay reads only.
                tokio::time::sleep(idle_window).await;
            }
            let (c1, i1, o1) = redis_counters(&redis).await;
            llm.push((0..CLUSTER_CONVERSATIONS).map(|_| Reply::TimedTokens { n: TOKENS, gap: Duration::from_millis(20) }));
            let start = Instant::now();
            let (mut same, mut cross) = stream_pairs(clients).await;
            let streamed = start.elapsed();
            let (c2, i2, o2) = redis_counters(&redis).await;
            same.sort_unstable();
            cross.sort_unstable();
            println!(
                "   round {}: LLM chunk -> client oh_event, same node: p50 {} µs p99 {} µs ({} deltas); cross node: p50 {} µs p99 {} µs ({} deltas); extra p99 {} µs",
                round + 1,
                percentile(&same, 0.5), percentile(&same, 0.99), same.len(),
                percentile(&cross, 0.5), percentile(&cross, 0.99), cross.len(),
                percentile(&cross, 0.99) as i64 - percentile(&same, 0.99) as i64
            );
            extras.push((percentile(&cross, 0.99) as f64 - percentile(&same, 0.99) as f64) / 1000.0);
            if round == 0 {
                let per = |d: u64, secs: f64| d as f64 / CLUSTER_CONVERSATIONS as f64 / secs;
                let idle = idle_window.as_secs_f64();
                let busy = streamed.as_secs_f64();
                println!(
                    "   Redis per conversation per second: idle {:.2} commands, {:.0} B in, {:.0} B out; streaming {:.1} commands, {:.0} B in, {:.0} B out",
                    per(c1 - c0, idle), per(i1 - i0, idle), per(o1 - o0, idle),
                    per(c2 - c1, busy), per(i2 - i1, busy), per(o2 - o1, busy)
                );
            }
        }
        extras.sort_by(f64::total_cmp);
        target(
            "cross-node extra p99, median of 3 rounds",
            format!("{:.1} ms (rounds: {})", extras[1], extras.iter().map(|e| format!("{e:.1}")).collect::<Vec<_>>().join(", ")),
            "<= 2 ms",
            extras[1] <= 2.0,
        );
        let lost = leases_lost() - lost_before;
        target("leases a live node lost, the 3 rounds", lost.to_string(), "0", lost == 0);

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
            let killed_at = chrono::Utc::now();
            let pid = nodes[victim].0.id();
            let _ = nodes[victim].0.kill();
            let _ = nodes[victim].0.wait();
            let loading = c.until(Duration::from_secs(30), |e| is_state(e, "loading") && e["id"].as_u64().unwrap_or(0) > 2).await;
            let _ = loading;
            times.push(killed.elapsed());
            if std::env::var_os("OH_BENCH_LOGS").is_some() {
                println!(
                    "   kill {k} at {killed_at}: node pid {pid}, conversation {id}, answered again after {} ms",
                    killed.elapsed().as_millis()
                );
            }
            // The survivor answers the interrupted message again: let it finish before the
            // next round queues its long reply, or it takes that reply.
            c.until(Duration::from_secs(30), |e| is_state(e, "awaiting_user_input") && e["id"].as_u64().unwrap_or(0) > 4)
                .await;
            c.close();
            nodes[victim] = spawn_node(bin, &profile(victim));
        }
        times.sort();
        println!(
            "   failover over {KILLS} kill -9 (lease {CLUSTER_LEASE_MS} ms): min {} ms   median {} ms   max {} ms",
            times[0].as_millis(),
            times[KILLS / 2].as_millis(),
            times[KILLS - 1].as_millis()
        );
        let (median, worst) = (times[KILLS / 2], times[KILLS - 1]);
        target(
            "failover after kill -9, median",
            format!("{} ms", median.as_millis()),
            "<= 1,000 ms",
            median <= Duration::from_secs(1),
        );
        target(
            "failover after kill -9, worst",
            format!("{} ms", worst.as_millis()),
            "<= 1,500 ms",
            worst <= Duration::from_millis(1500),
        );

        // And 1,000 streaming at once over the three nodes, each conversation's client on
        // its owner: the one-host figures of section 4, spread.
        let hosts: Vec<Host> = nodes.iter().map(|n| Host { base: base(n), pid: n.0.id() }).collect();
        let lost_before = leases_lost();
        let many = stream(&http, &hosts, &llm, 1_000, &format!("6. 1000 conversations at once over {CLUSTER_NODES} nodes")).await;
        // The log lines reach the bench's reader threads a moment after the stream ends.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let false_failovers = leases_lost() - lost_before;
        target(
            &format!("LLM chunk -> oh_event p99, 1,000 streaming over {CLUSTER_NODES} nodes"),
            format!("{:.1} ms", many.p99_ms),
            "<= 5 ms",
            many.p99_ms <= 5.0,
        );
        target(
            &format!("largest node's RSS peak, 1,000 streaming over {CLUSTER_NODES} nodes"),
            format!("{:.1} MiB", many.peak_mib),
            "<= 256 MiB",
            many.peak_mib <= 256.0,
        );
        target(&format!("deltas lost, 1,000 streaming over {CLUSTER_NODES} nodes"), many.lost.to_string(), "0", many.lost == 0);
        target(
            &format!("leases a live node lost, 1,000 streaming over {CLUSTER_NODES} nodes"),
            false_failovers.to_string(),
            "0",
            false_failovers == 0,
        );

        // A node holding a third of them dies: how long until its peers run them all.
        let killed = Instant::now();
        let _ = nodes[0].0.kill();
        let _ = nodes[0].0.wait();
        let mass_failover = wait_for_takeovers(killed).await;
        match (mass_failover.first(), mass_failover.last()) {
            (Some(first), Some(last)) => println!(
                "   kill -9 of a node holding a third of them: {} conversations resumed elsewhere, the first after {} ms, half after {} ms, the last after {} ms",
                mass_failover.len(),
                (*first - killed).as_millis(),
                (mass_failover[mass_failover.len() / 2] - killed).as_millis(),
                (*last - killed).as_millis()
            ),
            _ => println!("   kill -9 of a node holding a third of them: nothing resumed within 30 s"),
        }
        for (mut child, _) in nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    });
}

/// A node whose log keeps plugins' info lines: the bench times takeovers by them.
fn spawn_node(bin: &Path, profile: &Path) -> (std::process::Child, String) {
    spawn_host_env(bin, profile, &[("RUST_LOG", PLUGIN_INFO.to_owned())])
}

/// The takeovers since `killed`, once none came for two seconds (or after 30 s).
async fn wait_for_takeovers(killed: Instant) -> Vec<Instant> {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let resumed = resumed_since(killed);
        let quiet = resumed.last().is_some_and(|last| last.elapsed() > Duration::from_secs(2));
        if quiet || killed.elapsed() > Duration::from_secs(30) {
            return resumed;
        }
    }
}

/// 50 new conversations, conversation i owned by node i % 3, each with a client on its owner
/// and one on the next node: (owner-side?, client) pairs.
async fn connect_pairs(http: &reqwest::Client, bases: &[String]) -> Vec<(bool, oh_e2e::sio::SioClient)> {
    use oh_e2e::sio::{is_state, SioClient};
    let mut clients = Vec::new();
    for i in 0..CLUSTER_CONVERSATIONS {
        let owner = i % CLUSTER_NODES;
        let id = start_conversation(http, &bases[owner], serde_json::json!({})).await;
        for (node, cross) in [(owner, false), ((owner + 1) % CLUSTER_NODES, true)] {
            let mut c = SioClient::connect(&bases[node], &format!("conversation_id={id}&latest_event_id=-1"), &[])
                .await
                .unwrap();
            c.until(Duration::from_secs(60), |e| is_state(e, "awaiting_user_input")).await;
            clients.push((cross, c));
        }
    }
    clients
}

/// Sends one message per conversation (from its owner-side client) and times every delta
/// each client gets until the answer ends: (same-node delays, cross-node delays), µs.
async fn stream_pairs(clients: Vec<(bool, oh_e2e::sio::SioClient)>) -> (Vec<u64>, Vec<u64>) {
    let tasks: Vec<_> = clients.into_iter().map(|(cross, c)| (cross, tokio::spawn(time_answer(c, !cross)))).collect();
    let (mut same, mut cross) = (Vec::new(), Vec::new());
    for (is_cross, task) in tasks {
        let delays = task.await.unwrap().1.into_iter().map(|t| t.1);
        if is_cross {
            cross.extend(delays)
        } else {
            same.extend(delays)
        }
    }
    (same, cross)
}
