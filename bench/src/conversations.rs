//! Section 4: many streaming conversations at once through socket.io, on one host; and the
//! same stream over several hosts (section 6 uses it for the cluster).

use crate::common::*;
use oh_e2e::llm::FakeLlm;
use std::{
    path::Path,
    time::{Duration, Instant},
};

pub(crate) const CONVERSATIONS: usize = 200;

/// What one streaming run measured.
pub(crate) struct Streamed {
    /// LLM chunk -> client `oh_event`, p99, ms.
    pub(crate) p99_ms: f64,
    /// The largest peak RSS among the hosts, MiB.
    pub(crate) peak_mib: f64,
    /// Deltas the LLM sent that no client got.
    pub(crate) lost: usize,
}

/// One run of section 4 with `conversations` streaming at once on one host.
pub(crate) fn conversations_load(bin: &Path, profile: &Path, conversations: usize) -> Streamed {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let llm = FakeLlm::start().await;
        let (mut child, addr) = spawn_host(bin, profile);
        let http = reqwest::Client::new();
        let hosts = [Host { base: format!("http://{addr}"), pid: child.id() }];
        save_settings(&http, &hosts[0].base, &llm).await;
        let streamed =
            stream(&http, &hosts, &llm, conversations, &format!("4. {conversations} conversations at once")).await;
        let _ = child.kill();
        let _ = child.wait();
        streamed
    })
}

/// A running host: where it listens and its process.
pub(crate) struct Host {
    pub(crate) base: String,
    pub(crate) pid: u32,
}

/// Points the user's settings at the fake LLM.
pub(crate) async fn save_settings(http: &reqwest::Client, base: &str, llm: &FakeLlm) {
    let settings = serde_json::json!({ "llm_model": "fake", "llm_base_url": llm.base_url, "llm_api_key": "sk-bench" });
    assert!(http.post(format!("{base}/api/settings")).json(&settings).send().await.unwrap().status().is_success());
}

/// Starts `conversations` conversations, conversation i on host i % hosts with one socket.io
/// client there, then has the fake LLM stream [`TOKENS`] deltas 20 ms apart to each at once;
/// prints what the clients saw (titled `title`) and what it cost the hosts.
pub(crate) async fn stream(
    http: &reqwest::Client,
    hosts: &[Host],
    llm: &FakeLlm,
    conversations: usize,
    title: &str,
) -> Streamed {
    use oh_e2e::{llm::Reply, sio::SioClient};
    let rss = |i: usize| rss_mib(hosts[i].pid);
    let idle: Vec<f64> = (0..hosts.len()).map(|i| rss(i).0).collect();
    let mut clients = Vec::new();
    for i in 0..conversations {
        let base = &hosts[i % hosts.len()].base;
        let id = start_conversation(http, base, serde_json::json!({})).await;
        let mut c = SioClient::connect(base, &format!("conversation_id={id}&latest_event_id=-1"), &[]).await.unwrap();
        c.until(Duration::from_secs(30), |e| oh_e2e::sio::is_state(e, "awaiting_user_input")).await;
        clients.push(c);
    }
    let ready: Vec<f64> = (0..hosts.len()).map(|i| rss(i).0).collect();
    llm.push((0..conversations).map(|_| Reply::TimedTokens { n: TOKENS, gap: Duration::from_millis(20) }));

    // What the stream costs in CPU, the hosts' and this process's (the clients and the fake
    // LLM): when the two add up to every core, the delays below are the machine's queue, not
    // one component's.
    let hosts_cpu = || hosts.iter().map(|h| cpu_secs(h.pid)).sum::<f64>();
    let (host_cpu, bench_cpu, machine) = (hosts_cpu(), cpu_secs(std::process::id()), machine_busy_secs());
    let start = Instant::now();
    let tasks: Vec<_> = clients.into_iter().map(|c| tokio::spawn(time_answer(c, true))).collect();
    let mut events = 0;
    let mut timed = Vec::new();
    for t in tasks {
        let (n, d) = t.await.unwrap();
        events += n;
        timed.extend(d);
    }
    let elapsed = start.elapsed();
    let (host_cpu, bench_cpu, machine) =
        (hosts_cpu() - host_cpu, cpu_secs(std::process::id()) - bench_cpu, machine_busy_secs() - machine);
    let mut delays: Vec<u64> = timed.iter().map(|t| t.1).collect();
    delays.sort_unstable();
    let pct = |p: f64| percentile(&delays, p);
    let hosts_word = if hosts.len() == 1 { "host".to_owned() } else { format!("{} hosts", hosts.len()) };
    println!("\n{title}, fake LLM streaming {TOKENS} tokens each (20 ms apart), socket.io");
    println!(
        "   {events} oh_events in {:.2} s: {:.0} events/s; {} deltas timed",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64(),
        delays.len()
    );
    println!(
        "   LLM chunk -> client oh_event: p50 {} µs   p99 {} µs   max {} µs",
        pct(0.5),
        pct(0.99),
        delays.last().copied().unwrap_or(0)
    );
    let wall = elapsed.as_secs_f64();
    println!(
        "   CPU while streaming: {hosts_word} {host_cpu:.2} s ({:.0} µs per oh_event), bench clients + fake LLM {bench_cpu:.2} s; {:.0}% of {} cores; the whole machine {:.0}% busy",
        host_cpu / events.max(1) as f64 * 1e6,
        (host_cpu + bench_cpu) / (wall * cores() as f64) * 100.0,
        cores(),
        machine / (wall * cores() as f64) * 100.0
    );
    // What the offered load needs at this cost: when it is more than the machine has, the
    // delays are a queue that no latency work removes.
    let offered = conversations as f64 * 1000.0 / 20.0;
    let per_event = host_cpu / events.max(1) as f64;
    println!(
        "   offered: {offered:.0} deltas/s; at {:.0} µs each, {:.1} cores for the {hosts_word} alone (this machine has {})",
        per_event * 1e6,
        offered * per_event,
        cores()
    );
    let mut peak_mib: f64 = 0.0;
    for (i, host) in hosts.iter().enumerate() {
        let (after, peak) = rss_mib(host.pid);
        peak_mib = peak_mib.max(peak);
        let per = conversations / hosts.len() + usize::from(i < conversations % hosts.len());
        let which = if hosts.len() == 1 { String::new() } else { format!(" {i}") };
        println!(
            "   host{which} RSS: {:.1} MiB idle, {:.1} MiB with {per} connected, {after:.1} MiB after, peak {peak:.1} MiB",
            idle[i], ready[i]
        );
    }
    if std::env::var_os("OH_BENCH_WINDOWS").is_some() {
        windows(&timed);
    }
    Streamed {
        p99_ms: pct(0.99) as f64 / 1000.0,
        peak_mib,
        lost: (conversations * TOKENS).saturating_sub(delays.len()),
    }
}

/// The `p` quantile of sorted `values` (0 when empty).
pub(crate) fn percentile(values: &[u64], p: f64) -> u64 {
    values.get(((values.len() as f64 * p) as usize).min(values.len().saturating_sub(1))).copied().unwrap_or(0)
}

/// `OH_BENCH_WINDOWS=1`: the delays by 250 ms window of when the LLM sent them, to tell a
/// p99 made at the turns' edges (their events stored at once) from one made all along.
fn windows(timed: &[(u128, u64)]) {
    let Some(first) = timed.iter().map(|t| t.0).min() else { return };
    let mut by_window: std::collections::BTreeMap<u128, Vec<u64>> = Default::default();
    for (sent, delay) in timed {
        by_window.entry((sent - first) / 250_000).or_default().push(*delay);
    }
    for (window, mut delays) in by_window {
        delays.sort_unstable();
        println!(
            "   sent at +{:>5} ms: {:>6} deltas, p50 {:>7} µs, p99 {:>7} µs",
            window * 250,
            delays.len(),
            percentile(&delays, 0.5),
            percentile(&delays, 0.99)
        );
    }
}

/// Sends the client's conversation a message when `send`, then times every delta the client
/// gets until the answer ends (`awaiting_user_input` after `running`): the events it got and,
/// per delta, (when the LLM sent it, µs since the epoch; how long it took to arrive).
pub(crate) async fn time_answer(mut c: oh_e2e::sio::SioClient, send: bool) -> (usize, Vec<(u128, u64)>) {
    use oh_e2e::{llm::now_micros, sio::is_state};
    if send {
        c.emit("oh_user_action", &serde_json::json!({ "action": "message", "args": { "content": "go" } }));
    }
    let mut timed = Vec::new();
    let mut events = 0usize;
    let mut seen_running = false;
    loop {
        let Some(e) = c.next(Duration::from_secs(60)).await else { break };
        events += 1;
        if let Some(t) = e["args"]["delta"].as_str().and_then(|d| d.trim().strip_prefix('t')) {
            if let Ok(sent) = t.parse::<u128>() {
                timed.push((sent, now_micros().saturating_sub(sent) as u64));
            }
        }
        seen_running |= is_state(&e, "running");
        if seen_running && is_state(&e, "awaiting_user_input") {
            break;
        }
    }
    c.close();
    (events, timed)
}
