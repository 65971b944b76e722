//! OpenHands' remote runtime API (sandboxes on a cluster), spoken as its `RemoteRuntime`
//! speaks it in openhands-ai 0.62: `GET /sessions/{sid}` to find a conversation's sandbox,
//! `POST /start`, `/resume`, `/pause`, `/stop` with a `runtime_id`, `GET /runtime/{id}`
//! until its `pod_status` is `ready`; every request with the API's `X-API-Key`.

use crate::config::RuntimeApi;
use plugin_sdk::{ErrorCode, PluginError};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A sandbox the API started or found: where its server is and its key.
pub(crate) struct Remote {
    pub(crate) runtime_id: String,
    pub(crate) url: String,
    pub(crate) session_api_key: Option<String>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> PluginError {
    PluginError::new(ErrorCode::UNAVAILABLE, format!("the runtime API {what}: {e}"))
}

async fn send(
    api: &RuntimeApi,
    http: &reqwest::Client,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), PluginError> {
    let mut request = http
        .request(method, format!("{}{path}", api.url))
        .header("X-API-Key", &api.key)
        .timeout(Duration::from_secs(60));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.map_err(|e| unavailable(&format!("did not answer {path}"), e))?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(|e| unavailable(&format!("did not answer {path} in full"), e))?;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if status == 401 || status == 403 {
        return Err(PluginError::new(
            ErrorCode::UNAUTHENTICATED,
            format!("the runtime API refused runtime_api_key ({status} on {path})"),
        ));
    }
    Ok((status, value))
}

fn parse(value: &Value) -> Result<Remote, PluginError> {
    let text = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_owned);
    match (text("runtime_id"), text("url")) {
        (Some(runtime_id), Some(url)) => Ok(Remote { runtime_id, url, session_api_key: text("session_api_key") }),
        _ => Err(PluginError::internal(format!("the runtime API's answer names no runtime_id and url: {value}"))),
    }
}

/// The conversation's sandbox: the running one, a paused one resumed, or a new one.
pub(crate) async fn open(api: &RuntimeApi, http: &reqwest::Client, session_id: &str) -> Result<Remote, PluginError> {
    let (status, found) = send(api, http, reqwest::Method::GET, &format!("/sessions/{session_id}"), None).await?;
    if status == 200 {
        match found.get("status").and_then(Value::as_str) {
            Some("running") => return parse(&found),
            Some("paused") => {
                let remote = parse(&found)?;
                let (status, answer) =
                    send(api, http, reqwest::Method::POST, "/resume", Some(json!({ "runtime_id": remote.runtime_id })))
                        .await?;
                if (200..300).contains(&status) {
                    return Ok(remote);
                }
                tracing::warn!(status, answer = %answer, "the runtime API did not resume a paused sandbox; starting a new one");
            }
            _ => {}
        }
    } else if status != 404 {
        return Err(PluginError::internal(format!(
            "the runtime API answered /sessions/{session_id} with {status}: {found}"
        )));
    }
    let mut request = json!({
        "image": api.image,
        "command": api.command.iter().map(|a| a.replace("{conversation_id}", session_id)).collect::<Vec<_>>(),
        "working_dir": "/openhands/code/",
        "environment": api.environment,
        "session_id": session_id,
        "resource_factor": api.resource_factor,
    });
    if api.runtime_class.as_deref() == Some("sysbox") {
        request["runtime_class"] = json!("sysbox-runc");
    }
    let (status, started) = send(api, http, reqwest::Method::POST, "/start", Some(request)).await?;
    if !(200..300).contains(&status) {
        return Err(PluginError::new(
            ErrorCode::UNAVAILABLE,
            format!("the runtime API could not start a sandbox ({status}): {}", detail(&started)),
        ));
    }
    parse(&started)
}

fn detail(value: &Value) -> String {
    value.get("detail").and_then(Value::as_str).map_or_else(|| value.to_string(), str::to_owned)
}

/// Waits for the sandbox's pod to be `ready` (then the caller waits for `/alive`).
pub(crate) async fn ready(
    api: &RuntimeApi,
    http: &reqwest::Client,
    runtime_id: &str,
    until: Instant,
) -> Result<(), PluginError> {
    loop {
        let (status, info) = send(api, http, reqwest::Method::GET, &format!("/runtime/{runtime_id}"), None).await?;
        let pod = info.get("pod_status").and_then(Value::as_str).unwrap_or("unknown").to_ascii_lowercase();
        match (status, pod.as_str()) {
            (200, "ready") => return Ok(()),
            (200, "failed" | "unknown" | "crashloopbackoff") => {
                return Err(PluginError::new(ErrorCode::UNAVAILABLE, format!("the sandbox {runtime_id} is {pod}")));
            }
            (200 | 404, _) => {}
            _ => {
                return Err(PluginError::internal(format!(
                    "the runtime API answered /runtime/{runtime_id} with {status}"
                )))
            }
        }
        if Instant::now() >= until {
            return Err(PluginError::new(
                ErrorCode::DEADLINE_EXCEEDED,
                format!("the sandbox {runtime_id} was not ready in time (pod status: {pod})"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Pauses (`pause`) or stops the sandbox.
pub(crate) async fn end(
    api: &RuntimeApi,
    http: &reqwest::Client,
    runtime_id: &str,
    pause: bool,
) -> Result<(), PluginError> {
    let path = if pause { "/pause" } else { "/stop" };
    let (status, answer) =
        send(api, http, reqwest::Method::POST, path, Some(json!({ "runtime_id": runtime_id }))).await?;
    if (200..300).contains(&status) || status == 404 {
        Ok(())
    } else {
        Err(PluginError::internal(format!("the runtime API answered {path} with {status}: {}", detail(&answer))))
    }
}

/// Stops the conversation's sandbox wherever it is (running or paused); whether there was one.
pub(crate) async fn destroy(api: &RuntimeApi, http: &reqwest::Client, session_id: &str) -> Result<bool, PluginError> {
    let (status, found) = send(api, http, reqwest::Method::GET, &format!("/sessions/{session_id}"), None).await?;
    if status == 404 || found.get("status").and_then(Value::as_str) == Some("stopped") {
        return Ok(false);
    }
    if status != 200 {
        return Err(PluginError::internal(format!(
            "the runtime API answered /sessions/{session_id} with {status}: {found}"
        )));
    }
    end(api, http, &parse(&found)?.runtime_id, false).await?;
    Ok(true)
}
