//! An OpenAI-compatible `/chat/completions` client: streaming (SSE) with a non-streaming
//! fallback, a deadline on every call and on every gap between chunks, and retries with
//! backoff for what may pass (429, 5xx, timeouts, refused connections).

use futures_util::StreamExt as _;
use plugin_sdk::models::Settings;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;

/// One function call the model asked for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// JSON text, as the model wrote it.
    pub arguments: String,
}

/// Providers whose API speaks OpenAI's chat completions, with their endpoint: a model named
/// `<provider>/<model>` (as the web client stores it) is sent there as `<model>`, unless the
/// user set a base URL.
const PROVIDERS: &[(&str, &str)] = &[
    ("openai", "https://api.openai.com/v1"),
    ("anthropic", "https://api.anthropic.com/v1"),
    ("gemini", "https://generativelanguage.googleapis.com/v1beta/openai"),
    ("mistral", "https://api.mistral.ai/v1"),
    ("deepseek", "https://api.deepseek.com/v1"),
    ("groq", "https://api.groq.com/openai/v1"),
    ("openrouter", "https://openrouter.ai/api/v1"),
    ("together_ai", "https://api.together.xyz/v1"),
    ("fireworks_ai", "https://api.fireworks.ai/inference/v1"),
    ("xai", "https://api.x.ai/v1"),
    ("ollama", "http://localhost:11434/v1"),
    // A LiteLLM proxy (OpenHands SaaS names its models `openhands/…`): the base URL is the
    // user's or LITE_LLM_API_URL.
    ("litellm_proxy", ""),
    ("openhands", ""),
];

/// `(provider, model as the provider names it)` for a model string the web client stored.
pub fn split_provider(model: &str) -> (Option<&'static str>, &str) {
    if let Some((prefix, rest)) = model.split_once('/') {
        if let Some((provider, _)) = PROVIDERS.iter().find(|(p, _)| *p == prefix) {
            return (Some(provider), rest);
        }
    }
    (None, model)
}

/// The context window (tokens) of well-known models; 128k otherwise.
pub fn context_window(model: &str) -> i64 {
    let m = model.rsplit('/').next().unwrap_or(model).to_ascii_lowercase();
    let table: &[(&str, i64)] = &[
        ("claude", 200_000),
        ("gpt-5", 400_000),
        ("gpt-4.1", 1_047_576),
        ("gpt-4o", 128_000),
        ("o3", 200_000),
        ("o4", 200_000),
        ("gemini-2", 1_048_576),
        ("gemini-1.5", 1_048_576),
        ("deepseek", 128_000),
        ("devstral", 128_000),
        ("qwen3-coder", 262_144),
        ("kimi-k2", 131_072),
    ];
    table.iter().find(|(prefix, _)| m.starts_with(prefix)).map_or(128_000, |(_, n)| *n)
}

/// Where and how to call the model.
#[derive(Clone, Debug)]
pub struct LlmConfig {
    /// The model as the endpoint names it (a known provider prefix removed).
    pub model: String,
    /// The model as the user chose it (shown in metrics).
    pub display_model: String,
    pub context_window: i64,
    /// Base URL without the `/chat/completions` suffix, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    pub api_key: Option<String>,
    /// Deadline of one whole call.
    pub request_timeout: Duration,
    /// Longest gap between two streamed chunks before the call counts as stalled.
    pub chunk_timeout: Duration,
    /// Retries after the first attempt, for retryable failures.
    pub max_retries: u32,
    /// Wait before the first retry; doubled each time.
    pub initial_backoff: Duration,
    /// The base URL is the user's (`llm_base_url`), not the deployment's (`LITE_LLM_API_URL`):
    /// it is called with the client that enforces the destination policy.
    pub user_endpoint: bool,
    /// The agent's tools are offered (a runtime is configured).
    pub tools: bool,
}

/// The knobs a conversation manager's config sets; the rest comes from the user's settings.
#[derive(Clone, Debug)]
pub struct LlmLimits {
    pub request_timeout: Duration,
    pub chunk_timeout: Duration,
    pub max_retries: u32,
    pub initial_backoff: Duration,
}

impl LlmConfig {
    /// From the user's settings; `LITE_LLM_API_URL` / `LITE_LLM_API_KEY` (read through `env`)
    /// override the base URL and key, as OpenHands SaaS does.
    pub fn from_settings(
        settings: &Settings,
        limits: &LlmLimits,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let display_model =
            settings.llm_model.clone().filter(|m| !m.trim().is_empty()).ok_or("no llm_model in the settings")?;
        let (provider, bare) = split_provider(&display_model);
        let deployment_url = env("LITE_LLM_API_URL").filter(|u| !u.trim().is_empty());
        let user_endpoint = deployment_url.is_none();
        let provider_url = provider.and_then(|p| PROVIDERS.iter().find(|(name, _)| *name == p)).map(|(_, u)| *u);
        let base_url = deployment_url
            .or_else(|| settings.llm_base_url.clone())
            .filter(|u| !u.trim().is_empty())
            .or_else(|| provider_url.filter(|u| !u.is_empty()).map(str::to_owned))
            .unwrap_or_else(|| "https://api.openai.com/v1".to_owned());
        let api_key = env("LITE_LLM_API_KEY").or_else(|| settings.llm_api_key.clone()).filter(|k| !k.trim().is_empty());
        Ok(LlmConfig {
            model: bare.to_owned(),
            context_window: context_window(bare),
            display_model: display_model.clone(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key,
            request_timeout: limits.request_timeout,
            chunk_timeout: limits.chunk_timeout,
            max_retries: limits.max_retries,
            initial_backoff: limits.initial_backoff,
            user_endpoint,
            tools: false,
        })
    }
}

/// One chat message.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant message's function calls (OpenAI's `tool_calls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
    /// A `tool` message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.to_owned(), content: content.to_owned(), ..Default::default() }
    }
}

/// Token usage of a call, as the provider reports it.
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: i64,
    #[serde(default)]
    pub completion_tokens: i64,
    #[serde(default)]
    pub total_tokens: i64,
}

/// A finished completion.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Completion {
    pub content: String,
    /// The functions the model asked to call, in order.
    pub tool_calls: Vec<ToolCall>,
    pub usage: Usage,
    /// USD, when the endpoint reports it (LiteLLM's `x-litellm-response-cost`), else 0.
    pub cost: f64,
}

/// Why a call failed.
#[derive(Clone, Debug, PartialEq)]
pub enum LlmError {
    /// 401/403: the key is wrong; retrying will not help.
    Auth(String),
    /// 429, 5xx, timeouts, stalls, connection failures: may pass.
    Retryable(String),
    /// Anything else (400, a malformed answer).
    Fatal(String),
}

impl std::fmt::Display for LlmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LlmError::Auth(m) => write!(f, "LLM authentication failed: {m}"),
            LlmError::Retryable(m) | LlmError::Fatal(m) => f.write_str(m),
        }
    }
}

/// What happens during a call, for the caller to turn into events.
pub enum Progress<'a> {
    Delta(&'a str),
    Retry { attempt: u32, wait: Duration, reason: &'a str },
}

/// Calls the model with retries. `progress` hears each streamed delta and each retry.
pub async fn complete(
    client: &reqwest::Client,
    cfg: &LlmConfig,
    messages: &[ChatMessage],
    traceparent: &str,
    progress: &mut (dyn FnMut(Progress<'_>) + Send),
) -> Result<Completion, LlmError> {
    let mut attempt = 0;
    let mut wait = cfg.initial_backoff;
    loop {
        let started = std::time::Instant::now();
        // A span per call (GenAI semantic conventions), joined by the LLM request's header.
        let mut span = plugin_sdk::trace::Span::start(traceparent, &format!("chat {}", cfg.model), "client");
        span.set("gen_ai.operation.name", "chat");
        span.set("gen_ai.system", split_provider(&cfg.display_model).0.unwrap_or("openai"));
        span.set("gen_ai.request.model", cfg.model.clone());
        span.set("server.address", cfg.base_url.clone());
        let header = span.traceparent();
        let call = call_once(client, cfg, messages, header.as_deref(), progress);
        let outcome = tokio::time::timeout(cfg.request_timeout, call).await;
        let outcome = match outcome {
            Ok(r) => r,
            Err(_) => {
                Err(LlmError::Retryable(format!("no complete answer within {} s", cfg.request_timeout.as_secs_f64())))
            }
        };
        record(cfg, started.elapsed(), &outcome);
        match &outcome {
            Ok(c) => {
                span.set("gen_ai.usage.input_tokens", c.usage.prompt_tokens);
                span.set("gen_ai.usage.output_tokens", c.usage.completion_tokens);
            }
            Err(e) => span.error(&e.to_string()),
        }
        span.end();
        let err = match outcome {
            Ok(c) => return Ok(c),
            Err(e) => e,
        };
        match err {
            LlmError::Retryable(reason) if attempt < cfg.max_retries => {
                attempt += 1;
                progress(Progress::Retry { attempt, wait, reason: &reason });
                tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, reason = %reason, "LLM call failed; retrying");
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2);
            }
            other => return Err(other),
        }
    }
}

/// LLM call duration histogram buckets, in seconds.
const LLM_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// One LLM call in the host's metrics: its duration and outcome, its tokens and cost.
fn record(cfg: &LlmConfig, took: Duration, outcome: &Result<Completion, LlmError>) {
    let model = cfg.display_model.as_str();
    let result = match outcome {
        Ok(_) => "ok",
        Err(LlmError::Auth(_)) => "auth_error",
        Err(LlmError::Retryable(_)) => "retryable_error",
        Err(LlmError::Fatal(_)) => "error",
    };
    plugin_sdk::observe(
        "oh_llm_request_duration_seconds",
        took.as_secs_f64(),
        LLM_BUCKETS,
        &json!({ "model": model, "outcome": result }),
    );
    if let Ok(c) = outcome {
        plugin_sdk::metric(
            "oh_llm_tokens_total",
            c.usage.prompt_tokens as f64,
            &json!({ "model": model, "type": "prompt" }),
        );
        plugin_sdk::metric(
            "oh_llm_tokens_total",
            c.usage.completion_tokens as f64,
            &json!({ "model": model, "type": "completion" }),
        );
        plugin_sdk::metric("oh_llm_cost_usd_total", c.cost, &json!({ "model": model }));
    }
}

async fn call_once(
    client: &reqwest::Client,
    cfg: &LlmConfig,
    messages: &[ChatMessage],
    traceparent: Option<&str>,
    progress: &mut (dyn FnMut(Progress<'_>) + Send),
) -> Result<Completion, LlmError> {
    let mut body = json!({
        "model": cfg.model,
        "messages": messages,
        "stream": true,
        "stream_options": { "include_usage": true },
    });
    if cfg.tools {
        body["tools"] = crate::toolspec::definitions();
    }
    let mut request = client.post(format!("{}/chat/completions", cfg.base_url)).json(&body);
    if let Some(tp) = traceparent {
        request = request.header("traceparent", tp);
    }
    if let Some(key) = &cfg.api_key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.map_err(|e| match refused_destination(&e) {
        Some(reason) => LlmError::Fatal(reason),
        None => LlmError::Retryable(format!("cannot reach the LLM: {}", describe(&e))),
    })?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        let detail = error_message(&text).unwrap_or_else(|| format!("HTTP {status}"));
        return Err(match status.as_u16() {
            401 | 403 => LlmError::Auth(detail),
            408 | 409 | 429 | 500..=599 => LlmError::Retryable(format!("LLM answered {status}: {detail}")),
            _ => LlmError::Fatal(format!("LLM answered {status}: {detail}")),
        });
    }
    let cost = response
        .headers()
        .get("x-litellm-response-cost")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let streaming = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    let mut completion = if streaming {
        read_stream(response, cfg.chunk_timeout, progress).await?
    } else {
        let value: Value = response.json().await.map_err(|e| LlmError::Fatal(format!("malformed LLM answer: {e}")))?;
        let message = &value["choices"][0]["message"];
        let content = message["content"].as_str().unwrap_or_default().to_owned();
        progress(Progress::Delta(&content));
        let usage = serde_json::from_value(value["usage"].clone()).unwrap_or_default();
        let tool_calls = message["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| ToolCall {
                id: c["id"].as_str().unwrap_or_default().to_owned(),
                name: c["function"]["name"].as_str().unwrap_or_default().to_owned(),
                arguments: c["function"]["arguments"].as_str().unwrap_or_default().to_owned(),
            })
            .collect();
        Completion { content, tool_calls, usage, cost: 0.0 }
    };
    completion.cost = cost;
    Ok(completion)
}

/// A transport error with its causes (a refused connection, a certificate the system does
/// not trust, ...): what an operator needs, and nothing secret.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_owned();
    }
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        let text = err.to_string();
        if !causes.contains(&text) {
            causes.push(text);
        }
        source = err.source();
    }
    let head = if e.is_connect() { "connection failed" } else { "request failed" };
    match causes.last() {
        Some(cause) => format!("{head}: {cause}"),
        None => head.to_owned(),
    }
}

/// The destination policy's refusal, when that is why a request could not be sent.
fn refused_destination(e: &reqwest::Error) -> Option<String> {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = source {
        let text = err.to_string();
        if text.contains("which this server does not call") {
            return Some(text);
        }
        source = err.source();
    }
    None
}

/// The message of an OpenAI-style error body, cut short and stripped of control characters:
/// what an upstream says is shown to the user, never its raw body.
fn error_message(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    let message = v["error"]["message"].as_str().or_else(|| v["error"].as_str())?;
    let clean: String = message.chars().filter(|c| !c.is_control()).take(300).collect();
    Some(clean)
}

/// Reads `data:` events until `[DONE]` or the end of the body.
async fn read_stream(
    response: reqwest::Response,
    chunk_timeout: Duration,
    progress: &mut (dyn FnMut(Progress<'_>) + Send),
) -> Result<Completion, LlmError> {
    let mut stream = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    let mut completion = Completion::default();
    loop {
        let next = tokio::time::timeout(chunk_timeout, stream.next())
            .await
            .map_err(|_| LlmError::Retryable(format!("LLM stream stalled for {} s", chunk_timeout.as_secs_f64())))?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| LlmError::Retryable(format!("LLM stream broke: {}", describe(&e))))?;
        buffer.extend_from_slice(&chunk);
        while let Some(end) = find_event_end(&buffer) {
            let event: Vec<u8> = buffer.drain(..end.0).collect();
            buffer.drain(..end.1);
            if handle_event(&event, &mut completion, progress)? {
                return Ok(completion);
            }
        }
    }
    if !buffer.is_empty() {
        handle_event(&buffer, &mut completion, progress)?;
    }
    Ok(completion)
}

/// Position of the blank line ending the first SSE event: (event length, separator length).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| (p, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Applies one SSE event; `true` at `[DONE]`.
fn handle_event(
    event: &[u8],
    completion: &mut Completion,
    progress: &mut (dyn FnMut(Progress<'_>) + Send),
) -> Result<bool, LlmError> {
    let text = String::from_utf8_lossy(event);
    let data: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    if data.is_empty() {
        return Ok(false);
    }
    if data.trim() == "[DONE]" {
        return Ok(true);
    }
    let value: Value =
        serde_json::from_str(&data).map_err(|e| LlmError::Fatal(format!("malformed LLM stream chunk: {e}")))?;
    if let Some(message) = value.get("error").and_then(|e| e["message"].as_str().or(e.as_str())) {
        return Err(LlmError::Retryable(format!("LLM stream error: {message}")));
    }
    if let Some(delta) = value["choices"][0]["delta"]["content"].as_str() {
        if !delta.is_empty() {
            completion.content.push_str(delta);
            progress(Progress::Delta(delta));
        }
    }
    // Function calls arrive in pieces, by index: the id and name first, the arguments in parts.
    for piece in value["choices"][0]["delta"]["tool_calls"].as_array().into_iter().flatten() {
        let index = piece["index"].as_u64().unwrap_or(0) as usize;
        if completion.tool_calls.len() <= index {
            completion.tool_calls.resize_with(index + 1, Default::default);
        }
        let call = &mut completion.tool_calls[index];
        if let Some(id) = piece["id"].as_str() {
            call.id = id.to_owned();
        }
        if let Some(name) = piece["function"]["name"].as_str() {
            call.name.push_str(name);
        }
        if let Some(arguments) = piece["function"]["arguments"].as_str() {
            call.arguments.push_str(arguments);
        }
    }
    if let Ok(usage) = serde_json::from_value::<Usage>(value["usage"].clone()) {
        if value["usage"].is_object() {
            completion.usage = usage;
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sse_events_across_arbitrary_chunk_boundaries() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n\
                      data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\r\n\r\n\
                      data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n\
                      data: [DONE]\n\n";
        for split in [1, 7, 13, stream.len()] {
            let mut buffer = Vec::new();
            let mut completion = Completion::default();
            let mut deltas = Vec::new();
            let mut done = false;
            for chunk in stream.as_bytes().chunks(split) {
                buffer.extend_from_slice(chunk);
                while let Some(end) = find_event_end(&buffer) {
                    let event: Vec<u8> = buffer.drain(..end.0).collect();
                    buffer.drain(..end.1);
                    done |= handle_event(&event, &mut completion, &mut |p| {
                        if let Progress::Delta(d) = p {
                            deltas.push(d.to_owned())
                        }
                    })
                    .unwrap();
                }
            }
            assert!(done);
            assert_eq!(completion.content, "Hello");
            assert_eq!(deltas, ["Hel", "lo"]);
            assert_eq!(completion.usage, Usage { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 });
        }
    }

    #[test]
    fn provider_prefixes_route_to_their_endpoint_and_are_not_sent() {
        let limits = LlmLimits {
            request_timeout: Duration::from_secs(1),
            chunk_timeout: Duration::from_secs(1),
            max_retries: 0,
            initial_backoff: Duration::ZERO,
        };
        let cfg = |model: &str, base: Option<&str>| {
            let settings =
                Settings { llm_model: Some(model.into()), llm_base_url: base.map(str::to_owned), ..Default::default() };
            let c = LlmConfig::from_settings(&settings, &limits, &|_| None).unwrap();
            (c.model, c.base_url)
        };
        assert_eq!(cfg("openai/gpt-4o", None), ("gpt-4o".into(), "https://api.openai.com/v1".into()));
        assert_eq!(cfg("anthropic/claude-sonnet-4-20250514", None).1, "https://api.anthropic.com/v1");
        assert_eq!(
            cfg("openrouter/anthropic/claude-3", None),
            ("anthropic/claude-3".into(), "https://openrouter.ai/api/v1".into())
        );
        assert_eq!(cfg("openai/gpt-4o", Some("http://gw/v1/")), ("gpt-4o".into(), "http://gw/v1".into()));
        assert_eq!(
            cfg("meta-llama/Llama-3", Some("http://vllm/v1")).0,
            "meta-llama/Llama-3",
            "unknown prefixes are kept"
        );
        assert_eq!(cfg("fake-model", Some("http://x/v1")).0, "fake-model");
        assert_eq!(context_window("anthropic/claude-sonnet-4-5-20250929"), 200_000);
        assert_eq!(context_window("fake-model"), 128_000);
    }

    #[test]
    fn lite_llm_variables_override_the_users_endpoint() {
        let settings = Settings {
            llm_model: Some("m".into()),
            llm_base_url: Some("http://user/".into()),
            llm_api_key: Some("user-key".into()),
            ..Default::default()
        };
        let limits = LlmLimits {
            request_timeout: Duration::from_secs(1),
            chunk_timeout: Duration::from_secs(1),
            max_retries: 0,
            initial_backoff: Duration::ZERO,
        };
        let plain = LlmConfig::from_settings(&settings, &limits, &|_| None).unwrap();
        assert_eq!((plain.base_url.as_str(), plain.api_key.as_deref()), ("http://user", Some("user-key")));
        let env = |k: &str| match k {
            "LITE_LLM_API_URL" => Some("http://proxy".to_owned()),
            "LITE_LLM_API_KEY" => Some("proxy-key".to_owned()),
            _ => None,
        };
        let saas = LlmConfig::from_settings(&settings, &limits, &env).unwrap();
        assert_eq!((saas.base_url.as_str(), saas.api_key.as_deref()), ("http://proxy", Some("proxy-key")));
        assert!(LlmConfig::from_settings(&Settings::default(), &limits, &|_| None).is_err());
    }
}
