//! The conversation-scoped routes the web client calls beyond events (OpenHands §9.7): the
//! runtime's config and hosts, the workspace's files and git changes, microagents, the
//! trajectory, feedback. A conversation here has no sandbox or workspace yet, and these
//! answers say so in OpenHands' shapes: empty lists, nulls, or 404 with its error body.

use super::conversation;
use crate::http::{
    error::{ApiError, ApiResult},
    extract::{Caller, ConversationId, JsonBody, QueryParams},
    AppState,
};
use axum::{
    extract::State,
    routing::{get, post},
    Json, Router,
};
use plugin_api::EventQuery;
use serde::Deserialize;
use serde_json::{json, Value};

pub(super) fn routes() -> Router<AppState> {
    let base = "/api/conversations/{id}";
    Router::new()
        .route(&format!("{base}/config"), get(config))
        .route(&format!("{base}/vscode-url"), get(vscode_url))
        .route(&format!("{base}/web-hosts"), get(web_hosts))
        .route(&format!("{base}/list-files"), get(list_files))
        .route(&format!("{base}/select-file"), get(select_file))
        .route(&format!("{base}/git/changes"), get(git_changes))
        .route(&format!("{base}/git/diff"), get(git_diff))
        .route(&format!("{base}/upload-files"), post(upload_files))
        .route(&format!("{base}/microagents"), get(microagents))
        .route(&format!("{base}/trajectory"), get(trajectory))
        .route(&format!("{base}/submit-feedback"), post(submit_feedback))
        .route(&format!("{base}/remember-prompt"), get(remember_prompt))
}

/// The "remember this" prompt (a microagent update the agent would commit to the
/// repository): this server runs agents without a workspace or repository to commit to, so
/// it says so (501) instead of writing a prompt nothing can act on.
async fn remember_prompt(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
) -> ApiResult<Json<Value>> {
    exists(&state, &caller, &id).await?;
    Err(ApiError::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        json!({ "status": "error", "message": "Remembering needs a repository workspace, which this server's agents do not have yet" }),
    ))
}

async fn exists(state: &AppState, caller: &Caller, id: &str) -> ApiResult<()> {
    conversation(state, caller, id, ApiError::conversation_not_found).await.map(|_| ())
}

/// `{"runtime_id", "session_id"}`: no runtime, the session is the conversation.
async fn config(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
) -> ApiResult<Json<Value>> {
    exists(&state, &caller, &id).await?;
    Ok(Json(json!({ "runtime_id": Value::Null, "session_id": id })))
}

async fn vscode_url(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
) -> ApiResult<Json<Value>> {
    exists(&state, &caller, &id).await?;
    Ok(Json(json!({ "vscode_url": Value::Null })))
}

async fn web_hosts(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
) -> ApiResult<Json<Value>> {
    exists(&state, &caller, &id).await?;
    Ok(Json(json!({ "hosts": {} })))
}

#[derive(Deserialize)]
struct PathQuery {
    #[serde(default)]
    #[allow(dead_code)] // accepted as OpenHands does; there are no files to list yet
    path: Option<String>,
}

/// No workspace: no files.
async fn list_files(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
    QueryParams(_q): QueryParams<PathQuery>,
) -> ApiResult<Json<Vec<String>>> {
    exists(&state, &caller, &id).await?;
    Ok(Json(Vec::new()))
}

#[derive(Deserialize)]
struct FileQuery {
    #[serde(default)]
    file: String,
}

async fn select_file(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
    QueryParams(q): QueryParams<FileQuery>,
) -> ApiResult<Json<Value>> {
    exists(&state, &caller, &id).await?;
    Err(ApiError::not_found(format!("File not found: {}", q.file)))
}

/// OpenHands' answer for a workspace that is not a git repository (the web client's Changes
/// tab shows its friendly text for it).
fn not_a_repository() -> ApiError {
    ApiError::not_found("Not a git repository")
}

async fn git_changes(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
) -> ApiResult<Json<Value>> {
    exists(&state, &caller, &id).await?;
    Err(not_a_repository())
}

async fn git_diff(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
    QueryParams(_q): QueryParams<PathQuery>,
) -> ApiResult<Json<Value>> {
    exists(&state, &caller, &id).await?;
    Err(not_a_repository())
}

/// The body is not read: there is no workspace to put files in.
async fn upload_files(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
) -> ApiResult<Json<Value>> {
    exists(&state, &caller, &id).await?;
    Err(ApiError::not_found("Runtime not yet initialized"))
}

async fn microagents(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
) -> ApiResult<Json<Value>> {
    exists(&state, &caller, &id).await?;
    Ok(Json(json!({ "microagents": [] })))
}

/// `{"trajectory": [every stored event]}` (the web client's "Export conversation").
async fn trajectory(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
) -> ApiResult<Json<Value>> {
    exists(&state, &caller, &id).await?;
    let mut events = Vec::new();
    loop {
        let query = EventQuery::new(events.len() as u64, None, false, 1000);
        let page = state.registry.get_events(caller.ctx.clone(), &id, query).await?;
        let more = page.has_more && !page.events.is_empty();
        events.extend(page.events);
        if !more {
            break;
        }
    }
    Ok(Json(json!({ "trajectory": events })))
}

/// The web client's `Feedback` (`{email, version, permissions, polarity, token?, trajectory?}`).
#[derive(Deserialize)]
struct Feedback {
    #[serde(default)]
    email: String,
    #[serde(default)]
    version: String,
    #[serde(default = "private")]
    permissions: String,
    polarity: String,
}

fn private() -> String {
    "private".to_owned()
}

/// Stored with the conversation (OpenHands forwards it to a hosted service); answered in that
/// service's shape, `{"statusCode": 200, "body": {"message", "feedback_id", "password"}}`.
async fn submit_feedback(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
    JsonBody(body): JsonBody<Feedback>,
) -> ApiResult<Json<Value>> {
    if !["positive", "negative"].contains(&body.polarity.as_str()) {
        return Err(ApiError::unprocessable("polarity must be \"positive\" or \"negative\""));
    }
    if !["public", "private"].contains(&body.permissions.as_str()) {
        return Err(ApiError::unprocessable("permissions must be \"public\" or \"private\""));
    }
    let mut metadata = conversation(&state, &caller, &id, ApiError::conversation_not_found).await?;
    let mut bytes = [0u8; 8];
    let _ = getrandom::getrandom(&mut bytes);
    let feedback_id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    metadata.feedback.push(json!({
        "feedback_id": feedback_id,
        "polarity": body.polarity,
        "permissions": body.permissions,
        "email": body.email,
        "version": body.version,
        "created_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    }));
    state.registry.save_metadata(caller.ctx, &metadata).await?;
    Ok(Json(json!({
        "statusCode": 200,
        "body": { "message": "Feedback stored", "feedback_id": feedback_id, "password": "" },
    })))
}
