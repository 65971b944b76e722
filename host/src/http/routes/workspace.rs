//! The conversation-scoped routes the web client calls beyond events (OpenHands §9.7): the
//! runtime's config and hosts, the workspace's files and git changes, microagents, the
//! trajectory, feedback. A conversation whose manager runs tools has a workspace (the manager
//! says where: its `workspace` admin command); its files and git changes are read from there.
//! Without one, these answers say so in OpenHands' shapes: empty lists, nulls, or 404 with its
//! error body.

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
use std::path::{Component, Path, PathBuf};

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

/// The conversation's workspace directory, when its manager gives it one.
async fn workspace(state: &AppState, caller: &Caller, id: &str) -> ApiResult<Option<PathBuf>> {
    exists(state, caller, id).await?;
    let answer = state.registry.manager_admin(caller.ctx.clone(), "workspace", &json!({ "conversation_id": id })).await;
    Ok(match answer {
        Some(Ok(v)) => v["path"].as_str().map(PathBuf::from),
        _ => None,
    })
}

/// `relative` inside `root`: no `..`, no absolute path, no symlink leading out.
fn inside(root: &Path, relative: &str) -> ApiResult<PathBuf> {
    let mut out = root.to_path_buf();
    for c in Path::new(relative.trim_start_matches("/workspace/").trim_start_matches('/')).components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return Err(ApiError::bad_request(format!("{relative} is outside the workspace"))),
        }
    }
    if let (Ok(real), Ok(base)) = (out.canonicalize(), root.canonicalize()) {
        if !real.starts_with(base) {
            return Err(ApiError::bad_request(format!("{relative} is outside the workspace")));
        }
    }
    Ok(out)
}

/// The entries of a workspace directory (`path`, default its root), relative to the
/// workspace, directories with a trailing `/`; git's own files left out.
async fn list_files(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
    QueryParams(q): QueryParams<PathQuery>,
) -> ApiResult<Json<Vec<String>>> {
    let Some(root) = workspace(&state, &caller, &id).await? else { return Ok(Json(Vec::new())) };
    let dir = inside(&root, q.path.as_deref().unwrap_or(""))?;
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(Json(Vec::new())) };
    let mut listed: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != ".git")
        .filter_map(|e| {
            let rel = e.path().strip_prefix(&root).ok()?.display().to_string();
            Some(if e.path().is_dir() { format!("{rel}/") } else { rel })
        })
        .collect();
    listed.sort();
    Ok(Json(listed))
}

#[derive(Deserialize)]
struct FileQuery {
    #[serde(default)]
    file: String,
}

/// `{"code": <the file's text>}`; 415 for a binary file.
async fn select_file(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
    QueryParams(q): QueryParams<FileQuery>,
) -> ApiResult<Json<Value>> {
    let missing = || ApiError::not_found(format!("File not found: {}", q.file));
    let Some(root) = workspace(&state, &caller, &id).await? else { return Err(missing()) };
    let bytes = std::fs::read(inside(&root, &q.file)?).map_err(|_| missing())?;
    match String::from_utf8(bytes) {
        Ok(code) => Ok(Json(json!({ "code": code }))),
        Err(_) => Err(ApiError::new(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            json!({ "error": format!("Unable to open binary file: {}", q.file) }),
        )),
    }
}

/// OpenHands' answer for a workspace that is not a git repository (the web client's Changes
/// tab shows its friendly text for it).
fn not_a_repository() -> ApiError {
    ApiError::not_found("Not a git repository")
}

/// git, in a workspace; `None` when it is not a repository (or git is missing).
async fn git(root: &Path, args: &[&str]) -> Option<Vec<u8>> {
    let out = tokio::process::Command::new("git").arg("-C").arg(root).args(args).output().await.ok()?;
    out.status.success().then_some(out.stdout)
}

/// `[{"status": "A"|"M"|"D"|"R"|"U", "path"}]` from `git status` (new files count as added).
async fn git_changes(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
) -> ApiResult<Json<Value>> {
    let Some(root) = workspace(&state, &caller, &id).await? else { return Err(not_a_repository()) };
    let Some(out) = git(&root, &["status", "--porcelain=v1", "-uall"]).await else { return Err(not_a_repository()) };
    let changes: Vec<Value> = String::from_utf8_lossy(&out)
        .lines()
        .filter(|l| l.len() > 3)
        .map(|line| {
            let (code, path) = line.split_at(2);
            let path = path.trim().rsplit(" -> ").next().unwrap_or("").trim_matches('"');
            let status = match code.trim() {
                "??" | "A" | "AM" => "A",
                c if c.contains('D') => "D",
                c if c.contains('R') => "R",
                c if c.contains('M') => "M",
                _ => "U",
            };
            json!({ "status": status, "path": path })
        })
        .collect();
    Ok(Json(Value::Array(changes)))
}

/// `{"modified": <now>, "original": <at the last commit>}` of one file.
async fn git_diff(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
    QueryParams(q): QueryParams<PathQuery>,
) -> ApiResult<Json<Value>> {
    let Some(root) = workspace(&state, &caller, &id).await? else { return Err(not_a_repository()) };
    let path = q.path.unwrap_or_default();
    let file = inside(&root, &path)?;
    let modified = std::fs::read_to_string(&file).unwrap_or_default();
    let relative = file.strip_prefix(&root).map(|p| p.display().to_string()).unwrap_or_default();
    let original = git(&root, &["show", &format!("HEAD:{relative}")])
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    Ok(Json(json!({ "modified": modified, "original": original })))
}

/// `multipart/form-data` files (field `files`) into the workspace's root:
/// `{"uploaded_files": [names], "skipped_files": [{"name", "reason"}]}` as OpenHands answers.
/// Without a workspace, OpenHands' 404.
async fn upload_files(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let Some(root) = workspace(&state, &caller, &id).await? else {
        return Err(ApiError::not_found("Runtime not yet initialized"));
    };
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
        match std::fs::write(root.join(&file), content) {
            Ok(()) => uploaded.push(json!(file)),
            Err(e) => skipped.push(json!({ "name": file, "reason": e.to_string() })),
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
