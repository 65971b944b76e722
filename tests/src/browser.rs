//! A real browser for the web client's tests: Debian's `chromium`, headless, driven through
//! `chromedriver` with the W3C WebDriver protocol (plain HTTP + JSON, so no client crate).
//!
//! The page's network traffic comes from Chrome's performance log, so a test can assert that
//! no request to the server got an unexpected 4xx/5xx. When a test panics with a browser
//! open, the browser leaves a screenshot, the page's text and its network log in
//! `target/browser-failures/<name>.{png,txt}`.
//!
//! Browser tests run one at a time (two cores, and each Chromium is heavy).

use serde_json::{json, Value};
use std::{
    collections::HashMap,
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

/// How long a wait for the page gives up after.
pub const WAIT: Duration = Duration::from_secs(30);

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The web client's build: `OH_FRONTEND_DIR`, else `../shared/openhands-frontend-0.62.0`
/// beside the workspace. `None` when absent (the browser tests then have nothing to test),
/// unless `OH_REQUIRE_BROWSER` is set (`make test-browser`), which makes absence a failure.
pub fn frontend_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("OH_FRONTEND_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace().join("../shared/openhands-frontend-0.62.0"));
    let present = dir.join("index.html").is_file();
    if !present && std::env::var_os("OH_REQUIRE_BROWSER").is_some() {
        panic!(
            "the OpenHands web client's build is not at {} (its index.html is missing): set OH_FRONTEND_DIR to it",
            dir.display()
        );
    }
    if !present {
        eprintln!("browser test skipped: no web client build at {} (set OH_FRONTEND_DIR)", dir.display());
    }
    present.then_some(dir)
}

/// One response the page received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub url: String,
    pub status: u16,
}

/// A headless Chromium with one WebDriver session.
pub struct Browser {
    name: String,
    http: reqwest::Client,
    driver: Child,
    addr: String,
    session: String,
    _profile: tempfile::TempDir,
    methods: Mutex<HashMap<String, String>>,
    seen: Mutex<Vec<Seen>>,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Browser {
    /// Starts chromedriver and a browser; `name` names the failure artifacts.
    pub async fn start(name: &str) -> Browser {
        let turn = TURN.lock().await;
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(binary).exists(),
                "{binary} is missing: install Debian's browser with `apt-get install -y chromium chromium-driver` \
                 (`make services` does it when run as root)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr = format!("127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            let ready = http.get(format!("http://{addr}/status")).send().await;
            if let Ok(r) = ready {
                if r.json::<Value>().await.is_ok_and(|v| v["value"]["ready"] == true) {
                    break;
                }
            }
            assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not start on {addr}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--no-first-run".to_owned(),
            "--window-size=1400,1000".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
            // Fonts and analytics are on the internet, which tests do not reach.
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost".to_owned(),
            // The fake Keycloak's https listener has a self-signed certificate.
            "--ignore-certificate-errors".to_owned(),
        ];
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": { "performance": "ALL", "browser": "ALL" },
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        }}});
        let created: Value = http
            .post(format!("http://{addr}/session"))
            .json(&caps)
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {created}"))
            .to_owned();
        Browser {
            name: name.to_owned(),
            http,
            driver,
            addr,
            session,
            _profile: profile,
            methods: Mutex::default(),
            seen: Mutex::default(),
            _turn: turn,
        }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let url = format!("http://{}/session/{}{path}", self.addr, self.session);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.expect("chromedriver answers").json().await.unwrap();
        let value = answer["value"].clone();
        if value.get("error").is_some() {
            Err(value)
        } else {
            Ok(value)
        }
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, Value> {
        self.command(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await.unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    pub async fn url(&self) -> String {
        self.command(reqwest::Method::GET, "/url", None).await.unwrap().as_str().unwrap_or("").to_owned()
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the page.
    pub async fn js(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// The page's visible text.
    pub async fn text(&self) -> String {
        self.js("return document.body ? document.body.innerText : ''", json!([]))
            .await
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// An element by CSS selector, or by XPath when the selector starts with `//`.
    async fn find(&self, selector: &str) -> Option<String> {
        let using = if selector.starts_with("//") { "xpath" } else { "css selector" };
        let found = self.post("/element", json!({ "using": using, "value": selector })).await.ok()?;
        found.as_object()?.values().next()?.as_str().map(str::to_owned)
    }

    /// Clicks the button that says `label`.
    pub async fn click_button(&self, label: &str) {
        self.click(&format!("//button[normalize-space()={label:?}]")).await;
    }

    /// Whether an element matches `css` now.
    pub async fn has(&self, css: &str) -> bool {
        self.find(css).await.is_some()
    }

    /// Waits for an element; its WebDriver id.
    pub async fn wait(&self, css: &str) -> String {
        let started = Instant::now();
        loop {
            if let Some(id) = self.find(css).await {
                return id;
            }
            if started.elapsed() > WAIT {
                panic!("no element `{css}` after {WAIT:?}; the page says:\n{}", self.text().await);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until no element matches `css`.
    pub async fn wait_gone(&self, css: &str) {
        self.wait_until(&format!("`{css}` gone"), &format!("return !document.querySelector({css:?})")).await;
    }

    /// Waits until `script` returns something truthy; returns it.
    pub async fn wait_until(&self, what: &str, script: &str) -> Value {
        let started = Instant::now();
        loop {
            let value = self.js(script, json!([])).await;
            let truthy = !matches!(&value, Value::Null | Value::Bool(false)) && value != json!("") && value != json!(0);
            if truthy {
                return value;
            }
            if started.elapsed() > WAIT {
                panic!("waited {WAIT:?} for {what}; the page says:\n{}", self.text().await);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the page's text contains `needle`.
    pub async fn wait_text(&self, needle: &str) {
        let script = format!("return document.body && document.body.innerText.includes({needle:?})");
        self.wait_until(&format!("the text {needle:?}"), &script).await;
    }

    /// Clicks the element, as a user would (retried while something covers it: menus and
    /// dialogs animate).
    pub async fn click(&self, css: &str) {
        let started = Instant::now();
        loop {
            let id = self.wait(css).await;
            match self.post(&format!("/element/{id}/click"), json!({})).await {
                Ok(_) => return,
                Err(e) if started.elapsed() < WAIT => {
                    let error = e["error"].as_str().unwrap_or("");
                    assert!(
                        ["element click intercepted", "element not interactable", "stale element reference"]
                            .contains(&error),
                        "cannot click `{css}`: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("cannot click `{css}` for {WAIT:?}: {}", e["message"]),
            }
        }
    }

    /// Types into the element (keys as a user presses them; `\u{e007}` is Enter).
    pub async fn type_text(&self, css: &str, text: &str) {
        let started = Instant::now();
        loop {
            let id = self.wait(css).await;
            match self.post(&format!("/element/{id}/value"), json!({ "text": text })).await {
                Ok(_) => return,
                Err(e) if started.elapsed() < WAIT => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("cannot type into `{css}`: {}", e["message"]),
            }
        }
    }

    /// Empties an input.
    pub async fn clear(&self, css: &str) {
        let id = self.wait(css).await;
        self.post(&format!("/element/{id}/clear"), json!({}))
            .await
            .unwrap_or_else(|e| panic!("cannot clear `{css}`: {e}"));
    }

    /// Everything the page received so far (Chrome's performance log, drained and kept).
    pub async fn network(&self) -> Vec<Seen> {
        let url = format!("http://{}/session/{}/se/log", self.addr, self.session);
        let answer: Value = self
            .http
            .post(url)
            .json(&json!({ "type": "performance" }))
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .unwrap();
        let mut methods = self.methods.lock().unwrap();
        let mut seen = self.seen.lock().unwrap();
        for entry in answer["value"].as_array().into_iter().flatten() {
            let Ok(message) = serde_json::from_str::<Value>(entry["message"].as_str().unwrap_or("")) else { continue };
            let (kind, params) = (&message["message"]["method"], &message["message"]["params"]);
            let id = params["requestId"].as_str().unwrap_or("").to_owned();
            if kind == "Network.requestWillBeSent" {
                methods.insert(id, params["request"]["method"].as_str().unwrap_or("GET").to_owned());
            } else if kind == "Network.responseReceived" {
                seen.push(Seen {
                    method: methods.get(&id).cloned().unwrap_or_else(|| "GET".to_owned()),
                    url: params["response"]["url"].as_str().unwrap_or("").to_owned(),
                    status: params["response"]["status"].as_u64().unwrap_or(0) as u16,
                });
            }
        }
        seen.clone()
    }

    /// Asserts that no request to `base` got a 4xx/5xx other than the `expected` ones
    /// (`(status, method, path)`; a path ending in `*` is a prefix, `{id}` any one segment).
    /// Returns everything seen, for further checks.
    pub async fn assert_no_unexpected_errors(&self, base: &str, expected: &[(u16, &str, &str)]) -> Vec<Seen> {
        let seen = self.network().await;
        let unexpected: Vec<&Seen> = seen
            .iter()
            .filter(|s| s.status >= 400 && s.url.starts_with(base))
            .filter(|s| {
                let path = s.url[base.len()..].split('?').next().unwrap_or("");
                !expected.iter().any(|(status, method, pattern)| {
                    *status == s.status && *method == s.method && path_matches(pattern, path)
                })
            })
            .collect();
        assert!(unexpected.is_empty(), "unexpected error answers: {unexpected:#?}");
        seen
    }

    /// A screenshot, the page's text and its network log, for a failure.
    fn leave_artifacts(&mut self) {
        let dir = crate::workspace().join("target/browser-failures");
        let _ = std::fs::create_dir_all(&dir);
        let screenshot = self.blocking("GET", "/screenshot", None);
        if let Some(png) = screenshot.as_ref().and_then(|v| v["value"].as_str()) {
            use base64::Engine as _;
            if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(png) {
                let _ = std::fs::write(dir.join(format!("{}.png", self.name)), bytes);
            }
        }
        let page = self.blocking(
            "POST",
            "/execute/sync",
            Some(json!({ "script": "return location.href + '\\n\\n' + (document.body ? document.body.innerText : '')", "args": [] })),
        );
        let text = page.as_ref().and_then(|v| v["value"].as_str()).unwrap_or("(no page)").to_owned();
        let seen = self.seen.lock().map(|s| format!("{s:#?}")).unwrap_or_default();
        let _ = std::fs::write(dir.join(format!("{}.txt", self.name)), format!("{text}\n\nnetwork:\n{seen}\n"));
        eprintln!("browser artifacts: {}", dir.join(&self.name).display());
    }

    /// A WebDriver command without the async runtime (for `Drop`).
    fn blocking(&self, method: &str, path: &str, body: Option<Value>) -> Option<Value> {
        let mut stream = TcpStream::connect(&self.addr).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = format!(
            "{method} /session/{}{path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.session,
            self.addr,
            body.len()
        );
        stream.write_all(request.as_bytes()).ok()?;
        // chromedriver keeps the connection open: read the head, then Content-Length bytes.
        let mut answer = Vec::new();
        let mut chunk = [0u8; 65536];
        let (head_end, length) = loop {
            let n = stream.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            answer.extend_from_slice(&chunk[..n]);
            if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())?;
                break (end + 4, length);
            }
        };
        while answer.len() < head_end + length {
            let n = stream.read(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
        }
        serde_json::from_slice(&answer[head_end..]).ok()
    }
}

fn path_matches(pattern: &str, path: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix('*') {
        return path.starts_with(prefix);
    }
    let (p, q): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), path.split('/').collect());
    p.len() == q.len() && p.iter().zip(&q).all(|(a, b)| *a == "{id}" || a == b)
}

impl Drop for Browser {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.leave_artifacts();
        }
        let _ = self.blocking("DELETE", "", None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
