//! Section 9: the integrations' inbox and the way back.

use crate::common::*;
use std::{
    path::Path,
    time::{Duration, Instant},
};

/// Section 9: the integrations' inbox and the way back.
pub(crate) fn webhook_load(bin: &Path, work: &Path, oss_profile: &Path, db_url: &str) {
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
