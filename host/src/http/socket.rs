//! socket.io at `/socket.io` (OpenHands §9.10), with socketioxide.
//!
//! Connect: `?conversation_id=…&latest_event_id=N`. A connect middleware authenticates the
//! handshake (the same `authenticate` as the HTTP auth gate), refuses unless the user owns
//! the conversation and has settings, and registers the event handlers, before the client is
//! told it is connected: an action sent right after connecting is queued, never dropped. The
//! connect handler then subscribes to the conversation's live events, starts the agent loop if
//! it is not running, replays the stored events after `latest_event_id`, and forwards live
//! `oh_event`s (skipping what the replay already sent). Queued and later `oh_user_action`s
//! (and legacy `oh_action`s) go to the conversation manager in order, even those sent just
//! before a disconnect; a disconnect only unsubscribes: the agent keeps running.

use super::{
    auth::{authenticate, refusal},
    call_context,
    error::msg_id,
    AppState, RequestId,
};
use crate::app::AppError;
use axum::http::{HeaderMap, Method, Uri};
use plugin_api::{CallContext, EventQuery};
use serde_json::{json, value::RawValue, Value};
use socketioxide::{
    extract::{AckSender, Data, SocketRef},
    handler::ConnectHandler,
    layer::SocketIoLayer,
    SendError, SocketError, SocketIo,
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};
use tokio::{sync::mpsc, task::AbortHandle};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the middleware learned and set up, for the handler.
#[derive(Clone)]
struct Connection {
    conversation_id: String,
    /// The last event the client has; replay starts after it.
    latest_event_id: Option<u64>,
    ctx: CallContext,
    /// User actions received so far, in order (the handler takes the receiver).
    queued: Arc<Mutex<Option<mpsc::UnboundedReceiver<Action>>>>,
    /// The handshake's request: each action is authenticated again with its credentials, so it
    /// counts against the user's rate limit as an HTTP request does.
    handshake: Arc<(Method, Uri, HeaderMap)>,
    cleanup: Arc<Mutex<Cleanup>>,
    disconnected: Arc<tokio::sync::Notify>,
}

/// The socket.io layer, to put on the router.
pub fn layer(state: AppState) -> SocketIoLayer {
    // The same bound as an HTTP body, on both transports: polling bodies, and WebSocket
    // messages and frames (socketioxide's own default there is 64 MiB).
    let max = state.server.max_body_bytes;
    let (layer, io) = SocketIo::builder()
        .max_buffer_size(4096)
        .max_payload(max as u64)
        .ws_max_message_size(max)
        .ws_max_frame_size(max)
        .build_layer();
    let for_auth = state.clone();
    let authorize = move |s: SocketRef| {
        let state = for_auth.clone();
        async move { authorize(state, s).await }
    };
    let on_connect = move |s: SocketRef| {
        let state = state.clone();
        async move { on_connect(state, s).await }
    };
    io.ns("/", on_connect.with(authorize));
    layer
}

/// `latest_event_id`: absent or negative means "nothing yet"; otherwise an event id.
fn parse_latest(value: Option<&String>) -> Result<Option<u64>, String> {
    match value {
        None => Ok(None),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n < 0 => Ok(None),
            Ok(n) => Ok(Some(n as u64)),
            Err(_) => Err(format!("latest_event_id `{v}` is not an integer")),
        },
    }
}

/// The conversation and the last event a handshake's query names, or why not.
fn handshake_query(uri: &Uri) -> Result<(String, Option<u64>), String> {
    let params = axum::extract::Query::<HashMap<String, String>>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| format!("bad query string: {e}"))?;
    let conversation_id = params.get("conversation_id").cloned().ok_or("No conversation_id in request")?;
    crate::app::check_conversation_id(&conversation_id).map_err(|e| e.to_string())?;
    let latest_event_id = parse_latest(params.get("latest_event_id"))?;
    Ok((conversation_id, latest_event_id))
}

/// The connect middleware: an `Err` refuses the connection with that message.
async fn authorize(state: AppState, s: SocketRef) -> Result<(), String> {
    let parts = s.req_parts();
    let (conversation_id, latest_event_id) = handshake_query(&parts.uri)?;
    let request_id = RequestId(format!("sio-{}", s.id));
    let (principal, _) = authenticate(&state, &request_id, &parts.method, &parts.uri, &parts.headers, None)
        .await
        .map_err(|e| refusal(&e).0)?;
    let ctx = call_context(&principal, &request_id, &state.server);
    // The conversation store is scoped by user: another user's conversation does not exist.
    match state.app.conversation(&ctx, &conversation_id).await {
        Ok(Some(_)) => {}
        Ok(None) => return Err(format!("conversation {conversation_id} not found")),
        Err(e) => return Err(format!("cannot check the conversation: {}", e.plugin_message().unwrap_or("failed"))),
    }
    match state.app.load_settings(&ctx).await {
        Ok(Some(_)) => {}
        Ok(None) => return Err("Settings not found".to_owned()),
        Err(e) => return Err(format!("cannot load settings: {}", e.plugin_message().unwrap_or("failed"))),
    }
    // The event handlers, now: socketioxide acknowledges the connection when this middleware
    // returns and only then spawns the connect handler, so an action sent right after
    // connecting would find no handler if they were registered there.
    let (actions, queued) = mpsc::unbounded_channel::<Action>();
    for name in ["oh_user_action", "oh_action"] {
        let actions = actions.clone();
        // Queued as the handler is called (while the packet is dispatched, in the order the
        // client sent it), not in the future socketioxide spawns: that task may run after the
        // disconnect handler has drained the queue (a loaded machine lost "sent, then gone").
        s.on(name, move |Data(event): Data<Value>, ack: AckSender| {
            let _ = actions.send((event, ack));
            std::future::ready(())
        });
    }
    let cleanup: Arc<Mutex<Cleanup>> = Arc::default();
    let disconnected = Arc::new(tokio::sync::Notify::new());
    let queued = Arc::new(Mutex::new(Some(queued)));
    connections(1.0);
    {
        let (state, ctx, cleanup, disconnected) = (state.clone(), ctx.clone(), cleanup.clone(), disconnected.clone());
        s.on_disconnect(move |s: SocketRef| async move {
            connections(-1.0);
            let (subscription, forward) = {
                let mut c = lock(&cleanup);
                c.gone = true;
                (c.subscription.take(), c.forward.take())
            };
            disconnected.notify_one();
            if let Some(f) = forward {
                f.abort();
            }
            if let Some(id) = subscription {
                let _ = state.app.unsubscribe(&ctx, id).await;
            }
            // Gone before its connect handler ran (socketioxide may then never run it): what
            // the client sent is delivered all the same, to a running loop.
            let Some(conn) = s.extensions.get::<Connection>() else { return };
            let Some(queued) = lock(&conn.queued).take() else { return };
            let sid = conn.conversation_id.clone();
            if let Err(e) = state.app.start_conversation(&conn.ctx, &sid).await {
                tracing::warn!(conversation_id = %sid, error = %e, "cannot start the conversation for a gone socket's actions");
            }
            let gone = Arc::new(tokio::sync::Notify::new());
            gone.notify_one();
            deliver(state.clone(), conn.clone(), s.clone(), queued, gone).await;
        });
    }
    s.extensions.insert(Connection {
        conversation_id,
        latest_event_id,
        ctx,
        queued,
        handshake: Arc::new((parts.method.clone(), parts.uri.clone(), parts.headers.clone())),
        cleanup,
        disconnected,
    });
    Ok(())
}

/// An event's `id` (a stored event's position), read without building the rest of it.
fn event_id(json: &str) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Head {
        id: Option<Value>,
    }
    // An object only (a struct also reads from an array, by position).
    if !json.trim_start().starts_with('{') {
        return None;
    }
    serde_json::from_str::<Head>(json).ok()?.id?.as_u64()
}

/// Emits, waiting while the connection's buffer is full (a slow client slows its own
/// replay, nothing else). `false` once the socket is gone.
async fn emit<T: serde::Serialize + ?Sized>(s: &SocketRef, event: &T) -> bool {
    for _ in 0..2000 {
        match s.emit("oh_event", event) {
            Ok(()) => return true,
            Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            Err(e) => {
                tracing::debug!(socket = %s.id, error = %e, "cannot emit");
                return false;
            }
        }
    }
    tracing::warn!(socket = %s.id, "client not reading for 10 s; dropping it");
    false
}

fn error_event(message: &str) -> Value {
    json!({ "error": true, "message": message })
}

/// What a disconnect must end: the subscription and the live forwarder. Queued user actions
/// are still delivered (the client sent them); `disconnected` tells the delivering task to
/// drain the queue and stop.
#[derive(Default)]
struct Cleanup {
    subscription: Option<u64>,
    forward: Option<AbortHandle>,
    gone: bool,
}

async fn on_connect(state: AppState, s: SocketRef) {
    let Some(conn) = s.extensions.get::<Connection>() else { return };
    let sid = conn.conversation_id.clone();

    let Some(queued) = lock(&conn.queued).take() else { return };
    let (cleanup, disconnected) = (conn.cleanup.clone(), conn.disconnected.clone());
    let app = &state.app;

    // A manager replaced from now on is caught (see the forwarder below).
    let mut epochs = app.manager_epochs();
    epochs.borrow_and_update();
    // Subscribe before replaying, so nothing falls between the two.
    let (tx, live) = mpsc::unbounded_channel::<String>();
    match app.subscribe(&conn.ctx, &sid, tx).await {
        Ok(id) => {
            let gone = {
                let mut c = lock(&cleanup);
                c.subscription = (!c.gone).then_some(id);
                c.gone
            };
            if gone {
                let _ = app.unsubscribe(&conn.ctx, id).await;
            }
        }
        Err(e) => {
            tracing::warn!(conversation_id = %sid, error = %e, "cannot subscribe to live events");
            let _ = s.emit("oh_event", &error_event(e.plugin_message().unwrap_or("cannot subscribe")));
        }
    }

    // Join: start the agent loop if it is not running (OpenHands' join_conversation), before
    // the queued actions are delivered, so they find it running.
    match state.app.start_conversation(&conn.ctx, &sid).await {
        Ok(_) => {}
        Err(AppError::StartFailed(e)) => {
            let _ = s.emit("oh_event", &error_event(&e.error.message));
        }
        Err(e) => {
            // A plugin's failure is logged where it happened; its internals are not sent.
            let message = if matches!(e, AppError::Plugin(_)) {
                "cannot start the conversation".to_owned()
            } else {
                e.to_string()
            };
            let _ = s.emit(
                "oh_event",
                &json!({ "status_update": true, "type": "error", "id": msg_id(&e), "message": message }),
            );
        }
    }

    // User actions, in the order sent, one at a time; after a disconnect, what was queued.
    tokio::spawn(deliver(state.clone(), conn.clone(), s.clone(), queued, disconnected));
    if lock(&cleanup).gone {
        return;
    }

    // Replay what is stored after latest_event_id, oldest first.
    let Some(last_replayed) = replay(&state, &conn, &s, conn.latest_event_id).await else { return };

    // Live events: skip stored ones the replay already sent. When a reload replaces the
    // conversation manager, subscribe to the new one (the old one's sink closes), start the
    // conversation there, and replay what was stored meanwhile: the client stays connected.
    let forward = {
        let (s, state, conn, cleanup) = (s.clone(), state.clone(), conn.clone(), cleanup.clone());
        tokio::spawn(async move {
            let mut last = last_replayed;
            let mut live = Some(live);
            loop {
                tokio::select! {
                    text = async { live.as_mut().expect("checked").recv().await }, if live.is_some() => {
                        let Some(text) = text else {
                            live = None; // the manager let go of the sink: wait for its successor
                            continue;
                        };
                        // Sent on as the plugin wrote it: a streamed delta is not taken
                        // apart and written again (the JSON is checked, its `id` read).
                        let Ok(event) = serde_json::from_str::<&RawValue>(&text) else { continue };
                        let id = event_id(&text);
                        if id.is_some_and(|id| last.is_some_and(|l| id <= l)) {
                            continue;
                        }
                        if !emit(&s, event).await {
                            break;
                        }
                        if id.is_some() {
                            last = id;
                        }
                    }
                    changed = epochs.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let (tx, rx) = mpsc::unbounded_channel::<String>();
                        match state.app.subscribe(&conn.ctx, &sid, tx).await {
                            Ok(id) => lock(&cleanup).subscription = Some(id),
                            Err(e) => {
                                tracing::warn!(conversation_id = %sid, error = %e, "cannot subscribe to the new manager");
                                let _ = s.emit("oh_event", &error_event(e.plugin_message().unwrap_or("cannot subscribe")));
                            }
                        }
                        live = Some(rx);
                        if let Err(e) = state.app.start_conversation(&conn.ctx, &sid).await {
                            tracing::warn!(conversation_id = %sid, error = %e, "cannot resume the conversation in the new manager");
                        }
                        match replay(&state, &conn, &s, last).await {
                            Some(l) => last = l,
                            None => break,
                        }
                    }
                }
            }
        })
    };
    let mut c = lock(&cleanup);
    if c.gone {
        forward.abort();
    } else {
        c.forward = Some(forward.abort_handle());
    }
}

/// Emits what is stored after `after`, oldest first; the last id sent (`after` when none),
/// or `None` once the socket is gone.
async fn replay(state: &AppState, conn: &Connection, s: &SocketRef, after: Option<u64>) -> Option<Option<u64>> {
    let sid = &conn.conversation_id;
    let mut next = after.map_or(0, |n| n.saturating_add(1));
    let mut last = after;
    loop {
        let page = match state.app.events(&conn.ctx, sid, EventQuery::new(next, None, false, 100)).await {
            Ok(p) => p,
            Err(e) => {
                let _ = s.emit("oh_event", &error_event(e.plugin_message().unwrap_or("cannot read the events")));
                return Some(last);
            }
        };
        for event in &page.events {
            if !emit(s, event).await {
                return None;
            }
            if let Some(id) = event["id"].as_u64() {
                last = Some(last.map_or(id, |l| l.max(id)));
                next = id.saturating_add(1);
            }
        }
        if !page.has_more || page.events.is_empty() {
            return Some(last);
        }
    }
}

/// Counts open socket.io connections (`oh_socketio_connections`).
fn connections(delta: f64) {
    crate::metrics::global().gauge("oh_socketio_connections", "Open socket.io connections.", &[], delta, true);
}

/// A user action and, when the client asked for one, its acknowledgement.
type Action = (Value, AckSender);

/// Delivers a socket's user actions to the conversation manager, in order. Ends after the
/// socket disconnects, once what was queued is delivered.
async fn deliver(
    state: AppState,
    conn: Connection,
    s: SocketRef,
    mut queued: mpsc::UnboundedReceiver<Action>,
    disconnected: Arc<tokio::sync::Notify>,
) {
    loop {
        let action = tokio::select! {
            biased;
            action = queued.recv() => action,
            () = disconnected.notified() => {
                // Drain what arrived before the disconnect, then stop.
                while let Ok(action) = queued.try_recv() {
                    send_action(&state, &conn, &s, action).await;
                }
                return;
            }
        };
        match action {
            Some(action) => send_action(&state, &conn, &s, action).await,
            None => return,
        }
    }
}

/// One action: authenticated again (rate limits, expired credentials), then handed to the
/// manager, which stores it before answering; the client's ack (if it asked) says so.
async fn send_action(state: &AppState, conn: &Connection, s: &SocketRef, (event, ack): Action) {
    let answer = |ok: bool, message: Option<&str>| {
        let body = match message {
            Some(m) => json!({ "success": ok, "error": m }),
            None => json!({ "success": ok }),
        };
        let _ = ack.send(&body);
    };
    if !event.is_object() {
        let _ = s.emit("oh_event", &error_event("an action must be a JSON object"));
        return answer(false, Some("an action must be a JSON object"));
    }
    let (method, uri, headers) = &*conn.handshake;
    let request_id = RequestId(format!("sio-{}", s.id));
    if let Err(e) = authenticate(state, &request_id, method, uri, headers, None).await {
        let (message, status) = refusal(&e);
        let _ = s.emit("oh_event", &json!({ "error": true, "message": message, "status": status }));
        return answer(false, Some(&message));
    }
    // A trace span per action (child of the client's trace when its handshake sent one).
    let mut ctx = conn.ctx.clone();
    let mut trace = crate::telemetry::start(
        format!("socket.io {}", event["action"].as_str().unwrap_or("action")),
        opentelemetry::trace::SpanKind::Server,
        Some(ctx.traceparent.as_str()),
        vec![opentelemetry::KeyValue::new("oh.conversation_id", conn.conversation_id.clone())],
    );
    if let Some(t) = &trace {
        ctx.traceparent = t.traceparent().into();
    }
    let sent = state.app.send_event(ctx, &conn.conversation_id, &event).await;
    if let (Some(t), Err(e)) = (trace.as_mut(), &sent) {
        t.error(e.plugin_message().unwrap_or("failed"));
    }
    drop(trace);
    match sent {
        Ok(()) => answer(true, None),
        Err(e) => {
            let message = e.plugin_message().unwrap_or("failed").to_owned();
            let _ = s.emit("oh_event", &error_event(&message));
            answer(false, Some(&message));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_events_id_is_its_top_level_number_only() {
        assert_eq!(event_id(r#"{"id": 7, "args": {"id": 9}}"#), Some(7));
        assert_eq!(event_id(r#"{"args": {"id": 9}, "streaming": true}"#), None);
        assert_eq!(event_id(r#"{"id": "7"}"#), None);
        assert_eq!(event_id(r#"{"id": -1}"#), None);
        assert_eq!(event_id("[1]"), None);
    }

    proptest! {
        /// Any query string: the handshake's values, or a message to send back; no panic.
        #[test]
        fn any_handshake_query_is_parsed_or_refused_with_a_message(query in "[a-zA-Z0-9_=&%+.~-]{0,80}") {
            let uri: Uri = format!("/socket.io/?{query}").parse().unwrap();
            if let Err(message) = handshake_query(&uri) {
                prop_assert!(!message.is_empty());
            }
        }

        #[test]
        fn any_latest_event_id_is_a_position_or_an_error(n in proptest::num::i64::ANY, text in ".{0,24}") {
            let given = n.to_string();
            prop_assert_eq!(parse_latest(Some(&given)).unwrap(), (n >= 0).then_some(n as u64));
            let _ = parse_latest(Some(&text));
        }
    }

    #[test]
    fn the_largest_latest_event_id_replays_nothing_and_does_not_overflow() {
        let uri: Uri = "/socket.io/?conversation_id=abc&latest_event_id=9223372036854775807".parse().unwrap();
        let (id, latest) = handshake_query(&uri).unwrap();
        assert_eq!((id.as_str(), latest), ("abc", Some(i64::MAX as u64)));
        assert_eq!(latest.map_or(0, |n| n.saturating_add(1)), i64::MAX as u64 + 1);
    }
}
