//! Health, options, settings, secrets, middleware: the bundled OSS plugins through HTTP.

use oh_e2e::{files_containing, Deployment, TestHost};
use serde_json::json;

fn oss() -> (Deployment, TestHost) {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("max_body_bytes = 4096", "");
    let host = d.start();
    (d, host)
}

#[tokio::test]
async fn health_options_and_middleware_headers() {
    let (_d, host) = oss();
    let alive = host.get("/alive").await;
    assert_eq!((alive.status, alive.json()), (200, json!({ "status": "ok" })));
    assert_eq!(host.get("/health").await.json(), json!("OK"));
    let ready = host.get("/ready").await;
    assert_eq!((ready.status, ready.json()), (200, json!({ "status": "ready" })), "{}", ready.text);
    let detail = host.admin_get("/internal/ready").await;
    assert_eq!(detail.json()["plugins"].as_array().unwrap().len(), 6, "{}", detail.text);

    let config = host.get("/api/options/config").await;
    assert_eq!(config.json()["APP_MODE"], "oss");
    assert_eq!(config.json()["FEATURE_FLAGS"], json!({ "ENABLE_BILLING": false, "HIDE_LLM_SETTINGS": false }));
    assert!(config.headers["x-request-id"].len() >= 8);
    assert_eq!(config.headers["cache-control"], "no-cache, no-store, must-revalidate, max-age=0");

    let echoed = host.send(host.http.get(host.url("/alive")).header("x-request-id", "abc-123")).await;
    assert_eq!(echoed.headers["x-request-id"], "abc-123");

    let missing = host.get("/api/nothing-here").await;
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].is_string());
}

#[tokio::test]
async fn cors_allows_this_servers_own_loopback_origins_only_by_default() {
    let (_d, host) = oss();
    let preflight = |origin: String| {
        host.http
            .request(reqwest::Method::OPTIONS, host.url("/api/settings"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
    };
    let port = host.base.rsplit(':').next().unwrap().to_owned();
    let own = format!("http://localhost:{port}");
    let ok = host.send(preflight(own.clone())).await;
    assert_eq!(ok.headers["access-control-allow-origin"], own.as_str());
    assert_eq!(ok.headers["access-control-allow-credentials"], "true");
    let evil = host.send(preflight("https://evil.example".to_owned())).await;
    assert!(evil.headers.get("access-control-allow-origin").is_none());
    let other_port = host.send(preflight("http://localhost:1".to_owned())).await;
    assert!(other_port.headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn cors_follows_permitted_origins() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "");
    let host = d.start_with_env(&[("PERMITTED_CORS_ORIGINS", "https://app.example.com, https://other.example")]);
    let r = host.send(host.http.get(host.url("/alive")).header("origin", "https://app.example.com")).await;
    assert_eq!(r.headers["access-control-allow-origin"], "https://app.example.com");
    let r = host.send(host.http.get(host.url("/alive")).header("origin", "http://localhost:3001")).await;
    assert!(r.headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn settings_are_stored_merged_and_never_returned_or_written_in_plaintext() {
    let (d, host) = oss();
    let none = host.get("/api/settings").await;
    assert_eq!((none.status, none.json()), (404, json!({ "error": "Settings not found" })));

    let posted = host
        .post_json(
            "/api/settings",
            &json!({ "llm_model": "gpt-4o", "llm_api_key": "sk-plain-111", "search_api_key": "srch-222",
                     "sandbox_api_key": "sbx-333", "language": "en", "an_unknown_field": 1 }),
        )
        .await;
    assert_eq!((posted.status, posted.json()), (200, json!({ "message": "Settings stored" })));

    let got = host.get("/api/settings").await.json();
    assert_eq!(got["llm_model"], "gpt-4o");
    assert_eq!(got["llm_api_key"], serde_json::Value::Null);
    assert_eq!(got["search_api_key"], serde_json::Value::Null);
    assert_eq!(got["sandbox_api_key"], serde_json::Value::Null);
    assert_eq!(got["llm_api_key_set"], true);
    assert_eq!(got["search_api_key_set"], true);
    assert_eq!(got["provider_tokens_set"], json!({}));
    assert!(got.get("secrets_store").is_none());
    assert!(got.get("an_unknown_field").is_none());

    // OpenHands' partial merge: null key/model/base_url are kept, the rest is replaced.
    host.post_json("/api/settings", &json!({ "language": "fr" })).await;
    let got = host.get("/api/settings").await.json();
    assert_eq!((got["language"].as_str(), got["llm_model"].as_str()), (Some("fr"), Some("gpt-4o")));
    assert_eq!(got["llm_api_key_set"], true);

    for secret in ["sk-plain-111", "srch-222"] {
        assert!(files_containing(&d.state_dir(), secret).is_empty(), "{secret} is on disk in plain text");
        assert!(!host.log().contains(secret), "{secret} is in the log");
    }
}

#[tokio::test]
async fn bad_settings_input_gets_a_clear_4xx_and_writes_nothing() {
    let (d, host) = oss();
    host.post_json("/api/settings", &json!({ "language": "en" })).await;
    let before = std::fs::read(d.state_dir().join("settings.json")).unwrap();

    let json_post = || host.http.post(host.url("/api/settings")).header("content-type", "application/json");
    let malformed = host.send(json_post().body("{\"language\": ")).await;
    assert_eq!(malformed.status, 400);
    assert!(malformed.json()["error"].as_str().unwrap().starts_with("malformed JSON"), "{}", malformed.text);

    let not_utf8 = host.send(json_post().body(vec![0xff, 0xfe, 0x7b])).await;
    assert_eq!((not_utf8.status, not_utf8.json()["error"].as_str()), (400, Some("request body is not UTF-8")));

    let wrong_type = host.post_json("/api/settings", &json!({ "max_iterations": "many" })).await;
    assert_eq!(wrong_type.status, 422, "{}", wrong_type.text);

    let too_small = host.post_json("/api/settings", &json!({ "condenser_max_size": 5 })).await;
    assert_eq!(too_small.status, 422);

    let huge = json!({ "language": "x".repeat(10_000) });
    let oversized = host.post_json("/api/settings", &huge).await;
    assert_eq!(oversized.status, 413, "{}", oversized.text);
    assert!(oversized.json()["error"].is_string());

    assert_eq!(
        std::fs::read(d.state_dir().join("settings.json")).unwrap(),
        before,
        "a rejected request changed the file"
    );
    assert_eq!(host.post_json("/api/reset-settings", &json!({})).await.status, 410);
}

#[tokio::test]
async fn secrets_and_provider_tokens_round_trip_without_values() {
    let (d, host) = oss();
    let created = host
        .post_json(
            "/api/secrets",
            &json!({ "name": "OPENAI", "value": "v-secret-value-9", "description": "for tools" }),
        )
        .await;
    assert_eq!((created.status, created.json()), (201, json!({ "message": "Secret created successfully" })));
    let dup = host.post_json("/api/secrets", &json!({ "name": "OPENAI", "value": "x" })).await;
    assert_eq!((dup.status, dup.json()), (400, json!({ "message": "Secret OPENAI already exists" })));
    host.post_json("/api/secrets", &json!({ "name": "OTHER", "value": "v2" })).await;

    let list = host.get("/api/secrets").await;
    assert_eq!(
        list.json(),
        json!({ "custom_secrets": [{ "name": "OPENAI", "description": "for tools" }, { "name": "OTHER", "description": null }] })
    );
    assert!(!list.text.contains("v-secret-value-9"));

    let renamed =
        host.send(host.http.put(host.url("/api/secrets/OPENAI")).json(&json!({ "name": "OPENAI_KEY" }))).await;
    assert_eq!(renamed.status, 200, "{}", renamed.text);
    let clash = host.send(host.http.put(host.url("/api/secrets/OTHER")).json(&json!({ "name": "OPENAI_KEY" }))).await;
    assert_eq!(clash.status, 400);
    let missing = host.send(host.http.delete(host.url("/api/secrets/NOPE"))).await;
    assert_eq!((missing.status, missing.json()), (404, json!({ "error": "Secret with ID NOPE not found" })));
    let deleted = host.send(host.http.delete(host.url("/api/secrets/OTHER"))).await;
    assert_eq!(deleted.json(), json!({ "message": "Secret deleted successfully" }));

    let stored = host
        .post_json(
            "/api/add-git-providers",
            &json!({ "provider_tokens": { "github": { "token": "ghp_tok_777", "host": "github.com" } } }),
        )
        .await;
    assert_eq!(stored.json(), json!({ "message": "Git providers stored" }));
    host.post_json("/api/settings", &json!({ "language": "en" })).await;
    assert_eq!(host.get("/api/settings").await.json()["provider_tokens_set"], json!({ "github": "github.com" }));
    // An empty token keeps the stored one and updates the host.
    host.post_json(
        "/api/add-git-providers",
        &json!({ "provider_tokens": { "github": { "token": "", "host": "ghe.corp" } } }),
    )
    .await;
    assert_eq!(host.get("/api/settings").await.json()["provider_tokens_set"], json!({ "github": "ghe.corp" }));
    let unknown =
        host.post_json("/api/add-git-providers", &json!({ "provider_tokens": { "svn": { "token": "x" } } })).await;
    assert_eq!(unknown.status, 422);

    let unset = host.post_json("/api/unset-provider-tokens", &json!({})).await;
    assert_eq!(unset.json(), json!({ "message": "Unset Git provider tokens" }));
    assert_eq!(host.get("/api/settings").await.json()["provider_tokens_set"], json!({}));
    // Custom secrets survive provider changes.
    assert_eq!(host.get("/api/secrets").await.json()["custom_secrets"][0]["name"], "OPENAI_KEY");

    for secret in ["v-secret-value-9", "ghp_tok_777"] {
        assert!(files_containing(&d.state_dir(), secret).is_empty(), "{secret} is on disk in plain text");
    }
    let key = d.state_dir().join(".keys/file_stores.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(key).unwrap().permissions().mode() & 0o777, 0o600);
}

#[tokio::test]
async fn internal_views_show_libraries_and_counters() {
    let (_d, host) = oss();
    host.get("/api/settings").await;
    let plugins = host.admin_get("/internal/plugins").await.json();
    let libs = plugins["libraries"].as_array().unwrap();
    assert_eq!(libs.len(), 4, "{plugins}");
    assert!(libs
        .iter()
        .all(|l| l["sha256"].as_str().unwrap().len() == 64 && l["api_version"] == oh_e2e::api_version().as_str()));
    let settings = plugins["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["extension_point"] == "settings_store")
        .unwrap()
        .clone();
    assert!(settings["stats"]["calls"].as_u64().unwrap() >= 1);
    assert_eq!(settings["healthy"], true);
    let metrics = host.admin_get("/internal/metrics").await.text;
    assert!(metrics.contains("oh_plugin_calls_total{extension_point=\"settings_store\",library=\"file_stores\",implementation=\"FileSettingsStore\"}"), "{metrics}");
}

#[tokio::test]
async fn sigterm_stops_cleanly() {
    let (_d, host) = oss();
    host.get("/alive").await;
    let status = host.stop();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn saas_mode_adds_openhands_saas_keys_to_the_options() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("app_mode = \"saas\"", "");
    let host = d.start_with_env(&[
        ("GITHUB_APP_CLIENT_ID", "gh-client"),
        ("GITLAB_APP_CLIENT_ID", "gl-client"),
        ("GITHUB_APP_SLUG", "openhands-app"),
        ("ENABLE_JIRA", "true"),
        ("MAINTENANCE_START_TIME", "2026-12-01T00:00:00Z"),
        ("AUTH_URL", "https://auth.example.com"),
    ]);
    let c = host.get("/api/options/config").await.json();
    assert_eq!(c["APP_MODE"], "saas");
    assert_eq!(c["GITHUB_CLIENT_ID"], "gh-client");
    assert_eq!(c["APP_SLUG"], "openhands-app");
    assert_eq!(c["PROVIDERS_CONFIGURED"], json!(["github", "gitlab"]));
    assert_eq!(c["FEATURE_FLAGS"]["ENABLE_JIRA"], true);
    assert_eq!(c["FEATURE_FLAGS"]["ENABLE_LINEAR"], false);
    assert_eq!(c["MAINTENANCE"], json!({ "startTime": "2026-12-01T00:00:00Z" }));
    assert_eq!(c["AUTH_URL"], "https://auth.example.com");
}

#[tokio::test]
async fn frontend_directory_is_served_as_a_single_page_app() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "");
    let web = d.dir.path().join("web");
    std::fs::create_dir_all(web.join("assets")).unwrap();
    std::fs::write(web.join("index.html"), "<html>oh</html>").unwrap();
    std::fs::write(web.join("assets/app.js"), "console.log(1)").unwrap();
    let host = d.start_with_env(&[("FRONTEND_DIRECTORY", web.to_str().unwrap())]);
    let index = host.get("/").await;
    assert_eq!((index.status, index.text.as_str()), (200, "<html>oh</html>"));
    let asset = host.get("/assets/app.js").await;
    assert_eq!(asset.text, "console.log(1)");
    assert_eq!(asset.headers["cache-control"], "public, max-age=2592000, immutable");
    let route = host.get("/conversations/abc").await;
    assert_eq!((route.status, route.text.as_str()), (200, "<html>oh</html>"));
    let api = host.get("/api/nothing").await;
    assert_eq!(api.status, 404);
    assert!(api.json()["error"].is_string());
    assert_eq!(host.get("/api/options/config").await.status, 200);
}
