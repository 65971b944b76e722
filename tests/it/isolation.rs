//! `isolation = "process"` as an operator meets it: a runner killed under load, a plugin that
//! segfaults, runaway CPU and memory, a runner that cannot start. Each against a real host
//! with the runner as its own process.

use oh_e2e::{Deployment, TestHost};
use serde_json::{json, Value};
use std::{
    os::unix::process::ExitStatusExt as _,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

fn settings_entry(library: &str, implementation: &str, extra: &str) -> String {
    format!(
        "[extensions.settings_store]\nlibrary = \"{library}\"\nimplementation = \"{implementation}\"\nisolation = \"process\"\n{extra}\n"
    )
}

/// The settings store's instance in `/internal/plugins`.
async fn settings_instance(host: &TestHost) -> Value {
    let plugins = host.admin_get("/internal/plugins").await.json();
    let instances = plugins["instances"].as_array().unwrap().clone();
    instances.into_iter().find(|i| i["extension_point"] == "settings_store").unwrap()
}

async fn runner_pid(host: &TestHost) -> u32 {
    let instance = settings_instance(host).await;
    instance["isolation"]["pid"].as_u64().unwrap_or_else(|| panic!("no runner pid in {instance}")) as u32
}

fn kill(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// A 503 that names the plugin, as every failed call while the runner is down must be.
fn assert_names_the_plugin(status: u16, body: &str) {
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    let error = v["error"].as_str().unwrap_or_default();
    assert!(error.contains("extensions.settings_store"), "the error must name the plugin: {body}");
}

/// Waits until the store answers GET /api/settings again (200, or 404 from a store that
/// kept nothing); how long it took.
async fn until_served(host: &TestHost, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let r = host.get("/api/settings").await;
        if r.status == 200 || r.status == 404 {
            return start.elapsed();
        }
        assert_names_the_plugin(r.status, &r.text);
        assert!(start.elapsed() < within, "not served again within {within:?}: {}", r.text);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_under_load_fails_only_the_calls_in_flight_and_loses_nothing_acknowledged() {
    let d = Deployment::outside_tmp();
    d.install_bundled();
    d.write_profile("", &settings_entry("file_stores", "FileSettingsStore", ""));
    let host = Arc::new(d.start());
    host.wait_ready().await;
    let first_pid = runner_pid(&host).await;
    assert_eq!(host.post_json("/api/settings", &json!({ "llm_model": "model-0" })).await.status, 200);

    // One writer storing model-1, model-2, ... (each acknowledged write remembered), and
    // readers, until a while after the kill.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let refused: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
    let writer = {
        let (host, stop, acked, refused) = (host.clone(), stop.clone(), acked.clone(), refused.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let r = host.post_json("/api/settings", &json!({ "llm_model": format!("model-{n}") })).await;
                if r.status == 200 {
                    acked.store(n, Ordering::SeqCst);
                } else {
                    refused.lock().unwrap().push((r.status, r.text));
                }
            }
            n
        })
    };
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (host, stop, refused) = (host.clone(), stop.clone(), refused.clone());
            tokio::spawn(async move {
                let mut served = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let r = host.get("/api/settings").await;
                    if r.status == 200 {
                        served += 1;
                    } else {
                        refused.lock().unwrap().push((r.status, r.text));
                    }
                }
                served
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kill = acked.load(Ordering::SeqCst);
    assert!(before_kill > 0, "no write acknowledged before the kill");
    kill(first_pid, "KILL");
    let recovered = until_served(&host, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let attempted = writer.await.unwrap();
    let mut served = 0;
    for r in readers {
        served += r.await.unwrap();
    }

    // Only what was in flight or sent while the runner was down failed, each a 503 naming it.
    let refused = refused.lock().unwrap().clone();
    assert!(!refused.is_empty(), "the kill failed nothing: was the runner killed?");
    for (status, body) in &refused {
        assert_names_the_plugin(*status, body);
    }
    assert!(served > 0);
    // Acknowledged means stored: the last acknowledged write, or the one after it (sent,
    // stored, its answer lost with the runner), is what a reader gets.
    let last = acked.load(Ordering::SeqCst);
    assert!(last > before_kill, "no write acknowledged after the restart");
    let model = host.get("/api/settings").await.json()["llm_model"].as_str().unwrap().to_owned();
    let n: u64 = model.trim_start_matches("model-").parse().unwrap();
    assert!(n == last || (n == last + 1 && n <= attempted), "stored {model}, last acknowledged model-{last}");

    let instance = settings_instance(&host).await;
    assert_eq!(instance["isolation"]["restarts"], 1, "{instance}");
    assert_ne!(instance["isolation"]["pid"].as_u64(), Some(first_pid as u64));
    let metrics = host.admin_get("/internal/metrics").await.text;
    assert!(metrics.contains("oh_plugin_runner_restarts_total{key=\"extensions.settings_store\"} 1"), "{metrics}");
    eprintln!("served again {recovered:?} after kill -9; {} calls failed, {served} reads served", refused.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segfault_fails_one_request_when_isolated_and_takes_the_host_down_in_process() {
    let d = Deployment::outside_tmp();
    d.install_bundled();
    d.install("fixture_plugin");
    d.write_profile("", &settings_entry("fixture_plugin", "Crash", ""));
    let mut host = d.start();
    assert_eq!(host.post_json("/api/settings", &json!({ "language": "crash" })).await.status, 200);
    let pid = runner_pid(&host).await;
    let r = host.get("/api/settings").await;
    assert_names_the_plugin(r.status, &r.text);
    assert!(host.alive(), "the host died with its plugin");
    until_served(&host, Duration::from_secs(5)).await;
    assert_ne!(runner_pid(&host).await, pid);
    assert!(host.log().contains("SIGSEGV"), "the log must say how the runner died");
    // /ready follows the runner: a crash makes it 503 until the runner is back.
    assert_eq!(host.get("/ready").await.status, 200);
    drop(host);

    // The same library in process: the segfault is the host's (documented in
    // docs/configuration.md, `isolation`).
    d.write_profile("", &settings_entry("fixture_plugin", "Crash", "").replace("isolation = \"process\"\n", ""));
    let mut host = d.start();
    assert_eq!(host.post_json("/api/settings", &json!({ "language": "crash" })).await.status, 200);
    let _ = host.http.get(host.url("/api/settings")).send().await;
    let status = host.wait_exit(Duration::from_secs(10)).expect("the host survived a segfault in process");
    assert_eq!(status.signal(), Some(11), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_runner_is_stopped_by_its_cpu_and_memory_bounds_and_restarted() {
    let d = Deployment::outside_tmp();
    d.install_bundled();
    d.install("fixture_plugin");
    for (language, bounds, death) in
        [("spin", "cpu_seconds = 1\ntimeout_ms = 30000", "SIGXCPU"), ("hog", "memory_mb = 1024", "SIGABRT")]
    {
        d.write_profile("", &settings_entry("fixture_plugin", "Crash", bounds));
        let mut host = d.start();
        assert_eq!(host.post_json("/api/settings", &json!({ "language": language })).await.status, 200);
        let started = Instant::now();
        let r = host.get("/api/settings").await;
        assert_names_the_plugin(r.status, &r.text);
        assert!(started.elapsed() < Duration::from_secs(20), "{language}: the bound took {:?}", started.elapsed());
        until_served(&host, Duration::from_secs(5)).await;
        assert!(host.alive());
        assert!(host.log().contains(death), "{language}: expected the runner to die of {death}:\n{}", host.log());
    }
}

#[test]
fn a_runner_that_cannot_start_stops_the_host_naming_the_entry_and_why() {
    let d = Deployment::new();
    d.install_bundled();
    // A library without the implementation: the runner's answer is the host's message.
    d.write_profile("", &settings_entry("file_stores", "NoSuchStore", ""));
    let out = d.run_cli(&["check"]);
    out.assert_refused();
    assert!(out.stderr.contains("extensions.settings_store (file_stores::NoSuchStore)"), "{}", out.stderr);
    assert!(out.stderr.contains("has no settings_store implementation named `NoSuchStore`"), "{}", out.stderr);
    // A command that exits at once.
    d.write_profile(
        "",
        "[extensions.settings_store]\nisolation = \"process\"\ncommand = [\"false\"]\nimplementation = \"X\"\n",
    );
    let out = d.run_cli(&["check"]);
    out.assert_refused();
    assert!(out.stderr.contains("exited before connecting (exit status: 1)"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_routes_serve_requests_bodies_and_panics_and_come_back_after_a_kill() {
    let d = Deployment::outside_tmp();
    d.install_bundled();
    d.install("fixture_plugin");
    d.write_profile(
        "",
        "[[extensions.routes]]\nlibrary = \"fixture_plugin\"\nimplementation = \"FixtureRoutes\"\nisolation = \"process\"\n",
    );
    let mut host = d.start();
    let echo = host.get("/fixture/echo/hello?x=1").await;
    assert_eq!((echo.status, echo.json()), (200, json!({ "echo": "hello", "query": "x=1" })));
    assert_eq!(echo.headers["content-type"], "application/json");
    // A body, binary-safe, and the user the host's auth gate found.
    let body = "caf\u{e9} \u{1f600}";
    let whoami = host.send(host.http.post(host.url("/api/fixture/whoami")).body(body)).await;
    assert_eq!(whoami.json(), json!({ "user_id": "", "body": body }), "{}", whoami.text);
    // A panic in the handler is the runner's: one 500, the runner and the host go on.
    let plugins = host.admin_get("/internal/plugins").await.json();
    let routes = plugins["instances"].as_array().unwrap().iter().find(|i| i["extension_point"] == "routes").cloned();
    let pid = routes.unwrap()["isolation"]["pid"].as_u64().unwrap() as u32;
    assert_eq!(host.get("/fixture/panic").await.status, 500);
    assert_eq!(host.get("/fixture/echo/again").await.status, 200);
    // Killed: 503 naming the entry, then served by a new runner.
    kill(pid, "KILL");
    let started = Instant::now();
    loop {
        let r = host.get("/fixture/echo/back").await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text);
        assert!(r.text.contains("extensions.routes[0] (fixture_plugin::FixtureRoutes)"), "{}", r.text);
        assert!(started.elapsed() < Duration::from_secs(5), "not back within 5 s: {}", r.text);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(host.alive());
}

/// A settings store that reports, as its health, what it could reach: a TCP port on the
/// host's loopback, a Unix socket of the host's, a file outside the state directory, one
/// inside.
const PROBE: &str = r#"
import json, os, socket, sys
sys.path.insert(0, sys.argv[1])
import settings_store as ss

def attempt(f):
    try:
        f()
        return "open"
    except OSError:
        return "blocked"

def unix(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.close()

def probe(state_dir):
    port = int(os.environ["OH_PROBE_PORT"])
    return {
        "loopback": attempt(lambda: socket.create_connection(("127.0.0.1", port), timeout=2).close()),
        "local_socket": attempt(lambda: unix(os.environ["OH_PROBE_UNIX"])),
        "write_outside": attempt(lambda: open(os.environ["OH_PROBE_OUTSIDE"], "w").close()),
        "write_state": attempt(lambda: open(os.path.join(state_dir, "probe"), "w").close()),
    }

sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(os.environ["OH_PLUGIN_SOCKET"])
start = ss.read_frame(sock)
ss.write_frame(sock, {"type": "ready", "protocol": 1, "name": "probe", "version": "0"})
while True:
    m = ss.read_frame(sock)
    if m is None or m.get("type") == "shutdown":
        break
    if m.get("type") != "call":
        continue
    if m["method"] == "health":
        answer = {"ok": {"detail": json.dumps(probe(start["state_dir"]))}}
    else:
        answer = {"error": {"code": 11, "message": "probe only"}}
    ss.write_frame(sock, {"type": "result", "id": m["id"], **answer})
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandboxed_runner_reaches_no_network_no_local_socket_and_no_file_outside_its_state() {
    let d = Deployment::outside_tmp();
    d.install_bundled();
    let script = d.dir.path().join("probe.py");
    std::fs::write(&script, PROBE).unwrap();
    let examples = oh_e2e::workspace().join("examples/python-settings-store");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    // A local socket where services keep theirs (a database's, Docker's), and a file outside
    // both the state directory and the places a sandbox empties.
    let unix_path = std::path::PathBuf::from(format!("/run/oh-probe-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&unix_path);
    let unix_listener = std::os::unix::net::UnixListener::bind(&unix_path).unwrap();
    let outside = oh_e2e::target_debug().join(format!("oh-probe-escaped-{}", std::process::id()));
    let env = [
        ("OH_PROBE_PORT", port.as_str()),
        ("OH_PROBE_OUTSIDE", outside.to_str().unwrap()),
        ("OH_PROBE_UNIX", unix_path.to_str().unwrap()),
    ];
    let mut seen = Vec::new();
    for sandboxed in [false, true] {
        let entry = format!(
            "[extensions.settings_store]\nisolation = \"process\"\nsandbox = {sandboxed}\nimplementation = \"Probe\"\ncommand = [\"python3\", \"{}\", \"{}\"]\n",
            script.display(),
            examples.display()
        );
        d.write_profile("", &entry);
        let _ = std::fs::remove_file(&outside);
        let host = d.start_with_env(&env);
        let ready = host.admin_get("/internal/ready").await.json();
        let settings =
            ready["plugins"].as_array().unwrap().iter().find(|p| p["extension"] == "extensions.settings_store");
        let detail = settings.unwrap_or_else(|| panic!("{ready}"))["detail"].as_str().unwrap().to_owned();
        let json_end = detail.rfind('}').unwrap();
        let probe: Value = serde_json::from_str(&detail[..=json_end]).unwrap_or_else(|e| panic!("{e}: {detail}"));
        seen.push((sandboxed, probe, outside.exists()));
    }
    let _ = std::fs::remove_file(&outside);
    drop(unix_listener);
    let _ = std::fs::remove_file(&unix_path);
    // Without the sandbox the probe reaches all three (so it measures something); with it,
    // none, and the state directory stays writable.
    let open = json!({ "loopback": "open", "local_socket": "open", "write_outside": "open", "write_state": "open" });
    let jailed =
        json!({ "loopback": "blocked", "local_socket": "blocked", "write_outside": "blocked", "write_state": "open" });
    assert_eq!(seen, [(false, open, true), (true, jailed, false)]);
}

/// The `oh-plugin-runner` processes whose parent is `pid`.
fn runners_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        // `pid (comm) state ppid ...`: the fields after the last `)`.
        let ppid = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1)).and_then(|p| p.parse().ok());
        let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
        if ppid == Some(pid) && String::from_utf8_lossy(&cmdline).contains("oh-plugin-runner") {
            found.push(child);
        }
    }
    found.sort();
    found
}

async fn reload(host: &TestHost) -> u16 {
    let admin = host.admin.clone().unwrap();
    host.send(host.http.post(format!("{admin}/internal/reload"))).await.status
}

/// Waits (5 s at most) until the host's runners are what `wanted` says.
async fn runners_until(host: &TestHost, what: &str, wanted: impl Fn(&[u32]) -> bool) -> Vec<u32> {
    let started = Instant::now();
    loop {
        let now = runners_of(host.pid());
        if wanted(&now) {
            return now;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{what}: runners are {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_keep_an_unchanged_runner_replace_a_changed_one_and_leave_none_behind_when_refused() {
    let d = Deployment::new();
    d.install_bundled();
    let isolated =
        |timeout: u32| settings_entry("file_stores", "FileSettingsStore", &format!("timeout_ms = {timeout}"));
    d.write_profile("", &isolated(5000));
    let host = d.start();
    let first = runners_until(&host, "one runner at start", |r| r.len() == 1).await;

    // Unchanged: the same runner goes on.
    assert_eq!(reload(&host).await, 200);
    assert_eq!(runners_of(host.pid()), first);

    // Changed, but the reload is refused (another entry is broken): the runner it started
    // for the new generation is gone, the active one serves.
    let broken = "[extensions.secrets_store]\nlibrary = \"file_stores\"\nimplementation = \"NoSuchStore\"\n";
    d.write_profile("", &(isolated(6000) + broken));
    assert_eq!(reload(&host).await, 422);
    runners_until(&host, "only the active runner after a refused reload", |r| r == first).await;
    assert!(matches!(host.get("/api/settings").await.status, 200 | 404));

    // Changed and accepted: a new runner serves, the old one exits.
    d.write_profile("", &isolated(6000));
    assert_eq!(reload(&host).await, 200);
    let after = runners_until(&host, "one new runner", |r| r.len() == 1 && r != first).await;
    assert_ne!(after, first);
    assert!(matches!(host.get("/api/settings").await.status, 200 | 404));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_cannot_restart_keeps_ready_at_503_saying_why_until_it_can() {
    let d = Deployment::outside_tmp();
    d.install_bundled();
    d.write_profile("", &settings_entry("file_stores", "FileSettingsStore", ""));
    let host = d.start();
    host.wait_ready().await;
    let pid = runner_pid(&host).await;
    // The library is broken on disk (a bad deploy): the restarts fail, with backoff.
    let library = d.plugins_dir().join("libfile_stores.so");
    let good = std::fs::read(&library).unwrap();
    std::fs::write(&library, b"not a library").unwrap();
    kill(pid, "KILL");
    let started = Instant::now();
    let detail = loop {
        let ready = host.admin_get("/internal/ready").await;
        let failing = ready.json()["plugins"].as_array().unwrap().iter().find(|p| p["ok"] == false).cloned();
        if ready.status == 503 && failing.as_ref().is_some_and(|f| f["error"].as_str().unwrap_or("").contains("down")) {
            break failing.unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{}", ready.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(detail["extension"], "extensions.settings_store", "{detail}");
    assert_eq!(host.get("/ready").await.status, 503);
    let r = host.get("/api/settings").await;
    assert_names_the_plugin(r.status, &r.text);
    // Fixed on disk: the next attempt (5 s apart at most) brings it back.
    std::fs::write(&library, good).unwrap();
    let started = Instant::now();
    while host.get("/ready").await.status != 200 {
        assert!(started.elapsed() < Duration::from_secs(10), "not ready again 10 s after the fix");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until_served(&host, Duration::from_secs(1)).await;
}
