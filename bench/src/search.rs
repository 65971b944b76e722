//! Section 3: conversation search with many conversations of one user (file stores up to
//! 100,000), and PostgreSQL with 1,000,000 conversations over 10,000 users.

use crate::common::*;
use std::path::{Path, PathBuf};

/// Conversation search with 100 to 100,000 conversations of one user (1,000 and 10,000 with
/// PostgreSQL), a page of 20; then PostgreSQL with 1,000,000 over 10,000 users.
pub(crate) fn search_load(bin: &Path, profiles: &[(&str, PathBuf, PathBuf)], pg_url: &str) {
    println!("\n3. GET /api/conversations?limit=20 with 100 to 100,000 conversations of one user");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let mut file_rates: Vec<(i32, f64)> = Vec::new();
    for (label, profile, state) in profiles {
        let mut made = 0;
        let sizes: &[i32] = if *label == "postgres" { &[1_000, 10_000] } else { &[100, 1_000, 10_000, 100_000] };
        for &n in sizes {
            let (mut child, addr) = spawn_host(bin, profile);
            let (rss_idle, _) = rss_mib(child.id());
            rt.block_on(async {
                if *label == "postgres" {
                    use sqlx::Connection as _;
                    until_ready(&addr).await;
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
                    file_rates.push((n, rate));
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
        if *label == "postgres" {
            rt.block_on(pg_million(bin, profile, pg_url));
        }
    }
    if let (Some((_, small)), Some((_, large))) =
        (file_rates.iter().find(|(n, _)| *n == 100), file_rates.iter().find(|(n, _)| *n == 100_000))
    {
        let share = large / small * 100.0;
        target("search, file stores, 100,000 / 100 conversations", format!("{share:.0}%"), ">= 50%", share >= 50.0);
    }
}

/// 1,000,000 conversations over 10,000 users (100 each, the bench's single user one of
/// them): the first page of one user, and the plan PostgreSQL uses for it.
async fn pg_million(bin: &Path, profile: &Path, pg_url: &str) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(pg_url).await.unwrap();
    let started = std::time::Instant::now();
    sqlx::query("TRUNCATE conversation_metadata CASCADE").execute(&mut conn).await.unwrap();
    // User 0 is the bench's single user (''); the others are u1 .. u9999.
    sqlx::query(
        "INSERT INTO conversation_metadata (conversation_id, user_id, created_at, metadata) \
         SELECT 'm' || i, CASE WHEN i % 10000 = 0 THEN '' ELSE 'u' || (i % 10000) END, \
                now() - i * interval '1 second', \
                json_build_object('conversation_id', 'm' || i, 'created_at', \
                  to_char((now() - i * interval '1 second') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
                  'title', 'bench ' || i) \
         FROM generate_series(0, 999999) i",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query("ANALYZE conversation_metadata").execute(&mut conn).await.unwrap();
    println!("   (1,000,000 conversations over 10,000 users written in {:.1} s)", started.elapsed().as_secs_f64());
    let (mut child, addr) = spawn_host(bin, profile);
    let first = format!("http://{addr}/api/conversations?limit=20");
    let stats = load(move |c| c.get(&first)).await.tap_row("first page, 1,000,000 conversations, postgres");
    let (rate, p99) = (stats.rate(), stats.p99_ms());
    target(
        "search, PostgreSQL, 1,000,000 conversations over 10,000 users",
        format!("{rate:.0} req/s, p99 {p99:.1} ms"),
        ">= 5,000 req/s, p99 <= 10 ms",
        rate >= 5_000.0 && p99 <= 10.0,
    );
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT metadata FROM conversation_metadata \
         WHERE user_id = '' ORDER BY created_at DESC, conversation_id DESC OFFSET 0 LIMIT 21",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    println!("   the plan of the search query (EXPLAIN ANALYZE):");
    for line in plan {
        println!("     {line}");
    }
    let _ = child.kill();
    let _ = child.wait();
}
