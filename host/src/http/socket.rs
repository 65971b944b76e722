//! socket.io at `/socket.io` (OpenHands §9.10), with socketioxide.
//!
//! Connect: `?conversation_id=…&latest_event_id=N`. A connect middleware authenticates the
//! handshake through `user_auth` (headers and cookies) and refuses unless the user owns the
//! conversation and has settings. The connect handler then subscribes to the conversation's
//! live events, replays the stored events after `latest_event_id`, forwards live `oh_event`s
//! (skipping what the replay already sent), and starts the agent loop if it is not running.
//! `oh_user_action` (and legacy `oh_action`) go to the conversation manager; a disconnect
//! only unsubscribes: the agent keeps running.

use super::{call_context, extract::validate_conversation_id, AppState, Principal, RequestId};
use abi_stable::std_types::{RNone, RString, Tuple2};
use plugin_api::{AuthRequest, AuthType, CallContext, EventQuery};
use serde_json::{json, Value};
use socketioxide::{
    extract::{Data, SocketRef},
    handler::ConnectHandler,
    layer::SocketIoLayer,
    SendError, SocketError, SocketIo,
};
use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the middleware learned, for the handler.
#[derive(Clone)]
struct Connection {
    conversation_id: String,
    latest_event_id: i64,
    ctx: CallContext,
}

/// The socket.io layer, to put on the router.
pub fn layer(state: AppState) -> SocketIoLayer {
    let (layer, io) =
        SocketIo::builder().max_buffer_size(4096).max_payload(state.server.max_body_bytes as u64).build_layer();
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

/// The connect middleware: an `Err` refuses the connection with that message.
async fn authorize(state: AppState, s: SocketRef) -> Result<(), String> {
    let parts = s.req_parts();
    let query = parts.uri.query().unwrap_or("");
    let params = axum::extract::Query::<std::collections::HashMap<String, String>>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .map_err(|e| format!("bad query string: {e}"))?;
    let query_param = |k: &str| params.get(k).cloned();
    let conversation_id = query_param("conversation_id").ok_or("No conversation_id in request")?;
    validate_conversation_id(&conversation_id).map_err(|e| e.body["error"].as_str().unwrap_or("invalid").to_owned())?;
    let latest_event_id = match query_param("latest_event_id") {
        None => -1,
        Some(v) => v.parse::<i64>().map_err(|_| format!("latest_event_id `{v}` is not an integer"))?,
    };
    let request_id = RequestId(format!("sio-{}", s.id));
    let auth_request = AuthRequest {
        method: "GET".into(),
        path: "/socket.io/".into(),
        query: query.into(),
        headers: parts
            .headers
            .iter()
            .filter_map(|(k, v)| v.to_str().ok().map(|v| Tuple2(RString::from(k.as_str()), RString::from(v))))
            .collect(),
        remote_addr: RString::new(),
    };
    let anonymous = Principal { user_id: None, email: None, auth_type: AuthType::NONE };
    let auth = &state.registry.auth;
    let outcome = auth
        .meta
        .call("authenticate", auth.obj.authenticate(call_context(&anonymous, &request_id, &state.server), auth_request))
        .await
        .map_err(|e| format!("{}: {}", e.error.code.name(), e.error.message))?;
    let principal = Principal {
        user_id: outcome.user_id.into_option().map(RString::into_string),
        email: outcome.email.into_option().map(RString::into_string),
        auth_type: outcome.auth_type,
    };
    let ctx = call_context(&principal, &request_id, &state.server);
    // The conversation store is scoped by user: another user's conversation does not exist.
    match state.registry.get_metadata(ctx.clone(), &conversation_id).await {
        Ok(Some(_)) => {}
        Ok(None) => return Err(format!("conversation {conversation_id} not found")),
        Err(e) => return Err(format!("cannot check the conversation: {}", e.error.message)),
    }
    match state.registry.load_settings(ctx.clone()).await {
        Ok(Some(_)) => {}
        Ok(None) => return Err("Settings not found".to_owned()),
        Err(e) => return Err(format!("cannot load settings: {}", e.error.message)),
    }
    s.extensions.insert(Connection { conversation_id, latest_event_id, ctx });
    Ok(())
}

/// Emits, waiting while the connection's buffer is full (a slow client slows its own
/// replay, nothing else). `false` once the socket is gone.
async fn emit(s: &SocketRef, event: &Value) -> bool {
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

async fn on_connect(state: AppState, s: SocketRef) {
    let Some(conn) = s.extensions.get::<Connection>() else { return };
    let registry = &state.registry;
    let sid = conn.conversation_id.clone();

    // Subscribe before replaying, so nothing falls between the two.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let subscription = match registry.subscribe(conn.ctx.clone(), &sid, tx).await {
        Ok(id) => Some(id),
        Err(e) => {
            tracing::warn!(conversation_id = %sid, error = %e, "cannot subscribe to live events");
            let _ = s.emit("oh_event", &json!({ "error": true, "message": e.error.message.as_str() }));
            None
        }
    };

    // A disconnect only unsubscribes (and stops forwarding): the agent keeps running.
    let forward_slot: Arc<Mutex<Option<tokio::task::AbortHandle>>> = Arc::default();
    {
        let state = state.clone();
        let ctx = conn.ctx.clone();
        let slot = forward_slot.clone();
        s.on_disconnect(move || async move {
            if let Some(forward) = lock(&slot).take() {
                forward.abort();
            }
            if let Some(id) = subscription {
                let _ = state.registry.unsubscribe(ctx, id).await;
            }
        });
    }

    // Join: start the agent loop if it is not running (OpenHands' join_conversation), before
    // the replay, so a user action sent right after it finds the loop running.
    match super::routes::start_request(&state, &conn.ctx, &sid).await {
        Ok(request) => {
            if let Err(e) = registry.maybe_start(conn.ctx.clone(), &request).await {
                let _ = s.emit("oh_event", &json!({ "error": true, "message": e.error.message.as_str() }));
            }
        }
        Err(e) => {
            let message = e.body["message"].as_str().unwrap_or("cannot start the conversation").to_owned();
            let _ = s.emit(
                "oh_event",
                &json!({ "status_update": true, "type": "error", "id": e.body["msg_id"], "message": message }),
            );
        }
    }

    for name in ["oh_user_action", "oh_action"] {
        let state = state.clone();
        let conn = conn.clone();
        s.on(name, move |s: SocketRef, Data(event): Data<Value>| async move {
            if !event.is_object() {
                let _ = s.emit("oh_event", &json!({ "error": true, "message": "an action must be a JSON object" }));
                return;
            }
            if let Err(e) = state.registry.send_event(conn.ctx.clone(), &conn.conversation_id, &event).await {
                let _ = s.emit("oh_event", &json!({ "error": true, "message": e.error.message.as_str() }));
            }
        });
    }

    // Replay what is stored after latest_event_id, oldest first.
    let mut next = u64::try_from(conn.latest_event_id + 1).unwrap_or(0);
    let mut last_replayed: i64 = conn.latest_event_id;
    loop {
        let query = EventQuery { start_id: next, end_id: RNone, reverse: false, limit: 100 };
        let page = match registry.get_events(conn.ctx.clone(), &sid, query).await {
            Ok(p) => p,
            Err(e) => {
                let _ = s.emit("oh_event", &json!({ "error": true, "message": e.error.message.as_str() }));
                break;
            }
        };
        for event in &page.events {
            if !emit(&s, event).await {
                return;
            }
            if let Some(id) = event["id"].as_i64() {
                last_replayed = last_replayed.max(id);
                next = id as u64 + 1;
            }
        }
        if !page.has_more || page.events.is_empty() {
            break;
        }
    }

    // Live events: skip stored ones the replay already sent.
    let forward = {
        let s = s.clone();
        tokio::spawn(async move {
            while let Some(text) = rx.recv().await {
                let Ok(event) = serde_json::from_str::<Value>(&text) else { continue };
                if event["id"].as_i64().is_some_and(|id| id <= last_replayed) {
                    continue;
                }
                if !emit(&s, &event).await {
                    break;
                }
            }
        })
    };

    *lock(&forward_slot) = Some(forward.abort_handle());
}
