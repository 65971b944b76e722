//! Section 11: reloading the profile under load: `GET /api/settings` requests/s and p99 while
//! the profile is reloaded 20 times (the monitoring entry's config toggled, so each reload
//! builds and switches a generation), next to the same load without reloads; RSS after 100
//! reloads.

use crate::common::*;
use std::{path::Path, time::Duration};

pub(crate) fn reload_load(bin: &Path, work: &Path, oss_profile: &Path) {
    println!("\n11. reloads under load: GET /api/settings, {HTTP_CONCURRENCY} connections");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let base =
        std::fs::read_to_string(oss_profile).unwrap().replace("admin_bind = \"off\"", "admin_bind = \"127.0.0.1:0\"");
    let profile = work.join("plugins.reload.toml");
    let with_level = move |level: &str| {
        format!("{base}[[extensions.monitoring]]\nlibrary = \"log_monitoring\"\nimplementation = \"LogMonitoringListener\"\nconfig = {{ level = \"{level}\" }}\n")
    };
    std::fs::write(&profile, with_level("debug")).unwrap();
    let mut command = std::process::Command::new(bin);
    command.arg("--config").arg(&profile);
    let (mut child, addr) = spawn_listening_admin(command);
    let (public, admin) = addr;
    let url = format!("http://{public}/api/settings");
    rt.block_on(async {
        let body = serde_json::json!({ "llm_model": "gpt-4o", "language": "en" });
        assert!(reqwest::Client::new().post(&url).json(&body).send().await.unwrap().status().is_success());
        let get = url.clone();
        let quiet = load(move |c| c.get(&get)).await.tap_row("without reloads");
        // 20 reloads spread over the load's duration.
        let (profile, reload_url, with_level) =
            (profile.clone(), format!("http://{admin}/internal/reload"), with_level.clone());
        let reloader = tokio::spawn(async move {
            let http = reqwest::Client::new();
            let every = HTTP_DURATION / 21;
            for i in 0..20 {
                tokio::time::sleep(every).await;
                std::fs::write(&profile, with_level(if i % 2 == 0 { "info" } else { "debug" })).unwrap();
                let r = http.post(&reload_url).send().await.unwrap();
                assert!(r.status().is_success(), "reload {i}: {}", r.text().await.unwrap_or_default());
            }
        });
        let get = url.clone();
        let busy = load(move |c| c.get(&get)).await.tap_row("during 20 reloads");
        reloader.await.unwrap();
        target(
            "requests/s during 20 reloads, share of without",
            format!(
                "{:.0}% (p99 {:.2} ms vs {:.2} ms)",
                busy.rate() / quiet.rate() * 100.0,
                busy.p99_ms(),
                quiet.p99_ms()
            ),
            ">= 90%, no failed request",
            busy.rate() >= 0.9 * quiet.rate(),
        );
    });
    let (before, _) = rss_mib(child.id());
    rt.block_on(async {
        let http = reqwest::Client::new();
        let reload_url = format!("http://{admin}/internal/reload");
        for i in 0..100 {
            std::fs::write(&profile, with_level(if i % 2 == 0 { "info" } else { "debug" })).unwrap();
            assert!(http.post(&reload_url).send().await.unwrap().status().is_success());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    let (after, _) = rss_mib(child.id());
    println!("   RSS {before:.1} MiB before, {after:.1} MiB after 100 more reloads");
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts a host whose log names both listeners: (public, admin) addresses.
fn spawn_listening_admin(mut command: std::process::Command) -> (std::process::Child, (String, String)) {
    use std::io::{BufRead, BufReader};
    let mut child = command
        .env("RUST_LOG", "warn,oh_host::cli=info")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("oh-host");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut admin = None;
    let public = loop {
        let line = lines.next().expect("oh-host exited before listening").unwrap();
        if let Some(rest) = line.split("(/internal/*) on http://").nth(1) {
            admin = rest.split_whitespace().next().map(str::to_owned);
        }
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, (public, admin.expect("an admin listener")))
}
