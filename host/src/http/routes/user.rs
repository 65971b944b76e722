//! `/api/user/*`: the signed-in user's git providers, called with their provider tokens (the
//! ones the auth system brokers, else the stored ones). Answers and statuses as OpenHands
//! 0.62's `routes/git.py`: 401 with a JSON string when there is no token or the provider
//! refuses it, 500 with the provider's error otherwise; lists that span providers skip a
//! failing one.

use crate::{
    config::AppMode,
    git::{self, Api, BranchPage, GitError, Provider},
    http::{
        error::{ApiError, ApiResult},
        extract::{Caller, QueryParams},
        AppState,
    },
};
use axum::{
    extract::{Path, State},
    http::StatusCode,
    routing::get,
    Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/user/info", get(info))
        .route("/api/user/installations", get(installations))
        .route("/api/user/repositories", get(repositories))
        .route("/api/user/search/repositories", get(search_repositories))
        .route("/api/user/search/branches", get(search_branches))
        .route("/api/user/suggested-tasks", get(suggested_tasks))
        .route("/api/user/repository/branches", get(branches))
        .route("/api/user/repository/{*rest}", get(repository_microagents))
}

const TOKEN_REQUIRED: &str = "Git provider token required. (such as GitHub).";

/// OpenHands' `AuthenticationError` answer: 401 and the message as a JSON string.
fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, json!(message.into()))
}

/// A provider's failure as OpenHands answers it.
fn provider_error(e: GitError) -> ApiError {
    match e {
        GitError::Unauthorized(m) => unauthorized(m),
        GitError::RateLimited(m) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, json!(m)),
        GitError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, json!(m)),
        GitError::Failed(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, json!(m)),
    }
}

/// The caller's provider APIs, one per provider with a token, in OpenHands' order.
async fn apis(state: &AppState, caller: &Caller) -> ApiResult<Vec<Api>> {
    let tokens = state.app.effective_tokens(&caller.ctx).await?;
    let saas = state.app.app_mode() == AppMode::Saas;
    let mut apis = Vec::new();
    for provider in Provider::ALL {
        let Some(token) = tokens.get(provider.name()) else { continue };
        let Some(secret) = token.token.as_deref().filter(|t| !t.trim().is_empty()) else { continue };
        match Api::new(provider, secret, token.host.as_deref(), &state.server.git, saas) {
            Ok(api) => apis.push(api),
            Err(e) => return Err(ApiError::bad_request(format!("{} token: {e}", provider.name()))),
        }
    }
    Ok(apis)
}

/// The caller's API of one provider (by OpenHands' name), when they have a token for it.
pub(super) async fn api_for(state: &AppState, caller: &Caller, provider: &str) -> Option<Api> {
    let wanted = Provider::parse(provider)?;
    apis(state, caller).await.ok()?.into_iter().find(|a| a.provider == wanted)
}

fn selected(apis: Vec<Api>, provider: &str) -> ApiResult<Api> {
    let wanted = Provider::parse(provider).ok_or_else(|| {
        ApiError::unprocessable(format!("selected_provider `{provider}` is not one of github, gitlab, bitbucket"))
    })?;
    apis.into_iter()
        .find(|a| a.provider == wanted)
        .ok_or_else(|| unauthorized(format!("No {} token is set. Add one in the Git settings.", wanted.name())))
}

fn check_repository(name: &str) -> ApiResult<()> {
    if git::valid_repository(name) {
        Ok(())
    } else {
        Err(ApiError::unprocessable(format!("repository `{name}` is not an owner/name path")))
    }
}

/// `GET /api/user/info`: the user as the first provider that answers sees them.
async fn info(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<git::User>> {
    let apis = apis(&state, &caller).await?;
    if apis.is_empty() {
        return Err(unauthorized(TOKEN_REQUIRED));
    }
    for api in &apis {
        match git::user(api).await {
            Ok(user) => return Ok(Json(user)),
            Err(e) => tracing::info!(provider = api.provider.name(), error = %e, "the provider did not give the user"),
        }
    }
    Err(unauthorized("Need valid provider token"))
}

#[derive(Deserialize)]
struct InstallationsQuery {
    provider: String,
}

/// `GET /api/user/installations?provider=`: GitHub App installations or Bitbucket workspaces
/// (none when the provider cannot list them).
async fn installations(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<InstallationsQuery>,
) -> ApiResult<Json<Value>> {
    let apis = apis(&state, &caller).await?;
    if apis.is_empty() {
        return Err(unauthorized(TOKEN_REQUIRED));
    }
    let provider = Provider::parse(&q.provider)
        .ok_or_else(|| ApiError::unprocessable(format!("provider `{}` is not a git provider", q.provider)))?;
    if provider == Provider::GitLab {
        let message = "Provider ProviderType.GITLAB doesn't support installations";
        return Err(ApiError::new(StatusCode::BAD_REQUEST, json!(message)));
    }
    let Some(api) = apis.iter().find(|a| a.provider == provider) else { return Ok(Json(json!([]))) };
    match git::installations(api).await {
        Ok(ids) => Ok(Json(json!(ids))),
        Err(e) => {
            tracing::warn!(provider = provider.name(), error = %e, "cannot list installations");
            Ok(Json(json!([])))
        }
    }
}

#[derive(Deserialize)]
struct RepositoriesQuery {
    #[serde(default = "pushed")]
    sort: String,
    selected_provider: Option<String>,
    page: Option<u32>,
    per_page: Option<u32>,
    installation_id: Option<String>,
}

fn pushed() -> String {
    "pushed".to_owned()
}

/// `GET /api/user/repositories`: one page of one provider's repositories (the web client's
/// picker, which follows `link_header`), or every provider's, up to 1000 each.
async fn repositories(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<RepositoriesQuery>,
) -> ApiResult<Json<Value>> {
    let apis = apis(&state, &caller).await?;
    if apis.is_empty() {
        return Err(unauthorized(TOKEN_REQUIRED));
    }
    if let Some(provider) = &q.selected_provider {
        let (Some(page), Some(per_page)) = (q.page.filter(|p| *p >= 1), q.per_page.filter(|p| (1..=100).contains(p)))
        else {
            return Err(ApiError::bad_request(
                "page (1 or more) and per_page (1 to 100) are required with selected_provider",
            ));
        };
        if q.installation_id.is_none() {
            let (page, per_page) = (page.to_string(), per_page.to_string());
            let query = query_of(&[("page", &page), ("per_page", &per_page), ("sort", &q.sort)]);
            if let Some(answer) = from_plugin(&state, &caller, provider, &query).await {
                return answer;
            }
        }
        let api = selected(apis, provider)?;
        let installation = q.installation_id.as_deref().filter(|i| !i.is_empty());
        if installation.is_some_and(|i| !i.chars().all(|c| c.is_ascii_alphanumeric() || "-_.{}".contains(c))) {
            return Err(ApiError::unprocessable("installation_id is not an installation or workspace id"));
        }
        let repos = git::repositories_page(&api, page, per_page, &q.sort, installation).await;
        return repos.map(|r| Json(json!(r))).map_err(provider_error);
    }
    let mut all = Vec::new();
    for api in &apis {
        let query = query_of(&[("page", "1"), ("per_page", &git::MAX_ITEMS.to_string()), ("sort", &q.sort)]);
        if let Some(answer) = from_plugin(&state, &caller, api.provider.name(), &query).await {
            match answer {
                Ok(Json(Value::Array(repos))) => all.extend(repos),
                Ok(_) => {}
                Err(e) => tracing::warn!(provider = api.provider.name(), error = ?e, "cannot list repositories"),
            }
            continue;
        }
        match git::all_repositories(api, &q.sort).await {
            Ok(repos) => all.extend(repos.iter().map(|r| json!(r))),
            Err(e) => tracing::warn!(provider = api.provider.name(), error = %e, "cannot list repositories"),
        }
    }
    Ok(Json(Value::Array(all)))
}

/// `name=value&...`, each part encoded.
fn query_of(params: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse("http://query.invalid/").expect("a valid URL");
    url.query_pairs_mut().extend_pairs(params);
    url.query().unwrap_or_default().to_owned()
}

/// The provider's repositories from the plugin that keeps them (`App::plugin_repositories`),
/// its answer passed on as it is; `None` when no plugin keeps them.
async fn from_plugin(state: &AppState, caller: &Caller, provider: &str, query: &str) -> Option<ApiResult<Json<Value>>> {
    let answer = state.app.plugin_repositories(&caller.ctx, provider, query).await?;
    Some(match answer {
        Ok((200, body)) => Ok(Json(body)),
        Ok((status, body)) => Err(ApiError::new(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY), body)),
        Err(e) => Err(e.into()),
    })
}

#[derive(Deserialize)]
struct SearchRepositoriesQuery {
    query: String,
    #[serde(default = "five")]
    per_page: u32,
    #[serde(default = "stars")]
    sort: String,
    #[serde(default = "desc")]
    order: String,
    selected_provider: Option<String>,
}

fn five() -> u32 {
    5
}
fn stars() -> String {
    "stars".to_owned()
}
fn desc() -> String {
    "desc".to_owned()
}

/// Whether a search query is a repository's URL on this provider (its own host or the
/// public one).
fn is_repository_url(query: &str, api: &Api) -> bool {
    (query.starts_with("http://") || query.starts_with("https://"))
        && (query.contains(api.provider.domain()) || api.host.as_deref().is_some_and(|h| query.contains(h)))
}

/// `GET /api/user/search/repositories`.
async fn search_repositories(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<SearchRepositoriesQuery>,
) -> ApiResult<Json<Value>> {
    let per_page = q.per_page.clamp(1, 100);
    let apis = apis(&state, &caller).await?;
    if apis.is_empty() {
        return Err(unauthorized("Git provider token required."));
    }
    if let Some(provider) = &q.selected_provider {
        let api = selected(apis, provider)?;
        if let Some(answer) = stored(&state, &caller, &api, &q, per_page).await {
            return answer;
        }
        let public = is_repository_url(&q.query, &api);
        let found = git::search_repositories(&api, &q.query, per_page, &q.sort, &q.order, public).await;
        let mut repos = found.map_err(provider_error)?;
        let mut seen = std::collections::HashSet::new();
        repos.retain(|r| seen.insert(r.full_name.clone()));
        return Ok(Json(json!(repos)));
    }
    let mut all = Vec::new();
    for api in &apis {
        if let Some(answer) = stored(&state, &caller, api, &q, per_page).await {
            match answer {
                Ok(Json(Value::Array(repos))) => all.extend(repos),
                Ok(_) => {}
                Err(e) => tracing::warn!(provider = api.provider.name(), error = ?e, "repository search failed"),
            }
            continue;
        }
        let public = is_repository_url(&q.query, api);
        match git::search_repositories(api, &q.query, per_page, &q.sort, &q.order, public).await {
            Ok(repos) => all.extend(repos.iter().map(|r| json!(r))),
            Err(e) => tracing::warn!(provider = api.provider.name(), error = %e, "repository search failed"),
        }
    }
    Ok(Json(Value::Array(all)))
}

/// A search among the user's own repositories in the plugin that keeps them, when one does; a
/// repository's URL is looked up at the provider (it may be public, not the user's).
async fn stored(
    state: &AppState,
    caller: &Caller,
    api: &Api,
    q: &SearchRepositoriesQuery,
    per_page: u32,
) -> Option<ApiResult<Json<Value>>> {
    if is_repository_url(&q.query, api) {
        return None;
    }
    let query = query_of(&[("query", &q.query), ("per_page", &per_page.to_string()), ("sort", &q.sort)]);
    from_plugin(state, caller, api.provider.name(), &query).await
}

#[derive(Deserialize)]
struct SearchBranchesQuery {
    repository: String,
    query: String,
    #[serde(default = "thirty")]
    per_page: u32,
    selected_provider: Option<String>,
}

fn thirty() -> u32 {
    30
}

/// `GET /api/user/search/branches`: a failed search is an empty list, as in OpenHands.
async fn search_branches(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<SearchBranchesQuery>,
) -> ApiResult<Json<Vec<git::Branch>>> {
    check_repository(&q.repository)?;
    let per_page = q.per_page.clamp(1, 100);
    let apis = apis(&state, &caller).await?;
    if apis.is_empty() {
        return Err(unauthorized("Git provider token required."));
    }
    let api = match &q.selected_provider {
        Some(provider) => Some(selected(apis, provider)?),
        None => owner_of(apis, &q.repository).await,
    };
    let Some(api) = api else { return Ok(Json(Vec::new())) };
    match git::search_branches(&api, &q.repository, &q.query, per_page).await {
        Ok(branches) => Ok(Json(branches)),
        Err(GitError::Unauthorized(m)) => Err(unauthorized(m)),
        Err(e) => {
            tracing::warn!(provider = api.provider.name(), error = %e, "branch search failed");
            Ok(Json(Vec::new()))
        }
    }
}

/// The first provider that can see `repository`.
async fn owner_of(apis: Vec<Api>, repository: &str) -> Option<Api> {
    for api in apis {
        if git::repository(&api, repository).await.is_ok() {
            return Some(api);
        }
    }
    None
}

/// `GET /api/user/suggested-tasks`.
async fn suggested_tasks(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<git::SuggestedTask>>> {
    let apis = apis(&state, &caller).await?;
    if apis.is_empty() {
        return Err(unauthorized("No providers set."));
    }
    let mut tasks = Vec::new();
    for api in &apis {
        match git::suggested_tasks(api).await {
            Ok(found) => tasks.extend(found),
            Err(e) => tracing::warn!(provider = api.provider.name(), error = %e, "cannot read suggested tasks"),
        }
    }
    Ok(Json(tasks))
}

#[derive(Deserialize)]
struct BranchesQuery {
    repository: String,
    #[serde(default = "one")]
    page: u32,
    #[serde(default = "thirty")]
    per_page: u32,
}

fn one() -> u32 {
    1
}

/// `GET /api/user/repository/branches`: the first provider that answers; an empty page when
/// none does.
async fn branches(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<BranchesQuery>,
) -> ApiResult<Json<BranchPage>> {
    check_repository(&q.repository)?;
    let (page, per_page) = (q.page.max(1), q.per_page.clamp(1, 100));
    let apis = apis(&state, &caller).await?;
    if apis.is_empty() {
        return Err(unauthorized(TOKEN_REQUIRED));
    }
    for api in &apis {
        match git::branches_page(api, &q.repository, page, per_page).await {
            Ok(found) => return Ok(Json(found)),
            Err(e) => tracing::info!(provider = api.provider.name(), error = %e, "cannot list branches"),
        }
    }
    Ok(Json(BranchPage::empty(page, per_page)))
}

#[derive(Deserialize)]
struct ContentQuery {
    file_path: Option<String>,
}

/// `GET /api/user/repository/{owner/name}/microagents[/content?file_path=]`.
async fn repository_microagents(
    State(state): State<AppState>,
    caller: Caller,
    Path(rest): Path<String>,
    QueryParams(q): QueryParams<ContentQuery>,
) -> ApiResult<Json<Value>> {
    let (repository, content) = if let Some(repo) = rest.strip_suffix("/microagents/content") {
        (repo, true)
    } else if let Some(repo) = rest.strip_suffix("/microagents") {
        (repo, false)
    } else {
        return Err(ApiError::not_found(format!("no such route: /api/user/repository/{rest}")));
    };
    check_repository(repository)?;
    let apis = apis(&state, &caller).await?;
    if !content {
        let mut errors = Vec::new();
        for api in &apis {
            match git::microagents(api, repository).await {
                Ok(found) if !found.is_empty() => return Ok(Json(json!(found))),
                Ok(_) => {}
                Err(e) => errors.push(format!("{}: {e}", api.provider.name())),
            }
        }
        if !errors.is_empty() {
            tracing::warn!(repository, errors = %errors.join("; "), "cannot list microagents");
            return Err(unauthorized(format!("Unable to fetch microagents for {repository}")));
        }
        return Ok(Json(json!([])));
    }
    let Some(path) = q.file_path.filter(|p| git::valid_file_path(p)) else {
        return Err(ApiError::unprocessable("file_path must name a file in the repository"));
    };
    for api in &apis {
        match git::microagent_content(api, repository, &path).await {
            Ok(found) => return Ok(Json(json!(found))),
            Err(GitError::NotFound(_)) => {}
            Err(e) => {
                tracing::warn!(provider = api.provider.name(), repository, error = %e, "cannot read a microagent")
            }
        }
    }
    Err(unauthorized(format!("Microagent file {path} not found in {repository}")))
}
