//! A newcomer's first hour, as tests: the README's commands as written, the CLI's help, the
//! start-up banner, a clean Ctrl-C, `check` that finds a missing database, socket.io actions
//! sent right after connecting, and the PostgreSQL key rotation steps of the README.

use oh_e2e::conversation::{agent_says, create};
use oh_e2e::{
    llm::{FakeLlm, Reply},
    pg::TestDb,
    sio::{is_state, SioClient},
    workspace, Deployment, TestHost,
};
use serde_json::{json, Value};
use std::{process::Command, time::Duration};

const WAIT: Duration = Duration::from_secs(20);

const MANAGER: &str = "[extensions.conversation_manager]\nlibrary = \"standalone_manager\"\n\
                       implementation = \"StandaloneConversationManager\"\n\
                       config = { llm_retry_initial_ms = 20, llm_chunk_timeout_secs = 2 }\n";

async fn configure(host: &TestHost, llm: &FakeLlm) {
    let r = host
        .post_json(
            "/api/settings",
            &json!({ "llm_model": "fake-model", "llm_base_url": llm.base_url, "llm_api_key": "sk-test" }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// The `sh` code blocks of a README section (from its `## title` to the next `## `).
fn readme_blocks(title: &str) -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let section = readme.split("\n## ").find(|s| s.starts_with(title)).unwrap_or_else(|| panic!("no ## {title}"));
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in section.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```sh") => current = Some(Vec::new()),
            (Some(_), l) if l.starts_with("```") => blocks.push(current.take().unwrap()),
            (Some(b), _) => b.push(line.to_owned()),
            _ => {}
        }
    }
    blocks
}

/// Runs one shell command line; its stdout.
fn bash(line: &str, env: &[(&str, &str)]) -> String {
    let (ok, output) = bash_status(line, env);
    assert!(ok, "`{line}` failed:\n{output}");
    output.split_once("\n--- stderr ---\n").map_or(output.clone(), |(stdout, _)| stdout.to_owned())
}

/// Runs shell lines (stopping at the first failure): whether all succeeded, and their stdout
/// then stderr.
fn bash_status(lines: &str, env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{lines}"))
        .current_dir(workspace())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), format!("{stdout}\n--- stderr ---\n{stderr}"))
}

#[tokio::test]
async fn the_readme_try_it_commands_work_as_written() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "");
    let host = d.start();
    let address = host.base.trim_start_matches("http://").to_owned();
    let admin = host.admin.as_deref().unwrap().trim_start_matches("http://").to_owned();
    let block = readme_blocks("What `make run` serves").remove(0);
    let mut answers = Vec::new();
    for line in block.iter().filter(|l| l.starts_with("curl")) {
        let line = line.replace("localhost:3000", &address).replace("localhost:9464", &admin);
        let out = bash(&line, &[]);
        let answer: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("`{line}`: not JSON ({e}): {out}"));
        assert!(answer.get("error").is_none(), "`{line}` answered an error: {answer}");
        answers.push(answer);
    }
    assert!(answers.len() >= 6, "{answers:?}");
    let settings = answers.iter().find(|a| a.get("llm_api_key_set").is_some()).expect("GET /api/settings");
    assert_eq!((settings["llm_api_key"].clone(), settings["llm_api_key_set"].clone()), (Value::Null, json!(true)));
    assert!(answers.iter().any(|a| a["custom_secrets"] == json!([{ "name": "GITHUB_TOKEN", "description": null }])));
}

#[test]
fn help_is_per_command_and_unknown_commands_are_refused() {
    let run = |args: &[&str]| {
        let out = Command::new(oh_e2e::host_binary()).args(args).output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (status, help, _) = run(&["help"]);
    assert!(status.success());
    for command in ["serve", "check", "plugins", "migrate", "rotate-keys"] {
        assert!(help.contains(command), "`{command}` missing from help:\n{help}");
    }
    assert!(help.contains("RUST_LOG"), "{help}");
    let (_, check, _) = run(&["check", "--help"]);
    let (_, rotate, _) = run(&["help", "rotate-keys"]);
    assert!(check.contains("health") && rotate.contains("OH_PREVIOUS_MASTER_KEYS"), "{check}\n{rotate}");
    assert_ne!(check, rotate);
    let (status, _, stderr) = run(&["bogus"]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("unrecognized subcommand 'bogus'"), "{stderr}");
}

#[tokio::test]
async fn the_banner_names_the_plugins_and_the_state_dir_and_bind_is_overridable() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let host = d.start_with(&["--bind", &format!("127.0.0.1:{port}")], &[]);
    assert_eq!(host.base, format!("http://127.0.0.1:{port}"));
    assert!(host.log().contains(&format!("state_dir={}", d.state_dir().display())), "{}", host.log());
    // The banner's plugin lines follow the "listening" line the harness waits for.
    for line in [
        "settings_store         file_stores::FileSettingsStore",
        "user_auth              default_auth::DefaultUserAuth",
    ] {
        let log = host.log_containing(line, Duration::from_secs(5)).await;
        assert!(log.contains(line), "`{line}` missing from the banner:\n{log}");
    }
}

#[tokio::test]
async fn check_finds_a_missing_database_and_migrate_says_why() {
    let d = Deployment::new();
    d.install_bundled();
    let pg = "{ database_url = \"postgres://postgres@127.0.0.1:5432/oh_no_such_database\", master_key = \"check-master-key-0123456789\" }";
    d.write_profile(
        "",
        &format!(
            "[extensions.settings_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasSettingsStore\"\nconfig = {pg}\n"
        ),
    );
    let check = d.run_cli(&["check"]);
    check.assert_refused();
    assert!(check.stdout.contains("FAILED"), "{}", check.stdout);
    assert!(check.stdout.contains("database \"oh_no_such_database\" does not exist"), "{}", check.stdout);
    assert!(check.stdout.contains("createdb"), "{}", check.stdout);
    let migrate = d.run_cli(&["migrate"]);
    migrate.assert_refused();
    assert!(migrate.stdout.contains("database \"oh_no_such_database\" does not exist"), "{}", migrate.stdout);
}

#[tokio::test]
async fn an_action_sent_right_after_connecting_is_never_lost() {
    let llm = FakeLlm::start().await;
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", MANAGER);
    let host = d.start_with_env(&[("RUST_LOG", "info,oh_host::http::socket=debug,standalone_manager=debug")]);
    configure(&host, &llm).await;
    let id = create(&host, "first").await;
    let query = format!("conversation_id={id}&latest_event_id=-1");
    for i in 0..50 {
        let mut socket = SioClient::connect(&host.base, &query, &[]).await.unwrap();
        let text = format!("early {i}");
        socket.emit("oh_user_action", &json!({ "action": "message", "args": { "content": text } }));
        socket.until(WAIT, |e| agent_says(e, &format!("Echo: {text}."))).await;
        socket.close();
    }
    // And one that disconnects at once: what it sent is still delivered.
    let socket = SioClient::connect(&host.base, &query, &[]).await.unwrap();
    socket.emit("oh_user_action", &json!({ "action": "message", "args": { "content": "and gone" } }));
    socket.close();
    let mut found = false;
    // Up to 30 s: on a loaded machine the answer to the last message can take a while.
    for _ in 0..300 {
        let events = host.get(&format!("/api/conversations/{id}/events?start_id=0&limit=100&reverse=true")).await;
        if events.json()["events"].as_array().unwrap().iter().any(|e| agent_says(e, "Echo: and gone.")) {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found, "the action sent before disconnecting was lost:\n{}", host.log());
}

#[tokio::test]
async fn ctrl_c_with_a_live_conversation_stops_cleanly_and_stores_the_final_state() {
    let llm = FakeLlm::start().await;
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", MANAGER);
    let mut host = d.start();
    configure(&host, &llm).await;
    llm.push([Reply::Tokens { n: 400, gap: Duration::from_millis(20) }]);
    let id = create(&host, "a long answer, please").await;
    let mut socket =
        SioClient::connect(&host.base, &format!("conversation_id={id}&latest_event_id=-1"), &[]).await.unwrap();
    socket.until(WAIT, |e| e["action"] == "streaming_message").await;
    let status = host.interrupt();
    assert!(status.success(), "{status:?}\n{}", host.log());
    let log = host.log();
    assert!(!log.contains(" ERROR "), "ERROR lines on Ctrl-C:\n{log}");
    // Per-event lines are debug: at the default level the log does not list events.
    assert!(!log.contains("session event"), "{log}");
    drop(host);

    let host = d.start();
    let events = host.get(&format!("/api/conversations/{id}/events?limit=100")).await.json();
    let last = events["events"].as_array().unwrap().last().unwrap().clone();
    assert!(is_state(&last, "stopped"), "the last stored event is {last}");
}

#[tokio::test]
async fn the_readme_postgres_steps_and_key_rotation_work_as_written() {
    let db = TestDb::create().await;
    let blocks = readme_blocks("PostgreSQL");
    let (setup, rotate) = (&blocks[0], &blocks[1]);
    // The steps as written, on this test's database (created by the harness) and state dir.
    let state = tempfile::tempdir().unwrap();
    let base_env = [("OH_BIND", "127.0.0.1:0"), ("OH_STATE_DIR", state.path().to_str().unwrap())];
    let mut script = String::new();
    for line in setup {
        if line.starts_with("createdb") {
            continue; // the harness made the database
        }
        if line.starts_with("target/debug/oh-host --config") {
            break; // serving: started below
        }
        script.push_str(&line.replace("DB_NAME=openhands", &format!("DB_NAME={}", db.name)));
        script.push('\n');
    }
    script.push_str("echo \"$OH_MASTER_KEY\"\n");
    let first_key = bash(&script, &base_env).lines().last().unwrap().to_owned();
    assert_eq!(first_key.len(), 64, "{first_key}");

    let profile = workspace().join("examples/plugins.postgres.toml");
    let serve = |env: &[(&str, &str)]| {
        let d = Deployment::new();
        std::fs::copy(&profile, d.profile_path()).unwrap();
        let profile_text = std::fs::read_to_string(d.profile_path())
            .unwrap()
            .replace("../target/plugins", &workspace().join("target/plugins").display().to_string());
        std::fs::write(d.profile_path(), profile_text).unwrap();
        let mut all: Vec<(&str, &str)> = base_env.to_vec();
        all.extend_from_slice(env);
        all.extend([("DB_HOST", "127.0.0.1"), ("DB_NAME", db.name.as_str())]);
        (d.start_with_env(&all), d)
    };
    let (host, _d) = serve(&[("OH_MASTER_KEY", &first_key)]);
    for name in ["ROTATE_A", "ROTATE_B"] {
        let r = host.post_json("/api/secrets", &json!({ "name": name, "value": format!("{name}-value") })).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }

    // The whole block while that host still runs with only the old key: rotate-keys refuses,
    // names the host, and re-seals nothing (the host goes on reading).
    let shell_state = format!("export DB_HOST=127.0.0.1 DB_NAME={} OH_MASTER_KEY={first_key}\n", db.name);
    let refused = bash_status(&format!("{shell_state}{}", rotate.join("\n")), &base_env);
    assert!(!refused.0, "rotate-keys ran while a host lacked the new key:\n{}", refused.1);
    assert!(refused.1.contains("live host(s) on this database cannot read master key"), "{}", refused.1);
    assert!(refused.1.contains("OH_PREVIOUS_MASTER_KEYS"), "{}", refused.1);
    let listed = host.get("/api/secrets").await;
    assert_eq!(
        (listed.status, listed.json()["custom_secrets"].as_array().map(Vec::len)),
        (200, Some(2)),
        "{}",
        listed.text
    );

    // The block as the procedure: its first line, then step 1 (restart with both keys), then
    // the rest, from the same shell state.
    let (export, rest) = rotate.split_first().unwrap();
    assert!(export.starts_with("export OH_PREVIOUS_MASTER_KEYS="), "{export}");
    let keys = bash(&format!("{shell_state}{export}\necho \"$OH_MASTER_KEY $OH_PREVIOUS_MASTER_KEYS\""), &base_env);
    let (new_key, previous) = keys.trim().split_once(' ').unwrap();
    assert_eq!(previous, first_key);
    assert_ne!(new_key, first_key);
    drop(host);
    let (host, _d) = serve(&[("OH_MASTER_KEY", new_key), ("OH_PREVIOUS_MASTER_KEYS", previous)]);
    let mut script = format!("{shell_state}export OH_MASTER_KEY={new_key} OH_PREVIOUS_MASTER_KEYS={previous}\n");
    for line in rest {
        script.push_str(line);
        script.push('\n');
    }
    let out = bash(&script, &base_env);
    let report = |store: &str| -> Value {
        let line = out.lines().find(|l| l.contains(store)).unwrap_or_else(|| panic!("no {store} in {out}"));
        serde_json::from_str(line.split_once("): ").unwrap().1).unwrap()
    };
    let secrets = report("SaasSecretsStore");
    assert_eq!((secrets["rotated"].as_u64(), secrets["remaining"].as_i64()), (Some(2), Some(0)), "{out}");
    assert_eq!(report("SaasSettingsStore")["remaining"], 0, "{out}");
    let listed = host.get("/api/secrets").await;
    assert_eq!(listed.status, 200, "the restarted host reads what was re-sealed: {}", listed.text);
    drop(host);

    // After rotation the old key is not needed; with only it, nothing reads.
    let (host, _d) = serve(&[("OH_MASTER_KEY", new_key)]);
    let listed = host.get("/api/secrets").await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert_eq!(listed.json()["custom_secrets"].as_array().unwrap().len(), 2, "{}", listed.text);
    drop(host);
    let (host, _d) = serve(&[("OH_MASTER_KEY", &first_key)]);
    assert_eq!(host.get("/api/secrets").await.status, 500);
}
