//! Section 10: the agent's tools, with each runtime.

use crate::common::*;
use std::{
    path::Path,
    time::{Duration, Instant},
};

/// An event's `timestamp`, in µs since the Unix epoch (0 when it has none).
fn stamp(e: &serde_json::Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap_or(""))
        .map(|t| t.timestamp_micros())
        .unwrap_or(0)
}

/// A conversation's first 100 stored events.
async fn stored_events(http: &reqwest::Client, base: &str, id: &str) -> Vec<serde_json::Value> {
    let page: serde_json::Value =
        http.get(format!("{base}/api/conversations/{id}/events?limit=100")).send().await.unwrap().json().await.unwrap();
    page["events"].as_array().cloned().unwrap_or_default()
}

/// Section 10: the agent's tools, with each runtime.
pub(crate) fn tools_load(bin: &Path, work: &Path, oss_profile: &Path) {
    for runtime in ["local", "bubblewrap"] {
        tools_load_with(bin, work, oss_profile, runtime);
    }
}

pub(crate) fn tools_load_with(bin: &Path, work: &Path, oss_profile: &Path, runtime: &str) {
    use oh_e2e::llm::FakeLlm;
    const CONCURRENT: usize = 20;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    println!("\n10. the agent's tools, runtime = {runtime}");
    let implementation = if runtime == "local" { "LocalRuntime" } else { "BubblewrapRuntime" };
    let base_profile = std::fs::read_to_string(oss_profile).unwrap();
    let profile = work.join("plugins.tools.toml");
    std::fs::write(
        &profile,
        format!(
            "{base_profile}[extensions.conversation_manager]\nlibrary = \"standalone_manager\"\nimplementation = \"StandaloneConversationManager\"\n\
             config = {{ max_concurrent_conversations = 100 }}\n\
             [extensions.runtime]\nlibrary = \"sandbox_runtime\"\nimplementation = \"{implementation}\"\n"
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
                        let events = stored_events(&http, &base, &id).await;
                        let action = events.iter().find(|e| e["action"] == "run");
                        let observation = events.iter().find(|e| e["observation"] == "run");
                        if let (Some(a), Some(o)) = (action, observation) {
                            pairs.push((created, stamp(a), stamp(o)));
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

/// Section 10, last part: a command's start to its observation stored, with OpenHands' action
/// execution server (`OpenHandsRuntime`, spawned from the venv `make openhands-env` caches)
/// next to `BubblewrapRuntime`, in one conversation each (30 commands one after another), and
/// how long each takes to give a new conversation its first observation.
pub(crate) fn tools_openhands(bin: &Path, work: &Path, oss_profile: &Path) {
    use oh_e2e::llm::{FakeLlm, Reply};
    const COMMANDS: usize = 30;
    println!("\n10. a command's start -> observation stored: OpenHands' action server next to bubblewrap ({COMMANDS} commands in one conversation)");
    let venv = std::env::var_os("OPENHANDS_VENV").map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/oh-host/openhands-0.62.0")
    });
    if !venv.join(".oh-complete").exists() {
        println!("   skipped: no OpenHands environment at {} (make openhands-env)", venv.display());
        return;
    }
    let spawn = oh_e2e::openhands::server_argv("{port}", "{workspace}");
    let spawn = format!("[{}]", spawn.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", "));
    let runtimes = [
        ("BubblewrapRuntime", "library = \"sandbox_runtime\"\nimplementation = \"BubblewrapRuntime\"\n".to_owned()),
        (
            "OpenHandsRuntime",
            format!("library = \"openhands_runtime\"\nimplementation = \"OpenHandsRuntime\"\ntimeout_ms = 60000\nconfig = {{ spawn = {spawn} }}\n"),
        ),
    ];
    let base_profile = std::fs::read_to_string(oss_profile).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    for (name, entry) in runtimes {
        let profile = work.join("plugins.openhands.toml");
        std::fs::write(
            &profile,
            format!(
                "{base_profile}[extensions.conversation_manager]\nlibrary = \"standalone_manager\"\nimplementation = \"StandaloneConversationManager\"\n[extensions.runtime]\n{entry}"
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
            let mut replies: Vec<Reply> = (0..COMMANDS)
                .map(|i| Reply::Tools(vec![("execute_bash".into(), serde_json::json!({ "command": format!("echo step-{i}") }))]))
                .collect();
            replies.push(Reply::Tools(vec![("finish".into(), serde_json::json!({ "message": "done" }))]));
            llm.push(replies);
            let created = Instant::now();
            let id = start_conversation(&http, &base, serde_json::json!({ "initial_user_msg": "run them" })).await;
            let mut first = None;
            let events = loop {
                let events = stored_events(&http, &base, &id).await;
                let observed = events.iter().filter(|e| e["observation"] == "run").count();
                if observed > 0 && first.is_none() {
                    first = Some(created.elapsed());
                }
                if observed == COMMANDS {
                    break events;
                }
                assert!(created.elapsed() < Duration::from_secs(300), "{name}: {observed} of {COMMANDS} commands in 300 s");
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let actions: Vec<i64> = events.iter().filter(|e| e["action"] == "run").map(stamp).collect();
            let observations: Vec<i64> = events.iter().filter(|e| e["observation"] == "run").map(stamp).collect();
            let mut gaps: Vec<i64> = actions.iter().zip(&observations).map(|(a, o)| o - a).collect();
            gaps.sort();
            let (p50, p99) = (gaps[gaps.len() / 2] as f64 / 1e3, gaps[(gaps.len() * 99 / 100).min(gaps.len() - 1)] as f64 / 1e3);
            println!(
                "   {name:<18} p50 {p50:>7.1} ms   p99 {p99:>7.1} ms   first observation {:>6.2} s after the conversation's start",
                first.unwrap_or_default().as_secs_f64()
            );
            let _ = child.kill();
            let _ = child.wait();
        });
    }
}
