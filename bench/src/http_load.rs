//! Section 2: `/api/settings` on the real binary, file and PostgreSQL stores.

use crate::common::*;
use std::{
    path::{Path, PathBuf},
    process::Command,
};

pub(crate) fn http_load(bin: &Path, profiles: &[(&str, PathBuf)]) {
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
    let mut get_p99s = Vec::new();
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
            get_p99s.push(get.p99_ms());
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
    // `isolation = "process"`: the file settings store in a runner, next to in process.
    if let (Some(isolated), Some(p99)) = (get_rates.get(2), get_p99s.get(2)) {
        let share = isolated / get_rates[0] * 100.0;
        target("GET /api/settings, isolated / in process", format!("{share:.0}%"), ">= 50%", share >= 50.0);
        let extra = p99 - get_p99s[0];
        target("GET /api/settings, isolated: extra p99", format!("{extra:.2} ms"), "<= 1 ms", extra <= 1.0);
        // The cost of one call: with every core busy, a request costs cores / rate of CPU.
        let per_call = (1.0 / isolated - 1.0 / get_rates[0]) * 1e6 * cores() as f64;
        println!("   (isolated: about {per_call:.0} µs of CPU more per settings read: the socket both ways, JSON)");
    }
    println!("   (oh-host /alive is {:.0}% of the bare axum handler)", alive_rate / bare_rate * 100.0);
}
