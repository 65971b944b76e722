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

/// Without FRONTEND_DIRECTORY, the web client's build in `./frontend/build` (where
/// `make frontend` puts it) is served, and the banner says where from; without one, the banner
/// says how to get it.
#[tokio::test]
async fn the_web_client_in_frontend_build_is_served_by_default() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "");
    let cwd = tempfile::tempdir().unwrap();
    let build = cwd.path().join("frontend/build");
    std::fs::create_dir_all(&build).unwrap();
    std::fs::write(build.join("index.html"), "<html>the web client</html>").unwrap();
    let from = cwd.path().display().to_string();
    let host = d.start_wrapped(&["env", "-C", &from, "--"], &[], &[]);
    let page = host.get("/").await;
    assert_eq!((page.status, page.text.as_str()), (200, "<html>the web client</html>"));
    assert!(host.log().contains("web client: frontend/build"), "{}", host.log());
    let elsewhere = tempfile::tempdir().unwrap();
    let other = elsewhere.path().display().to_string();
    let bare = d.start_wrapped(&["env", "-C", &other, "--"], &[], &[]);
    assert_eq!(bare.get("/").await.status, 404);
    assert!(bare.log().contains("no web client: `make frontend`"), "{}", bare.log());
}
