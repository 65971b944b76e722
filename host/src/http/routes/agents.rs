//! Conversations that run (OpenHands §9.6, §9.7): create, start, stop, and user events into a
//! running agent loop. Everything here goes to the `conversation_manager`.

use super::conversation;
use crate::{
    app::{AppError, NewConversation},
    http::{
        error::{detail_headers, status_of, ApiError, ApiResult},
        extract::{validate_conversation_id, Caller, ConversationId, JsonBody},
        AppState,
    },
};
use axum::{extract::State, http::StatusCode, routing::post, Json, Router};
use plugin_api::AuthType;
use serde::Deserialize;
use serde_json::{json, Value};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/conversations", post(create))
        .route("/api/conversations/{id}/events", post(post_event))
        .route("/api/conversations/{id}/message", post(post_message))
        .route("/api/conversations/{id}/start", post(start))
        .route("/api/conversations/{id}/stop", post(stop))
}

/// OpenHands' `InitSessionRequest` (`extra='forbid'`).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct InitSessionRequest {
    repository: Option<String>,
    git_provider: Option<String>,
    selected_branch: Option<String>,
    initial_user_msg: Option<String>,
    #[serde(default)]
    image_urls: Vec<String>,
    replay_json: Option<String>,
    suggested_task: Option<Value>,
    create_microagent: Option<Value>,
    conversation_instructions: Option<String>,
    #[allow(dead_code)] // accepted for compatibility; MCP servers come from Settings
    mcp_config: Option<Value>,
    conversation_id: Option<String>,
}

/// `{"status": "ok", "conversation_id", "message": null, "conversation_status"}`.
fn started(id: &str, status: &str) -> Json<Value> {
    Json(json!({ "status": "ok", "conversation_id": id, "message": Value::Null, "conversation_status": status }))
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<InitSessionRequest>,
) -> ApiResult<Json<Value>> {
    let id = match body.conversation_id.clone() {
        Some(id) if state.server.env.allow_set_conversation_id => {
            validate_conversation_id(&id)?;
            Some(id)
        }
        Some(_) => {
            return Err(ApiError::bad_request("conversation_id may only be set when ALLOW_SET_CONVERSATION_ID=1"))
        }
        None => None,
    };
    let trigger = if caller.principal.auth_type == AuthType::BEARER {
        "openhands_api"
    } else if body.create_microagent.is_some() {
        "microagent_management"
    } else if body.suggested_task.is_some() {
        "suggested_task"
    } else {
        "gui"
    };
    let new = NewConversation {
        id,
        repository: body.repository,
        git_provider: body.git_provider,
        selected_branch: body.selected_branch,
        initial_user_msg: body.initial_user_msg,
        image_urls: body.image_urls,
        replay_json: body.replay_json,
        conversation_instructions: body.conversation_instructions,
        title: None,
        trigger: trigger.to_owned(),
    };
    let started_ = state.app.create_conversation(&caller.ctx, new).await?;
    Ok(started(&started_.id, &started_.status))
}

async fn start(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
) -> ApiResult<Json<Value>> {
    conversation(&state, &caller, &id, || ApiError::conversation_missing(&id)).await?;
    match state.app.start_conversation(&caller.ctx, &id).await {
        Ok(status) => Ok(started(&id, &status)),
        Err(AppError::StartFailed(e)) => {
            let message = format!("Failed to start conversation: {}", e.error.message);
            Err(ApiError::new(
                status_of(e.error.code),
                json!({ "status": "error", "conversation_id": id, "message": message }),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

async fn stop(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
) -> ApiResult<Json<Value>> {
    conversation(&state, &caller, &id, || ApiError::conversation_missing(&id)).await?;
    let stopped = state.app.stop_conversation(&caller.ctx, &id).await?;
    let message = if stopped { "Conversation stopped successfully" } else { "Conversation was not running" };
    Ok(Json(json!({ "status": "ok", "conversation_id": id, "message": message, "conversation_status": "STOPPED" })))
}

/// Delivers a user event to a running conversation: `{"success": true}` once the manager has
/// stored it; 429 with `Retry-After` when too many wait for the agent.
async fn deliver(state: &AppState, caller: Caller, id: &str, event: Value) -> ApiResult<Json<Value>> {
    conversation(state, &caller, id, ApiError::conversation_not_found).await?;
    match state.app.send_event(caller.ctx, id, &event).await {
        Ok(()) => Ok(Json(json!({ "success": true }))),
        Err(AppError::Plugin(e)) => {
            let mut error =
                ApiError::new(status_of(e.error.code), json!({ "success": false, "error": e.error.message.as_str() }));
            error.headers = detail_headers(&e.error.details_json);
            Err(error)
        }
        Err(e) => Err(e.into()),
    }
}

async fn post_event(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
    JsonBody(event): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    if !event.is_object() {
        return Err(ApiError::error(StatusCode::UNPROCESSABLE_ENTITY, "an event must be a JSON object"));
    }
    deliver(&state, caller, &id, event).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageIn {
    message: String,
}

async fn post_message(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
    JsonBody(body): JsonBody<MessageIn>,
) -> ApiResult<Json<Value>> {
    let event = json!({ "action": "message", "args": { "content": body.message, "image_urls": [] } });
    deliver(&state, caller, &id, event).await
}
