//! The plugin contract's promise: a library built against any released contract
//! (`plugin-api/releases.toml`) loads into today's host and every method it has answers.
//!
//! Each release is checked out at its commit in a git worktree (`target/compat/<version>/src`)
//! and two libraries are built there, in a target directory of their own as an outside author
//! builds: `contract_plugin` (every extension point, every method noting its call) and
//! `examples/token-auth`. Then today's host code loads them: the contract fixture through the
//! loader, every method of every instance called directly, with a `HostServices` of this
//! test's own; token-auth through the real server, over HTTP. Today's own build of the
//! fixture goes through the same calls, so a change is tested before it is released.

use oh_e2e::{sha256_hex, workspace, Deployment};
use oh_host::loader::Root;
use plugin_api::{
    abi_stable::{
        sabi_trait::TD_Opaque,
        std_types::{RNone, ROption, RSome, RString, RVec, Tuple2},
    },
    async_ffi::{FfiFuture, FutureExt as _},
    models, AppMode, AuthRequest, CallContext, ErrorCode, EventQuery, EventSink, EventSink_TO, ExtensionPoint,
    HostServices, HostServices_TO, PResult, PluginError,
};
use serde_json::{json, Value};
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
};

/// Every method of the 1.0 contract, as the fixture notes it. A later minor adds a list of
/// the methods it appends; a library built before them answers their documented default.
const METHODS_1_0: &[&str] = &[
    "settings_store.load",
    "settings_store.store",
    "settings_store.load_versioned",
    "settings_store.store_versioned",
    "settings_store.health",
    "settings_store.migrate",
    "settings_store.rotate_keys",
    "settings_store.shutdown",
    "secrets_store.load",
    "secrets_store.store",
    "secrets_store.update",
    "secrets_store.health",
    "secrets_store.migrate",
    "secrets_store.rotate_keys",
    "secrets_store.shutdown",
    "conversation_store.save_metadata",
    "conversation_store.get_metadata",
    "conversation_store.validate_metadata",
    "conversation_store.search",
    "conversation_store.append_events",
    "conversation_store.append_events_fenced",
    "conversation_store.get_events",
    "conversation_store.delete_metadata",
    "conversation_store.health",
    "conversation_store.migrate",
    "conversation_store.rotate_keys",
    "conversation_store.shutdown",
    "conversation_manager.maybe_start",
    "conversation_manager.subscribe",
    "conversation_manager.send_event",
    "conversation_manager.running",
    "conversation_manager.unsubscribe",
    "conversation_manager.close",
    "conversation_manager.cluster",
    "conversation_manager.workspace",
    "conversation_manager.health",
    "conversation_manager.shutdown",
    "user_auth.authenticate",
    "user_auth.provider_tokens",
    "user_auth.health",
    "user_auth.shutdown",
    "monitoring.on_session_event",
    "monitoring.on_agent_session_start",
    "monitoring.on_create_conversation",
    "monitoring.capture",
    "monitoring.experiment_variant",
    "monitoring.admit",
    "monitoring.on_llm_usage",
    "monitoring.health",
    "monitoring.shutdown",
    "routes.routes",
    "routes.health",
    "routes.handle",
];

/// The methods plugin-api 1.1 added: the `runtime` extension point.
const METHODS_1_1: &[&str] = &[
    "runtime.open",
    "runtime.run",
    "runtime.interrupt",
    "runtime.write_file",
    "runtime.read_file",
    "runtime.list_files",
    "runtime.git_changes",
    "runtime.git_original",
    "runtime.close",
    "runtime.destroy",
    "runtime.health",
    "runtime.shutdown",
];

/// What 1.2 added: no method, the feature-flags query of `experiment_variant`.
const METHODS_1_2: &[&str] = &["monitoring.feature_flags"];

/// The methods a library built against `minor` has.
fn methods_of(minor: u32) -> Vec<&'static str> {
    let mut all = METHODS_1_0.to_vec();
    if minor >= 1 {
        all.extend(METHODS_1_1);
    }
    if minor >= 2 {
        all.extend(METHODS_1_2);
    }
    all
}

#[derive(Debug)]
struct Release {
    version: String,
    commit: String,
}

fn releases() -> Vec<Release> {
    let path = workspace().join("plugin-api/releases.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let doc: toml::Table = text.parse().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    doc.get("release")
        .and_then(|r| r.as_array())
        .map(|list| {
            list.iter()
                .map(|r| Release {
                    version: r["version"].as_str().expect("release.version").to_owned(),
                    commit: r["commit"].as_str().expect("release.commit").to_owned(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn git(args: &[&str]) -> std::process::Output {
    Command::new("git").arg("-C").arg(workspace()).args(args).output().expect("git")
}

/// (major, minor) of "1.2.0".
fn major_minor(version: &str) -> (u32, u32) {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or_else(|_| panic!("version {version}")));
    (parts.next().unwrap(), parts.next().unwrap())
}

/// The contract's source without comments and blank lines: what a release freezes.
fn contract_code(text: &str) -> String {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// The bookkeeping: versions agree, releases are ordered and real, and a released contract
/// does not change without a new minor.
#[test]
fn releases_are_ordered_real_and_frozen() {
    let manifest = std::fs::read_to_string(workspace().join("plugin-api/Cargo.toml")).unwrap();
    let current = format!("{}.{}.0", plugin_api::API_MAJOR, plugin_api::API_MINOR);
    assert!(
        manifest.contains(&format!("version = \"{current}\"")),
        "plugin-api/Cargo.toml's version must be API_MAJOR.API_MINOR.0 = {current} (abi_stable records it)"
    );
    let releases = releases();
    for pair in releases.windows(2) {
        assert!(major_minor(&pair[0].version) < major_minor(&pair[1].version), "releases out of order: {pair:?}");
    }
    for r in &releases {
        let at = git(&["show", &format!("{}:plugin-api/src/lib.rs", r.commit)]);
        assert!(
            at.status.success(),
            "release {} names commit {}, which this clone lacks (a shallow clone? fetch the full history): {}",
            r.version,
            r.commit,
            String::from_utf8_lossy(&at.stderr)
        );
        let lib = String::from_utf8_lossy(&at.stdout);
        let (major, minor) = major_minor(&r.version);
        assert!(
            lib.contains(&format!("API_MAJOR: u32 = {major};")) && lib.contains(&format!("API_MINOR: u32 = {minor};")),
            "commit {} does not declare plugin-api {}",
            r.commit,
            r.version
        );
        assert!(major_minor(&r.version) <= (plugin_api::API_MAJOR, plugin_api::API_MINOR));
    }
    // The newest release is this contract: nothing but comments may have changed since.
    if let Some(last) =
        releases.last().filter(|r| major_minor(&r.version) == (plugin_api::API_MAJOR, plugin_api::API_MINOR))
    {
        let listed = git(&["ls-tree", "-r", "--name-only", &last.commit, "plugin-api/src"]);
        let mut files: Vec<String> = String::from_utf8_lossy(&listed.stdout).lines().map(str::to_owned).collect();
        for now in oh_e2e::files_under(&workspace().join("plugin-api/src")) {
            let rel = now.strip_prefix(workspace()).unwrap().display().to_string();
            if !files.contains(&rel) {
                files.push(rel);
            }
        }
        for file in files {
            let then = git(&["show", &format!("{}:{file}", last.commit)]);
            let then =
                if then.status.success() { String::from_utf8_lossy(&then.stdout).into_owned() } else { String::new() };
            let now = std::fs::read_to_string(workspace().join(&file)).unwrap_or_default();
            assert!(
                contract_code(&then) == contract_code(&now),
                "{file} changed since plugin-api {} was released (commit {}): raise API_MINOR (and plugin-api's version) for the change, and list the new release once it is committed",
                last.version,
                last.commit
            );
        }
    }
}

/// Checks `r` out (once) and builds the two libraries there; answers the directory holding
/// `libcontract_plugin.so` and `libtoken_auth.so`.
fn build_release(r: &Release) -> PathBuf {
    // One build at a time: tests of this binary run in parallel and share the worktrees.
    static BUILDS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    let root = workspace().join("target/compat").join(&r.version);
    let src = root.join("src");
    let checked_out = Command::new("git")
        .arg("-C")
        .arg(&src)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if checked_out.as_deref() != Some(r.commit.as_str()) {
        let _ = git(&["worktree", "remove", "--force", &src.display().to_string()]);
        let _ = std::fs::remove_dir_all(&src);
        let _ = git(&["worktree", "prune"]);
        let added = git(&["worktree", "add", "--detach", "--force", &src.display().to_string(), &r.commit]);
        assert!(added.status.success(), "git worktree add {}: {}", r.commit, String::from_utf8_lossy(&added.stderr));
    }
    let target = root.join("target");
    let cargo = |args: &[&str]| {
        let out = Command::new(env!("CARGO"))
            .args(args)
            .arg("--target-dir")
            .arg(&target)
            .current_dir(&src)
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .expect("cargo");
        assert!(
            out.status.success(),
            "building plugin-api {} (commit {}): cargo {args:?}\n{}",
            r.version,
            r.commit,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    cargo(&["build", "--quiet", "--locked", "-p", "contract_plugin"]);
    cargo(&["build", "--quiet", "--locked", "--manifest-path", "examples/token-auth/Cargo.toml"]);
    target.join("debug")
}

/// A `plugins` directory (0755, libraries 0644, as the loader insists) with copies of `libs`.
fn plugins_dir_with(from: &Path, libs: &[&str]) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for lib in libs {
        let to = dir.path().join(format!("lib{lib}.so"));
        std::fs::copy(from.join(format!("lib{lib}.so")), &to)
            .unwrap_or_else(|e| panic!("{}: {e}", from.join(format!("lib{lib}.so")).display()));
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    dir
}

/// This test's side of the host: answers `settings_store.load` with a known model and
/// records every call.
#[derive(Clone, Default)]
struct TestServices {
    calls: Arc<Mutex<Vec<String>>>,
}

impl plugin_api::v1_0::HostServices for TestServices {
    fn call(
        &self,
        ctx: CallContext,
        point: ExtensionPoint,
        method: RString,
        args_json: RString,
    ) -> FfiFuture<PResult<RString>> {
        HostServices::call(self, ctx, point, method, args_json)
    }
    fn app_mode(&self) -> AppMode {
        AppMode::OSS
    }
    fn state_dir(&self) -> RString {
        "/nonexistent".into()
    }
}

impl HostServices for TestServices {
    fn call(
        &self,
        _ctx: CallContext,
        point: ExtensionPoint,
        method: RString,
        args_json: RString,
    ) -> FfiFuture<PResult<RString>> {
        self.calls.lock().unwrap().push(format!("{point}.{method} {args_json}"));
        let answer = if point == ExtensionPoint::SETTINGS_STORE && method == "load" {
            PResult::ROk(RString::from(json!({ "llm_model": "from-the-host" }).to_string()))
        } else {
            PResult::RErr(PluginError::new(ErrorCode::UNIMPLEMENTED, "not offered by this test"))
        };
        async move { answer }.into_ffi()
    }
    fn app_mode(&self) -> AppMode {
        AppMode::OSS
    }
    fn state_dir(&self) -> RString {
        "/nonexistent".into()
    }
}

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<Value>>>);

impl EventSink for Collect {
    fn send(&self, event_json: RString) -> bool {
        self.0.lock().unwrap().push(serde_json::from_str(&event_json).unwrap());
        true
    }
}

fn ctx() -> CallContext {
    CallContext::new("compat", Some("contract-user"), 0)
}

fn ok<T>(r: PResult<T>, what: &str) -> T {
    r.into_result().unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn parse(s: RString) -> Value {
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Loads `libcontract_plugin.so` from `dir` with the host's loader and calls every method of
/// every instance; answers the journal the library kept.
async fn exercise(dir: &Path, label: &str) -> Vec<String> {
    let plugins = plugins_dir_with(dir, &["contract_plugin"]);
    let lib = oh_host::loader::load(plugins.path(), "contract_plugin", None).unwrap_or_else(|e| panic!("{label}: {e}"));
    oh_host::loader::init(&lib, "{}").unwrap_or_else(|e| panic!("{label}: {e}"));
    let host = TestServices::default();
    let m = lib.module;
    let build = |what: &str| format!("{label}: building {what}");
    // A factory of the root module, with this test's services as the library's minor defines them.
    macro_rules! new {
        ($factory:ident, $implementation:literal) => {
            match m {
                Root::V1_0(m) => (m.$factory())(
                    $implementation.into(),
                    "{}".into(),
                    plugin_api::v1_0::HostServices_TO::from_value(host.clone(), TD_Opaque),
                ),
                Root::Current(m) => (m.$factory())(
                    $implementation.into(),
                    "{}".into(),
                    HostServices_TO::from_value(host.clone(), TD_Opaque),
                ),
            }
        };
    }

    // settings_store
    let s = ok(new!(new_settings_store, "ContractSettings"), &build("settings"));
    ok(s.store(ctx(), json!({ "llm_model": "m1" }).to_string().into()).await, "store");
    assert_eq!(parse(ok(s.load(ctx()).await, "load").unwrap())["llm_model"], "m1");
    let versioned = parse(ok(s.load_versioned(ctx()).await, "load_versioned").unwrap());
    assert_eq!((versioned["version"].as_u64(), versioned["settings"]["llm_model"].as_str()), (Some(1), Some("m1")));
    assert_eq!(
        ok(s.store_versioned(ctx(), json!({ "llm_model": "m2" }).to_string().into(), 1).await, "store_versioned"),
        2
    );
    let stale = s.store_versioned(ctx(), json!({}).to_string().into(), 1).await.into_result().unwrap_err();
    assert_eq!(stale.code, ErrorCode::CONFLICT);
    assert!(ok(s.health(ctx()).await, "health").detail.contains("contract settings ok"));
    assert_eq!(parse(ok(s.migrate(ctx()).await, "migrate"))["applied"][0], "0001_contract");
    assert_eq!(parse(ok(s.rotate_keys(ctx()).await, "rotate_keys"))["resealed"], 0);

    // secrets_store
    let k = ok(new!(new_secrets_store, "ContractSecrets"), &build("secrets"));
    let secrets = models::Secrets::default();
    ok(k.store(ctx(), serde_json::to_string(&secrets).unwrap().into()).await, "secrets store");
    let change = models::SecretsChange::CreateCustomSecret {
        name: "TOKEN".into(),
        secret: "s3cret".into(),
        description: "d".into(),
    };
    ok(k.update(ctx(), serde_json::to_string(&change).unwrap().into()).await, "update");
    let again = k.update(ctx(), serde_json::to_string(&change).unwrap().into()).await.into_result().unwrap_err();
    assert_eq!(again.code, ErrorCode::ALREADY_EXISTS, "{again}");
    assert_eq!(parse(ok(k.load(ctx()).await, "secrets load").unwrap())["custom_secrets"]["TOKEN"]["secret"], "s3cret");
    ok(k.health(ctx()).await, "secrets health");
    ok(k.migrate(ctx()).await, "secrets migrate");
    assert_eq!(parse(ok(k.rotate_keys(ctx()).await, "secrets rotate_keys"))["resealed"], 1);

    // conversation_store
    let c = ok(new!(new_conversation_store, "ContractConversations"), &build("conversations"));
    let meta = models::ConversationMetadata {
        conversation_id: "c1".into(),
        user_id: Some("contract-user".into()),
        title: Some("compat".into()),
        ..Default::default()
    };
    ok(c.save_metadata(ctx(), serde_json::to_string(&meta).unwrap().into()).await, "save_metadata");
    assert_eq!(parse(ok(c.get_metadata(ctx(), "c1".into()).await, "get_metadata").unwrap())["title"], "compat");
    assert!(ok(c.validate_metadata(ctx(), "c1".into(), "contract-user".into()).await, "validate_metadata"));
    assert!(!ok(c.validate_metadata(ctx(), "c1".into(), "mallory".into()).await, "validate_metadata"));
    assert_eq!(parse(ok(c.search(ctx(), RNone, 10).await, "search"))["results"][0]["conversation_id"], "c1");
    let events: RVec<RString> = vec![RString::from(r#"{"n":0}"#), RString::from(r#"{"n":1}"#)].into();
    assert_eq!(ok(c.append_events(ctx(), "c1".into(), events).await, "append_events"), 0);
    let fenced: RVec<RString> = vec![RString::from(r#"{"n":2}"#)].into();
    assert_eq!(ok(c.append_events_fenced(ctx(), "c1".into(), fenced.clone(), 7).await, "append_events_fenced"), 2);
    let refused = c.append_events_fenced(ctx(), "c1".into(), fenced, 0).await.into_result().unwrap_err();
    assert_eq!(refused.code, ErrorCode::CONFLICT);
    let page = parse(ok(c.get_events(ctx(), "c1".into(), EventQuery::new(1, None, false, 10)).await, "get_events"));
    assert_eq!(page["events"].as_array().map(Vec::len), Some(2), "{page}");
    assert_eq!(page["events"][1]["n"], 2);
    assert!(ok(c.delete_metadata(ctx(), "c1".into()).await, "delete_metadata"));
    assert!(ok(c.get_metadata(ctx(), "c1".into()).await, "get_metadata").is_none());
    ok(c.health(ctx()).await, "conversations health");
    ok(c.migrate(ctx()).await, "conversations migrate");
    ok(c.rotate_keys(ctx()).await, "conversations rotate_keys");

    // conversation_manager: its host call and its sink cross back into this process.
    let g = ok(new!(new_conversation_manager, "ContractManager"), &build("manager"));
    let start = models::StartRequest { conversation_id: "c2".into(), ..Default::default() };
    let info = parse(ok(g.maybe_start(ctx(), serde_json::to_string(&start).unwrap().into()).await, "maybe_start"));
    assert_eq!(
        (info["status"].as_str(), info["runtime_status"].as_str()),
        (Some("RUNNING"), Some("model=from-the-host"))
    );
    assert!(host.calls.lock().unwrap().iter().any(|c| c.starts_with("settings_store.load")));
    let sink = Collect::default();
    let sub = ok(g.subscribe(ctx(), "c2".into(), EventSink_TO::from_value(sink.clone(), TD_Opaque)).await, "subscribe");
    ok(g.send_event(ctx(), "c2".into(), json!({ "action": "message" }).to_string().into()).await, "send_event");
    assert_eq!(
        *sink.0.lock().unwrap(),
        vec![json!({ "subscribed": "c2" }), json!({ "conversation_id": "c2", "echo": { "action": "message" } })]
    );
    let running = parse(ok(g.running(ctx(), vec![RString::from("c2")].into()).await, "running"));
    assert_eq!(running[0]["conversation_id"], "c2");
    ok(g.unsubscribe(ctx(), sub).await, "unsubscribe");
    assert!(ok(g.close(ctx(), "c2".into()).await, "close"));
    assert_eq!(parse(ok(g.cluster(ctx()).await, "cluster"))["nodes"], 1);
    assert_eq!(ok(g.workspace(ctx(), "c2".into()).await, "workspace"), RSome(RString::from("/workspaces/c2")));
    ok(g.health(ctx()).await, "manager health");

    // user_auth
    let a = ok(new!(new_user_auth, "ContractAuth"), &build("auth"));
    let request = |headers: Vec<(&str, &str)>| AuthRequest {
        method: "GET".into(),
        path: "/api/settings".into(),
        query: "".into(),
        headers: headers.into_iter().map(|(k, v)| Tuple2(RString::from(k), RString::from(v))).collect(),
        remote_addr: "127.0.0.1".into(),
    };
    let outcome = ok(a.authenticate(ctx(), request(vec![("authorization", "Bearer contract")])).await, "authenticate");
    assert_eq!(outcome.user_id, RSome(RString::from("contract-user")));
    assert_eq!(outcome.response_headers[0].1.as_str(), "yes");
    let anonymous = a.authenticate(ctx(), request(vec![])).await.into_result().unwrap_err();
    assert_eq!(anonymous.code, ErrorCode::AUTH_NO_CREDENTIALS);
    assert_eq!(ok(a.provider_tokens(ctx()).await, "provider_tokens").map(parse), ROption::RSome(json!({})));
    ok(a.health(ctx()).await, "auth health");

    // monitoring (its hooks call the host's metric, gauge and histogram)
    let o = ok(new!(new_monitoring, "ContractMonitoring"), &build("monitoring"));
    o.on_session_event(ctx(), json!({ "id": 1 }).to_string().into());
    o.on_agent_session_start(ctx(), true, 0.25);
    o.on_create_conversation(ctx());
    o.capture(ctx(), "signed in".into(), "{}".into());
    o.on_llm_usage(ctx(), serde_json::to_string(&models::LlmUsage::default()).unwrap().into());
    let query = serde_json::to_string(&models::ExperimentQuery::default()).unwrap();
    assert_eq!(ok(o.experiment_variant(ctx(), query.into()).await, "experiment_variant"), RSome(RString::from("[]")));
    if lib.api.minor >= 2 {
        let flags = models::ExperimentQuery { feature_flags: Some(Default::default()), ..Default::default() };
        let answer = ok(o.experiment_variant(ctx(), serde_json::to_string(&flags).unwrap().into()).await, "flags");
        assert_eq!(parse(answer.unwrap())[0]["experiment"], "CONTRACT_FLAG", "{label}");
    }
    let admission = serde_json::to_string(&models::Admission::default()).unwrap();
    assert_eq!(o.admit(ctx(), admission.into()).await.into_result().unwrap_err().code, ErrorCode::PAYMENT_REQUIRED);
    ok(o.health(ctx()).await, "monitoring health");
    let mut metrics = String::new();
    oh_host::metrics::global().render(&mut metrics);
    assert!(metrics.contains("contract_calls_total{hook=\"create\"}"), "{label}: the plugin's counter is missing");
    assert!(metrics.contains("contract_seconds_bucket"), "{label}: the plugin's histogram is missing");

    // runtime (1.1): a library built against 1.0 has no factory for it.
    let runtime = m.runtime_factory().map(|factory| {
        let services = HostServices_TO::from_value(host.clone(), TD_Opaque);
        ok(factory("ContractRuntime".into(), "{}".into(), services), &build("runtime"))
    });
    assert_eq!(runtime.is_some(), matches!(m, Root::Current(_)), "{label}: a 1.1 library has the runtime factory");
    if let Some(rt) = &runtime {
        let open = models::WorkspaceRequest { conversation_id: "c3".into(), repository: None };
        let info = parse(ok(rt.open(ctx(), serde_json::to_string(&open).unwrap().into()).await, "open"));
        assert_eq!(info["root"], "/workspaces/c3");
        let command = models::CommandRequest { command: "ls".into(), ..Default::default() };
        let ran = parse(ok(rt.run(ctx(), "c3".into(), serde_json::to_string(&command).unwrap().into()).await, "run"));
        assert_eq!((ran["output"].as_str(), ran["done"].as_bool()), (Some("ran: ls"), Some(true)));
        assert!(!ok(rt.interrupt(ctx(), "c3".into()).await, "interrupt"));
        ok(rt.write_file(ctx(), "c3".into(), "a.txt".into(), RVec::from_slice(b"hello")).await, "write_file");
        assert_eq!(ok(rt.read_file(ctx(), "c3".into(), "a.txt".into(), 100).await, "read_file").as_slice(), b"hello");
        let small = rt.read_file(ctx(), "c3".into(), "a.txt".into(), 2).await.into_result().unwrap_err();
        assert_eq!(small.code, ErrorCode::TOO_LARGE);
        assert_eq!(parse(ok(rt.list_files(ctx(), "c3".into(), "".into()).await, "list_files"))[0]["name"], "a.txt");
        assert_eq!(parse(ok(rt.git_changes(ctx(), "c3".into()).await, "git_changes"))[0]["status"], "A");
        assert!(ok(rt.git_original(ctx(), "c3".into(), "a.txt".into(), 100).await, "git_original").is_none());
        ok(rt.close(ctx(), "c3".into()).await, "close");
        assert!(ok(rt.destroy(ctx(), "c3".into()).await, "destroy"));
        ok(rt.health(ctx()).await, "runtime health");
        rt.shutdown(1000).await;
    }

    // routes: the journal, read through the last instance.
    let r = ok(new!(new_routes, "ContractRoutes"), &build("routes"));
    assert_eq!(r.routes()[0].path.as_str(), "/contract/journal");
    ok(r.health(ctx()).await, "routes health");
    for shutdown in
        [s.shutdown(1000), k.shutdown(1000), c.shutdown(1000), g.shutdown(1000), a.shutdown(1000), o.shutdown(1000)]
    {
        shutdown.await;
    }
    let request = plugin_api::HttpRequest {
        method: "GET".into(),
        path: "/contract/journal".into(),
        query: "".into(),
        headers: RVec::new(),
        body: RVec::new(),
    };
    let answer = ok(r.handle(ctx(), request).await, "handle");
    assert_eq!(answer.status, 200);
    r.shutdown(1000).await;
    serde_json::from_slice::<Vec<String>>(&answer.body).unwrap()
}

fn assert_every_method(label: &str, journal: &[String], methods: &[&str]) {
    let missing: Vec<&&str> = methods.iter().filter(|m| !journal.iter().any(|j| j == *m)).collect();
    assert!(missing.is_empty(), "{label}: these methods never reached the library: {missing:?}\njournal: {journal:?}");
}

/// Today's build of the fixture: what the next release will freeze.
#[tokio::test]
async fn todays_contract_fixture_answers_every_method() {
    let journal = exercise(&oh_e2e::target_debug(), "today's build").await;
    assert_every_method("today's build", &journal, &methods_of(plugin_api::API_MINOR));
}

/// Every released contract: its libraries, built from its commit, in today's host.
#[tokio::test]
async fn every_released_contract_loads_in_todays_host() {
    let releases = releases();
    for r in &releases {
        let label = format!("plugin-api {} (commit {})", r.version, &r.commit[..12.min(r.commit.len())]);
        let built = tokio::task::spawn_blocking({
            let r = Release { version: r.version.clone(), commit: r.commit.clone() };
            move || build_release(&r)
        })
        .await
        .unwrap();
        let journal = exercise(&built, &label).await;
        assert_every_method(&label, &journal, &methods_of(major_minor(&r.version).1));

        // A library built before the runtime extension point cannot serve as one: refused,
        // naming the version.
        if major_minor(&r.version).1 == 0 {
            let d = Deployment::new();
            d.install_bundled();
            std::fs::copy(built.join("libcontract_plugin.so"), d.plugins_dir().join("libcontract_plugin.so")).unwrap();
            d.write_profile(
                "",
                "[extensions.runtime]\nlibrary = \"contract_plugin\"\nimplementation = \"ContractRuntime\"\n",
            );
            let out = d.run_cli(&["check"]);
            out.assert_refused();
            assert!(
                out.stderr.contains("which has no runtime extension point (added in 1.1)"),
                "{label}: {}",
                out.stderr
            );
        }

        // token-auth, built by an outside author against that release, behind the real server.
        let d = Deployment::new();
        d.install_bundled();
        let plugins = plugins_dir_with(&built, &["token_auth"]);
        std::fs::copy(plugins.path().join("libtoken_auth.so"), d.plugins_dir().join("libtoken_auth.so")).unwrap();
        d.write_profile(
            "",
            &format!(
                "[extensions.user_auth]\nlibrary = \"token_auth\"\nimplementation = \"TokenAuth\"\n\
                 config = {{ tokens = [{{ user_id = \"alice\", sha256 = \"{}\" }}] }}\n",
                sha256_hex("alice-token")
            ),
        );
        let host = d.start();
        let none = host.get("/api/settings").await;
        assert_eq!((none.status, none.json()["error"].as_str()), (401, Some("NoCredentialsError")), "{label}");
        let stored = host
            .send(
                host.http.post(host.url("/api/settings")).bearer_auth("alice-token").json(&json!({ "llm_model": "m" })),
            )
            .await;
        assert_eq!(stored.status, 200, "{label}: {}", stored.text);
        let read = host.send(host.http.get(host.url("/api/settings")).bearer_auth("alice-token")).await;
        assert_eq!(read.json()["llm_model"], "m", "{label}");
    }
}

/// The host asks only listeners built against 1.2 or later for feature flags (an older one
/// would read the query as a start's), and sends the web client a signed-in caller's flags
/// with the headers its sign-in asked for.
#[tokio::test]
async fn feature_flags_are_asked_of_1_2_listeners_only() {
    let today = oh_e2e::target_debug();
    let mut builds = vec![("today's build".to_owned(), plugin_api::API_MINOR, today)];
    for r in releases().iter().filter(|r| major_minor(&r.version).1 < 2) {
        let release = Release { version: r.version.clone(), commit: r.commit.clone() };
        let built = tokio::task::spawn_blocking(move || build_release(&release)).await.unwrap();
        builds.push((format!("plugin-api {}", r.version), major_minor(&r.version).1, built));
    }
    for (label, minor, built) in builds {
        let d = Deployment::new();
        d.install_bundled();
        std::fs::copy(built.join("libcontract_plugin.so"), d.plugins_dir().join("libcontract_plugin.so")).unwrap();
        d.write_profile(
            "",
            "[extensions.user_auth]\nlibrary = \"contract_plugin\"\nimplementation = \"ContractAuth\"\n\
             [[extensions.monitoring]]\nlibrary = \"contract_plugin\"\nimplementation = \"ContractMonitoring\"\n\
             [[extensions.routes]]\nlibrary = \"contract_plugin\"\nimplementation = \"ContractRoutes\"\n",
        );
        let host = d.start();
        let monitoring_calls = || async {
            let plugins = host.admin_get("/internal/plugins").await.json();
            let all = plugins["instances"].as_array().cloned().unwrap_or_default();
            let m = all.iter().find(|i| i["extension"] == "extensions.monitoring[0]").cloned().unwrap_or_default();
            m["stats"]["calls"].as_u64().unwrap_or_else(|| panic!("{label}: {plugins}"))
        };
        let before = monitoring_calls().await;
        let config = host.send(host.http.get(host.url("/api/options/config")).bearer_auth("contract")).await;
        assert_eq!(config.status, 200, "{label}: {}", config.text);
        let flag = &config.json()["FEATURE_FLAGS"]["CONTRACT_FLAG"];
        if minor >= 2 {
            assert_eq!(flag, "on", "{label}: {}", config.text);
            assert_eq!(config.headers["x-contract"], "yes", "{label}: the sign-in's headers are sent back");
            assert_eq!(monitoring_calls().await, before + 1, "{label}");
            // A plugin asks for the caller's flags with a host call.
            let asked = host.send(host.http.get(host.url("/contract/flags")).bearer_auth("contract")).await;
            assert_eq!(asked.json(), json!({ "CONTRACT_FLAG": "on" }), "{label}: {}", asked.text);
        } else {
            assert!(flag.is_null(), "{label}: {}", config.text);
            assert_eq!(monitoring_calls().await, before, "{label}: a {minor} listener was asked for flags");
        }
        // Anonymous: no flags, and nobody asked.
        let anonymous = host.get("/api/options/config").await;
        assert!(anonymous.json()["FEATURE_FLAGS"]["CONTRACT_FLAG"].is_null(), "{label}");
    }
}

/// A library replaced in place by a rebuild with other behaviour, under a running server:
/// the contract fixture as plugin-api 1.0 built it serves the settings, then today's build is
/// dropped over the same file and the profile names the runtime it now offers; a reload (no
/// restart) loads the new file from its own copy and serves both, while eight clients keep
/// sending requests.
#[tokio::test]
async fn a_library_rebuilt_with_new_behaviour_is_swapped_in_by_a_reload() {
    let Some(first) = releases().into_iter().find(|r| major_minor(&r.version).1 == 0) else { return };
    let built = tokio::task::spawn_blocking(move || build_release(&first)).await.unwrap().join("libcontract_plugin.so");
    let d = Deployment::new();
    d.install_bundled();
    let lib = d.plugins_dir().join("libcontract.so");
    let install = |from: &Path| {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = d.plugins_dir().join("libcontract.so.new");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::rename(&tmp, &lib).unwrap();
    };
    install(&built);
    let settings = "[extensions.settings_store]\nlibrary = \"contract\"\nimplementation = \"ContractSettings\"\n";
    d.write_profile("", settings);
    let host = d.start();
    let busy = oh_e2e::Busy::start(&host, None);
    let api = |plugins: &Value| {
        plugins["libraries"].as_array().unwrap().iter().find(|l| l["name"] == "contract").unwrap()["api_version"]
            .clone()
    };
    assert_eq!(api(&host.admin_get("/internal/plugins").await.json()), "1.0");

    install(&oh_e2e::target_debug().join("libcontract_plugin.so"));
    d.write_profile(
        "",
        &format!("{settings}[extensions.runtime]\nlibrary = \"contract\"\nimplementation = \"ContractRuntime\"\n"),
    );
    let out = d.run_cli(&["reload", "--admin", host.admin.as_deref().unwrap()]);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("added     extensions.runtime"), "{}", out.stdout);
    assert!(out.stdout.contains("replaced  extensions.settings_store"), "{}", out.stdout);
    let plugins = host.admin_get("/internal/plugins").await.json();
    assert_eq!(api(&plugins), plugin_api::API_MAJOR.to_string() + "." + &plugin_api::API_MINOR.to_string());
    let runtime = plugins["instances"].as_array().unwrap().iter().find(|i| i["extension_point"] == "runtime").cloned();
    assert_eq!(runtime.map(|r| r["healthy"].clone()), Some(json!(true)));
    busy.stop().await;
}
