//! OpenHands' action execution server as seen over HTTP: `/alive`, `/execute_action` (the
//! `run` and `read` actions, as `event_to_dict` shapes them), `/list_files` and
//! `/upload_file`, each with the sandbox's `X-Session-API-Key`.

use plugin_sdk::{ErrorCode, PluginError};
use serde_json::{json, Value};
use std::time::Duration;

/// One sandbox's server.
#[derive(Clone)]
pub(crate) struct Server {
    base: String,
    key: Option<String>,
    http: reqwest::Client,
}

/// What the server answered an action with: its observation (`observation`, `content`,
/// `extras`).
pub(crate) type Observation = Value;

/// The most an observation may weigh on the wire, past the bound a call asks for.
const SLACK_BYTES: usize = 64 << 10;

fn unavailable(what: &str, e: impl std::fmt::Display) -> PluginError {
    PluginError::new(ErrorCode::UNAVAILABLE, format!("the sandbox's server did not answer {what}: {e}"))
}

impl Server {
    pub(crate) fn new(base: &str, key: Option<String>, http: reqwest::Client) -> Server {
        Server { base: base.trim_end_matches('/').to_owned(), key, http }
    }

    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    fn post(&self, path: &str, wait: Duration) -> reqwest::RequestBuilder {
        let request = self.http.post(format!("{}{path}", self.base)).timeout(wait);
        match &self.key {
            Some(key) => request.header("X-Session-API-Key", key),
            None => request,
        }
    }

    /// Whether the server is up and its shell initialised (`{"status": "ok"}`).
    pub(crate) async fn alive(&self) -> bool {
        let answer = self.http.get(format!("{}/alive", self.base)).timeout(Duration::from_secs(5)).send().await;
        match answer {
            Ok(r) if r.status().is_success() => {
                r.json::<Value>().await.is_ok_and(|v| v.get("status").and_then(Value::as_str) == Some("ok"))
            }
            _ => false,
        }
    }

    /// Runs one action; its observation, read up to `max_bytes` (past it: `TOO_LARGE`).
    pub(crate) async fn execute(
        &self,
        action: Value,
        wait: Duration,
        max_bytes: usize,
    ) -> Result<Observation, PluginError> {
        let kind = action.get("action").and_then(Value::as_str).unwrap_or("action").to_owned();
        let response = self
            .post("/execute_action", wait)
            .json(&json!({ "action": action }))
            .send()
            .await
            .map_err(|e| unavailable(&format!("a `{kind}` action"), e))?;
        let status = response.status();
        let body = read_bounded(response, max_bytes.saturating_add(SLACK_BYTES)).await?;
        if !status.is_success() {
            let detail = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("detail").map(|d| d.as_str().map_or_else(|| d.to_string(), str::to_owned)))
                .unwrap_or_else(|| format!("HTTP {status}"));
            let code = if status.as_u16() == 403 { ErrorCode::UNAUTHENTICATED } else { ErrorCode::INTERNAL };
            return Err(PluginError::new(code, format!("the sandbox refused a `{kind}` action: {detail}")));
        }
        serde_json::from_slice(&body)
            .map_err(|e| PluginError::internal(format!("the sandbox's answer to a `{kind}` action is not JSON: {e}")))
    }

    /// A `run` action in the agent's shell (`static_in`: a shell of its own in that directory,
    /// for the host's own commands, hidden and never truncated).
    pub(crate) async fn run(
        &self,
        command: &str,
        is_input: bool,
        timeout: Option<f64>,
        static_in: Option<&str>,
        wait: Duration,
        max_bytes: usize,
    ) -> Result<Observation, PluginError> {
        let mut args = json!({ "command": command, "is_input": is_input, "blocking": false });
        if let Some(cwd) = static_in {
            args["is_static"] = json!(true);
            args["hidden"] = json!(true);
            args["cwd"] = json!(cwd);
        }
        let mut action = json!({ "action": "run", "args": args });
        if let Some(t) = timeout {
            action["timeout"] = json!(t);
        }
        self.execute(action, wait, max_bytes).await
    }

    /// The names in a directory, directories ending in `/` (the server's `/list_files`).
    pub(crate) async fn list(&self, dir: &str) -> Result<Vec<String>, PluginError> {
        let response = self
            .post("/list_files", Duration::from_secs(30))
            .json(&json!({ "path": dir }))
            .send()
            .await
            .map_err(|e| unavailable("a listing", e))?;
        if !response.status().is_success() {
            return Err(PluginError::internal(format!("the sandbox could not list {dir}: HTTP {}", response.status())));
        }
        let body = read_bounded(response, 16 << 20).await?;
        serde_json::from_slice(&body)
            .map_err(|e| PluginError::internal(format!("the sandbox's listing is not a list: {e}")))
    }

    /// Writes `content` as `dir/name` (the server's `/upload_file`, made or replaced whole).
    pub(crate) async fn upload(&self, dir: &str, name: &str, content: Vec<u8>) -> Result<(), PluginError> {
        if name.is_empty() || name.contains(['"', '\\', '\r', '\n', '/']) || name.ends_with(".zip") {
            // A `.zip` would be unpacked by the server; the others cannot be named in a
            // multipart header.
            return Err(PluginError::invalid_argument(format!(
                "{name:?} cannot be written through OpenHands' action execution server"
            )));
        }
        let boundary = format!("oh-host-{}", crate::random_hex(12));
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(&content);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let response = self
            .post("/upload_file", Duration::from_secs(120))
            .query(&[("destination", dir)])
            .header("Content-Type", format!("multipart/form-data; boundary={boundary}"))
            .body(body)
            .send()
            .await
            .map_err(|e| unavailable("an upload", e))?;
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            return Err(PluginError::internal(format!(
                "the sandbox could not write {dir}/{name}: HTTP {status} {text}"
            )));
        }
        Ok(())
    }
}

/// A response's body, refused past `max` bytes without reading more.
async fn read_bounded(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, PluginError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| unavailable("in full", e))? {
        if body.len() + chunk.len() > max {
            return Err(PluginError::new(ErrorCode::TOO_LARGE, format!("the sandbox's answer is over {max} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The parts of a `run` observation the agent reads.
pub(crate) struct Ran {
    pub(crate) exit_code: i32,
    /// Output and the server's note on how it ended (`[The command completed ...]`).
    pub(crate) text: String,
    /// The bare output.
    pub(crate) output: String,
}

/// Reads a `run` action's observation; an `error` observation is the error's text.
pub(crate) fn ran(observation: &Observation) -> Result<Ran, PluginError> {
    let kind = observation.get("observation").and_then(Value::as_str).unwrap_or_default();
    let content = observation.get("content").and_then(Value::as_str).unwrap_or_default().to_owned();
    match kind {
        "run" => {
            let meta = &observation["extras"]["metadata"];
            let exit_code = meta.get("exit_code").and_then(Value::as_i64).unwrap_or(-1) as i32;
            let prefix = meta.get("prefix").and_then(Value::as_str).unwrap_or_default();
            let suffix = meta.get("suffix").and_then(Value::as_str).unwrap_or_default();
            // The server's note on a command that ended (`[The command completed with exit
            // code 0.]`) says what `exit_code` says; the one on a command still running says
            // how to go on, which the agent needs.
            let text =
                if exit_code == -1 { format!("{prefix}{content}{suffix}") } else { format!("{prefix}{content}") };
            Ok(Ran { exit_code, text, output: content })
        }
        "error" => Ok(Ran { exit_code: -1, text: content.clone(), output: content }),
        other => Err(PluginError::internal(format!("the sandbox answered a command with a `{other}` observation"))),
    }
}
