//! A minimal socket.io client (Engine.IO v4 over WebSocket, Socket.IO protocol v5), enough to
//! talk to the host as OpenHands' frontend does (`transports: ['websocket']`): connect to the
//! default namespace, answer pings, receive `oh_event`s, emit events.

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest as _, Message};

pub struct SioClient {
    out: mpsc::UnboundedSender<String>,
    events: mpsc::UnboundedReceiver<Value>,
    reader: tokio::task::JoinHandle<()>,
}

enum Handshake {
    Connected,
    Refused(String),
}

impl SioClient {
    /// Connects with `query` (e.g. `conversation_id=…&latest_event_id=-1`) and extra headers.
    /// `Err` carries the server's `connect_error` message.
    pub async fn connect(base: &str, query: &str, headers: &[(&str, &str)]) -> Result<SioClient, String> {
        let url = format!("{}/socket.io/?EIO=4&transport=websocket&{query}", base.replacen("http://", "ws://", 1));
        let mut request = url.into_client_request().map_err(|e| e.to_string())?;
        for (k, v) in headers {
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await.map_err(|e| format!("websocket: {e}"))?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<String>();
        let (events_tx, events) = mpsc::unbounded_channel();
        let (hs_tx, mut hs_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(text) = out_rx.recv().await {
                if sink.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
        });
        let pong = out.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let text = text.as_str();
                if text.starts_with('0') {
                    // Engine.IO open: join the default namespace.
                    let _ = pong.send("40".to_owned());
                } else if text == "2" {
                    let _ = pong.send("3".to_owned());
                } else if let Some(rest) = text.strip_prefix("40") {
                    let _ = rest;
                    let _ = hs_tx.send(Handshake::Connected);
                } else if let Some(rest) = text.strip_prefix("44") {
                    let message = serde_json::from_str::<Value>(rest)
                        .ok()
                        .and_then(|v| v["message"].as_str().map(str::to_owned))
                        .unwrap_or_else(|| rest.to_owned());
                    let _ = hs_tx.send(Handshake::Refused(message));
                } else if let Some(rest) = text.strip_prefix("42") {
                    if let Ok(Value::Array(items)) = serde_json::from_str::<Value>(rest) {
                        if items.first().and_then(Value::as_str) == Some("oh_event") {
                            let _ = events_tx.send(items.get(1).cloned().unwrap_or(Value::Null));
                        }
                    }
                } else if text.starts_with("41") || text == "1" {
                    break;
                }
            }
        });
        match tokio::time::timeout(Duration::from_secs(10), hs_rx.recv()).await {
            Ok(Some(Handshake::Connected)) => Ok(SioClient { out, events, reader }),
            Ok(Some(Handshake::Refused(message))) => Err(message),
            _ => Err("no socket.io handshake within 10 s".to_owned()),
        }
    }

    /// Emits `event` with one JSON argument.
    pub fn emit(&self, event: &str, data: &Value) {
        let _ = self.out.send(format!("42{}", serde_json::json!([event, data])));
    }

    /// The next `oh_event` payload, or `None` after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        tokio::time::timeout(timeout, self.events.recv()).await.ok().flatten()
    }

    /// Collects `oh_event`s until one satisfies `done` (included), or panics after `timeout`.
    pub async fn until(&mut self, timeout: Duration, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(e) => {
                    let stop = done(&e);
                    seen.push(e);
                    if stop {
                        return seen;
                    }
                }
                None => panic!("timed out after {timeout:?}; events so far:\n{}", pretty(&seen)),
            }
        }
    }

    /// Closes the connection (the agent keeps running).
    pub fn close(self) {
        let _ = self.out.send("41".to_owned());
        self.reader.abort();
    }
}

pub fn pretty(events: &[Value]) -> String {
    events.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")
}

/// An agent state change to `state`.
pub fn is_state(e: &Value, state: &str) -> bool {
    e["observation"] == "agent_state_changed" && e["extras"]["agent_state"] == state
}
