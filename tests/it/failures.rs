//! Every way a plugin can be broken: the exact message the operator sees, and a host that
//! does not crash (start-up refused cleanly, or one request failed and the next served).

use oh_e2e::{Deployment, TestHost};
use serde_json::json;
use std::{fs, os::unix::fs::PermissionsExt, time::Duration};

/// A deployment with the bundled plugins plus `settings_store` = `entry`.
fn with_settings_store(entry: &str) -> Deployment {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", &format!("[extensions.settings_store]\n{entry}\n"));
    d
}

fn refused(d: &Deployment) -> String {
    let out = d.run_cli(&["check"]);
    out.assert_refused();
    // The same profile refused by `serve`, before binding any port.
    let serve = d.run_cli(&[]);
    serve.assert_refused();
    assert!(!serve.stderr.contains("listening on"), "{}", serve.stderr);
    out.stderr
}

#[test]
fn missing_library_file() {
    let d = with_settings_store("library = \"ghost\"\nimplementation = \"X\"");
    let err = refused(&d);
    assert!(err.contains("extensions.settings_store: library `ghost` not found"), "{err}");
    assert!(err.contains("libghost.so") && err.contains("make plugins"), "{err}");
}

#[test]
fn not_an_abi_stable_library() {
    let d = with_settings_store("library = \"plain\"\nimplementation = \"X\"");
    d.install_as("not_abi_stable", "plain");
    let err = refused(&d);
    assert!(err.contains("libplain.so is not an oh-host plugin: it exports no abi_stable root module"), "{err}");
}

/// A library built against a newer minor than the host's may call what this host lacks: it is
/// refused, naming both versions, the rule and the fix.
#[test]
fn a_plugin_newer_than_the_host_is_refused_naming_both_versions() {
    let d = with_settings_store("library = \"old\"\nimplementation = \"X\"");
    d.install_as("old_api_plugin", "old");
    let err = refused(&d);
    let (major, minor) = (plugin_api::API_MAJOR, plugin_api::API_MINOR);
    assert!(
        err.contains(&format!(
            "was built for plugin-api {major}.99, but this host speaks plugin-api {major}.{minor} and loads libraries built for {major}.0 to {major}.{minor}"
        )),
        "{err}"
    );
    assert!(err.contains("upgrade the host"), "{err}");
}

#[test]
fn panic_abort_builds_are_refused() {
    let d = with_settings_store("library = \"abort\"\nimplementation = \"X\"");
    d.install_as("old_api_plugin", "abort");
    let out = d.run_cli_env(&["check"], &[("OH_FIXTURE_CLAIM", "abort")]);
    out.assert_refused();
    assert!(out.stderr.contains("libabort.so was built with panic = \"abort\""), "{}", out.stderr);
    assert!(out.stderr.contains("rebuild it with panic = \"unwind\""), "{}", out.stderr);
}

#[test]
fn implementation_absent_from_the_library() {
    let d = with_settings_store("library = \"fixture_plugin\"\nimplementation = \"Nope\"");
    d.install("fixture_plugin");
    let err = refused(&d);
    assert!(err.contains("has no settings_store implementation named `Nope`"), "{err}");
    assert!(err.contains("for settings_store it offers: PanicOnCall, Crash, Hang, StrictConfig, PanicInInit"), "{err}");
}

#[test]
fn implementation_offered_for_another_extension_point() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "[extensions.user_auth]\nlibrary = \"file_stores\"\nimplementation = \"FileSettingsStore\"\n");
    let err = refused(&d);
    assert!(err.contains("extensions.user_auth: library `file_stores`"), "{err}");
    assert!(
        err.contains("has no user_auth implementation named `FileSettingsStore`; it implements settings_store instead"),
        "{err}"
    );
}

#[test]
fn plugin_rejects_its_config_and_the_message_surfaces() {
    let d = with_settings_store(
        "library = \"fixture_plugin\"\nimplementation = \"StrictConfig\"\nconfig = { path = \"relative\" }",
    );
    d.install("fixture_plugin");
    let err = refused(&d);
    assert!(err.contains("extensions.settings_store: StrictConfig"), "{err}");
    assert!(err.contains("rejected its config: INVALID_CONFIG: path `relative` must be absolute"), "{err}");

    d.write_profile("", "[extensions.settings_store]\nlibrary = \"fixture_plugin\"\nimplementation = \"StrictConfig\"\nconfig = { path = \"/x\", colour = \"red\" }\n");
    let err = refused(&d);
    assert!(err.contains("unknown field `colour`"), "{err}");
}

#[test]
fn panic_while_building_an_instance() {
    let d = with_settings_store("library = \"fixture_plugin\"\nimplementation = \"PanicInInit\"");
    d.install("fixture_plugin");
    let err = refused(&d);
    assert!(err.contains("PanicInInit"), "{err}");
    assert!(
        err.contains("failed to start: PANICKED: plugin panicked: fixture: constructor panicked on purpose"),
        "{err}"
    );
}

#[test]
fn sha256_pin_mismatch() {
    let d = with_settings_store(&format!(
        "library = \"file_stores\"\nimplementation = \"FileSettingsStore\"\nsha256 = \"{}\"",
        "0".repeat(64)
    ));
    let err = refused(&d);
    assert!(err.contains("but the profile pins 0000000000"), "{err}");
    assert!(err.contains("refusing to load it"), "{err}");
    // The right pin loads.
    let real = oh_e2e::sha256_hex_file(&d.plugins_dir().join("libfile_stores.so"));
    d.write_profile("", &format!("[extensions.settings_store]\nlibrary = \"file_stores\"\nimplementation = \"FileSettingsStore\"\nsha256 = \"{real}\"\n"));
    let ok = d.run_cli(&["check"]);
    assert!(ok.status.success(), "{}", ok.stderr);
}

#[test]
fn library_in_a_world_writable_directory() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "");
    fs::set_permissions(d.plugins_dir(), fs::Permissions::from_mode(0o777)).unwrap();
    let err = refused(&d);
    assert!(err.contains("is writable by every user (mode 777)"), "{err}");
    assert!(err.contains("chmod o-w"), "{err}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile(
        "",
        "[extensions.settings_store]\nlibrary = \"ghost\"\nimplementation = \"X\"\n\
         [extensions.user_auth]\nlibrary = \"file_stores\"\nimplementation = \"Nope\"\n",
    );
    let err = refused(&d);
    assert!(err.contains("2 problems"), "{err}");
    assert!(err.contains("library `ghost` not found") && err.contains("named `Nope`"), "{err}");
}

fn start_fixture(implementation: &str, timeout: &str) -> (Deployment, TestHost) {
    let d =
        with_settings_store(&format!("library = \"fixture_plugin\"\nimplementation = \"{implementation}\"\n{timeout}"));
    d.install("fixture_plugin");
    let host = d.start();
    (d, host)
}

#[tokio::test]
async fn panic_in_a_method_fails_that_request_only() {
    let (_d, mut host) = start_fixture("PanicOnCall", "");
    assert_eq!(host.post_json("/api/settings", &json!({ "language": "panic" })).await.status, 200);
    let r = host.get("/api/settings").await;
    assert_eq!(r.status, 500, "{}", r.text);
    assert_eq!(r.json()["code"], "PANICKED");
    assert!(r.json()["error"].as_str().unwrap().contains("fixture_plugin::PanicOnCall"), "{}", r.text);
    // The next requests are served, by the same process: other plugins, and this one again
    // (which still panics on this stored document, and still answers 500).
    assert!(host.alive());
    assert_eq!(host.get("/alive").await.status, 200);
    assert_eq!(host.get("/api/secrets").await.status, 200);
    assert_eq!(host.get("/api/settings").await.status, 500);
    assert!(host.alive());
    // The instance is marked unhealthy.
    let ready = host.get("/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.text);
    assert!(host.log().contains("fixture: load panicked on purpose"), "{}", host.log());
}

#[tokio::test]
async fn a_hanging_method_times_out_with_504() {
    let (_d, mut host) = start_fixture("Hang", "timeout_ms = 300");
    host.post_json("/api/settings", &json!({ "language": "hang" })).await;
    let started = std::time::Instant::now();
    let r = host.get("/api/settings").await;
    assert_eq!(r.status, 504, "{}", r.text);
    assert_eq!(r.json()["code"], "DEADLINE_EXCEEDED");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(host.alive());
    assert_eq!(host.get("/alive").await.status, 200);
    assert_eq!(host.get("/api/secrets").await.status, 200);
    // POST loads the stored settings first (to merge), so it times out too, in bounded time.
    assert_eq!(host.post_json("/api/settings", &json!({ "language": "en" })).await.status, 504);
    let timeouts = host.admin_get("/internal/plugins").await.json()["instances"][0]["stats"]["timeouts"].as_u64();
    assert_eq!(timeouts, Some(2));
}

/// A library overwritten in place under a running server (a new build dropped into the
/// plugins directory, as the README invites) does not crash it: the server runs a sealed
/// private copy of what it loaded, and keeps serving under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_library_overwritten_in_place_under_load_does_not_crash_the_server() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "");
    let mut host = d.start();
    assert_eq!(host.post_json("/api/settings", &json!({ "language": "en" })).await.status, 200);
    let loaded = d.plugins_dir().join("libfile_stores.so");
    let replacement = std::fs::read(d.plugins_dir().join("liblog_monitoring.so")).unwrap();
    let started = std::time::Instant::now();
    let mut overwritten = false;
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(3) {
        if !overwritten && started.elapsed() > Duration::from_millis(500) {
            // In place: the same inode, new bytes (what `cp new.so old.so` does).
            std::fs::write(&loaded, &replacement).unwrap();
            overwritten = true;
        }
        let (a, b) = tokio::join!(host.get("/api/settings"), host.get("/api/conversations"));
        assert_eq!((a.status, b.status), (200, 200), "{} {}", a.text, b.text);
        served += 2;
    }
    assert!(overwritten && served > 20, "{served} requests");
    assert!(host.alive(), "the server died: {}", host.log());
}
