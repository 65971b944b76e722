//! Section 3: conversation search with many conversations of one user.

use crate::common::*;
use std::path::{Path, PathBuf};

/// Conversation search with 1,000 then 10,000 conversations of one user, a page of 20.
pub(crate) fn search_load(bin: &Path, profiles: &[(&str, PathBuf, PathBuf)], pg_url: &str) {
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
