//! The conversation-scoped routes the web client calls beyond events (OpenHands §9.7): the
//! runtime's config and hosts, the workspace's files and git changes, microagents, the
//! trajectory, feedback. A conversation whose manager runs tools has a workspace (the manager
//! says where: its `workspace` method); its files and git changes are read from there.
//! Without one, these answers say so in OpenHands' shapes: empty lists, nulls, or 404 with its
//! error body.

use super::conversation;
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
use sandbox::{
    fs::{Confined, FsError},
    git::GitError,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::{path::Path, sync::Arc};

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

/// The conversation's workspace, when its manager gives it one: held open, every path
/// resolved beneath it (`sandbox::fs`: the workspace is the agent's, links in it lead
/// anywhere).
async fn workspace(state: &AppState, caller: &Caller, id: &str) -> ApiResult<Option<Arc<Confined>>> {
    exists(state, caller, id).await?;
    let Some(path) = state.app.workspace_of(&caller.ctx, id).await else { return Ok(None) };
    Ok(blocking(move || Confined::open(&path)).await.ok().map(Arc::new))
}

/// Filesystem work off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.expect("workspace file work panicked")
}

/// The most of one file the workspace routes read: a larger one is a 413, not a response
/// (nor a buffer in the host) of its size.
const MAX_FILE_BYTES: u64 = 8 << 20;

/// The most `git status` may print for the Changes tab.
const MAX_GIT_OUTPUT: usize = 4 << 20;

/// A workspace path error as an answer: 400 for a path that leads out, 404 for a missing
/// one, 413 past the bound, 415 for what is not a regular file.
fn fs_error(e: FsError, missing: impl FnOnce() -> ApiError) -> ApiError {
    match e {
        FsError::Outside(p) => ApiError::bad_request(format!("{p} is outside the workspace")),
        FsError::NotFound(_) => missing(),
        FsError::TooLarge { path, size, max } => ApiError::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{path} is {size} bytes; files over {max} bytes are not shown here"),
        ),
        FsError::NotAFile(p) => {
            ApiError::error(StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("Unable to open {p}: not a regular file"))
        }
        FsError::Io(p, e) => {
            tracing::warn!(path = %p, error = %e, "workspace file");
            missing()
        }
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
    let Some(ws) = workspace(&state, &caller, &id).await? else { return Ok(Json(Vec::new())) };
    let dir = ws.relative(q.path.as_deref().unwrap_or("")).map_err(|e| fs_error(e, || ApiError::not_found("")))?;
    let listed = blocking(move || {
        let entries = ws.list(&dir).unwrap_or_default();
        entries
            .into_iter()
            .filter(|e| e.name != ".git")
            .map(|e| {
                let rel = dir.join(&e.name).display().to_string();
                if e.dir {
                    format!("{rel}/")
                } else {
                    rel
                }
            })
            .collect::<Vec<String>>()
    })
    .await;
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
    let missing = || ApiError::not_found(format!("File not found: {}", q.file));
    let Some(ws) = workspace(&state, &caller, &id).await? else { return Err(missing()) };
    let rel = ws.relative(&q.file).map_err(|e| fs_error(e, missing))?;
    let bytes = blocking(move || ws.read(&rel, MAX_FILE_BYTES)).await.map_err(|e| fs_error(e, missing))?;
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

/// git on a workspace, run so that nothing the workspace configures runs (`sandbox::git`).
async fn git(root: &Path, args: &[&str], max_output: usize) -> ApiResult<Vec<u8>> {
    match sandbox::git::run(root, args, max_output).await {
        Ok(out) => Ok(out),
        Err(GitError::TooLarge(max)) => Err(ApiError::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("git's answer is over {max} bytes; too many changes to show here"),
        )),
        Err(GitError::NotARepository) => Err(not_a_repository()),
        Err(GitError::Failed(why)) => {
            tracing::warn!(workspace = %root.display(), error = %why, "git on a workspace failed");
            Err(not_a_repository())
        }
    }
}

/// `[{"status": "A"|"M"|"D"|"R"|"U", "path"}]` from `git status` (new files count as added).
async fn git_changes(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
) -> ApiResult<Json<Value>> {
    let Some(ws) = workspace(&state, &caller, &id).await? else { return Err(not_a_repository()) };
    let out = git(ws.root(), &["status", "--porcelain=v1", "-uall"], MAX_GIT_OUTPUT).await?;
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

/// `{"modified": <now>, "original": <at the last commit>}` of one file (each bounded).
async fn git_diff(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
    QueryParams(q): QueryParams<PathQuery>,
) -> ApiResult<Json<Value>> {
    let Some(ws) = workspace(&state, &caller, &id).await? else { return Err(not_a_repository()) };
    let path = q.path.unwrap_or_default();
    let rel = ws.relative(&path).map_err(|e| fs_error(e, not_a_repository))?;
    let (reader, file) = (ws.clone(), rel.clone());
    let modified = match blocking(move || reader.read(&file, MAX_FILE_BYTES)).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(FsError::NotFound(_) | FsError::NotAFile(_)) => String::new(),
        Err(e) => return Err(fs_error(e, not_a_repository)),
    };
    let original = match git(
        ws.root(),
        &["cat-file", "blob", &format!("HEAD:{}", rel.display())],
        MAX_FILE_BYTES as usize,
    )
    .await
    {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.status == StatusCode::PAYLOAD_TOO_LARGE => return Err(e),
        Err(_) => String::new(),
    };
    Ok(Json(json!({ "modified": modified, "original": original })))
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
    let Some(ws) = workspace(&state, &caller, &id).await? else {
        return Err(ApiError::not_found("Runtime not yet initialized"));
    };
    let content_type = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let boundary = content_type
        .strip_prefix("multipart/form-data")
        .and_then(|rest| rest.split(';').find_map(|p| p.trim().strip_prefix("boundary=")))
        .map(|b| b.trim_matches('"').to_owned())
        .ok_or_else(|| ApiError::bad_request("expected multipart/form-data with a boundary (field `files`)"))?;
    let (uploaded, skipped) = blocking(move || {
        let mut uploaded = Vec::new();
        let mut skipped = Vec::new();
        for (name, file, content) in multipart_files(&body, &boundary) {
            if name != "files" {
                continue;
            }
            // A name, not a path: nothing lands outside the workspace's root.
            let Some(file) = Path::new(&file)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .filter(|f| f != "." && f != "..")
            else {
                skipped.push(json!({ "name": file, "reason": "not a file name" }));
                continue;
            };
            match ws.write(Path::new(&file), content) {
                Ok(()) => uploaded.push(json!(file)),
                Err(e) => skipped.push(json!({ "name": file, "reason": e.to_string() })),
            }
        }
        (uploaded, skipped)
    })
    .await;
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
