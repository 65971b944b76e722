//! Stored conversations (OpenHands §9.6, §9.7): search, get, rename, delete, stored events.
//! What runs (create, start, stop, messages) is in `agents.rs`.

use super::conversation;
use crate::http::{
    error::{ApiError, ApiResult},
    extract::{Caller, ConversationId, JsonBody, QueryParams},
    AppState,
};
use axum::{extract::State, http::StatusCode, response::IntoResponse as _, routing::get, Json, Router};
use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use plugin_api::{models::ConversationMetadata, EventQuery};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/conversations", get(search))
        .route("/api/microagent-management/conversations", get(microagent_management))
        .route("/api/conversations/{id}", get(get_one).patch(rename).delete(delete))
        .route("/api/conversations/{id}/events", get(events))
}

/// OpenHands' `get_default_conversation_title`.
fn default_title(id: &str) -> String {
    format!("Conversation {}", id.chars().take(5).collect::<String>())
}

/// `ConversationInfo` of a stored conversation, serialized straight from the metadata (no
/// JSON tree per conversation: a list page has 20). Fields in the order OpenHands' keys sort.
#[derive(serde::Serialize)]
struct ConversationInfo<'a> {
    conversation_id: &'a str,
    conversation_version: &'static str,
    created_at: &'a str,
    git_provider: &'a Option<String>,
    last_updated_at: &'a Option<String>,
    num_connections: u32,
    pr_number: &'a [i64],
    runtime_status: Option<&'a str>,
    selected_branch: &'a Option<String>,
    selected_repository: &'a Option<String>,
    session_api_key: Option<()>,
    status: &'a str,
    sub_conversation_ids: [(); 0],
    title: std::borrow::Cow<'a, str>,
    trigger: &'a Option<String>,
    url: Option<()>,
}

fn info<'a>(
    m: &'a ConversationMetadata,
    status: Option<&'a str>,
    runtime_status: Option<&'a str>,
) -> ConversationInfo<'a> {
    ConversationInfo {
        conversation_id: &m.conversation_id,
        conversation_version: "V0",
        created_at: &m.created_at,
        git_provider: &m.git_provider,
        last_updated_at: &m.last_updated_at,
        num_connections: 0,
        pr_number: &m.pr_number,
        runtime_status,
        selected_branch: &m.selected_branch,
        selected_repository: &m.selected_repository,
        session_api_key: None,
        status: status.unwrap_or("STOPPED"),
        sub_conversation_ids: [],
        title: match &m.title {
            Some(t) => std::borrow::Cow::Borrowed(t),
            None => std::borrow::Cow::Owned(default_title(&m.conversation_id)),
        },
        trigger: &m.trigger,
        url: None,
    }
}

/// A page of `ConversationInfo`s and the next page's id.
#[derive(serde::Serialize)]
struct InfoPage<'a> {
    next_page_id: Option<String>,
    results: Vec<ConversationInfo<'a>>,
}

fn default_limit() -> i64 {
    20
}

#[derive(Deserialize)]
struct SearchQuery {
    page_id: Option<String>,
    #[serde(default = "default_limit")]
    limit: i64,
    selected_repository: Option<String>,
    conversation_trigger: Option<String>,
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
) -> ApiResult<axum::response::Response> {
    let (kept, next) = search_stored(&state, &caller, &q).await?;
    let running = running(&state, caller, &kept).await?;
    Ok(Json(InfoPage { next_page_id: next, results: infos(&kept, &running) }).into_response())
}

#[derive(Deserialize)]
struct MicroagentQuery {
    selected_repository: String,
    page_id: Option<String>,
    #[serde(default = "default_limit")]
    limit: i64,
}

/// `GET /api/microagent-management/conversations`: the repository's conversations started
/// from the microagent management page, without those whose pull request was closed.
async fn microagent_management(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<MicroagentQuery>,
) -> ApiResult<axum::response::Response> {
    let query = SearchQuery {
        page_id: q.page_id,
        limit: q.limit,
        selected_repository: Some(q.selected_repository),
        conversation_trigger: Some("microagent_management".to_owned()),
    };
    let (kept, next) = search_stored(&state, &caller, &query).await?;
    let mut open = Vec::new();
    for m in kept {
        if pr_may_be_open(&state, &caller, &m).await {
            open.push(m);
        }
    }
    let running = running(&state, caller, &open).await?;
    Ok(Json(InfoPage { next_page_id: next, results: infos(&open, &running) }).into_response())
}

/// Whether the conversation's last pull request is open; yes when it cannot be told (as
/// OpenHands: a conversation is kept rather than lost).
async fn pr_may_be_open(state: &AppState, caller: &Caller, m: &ConversationMetadata) -> bool {
    let (Some(number), Some(repo), Some(provider)) =
        (m.pr_number.last(), m.selected_repository.as_deref(), m.git_provider.as_deref())
    else {
        return true;
    };
    let Some(api) = super::user::api_for(state, caller, provider).await else { return true };
    crate::git::pr_is_open(&api, repo, *number).await.unwrap_or(true)
}

/// A page of the caller's stored conversations, filtered as the query asks; and the next
/// page's id.
async fn search_stored(
    state: &AppState,
    caller: &Caller,
    q: &SearchQuery,
) -> ApiResult<(Vec<ConversationMetadata>, Option<String>)> {
    if !(1..=100).contains(&q.limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 100"));
    }
    let page = state
        .app
        .search_conversations(&caller.ctx, store_page_id(q.page_id.as_deref()).as_deref(), q.limit as u32)
        .await?;
    let oldest = chrono::Utc::now() - chrono::Duration::from_std(state.server.conversation_max_age).unwrap_or_default();
    let kept: Vec<ConversationMetadata> = page
        .results
        .into_iter()
        .filter(|m| chrono::DateTime::parse_from_rfc3339(&m.created_at).map_or(true, |t| t >= oldest))
        .filter(|m| q.selected_repository.as_ref().is_none_or(|r| m.selected_repository.as_ref() == Some(r)))
        .filter(|m| q.conversation_trigger.as_ref().is_none_or(|t| m.trigger.as_ref() == Some(t)))
        .collect();
    Ok((kept, wrap_page_id(page.next_page_id)))
}

/// The status and runtime status of those of `kept` that run.
type Running = HashMap<String, (String, Option<String>)>;

async fn running(state: &AppState, caller: Caller, kept: &[ConversationMetadata]) -> ApiResult<Running> {
    let ids: Vec<String> = kept.iter().map(|m| m.conversation_id.clone()).collect();
    Ok(state
        .app
        .running(&caller.ctx, &ids)
        .await?
        .into_iter()
        .map(|l| (l.conversation_id, (l.status, l.runtime_status)))
        .collect())
}

/// `ConversationInfo`s, with the status of those running.
fn infos<'a>(kept: &'a [ConversationMetadata], running: &'a Running) -> Vec<ConversationInfo<'a>> {
    kept.iter()
        .map(|m| {
            let live = running.get(&m.conversation_id);
            info(m, live.map(|l| l.0.as_str()), live.and_then(|l| l.1.as_deref()))
        })
        .collect()
}

/// 200 with the `ConversationInfo`, or 200 `null` when there is none (as OpenHands).
async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
) -> ApiResult<Json<Value>> {
    let Some(m) = state.app.conversation(&caller.ctx, &id).await? else {
        return Ok(Json(Value::Null));
    };
    let live = state.app.running(&caller.ctx, std::slice::from_ref(&id)).await?;
    let live = live.iter().find(|l| l.conversation_id == id);
    let info = info(&m, live.map(|l| l.status.as_str()), live.and_then(|l| l.runtime_status.as_deref()));
    Ok(Json(serde_json::to_value(info).unwrap_or(Value::Null)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TitleUpdate {
    title: String,
}

async fn rename(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
    JsonBody(body): JsonBody<TitleUpdate>,
) -> ApiResult<Json<bool>> {
    let title = body.title.trim().to_owned();
    if title.is_empty() || title.chars().count() > 200 {
        return Err(ApiError::unprocessable("title must be 1 to 200 characters"));
    }
    let mut m = conversation(&state, &caller, &id, ApiError::conversation_not_found).await?;
    if let (Some(user), Some(owner)) = (&caller.principal.user_id, &m.user_id) {
        if user != owner {
            return Err(ApiError::with_msg_id(
                StatusCode::FORBIDDEN,
                "Permission denied: You can only update your own conversations",
                "AUTHORIZATION$PERMISSION_DENIED",
            ));
        }
    }
    m.title = Some(title);
    m.last_updated_at = Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    state.app.save_conversation(&caller.ctx, &m).await?;
    Ok(Json(true))
}

/// `true` when deleted, `false` when there was nothing to delete. A running loop is closed
/// first, so it stores nothing into a deleted conversation.
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
) -> ApiResult<Json<bool>> {
    if state.app.conversation(&caller.ctx, &id).await?.is_none() {
        return Ok(Json(false));
    }
    Ok(Json(state.app.delete_conversation(&caller.ctx, &id).await?))
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

/// The store query of `GET …/events`: 400 for a limit outside 1..=100 or a negative id.
fn event_query(q: &EventsQuery) -> ApiResult<EventQuery> {
    if !(1..=100).contains(&q.limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 100"));
    }
    if q.start_id < 0 || q.end_id.is_some_and(|e| e < 0) {
        return Err(ApiError::bad_request("start_id and end_id must not be negative"));
    }
    Ok(EventQuery::new(q.start_id as u64, q.end_id.map(|e| e as u64), q.reverse, q.limit as u32))
}

async fn events(
    State(state): State<AppState>,
    caller: Caller,
    ConversationId(id): ConversationId,
    QueryParams(q): QueryParams<EventsQuery>,
) -> ApiResult<Json<Value>> {
    let query = event_query(&q)?;
    conversation(&state, &caller, &id, ApiError::conversation_not_found).await?;
    let page = state.app.events(&caller.ctx, &id, query).await?;
    Ok(Json(json!({ "events": page.events, "has_more": page.has_more })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn event_queries_are_valid_or_a_clear_400(start in proptest::num::i64::ANY, end in proptest::option::of(proptest::num::i64::ANY), limit in proptest::num::i64::ANY, reverse in proptest::bool::ANY) {
            let q = EventsQuery { start_id: start, end_id: end, reverse, limit };
            match event_query(&q) {
                Ok(query) => {
                    prop_assert!((1..=100).contains(&limit) && start >= 0);
                    prop_assert_eq!((query.start_id, query.limit), (start as u64, limit as u32));
                }
                Err(e) => prop_assert_eq!(e.status, StatusCode::BAD_REQUEST),
            }
        }

        /// A client's page id, whatever it is, gives a store page id or none, never a panic;
        /// the ones the server hands out read back.
        #[test]
        fn page_ids_never_panic_and_wrapped_ones_read_back(text in "(?s).{0,80}", inner in "[A-Za-z0-9+/=]{1,16}") {
            let _ = store_page_id(Some(&text));
            prop_assert_eq!(store_page_id(wrap_page_id(Some(inner.clone())).as_deref()), Some(inner));
        }
    }
}
