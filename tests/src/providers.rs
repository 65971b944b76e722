//! Fake GitHub and Slack APIs on 127.0.0.1 (third parties we cannot run here), recording what
//! the integrations post. GitHub: `POST /app/installations/{id}/access_tokens` checks the App's
//! RS256 JWT against the test key `a` (`tests/fixtures/keys`) and mints installation tokens;
//! `POST /repos/{owner}/{repo}/issues/{n}/comments` takes only minted tokens and can be made to
//! fail. Slack: `POST /chat.postMessage` with the bot token, answering `{"ok": true}`. GitLab:
//! notes on issues and merge requests (`PRIVATE-TOKEN`). Jira: comments (basic auth for Cloud,
//! bearer for Data Center). Linear: the GraphQL `commentCreate` mutation (API key).
//!
//! Workspaces (Jira Cloud, Jira DC, Linear): each one's OAuth (authorize auto-approves as the
//! person signed in there, `sign_in`; codes are used once and bound to their redirect URI),
//! who signed in (Atlassian `/me` and its sites, DC `/rest/api/2/myself`, Linear's `viewer`),
//! and comments as a workspace's service account (Cloud at `/ex/jira/{cloud id}/...`).

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Json, Router,
};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

/// The GitHub App the fake knows (its private key is `tests/fixtures/keys/a.pem`).
pub const APP_ID: &str = "424242";
/// The Slack bot token the fake accepts.
pub const SLACK_BOT_TOKEN: &str = "xoxb-fake-bot-token";
/// The GitLab bot account's token.
pub const GITLAB_TOKEN: &str = "glpat-fake-bot-token";
/// Jira Cloud's service account (email, API token), and a Jira DC personal access token.
pub const JIRA_EMAIL: &str = "bot@example.test";
pub const JIRA_TOKEN: &str = "jira-api-token";
pub const JIRA_DC_TOKEN: &str = "jira-dc-pat";
/// Linear's API key.
pub const LINEAR_KEY: &str = "lin_api_fake";

/// A GitLab user's own token (installs webhooks on `grp/app`, id 5, which they maintain).
pub const GITLAB_USER_TOKEN: &str = "glpat-user-token";

/// The OAuth app every workspace provider knows.
pub const OAUTH_CLIENT_ID: &str = "oh-oauth-client";
pub const OAUTH_CLIENT_SECRET: &str = "oh-oauth-secret";
/// The Jira Cloud site the signed-in Atlassian accounts can reach, and its cloud id.
pub const JIRA_SITE: &str = "acme.atlassian.net";
pub const JIRA_CLOUD_ID: &str = "cloud-acme";
/// The Linear organization of every signed-in Linear account.
pub const LINEAR_ORG_KEY: &str = "acme";
pub const LINEAR_ORG_ID: &str = "org-acme";
/// Workspaces' service accounts: Jira Cloud (email, API token), Jira DC (a personal access
/// token), Linear (an API key).
pub const WS_JIRA_EMAIL: &str = "svc@acme.test";
pub const WS_JIRA_KEY: &str = "ws-jira-api-token";
pub const WS_JIRA_DC_KEY: &str = "ws-jira-dc-pat";
pub const WS_LINEAR_KEY: &str = "lin_api_workspace";

/// The App's private key, PEM.
pub fn app_private_key() -> String {
    std::fs::read_to_string(crate::workspace().join("tests/fixtures/keys/a.pem")).unwrap()
}

#[derive(Default)]
struct Record {
    tokens: Vec<String>,
    /// (repo, issue number, body, the token used).
    comments: Vec<(String, i64, String)>,
    /// (channel, thread_ts, text).
    messages: Vec<(String, String, String)>,
    /// Everything else posted: (provider, where, body).
    posts: Vec<(String, String, String)>,
    /// How many comment requests to fail with 500 still.
    fail_comments: usize,
    failed: usize,
    /// Who is signed in at each provider (`jira`, `jira_dc`, `linear`).
    signed_in: std::collections::HashMap<String, String>,
    /// The GitHub App's Setup URL (where GitHub sends a user after an installation).
    github_setup_url: String,
    /// Installations of the App made through its install page: id → account login.
    installations: std::collections::HashMap<i64, String>,
    /// Bot tokens of Slack teams that installed the app (`oauth.v2.access`).
    team_tokens: Vec<String>,
    /// The token each Slack message was posted with.
    message_tokens: Vec<String>,
    /// Who installed the App where: (GitHub user, installation id).
    installed_by: Vec<(String, i64)>,
    /// Authorization codes: code → (provider, user, redirect URI).
    codes: std::collections::HashMap<String, (String, String, String)>,
    /// Access tokens: token → (provider, user).
    access: std::collections::HashMap<String, (String, String)>,
    /// GitLab webhooks installed: (project id, hook id, what was sent).
    hooks: Vec<(i64, i64, Value)>,
    next_hook: i64,
}

#[derive(Clone)]
pub struct FakeProviders {
    pub base_url: String,
    record: Arc<Mutex<Record>>,
}

fn bearer(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_owned()
}

/// Whether the request carries a token the App signed (RS256, `iss` = the App's id).
fn signed_by_the_app(headers: &HeaderMap) -> bool {
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_str(
        &std::fs::read_to_string(crate::workspace().join("tests/fixtures/keys/a.jwk.json")).unwrap(),
    )
    .unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    validation.set_issuer(&[APP_ID]);
    jsonwebtoken::decode::<Value>(&bearer(headers), &key, &validation).is_ok()
}

fn not_the_app() -> Response {
    (StatusCode::UNAUTHORIZED, Json(json!({ "message": "A JSON web token could not be decoded" }))).into_response()
}

/// The App's install page: the user (`octocat`) installs it on `acme`, and GitHub sends them
/// to the App's Setup URL with the installation, the `state` it was given and, as an App that
/// requests user authorization during installation, a `code` for octocat's token.
async fn install_page(
    State(f): State<FakeProviders>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let mut r = f.record.lock().unwrap();
    let id = 4200 + r.installations.len() as i64 + 1;
    r.installations.insert(id, "acme".to_owned());
    r.installed_by.push(("octocat".to_owned(), id));
    let code = format!("gh-install-code-{id}");
    r.codes.insert(code.clone(), ("github".into(), "octocat".into(), String::new()));
    let mut to = reqwest::Url::parse(&r.github_setup_url).expect("set_github_setup_url first");
    to.query_pairs_mut().append_pair("installation_id", &id.to_string()).append_pair("setup_action", "install");
    if let Some(state) = q.get("state") {
        to.query_pairs_mut().append_pair("state", state);
    }
    to.query_pairs_mut().append_pair("code", &code);
    (StatusCode::FOUND, [("location", to.to_string())]).into_response()
}

/// `GET /user/installations`: the installations the token's GitHub user can reach.
async fn user_installations(State(f): State<FakeProviders>, headers: HeaderMap) -> Response {
    let Some(user) = token_user(&f, &headers, "github") else {
        return (StatusCode::UNAUTHORIZED, Json(json!({ "message": "Bad credentials" }))).into_response();
    };
    let r = f.record.lock().unwrap();
    let list: Vec<Value> = r
        .installed_by
        .iter()
        .filter(|(by, _)| *by == user)
        .map(|(_, id)| json!({ "id": id, "account": { "login": r.installations[id] } }))
        .collect();
    Json(json!({ "total_count": list.len(), "installations": list })).into_response()
}

/// `GET /app/installations/{id}`, asked as the App.
async fn installation(State(f): State<FakeProviders>, Path(id): Path<i64>, headers: HeaderMap) -> Response {
    if !signed_by_the_app(&headers) {
        return not_the_app();
    }
    match f.record.lock().unwrap().installations.get(&id) {
        Some(login) => Json(json!({ "id": id, "account": { "login": login, "type": "Organization" } })).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({ "message": "Not Found" }))).into_response(),
    }
}

async fn access_token(State(f): State<FakeProviders>, Path(installation): Path<i64>, headers: HeaderMap) -> Response {
    if !signed_by_the_app(&headers) {
        return not_the_app();
    }
    let mut r = f.record.lock().unwrap();
    let token = format!("ghs_installation_{installation}_{}", r.tokens.len() + 1);
    r.tokens.push(token.clone());
    let expires_at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    (StatusCode::CREATED, Json(json!({ "token": token, "expires_at": expires_at }))).into_response()
}

async fn comment(
    State(f): State<FakeProviders>,
    Path((owner, repo, number)): Path<(String, String, i64)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut r = f.record.lock().unwrap();
    if !r.tokens.contains(&bearer(&headers)) {
        return (StatusCode::UNAUTHORIZED, Json(json!({ "message": "Bad credentials" }))).into_response();
    }
    if r.fail_comments > 0 {
        r.fail_comments -= 1;
        r.failed += 1;
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({ "message": "scripted failure" }))).into_response();
    }
    let text = body["body"].as_str().unwrap_or("").to_owned();
    r.comments.push((format!("{owner}/{repo}"), number, text));
    (StatusCode::CREATED, Json(json!({ "id": r.comments.len() }))).into_response()
}

async fn post_message(State(f): State<FakeProviders>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let mut r = f.record.lock().unwrap();
    let token = bearer(&headers);
    if token != SLACK_BOT_TOKEN && !r.team_tokens.contains(&token) {
        return Json(json!({ "ok": false, "error": "invalid_auth" })).into_response();
    }
    r.message_tokens.push(token);
    let field = |k: &str| body[k].as_str().unwrap_or("").to_owned();
    r.messages.push((field("channel"), field("thread_ts"), field("text")));
    Json(json!({ "ok": true, "ts": format!("1700000000.{:06}", r.messages.len()) })).into_response()
}

async fn gitlab_note(
    State(f): State<FakeProviders>,
    Path((project, kind, iid)): Path<(i64, String, i64)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if headers.get("private-token").and_then(|v| v.to_str().ok()) != Some(GITLAB_TOKEN) {
        return (StatusCode::UNAUTHORIZED, Json(json!({ "message": "401 Unauthorized" }))).into_response();
    }
    let text = body["body"].as_str().unwrap_or("").to_owned();
    f.record.lock().unwrap().posts.push(("gitlab".into(), format!("{project}/{kind}/{iid}"), text));
    (StatusCode::CREATED, Json(json!({ "id": 1 }))).into_response()
}

async fn jira_comment(
    State(f): State<FakeProviders>,
    Path(key): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    use base64::Engine as _;
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    let basic =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{JIRA_EMAIL}:{JIRA_TOKEN}")));
    let which = if auth == basic {
        "jira"
    } else if auth == format!("Bearer {JIRA_DC_TOKEN}") {
        "jira_dc"
    } else if auth == format!("Bearer {WS_JIRA_DC_KEY}") {
        "jira_dc-workspace"
    } else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let text = body["body"].as_str().unwrap_or("").to_owned();
    f.record.lock().unwrap().posts.push((which.into(), key, text));
    (StatusCode::CREATED, Json(json!({ "id": "10000" }))).into_response()
}

async fn linear_graphql(State(f): State<FakeProviders>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let query = body["query"].as_str().unwrap_or("");
    if query.contains("viewer") {
        let Some((_, user)) = f.record.lock().unwrap().access.get(&bearer(&headers)).cloned() else {
            return (StatusCode::UNAUTHORIZED, Json(json!({ "errors": [{ "message": "Authentication required" }] })))
                .into_response();
        };
        let org = json!({ "id": LINEAR_ORG_ID, "name": "Acme", "urlKey": LINEAR_ORG_KEY });
        return Json(
            json!({ "data": { "viewer": { "id": user, "email": format!("{user}@acme.test"), "organization": org } } }),
        )
        .into_response();
    }
    let key = headers.get("authorization").and_then(|v| v.to_str().ok());
    let which = match key {
        Some(LINEAR_KEY) => "linear",
        Some(WS_LINEAR_KEY) => "linear-workspace",
        _ => "",
    };
    if which.is_empty() {
        return (StatusCode::UNAUTHORIZED, Json(json!({ "errors": [{ "message": "Authentication required" }] })))
            .into_response();
    }
    if !query.contains("commentCreate") {
        return Json(json!({ "errors": [{ "message": "unknown operation" }] })).into_response();
    }
    let input = &body["variables"]["input"];
    let (issue, text) =
        (input["issueId"].as_str().unwrap_or("").to_owned(), input["body"].as_str().unwrap_or("").to_owned());
    f.record.lock().unwrap().posts.push((which.into(), issue, text));
    Json(json!({ "data": { "commentCreate": { "success": true } } })).into_response()
}

/// `GET` authorize: approves at once as whoever is signed in at `provider`, back to the
/// redirect URI with a one-time code.
fn authorize(f: &FakeProviders, provider: &str, query: &std::collections::HashMap<String, String>) -> Response {
    let q = |k: &str| query.get(k).cloned().unwrap_or_default();
    if q("client_id") != OAUTH_CLIENT_ID || q("response_type") != "code" || q("redirect_uri").is_empty() {
        return (StatusCode::BAD_REQUEST, "invalid authorization request").into_response();
    }
    let mut r = f.record.lock().unwrap();
    let user = r.signed_in.get(provider).cloned().unwrap_or_else(|| format!("{provider}-alice"));
    let code = format!("code-{}", r.codes.len() + r.access.len() + 1);
    r.codes.insert(code.clone(), (provider.to_owned(), user, q("redirect_uri")));
    let mut to = reqwest::Url::parse(&q("redirect_uri")).unwrap();
    to.query_pairs_mut().append_pair("code", &code).append_pair("state", &q("state"));
    (StatusCode::FOUND, [("location", to.to_string())]).into_response()
}

async fn atlassian_authorize(
    State(f): State<FakeProviders>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    if q.get("audience").map(String::as_str) != Some("api.atlassian.com") {
        return (StatusCode::BAD_REQUEST, "audience must be api.atlassian.com").into_response();
    }
    authorize(&f, "jira", &q)
}

async fn jira_dc_authorize(
    State(f): State<FakeProviders>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    authorize(&f, "jira_dc", &q)
}

async fn linear_authorize(
    State(f): State<FakeProviders>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    authorize(&f, "linear", &q)
}

/// `POST` token (Atlassian: JSON; Jira DC and Linear: a form): the code for an access token.
async fn oauth_token(State(f): State<FakeProviders>, body: String) -> Response {
    let fields: std::collections::HashMap<String, String> = match serde_json::from_str::<Value>(&body) {
        Ok(Value::Object(map)) => map.into_iter().map(|(k, v)| (k, v.as_str().unwrap_or("").to_owned())).collect(),
        _ => reqwest::Url::parse(&format!("http://form/?{body}")).unwrap().query_pairs().into_owned().collect(),
    };
    let field = |k: &str| fields.get(k).cloned().unwrap_or_default();
    if field("client_id") != OAUTH_CLIENT_ID || field("client_secret") != OAUTH_CLIENT_SECRET {
        return (StatusCode::UNAUTHORIZED, Json(json!({ "error": "invalid_client" }))).into_response();
    }
    let mut r = f.record.lock().unwrap();
    match r.codes.remove(&field("code")) {
        Some((provider, user, redirect))
            if redirect == field("redirect_uri") && field("grant_type") == "authorization_code" =>
        {
            let token = format!("token-{provider}-{user}-{}", r.access.len() + 1);
            r.access.insert(token.clone(), (provider, user));
            // (`ok` as Slack's Web API answers; the others ignore it.)
            Json(json!({ "ok": true, "access_token": token, "token_type": "Bearer", "expires_in": 3600 }))
                .into_response()
        }
        _ => (StatusCode::BAD_REQUEST, Json(json!({ "error": "invalid_grant" }))).into_response(),
    }
}

/// Who an access token of `provider` belongs to.
fn token_user(f: &FakeProviders, headers: &HeaderMap, provider: &str) -> Option<String> {
    let r = f.record.lock().unwrap();
    r.access.get(&bearer(headers)).filter(|(p, _)| p == provider).map(|(_, u)| u.clone())
}

async fn atlassian_me(State(f): State<FakeProviders>, headers: HeaderMap) -> Response {
    match token_user(&f, &headers, "jira") {
        Some(user) => {
            Json(json!({ "account_id": user, "email": format!("{user}@acme.test"), "name": user })).into_response()
        }
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

async fn atlassian_sites(State(f): State<FakeProviders>, headers: HeaderMap) -> Response {
    match token_user(&f, &headers, "jira") {
        Some(_) => Json(json!([{ "id": JIRA_CLOUD_ID, "url": format!("https://{JIRA_SITE}"), "name": "acme", "scopes": ["read:jira-work"] }]))
            .into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

/// Slack's OAuth v2 (installing the app in a workspace): consent, then back with a code.
async fn slack_install_authorize(
    State(f): State<FakeProviders>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    if get("client_id") != OAUTH_CLIENT_ID || !get("scope").split(',').any(|s| s == "chat:write") {
        return (StatusCode::BAD_REQUEST, "invalid_scope or client_id").into_response();
    }
    let mut r = f.record.lock().unwrap();
    let code = format!("code-install-{}", r.codes.len() + r.access.len() + 1);
    r.codes.insert(code.clone(), ("slack_install".into(), "T_ACME".into(), get("redirect_uri")));
    let mut to = reqwest::Url::parse(&get("redirect_uri")).unwrap();
    to.query_pairs_mut().append_pair("code", &code).append_pair("state", &get("state"));
    (StatusCode::FOUND, [("location", to.to_string())]).into_response()
}

/// `oauth.v2.access`: the code for the team's bot token.
async fn slack_oauth_access(State(f): State<FakeProviders>, body: String) -> Response {
    let fields: std::collections::HashMap<String, String> =
        reqwest::Url::parse(&format!("http://form/?{body}")).unwrap().query_pairs().into_owned().collect();
    let field = |k: &str| fields.get(k).cloned().unwrap_or_default();
    if field("client_id") != OAUTH_CLIENT_ID || field("client_secret") != OAUTH_CLIENT_SECRET {
        return Json(json!({ "ok": false, "error": "invalid_client_id" })).into_response();
    }
    let mut r = f.record.lock().unwrap();
    match r.codes.remove(&field("code")) {
        Some((provider, team, redirect)) if provider == "slack_install" && redirect == field("redirect_uri") => {
            let token = format!("xoxb-team-{team}-{}", r.team_tokens.len() + 1);
            r.team_tokens.push(token.clone());
            Json(
                json!({ "ok": true, "access_token": token, "token_type": "bot", "scope": "app_mentions:read,chat:write",
                         "bot_user_id": "U0BOT", "team": { "id": team, "name": "Acme" } }),
            )
            .into_response()
        }
        _ => Json(json!({ "ok": false, "error": "invalid_code" })).into_response(),
    }
}

async fn slack_authorize(
    State(f): State<FakeProviders>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    if !q.get("scope").is_some_and(|s| s.split(' ').any(|s| s == "openid")) {
        return (StatusCode::BAD_REQUEST, "scope must include openid").into_response();
    }
    authorize(&f, "slack", &q)
}

/// Slack's OpenID Connect userInfo: who the token's user is.
async fn slack_user_info(State(f): State<FakeProviders>, headers: HeaderMap) -> Response {
    match token_user(&f, &headers, "slack") {
        Some(user) => Json(json!({ "ok": true, "sub": user, "https://slack.com/user_id": user,
                                   "https://slack.com/team_id": "T_ACME", "name": user }))
        .into_response(),
        None => Json(json!({ "ok": false, "error": "invalid_auth" })).into_response(),
    }
}

async fn jira_dc_myself(State(f): State<FakeProviders>, headers: HeaderMap) -> Response {
    match token_user(&f, &headers, "jira_dc") {
        Some(user) => {
            Json(json!({ "key": user, "name": user, "emailAddress": format!("{user}@acme.test") })).into_response()
        }
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

/// A comment through Atlassian's platform API as a workspace's service account.
async fn jira_cloud_comment(
    State(f): State<FakeProviders>,
    Path((cloud, key)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    use base64::Engine as _;
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    let basic =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{WS_JIRA_EMAIL}:{WS_JIRA_KEY}")));
    if auth != basic || cloud != JIRA_CLOUD_ID {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let text = body["body"].as_str().unwrap_or("").to_owned();
    f.record.lock().unwrap().posts.push(("jira-workspace".into(), key, text));
    (StatusCode::CREATED, Json(json!({ "id": "10001" }))).into_response()
}

/// `grp/app` (id 5), the one project the user's token maintains.
fn gitlab_project(project: &str) -> Option<i64> {
    (project == "grp/app" || project == "5").then_some(5)
}

async fn gitlab_get_project(Path(project): Path<String>, headers: HeaderMap) -> Response {
    if bearer(&headers) != GITLAB_USER_TOKEN {
        return (StatusCode::UNAUTHORIZED, Json(json!({ "message": "401 Unauthorized" }))).into_response();
    }
    match gitlab_project(&project) {
        Some(id) => Json(json!({ "id": id, "path_with_namespace": "grp/app" })).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({ "message": "404 Project Not Found" }))).into_response(),
    }
}

async fn gitlab_add_hook(
    State(f): State<FakeProviders>,
    Path(project): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let Some(project) = gitlab_project(&project).filter(|_| bearer(&headers) == GITLAB_USER_TOKEN) else {
        return (StatusCode::FORBIDDEN, Json(json!({ "message": "403 Forbidden" }))).into_response();
    };
    let mut r = f.record.lock().unwrap();
    r.next_hook += 1;
    let id = r.next_hook;
    r.hooks.push((project, id, body));
    (StatusCode::CREATED, Json(json!({ "id": id }))).into_response()
}

async fn gitlab_delete_hook(
    State(f): State<FakeProviders>,
    Path((project, hook)): Path<(String, i64)>,
    headers: HeaderMap,
) -> Response {
    if bearer(&headers) != GITLAB_USER_TOKEN || gitlab_project(&project).is_none() {
        return StatusCode::FORBIDDEN.into_response();
    }
    let mut r = f.record.lock().unwrap();
    let before = r.hooks.len();
    r.hooks.retain(|h| h.1 != hook);
    if r.hooks.len() == before {
        return StatusCode::NOT_FOUND.into_response();
    }
    StatusCode::NO_CONTENT.into_response()
}

impl FakeProviders {
    pub async fn start() -> FakeProviders {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let f = FakeProviders { base_url, record: Arc::default() };
        let app = Router::new()
            .route("/app/installations/{id}/access_tokens", post(access_token))
            .route("/app/installations/{id}", axum::routing::get(installation))
            .route("/apps/{slug}/installations/new", axum::routing::get(install_page))
            .route("/repos/{owner}/{repo}/issues/{number}/comments", post(comment))
            .route("/chat.postMessage", post(post_message))
            .route("/api/v4/projects/{project}/{kind}/{iid}/notes", post(gitlab_note))
            .route("/rest/api/2/issue/{key}/comment", post(jira_comment))
            .route("/graphql", post(linear_graphql))
            .route("/api/v4/projects/{project}", axum::routing::get(gitlab_get_project))
            .route("/api/v4/projects/{project}/hooks", post(gitlab_add_hook))
            .route("/api/v4/projects/{project}/hooks/{hook}", axum::routing::delete(gitlab_delete_hook))
            .route("/authorize", axum::routing::get(atlassian_authorize))
            .route("/rest/oauth2/latest/authorize", axum::routing::get(jira_dc_authorize))
            .route("/oauth/authorize", axum::routing::get(linear_authorize))
            .route("/oauth/token", post(oauth_token))
            .route("/login/oauth/access_token", post(oauth_token))
            .route("/user/installations", axum::routing::get(user_installations))
            .route("/openid/connect/authorize", axum::routing::get(slack_authorize))
            .route("/oauth/v2/authorize", axum::routing::get(slack_install_authorize))
            .route("/oauth.v2.access", post(slack_oauth_access))
            .route("/openid.connect.token", post(oauth_token))
            .route("/openid.connect.userInfo", axum::routing::get(slack_user_info))
            .route("/rest/oauth2/latest/token", post(oauth_token))
            .route("/me", axum::routing::get(atlassian_me))
            .route("/oauth/token/accessible-resources", axum::routing::get(atlassian_sites))
            .route("/rest/api/2/myself", axum::routing::get(jira_dc_myself))
            .route("/ex/jira/{cloud}/rest/api/2/issue/{key}/comment", post(jira_cloud_comment))
            .with_state(f.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        f
    }

    /// Where the fake GitHub sends a user after they install the App (its Setup URL).
    pub fn set_github_setup_url(&self, url: &str) {
        self.record.lock().unwrap().github_setup_url = url.to_owned();
    }

    /// The token each Slack message was posted with, in order.
    pub fn slack_message_tokens(&self) -> Vec<String> {
        self.record.lock().unwrap().message_tokens.clone()
    }

    /// Comments posted: (repo, issue number, body).
    pub fn comments(&self) -> Vec<(String, i64, String)> {
        self.record.lock().unwrap().comments.clone()
    }

    /// Installation tokens minted.
    pub fn tokens(&self) -> usize {
        self.record.lock().unwrap().tokens.len()
    }

    /// Slack messages posted: (channel, thread_ts, text).
    pub fn messages(&self) -> Vec<(String, String, String)> {
        self.record.lock().unwrap().messages.clone()
    }

    /// GitLab notes, Jira and Linear comments: (provider, where, body).
    pub fn posts(&self) -> Vec<(String, String, String)> {
        self.record.lock().unwrap().posts.clone()
    }

    /// GitLab webhooks installed and not removed: (project id, hook id, what was sent).
    pub fn hooks(&self) -> Vec<(i64, i64, Value)> {
        self.record.lock().unwrap().hooks.clone()
    }

    /// From now on, `user` is who signs in at `provider` (`jira`, `jira_dc`, `linear`,
    /// `slack`).
    pub fn sign_in(&self, provider: &str, user: &str) {
        self.record.lock().unwrap().signed_in.insert(provider.to_owned(), user.to_owned());
    }

    /// The next `n` comment requests fail with 500.
    pub fn fail_comments(&self, n: usize) {
        self.record.lock().unwrap().fail_comments = n;
    }

    /// How many comment requests failed so far.
    pub fn failed_comments(&self) -> usize {
        self.record.lock().unwrap().failed
    }
}
