//! The agent's sandbox as an attacker sees it (`docs/sandbox.md`): an agent that controls its
//! workspace (files, symlinks, git config) tries to reach what the host holds (its
//! environment, its state directory, another user's workspace, host-side writes and git
//! commands, the host's memory), with the state directory under /var/tmp as in production and
//! secrets in the host's environment, in OSS and in SaaS mode.

use oh_e2e::{
    llm::{FakeLlm, Reply},
    Deployment, TestHost,
};
use serde_json::{json, Value};
use std::time::Duration;

const MALLORY: &str = "mallory-sandbox-key-0123456789";
const VICTIM: &str = "victim-sandbox-key-0123456789";
/// What the host's environment holds, and no sandbox may print.
const SECRETS: [(&str, &str); 3] = [
    ("JWT_SECRET", "jwt-secret-never-in-a-sandbox-1"),
    ("OH_TEST_DB_PASS", "db-pass-never-in-a-sandbox-2"),
    ("STRIPE_API_KEY", "sk_live_never_in_a_sandbox_3"),
];

/// A host in either mode with the bubblewrap runtime; requests go out as `key` in SaaS mode.
struct Target {
    host: TestHost,
    saas: bool,
    _db: Option<oh_e2e::pg::TestDb>,
}

impl Target {
    async fn request(&self, key: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> oh_e2e::Response {
        if self.saas {
            self.host.as_key(key, method, path, body).await
        } else {
            let mut req = self.host.http.request(method, self.host.url(path));
            if let Some(body) = body {
                req = req.json(&body);
            }
            self.host.send(req).await
        }
    }

    async fn get(&self, key: &str, path: &str) -> oh_e2e::Response {
        self.request(key, reqwest::Method::GET, path, None).await
    }

    /// A new conversation of `key`'s, once its agent's turn is over.
    async fn converse(&self, key: &str, message: &str) -> (String, Vec<Value>) {
        let body = json!({ "initial_user_msg": message });
        let r = self.request(key, reqwest::Method::POST, "/api/conversations", Some(body)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let id = r.json()["conversation_id"].as_str().unwrap().to_owned();
        let started = std::time::Instant::now();
        loop {
            let r = self.get(key, &format!("/api/conversations/{id}/events?limit=100")).await;
            let events = r.json()["events"].as_array().cloned().unwrap_or_default();
            if events.iter().any(|e| {
                e["observation"] == "agent_state_changed" && e["extras"]["agent_state"] == "awaiting_user_input"
            }) && events.iter().any(|e| e["source"] == "agent" && e["action"] == "message")
            {
                return (id, events);
            }
            assert!(started.elapsed() < Duration::from_secs(60), "the turn did not end: {events:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `isolated`: the runtime in a runner of its own (`isolation = "process"`), its file
/// contents and command results crossing the plugin protocol. (Not `sandbox = true`: the
/// runner's own bubblewrap leaves no user namespace for the runtime's.)
async fn start(saas: bool, isolated: bool, d: &Deployment, llm: &FakeLlm) -> Target {
    d.install_bundled();
    let mut runtime = oh_e2e::runtime_entry("BubblewrapRuntime", "command_timeout_secs = 30");
    if isolated {
        runtime.push_str("isolation = \"process\"\n");
    }
    let db = if saas {
        let db = oh_e2e::pg::TestDb::create().await;
        let base = oh_e2e::saas_base_profile(&db.url, &[("mallory", MALLORY), ("victim", VICTIM)], "") + &runtime;
        d.write_profile("app_mode = \"saas\"\n", &base);
        Some(db)
    } else {
        let manager = format!(
            "[extensions.conversation_manager]\nlibrary = \"standalone_manager\"\nimplementation = \"StandaloneConversationManager\"\n\
             config = {{ llm_max_retries = 0 }}\n{runtime}"
        );
        d.write_profile("", &manager);
        None
    };
    let host = d.start_with_env(&SECRETS);
    let target = Target { host, saas, _db: db };
    let settings = json!({ "llm_model": "openai/fake-model", "llm_base_url": llm.base_url, "llm_api_key": "sk-test" });
    for key in [MALLORY, VICTIM] {
        let r = target.request(key, reqwest::Method::POST, "/api/settings", Some(settings.clone())).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    target
}

fn observation<'a>(events: &'a [Value], kind: &str, n: usize) -> &'a Value {
    events.iter().filter(|e| e["observation"] == kind).nth(n).unwrap_or_else(|| panic!("no {kind} #{n}: {events:#?}"))
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn the_agent_reaches_nothing_the_host_holds(saas: bool, isolated: bool) {
    let llm = FakeLlm::start().await;
    let d = Deployment::outside_tmp();
    let target = start(saas, isolated, &d, &llm).await;
    let state = d.state_dir();

    // Another user's (in OSS: another conversation's) code.
    llm.push([Reply::Tools(vec![(
        "str_replace_editor".into(),
        json!({ "command": "create", "path": "victim-code.rs", "file_text": "fn secret() {}\n" }),
    )])]);
    let (victim_id, _) = target.converse(VICTIM, "write code").await;
    let victim_code = state.join("workspaces").join(&victim_id).join("victim-code.rs");
    assert!(victim_code.exists());
    std::fs::write(state.join("target-file"), "untouched").unwrap();
    // Everything the host keeps in its state directory, but the workspaces.
    let mut host_files: Vec<String> = Vec::new();
    for entry in oh_e2e::files_under(&state) {
        if !entry.starts_with(state.join("workspaces")) {
            host_files.push(entry.display().to_string());
        }
    }
    assert!(!host_files.is_empty(), "{host_files:?}");
    host_files.push(victim_code.display().to_string());
    host_files.extend(["/run/postgresql/.s.PGSQL.5432", "/root", "/var/lib", "/etc/shadow"].map(str::to_owned));

    let s = state.display();
    let probe = format!(
        "env; for p in {files}; do if [ -e \"$p\" ]; then echo \"SEEN $p\"; fi; done; \
         cat {s}/target-file 2>/dev/null; \
         printf 'one\\n' > a.txt; git add a.txt && git -c user.name=m -c user.email=m@m commit -qm one; echo two > a.txt; \
         git config core.fsmonitor 'env > {s}/fsmonitor-leak; env > fsmonitor-ran'; \
         printf '*.txt filter=evil\\n' > .gitattributes; git config filter.evil.clean 'env > {s}/clean-leak; cat'; \
         ln -s {s}/created-by-editor evil; ln -s {s}/created-by-upload up-new; ln -s {s}/target-file up-over; \
         ln -s {victim} victim-link; truncate -s 200M sparse; echo probe-done",
        files = host_files.join(" "),
        victim = victim_code.display(),
    );
    llm.push([
        Reply::Tools(vec![("execute_bash".into(), json!({ "command": probe }))]),
        Reply::Tools(vec![(
            "str_replace_editor".into(),
            json!({ "command": "create", "path": "evil", "file_text": "written through a link" }),
        )]),
        Reply::Tools(vec![("str_replace_editor".into(), json!({ "command": "view", "path": "victim-link" }))]),
    ]);
    let (id, events) = target.converse(MALLORY, "probe").await;
    let ran = observation(&events, "run", 0)["content"].as_str().unwrap().to_owned();
    assert!(ran.contains("probe-done"), "{ran}");
    for (name, value) in SECRETS {
        assert!(!ran.contains(value), "{name} reached the sandbox: {ran}");
    }
    assert!(!ran.lines().any(|l| l.starts_with("SEEN ")), "{ran}");
    assert!(!ran.contains("untouched"), "{ran}");
    // The editor, on the host, follows no link out.
    let created = observation(&events, "error", 0)["content"].as_str().unwrap();
    assert!(created.contains("outside the workspace"), "{created}");
    let viewed = observation(&events, "error", 1)["content"].as_str().unwrap();
    assert!(viewed.contains("outside the workspace"), "{viewed}");
    assert!(!state.join("created-by-editor").exists());

    // The web client's Changes tab: git runs, and nothing the workspace configured.
    let base = format!("/api/conversations/{id}");
    let changes = target.get(MALLORY, &format!("{base}/git/changes")).await;
    assert_eq!(changes.status, 200, "{}", changes.text);
    assert!(changes.text.contains("\"a.txt\""), "{}", changes.text);
    let diff = target.get(MALLORY, &format!("{base}/git/diff?path=a.txt")).await;
    assert_eq!(diff.json(), json!({ "modified": "two\n", "original": "one\n" }), "{}", diff.text);
    for leak in ["fsmonitor-leak", "clean-leak"] {
        assert!(!state.join(leak).exists(), "{leak}: the host ran the workspace's command");
    }
    let workspace = state.join("workspaces").join(&id);
    assert!(!workspace.join("fsmonitor-ran").exists(), "git ran core.fsmonitor");

    // Uploads land in the workspace or nowhere.
    let body = "--b0undary\r\nContent-Disposition: form-data; name=\"files\"; filename=\"up-new\"\r\n\r\nnew\r\n\
                --b0undary\r\nContent-Disposition: form-data; name=\"files\"; filename=\"up-over\"\r\n\r\noverwritten\r\n\
                --b0undary\r\nContent-Disposition: form-data; name=\"files\"; filename=\"fine.txt\"\r\n\r\nok\r\n--b0undary--\r\n";
    let mut req = target.host.http.post(target.host.url(&format!("{base}/upload-files")));
    if saas {
        req = req.bearer_auth(MALLORY);
    }
    let uploaded =
        target.host.send(req.header("content-type", "multipart/form-data; boundary=b0undary").body(body)).await;
    assert_eq!(uploaded.json()["uploaded_files"], json!(["fine.txt"]), "{}", uploaded.text);
    assert_eq!(uploaded.json()["skipped_files"].as_array().unwrap().len(), 2, "{}", uploaded.text);
    assert!(!state.join("created-by-upload").exists());
    assert_eq!(std::fs::read_to_string(state.join("target-file")).unwrap(), "untouched");

    // Reads follow no link out either, and are bounded before they start.
    assert_eq!(target.get(MALLORY, &format!("{base}/select-file?file=victim-link")).await.status, 400);
    let before = vm_rss_kib(target.host.pid());
    let sparse = target.get(MALLORY, &format!("{base}/select-file?file=sparse")).await;
    assert_eq!(sparse.status, 413, "{}", sparse.text);
    assert!(sparse.json()["error"].as_str().unwrap().contains("209715200 bytes"), "{}", sparse.text);
    let after = vm_rss_kib(target.host.pid());
    assert!(after < before + 50 * 1024, "the host grew from {before} KiB to {after} KiB");
    let listed = target.get(MALLORY, &format!("{base}/list-files")).await.json();
    assert!(listed.as_array().unwrap().contains(&json!("a.txt")), "{listed}");

    // Deleting the conversation removes its workspace (the runtime's `destroy`) and nothing its
    // links lead to: another workspace, the state directory.
    let workspace = state.join("workspaces").join(&id);
    assert!(workspace.join("victim-link").symlink_metadata().is_ok());
    let deleted = target.request(MALLORY, reqwest::Method::DELETE, &base, None).await;
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    assert!(!workspace.exists(), "the workspace outlived its conversation");
    assert!(victim_code.exists(), "a link in the deleted workspace removed another workspace's file");
    assert_eq!(std::fs::read_to_string(state.join("target-file")).unwrap(), "untouched");
}

#[tokio::test]
async fn in_oss_mode_the_agent_reaches_nothing_the_host_holds() {
    the_agent_reaches_nothing_the_host_holds(false, false).await;
}

#[tokio::test]
async fn in_saas_mode_one_users_agent_reaches_nothing_of_the_host_or_another_user() {
    the_agent_reaches_nothing_the_host_holds(true, false).await;
}

/// The same attacks with the runtime isolated: links out, git
/// configuration, the host's environment and state, another user's workspace and local
/// sockets stay out of reach when the runtime is reached through the plugin protocol.
#[tokio::test]
async fn with_the_runtime_isolated_one_users_agent_still_reaches_nothing_of_the_host_or_another_user() {
    the_agent_reaches_nothing_the_host_holds(true, true).await;
}
