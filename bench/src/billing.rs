//! Section 8: billing's webhook and balance paths on PostgreSQL.

use crate::common::*;
use std::path::Path;

/// Section 8: the billing plugin's webhook and balance paths on PostgreSQL.
pub(crate) fn billing_load(bin: &Path, work: &Path, oss_profile: &Path, db_url: &str) {
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
