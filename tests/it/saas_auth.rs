//! `saas_auth`: API keys (created shown once, stored hashed, expiring, revocable) and
//! per-user rate limits against the real Redis (a key prefix per test).

use oh_e2e::{pg::TestDb, sha256_hex, Deployment, TestHost};
use serde_json::json;

const ALICE_BOOTSTRAP: &str = "alice-service-key-123";
const BOB_BOOTSTRAP: &str = "bob-service-key-456";

fn prefix() -> String {
    let mut b = [0u8; 4];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut b).unwrap();
    format!("ohtest:{}:", b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}

fn start(db: &TestDb, extra: &str) -> (Deployment, TestHost) {
    let d = Deployment::new();
    d.install_bundled();
    let config = format!(
        "{{ database_url = \"{}\", redis_key_prefix = \"{}\", static_keys = [{{ user_id = \"alice\", sha256 = \"{}\" }}, \
         {{ user_id = \"bob\", sha256 = \"{}\" }}]{extra} }}",
        db.url,
        prefix(),
        sha256_hex(ALICE_BOOTSTRAP),
        sha256_hex(BOB_BOOTSTRAP)
    );
    d.write_profile(
        "",
        &format!(
            "[extensions.user_auth]\nlibrary = \"saas_auth\"\nimplementation = \"SaasUserAuth\"\nconfig = {config}\n\
             [[extensions.routes]]\nlibrary = \"saas_auth\"\nimplementation = \"SaasAuthRoutes\"\nconfig = {config}\n"
        ),
    );
    let host = d.start();
    (d, host)
}

#[tokio::test]
async fn static_keys_sign_in_but_no_api_key_can_create_or_revoke_keys() {
    let db = TestDb::create().await;
    let (_d, host) = start(&db, ", rate_limit_per_second = 0, rate_limit_per_minute = 0");
    use reqwest::Method;
    let none = host.get("/api/settings").await;
    assert_eq!((none.status, none.json()["error"].as_str()), (401, Some("NoCredentialsError")));
    assert_eq!(none.headers["www-authenticate"], "Bearer");
    let cookie_only = host.send(host.http.get(host.url("/api/settings")).header("cookie", "keycloak_auth=abc")).await;
    assert_eq!(cookie_only.status, 401);
    assert!(cookie_only.json()["message"].as_str().unwrap().contains("no Keycloak is configured"));
    // A static (service) key signs in...
    assert_eq!(host.as_key(ALICE_BOOTSTRAP, Method::GET, "/api/settings", None).await.status, 404);
    assert_eq!(host.as_key(ALICE_BOOTSTRAP, Method::GET, "/api/keys", None).await.json(), json!([]));
    // ...but neither it nor any key may create or revoke keys.
    let minted = host.as_key(ALICE_BOOTSTRAP, Method::POST, "/api/keys", Some(json!({ "name": "ci" }))).await;
    assert_eq!(minted.status, 403, "{}", minted.text);
    assert!(minted.json()["error"].as_str().unwrap().contains("signed-in browser session"));
    let via_header = host
        .send(
            host.http
                .post(host.url("/api/keys"))
                .header("x-session-api-key", ALICE_BOOTSTRAP)
                .json(&json!({ "name": "x" })),
        )
        .await;
    assert_eq!(via_header.status, 403);
    assert_eq!(host.as_key(ALICE_BOOTSTRAP, Method::DELETE, "/api/keys/anything", None).await.status, 403);
    let wrong = host.as_key("oh_not-a-key", Method::GET, "/api/settings", None).await;
    assert_eq!(wrong.status, 401);
}

#[tokio::test]
async fn each_user_is_rate_limited_in_redis_with_retry_after() {
    let db = TestDb::create().await;
    let (_d, host) = start(&db, ", rate_limit_per_second = 3, rate_limit_per_minute = 1000");
    let get = || host.send(host.http.get(host.url("/api/secrets")).bearer_auth(ALICE_BOOTSTRAP));
    // The limiter connects to Redis in the background (until then requests go unlimited):
    // wait for its headers, then send ten at once, which lands four or more in one second
    // even on a loaded machine.
    let started = std::time::Instant::now();
    while !get().await.headers.contains_key("x-ratelimit-limit") {
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "the limiter never reached Redis");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let burst = futures_util::future::join_all((0..10).map(|_| get())).await;
    let (mut limited, mut ok) = (None, None);
    for r in burst {
        match r.status {
            200 => ok = Some(r),
            429 => limited = Some(r),
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    let ok = ok.expect("some requests pass");
    assert_eq!(ok.headers["x-ratelimit-limit"], "1000");
    assert!(ok.headers.contains_key("x-ratelimit-remaining"));
    let limited = limited.expect("the 4th request within a second is limited");
    assert_eq!(limited.json()["error"], "RateLimitError");
    assert_eq!(limited.headers["retry-after"], "1");
    assert_eq!(limited.headers["x-ratelimit-limit"], "3");
    assert_eq!(limited.headers["x-ratelimit-remaining"], "0");
    // Bob has his own budget.
    let bob = host.send(host.http.get(host.url("/api/secrets")).bearer_auth(BOB_BOOTSTRAP)).await;
    assert_eq!(bob.status, 200);
}

#[tokio::test]
async fn requests_are_served_when_redis_is_down_and_the_failure_is_counted() {
    let db = TestDb::create().await;
    let (_d, host) = start(&db, ", redis_url = \"redis://127.0.0.1:9/\"");
    for _ in 0..3 {
        let r = host.send(host.http.get(host.url("/api/secrets")).bearer_auth(ALICE_BOOTSTRAP)).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let metrics = host.admin_get("/internal/metrics").await.text;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("oh_rate_limit_redis_errors_total"))
        .unwrap_or_else(|| panic!("{metrics}"));
    // Each request asks Redis twice (the address's failed sign-ins, then the user's limit).
    let counted: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(counted, 6.0, "{line}");
}

#[tokio::test]
async fn each_user_gets_one_proxy_key_made_at_the_proxy_and_refresh_replaces_it() {
    let db = TestDb::create().await;
    let llm = oh_e2e::llm::FakeLlm::start().await;
    let proxy = llm.base_url.trim_end_matches("/v1").to_owned();
    let (_d, host) = start(
        &db,
        &format!(", rate_limit_per_second = 0, rate_limit_per_minute = 0, litellm_api_url = \"{proxy}\", litellm_api_key = \"sk-master\", \
             litellm_team_id = \"team-oh\", master_key = \"test-master-key-0123456789abcdef\""),
    );
    use reqwest::Method;
    // Concurrent first reads (two tabs, two hosts): one key is kept, the other deleted.
    let (a, b) = tokio::join!(
        host.as_key(ALICE_BOOTSTRAP, Method::GET, "/api/keys/llm/byor", None),
        host.as_key(ALICE_BOOTSTRAP, Method::GET, "/api/keys/llm/byor", None)
    );
    assert_eq!((a.status, b.status), (200, 200), "{} {}", a.text, b.text);
    let key = a.json()["key"].as_str().unwrap().to_owned();
    assert_eq!(b.json()["key"], key.as_str(), "both answers are the stored key");
    let (made, deleted) = llm.proxy_keys();
    assert_eq!(made.len() - deleted.len(), 1, "made {made:?}, deleted {deleted:?}");
    // Made in the deployment's team (LITE_LLM_TEAM_ID), for its user.
    let asked = llm.key_requests();
    assert!(asked.iter().all(|b| b["team_id"] == "team-oh" && b["user_id"].is_string()), "{asked:?}");
    // Sealed at rest.
    let mut conn = db.connect().await;
    let rows: Vec<String> = sqlx::query_scalar("SELECT key_sealed FROM llm_keys").fetch_all(&mut conn).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(!rows[0].contains(&key));
    // Bob's is his own.
    let bobs = host.as_key(BOB_BOOTSTRAP, Method::GET, "/api/keys/llm/byor", None).await.json();
    assert_ne!(bobs["key"], key.as_str());
    // Refresh needs a browser session (a key cannot mint credentials).
    let by_key = host.as_key(ALICE_BOOTSTRAP, Method::POST, "/api/keys/llm/byor/refresh", None).await;
    assert_eq!(by_key.status, 403);

    // Without a proxy: a clear 503, not "no such route".
    let (_d2, plain) = start(&TestDb::create().await, ", rate_limit_per_second = 0, rate_limit_per_minute = 0");
    let none = plain.as_key(ALICE_BOOTSTRAP, Method::GET, "/api/keys/llm/byor", None).await;
    assert_eq!(none.status, 503);
    assert!(none.json()["error"].as_str().unwrap().contains("litellm_api_url"));
}
