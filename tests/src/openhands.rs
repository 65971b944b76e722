//! OpenHands 0.62.0's own action execution server (from the virtual environment
//! `make openhands-env` caches) and a fake of OpenHands' remote runtime API that starts real
//! action execution servers as local processes, as a cluster would start pods.

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::{get, post},
    Json, Router,
};
use serde_json::{json, Value};
use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
};

/// The virtual environment with openhands-ai 0.62.0 (`OPENHANDS_VENV`, else where
/// `.ci/openhands-env` puts it).
pub fn venv() -> PathBuf {
    let dir = std::env::var_os("OPENHANDS_VENV").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/oh-host/openhands-0.62.0")
    });
    assert!(
        dir.join(".oh-complete").exists(),
        "OpenHands' action execution server is not installed at {} (run `make openhands-env`)",
        dir.display()
    );
    dir
}

/// The user the servers run as (`--username`, `--user-id`): this process's.
fn user() -> (String, String) {
    let out = |flag: &str| {
        let o = Command::new("id").arg(flag).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    };
    (out("-un"), out("-u"))
}

/// The arguments that start the server on `port` in `workspace` (`{port}` and `{workspace}`
/// left as placeholders when given so).
pub fn server_argv(port: &str, workspace: &str) -> Vec<String> {
    let (name, uid) = user();
    let python = venv().join("bin/python").display().to_string();
    [
        python.as_str(),
        "-u",
        "-m",
        "openhands.runtime.action_execution_server",
        port,
        "--working-dir",
        workspace,
        "--username",
        &name,
        "--user-id",
        &uid,
        "--no-enable-browser",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// One server the test started itself, in a PID namespace of its own (its tmux daemon goes
/// with it); killed on drop.
pub struct ActionServer {
    child: Child,
    pub url: String,
    pub key: String,
}

impl ActionServer {
    pub fn start(workspace: &std::path::Path, key: &str) -> ActionServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self::start_on(workspace, key, port)
    }

    fn start_on(workspace: &std::path::Path, key: &str, port: u16) -> ActionServer {
        std::fs::create_dir_all(workspace).unwrap();
        let tmux = workspace.with_extension("tmux");
        std::fs::create_dir_all(&tmux).unwrap();
        let child = Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child"])
            .args(server_argv(&port.to_string(), &workspace.display().to_string()))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &tmux)
            .env("SESSION_API_KEY", key)
            .env("TMUX_TMPDIR", &tmux)
            .env("SU_TO_USER", "false")
            .current_dir(workspace)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        ActionServer { child, url: format!("http://127.0.0.1:{port}"), key: key.to_owned() }
    }

    /// Waits (up to 180 s: the server imports for about 20 s on this machine) for `/alive`.
    pub async fn alive(&self) {
        let started = std::time::Instant::now();
        loop {
            let answer = reqwest::get(format!("{}/alive", self.url)).await;
            if let Ok(r) = answer {
                if r.text().await.unwrap_or_default().contains("\"ok\"") {
                    return;
                }
            }
            assert!(started.elapsed().as_secs() < 180, "the action execution server at {} never came up", self.url);
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }
}

impl Drop for ActionServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A sandbox the fake API runs.
struct Sandbox {
    session_id: String,
    key: String,
    port: u16,
    workspace: PathBuf,
    status: &'static str,
    server: Option<ActionServer>,
}

#[derive(Default)]
struct Api {
    sandboxes: HashMap<String, Sandbox>,
    /// `(method and path, body)` of every request, in order.
    requests: Vec<(String, Value)>,
}

/// OpenHands' remote runtime API, with `api_key` as its `X-API-Key`; each sandbox's
/// workspace is a directory under `root`.
#[derive(Clone)]
pub struct FakeRuntimeApi {
    pub url: String,
    state: Arc<Mutex<Api>>,
}

type Shared = (Arc<Mutex<Api>>, String, PathBuf);

fn authorized(headers: &HeaderMap, key: &str) -> bool {
    headers.get("x-api-key").and_then(|v| v.to_str().ok()) == Some(key)
}

fn described(id: &str, s: &Sandbox) -> Value {
    json!({
        "runtime_id": id, "session_id": s.session_id, "url": format!("http://127.0.0.1:{}", s.port),
        "session_api_key": s.key, "status": s.status, "work_hosts": {},
    })
}

async fn sessions(
    State((state, key, _)): State<Shared>,
    headers: HeaderMap,
    Path(sid): Path<String>,
) -> (StatusCode, Json<Value>) {
    if !authorized(&headers, &key) {
        return (StatusCode::UNAUTHORIZED, Json(json!({ "detail": "bad key" })));
    }
    let mut api = state.lock().unwrap();
    api.requests.push((format!("GET /sessions/{sid}"), Value::Null));
    match api.sandboxes.iter().find(|(_, s)| s.session_id == sid) {
        Some((id, s)) => (StatusCode::OK, Json(described(id, s))),
        None => (StatusCode::NOT_FOUND, Json(json!({ "detail": "no such session" }))),
    }
}

async fn runtime(
    State((state, key, _)): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> (StatusCode, Json<Value>) {
    if !authorized(&headers, &key) {
        return (StatusCode::UNAUTHORIZED, Json(json!({ "detail": "bad key" })));
    }
    let api = state.lock().unwrap();
    match api.sandboxes.get(&id) {
        Some(s) if s.status == "running" => {
            (StatusCode::OK, Json(json!({ "runtime_id": id, "pod_status": "ready", "restart_count": 0 })))
        }
        Some(_) => (StatusCode::OK, Json(json!({ "runtime_id": id, "pod_status": "pending" }))),
        None => (StatusCode::NOT_FOUND, Json(json!({ "runtime_id": id, "pod_status": "not found" }))),
    }
}

async fn lifecycle(
    State((state, key, root)): State<Shared>,
    Path(verb): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if !authorized(&headers, &key) {
        return (StatusCode::UNAUTHORIZED, Json(json!({ "detail": "bad key" })));
    }
    let mut api = state.lock().unwrap();
    api.requests.push((format!("POST /{verb}"), body.clone()));
    if verb == "start" {
        let session_id = body["session_id"].as_str().unwrap_or_default().to_owned();
        let id = format!("rt-{}", api.sandboxes.len() + 1);
        let workspace = root.join(&session_id);
        let server = ActionServer::start(&workspace, &format!("key-{id}"));
        let port = server.url.rsplit(':').next().unwrap().parse().unwrap();
        let sandbox =
            Sandbox { session_id, key: server.key.clone(), port, workspace, status: "running", server: Some(server) };
        let answer = described(&id, &sandbox);
        api.sandboxes.insert(id, sandbox);
        return (StatusCode::CREATED, Json(answer));
    }
    let id = body["runtime_id"].as_str().unwrap_or_default();
    let Some(s) = api.sandboxes.get_mut(id) else {
        return (StatusCode::NOT_FOUND, Json(json!({ "detail": "no such runtime" })));
    };
    match verb.as_str() {
        "pause" => {
            s.server = None;
            s.status = "paused";
        }
        "stop" => {
            s.server = None;
            s.status = "stopped";
        }
        "resume" => {
            s.server = Some(ActionServer::start_on(&s.workspace, &s.key, s.port));
            s.status = "running";
        }
        _ => return (StatusCode::NOT_FOUND, Json(json!({ "detail": "no such verb" }))),
    }
    (StatusCode::OK, Json(json!({ "runtime_id": id })))
}

impl FakeRuntimeApi {
    pub async fn start(api_key: &str, root: PathBuf) -> FakeRuntimeApi {
        let state = Arc::new(Mutex::new(Api::default()));
        let shared: Shared = (state.clone(), api_key.to_owned(), root);
        let app = Router::new()
            .route("/sessions/{sid}", get(sessions))
            .route("/runtime/{id}", get(runtime))
            .route("/{verb}", post(lifecycle))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeRuntimeApi { url, state }
    }

    /// Every request so far: `("POST /start", body)`, ...
    pub fn requests(&self) -> Vec<(String, Value)> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The status of the sandbox of `session_id` (`running`, `paused`, `stopped`).
    pub fn status(&self, session_id: &str) -> Option<&'static str> {
        self.state.lock().unwrap().sandboxes.values().find(|s| s.session_id == session_id).map(|s| s.status)
    }
}
