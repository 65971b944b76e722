//! Conversations that run (OpenHands §9.6, §9.7): create, start, stop, and user events into a
//! running agent loop. Everything here goes to the `conversation_manager`.

use super::conversation;
use crate::http::{
    error::{detail_headers, status_of, ApiError, ApiResult},
    extract::{validate_conversation_id, Caller, ConversationId, JsonBody},
    start::start_request,
    AppState,
};
use axum::{extract::State, http::StatusCode, routing::post, Json, Router};
use plugin_api::{
    host_calls::StartConversation,
    models::{Admission, ConversationMetadata},
    AuthType, CallContext, ErrorCode, PluginError,
};
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
    /// Not OpenHands': set by plugins that start conversations (an issue's title).
    #[serde(skip)]
    title: Option<String>,
}

fn new_conversation_id() -> String {
    let mut bytes = [0u8; 16];
    let _ = getrandom::getrandom(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `{"status": "ok", "conversation_id", "message": null, "conversation_status"}`.
fn started(id: &str, status: &str) -> Json<Value> {
    Json(json!({ "status": "ok", "conversation_id": id, "message": Value::Null, "conversation_status": status }))
}

/// Monitoring listeners may refuse a new conversation: billing does when the user has no
/// credits left (402 with the status the web client shows for it).
async fn admit_start(state: &AppState, ctx: &CallContext) -> ApiResult<()> {
    let admission = Admission { action: Admission::START_CONVERSATION.to_owned(), conversation_id: None };
    match state.registry.admit(ctx, &admission).await {
        Ok(()) => Ok(()),
        Err(e) if e.error.code == ErrorCode::PAYMENT_REQUIRED => Err(ApiError::with_msg_id(
            StatusCode::PAYMENT_REQUIRED,
            e.error.message.as_str(),
            "STATUS$ERROR_LLM_OUT_OF_CREDITS",
        )),
        Err(e) => Err(e.into()),
    }
}

/// How long a client refused during maintenance is asked to wait before trying again.
const MAINTENANCE_RETRY_AFTER_SECS: u64 = 300;

/// From `MAINTENANCE_START_TIME` on, new conversations are refused (503 with Retry-After);
/// running ones go on, and reads keep working.
fn maintenance(state: &AppState) -> Option<ApiError> {
    let start = state.server.env.maintenance_start?;
    if chrono::Utc::now() < start {
        return None;
    }
    let mut refusal = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({
            "status": "error",
            "msg_id": "MAINTENANCE$IN_PROGRESS",
            "message": format!(
                "The server is under maintenance since {}: new conversations cannot start until it ends. Conversations already running continue.",
                start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        }),
    );
    refusal
        .headers
        .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(MAINTENANCE_RETRY_AFTER_SECS));
    Some(refusal)
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
    let (id, status) = create_conversation(&state, &caller.ctx, body, trigger, id).await?;
    Ok(started(&id, &status))
}

/// Creates and starts a conversation: the work of `POST /api/conversations`, also what
/// plugins get with `host_calls::StartConversation`. Its id and the loop's status.
async fn create_conversation(
    state: &AppState,
    ctx: &CallContext,
    body: InitSessionRequest,
    trigger: &str,
    id: Option<String>,
) -> ApiResult<(String, String)> {
    if !state.registry.has_manager() {
        return Err(ApiError::error(
            StatusCode::NOT_IMPLEMENTED,
            "no conversation_manager is configured; add [extensions.conversation_manager] to the profile",
        ));
    }
    if let Some(refusal) = maintenance(state) {
        return Err(refusal);
    }
    admit_start(state, ctx).await?;
    within_cap(state, ctx).await?;
    let id = id.unwrap_or_else(new_conversation_id);
    let mut request = start_request(state, ctx, &id).await?;
    if state.registry.get_metadata(ctx.clone(), &id).await?.is_some() {
        return Err(ApiError::error(StatusCode::CONFLICT, format!("conversation {id} exists already")));
    }
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let metadata = ConversationMetadata {
        conversation_id: id.clone(),
        selected_repository: body.repository,
        user_id: ctx.user_id().map(str::to_owned),
        selected_branch: body.selected_branch,
        git_provider: body.git_provider,
        trigger: Some(trigger.to_owned()),
        title: body.title,
        created_at: now.clone(),
        last_updated_at: Some(now),
        llm_model: request.settings.llm_model.clone(),
        conversation_version: Some("V0".to_owned()),
        ..Default::default()
    };
    state.registry.save_metadata(ctx.clone(), &metadata).await?;
    state.registry.on_create_conversation(ctx);
    request.initial_user_msg = body.initial_user_msg;
    request.image_urls = body.image_urls;
    request.replay_json = body.replay_json;
    request.conversation_instructions = body.conversation_instructions;
    let info = state.registry.maybe_start(ctx.clone(), &request).await?;
    Ok((id, info.status))
}

/// Refuses a new conversation when the user has `[server] max_conversations_per_user`
/// stored already (counted through the store's search, a page as large as the bound).
async fn within_cap(state: &AppState, ctx: &CallContext) -> ApiResult<()> {
    let cap = state.server.max_conversations_per_user;
    if cap == 0 {
        return Ok(());
    }
    let mut count = 0usize;
    let mut page: Option<String> = None;
    loop {
        let want = (cap - count).clamp(1, 1000) as u32;
        let found = state.registry.search_conversations(ctx.clone(), page.as_deref(), want).await?;
        count += found.results.len();
        if count >= cap {
            return Err(ApiError::with_msg_id(
                StatusCode::FORBIDDEN,
                &format!(
                    "You have {cap} conversations, the most this server keeps per user (max_conversations_per_user); delete some to start new ones"
                ),
                "CONVERSATION$TOO_MANY_STORED",
            ));
        }
        match found.next_page_id {
            Some(next) if !found.results.is_empty() => page = Some(next),
            _ => return Ok(()),
        }
    }
}

/// `host_calls::StartConversation`, for plugins (integrations start conversations for the
/// users their deliveries come from). A given id that exists already is answered as is.
pub(crate) async fn launch(state: &AppState, ctx: CallContext, r: StartConversation) -> Result<String, PluginError> {
    if let Some(id) = &r.conversation_id {
        validate_conversation_id(id).map_err(plugin_error)?;
        if state.registry.get_metadata(ctx.clone(), id).await.map_err(|e| e.into_plugin_error())?.is_some() {
            return Ok(id.clone());
        }
    }
    let body = InitSessionRequest {
        repository: r.repository,
        git_provider: r.git_provider,
        selected_branch: r.selected_branch,
        initial_user_msg: Some(r.initial_user_msg),
        title: r.title,
        ..Default::default()
    };
    create_conversation(state, &ctx, body, &r.trigger, r.conversation_id).await.map(|(id, _)| id).map_err(plugin_error)
}

/// An answer of ours as a plugin error: its status as the code, its message.
fn plugin_error(e: ApiError) -> PluginError {
    let code = match e.status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => ErrorCode::INVALID_ARGUMENT,
        StatusCode::NOT_FOUND => ErrorCode::NOT_FOUND,
        StatusCode::CONFLICT => ErrorCode::CONFLICT,
        StatusCode::PAYMENT_REQUIRED => ErrorCode::PAYMENT_REQUIRED,
        StatusCode::FORBIDDEN => ErrorCode::PERMISSION_DENIED,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RESOURCE_EXHAUSTED,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::UNAVAILABLE,
        StatusCode::NOT_IMPLEMENTED => ErrorCode::UNIMPLEMENTED,
        _ => ErrorCode::INTERNAL,
    };
    let message = e.body["message"].as_str().or_else(|| e.body["error"].as_str()).unwrap_or("refused").to_owned();
    PluginError::new(code, message)
}

async fn start(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
) -> ApiResult<Json<Value>> {
    conversation(&state, &caller, &id, || ApiError::conversation_missing(&id)).await?;
    let request = start_request(&state, &caller.ctx, &id).await?;
    match state.registry.maybe_start(caller.ctx, &request).await {
        Ok(info) => Ok(started(&id, &info.status)),
        Err(e) => {
            let message = format!("Failed to start conversation: {}", e.error.message);
            Err(ApiError::new(
                status_of(e.error.code),
                json!({ "status": "error", "conversation_id": id, "message": message }),
            ))
        }
    }
}

async fn stop(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
) -> ApiResult<Json<Value>> {
    conversation(&state, &caller, &id, || ApiError::conversation_missing(&id)).await?;
    let stopped = state.registry.close_conversation(caller.ctx, &id).await?;
    let message = if stopped { "Conversation stopped successfully" } else { "Conversation was not running" };
    Ok(Json(json!({ "status": "ok", "conversation_id": id, "message": message, "conversation_status": "STOPPED" })))
}

/// Delivers a user event to a running conversation: `{"success": true}` once the manager has
/// stored it; 429 with `Retry-After` when too many wait for the agent.
async fn deliver(state: &AppState, caller: Caller, id: &str, event: Value) -> ApiResult<Json<Value>> {
    conversation(state, &caller, id, ApiError::conversation_not_found).await?;
    match state.registry.send_event(caller.ctx, id, &event).await {
        Ok(()) => Ok(Json(json!({ "success": true }))),
        Err(e) => {
            let mut error =
                ApiError::new(status_of(e.error.code), json!({ "success": false, "error": e.error.message.as_str() }));
            error.headers = detail_headers(&e.error.details_json);
            Err(error)
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
