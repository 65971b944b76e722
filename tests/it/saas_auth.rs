//! `saas_auth`: API keys (created shown once, stored hashed, expiring, revocable) and
//! per-user rate limits against the real Redis (a key prefix per test).

use oh_e2e::{pg::TestDb, sha256_hex, Deployment, TestHost};
use serde_json::{json, Value};

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

async fn as_key(
    host: &TestHost,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> oh_e2e::Response {
    let mut req = host.http.request(method, host.url(path)).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    host.send(req).await
}

#[tokio::test]
async fn api_keys_are_shown_once_stored_hashed_and_can_be_revoked_or_expire() {
    let db = TestDb::create().await;
    let (_d, host) = start(&db, ", rate_limit_per_second = 0, rate_limit_per_minute = 0");
    use reqwest::Method;

    let none = host.get("/api/settings").await;
    assert_eq!((none.status, none.json()["error"].as_str()), (401, Some("NoCredentialsError")));
    assert_eq!(none.headers["www-authenticate"], "Bearer");
    let cookie_only = host.send(host.http.get(host.url("/api/settings")).header("cookie", "keycloak_auth=abc")).await;
    assert_eq!(cookie_only.status, 401);
    assert!(cookie_only.json()["message"].as_str().unwrap().contains("no Keycloak is configured"));

    let created = as_key(&host, ALICE_BOOTSTRAP, Method::POST, "/api/keys", Some(json!({ "name": "ci" }))).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let key = created.json()["key"].as_str().unwrap().to_owned();
    let id = created.json()["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("oh_") && key.len() > 40);

    // The new key signs in as alice (her settings do not exist yet: 404, not 401).
    assert_eq!(as_key(&host, &key, Method::GET, "/api/settings", None).await.status, 404);
    let via_header = host.send(host.http.get(host.url("/api/settings")).header("x-session-api-key", &key)).await;
    assert_eq!(via_header.status, 404);
    let listed = as_key(&host, &key, Method::GET, "/api/keys", None).await;
    assert!(!listed.text.contains(&key), "a listing must never show a key");
    let item = &listed.json()[0];
    assert_eq!((item["id"].as_str(), item["name"].as_str()), (Some(id.as_str()), Some("ci")));
    assert!(item["last_used_at"].is_string(), "{item}");
    assert_eq!(item["prefix"].as_str().unwrap(), &key[..10]);

    // Stored as a hash only.
    let mut conn = db.connect().await;
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT row_to_json(k)::text FROM api_keys k").fetch_all(&mut conn).await.unwrap();
    assert!(rows.iter().all(|r| !r.contains(&key)), "{rows:?}");
    assert!(rows[0].contains(&sha256_hex(&key)));

    // Bob can neither see nor revoke it.
    assert_eq!(as_key(&host, BOB_BOOTSTRAP, Method::GET, "/api/keys", None).await.json(), json!([]));
    assert_eq!(as_key(&host, BOB_BOOTSTRAP, Method::DELETE, &format!("/api/keys/{id}"), None).await.status, 404);
    assert_eq!(as_key(&host, &key, Method::GET, "/api/settings", None).await.status, 404);

    // Revoked keys and expired keys are refused.
    assert_eq!(as_key(&host, ALICE_BOOTSTRAP, Method::DELETE, &format!("/api/keys/{id}"), None).await.status, 200);
    let revoked = as_key(&host, &key, Method::GET, "/api/settings", None).await;
    assert_eq!((revoked.status, revoked.json()["message"].as_str()), (401, Some("this API key was revoked")));
    let past = json!({ "name": "old", "expires_at": "2020-01-01T00:00:00Z" });
    let expired_key = as_key(&host, ALICE_BOOTSTRAP, Method::POST, "/api/keys", Some(past)).await.json()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let expired = as_key(&host, &expired_key, Method::GET, "/api/settings", None).await;
    assert_eq!((expired.status, expired.json()["error"].as_str()), (401, Some("ExpiredError")));
    let wrong = as_key(&host, "oh_not-a-key", Method::GET, "/api/settings", None).await;
    assert_eq!(wrong.status, 401);
    let bad = as_key(&host, ALICE_BOOTSTRAP, Method::POST, "/api/keys", Some(json!({ "name": "" }))).await;
    assert_eq!(bad.status, 422);
}

#[tokio::test]
async fn each_user_is_rate_limited_in_redis_with_retry_after() {
    let db = TestDb::create().await;
    let (_d, host) = start(&db, ", rate_limit_per_second = 3, rate_limit_per_minute = 1000");
    let mut limited = None;
    let mut ok = None;
    for _ in 0..12 {
        let r = host.send(host.http.get(host.url("/api/secrets")).bearer_auth(ALICE_BOOTSTRAP)).await;
        match r.status {
            200 => ok = Some(r),
            429 => {
                limited = Some(r);
                break;
            }
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
    assert!(line.ends_with(" 3"), "{line}");
}
