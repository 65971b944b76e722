//! Answers' shapes, in process: the routers `oh-host serve` builds, over the bundled plugins,
//! without starting a binary (`oh_e2e::in_process`).

use axum::{body::Body, http::Request};
use oh_e2e::in_process::InProcess;
use serde_json::json;

fn oss() -> InProcess {
    InProcess::start("max_body_bytes = 4096", "", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_options_and_middleware_headers() {
    let host = oss();
    let alive = host.get("/alive").await;
    assert_eq!((alive.status, alive.json()), (200, json!({ "status": "ok" })));
    assert_eq!(host.get("/health").await.json(), json!("OK"));
    let ready = host.get("/ready").await;
    assert_eq!((ready.status, ready.json()), (200, json!({ "status": "ready" })), "{}", ready.text);
    let detail = host.send_admin(Request::get("/internal/ready").body(Body::empty()).unwrap()).await;
    assert_eq!(detail.json()["plugins"].as_array().unwrap().len(), 6, "{}", detail.text);

    let config = host.get("/api/options/config").await;
    assert_eq!(config.json()["APP_MODE"], "oss");
    assert_eq!(config.json()["FEATURE_FLAGS"], json!({ "ENABLE_BILLING": false, "HIDE_LLM_SETTINGS": false }));
    assert!(config.headers["x-request-id"].len() >= 8);
    assert_eq!(config.headers["cache-control"], "no-cache, no-store, must-revalidate, max-age=0");

    let echoed = host.send(Request::get("/alive").header("x-request-id", "abc-123").body(Body::empty()).unwrap()).await;
    assert_eq!(echoed.headers["x-request-id"], "abc-123");

    let missing = host.get("/api/nothing-here").await;
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_this_servers_own_loopback_origins_only_by_default() {
    let host = oss();
    let preflight = |origin: &str| {
        Request::options("/api/settings")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .body(Body::empty())
            .unwrap()
    };
    let own = format!("http://localhost:{}", host.addr.port());
    let ok = host.send(preflight(&own)).await;
    assert_eq!(ok.headers["access-control-allow-origin"], own.as_str());
    assert_eq!(ok.headers["access-control-allow-credentials"], "true");
    let evil = host.send(preflight("https://evil.example")).await;
    assert!(evil.headers.get("access-control-allow-origin").is_none());
    let other_port = host.send(preflight("http://localhost:1")).await;
    assert!(other_port.headers.get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_follows_permitted_origins() {
    let host =
        InProcess::start("", "", &[("PERMITTED_CORS_ORIGINS", "https://app.example.com, https://other.example")]);
    let from = |origin: &str| Request::get("/alive").header("origin", origin).body(Body::empty()).unwrap();
    let r = host.send(from("https://app.example.com")).await;
    assert_eq!(r.headers["access-control-allow-origin"], "https://app.example.com");
    let r = host.send(from("http://localhost:3001")).await;
    assert!(r.headers.get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_input_gets_a_clear_4xx_and_writes_nothing() {
    let host = oss();
    host.post_json("/api/settings", &json!({ "language": "en" })).await;
    let before = std::fs::read(host.deployment.state_dir().join("settings.json")).unwrap();

    let json_post = |body: Vec<u8>| {
        Request::post("/api/settings").header("content-type", "application/json").body(Body::from(body)).unwrap()
    };
    let malformed = host.send(json_post(b"{\"language\": ".to_vec())).await;
    assert_eq!(malformed.status, 400);
    assert!(malformed.json()["error"].as_str().unwrap().starts_with("malformed JSON"), "{}", malformed.text);

    let not_utf8 = host.send(json_post(vec![0xff, 0xfe, 0x7b])).await;
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
        std::fs::read(host.deployment.state_dir().join("settings.json")).unwrap(),
        before,
        "a rejected request changed the file"
    );
    assert_eq!(host.post_json("/api/reset-settings", &json!({})).await.status, 410);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saas_mode_adds_openhands_saas_keys_to_the_options() {
    let host = InProcess::start(
        "app_mode = \"saas\"",
        "",
        &[
            ("GITHUB_APP_CLIENT_ID", "gh-client"),
            ("GITLAB_APP_CLIENT_ID", "gl-client"),
            ("GITHUB_APP_SLUG", "openhands-app"),
            ("ENABLE_JIRA", "true"),
            ("MAINTENANCE_START_TIME", "2026-12-01T00:00:00Z"),
            ("AUTH_URL", "https://auth.example.com"),
        ],
    );
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

/// The web client's files: an asset that exists is immutable for 30 days; a missing one is a
/// 404 (never the app's HTML under an asset's name), and the app's `index.html`, served for
/// the client's own routes, is never cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_asset_is_a_404_and_only_found_assets_are_cached() {
    let web = tempfile::tempdir().unwrap();
    std::fs::create_dir(web.path().join("assets")).unwrap();
    std::fs::write(web.path().join("index.html"), "<html>app</html>").unwrap();
    std::fs::write(web.path().join("assets/app-1a2b.js"), "console.log(1)").unwrap();
    let dir = web.path().display().to_string();
    let host = InProcess::start("", "", &[("FRONTEND_DIRECTORY", dir.as_str())]);
    let found = host.get("/assets/app-1a2b.js").await;
    assert_eq!((found.status, found.text.as_str()), (200, "console.log(1)"));
    assert_eq!(found.headers["cache-control"], "public, max-age=2592000, immutable");
    let missing = host.get("/assets/app-9z9z.js").await;
    assert_eq!(missing.status, 404, "{}", missing.text);
    assert!(!missing.text.contains("<html>"), "{}", missing.text);
    assert_eq!(missing.headers["cache-control"], "no-cache, no-store, must-revalidate, max-age=0");
    let route = host.get("/conversations/abc").await;
    assert_eq!((route.status, route.text.as_str()), (200, "<html>app</html>"));
    assert_eq!(route.headers["cache-control"], "no-cache, no-store, must-revalidate, max-age=0");
}
