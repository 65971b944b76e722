//! Routes from a `routes` plugin: mounted with or without the auth gate, bodies forwarded,
//! a panicking handler fails its request only, and a route that takes a host path is refused.

use oh_e2e::{sha256_hex, Deployment};
use serde_json::json;

const TOKEN: &str = "routes-test-token";

fn deployment(config: &str) -> Deployment {
    let d = Deployment::new();
    d.install_bundled();
    d.install("token_auth");
    d.install("fixture_plugin");
    d.write_profile(
        "",
        &format!(
            "[[extensions.routes]]\nlibrary = \"fixture_plugin\"\nimplementation = \"FixtureRoutes\"\nconfig = {config}\n\
             [extensions.user_auth]\nlibrary = \"token_auth\"\nimplementation = \"TokenAuth\"\n\
             config = {{ tokens = [{{ user_id = \"carol\", sha256 = \"{}\" }}] }}\n",
            sha256_hex(TOKEN)
        ),
    );
    d
}

#[tokio::test]
async fn plugin_routes_are_served_with_and_without_auth() {
    let d = deployment("{}");
    let mut host = d.start();
    let echo = host.get("/fixture/echo/hello?x=1").await;
    assert_eq!((echo.status, echo.json()), (200, json!({ "echo": "hello", "query": "x=1" })));
    assert_eq!(echo.headers["content-type"], "application/json");

    let anonymous = host.send(host.http.post(host.url("/api/fixture/whoami")).body("hi")).await;
    assert_eq!(anonymous.status, 401);
    let who = host.send(host.http.post(host.url("/api/fixture/whoami")).bearer_auth(TOKEN).body("hi")).await;
    assert_eq!(who.json(), json!({ "user_id": "carol", "body": "hi" }));
    assert_eq!(host.send(host.http.get(host.url("/api/fixture/whoami")).bearer_auth(TOKEN)).await.status, 405);

    let panic = host.get("/fixture/panic").await;
    assert_eq!((panic.status, panic.json()["code"].as_str()), (500, Some("PANICKED")));
    assert!(host.alive());
    assert_eq!(host.get("/fixture/echo/again").await.status, 200);
}

#[test]
fn a_route_that_takes_a_host_path_is_refused_at_start() {
    let d = deployment("{ clash = true }");
    let out = d.run_cli(&["check"]);
    out.assert_refused();
    assert!(out.stderr.contains("route `/api/settings` overlaps the host's own `/api/settings`"), "{}", out.stderr);
}
