//! The conversation-scoped routes the web client calls beyond events (OpenHands §9.7): the
//! runtime's config and hosts, the workspace's files and git changes, microagents, the
//! trajectory, feedback. A conversation whose tools run has a workspace (the `runtime`'s, or
//! for a manager that keeps its own, the directory it names); `app::workspace` reaches it.
//! Without one, these answers say so in OpenHands' shapes: empty lists, nulls, or 404 with its
//! error body.

use super::conversation;
use crate::app::{AppError, WorkspaceError};
use crate::http::{
    error::{ApiError, ApiResult},
    extract::{Caller, ConversationId, JsonBody, QueryParams},
    AppState,
};
use axum::http::StatusCode;
use axum::{
    extract::State,
    routing::{get, post},
    Json, Router,
};
use plugin_api::EventQuery;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::Path;

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
    path: Option<String>,
}

/// The most of one file the workspace routes read: a larger one is a 413, not a response
/// (nor a buffer in the host) of its size.
const MAX_FILE_BYTES: u64 = 8 << 20;

/// The most `git status` may print for the Changes tab.
const MAX_GIT_OUTPUT: usize = 4 << 20;

/// A workspace error as an answer: 400 for a path that leads out, `missing` for a missing
/// one, 413 past the bound, 415 for what is not a regular file.
fn ws_error(e: WorkspaceError, missing: impl FnOnce() -> ApiError) -> ApiError {
    match e {
        WorkspaceError::Outside(why) => ApiError::bad_request(why),
        WorkspaceError::NotFound => missing(),
        WorkspaceError::TooLarge(why) => ApiError::error(StatusCode::PAYLOAD_TOO_LARGE, why),
        WorkspaceError::NotAFile(why) => ApiError::error(StatusCode::UNSUPPORTED_MEDIA_TYPE, why),
        WorkspaceError::NotARepository => not_a_repository(),
        WorkspaceError::Failed(e) => AppError::Plugin(e).into(),
    }
}

/// The entries of a workspace directory (`path`, default its root), relative to the
/// workspace, directories with a trailing `/`; git's own files left out.
async fn list_files(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
    QueryParams(q): QueryParams<PathQuery>,
) -> ApiResult<Json<Vec<String>>> {
    exists(&state, &caller, &id).await?;
    let path = q.path.unwrap_or_default();
    let entries = state
        .app
        .workspace_list(&caller.ctx, &id, &path)
        .await
        .map_err(|e| ws_error(e, || ApiError::not_found("")))?
        .unwrap_or_default();
    let listed = entries
        .into_iter()
        .filter(|e| e.name != ".git")
        .map(|e| if e.dir { format!("{}/", e.path) } else { e.path })
        .collect();
    Ok(Json(listed))
}

#[derive(Deserialize)]
struct FileQuery {
    #[serde(default)]
    file: String,
}

/// `{"code": <the file's text>}`; 415 for a binary file, 413 past `MAX_FILE_BYTES`.
async fn select_file(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
    QueryParams(q): QueryParams<FileQuery>,
) -> ApiResult<Json<Value>> {
    exists(&state, &caller, &id).await?;
    let missing = || ApiError::not_found(format!("File not found: {}", q.file));
    let bytes = match state.app.workspace_read(&caller.ctx, &id, &q.file, MAX_FILE_BYTES).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Err(missing()),
        Err(WorkspaceError::NotAFile(_)) => {
            let why = format!("Unable to open {}: not a regular file", q.file);
            return Err(ApiError::error(StatusCode::UNSUPPORTED_MEDIA_TYPE, why));
        }
        Err(e) => return Err(ws_error(e, missing)),
    };
    match String::from_utf8(bytes) {
        Ok(code) => Ok(Json(json!({ "code": code }))),
        Err(_) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            json!({ "error": format!("Unable to open binary file: {}", q.file) }),
        )),
    }
}

/// OpenHands' answer for a workspace that is not a git repository (the web client's Changes
/// tab shows its friendly text for it).
fn not_a_repository() -> ApiError {
    ApiError::not_found("Not a git repository")
}

/// `[{"status": "A"|"M"|"D"|"R"|"U", "path"}]` from `git status` (new files count as added).
async fn git_changes(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
) -> ApiResult<Json<Value>> {
    exists(&state, &caller, &id).await?;
    let changes = state
        .app
        .workspace_changes(&caller.ctx, &id, MAX_GIT_OUTPUT)
        .await
        .map_err(|e| ws_error(e, not_a_repository))?;
    Ok(Json(json!(changes)))
}

/// `{"modified": <now>, "original": <at the last commit>}` of one file (each bounded).
async fn git_diff(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
    QueryParams(q): QueryParams<PathQuery>,
) -> ApiResult<Json<Value>> {
    exists(&state, &caller, &id).await?;
    let path = q.path.unwrap_or_default();
    let (original, modified) = state
        .app
        .workspace_diff(&caller.ctx, &id, &path, MAX_FILE_BYTES)
        .await
        .map_err(|e| ws_error(e, not_a_repository))?;
    let text = |b: Option<Vec<u8>>| b.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    Ok(Json(json!({ "modified": text(modified), "original": text(original) })))
}

/// A workspace error as a reason in a list.
fn describe(e: &WorkspaceError) -> String {
    match e {
        WorkspaceError::Outside(why) | WorkspaceError::TooLarge(why) | WorkspaceError::NotAFile(why) => why.clone(),
        WorkspaceError::NotFound => "not found".to_owned(),
        WorkspaceError::NotARepository => "not a repository".to_owned(),
        WorkspaceError::Failed(e) => e.error.message.to_string(),
    }
}

/// `multipart/form-data` files (field `files`) into the workspace's root:
/// `{"uploaded_files": [names], "skipped_files": [{"name", "reason"}]}` as OpenHands answers.
/// Without a workspace, OpenHands' 404. Each is written beneath the root: a link in its place
/// is refused, never followed.
async fn upload_files(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    exists(&state, &caller, &id).await?;
    let not_ready = || ApiError::not_found("Runtime not yet initialized");
    // Is there a workspace at all (OpenHands' 404 otherwise)?
    if state.app.workspace_list(&caller.ctx, &id, "").await.map_err(|e| ws_error(e, not_ready))?.is_none() {
        return Err(not_ready());
    }
    let content_type = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let boundary = content_type
        .strip_prefix("multipart/form-data")
        .and_then(|rest| rest.split(';').find_map(|p| p.trim().strip_prefix("boundary=")))
        .map(|b| b.trim_matches('"').to_owned())
        .ok_or_else(|| ApiError::bad_request("expected multipart/form-data with a boundary (field `files`)"))?;
    let mut uploaded = Vec::new();
    let mut skipped = Vec::new();
    for (name, file, content) in multipart_files(&body, &boundary) {
        if name != "files" {
            continue;
        }
        // A name, not a path: nothing lands outside the workspace's root.
        let Some(file) =
            Path::new(&file).file_name().map(|f| f.to_string_lossy().into_owned()).filter(|f| f != "." && f != "..")
        else {
            skipped.push(json!({ "name": file, "reason": "not a file name" }));
            continue;
        };
        match state.app.workspace_write(&caller.ctx, &id, &file, content.to_vec()).await {
            Ok(Some(())) => uploaded.push(json!(file)),
            Ok(None) => skipped.push(json!({ "name": file, "reason": "no workspace" })),
            Err(e) => skipped.push(json!({ "name": file, "reason": describe(&e) })),
        }
    }
    Ok(Json(json!({ "uploaded_files": uploaded, "skipped_files": skipped })))
}

/// The parts of a `multipart/form-data` body that carry a file: (field name, file name, bytes).
fn multipart_files<'a>(body: &'a [u8], boundary: &str) -> Vec<(String, String, &'a [u8])> {
    let delimiter = format!("--{boundary}").into_bytes();
    let find =
        |from: usize, needle: &[u8]| body[from..].windows(needle.len()).position(|w| w == needle).map(|p| p + from);
    let mut parts = Vec::new();
    let Some(mut at) = find(0, &delimiter) else { return parts };
    loop {
        let start = at + delimiter.len();
        if body[start..].starts_with(b"--") {
            break; // the closing delimiter
        }
        let Some(next) = find(start, &delimiter) else { break };
        // The part: CRLF, headers, a blank line, the content, CRLF before the next delimiter.
        let part = &body[start..next];
        let part = part.strip_prefix(b"\r\n").unwrap_or(part);
        let part = part.strip_suffix(b"\r\n").unwrap_or(part);
        if let Some(split) = part.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&part[..split]);
            let disposition = head.lines().find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"));
            let param = |key: &str| {
                disposition.and_then(|d| {
                    d.split(';')
                        .find_map(|p| p.trim().strip_prefix(&format!("{key}=")).map(|v| v.trim_matches('"').to_owned()))
                })
            };
            if let (Some(name), Some(file)) = (param("name"), param("filename")) {
                parts.push((name, file, &part[split + 4..]));
            }
        }
        at = next;
    }
    parts
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
        let page = state.app.events(&caller.ctx, &id, query).await?;
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
    state.app.save_conversation(&caller.ctx, &metadata).await?;
    Ok(Json(json!({
        "statusCode": 200,
        "body": { "message": "Feedback stored", "feedback_id": feedback_id, "password": "" },
    })))
}

#[cfg(test)]
mod tests {
    use super::multipart_files;

    #[test]
    fn multipart_file_parts_are_read_whole() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nline 1\r\nline 2\r\n--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nnot a file\r\n--XyZ\r\nContent-Disposition: form-data; name=\"files\"; filename=\"b.bin\"\r\n\r\n\x00\x01--X\r\n--XyZ--\r\n";
        let parts = multipart_files(body, "XyZ");
        assert_eq!(parts.len(), 2);
        assert_eq!(
            (parts[0].0.as_str(), parts[0].1.as_str(), parts[0].2),
            ("files", "a.txt", &b"line 1\r\nline 2"[..])
        );
        assert_eq!((parts[1].1.as_str(), parts[1].2), ("b.bin", &b"\x00\x01--X"[..]));
        assert!(multipart_files(b"garbage", "XyZ").is_empty());
    }
}
