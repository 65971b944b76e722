//! Multi-tenancy on every route: with the PostgreSQL stores and two users (TokenAuth), user B
//! can neither read, list, change nor delete user A's settings, secrets, conversations or
//! events (404 or 403, never A's data).

use oh_e2e::{llm::FakeLlm, pg::TestDb, sha256_hex, Deployment, Response, TestHost};
use serde_json::{json, Value};

const A: &str = "tenant-a-token-1";
const B: &str = "tenant-b-token-2";

async fn call(host: &TestHost, token: &str, method: &str, path: &str, body: Option<Value>) -> Response {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = host.http.request(method, host.url(path)).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    host.send(req).await
}

#[tokio::test]
async fn user_b_never_reaches_user_a_data_on_any_route() {
    let db = TestDb::create().await;
    let llm = FakeLlm::start().await;
    let d = Deployment::new();
    d.install_bundled();
    d.install("token_auth");
    let pg = format!("{{ database_url = \"{}\", master_key = \"tenancy-master-key-0123456789\" }}", db.url);
    d.write_profile(
        "",
        &format!(
            "[extensions.settings_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasSettingsStore\"\nconfig = {pg}\n\
             [extensions.secrets_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasSecretsStore\"\nconfig = {pg}\n\
             [extensions.conversation_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasConversationStore\"\nconfig = {pg}\n\
             [extensions.user_auth]\nlibrary = \"token_auth\"\nimplementation = \"TokenAuth\"\n\
             config = {{ tokens = [{{ user_id = \"a\", sha256 = \"{}\" }}, {{ user_id = \"b\", sha256 = \"{}\" }}] }}\n",
            sha256_hex(A),
            sha256_hex(B)
        ),
    );
    let host = d.start();

    // A's data: settings, a secret, a provider token, a running conversation with events.
    let settings = json!({ "llm_model": "fake", "llm_base_url": llm.base_url, "llm_api_key": "sk-a-secret", "language": "a-lang" });
    assert_eq!(call(&host, A, "POST", "/api/settings", Some(settings)).await.status, 200);
    assert_eq!(
        call(&host, A, "POST", "/api/secrets", Some(json!({ "name": "A_SECRET", "value": "a-value" }))).await.status,
        201
    );
    let providers = json!({ "provider_tokens": { "github": { "token": "ghp_a", "host": "github.com" } } });
    assert_eq!(call(&host, A, "POST", "/api/add-git-providers", Some(providers)).await.status, 200);
    let created = call(&host, A, "POST", "/api/conversations", Some(json!({ "initial_user_msg": "a's chat" }))).await;
    assert_eq!(created.status, 200, "{}", created.text);
    let id = created.json()["conversation_id"].as_str().unwrap().to_owned();
    let mut waited = 0;
    while call(&host, A, "GET", &format!("/api/conversations/{id}/events?limit=100"), None).await.json()["events"]
        .as_array()
        .is_none_or(|e| e.len() < 5)
    {
        waited += 1;
        assert!(waited < 100, "A's conversation never answered");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // B: every route, A's data never shows, nothing of A's changes.
    let b_settings = call(&host, B, "GET", "/api/settings", None).await;
    assert_eq!(b_settings.status, 404);
    assert_eq!(call(&host, B, "GET", "/api/secrets", None).await.json(), json!({ "custom_secrets": [] }));
    assert_eq!(call(&host, B, "PUT", "/api/secrets/A_SECRET", Some(json!({ "name": "MINE" }))).await.status, 404);
    assert_eq!(call(&host, B, "DELETE", "/api/secrets/A_SECRET", None).await.status, 404);
    assert_eq!(call(&host, B, "POST", "/api/unset-provider-tokens", None).await.status, 200);
    assert_eq!(call(&host, B, "GET", "/api/conversations", None).await.json()["results"], json!([]));
    let conv = format!("/api/conversations/{id}");
    assert_eq!(call(&host, B, "GET", &conv, None).await.text, "null");
    assert_eq!(call(&host, B, "PATCH", &conv, Some(json!({ "title": "stolen" }))).await.status, 404);
    assert_eq!(call(&host, B, "GET", &format!("{conv}/events"), None).await.status, 404);
    assert_eq!(
        call(
            &host,
            B,
            "POST",
            &format!("{conv}/events"),
            Some(json!({ "action": "message", "args": { "content": "x" } }))
        )
        .await
        .status,
        404
    );
    assert_eq!(call(&host, B, "POST", &format!("{conv}/message"), Some(json!({ "message": "x" }))).await.status, 404);
    assert_eq!(call(&host, B, "POST", &format!("{conv}/stop"), None).await.status, 404);
    assert_eq!(call(&host, B, "POST", &format!("{conv}/start"), None).await.status, 404);
    assert_eq!(call(&host, B, "DELETE", &conv, None).await.text, "false");
    // B storing settings does not touch A's.
    assert_eq!(call(&host, B, "POST", "/api/settings", Some(json!({ "language": "b-lang" }))).await.status, 200);

    // A's data is intact.
    let a = call(&host, A, "GET", "/api/settings", None).await.json();
    assert_eq!((a["language"].as_str(), a["llm_api_key_set"].as_bool()), (Some("a-lang"), Some(true)));
    assert_eq!(a["provider_tokens_set"], json!({ "github": "github.com" }));
    assert_eq!(call(&host, A, "GET", "/api/secrets", None).await.json()["custom_secrets"][0]["name"], "A_SECRET");
    let mine = call(&host, A, "GET", &conv, None).await.json();
    assert_eq!((mine["title"].as_str(), mine["status"].as_str()), (Some("a's chat"), Some("RUNNING")));
    assert!(
        call(&host, A, "GET", &format!("{conv}/events"), None).await.json()["events"].as_array().unwrap().len() >= 5
    );

    // And the raw rows are scoped: B's row is B's, A's secrets are sealed.
    let mut conn = db.connect().await;
    let owners: Vec<String> =
        sqlx::query_scalar("SELECT user_id FROM conversation_metadata").fetch_all(&mut conn).await.unwrap();
    assert_eq!(owners, ["a"]);
    let sealed: String = sqlx::query_scalar("SELECT sealed FROM user_custom_secrets WHERE user_id = 'a'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let token: String = sqlx::query_scalar("SELECT sealed_token FROM user_provider_tokens WHERE user_id = 'a'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(!sealed.contains("a-value") && !token.contains("ghp_a"));
}
