//! A small OpenAI-compatible server on 127.0.0.1 that stands in for the LLM (a third party we
//! cannot run here). It speaks the real wire format: `POST /v1/chat/completions`, SSE when
//! `stream` is true (`data: {chunk}` … `data: [DONE]`), JSON otherwise. Replies are scripted
//! per request; with no script it answers `Echo: <last user message>` in three chunks.

use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Json, Router,
};
use serde_json::{json, Value};
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Stream these chunks (or answer them joined, when the request does not stream).
    Chunks(Vec<String>),
    /// Stream `n` chunks, each one `{i} ` (a "token"), `gap` apart.
    Tokens { n: usize, gap: Duration },
    /// Stream `n` chunks `gap` apart, each `t<µs since the Unix epoch when sent> `: lets a
    /// client measure the delay from the LLM's chunk to its own `oh_event`.
    TimedTokens { n: usize, gap: Duration },
    /// Answer with this status and an OpenAI-style error body.
    Status(u16),
    /// Send headers and one chunk, then nothing, forever.
    Stall,
    /// Call these functions, `(name, arguments)`: streamed as `tool_calls` deltas (each call's
    /// id and name first, its arguments in two parts), or answered whole when not streaming.
    Tools(Vec<(String, Value)>),
}

#[derive(Default)]
struct Script {
    replies: VecDeque<Reply>,
    requests: Vec<(Option<String>, Value)>,
    /// The `traceparent` header of each chat request (W3C trace context), if any.
    traceparents: Vec<Option<String>>,
    /// Keys made through the LiteLLM admin API, and those deleted.
    keys: Vec<String>,
    deleted: Vec<String>,
    /// The body of each `/key/generate` request.
    generated: Vec<Value>,
    /// What each answer reports as its cost (LiteLLM's `x-litellm-response-cost`); default
    /// `0.0025`.
    cost: Option<String>,
    /// Unscripted requests call this function when the last message is the user's, and say
    /// "done" once it answered (a tool result is last): any number of conversations at once.
    tool_per_message: Option<(String, Value)>,
}

/// The chat endpoint, and LiteLLM's key admin API (`/key/generate`, `/key/delete`, under the
/// proxy's root or `/v1`).
fn router(script: Arc<Mutex<Script>>) -> Router {
    let mut app = Router::new().route("/v1/chat/completions", post(completions));
    for prefix in ["", "/v1"] {
        app = app
            .route(&format!("{prefix}/key/generate"), post(generate_key))
            .route(&format!("{prefix}/key/delete"), post(delete_key));
    }
    app.with_state(script)
}

async fn generate_key(
    State(script): State<Arc<Mutex<Script>>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if headers.get(header::AUTHORIZATION).is_none() {
        return (StatusCode::UNAUTHORIZED, Json(json!({ "error": "no master key" }))).into_response();
    }
    let mut s = script.lock().unwrap();
    let key = format!("sk-litellm-{}-{}", body["user_id"].as_str().unwrap_or("?"), s.keys.len());
    s.keys.push(key.clone());
    s.generated.push(body.clone());
    Json(json!({ "key": key, "key_alias": body["key_alias"] })).into_response()
}

async fn delete_key(State(script): State<Arc<Mutex<Script>>>, Json(body): Json<Value>) -> Response {
    let mut s = script.lock().unwrap();
    let keys: Vec<String> =
        body["keys"].as_array().into_iter().flatten().filter_map(|k| k.as_str().map(str::to_owned)).collect();
    s.deleted.extend(keys.clone());
    Json(json!({ "deleted_keys": keys })).into_response()
}

/// A running fake LLM.
pub struct FakeLlm {
    pub base_url: String,
    script: Arc<Mutex<Script>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeLlm {
    pub async fn start() -> FakeLlm {
        let script = Arc::new(Mutex::new(Script::default()));
        let app = router(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeLlm { base_url: format!("http://{addr}/v1"), script, task }
    }

    /// The same over HTTPS, with a certificate for `localhost` from a test CA (see
    /// [`crate::tls`]); returns the server and the CA's PEM file, for a client's
    /// `SSL_CERT_FILE`.
    pub async fn start_tls(dir: &std::path::Path) -> (FakeLlm, std::path::PathBuf) {
        let script = Arc::new(Mutex::new(Script::default()));
        let app = router(script.clone());
        let (port, ca, task) = crate::tls::serve(app, dir).await;
        (FakeLlm { base_url: format!("https://localhost:{port}/v1"), script, task }, ca)
    }

    /// The `traceparent` of each chat request so far.
    pub fn traceparents(&self) -> Vec<Option<String>> {
        self.script.lock().unwrap().traceparents.clone()
    }

    /// Keys made through the admin API, and the deleted ones.
    /// The bodies of the `/key/generate` requests received.
    pub fn key_requests(&self) -> Vec<Value> {
        self.script.lock().unwrap().generated.clone()
    }

    pub fn proxy_keys(&self) -> (Vec<String>, Vec<String>) {
        let s = self.script.lock().unwrap();
        (s.keys.clone(), s.deleted.clone())
    }

    /// Queues replies for the next requests, in order.
    pub fn push(&self, replies: impl IntoIterator<Item = Reply>) {
        self.script.lock().unwrap().replies.extend(replies);
    }

    /// From now on, unscripted requests call `name(args)` for each user message, then answer
    /// "done" to its result.
    pub fn call_tool_per_message(&self, name: &str, args: Value) {
        self.script.lock().unwrap().tool_per_message = Some((name.to_owned(), args));
    }

    /// What each answer from now on reports as its cost, in US dollars.
    pub fn set_cost(&self, cost: &str) {
        self.script.lock().unwrap().cost = Some(cost.to_owned());
    }

    /// Every request so far: (bearer key, body).
    pub fn requests(&self) -> Vec<(Option<String>, Value)> {
        self.script.lock().unwrap().requests.clone()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn chunk(model: &str, delta: &str) -> String {
    let v = json!({ "id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model,
                    "choices": [{ "index": 0, "delta": { "content": delta }, "finish_reason": null }] });
    format!("data: {v}\n\n")
}

async fn completions(
    State(script): State<Arc<Mutex<Script>>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let reply = {
        let mut s = script.lock().unwrap();
        s.requests.push((key, body.clone()));
        s.traceparents.push(headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned));
        let last_role = body["messages"].as_array().and_then(|m| m.last()).map(|m| m["role"].clone());
        let reply = s.replies.pop_front().or_else(|| {
            let (name, args) = s.tool_per_message.clone()?;
            Some(if last_role.as_ref().is_some_and(|r| r == "tool") {
                Reply::Chunks(vec!["done".to_owned()])
            } else {
                Reply::Tools(vec![(name, args)])
            })
        });
        (reply, s.cost.clone().unwrap_or_else(|| "0.0025".to_owned()))
    };
    let (reply, cost) = reply;
    let last_user = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_owned();
    let reply = reply.unwrap_or_else(|| Reply::Chunks(vec!["Echo: ".into(), last_user.clone(), ".".into()]));
    let model = body["model"].as_str().unwrap_or("fake").to_owned();
    let streaming = body["stream"].as_bool().unwrap_or(false);
    match reply {
        Reply::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap();
            (status, Json(json!({ "error": { "message": format!("scripted {code}"), "type": "fake" } })))
                .into_response()
        }
        Reply::Chunks(chunks) if !streaming => {
            let content: String = chunks.concat();
            Json(json!({
                "id": "chatcmpl-fake", "object": "chat.completion", "model": model,
                "choices": [{ "index": 0, "message": { "role": "assistant", "content": content }, "finish_reason": "stop" }],
                "usage": { "prompt_tokens": 10, "completion_tokens": chunks.len(), "total_tokens": 10 + chunks.len() },
            }))
            .into_response()
        }
        Reply::Chunks(chunks) => sse(model, chunks.into_iter().map(|c| (c, Duration::ZERO)).collect(), false, &cost),
        Reply::Tokens { n, gap } => sse(model, (0..n).map(|i| (format!("{i} "), gap)).collect(), false, &cost),
        Reply::TimedTokens { n, gap } => {
            sse(model, (0..n).map(|_| (TIMESTAMP.to_owned(), gap)).collect(), false, &cost)
        }
        Reply::Stall => sse(model, vec![("…".to_owned(), Duration::ZERO)], true, &cost),
        Reply::Tools(calls) if !streaming => {
            let listed: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, (name, args))| {
                    json!({ "id": format!("call_{i}"), "type": "function",
                                                 "function": { "name": name, "arguments": args.to_string() } })
                })
                .collect();
            Json(json!({
                "id": "chatcmpl-fake", "object": "chat.completion", "model": model,
                "choices": [{ "index": 0, "message": { "role": "assistant", "content": null, "tool_calls": listed }, "finish_reason": "tool_calls" }],
                "usage": { "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15 },
            }))
            .into_response()
        }
        Reply::Tools(calls) => {
            let mut events = String::new();
            for (i, (name, args)) in calls.iter().enumerate() {
                let text = args.to_string();
                let (a, b) = text.split_at(text.len() / 2);
                let head = json!({ "choices": [{ "index": 0, "delta": { "tool_calls": [{ "index": i, "id": format!("call_{i}"), "type": "function",
                                   "function": { "name": name, "arguments": "" } }] } }] });
                events.push_str(&format!("data: {head}\n\n"));
                for part in [a, b] {
                    let piece = json!({ "choices": [{ "index": 0, "delta": { "tool_calls": [{ "index": i, "function": { "arguments": part } }] } }] });
                    events.push_str(&format!("data: {piece}\n\n"));
                }
            }
            let usage =
                json!({ "choices": [], "usage": { "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15 } });
            events.push_str(&format!("data: {usage}\n\ndata: [DONE]\n\n"));
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .header("x-litellm-response-cost", cost)
                .body(Body::from(events))
                .unwrap()
        }
    }
}

/// A chunk text replaced by `t<µs since the epoch> ` at the moment it is sent.
const TIMESTAMP: &str = "\u{0}now";

/// Microseconds since the Unix epoch.
pub fn now_micros() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros()
}

fn sse(model: String, chunks: Vec<(String, Duration)>, stall: bool, cost: &str) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(16);
    tokio::spawn(async move {
        let n = chunks.len();
        for (text, gap) in chunks {
            if !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            let text = if text == TIMESTAMP { format!("t{} ", now_micros()) } else { text };
            if tx.send(Ok(chunk(&model, &text))).await.is_err() {
                return;
            }
        }
        if stall {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
        let usage = json!({ "id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [],
                            "usage": { "prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n } });
        let _ = tx.send(Ok(format!("data: {usage}\n\n"))).await;
        let _ = tx.send(Ok("data: [DONE]\n\n".to_owned())).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header("x-litellm-response-cost", cost)
        .body(Body::from_stream(stream))
        .unwrap()
}
