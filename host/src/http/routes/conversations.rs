//! `/api/conversations` (OpenHands §9.6, §9.7): search, get, rename, delete, stored events.
//! Creating, starting, stopping and talking to conversations goes to the `conversation_manager`.

use super::Caller;
use crate::http::{
    error::{ApiError, ApiResult},
    extract::{ConversationId, JsonBody, QueryParams},
    AppState,
};
use abi_stable::std_types::{RNone, RSome};
use axum::{
    extract::State,
    http::StatusCode,
    routing::{get, post},
    Json, Router,
};
use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use plugin_api::{models::ConversationMetadata, EventQuery};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/conversations", get(search).post(create))
        .route("/api/conversations/{id}", get(get_one).patch(rename).delete(delete))
        .route("/api/conversations/{id}/events", get(events).post(post_event))
        .route("/api/conversations/{id}/message", post(post_message))
        .route("/api/conversations/{id}/start", post(start))
        .route("/api/conversations/{id}/stop", post(stop))
}

/// OpenHands' `get_default_conversation_title`.
fn default_title(id: &str) -> String {
    format!("Conversation {}", id.chars().take(5).collect::<String>())
}

/// `ConversationInfo` of a stored conversation.
fn info(m: &ConversationMetadata, status: Option<&str>, runtime_status: Option<&str>) -> Value {
    json!({
        "conversation_id": m.conversation_id,
        "title": m.title.clone().unwrap_or_else(|| default_title(&m.conversation_id)),
        "last_updated_at": m.last_updated_at,
        "status": status.unwrap_or("STOPPED"),
        "runtime_status": runtime_status,
        "selected_repository": m.selected_repository,
        "selected_branch": m.selected_branch,
        "git_provider": m.git_provider,
        "trigger": m.trigger,
        "num_connections": 0,
        "url": Value::Null,
        "session_api_key": Value::Null,
        "created_at": m.created_at,
        "pr_number": m.pr_number,
        "conversation_version": "V0",
        "sub_conversation_ids": [],
    })
}

#[derive(Deserialize)]
struct SearchQuery {
    page_id: Option<String>,
    #[serde(default = "default_limit")]
    limit: i64,
    selected_repository: Option<String>,
    conversation_trigger: Option<String>,
}

fn default_limit() -> i64 {
    20
}

/// OpenHands 0.62 page ids are base64 of `{"v0": <store page id>, "v1": ...}`; anything
/// else is taken as a store page id, as OpenHands does.
fn store_page_id(page_id: Option<&str>) -> Option<String> {
    let page_id = page_id.filter(|p| !p.is_empty())?;
    let decoded = B64.decode(page_id).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    match decoded {
        Some(Value::Object(o)) if o.contains_key("v0") => o.get("v0").and_then(Value::as_str).map(str::to_owned),
        _ => Some(page_id.to_owned()),
    }
}

fn wrap_page_id(next: Option<String>) -> Option<String> {
    next.map(|v0| B64.encode(json!({ "v0": v0, "v1": Value::Null }).to_string()))
}

async fn search(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<SearchQuery>,
) -> ApiResult<Json<Value>> {
    if !(1..=100).contains(&q.limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 100"));
    }
    let page = state
        .registry
        .search_conversations(caller.ctx.clone(), store_page_id(q.page_id.as_deref()).as_deref(), q.limit as u32)
        .await?;
    let oldest = chrono::Utc::now() - chrono::Duration::from_std(state.server.conversation_max_age).unwrap_or_default();
    let kept: Vec<&ConversationMetadata> = page
        .results
        .iter()
        .filter(|m| chrono::DateTime::parse_from_rfc3339(&m.created_at).map_or(true, |t| t >= oldest))
        .filter(|m| q.selected_repository.as_ref().is_none_or(|r| m.selected_repository.as_ref() == Some(r)))
        .filter(|m| q.conversation_trigger.as_ref().is_none_or(|t| m.trigger.as_ref() == Some(t)))
        .collect();
    let ids: Vec<String> = kept.iter().map(|m| m.conversation_id.clone()).collect();
    let running: HashMap<String, (String, Option<String>)> = state
        .registry
        .running(caller.ctx, &ids)
        .await?
        .into_iter()
        .map(|l| (l.conversation_id, (l.status, l.runtime_status)))
        .collect();
    let results: Vec<Value> = kept
        .iter()
        .map(|m| {
            let live = running.get(&m.conversation_id);
            info(m, live.map(|l| l.0.as_str()), live.and_then(|l| l.1.as_deref()))
        })
        .collect();
    Ok(Json(json!({ "results": results, "next_page_id": wrap_page_id(page.next_page_id) })))
}

/// 200 with the `ConversationInfo`, or 200 `null` when there is none (as OpenHands).
async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
) -> ApiResult<Json<Value>> {
    let Some(m) = state.registry.get_metadata(caller.ctx.clone(), &id).await? else {
        return Ok(Json(Value::Null));
    };
    let live = state.registry.running(caller.ctx, std::slice::from_ref(&id)).await?;
    let live = live.iter().find(|l| l.conversation_id == id);
    Ok(Json(info(&m, live.map(|l| l.status.as_str()), live.and_then(|l| l.runtime_status.as_deref()))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TitleUpdate {
    title: String,
}

fn not_found_conversation() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        json!({ "status": "error", "message": "Conversation not found", "msg_id": "CONVERSATION$NOT_FOUND" }),
    )
}

async fn rename(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
    JsonBody(body): JsonBody<TitleUpdate>,
) -> ApiResult<Json<bool>> {
    let title = body.title.trim().to_owned();
    if title.is_empty() || title.chars().count() > 200 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({ "error": "invalid request body: title must be 1 to 200 characters" }),
        ));
    }
    let Some(mut m) = state.registry.get_metadata(caller.ctx.clone(), &id).await? else {
        return Err(not_found_conversation());
    };
    if let (Some(user), Some(owner)) = (&caller.principal.user_id, &m.user_id) {
        if user != owner {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                json!({ "status": "error", "message": "Permission denied: You can only update your own conversations", "msg_id": "AUTHORIZATION$PERMISSION_DENIED" }),
            ));
        }
    }
    m.title = Some(title);
    m.last_updated_at = Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    state.registry.save_metadata(caller.ctx, &m).await?;
    Ok(Json(true))
}

/// `true` when deleted, `false` when there was nothing to delete. A running loop is closed
/// first.
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
) -> ApiResult<Json<bool>> {
    if state.registry.get_metadata(caller.ctx.clone(), &id).await?.is_none() {
        return Ok(Json(false));
    }
    if let Some(manager) = &state.registry.manager {
        manager.meta.call("close", manager.obj.close(caller.ctx.clone(), id.as_str().into())).await?;
    }
    Ok(Json(state.registry.delete_metadata(caller.ctx, &id).await?))
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    start_id: i64,
    end_id: Option<i64>,
    #[serde(default)]
    reverse: bool,
    #[serde(default = "default_limit")]
    limit: i64,
}

async fn events(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
    QueryParams(q): QueryParams<EventsQuery>,
) -> ApiResult<Json<Value>> {
    if !(0..=100).contains(&q.limit) {
        return Err(ApiError::bad_request("limit must be between 0 and 100"));
    }
    if q.start_id < 0 || q.end_id.is_some_and(|e| e < 0) {
        return Err(ApiError::bad_request("start_id and end_id must not be negative"));
    }
    if state.registry.get_metadata(caller.ctx.clone(), &id).await?.is_none() {
        return Err(not_found_conversation());
    }
    let query = EventQuery {
        start_id: q.start_id as u64,
        end_id: q.end_id.map_or(RNone, |e| RSome(e as u64)),
        reverse: q.reverse,
        limit: q.limit as u32,
    };
    let page = state.registry.get_events(caller.ctx, &id, query).await?;
    Ok(Json(json!({ "events": page.events, "has_more": page.has_more })))
}

// ---- Running conversations (needs a conversation_manager). ----

/// OpenHands' `InitSessionRequest` (`extra='forbid'`).
#[derive(Deserialize)]
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

fn msg_error(status: StatusCode, message: &str, msg_id: &str) -> ApiError {
    ApiError::new(status, json!({ "status": "error", "message": message, "msg_id": msg_id }))
}

/// The user's settings and secrets as a manager start request; 400 as OpenHands when the
/// settings are missing or have no LLM key.
pub(crate) async fn start_request(
    state: &AppState,
    ctx: &plugin_api::CallContext,
    conversation_id: &str,
) -> ApiResult<plugin_api::models::StartRequest> {
    let (settings, secrets) =
        tokio::join!(state.registry.load_settings(ctx.clone()), state.registry.load_secrets(ctx.clone()));
    let Some(settings) = settings? else {
        return Err(msg_error(StatusCode::BAD_REQUEST, "Settings not found", "CONFIGURATION$SETTINGS_NOT_FOUND"));
    };
    let model = settings.llm_model.as_deref().unwrap_or("");
    let keyless = model.starts_with("bedrock/") || model.starts_with("lemonade/");
    if settings.llm_api_key.as_deref().is_none_or(|k| k.trim().is_empty()) && !keyless {
        return Err(msg_error(
            StatusCode::BAD_REQUEST,
            "Error authenticating with the LLM provider. Please check your API key",
            "STATUS$ERROR_LLM_AUTHENTICATION",
        ));
    }
    let secrets = secrets?.unwrap_or_default();
    // Tokens the auth system brokers (Keycloak in SaaS) win over stored ones, as in OpenHands.
    let provider_tokens = state.registry.provider_tokens(ctx.clone()).await?.unwrap_or(secrets.provider_tokens);
    Ok(plugin_api::models::StartRequest {
        conversation_id: conversation_id.to_owned(),
        settings,
        provider_tokens,
        custom_secrets: secrets.custom_secrets,
        ..Default::default()
    })
}

fn new_conversation_id() -> String {
    let mut bytes = [0u8; 16];
    let _ = getrandom::getrandom(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<InitSessionRequest>,
) -> ApiResult<Json<Value>> {
    state.registry.manager()?;
    let id = match body.conversation_id {
        Some(id) if crate::env::get("ALLOW_SET_CONVERSATION_ID").as_deref() == Some("1") => {
            crate::http::extract::validate_conversation_id(&id)?;
            id
        }
        Some(_) => {
            return Err(ApiError::bad_request("conversation_id may only be set when ALLOW_SET_CONVERSATION_ID=1"))
        }
        None => new_conversation_id(),
    };
    let mut request = start_request(&state, &caller.ctx, &id).await?;
    if state.registry.get_metadata(caller.ctx.clone(), &id).await?.is_some() {
        return Err(ApiError::error(StatusCode::CONFLICT, format!("conversation {id} exists already")));
    }
    let trigger = if caller.principal.auth_type == plugin_api::AuthType::BEARER {
        "openhands_api"
    } else if body.create_microagent.is_some() {
        "microagent_management"
    } else if body.suggested_task.is_some() {
        "suggested_task"
    } else {
        "gui"
    };
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let metadata = ConversationMetadata {
        conversation_id: id.clone(),
        selected_repository: body.repository,
        user_id: caller.principal.user_id.clone(),
        selected_branch: body.selected_branch,
        git_provider: body.git_provider,
        trigger: Some(trigger.to_owned()),
        created_at: now.clone(),
        last_updated_at: Some(now),
        llm_model: request.settings.llm_model.clone(),
        conversation_version: Some("V0".to_owned()),
        ..Default::default()
    };
    state.registry.save_metadata(caller.ctx.clone(), &metadata).await?;
    state.registry.on_create_conversation(&caller.ctx);
    request.initial_user_msg = body.initial_user_msg;
    request.image_urls = body.image_urls;
    request.replay_json = body.replay_json;
    request.conversation_instructions = body.conversation_instructions;
    let info = state.registry.maybe_start(caller.ctx, &request).await?;
    Ok(Json(
        json!({ "status": "ok", "conversation_id": id, "message": Value::Null, "conversation_status": info.status }),
    ))
}

fn conversation_missing(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, json!({ "status": "error", "conversation_id": id }))
}

async fn start(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
) -> ApiResult<Json<Value>> {
    if state.registry.get_metadata(caller.ctx.clone(), &id).await?.is_none() {
        return Err(conversation_missing(&id));
    }
    let request = start_request(&state, &caller.ctx, &id).await?;
    match state.registry.maybe_start(caller.ctx, &request).await {
        Ok(info) => Ok(Json(
            json!({ "status": "ok", "conversation_id": id, "message": Value::Null, "conversation_status": info.status }),
        )),
        Err(e) => {
            let status = crate::http::error::status_of(e.error.code);
            let message = format!("Failed to start conversation: {}", e.error.message);
            Err(ApiError::new(status, json!({ "status": "error", "conversation_id": id, "message": message })))
        }
    }
}

async fn stop(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
) -> ApiResult<Json<Value>> {
    if state.registry.get_metadata(caller.ctx.clone(), &id).await?.is_none() {
        return Err(conversation_missing(&id));
    }
    let stopped = state.registry.close_conversation(caller.ctx, &id).await?;
    let message = if stopped { "Conversation stopped successfully" } else { "Conversation was not running" };
    Ok(Json(json!({ "status": "ok", "conversation_id": id, "message": message, "conversation_status": "STOPPED" })))
}

/// Delivers a user event to a running conversation: `{"success": true}`.
async fn deliver(state: &AppState, caller: Caller, id: &str, event: Value) -> ApiResult<Json<Value>> {
    if state.registry.get_metadata(caller.ctx.clone(), id).await?.is_none() {
        return Err(not_found_conversation());
    }
    match state.registry.send_event(caller.ctx, id, &event).await {
        Ok(()) => Ok(Json(json!({ "success": true }))),
        Err(e) => {
            let status = crate::http::error::status_of(e.error.code);
            Err(ApiError::new(status, json!({ "success": false, "error": e.error.message.as_str() })))
        }
    }
}

async fn post_event(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
    JsonBody(event): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    if !event.is_object() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({ "error": "an event must be a JSON object" }),
        ));
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
