//! The git providers' REST and GraphQL APIs (GitHub, GitLab, Bitbucket), called with a user's
//! token: what the web client's repository and branch pickers, suggested tasks and microagent
//! pages show (`/api/user/*`). Answers are in OpenHands' shapes (`Repository`, `Branch`, …).
//!
//! Each provider's API address is the profile's (`[server] github_api_url`, …), or the
//! token's own `host` (GitHub Enterprise, a self-managed GitLab) as OpenHands derives it. In
//! SaaS mode a token's host must be public (see the `outbound` crate).

mod bitbucket;
mod github;
mod gitlab;

use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE};
use serde::Serialize;
use serde_json::Value;
use std::{fmt, time::Duration};

/// A git provider this server can call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    GitHub,
    GitLab,
    Bitbucket,
}

impl Provider {
    /// In the order OpenHands tries them.
    pub const ALL: [Provider; 3] = [Provider::GitHub, Provider::GitLab, Provider::Bitbucket];

    pub fn parse(name: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.name() == name)
    }

    /// OpenHands' `ProviderType` value.
    pub fn name(self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::GitLab => "gitlab",
            Provider::Bitbucket => "bitbucket",
        }
    }

    /// The provider's public web domain (a repository URL pasted in a search names it).
    pub fn domain(self) -> &'static str {
        match self {
            Provider::GitHub => "github.com",
            Provider::GitLab => "gitlab.com",
            Provider::Bitbucket => "bitbucket.org",
        }
    }
}

/// The providers' API addresses from the profile.
#[derive(Clone, Debug)]
pub struct ApiUrls {
    pub github: String,
    pub gitlab: String,
    pub bitbucket: String,
}

impl Default for ApiUrls {
    fn default() -> Self {
        ApiUrls {
            github: "https://api.github.com".to_owned(),
            gitlab: "https://gitlab.com/api/v4".to_owned(),
            bitbucket: "https://api.bitbucket.org/2.0".to_owned(),
        }
    }
}

/// A failed provider call, classified as OpenHands does (`handle_http_status_error`).
#[derive(Debug)]
pub enum GitError {
    /// The provider refused the token (401).
    Unauthorized(String),
    NotFound(String),
    RateLimited(String),
    /// Anything else: another status, the network, an answer of the wrong shape.
    Failed(String),
}

impl fmt::Display for GitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GitError::Unauthorized(m) | GitError::NotFound(m) | GitError::RateLimited(m) | GitError::Failed(m) => {
                f.write_str(m)
            }
        }
    }
}

pub type GitResult<T> = Result<T, GitError>;

/// OpenHands' `User`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct User {
    pub id: String,
    pub login: String,
    pub avatar_url: String,
    pub company: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
}

/// OpenHands' `Repository`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Repository {
    pub id: String,
    pub full_name: String,
    pub git_provider: &'static str,
    pub is_public: bool,
    pub stargazers_count: Option<i64>,
    pub link_header: Option<String>,
    pub pushed_at: Option<String>,
    pub owner_type: Option<&'static str>,
    pub main_branch: Option<String>,
}

/// OpenHands' `Branch`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Branch {
    pub name: String,
    pub commit_sha: String,
    pub protected: bool,
    pub last_push_date: Option<String>,
}

/// OpenHands' `PaginatedBranchesResponse`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct BranchPage {
    pub branches: Vec<Branch>,
    pub has_next_page: bool,
    pub current_page: u32,
    pub per_page: u32,
    pub total_count: Option<i64>,
}

impl BranchPage {
    pub fn empty(page: u32, per_page: u32) -> BranchPage {
        BranchPage { branches: Vec::new(), has_next_page: false, current_page: page, per_page, total_count: Some(0) }
    }
}

/// OpenHands' `SuggestedTask`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct SuggestedTask {
    pub git_provider: &'static str,
    pub task_type: &'static str,
    pub repo: String,
    pub issue_number: i64,
    pub title: String,
}

/// OpenHands' `MicroagentResponse`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Microagent {
    pub name: String,
    pub path: String,
    pub created_at: String,
}

/// OpenHands' `MicroagentContentResponse`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct MicroagentContent {
    pub content: String,
    pub path: String,
    pub triggers: Vec<String>,
    pub git_provider: &'static str,
}

/// A provider's answer: the body (JSON, or the text of a raw file) and its paging headers.
pub(crate) struct Reply {
    pub body: Value,
    pub link: Option<String>,
    pub total: Option<i64>,
}

impl Reply {
    fn has_next(&self) -> bool {
        self.link.as_deref().is_some_and(|l| l.contains("rel=\"next\""))
    }
}

/// One provider's API, with one user's token.
pub struct Api {
    http: reqwest::Client,
    pub provider: Provider,
    /// The host the user set with the token, if any.
    pub host: Option<String>,
    base: String,
    token: String,
    saas: bool,
}

/// The largest list any "all repositories" or "all branches" walk collects (OpenHands' limit).
pub const MAX_ITEMS: usize = 1000;
const TIMEOUT: Duration = Duration::from_secs(15);

impl Api {
    /// The API of `provider` for a token: the token's own host when it names one, else the
    /// profile's address.
    pub fn new(provider: Provider, token: &str, host: Option<&str>, urls: &ApiUrls, saas: bool) -> Result<Api, String> {
        let host = host.map(str::trim).filter(|h| !h.is_empty());
        let base = match (provider, host) {
            (Provider::GitHub, Some(h)) if h != "github.com" => format!("{}/api/v3", with_scheme(h)),
            (Provider::GitLab, Some(h)) if h != "gitlab.com" => format!("{}/api/v4", with_scheme(h)),
            (Provider::Bitbucket, Some(h)) if h != "bitbucket.org" => {
                format!("https://api.{}/2.0", h.trim_start_matches("https://"))
            }
            (Provider::GitHub, _) => urls.github.clone(),
            (Provider::GitLab, _) => urls.gitlab.clone(),
            (Provider::Bitbucket, _) => urls.bitbucket.clone(),
        };
        let user_host = host.is_some_and(|h| h != provider.domain());
        let policy = outbound::Policy {
            public_only: saas && user_host,
            allowed_hosts: Vec::new(),
            subject: "the git provider host",
            allow_setting: "github_api_url / gitlab_api_url / bitbucket_api_url",
        };
        policy.check_url(&base)?;
        let builder = reqwest::Client::builder().timeout(TIMEOUT).connect_timeout(Duration::from_secs(5));
        let http = outbound::client(&policy, builder).map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        let base = base.trim_end_matches('/').to_owned();
        Ok(Api { http, provider, host: host.map(str::to_owned), base, token: token.to_owned(), saas })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.provider {
            Provider::GitHub => request.bearer_auth(&self.token).header(ACCEPT, "application/vnd.github.v3+json"),
            Provider::GitLab => request.bearer_auth(&self.token),
            // `username:app_password` is basic auth; anything else an access token.
            Provider::Bitbucket => match self.token.split_once(':') {
                Some((user, password)) => request.basic_auth(user, Some(password)),
                None => request.bearer_auth(&self.token),
            }
            .header(ACCEPT, "application/json"),
        }
    }

    /// `GET` a path under the API (or a full URL the API handed out, for paging).
    pub(crate) async fn get(&self, path_or_url: &str, query: &[(&str, String)]) -> GitResult<Reply> {
        let url = if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_owned()
        } else {
            self.url(path_or_url)
        };
        let response = self.authorize(self.http.get(&url)).query(query).send().await.map_err(|e| self.transport(e))?;
        self.read(response).await
    }

    /// A GraphQL query; its `data`, or an error naming the first GraphQL error.
    pub(crate) async fn graphql(&self, url: &str, query: &str, variables: Value) -> GitResult<Value> {
        let body = serde_json::json!({ "query": query, "variables": variables });
        let request = self.authorize(self.http.post(url)).json(&body);
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let reply = self.read(response).await?;
        if let Some(errors) = reply.body.get("errors").filter(|e| !e.is_null()) {
            let first = errors[0]["message"].as_str().unwrap_or("unknown GraphQL error");
            return Err(GitError::Failed(format!("{} GraphQL error: {first}", self.provider.name())));
        }
        Ok(reply.body["data"].clone())
    }

    async fn read(&self, response: reqwest::Response) -> GitResult<Reply> {
        let status = response.status();
        let headers = response.headers().clone();
        let name = self.provider.name();
        match status.as_u16() {
            200..=299 => {}
            401 => return Err(GitError::Unauthorized(format!("Invalid {name} token"))),
            404 => return Err(GitError::NotFound(format!("Resource not found on {name} API: {}", response.url()))),
            429 => return Err(GitError::RateLimited(format!("{name} API rate limit exceeded"))),
            // GitHub says "rate limit" with a 403 and no remaining quota.
            403 if headers.get("x-ratelimit-remaining").is_some_and(|v| v == "0") => {
                return Err(GitError::RateLimited(format!("{name} API rate limit exceeded")));
            }
            other => return Err(GitError::Failed(format!("Unknown error: {name} API answered {other}"))),
        }
        let text = response.text().await.map_err(|e| self.transport(e))?;
        let json = content_type(&headers).contains("json");
        let body = if json {
            serde_json::from_str(&text)
                .map_err(|e| GitError::Failed(format!("{name} API answered JSON that does not parse: {e}")))?
        } else {
            Value::String(text)
        };
        let link = headers.get("link").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let total = headers.get("x-total").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        Ok(Reply { body, link, total })
    }

    fn transport(&self, e: reqwest::Error) -> GitError {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            text = format!("{text}: {cause}");
            source = cause.source();
        }
        GitError::Failed(format!("HTTP error calling the {} API: {text}", self.provider.name()))
    }

    /// Walks `Link: rel="next"` pages (GitHub, GitLab) from `page=1`, up to `max` items;
    /// `key` picks the list out of an object answer.
    async fn all_pages(
        &self,
        path: &str,
        query: &[(&str, String)],
        key: Option<&str>,
        max: usize,
    ) -> GitResult<Vec<Value>> {
        let mut items = Vec::new();
        let mut page = 1;
        while items.len() < max {
            let mut q = query.to_vec();
            q.push(("page", page.to_string()));
            let reply = self.get(path, &q).await?;
            let list = match key {
                Some(k) => reply.body[k].as_array().cloned().unwrap_or_default(),
                None => reply.body.as_array().cloned().unwrap_or_default(),
            };
            if list.is_empty() {
                break;
            }
            items.extend(list);
            if !reply.has_next() {
                break;
            }
            page += 1;
        }
        items.truncate(max);
        Ok(items)
    }

    /// Walks Bitbucket's `next` URLs, up to `max` items.
    async fn all_values(&self, path: &str, query: &[(&str, String)], max: usize) -> GitResult<Vec<Value>> {
        let mut items = Vec::new();
        let mut reply = self.get(path, query).await?;
        loop {
            items.extend(reply.body["values"].as_array().cloned().unwrap_or_default());
            let next = reply.body["next"].as_str().map(str::to_owned);
            match next {
                Some(next) if items.len() < max => reply = self.get(&next, &[]).await?,
                _ => break,
            }
        }
        items.truncate(max);
        Ok(items)
    }
}

fn with_scheme(host: &str) -> String {
    if host.starts_with("http://") || host.starts_with("https://") {
        host.trim_end_matches('/').to_owned()
    } else {
        format!("https://{}", host.trim_end_matches('/'))
    }
}

fn content_type(headers: &HeaderMap) -> String {
    headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

fn opt_text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

/// A repository name as the routes accept it: `owner/repo`, or deeper for GitLab subgroups;
/// segments of letters, digits, `.`, `-` and `_`, never `.` or `..` (a name must not walk
/// the API's paths).
pub fn valid_repository(name: &str) -> bool {
    let segments: Vec<&str> = name.split('/').collect();
    segments.len() >= 2
        && segments.iter().all(|s| {
            !s.is_empty()
                && *s != "."
                && *s != ".."
                && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        })
}

/// A path inside a repository: no empty, `.` or `..` segments, no query characters.
pub fn valid_file_path(path: &str) -> bool {
    !path.is_empty()
        && path.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
        && !path.contains(['?', '#', '\\', '%'])
}

/// The microagents directory of a repository, as OpenHands decides it.
fn microagents_dir(repository: &str) -> &'static str {
    match repository.rsplit('/').next() {
        Some(".openhands") | Some("openhands-config") => "microagents",
        _ => ".openhands/microagents",
    }
}

fn microagent(file_name: &str, path: String) -> Microagent {
    Microagent {
        name: file_name.replace(".md", "").replace(".cursorrules", "cursorrules"),
        path,
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    }
}

/// A microagent file's body and `triggers` (its YAML front matter's list, written as
/// `triggers: [a, b]` or as `- a` lines).
pub fn parse_microagent(file: &str) -> (String, Vec<String>) {
    let Some(rest) = file.strip_prefix("---\n").or_else(|| file.strip_prefix("---\r\n")) else {
        return (file.trim().to_owned(), Vec::new());
    };
    let Some(end) = rest.find("\n---") else {
        return (file.trim().to_owned(), Vec::new());
    };
    let (front, body) = (&rest[..end], &rest[end + 4..]);
    let body = body.trim_start_matches(['\r', '\n']).trim().to_owned();
    let unquote = |s: &str| s.trim().trim_matches(['"', '\'']).to_owned();
    let mut triggers = Vec::new();
    let mut lines = front.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(value) = line.strip_prefix("triggers:") else { continue };
        let value = value.trim();
        if let Some(inline) = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
            triggers.extend(inline.split(',').map(unquote).filter(|t| !t.is_empty()));
        } else {
            while let Some(item) = lines.peek().and_then(|l| l.trim_start().strip_prefix("- ")) {
                triggers.push(unquote(item));
                lines.next();
            }
        }
    }
    (body, triggers)
}

// One dispatch per operation: the routes stay provider-agnostic.

pub async fn user(api: &Api) -> GitResult<User> {
    match api.provider {
        Provider::GitHub => github::user(api).await,
        Provider::GitLab => gitlab::user(api).await,
        Provider::Bitbucket => bitbucket::user(api).await,
    }
}

/// One page of the user's repositories (`installation`: a GitHub installation id or a
/// Bitbucket workspace).
pub async fn repositories_page(
    api: &Api,
    page: u32,
    per_page: u32,
    sort: &str,
    installation: Option<&str>,
) -> GitResult<Vec<Repository>> {
    match api.provider {
        Provider::GitHub => github::repositories_page(api, page, per_page, sort, installation).await,
        Provider::GitLab => gitlab::repositories_page(api, page, per_page, sort, None).await,
        Provider::Bitbucket => bitbucket::repositories_page(api, page, per_page, sort, installation, None).await,
    }
}

/// Every repository of the user, up to 1000.
pub async fn all_repositories(api: &Api, sort: &str) -> GitResult<Vec<Repository>> {
    match api.provider {
        Provider::GitHub => github::all_repositories(api, sort).await,
        Provider::GitLab => gitlab::all_repositories(api, sort).await,
        Provider::Bitbucket => bitbucket::all_repositories(api, sort).await,
    }
}

/// Repositories matching `query`; `public` when the query is a repository's URL.
pub async fn search_repositories(
    api: &Api,
    query: &str,
    per_page: u32,
    sort: &str,
    order: &str,
    public: bool,
) -> GitResult<Vec<Repository>> {
    match api.provider {
        Provider::GitHub => github::search_repositories(api, query, per_page, sort, order, public).await,
        Provider::GitLab => gitlab::search_repositories(api, query, per_page, sort, public).await,
        Provider::Bitbucket => bitbucket::search_repositories(api, query, per_page, sort, public).await,
    }
}

pub async fn repository(api: &Api, name: &str) -> GitResult<Repository> {
    match api.provider {
        Provider::GitHub => github::repository(api, name).await,
        Provider::GitLab => gitlab::repository(api, name).await,
        Provider::Bitbucket => bitbucket::repository(api, name).await,
    }
}

pub async fn branches_page(api: &Api, repository: &str, page: u32, per_page: u32) -> GitResult<BranchPage> {
    match api.provider {
        Provider::GitHub => github::branches_page(api, repository, page, per_page).await,
        Provider::GitLab => gitlab::branches_page(api, repository, page, per_page).await,
        Provider::Bitbucket => bitbucket::branches_page(api, repository, page, per_page).await,
    }
}

pub async fn search_branches(api: &Api, repository: &str, query: &str, per_page: u32) -> GitResult<Vec<Branch>> {
    match api.provider {
        Provider::GitHub => github::search_branches(api, repository, query, per_page).await,
        Provider::GitLab => gitlab::search_branches(api, repository, query, per_page).await,
        Provider::Bitbucket => bitbucket::search_branches(api, repository, query, per_page).await,
    }
}

pub async fn suggested_tasks(api: &Api) -> GitResult<Vec<SuggestedTask>> {
    match api.provider {
        Provider::GitHub => github::suggested_tasks(api).await,
        Provider::GitLab => gitlab::suggested_tasks(api).await,
        Provider::Bitbucket => Ok(Vec::new()),
    }
}

/// GitHub App installations, or Bitbucket workspaces.
pub async fn installations(api: &Api) -> GitResult<Vec<String>> {
    match api.provider {
        Provider::GitHub => github::installations(api).await,
        Provider::Bitbucket => bitbucket::workspaces(api, None).await,
        Provider::GitLab => Ok(Vec::new()),
    }
}

/// The microagents of a repository: a `.cursorrules` file, and the `.md` files of its
/// microagents directory (README excepted). A missing file or directory is no microagent.
pub async fn microagents(api: &Api, repository: &str) -> GitResult<Vec<Microagent>> {
    let dir = microagents_dir(repository);
    let (cursorrules, listing) = match api.provider {
        Provider::GitHub => github::microagent_files(api, repository, dir).await,
        Provider::GitLab => gitlab::microagent_files(api, repository, dir).await,
        Provider::Bitbucket => bitbucket::microagent_files(api, repository, dir).await,
    };
    let mut found = Vec::new();
    match cursorrules {
        Ok(true) => found.push(microagent(".cursorrules", ".cursorrules".to_owned())),
        Ok(false) | Err(GitError::NotFound(_)) => {}
        Err(e) => tracing::warn!(provider = api.provider.name(), repository, error = %e, "cannot check .cursorrules"),
    }
    match listing {
        Ok(files) => found.extend(files.into_iter().map(|(name, path)| microagent(&name, path))),
        Err(GitError::NotFound(_)) => {}
        Err(e @ GitError::Unauthorized(_)) => return Err(e),
        Err(e) => tracing::warn!(provider = api.provider.name(), repository, error = %e, "cannot list microagents"),
    }
    Ok(found)
}

/// Whether pull (merge) request `number` of `repository` is open.
pub async fn pr_is_open(api: &Api, repository: &str, number: i64) -> GitResult<bool> {
    if !valid_repository(repository) {
        return Err(GitError::Failed(format!("`{repository}` is not a repository name")));
    }
    let (path, open) = match api.provider {
        Provider::GitHub => (format!("repos/{repository}/pulls/{number}"), "open"),
        Provider::GitLab => (format!("projects/{}/merge_requests/{number}", repository.replace('/', "%2F")), "opened"),
        Provider::Bitbucket => (format!("repositories/{repository}/pullrequests/{number}"), "OPEN"),
    };
    Ok(api.get(&path, &[]).await?.body["state"] == open)
}

pub async fn microagent_content(api: &Api, repository: &str, path: &str) -> GitResult<MicroagentContent> {
    let raw = match api.provider {
        Provider::GitHub => github::file(api, repository, path).await?,
        Provider::GitLab => gitlab::file(api, repository, path).await?,
        Provider::Bitbucket => bitbucket::file(api, repository, path).await?,
    };
    let (content, triggers) = parse_microagent(&raw);
    Ok(MicroagentContent { content, path: path.to_owned(), triggers, git_provider: api.provider.name() })
}

#[cfg(test)]
mod tests;
