//! Reloading the profile in a running server (`oh-host reload`, SIGHUP): the next generation
//! is switched in while clients keep sending requests, none of which fails; a broken profile
//! is refused while the old one serves. (A replaced conversation manager with a live
//! conversation: `agent::a_replaced_manager_takes_over_the_conversation_without_a_reconnect`.)

use oh_e2e::{sha256_hex, Busy, Deployment, TestHost};
use serde_json::Value;
use std::time::Duration;

const TOKEN: &str = "alice-reload-token";

fn token_auth() -> String {
    format!(
        "[extensions.user_auth]\nlibrary = \"token_auth\"\nimplementation = \"TokenAuth\"\n\
         config = {{ tokens = [{{ user_id = \"alice\", sha256 = \"{}\" }}] }}\n",
        sha256_hex(TOKEN)
    )
}

/// `oh-host reload` against `host`'s admin listener.
fn reload(d: &Deployment, host: &TestHost) -> oh_e2e::CliOutput {
    d.run_cli(&["reload", "--admin", host.admin.as_deref().expect("an admin listener")])
}

async fn plugins(host: &TestHost) -> Value {
    host.admin_get("/internal/plugins").await.json()
}

#[tokio::test]
async fn user_auth_is_swapped_by_editing_the_profile_and_back_under_load() {
    let d = Deployment::new();
    d.install_bundled();
    d.install("token_auth");
    d.write_profile("", "");
    let host = d.start();
    let busy = Busy::start(&host, Some(TOKEN));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // DefaultUserAuth → TokenAuth: a request without the token is now refused.
    d.write_profile("", &token_auth());
    let out = reload(&d, &host);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("generation 2") && out.stdout.contains("replaced  extensions.user_auth"),
        "{}",
        out.stdout
    );
    assert_eq!(host.get("/api/settings").await.status, 401);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // And back.
    d.write_profile("", "");
    let out = reload(&d, &host);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(matches!(host.get("/api/settings").await.status, 200 | 404));
    tokio::time::sleep(Duration::from_millis(300)).await;

    busy.stop().await;
    let status = plugins(&host).await;
    assert_eq!((status["reloads"]["generation"].as_u64(), status["reloads"]["reloads"].as_u64()), (Some(3), Some(2)));
    let metrics = host.admin_get("/internal/metrics").await.text;
    assert!(metrics.contains("oh_plugin_generation 3") && metrics.contains("oh_reloads_total 2"), "{metrics}");
}

#[tokio::test]
async fn a_broken_profile_is_refused_with_every_problem_and_the_old_one_goes_on() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "");
    let host = d.start();
    let busy = Busy::start(&host, None);
    d.write_profile(
        "",
        "[extensions.user_auth]\nlibrary = \"default_auth\"\nimplementation = \"NoSuchAuth\"\n\
         [[extensions.monitoring]]\nlibrary = \"missing_lib\"\nimplementation = \"X\"\n",
    );
    let out = reload(&d, &host);
    assert!(!out.status.success());
    assert!(out.stderr.contains("reload refused"), "{}", out.stderr);
    assert!(out.stderr.contains("NoSuchAuth") && out.stderr.contains("missing_lib"), "every problem: {}", out.stderr);
    assert!(matches!(host.get("/api/settings").await.status, 200 | 404));
    let status = plugins(&host).await;
    assert_eq!((status["reloads"]["generation"].as_u64(), status["reloads"]["refused"].as_u64()), (Some(1), Some(1)));
    assert!(status["reloads"]["last_error"].as_str().unwrap().contains("NoSuchAuth"));

    // What cannot change in a running process is named.
    d.write_profile("max_body_bytes = 12345\n", "");
    let out = reload(&d, &host);
    assert!(!out.status.success() && out.stderr.contains("[server] max_body_bytes changed"), "{}", out.stderr);
    assert_eq!(plugins(&host).await["reloads"]["generation"].as_u64(), Some(1));
    busy.stop().await;
}

/// SIGHUP reloads; a library file replaced in place (other bytes, same name) is a new library,
/// loaded from its own private copy, and its instance is replaced; one whose file did not
/// change keeps its instance.
#[tokio::test]
async fn sighup_reloads_and_a_library_replaced_in_place_is_loaded_anew() {
    let d = Deployment::new();
    d.install_bundled();
    d.install_as("log_monitoring", "mon");
    let monitoring = "[[extensions.monitoring]]\nlibrary = \"mon\"\nimplementation = \"LogMonitoringListener\"\n";
    d.write_profile("", monitoring);
    let host = d.start();
    let busy = Busy::start(&host, None);
    let resident = plugins(&host).await["libraries_resident"].as_u64().unwrap();

    // The same file: nothing is loaded again, every instance is kept.
    let kill =
        |signal: &str| std::process::Command::new("kill").args([signal, &host.pid().to_string()]).status().unwrap();
    assert!(kill("-HUP").success());
    let status = wait_for_generation(&host, 2).await;
    assert_eq!(status["libraries_resident"].as_u64(), Some(resident));

    // A rebuilt file dropped over it (here: other bytes after the ELF image, which the
    // dynamic loader ignores).
    let lib = d.plugins_dir().join("libmon.so");
    let mut bytes = std::fs::read(&lib).unwrap();
    bytes.extend_from_slice(b"a rebuild");
    let tmp = d.plugins_dir().join("libmon.so.new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::rename(&tmp, &lib).unwrap();
    let out = reload(&d, &host);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("replaced  extensions.monitoring[0]"), "{}", out.stdout);
    let status = plugins(&host).await;
    assert_eq!(status["libraries_resident"].as_u64(), Some(resident + 1));
    let sha = oh_e2e::sha256_hex_file(&lib);
    assert!(status["libraries"].as_array().unwrap().iter().any(|l| l["name"] == "mon" && l["sha256"] == sha.as_str()));
    assert!(matches!(host.get("/api/settings").await.status, 200 | 404));
    busy.stop().await;
}

async fn wait_for_generation(host: &TestHost, generation: u64) -> Value {
    let started = std::time::Instant::now();
    loop {
        let status = plugins(host).await;
        if status["reloads"]["generation"].as_u64() == Some(generation) {
            return status;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no generation {generation}: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `routes` entry may change (its config, its timeout, a rebuilt library) when it declares
/// the same routes; one that would declare others is refused (the router is built at start).
#[tokio::test]
async fn a_routes_entry_reloads_when_its_routes_stay_the_same() {
    let d = Deployment::new();
    d.install_bundled();
    d.install("fixture_plugin");
    let routes = |extra: &str| {
        format!("[[extensions.routes]]\nlibrary = \"fixture_plugin\"\nimplementation = \"FixtureRoutes\"\n{extra}")
    };
    d.write_profile("", &routes(""));
    let host = d.start();
    let busy = Busy::start(&host, None);
    assert_eq!(host.get("/fixture/echo/one").await.json()["echo"], "one");

    d.write_profile("", &routes("timeout_ms = 7000\n"));
    let out = reload(&d, &host);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("replaced  extensions.routes[0]"), "{}", out.stdout);
    assert_eq!(host.get("/fixture/echo/two").await.json()["echo"], "two");
    let instance = plugins(&host).await["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["extension"] == "extensions.routes[0]")
        .cloned();
    assert_eq!(instance.unwrap()["timeout_ms"], 7000);

    d.write_profile("", &routes("config = { clash = true }\n"));
    let out = reload(&d, &host);
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(out.stderr.contains("/api/settings"), "the clash is named: {}", out.stderr);
    assert_eq!(host.get("/fixture/echo/three").await.json()["echo"], "three");
    busy.stop().await;
}
