//! The plugin protocol's frames and messages (`docs/plugin-protocol.md` is the contract; this
//! is its one implementation in Rust, used by the host and by `oh-plugin-runner`).
//!
//! A frame is a 4-byte big-endian length and that many bytes of one JSON object. Every
//! message has a `type`. Requests carry an `id` unique among those its sender has in flight;
//! the answer is a `result` with the same `id`. Each side numbers its own requests, so a
//! `result` always answers a request of the side that receives it.

use abi_stable::std_types::{ROption, RString};
use plugin_api::{CallContext, ErrorCode, PluginError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{self, Read, Write};
use tokio::io::{AsyncRead, AsyncReadExt as _};

/// The protocol's version: a runner answers `start` only for a version it speaks.
pub const PROTOCOL: u32 = 1;

/// The largest frame either side accepts (a conversation store's page of events fits).
pub const MAX_FRAME: usize = 64 << 20;

/// The variable that tells a runner where the host listens.
pub const SOCKET_VAR: &str = crate::env::OH_PLUGIN_SOCKET;

/// One message.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// host → runner, first: what to build.
    Start(Start),
    /// runner → host: the instance is built.
    Ready(Ready),
    /// runner → host: it could not be built (the runner exits).
    Failed { error: WireError },
    /// host → runner: call a method of the instance.
    Call { id: u64, method: String, ctx: Ctx, args: Value },
    /// host → runner: call a method that has no answer (the monitoring hooks).
    Notify { method: String, ctx: Ctx, args: Value },
    /// runner → host: a host call (`plugin_api::host_calls`).
    HostCall { id: u64, ctx: Ctx, point: String, method: String, args: Value },
    /// The answer to a `call` or a `host_call`: `error` when it failed, else `ok`.
    Result {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ok: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<WireError>,
    },
    /// runner → host: a log event for the host's output.
    Log {
        level: String,
        target: String,
        message: String,
        #[serde(default)]
        fields: String,
    },
    /// runner → host: a metric (`counter`, `gauge` or `histogram`).
    Metric {
        kind: String,
        name: String,
        value: f64,
        #[serde(default)]
        labels: Vec<(String, String)>,
        #[serde(default)]
        delta: bool,
        #[serde(default)]
        buckets: Vec<f64>,
    },
    /// runner → host: a finished span (the JSON `HostApi::span` takes).
    Span { span: Value },
    /// runner → host: a live event for the host's sink `sink` (a manager's `subscribe`).
    Event { sink: u64, event: Value },
    /// host → runner: sink `sink` is gone; its `send` answers `false` from now on.
    SinkClosed { sink: u64 },
    /// host → runner: shut the instance down and exit.
    Shutdown { deadline_ms: u64 },
}

/// What the runner builds.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Start {
    pub protocol: u32,
    /// The extension point's key (`settings_store`).
    pub point: String,
    pub implementation: String,
    /// The entry's `config` table.
    pub config: Value,
    /// The library to load (`oh-plugin-runner` only; a `command` runner ignores it).
    #[serde(default)]
    pub library: Option<LibrarySpec>,
    /// `oss` or `saas`.
    pub app_mode: String,
    pub state_dir: String,
    /// `oh-host check`: build and probe, write nothing.
    #[serde(default)]
    pub read_only: bool,
    /// The most verbose log level the host records (`error` … `trace`).
    pub log_level: String,
    /// Whether the host exports traces.
    #[serde(default)]
    pub tracing: bool,
    /// Whether the deployment has a `runtime` (a manager's handle then reaches it through
    /// `host_call`s with `point = "runtime"`).
    #[serde(default)]
    pub runtime: bool,
}

/// A library for `oh-plugin-runner`: loaded with the host's checks (confinement, pin,
/// contract version).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct LibrarySpec {
    pub name: String,
    pub plugins_dir: String,
    #[serde(default)]
    pub sha256: Option<String>,
    /// The `[libraries.<name>]` table.
    #[serde(default)]
    pub config: Value,
}

/// What a built instance reports.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Ready {
    pub protocol: u32,
    /// The library's (or program's) name and version.
    pub name: String,
    pub version: String,
    /// The sha256 of the library file the runner loaded ("" for a `command` runner).
    #[serde(default)]
    pub sha256: String,
    /// The plugin-api contract it was built against (`1.1`), when it is a library.
    #[serde(default)]
    pub api: String,
    /// A `routes` instance's routes: `{method, path, authenticated}` each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Value>,
}

/// `CallContext` on the wire.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Ctx {
    #[serde(default)]
    pub request_id: String,
    #[serde(default)]
    pub traceparent: String,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub deadline_unix_ms: u64,
}

impl From<&CallContext> for Ctx {
    fn from(c: &CallContext) -> Self {
        Ctx {
            request_id: c.request_id.to_string(),
            traceparent: c.traceparent.to_string(),
            user_id: c.user_id().map(str::to_owned),
            deadline_unix_ms: c.deadline_unix_ms,
        }
    }
}

impl From<Ctx> for CallContext {
    fn from(c: Ctx) -> Self {
        CallContext {
            request_id: c.request_id.into(),
            traceparent: c.traceparent.into(),
            user_id: c.user_id.map(RString::from).map_or(ROption::RNone, ROption::RSome),
            deadline_unix_ms: c.deadline_unix_ms,
        }
    }
}

/// `PluginError` on the wire.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct WireError {
    pub code: u32,
    pub message: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retryable: bool,
    /// `PluginError`'s details object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl From<&PluginError> for WireError {
    fn from(e: &PluginError) -> Self {
        WireError {
            code: e.code.0,
            message: e.message.to_string(),
            retryable: e.retryable,
            details: serde_json::from_str(&e.details_json).ok(),
        }
    }
}

impl From<WireError> for PluginError {
    fn from(e: WireError) -> Self {
        let mut error = PluginError::new(ErrorCode(e.code), e.message);
        error.retryable = e.retryable;
        if let Some(details) = e.details {
            error.details_json = details.to_string().into();
        }
        error
    }
}

/// A message as one frame; `None` when it would be larger than [`MAX_FRAME`], which the
/// other side would take for a broken connection. A `result` that large (what a workspace
/// holds can be as large as its owner likes: a listing, a file, a command's output) becomes a
/// `TOO_LARGE` error for its request instead: one call fails, not every call on the runner.
pub fn encode(message: &Message) -> Option<Vec<u8>> {
    let body = serde_json::to_vec(message).unwrap_or_else(|_| b"{}".to_vec());
    if body.len() > MAX_FRAME {
        return match message {
            Message::Result { id, .. } => {
                let why = format!("the answer is {} bytes, more than the plugin protocol's {MAX_FRAME}", body.len());
                encode(&result(*id, Err(PluginError::new(ErrorCode::TOO_LARGE, why))))
            }
            _ => None,
        };
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Some(frame)
}

fn decode(body: &[u8]) -> io::Result<Message> {
    serde_json::from_slice(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad message: {e}")))
}

fn checked_len(header: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes (most: {MAX_FRAME})")));
    }
    Ok(len)
}

/// The next message, or `None` at a clean end of stream (the other side is gone).
pub async fn read(r: &mut (impl AsyncRead + Unpin)) -> io::Result<Option<Message>> {
    let mut header = [0u8; 4];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut body = vec![0u8; checked_len(header)?];
    r.read_exact(&mut body).await?;
    decode(&body).map(Some)
}

/// [`read`], blocking (the start handshake).
pub fn read_blocking(r: &mut impl Read) -> io::Result<Message> {
    let mut header = [0u8; 4];
    r.read_exact(&mut header)?;
    let mut body = vec![0u8; checked_len(header)?];
    r.read_exact(&mut body)?;
    decode(&body)
}

/// One message, blocking (the start handshake).
pub fn write_blocking(w: &mut impl Write, message: &Message) -> io::Result<()> {
    let frame = encode(message).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "message too large"))?;
    w.write_all(&frame)?;
    w.flush()
}

/// The answer to request `id`.
pub fn result(id: u64, answer: Result<Value, PluginError>) -> Message {
    match answer {
        Ok(v) => Message::Result { id, ok: Some(v), error: None },
        Err(e) => Message::Result { id, ok: None, error: Some(WireError::from(&e)) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_without_error_is_ok_even_when_null() {
        let m: Message = serde_json::from_str(r#"{"type":"result","id":4,"ok":null}"#).unwrap();
        assert!(matches!(m, Message::Result { id: 4, ok: None, error: None }));
        let m: Message =
            serde_json::from_str(r#"{"type":"result","id":5,"error":{"code":3,"message":"gone"}}"#).unwrap();
        let Message::Result { error: Some(e), .. } = m else { panic!("{m:?}") };
        assert_eq!(PluginError::from(e).code, ErrorCode::NOT_FOUND);
    }

    #[test]
    fn an_answer_too_large_for_a_frame_fails_its_call_and_nothing_else() {
        let huge = Value::String("x".repeat(MAX_FRAME));
        let frame = encode(&result(9, Ok(huge.clone()))).unwrap();
        assert!(frame.len() < 1024);
        let Message::Result { id: 9, error: Some(e), .. } = read_blocking(&mut &frame[..]).unwrap() else { panic!() };
        assert_eq!(PluginError::from(e).code, ErrorCode::TOO_LARGE);
        let event = Message::Event { sink: 1, event: huge };
        assert!(encode(&event).is_none(), "a live event too large is dropped, not sent");
    }

    #[test]
    fn frames_round_trip_and_oversized_ones_are_refused() {
        let frame = encode(&Message::Shutdown { deadline_ms: 7 }).unwrap();
        let back = read_blocking(&mut &frame[..]).unwrap();
        assert!(matches!(back, Message::Shutdown { deadline_ms: 7 }));
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        let err = read_blocking(&mut &huge[..]).unwrap_err();
        assert!(err.to_string().contains("frame of"), "{err}");
    }
}
