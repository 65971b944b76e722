//! Section 4: many streaming conversations at once through socket.io.

use crate::common::*;
use std::{
    path::Path,
    time::{Duration, Instant},
};

pub(crate) const CONVERSATIONS: usize = 200;

/// What one run of section 4 measured.
pub(crate) struct Streamed {
    /// LLM chunk -> client `oh_event`, p99, ms.
    pub(crate) p99_ms: f64,
    /// The host's peak RSS, MiB.
    pub(crate) peak_mib: f64,
    /// Deltas the LLM sent that no client got.
    pub(crate) lost: usize,
}

/// One run of section 4 with `conversations` streaming at once.
pub(crate) fn conversations_load(bin: &Path, profile: &Path, conversations: usize) -> Streamed {
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
        for _ in 0..conversations {
            let id = start_conversation(&http, &base, serde_json::json!({})).await;
            let mut c = SioClient::connect(&base, &format!("conversation_id={id}&latest_event_id=-1"), &[]).await.unwrap();
            c.until(Duration::from_secs(30), |e| oh_e2e::sio::is_state(e, "awaiting_user_input")).await;
            clients.push(c);
        }
        let (rss_ready, _) = rss_mib(child.id());
        llm.push((0..conversations).map(|_| Reply::TimedTokens { n: TOKENS, gap: Duration::from_millis(20) }));

        // What the stream costs in CPU, the host's and this process's (the clients and the
        // fake LLM): when the two add up to every core, the delays below are the machine's
        // queue, not one component's.
        let (host_cpu, bench_cpu) = (cpu_secs(child.id()), cpu_secs(std::process::id()));
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
        let (host_cpu, bench_cpu) =
            (cpu_secs(child.id()) - host_cpu, cpu_secs(std::process::id()) - bench_cpu);
        let (rss_after, peak) = rss_mib(child.id());
        let _ = child.kill();
        let _ = child.wait();
        delays.sort_unstable();
        let pct = |p: f64| delays.get(((delays.len() as f64 * p) as usize).min(delays.len().saturating_sub(1))).copied().unwrap_or(0);
        println!("\n4. {conversations} conversations at once, fake LLM streaming {TOKENS} tokens each (20 ms apart), socket.io");
        println!(
            "   {events} oh_events in {:.2} s: {:.0} events/s; {} deltas timed",
            elapsed.as_secs_f64(),
            events as f64 / elapsed.as_secs_f64(),
            delays.len()
        );
        println!("   LLM chunk -> client oh_event: p50 {} µs   p99 {} µs   max {} µs", pct(0.5), pct(0.99), delays.last().copied().unwrap_or(0));
        let wall = elapsed.as_secs_f64();
        println!(
            "   CPU while streaming: host {host_cpu:.2} s ({:.0} µs per oh_event), bench clients + fake LLM {bench_cpu:.2} s; {:.0}% of {} cores",
            host_cpu / events.max(1) as f64 * 1e6,
            (host_cpu + bench_cpu) / (wall * cores() as f64) * 100.0,
            cores()
        );
        println!("   host RSS: {rss_idle:.1} MiB idle, {rss_ready:.1} MiB with {conversations} connected, {rss_after:.1} MiB after, peak {peak:.1} MiB");
        Streamed {
            p99_ms: pct(0.99) as f64 / 1000.0,
            peak_mib: peak,
            lost: (conversations * TOKENS).saturating_sub(delays.len()),
        }
    })
}
