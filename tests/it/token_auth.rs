//! The third-party `TokenAuth` plugin (examples/token-auth), built on its own and dropped
//! into the plugins directory: per-user stores and the auth gate's error mapping.

use oh_e2e::{files_containing, sha256_hex, Deployment, TestHost};
use serde_json::json;

const ALICE: &str = "alice-token-7f3a";
const BOB: &str = "bob-token-19cd";

fn start() -> (Deployment, TestHost) {
    let d = Deployment::new();
    d.install_bundled();
    d.install("token_auth");
    d.write_profile(
        "",
        &format!(
            "[extensions.user_auth]\nlibrary = \"token_auth\"\nimplementation = \"TokenAuth\"\n\
             config = {{ tokens = [{{ user_id = \"alice\", sha256 = \"{}\" }}, {{ user_id = \"bob\", sha256 = \"{}\" }}] }}\n",
            sha256_hex(ALICE),
            sha256_hex(BOB)
        ),
    );
    let host = d.start();
    (d, host)
}

fn as_user(host: &TestHost, token: &str, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    let _ = host;
    req.bearer_auth(token)
}

#[tokio::test]
async fn missing_or_wrong_tokens_are_401() {
    let (_d, host) = start();
    let none = host.get("/api/settings").await;
    assert_eq!(none.status, 401);
    assert_eq!(none.json()["error"], "NoCredentialsError");
    assert_eq!(none.headers["www-authenticate"], "Bearer");
    let wrong = host.send(host.http.get(host.url("/api/settings")).bearer_auth("not-a-token")).await;
    assert_eq!((wrong.status, wrong.json()["error"].as_str()), (401, Some("UNAUTHENTICATED")));
    // Public routes stay public.
    assert_eq!(host.get("/api/options/config").await.status, 200);
    assert_eq!(host.get("/alive").await.status, 200);
}

#[tokio::test]
async fn each_user_has_their_own_settings_and_secrets() {
    let (d, host) = start();
    let post = |token: &str, path: &str, body: serde_json::Value| {
        as_user(&host, token, host.http.post(host.url(path)).json(&body))
    };
    let get = |token: &str, path: &str| as_user(&host, token, host.http.get(host.url(path)));

    assert_eq!(
        host.send(post(ALICE, "/api/settings", json!({ "llm_model": "alice-model", "llm_api_key": "sk-alice-xyz" })))
            .await
            .status,
        200
    );
    assert_eq!(
        host.send(post(ALICE, "/api/secrets", json!({ "name": "ALICE_ONLY", "value": "alice-secret-v" }))).await.status,
        201
    );

    assert_eq!(host.send(get(ALICE, "/api/settings")).await.json()["llm_model"], "alice-model");
    assert_eq!(host.send(get(BOB, "/api/settings")).await.status, 404);
    assert_eq!(host.send(get(BOB, "/api/secrets")).await.json(), json!({ "custom_secrets": [] }));
    let bob_delete = host.send(as_user(&host, BOB, host.http.delete(host.url("/api/secrets/ALICE_ONLY")))).await;
    assert_eq!(bob_delete.status, 404);
    assert_eq!(host.send(get(ALICE, "/api/secrets")).await.json()["custom_secrets"][0]["name"], "ALICE_ONLY");

    assert!(d.state_dir().join("users/alice/settings.json").exists());
    assert!(d.state_dir().join("users/alice/secrets.json").exists());
    assert!(!d.state_dir().join("users/bob/settings.json").exists());
    assert!(!d.state_dir().join("settings.json").exists(), "per-user stores must not write the single-user file");
    assert!(files_containing(&d.state_dir(), "sk-alice-xyz").is_empty());
    assert!(files_containing(&d.state_dir(), "alice-secret-v").is_empty());
}

/// An outside author's build: the example copied out of the repository, with nothing changed
/// but its dependency on the SDK (a path to a checkout of this repository), builds on its own
/// and loads into the host (README: "Write your own plugin").
#[test]
fn the_example_builds_outside_the_repository_and_loads() {
    let outside = tempfile::tempdir().unwrap();
    let example = oh_e2e::workspace().join("examples/token-auth");
    std::fs::create_dir_all(outside.path().join("src")).unwrap();
    for file in ["Cargo.lock", "src/lib.rs"] {
        std::fs::copy(example.join(file), outside.path().join(file)).unwrap();
    }
    let sdk = oh_e2e::workspace().join("plugin-api/sdk");
    let manifest = std::fs::read_to_string(example.join("Cargo.toml")).unwrap();
    let dependency = "plugin-sdk = { path = \"../../plugin-api/sdk\" }";
    assert!(manifest.contains(dependency), "the example's dependency line changed: update this test and the README");
    let manifest = manifest.replace(dependency, &format!("plugin-sdk = {{ path = {:?} }}", sdk.display().to_string()));
    std::fs::write(outside.path().join("Cargo.toml"), manifest).unwrap();
    // A target directory of its own, as an outside author has (sharing the host's would
    // rewrite target/debug/libtoken_auth.so while other tests copy it).
    let target = outside.path().join("target");
    let built = std::process::Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--manifest-path"])
        .arg(outside.path().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let d = Deployment::new();
    d.install_bundled();
    let lib = d.plugins_dir().join("libtoken_auth.so");
    std::fs::copy(target.join("debug/libtoken_auth.so"), &lib).unwrap();
    std::fs::set_permissions(&lib, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    d.write_profile("", "");
    let listed = d.run_cli(&["plugins"]);
    assert!(listed.stdout.contains("TokenAuth"), "{}{}", listed.stdout, listed.stderr);
}
