//! `OpenHandsRuntime` against OpenHands 0.62.0's own action execution server (from the
//! virtual environment `make openhands-env` caches): spawned per conversation, attached by
//! URL, and started through a fake of OpenHands' remote runtime API that runs real servers
//! as local processes. The server imports for about 20 s here, so waits are long.

use oh_e2e::{
    conversation::create,
    llm::{FakeLlm, Reply},
    openhands::{self, ActionServer, FakeRuntimeApi},
    Deployment, TestHost,
};
use serde_json::{json, Value};
use std::time::Duration;

/// The manager, and `OpenHandsRuntime` with `config` (the inside of its table).
fn profile(config: &str) -> String {
    format!(
        "[extensions.conversation_manager]\nlibrary = \"standalone_manager\"\nimplementation = \"StandaloneConversationManager\"\n\
         config = {{ llm_retry_initial_ms = 20, llm_chunk_timeout_secs = 5, llm_timeout_secs = 30 }}\n\
         [extensions.runtime]\nlibrary = \"openhands_runtime\"\nimplementation = \"OpenHandsRuntime\"\ntimeout_ms = 60000\n\
         config = {{ startup_timeout_secs = 240, {config} }}\n"
    )
}

fn toml_list(items: &[String]) -> String {
    format!("[{}]", items.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", "))
}

/// `spawn` = the server from the virtual environment, on `{port}` in `{workspace}`.
fn spawned() -> String {
    format!("spawn = {}", toml_list(&openhands::server_argv("{port}", "{workspace}")))
}

async fn deployment(config: &str) -> (Deployment, TestHost, FakeLlm) {
    deployment_with(&profile(config)).await
}

/// `profile` with the runtime in a process of its own (`isolation = "process"`).
fn isolated(profile: String) -> String {
    profile.replace("timeout_ms = 60000\n", "timeout_ms = 60000\nisolation = \"process\"\n")
}

async fn deployment_with(profile: &str) -> (Deployment, TestHost, FakeLlm) {
    let llm = FakeLlm::start().await;
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", profile);
    // A secret in the host's environment, which no sandbox may see.
    let host = d.start_with_env(&[("OH_SECRET_PROBE", "leaked-from-the-host")]);
    let settings = json!({ "llm_model": "fake-model", "llm_base_url": llm.base_url, "llm_api_key": "sk-test-key" });
    assert_eq!(host.post_json("/api/settings", &settings).await.status, 200);
    (d, host, llm)
}

/// The conversation's events once `done` holds for them (up to 4 minutes: servers start
/// slowly on a loaded machine).
async fn events_until(host: &TestHost, id: &str, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    oh_e2e::conversation::events_until(host, id, what, Duration::from_secs(240), done).await
}

fn finished(events: &[Value]) -> bool {
    events.iter().any(|e| e["observation"] == "agent_state_changed" && e["extras"]["agent_state"] == "finished")
}

/// The `run` observations' contents, in order.
fn outputs(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["observation"] == "run")
        .map(|e| e["content"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Processes whose command line contains `pattern`.
fn running(pattern: &str) -> String {
    let out = std::process::Command::new("pgrep").args(["-a", "-f", pattern]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits (20 s at most) until nothing runs whose command line contains `pattern`.
async fn none_left(pattern: &str) {
    let started = std::time::Instant::now();
    loop {
        let left = running(pattern);
        if left.is_empty() {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "left running: {left}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_server_runs_the_agents_tools_serves_the_workspace_and_ends_with_its_conversation() {
    let (d, host, llm) = deployment(&spawned()).await;
    llm.push([
        Reply::Tools(vec![(
            "str_replace_editor".into(),
            json!({ "command": "create", "path": "notes/hello.txt", "file_text": "hi from the agent\n" }),
        )]),
        Reply::Tools(vec![(
            "execute_bash".into(),
            json!({ "command": "cat notes/hello.txt && export GREETING=hey && echo done" }),
        )]),
        Reply::Tools(vec![(
            "execute_bash".into(),
            json!({ "command": "echo \"$GREETING from $(pwd) ${OH_SECRET_PROBE:-clean}\"" }),
        )]),
        Reply::Tools(vec![(
            "execute_bash".into(),
            json!({ "command": "echo 'name?'; read name; echo \"hello $name\"", "timeout": 2 }),
        )]),
        Reply::Tools(vec![("execute_bash".into(), json!({ "command": "Ada", "is_input": "true" }))]),
        Reply::Tools(vec![(
            "str_replace_editor".into(),
            json!({ "command": "str_replace", "path": "notes/hello.txt", "old_str": "hi", "new_str": "hello" }),
        )]),
        Reply::Tools(vec![(
            "execute_bash".into(),
            json!({ "command": "git add notes/hello.txt && git -c user.name=a -c user.email=a@example.com commit -qm one && echo more >> notes/hello.txt" }),
        )]),
        Reply::Tools(vec![("finish".into(), json!({ "message": "Done." }))]),
    ]);
    let id = create(&host, "make a note").await;
    let events = events_until(&host, &id, "the agent to finish", finished).await;
    let workspace = d.state_dir().join("openhands-workspaces").join(&id);
    let out = outputs(&events);
    assert_eq!(out.len(), 5, "{events:#?}");
    assert_eq!(out[0], "hi from the agent\ndone");
    // The shell's variables and directory carry over: one bash session per conversation.
    // (Nothing of the host's environment but PATH and the locale reaches the server.)
    assert_eq!(out[1], format!("hey from {} clean", workspace.display()));
    // A command waiting for input goes on, and takes the agent's input.
    assert!(out[2].contains("name?"), "{}", out[2]);
    assert!(out[3].contains("hello Ada"), "{}", out[3]);
    let run = |i: usize| events.iter().filter(|e| e["observation"] == "run").nth(i).unwrap().clone();
    assert_eq!(run(0)["extras"]["metadata"]["exit_code"], 0);
    assert_eq!(run(2)["extras"]["metadata"]["exit_code"], -1, "the waiting command is not over");
    assert_eq!(std::fs::read_to_string(workspace.join("notes/hello.txt")).unwrap(), "hello from the agent\nmore\n");

    // The web client's workspace routes go through the server.
    let base = format!("/api/conversations/{id}");
    assert_eq!(host.get(&format!("{base}/list-files")).await.json(), json!(["notes/"]));
    // (The editor's undo copy sits beside the file it edited, whatever the runtime.)
    let notes = host.get(&format!("{base}/list-files?path=notes")).await.json();
    assert!(notes.as_array().unwrap().contains(&json!("notes/hello.txt")), "{notes}");
    let file = host.get(&format!("{base}/select-file?file=notes/hello.txt")).await;
    assert_eq!(file.json(), json!({ "code": "hello from the agent\nmore\n" }), "{}", file.text);
    assert_eq!(host.get(&format!("{base}/select-file?file=../../../etc/passwd")).await.status, 400);
    assert_eq!(host.get(&format!("{base}/select-file?file=nope.txt")).await.status, 404);
    // A 200 MB sparse file: refused by its size, before any of it crosses the sandbox's shell.
    std::fs::File::create(workspace.join("big.bin")).unwrap().set_len(200 << 20).unwrap();
    let big = host.get(&format!("{base}/select-file?file=big.bin")).await;
    assert_eq!(big.status, 413, "{}", big.text);
    std::fs::remove_file(workspace.join("big.bin")).unwrap();
    let changes = host.get(&format!("{base}/git/changes")).await;
    let changed = changes.json();
    assert!(changed.as_array().unwrap().contains(&json!({ "status": "M", "path": "notes/hello.txt" })), "{changed}");
    // The committed version comes from git in the sandbox.
    let diff = host.get(&format!("{base}/git/diff?path=notes/hello.txt")).await;
    let expected = json!({ "modified": "hello from the agent\nmore\n", "original": "hello from the agent\n" });
    assert_eq!(diff.json(), expected, "{}", diff.text);
    let body = "--b0undary\r\nContent-Disposition: form-data; name=\"files\"; filename=\"data.csv\"\r\n\r\nx,y\n1,2\n\r\n--b0undary--\r\n";
    let uploaded = host
        .send(
            host.http
                .post(host.url(&format!("{base}/upload-files")))
                .header("content-type", "multipart/form-data; boundary=b0undary")
                .body(body),
        )
        .await;
    assert_eq!(uploaded.json()["uploaded_files"], json!(["data.csv"]), "{}", uploaded.text);
    assert_eq!(std::fs::read_to_string(workspace.join("data.csv")).unwrap(), "x,y\n1,2\n");

    // The server and its shell's tmux daemon ran in the workspace, and end with the
    // conversation; deleting it removes the workspace.
    let ws = workspace.display().to_string();
    assert!(running(&ws).contains("action_execution_server"), "{}", running(&ws));
    let deleted = host.send(host.http.delete(host.url(&base))).await;
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    none_left(&ws).await;
    assert!(!workspace.exists(), "the workspace outlived its conversation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_conversations_get_a_server_each_a_stop_ends_one_and_a_server_that_cannot_start_is_said() {
    let (d, host, llm) = deployment(&spawned()).await;
    // Each agent starts a long command, named after its workspace, that outlives its call.
    let command = "pwd; sh -c 'sleep 400; true' \"oh-marker-$(basename \"$PWD\")\"";
    llm.call_tool_per_message("execute_bash", json!({ "command": command, "timeout": 2 }));
    let (first, second) = tokio::join!(create(&host, "first"), create(&host, "second"));
    let ran = |e: &[Value]| !outputs(e).is_empty();
    let (one, two) = tokio::join!(
        events_until(&host, &first, "the first command", ran),
        events_until(&host, &second, "the second command", ran)
    );
    let root = d.state_dir().join("openhands-workspaces");
    assert!(outputs(&one)[0].starts_with(&root.join(&first).display().to_string()), "{one:#?}");
    assert!(outputs(&two)[0].starts_with(&root.join(&second).display().to_string()), "{two:#?}");
    let (marker_one, marker_two) = (format!("oh-marker-{first}"), format!("oh-marker-{second}"));
    assert!(!running(&marker_one).is_empty() && !running(&marker_two).is_empty());

    // Stopping the first ends its server and all it started; the second runs on.
    let stop = host.post_json(&format!("/api/conversations/{first}/stop"), &json!({})).await;
    assert_eq!(stop.status, 200, "{}", stop.text);
    none_left(&marker_one).await;
    none_left(&root.join(&first).display().to_string()).await;
    assert!(!running(&marker_two).is_empty(), "the other conversation's command was stopped too");
    host.post_json(&format!("/api/conversations/{second}/stop"), &json!({})).await;
    none_left(&marker_two).await;
    none_left(&root.join(&second).display().to_string()).await;
    drop(host);

    // A server that cannot start: the user is told why, and nothing is left running.
    let mut argv = openhands::server_argv("{port}", "{workspace}");
    argv[3] = "openhands.no_such_server".into();
    let (d, host, _llm) = deployment(&format!("spawn = {}", toml_list(&argv))).await;
    let id = create(&host, "hello").await;
    let events = events_until(&host, &id, "the error", |e| e.iter().any(|e| e["observation"] == "error")).await;
    let error = events.iter().find(|e| e["observation"] == "error").unwrap();
    let text = error["content"].as_str().unwrap();
    assert!(text.contains("sandbox did not start") && text.contains("openhands.no_such_server"), "{text}");
    none_left(&d.state_dir().join("openhands-workspaces").join(&id).display().to_string()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_come_from_the_remote_runtime_api_paused_and_stopped_with_their_conversation() {
    let sandboxes = tempfile::tempdir().unwrap();
    let api = FakeRuntimeApi::start("rt-key", sandboxes.path().to_path_buf()).await;
    // The fake runs each sandbox's server in `<its root>/<session id>`.
    let config = format!(
        "runtime_api_url = \"{}\", runtime_api_key = \"rt-key\", image = \"ghcr.io/openhands/runtime:0.62.0-nikolaik\", working_dir = \"{}/{{conversation_id}}\"",
        api.url,
        sandboxes.path().display()
    );
    let (_d, host, llm) = deployment(&config).await;
    llm.push([
        Reply::Tools(vec![("execute_bash".into(), json!({ "command": "echo remote > r.txt && cat r.txt" }))]),
        Reply::Tools(vec![("finish".into(), json!({ "message": "Done." }))]),
    ]);
    let id = create(&host, "in the cluster").await;
    let events = events_until(&host, &id, "the agent to finish", finished).await;
    assert_eq!(outputs(&events), ["remote"], "{events:#?}");
    let workspace = sandboxes.path().join(&id);
    assert_eq!(std::fs::read_to_string(workspace.join("r.txt")).unwrap(), "remote\n");
    let requests = api.requests();
    let start = requests.iter().find(|(what, _)| what == "POST /start").expect("a /start").1.clone();
    assert_eq!(start["session_id"], json!(id));
    assert_eq!(start["image"], "ghcr.io/openhands/runtime:0.62.0-nikolaik");
    assert!(start["command"].as_array().unwrap().iter().any(|a| a == "openhands.runtime.action_execution_server"));
    let files = host.get(&format!("/api/conversations/{id}/list-files")).await;
    assert_eq!(files.json(), json!(["r.txt"]), "{}", files.text);

    // Its end pauses the sandbox (resumed when the conversation opens again); deleting the
    // conversation stops it.
    host.post_json(&format!("/api/conversations/{id}/stop"), &json!({})).await;
    let waited = std::time::Instant::now();
    while api.status(&id) != Some("paused") {
        assert!(waited.elapsed() < Duration::from_secs(20), "not paused: {:?}", api.requests());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(host.send(host.http.delete(host.url(&format!("/api/conversations/{id}")))).await.status, 200);
    assert_eq!(api.status(&id), Some("stopped"), "{:?}", api.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_running_server_given_by_url_takes_the_agents_commands_with_its_key_from_an_isolated_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path().join("sandbox");
    let server = ActionServer::start(&workspace, "sandbox-key");
    server.alive().await;
    // Without its key the server refuses every action.
    let refused = reqwest::Client::new()
        .post(format!("{}/execute_action", server.url))
        .json(&json!({ "action": { "action": "run", "args": { "command": "id" } } }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let config = format!(
        "url = \"{}\", session_api_key = \"{}\", working_dir = \"{}\"",
        server.url,
        server.key,
        workspace.display()
    );
    // The runtime in a process of its own: the same calls cross the runner's socket.
    let (_d, host, llm) = deployment_with(&isolated(profile(&config))).await;
    llm.push([
        Reply::Tools(vec![("execute_bash".into(), json!({ "command": "echo attached; ls -a" }))]),
        Reply::Tools(vec![("finish".into(), json!({ "message": "Done." }))]),
    ]);
    let id = create(&host, "on the shared sandbox").await;
    let events = events_until(&host, &id, "the agent to finish", finished).await;
    let out = outputs(&events);
    assert!(out.len() == 1 && out[0].starts_with("attached") && out[0].contains(".git"), "{events:#?}");
    // The conversation's end leaves a server it did not start running.
    host.post_json(&format!("/api/conversations/{id}/stop"), &json!({})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(openhands_runtime_alive(&server.url).await);
}

async fn openhands_runtime_alive(url: &str) -> bool {
    reqwest::get(format!("{url}/alive")).await.is_ok_and(|r| r.status().is_success())
}

/// The selected repository is cloned in the sandbox with the user's token, which stays out of
/// the workspace; a host killed with -9 leaves no server behind, with the runtime isolated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repository_is_cloned_in_the_sandbox_and_a_killed_host_leaves_no_server() {
    let token = "gho_user_token_in_the_sandbox_42";
    let git = oh_e2e::git_http::GitHttp::start("acme/widgets", &[("README.md", "# Widgets\n")], token).await;
    // The runtime in a process of its own: its runner, and so each server, ends with the host.
    let config = format!("{}, git_http_hosts = [\"{}\"]", spawned(), git.host);
    let (d, mut host, llm) = deployment_with(&isolated(profile(&config))).await;
    let tokens = json!({ "provider_tokens": { "github": { "token": token, "host": git.host } } });
    assert_eq!(host.post_json("/api/add-git-providers", &tokens).await.status, 200);
    llm.push([Reply::Tools(vec![(
        "execute_bash".into(),
        json!({ "command": "git branch --show-current; cat FEATURE.md; sleep 400 # oh-orphan-marker", "timeout": 2 }),
    )])]);
    let r = host
        .post_json(
            "/api/conversations",
            &json!({ "initial_user_msg": "look", "repository": "acme/widgets", "git_provider": "github", "selected_branch": "feature" }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.json()["conversation_id"].as_str().unwrap().to_owned();
    let events = events_until(&host, &id, "the command", |e| !outputs(e).is_empty()).await;
    let out = &outputs(&events)[0];
    assert!(out.contains("feature") && out.contains("on the feature branch"), "{out}");
    let workspace = d.state_dir().join("openhands-workspaces").join(&id);
    let config = std::fs::read_to_string(workspace.join(".git/config")).unwrap();
    assert!(
        !config.contains(token) && config.contains(&format!("url = http://{}/acme/widgets.git", git.host)),
        "{config}"
    );
    assert!(!host.log().contains(token), "the token reached the host's log");

    host.signal("KILL");
    none_left("oh-orphan-marker").await;
    none_left(&workspace.display().to_string()).await;
}
