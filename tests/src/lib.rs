//! The end-to-end harness: a [`TestHost`] runs the real `oh-host` binary on `127.0.0.1:0`
//! with a temporary state dir, plugins dir and profile; helpers build profiles and copy
//! plugin libraries the way an operator would.
//!
//! The binaries and libraries come from `make test` (which builds the workspace, the plugins
//! and the example plugin first): `target/debug/oh-host`, `target/debug/lib*.so`.

pub mod browser;
pub mod conversation;
pub mod git;
pub mod git_http;
pub mod in_process;
pub mod llm;
pub mod metrics;
pub mod oidc;
pub mod openhands;
pub mod pg;
pub mod providers;
pub mod redis;
pub mod sio;
pub mod stripe;
pub mod tls;

use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// The base of the tests' SaaS profiles: the PostgreSQL stores on `db_url`, `SaasUserAuth`
/// signing in each `(user id, key)` with no rate limit (its Redis keys under a prefix of their
/// own), and the standalone manager allowed to call the fake LLM on 127.0.0.1 with
/// `manager_extra` added to its config (`, max_concurrent_conversations = 10`).
pub fn saas_base_profile(db_url: &str, users: &[(&str, &str)], manager_extra: &str) -> String {
    let stores = format!("{{ database_url = \"{db_url}\", master_key = \"tests-master-key-0123456789abc\" }}");
    let keys: Vec<String> = users
        .iter()
        .map(|(user, key)| format!("{{ user_id = \"{user}\", sha256 = \"{}\" }}", sha256_hex(key)))
        .collect();
    let auth = format!(
        "{{ database_url = \"{db_url}\", rate_limit_per_second = 0, rate_limit_per_minute = 0, redis_key_prefix = \"{}\", \
         static_keys = [{}] }}",
        redis::prefix("saas"),
        keys.join(", ")
    );
    format!(
        "[extensions.settings_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasSettingsStore\"\nconfig = {stores}\n\
         [extensions.secrets_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasSecretsStore\"\nconfig = {stores}\n\
         [extensions.conversation_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasConversationStore\"\nconfig = {stores}\n\
         [extensions.user_auth]\nlibrary = \"saas_auth\"\nimplementation = \"SaasUserAuth\"\nconfig = {auth}\n\
         [extensions.conversation_manager]\nlibrary = \"standalone_manager\"\nimplementation = \"StandaloneConversationManager\"\n\
         config = {{ llm_max_retries = 0, llm_private_hosts_allowed = [\"127.0.0.1\"]{manager_extra} }}\n"
    )
}

/// `[extensions.runtime]` with the bundled `sandbox_runtime` library: `implementation` is
/// `LocalRuntime` or `BubblewrapRuntime`, `config` the inside of its config table.
pub fn runtime_entry(implementation: &str, config: &str) -> String {
    format!("[extensions.runtime]\nlibrary = \"sandbox_runtime\"\nimplementation = \"{implementation}\"\nconfig = {{ {config} }}\n")
}

/// Hex HMAC-SHA256 of `message` (RFC 2104 written out over SHA-256, so tests sign webhooks
/// without sharing the plugins' code). Keys longer than a block are hashed first.
pub fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    let outer = Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize();
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

/// The libraries the Makefile bundles (`BUNDLED`; a hygiene test keeps the two equal).
pub const BUNDLED: &[&str] = &[
    "file_stores",
    "default_auth",
    "log_monitoring",
    "saas_monitoring",
    "standalone_manager",
    "sandbox_runtime",
    "openhands_runtime",
    "clustered_manager",
    "postgres_stores",
    "saas_auth",
    "billing",
    "integrations",
];

/// The plugin API version this workspace speaks, as the host prints it (`0.5`).
pub fn api_version() -> String {
    format!("{}.{}", plugin_api::API_MAJOR, plugin_api::API_MINOR)
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the workspace").to_path_buf()
}

/// `target/debug`, where `make test` leaves the binary and the libraries.
pub fn target_debug() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace().join("target")).join("debug")
}

pub fn host_binary() -> PathBuf {
    let bin = target_debug().join("oh-host");
    assert!(bin.exists(), "{} is missing: run `make test` (it builds the host first)", bin.display());
    bin
}

/// A temporary directory laid out like a deployment: `plugins/`, `state/`, `plugins.toml`.
pub struct Deployment {
    pub dir: tempfile::TempDir,
}

impl Default for Deployment {
    fn default() -> Self {
        Self::new()
    }
}

impl Deployment {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("plugins")).unwrap();
        fs::set_permissions(dir.path().join("plugins"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    /// The same under `/var/tmp`, as a production state directory is: outside the `/tmp` a
    /// sandbox gets privately, so a test of what a sandbox sees is not fooled by it.
    pub fn outside_tmp() -> Self {
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir in /var/tmp");
        fs::create_dir(dir.path().join("plugins")).unwrap();
        fs::set_permissions(dir.path().join("plugins"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    pub fn plugins_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn profile_path(&self) -> PathBuf {
        self.dir.path().join("plugins.toml")
    }

    /// Copies `target/debug/lib<built>.so` into the plugins dir as `lib<name>.so`.
    pub fn install_as(&self, built: &str, name: &str) -> PathBuf {
        let src = target_debug().join(format!("lib{built}.so"));
        assert!(src.exists(), "{} is missing: run `make test` (it builds every plugin first)", src.display());
        let dst = self.plugins_dir().join(format!("lib{name}.so"));
        fs::copy(&src, &dst).unwrap();
        fs::set_permissions(&dst, fs::Permissions::from_mode(0o644)).unwrap();
        dst
    }

    pub fn install(&self, name: &str) -> PathBuf {
        self.install_as(name, name)
    }

    /// The bundled plugins ([`BUNDLED`]).
    pub fn install_bundled(&self) {
        for p in BUNDLED {
            self.install(p);
        }
    }

    /// Writes `plugins.toml`: a `[server]` table pointing at this deployment, then `extra`.
    pub fn write_profile(&self, server_extra: &str, extra: &str) {
        let text = format!(
            "[server]\nbind = \"127.0.0.1:0\"\nadmin_bind = \"127.0.0.1:0\"\nplugins_dir = \"{}\"\nstate_dir = \"{}\"\nshutdown_timeout_ms = 2000\n{server_extra}\n\n{extra}\n",
            self.plugins_dir().display(),
            self.state_dir().display()
        );
        fs::write(self.profile_path(), text).unwrap();
    }

    /// Runs `oh-host <args> --config plugins.toml` to completion.
    pub fn run_cli(&self, args: &[&str]) -> CliOutput {
        self.run_cli_env(args, &[])
    }

    pub fn run_cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
        let out = Command::new(host_binary())
            .args(args)
            .arg("--config")
            .arg(self.profile_path())
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .output()
            .expect("run oh-host");
        CliOutput {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts the server and waits until it listens.
    pub fn start(&self) -> TestHost {
        self.start_with_env(&[])
    }

    pub fn start_with_env(&self, env: &[(&str, &str)]) -> TestHost {
        self.start_with(&[], env)
    }

    /// Starts `oh-host <args> --config plugins.toml` with `env` and waits until it listens.
    pub fn start_with(&self, args: &[&str], env: &[(&str, &str)]) -> TestHost {
        self.start_wrapped(&[], args, env)
    }

    /// Starts the host under a wrapper command (`["prlimit", "--nofile=128:128", "--"]`).
    pub fn start_wrapped(&self, wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> TestHost {
        self.spawn(wrapper, args, env, false).0
    }

    /// Starts the server and hands its stderr, past the "listening" line, to the caller: a
    /// pipe to read, leave unread or close. [`TestHost::log`] holds what came before, and
    /// what comes after once given back with [`TestHost::resume_log`].
    pub fn start_with_stderr(&self, env: &[(&str, &str)]) -> (TestHost, LogLines) {
        let (host, lines) = self.spawn(&[], &[], env, true);
        (host, lines.expect("handed over"))
    }

    fn spawn(
        &self,
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
        hand_over: bool,
    ) -> (TestHost, Option<LogLines>) {
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(host_binary());
                c
            }
            None => Command::new(host_binary()),
        };
        let mut child = command
            .args(args)
            .arg("--config")
            .arg(self.profile_path())
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn oh-host");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        let admin: Arc<Mutex<Option<String>>> = Arc::default();
        let admin_slot = admin.clone();
        std::thread::spawn(move || {
            while let Some(Ok(line)) = lines.next() {
                push_line(&sink, &line);
                // The address ends at a space, or at a quote in a JSON line (`LOG_JSON`).
                let address =
                    |rest: &str| rest.split(|c: char| c.is_whitespace() || c == '"').next().unwrap_or("").to_owned();
                if let Some(addr) = line.split("(/internal/*) on http://").nth(1) {
                    *admin_slot.lock().unwrap() = Some(address(addr));
                }
                if let Some(addr) = line.split("listening on http://").nth(1) {
                    if hand_over {
                        let _ = tx.send((address(addr), Some(lines)));
                        return;
                    }
                    let _ = tx.send((address(addr), None));
                    break;
                }
            }
            append_lines(lines, &sink);
        });
        let (addr, lines) = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(started) => started,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("oh-host did not start; its log:\n{}", log.lock().unwrap());
            }
        };
        let admin = admin.lock().unwrap().clone().map(|a| format!("http://{a}"));
        (TestHost { child, base: format!("http://{addr}"), admin, log, http: reqwest::Client::new() }, lines)
    }
}

/// A host's stderr, line by line (see [`Deployment::start_with_stderr`]).
pub type LogLines = std::io::Lines<BufReader<std::process::ChildStderr>>;

fn push_line(log: &Mutex<String>, line: &str) {
    let mut l = log.lock().unwrap();
    l.push_str(line);
    l.push('\n');
}

/// Appends every line still to come to `log`, until the process closes its stderr.
fn append_lines(lines: LogLines, log: &Mutex<String>) {
    for line in lines.map_while(Result::ok) {
        push_line(log, &line);
    }
}

pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Exited by itself (no signal: the host did not crash) with a non-zero status.
    pub fn assert_refused(&self) {
        use std::os::unix::process::ExitStatusExt;
        assert!(self.status.signal().is_none(), "oh-host died of a signal: {:?}\n{}", self.status, self.stderr);
        assert!(!self.status.success(), "expected a failure, got success:\n{}{}", self.stdout, self.stderr);
    }
}

/// A running `oh-host`.
pub struct TestHost {
    child: Child,
    pub base: String,
    /// The admin listener (`/internal/*`), when the profile has one.
    pub admin: Option<String>,
    log: Arc<Mutex<String>>,
    pub http: reqwest::Client,
}

impl TestHost {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The log once it holds `needle`, or once `within` has passed (the caller asserts).
    pub async fn log_containing(&self, needle: &str, within: Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let log = self.log();
            if log.contains(needle) || std::time::Instant::now() >= deadline {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Reads the stderr handed over by [`Deployment::start_with_stderr`] into [`Self::log`]
    /// again, from where it stands.
    pub fn resume_log(&self, lines: LogLines) {
        let log = self.log.clone();
        std::thread::spawn(move || append_lines(lines, &log));
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the process ended, when it ends within `within` (by itself: nothing is sent).
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits until `/ready` answers 200 (every plugin's health: the database reachable and
    /// migrated), as a load balancer does before it sends users; panics after 60 s.
    pub async fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            let r = self.get("/ready").await;
            if r.status == 200 {
                return;
            }
            if started.elapsed() > Duration::from_secs(60) {
                // Which instance is not ready, and why (the admin listener names them).
                let detail = match &self.admin {
                    Some(_) => self.admin_get("/internal/ready").await.text,
                    None => "(no admin listener to ask which plugin)".to_owned(),
                };
                panic!("oh-host was not ready within 60 s: {} {}; {detail}", r.status, r.text);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// GET on the admin listener (`/internal/*`).
    pub async fn admin_get(&self, path: &str) -> Response {
        let base = self.admin.as_deref().expect("this host has no admin listener (admin_bind = \"off\"?)");
        Response::from(self.http.get(format!("{base}{path}")).send().await.expect("GET")).await
    }

    pub async fn get(&self, path: &str) -> Response {
        Response::from(self.http.get(self.url(path)).send().await.expect("GET")).await
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Response {
        Response::from(req.send().await.expect("request")).await
    }

    /// A request signed in with an API key (`Authorization: Bearer`), with a JSON body if any.
    pub async fn as_key(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Response {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(key);
        if let Some(body) = body {
            req = req.json(&body);
        }
        self.send(req).await
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> Response {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    /// Sends raw request bytes and returns the raw answer (for what HTTP clients normalise).
    pub fn raw(&self, request: &str) -> String {
        use std::io::{Read, Write};
        let addr = self.base.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> ExitStatus {
        self.signal("TERM")
    }

    /// Ctrl-C (SIGINT), then wait for a clean exit; the log stays readable.
    pub fn interrupt(&mut self) -> ExitStatus {
        self.signal("INT")
    }

    /// Sends a signal without waiting (`STOP`, `CONT`).
    pub fn send_signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal} failed");
    }

    /// Sends `signal` (`TERM`, `INT`, `KILL`, ...) and waits for the process to end.
    pub fn signal(&mut self, signal: &str) -> ExitStatus {
        let _ = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status();
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                panic!("oh-host did not stop within 20 s after SIG{signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what the host said (the last lines: enough for the cause).
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(80)..].join("\n");
            eprintln!("---- the log of oh-host at {} (last {} lines) ----\n{tail}", self.base, lines.len().min(80));
        }
    }
}

/// A response read in full.
pub struct Response {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Response {
    async fn from(r: reqwest::Response) -> Response {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap_or_default();
        Response { status, headers, text }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

/// SHA-256 hex of a string.
pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Every file under `dir` whose bytes contain `needle`.
/// Every file under `dir`, recursively (none when it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

pub fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if fs::read(&p).map(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes())).unwrap_or(false) {
                hits.push(p);
            }
        }
    }
    hits
}

/// SHA-256 hex of a file.
pub fn sha256_hex_file(path: &Path) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(fs::read(path).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Eight clients sending `GET /api/settings` (with `bearer` when given) in a loop while a test
/// changes the server under them; [`Busy::stop`] answers (requests, failures). A request fails
/// when it gets no answer, or an answer other than 200/404 (no settings stored yet).
pub struct Busy {
    stop: Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<(u64, Vec<String>)>>,
}

impl Busy {
    pub fn start(host: &TestHost, bearer: Option<&str>) -> Busy {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients = (0..8)
            .map(|_| {
                let (http, url, stop) = (host.http.clone(), host.url("/api/settings"), stop.clone());
                let bearer = bearer.map(str::to_owned);
                tokio::spawn(async move {
                    let (mut sent, mut failed) = (0u64, Vec::new());
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        sent += 1;
                        let mut request = http.get(&url);
                        if let Some(token) = &bearer {
                            request = request.bearer_auth(token);
                        }
                        match request.send().await {
                            Ok(r) if r.status() == 200 || r.status() == 404 => {}
                            Ok(r) => failed.push(format!("{} {}", r.status(), r.text().await.unwrap_or_default())),
                            Err(e) => failed.push(e.to_string()),
                        }
                    }
                    (sent, failed)
                })
            })
            .collect();
        Busy { stop, clients }
    }

    /// Stops the clients; asserts that some requests were sent and none failed.
    pub async fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut sent, mut failed) = (0, Vec::new());
        // Each client sent at least one request while it ran (a loaded machine sends few).
        let clients = self.clients.len() as u64;
        for c in self.clients {
            let (s, f) = c.await.unwrap();
            sent += s;
            failed.extend(f);
        }
        assert!(sent >= clients, "only {sent} requests were sent by {clients} clients");
        assert!(failed.is_empty(), "{} of {sent} requests failed: {:?}", failed.len(), &failed[..failed.len().min(5)]);
        sent
    }
}
