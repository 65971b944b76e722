//! What the integrations say back: GitHub issue comments (as the GitHub App: an RS256 app JWT
//! buys an installation token, kept until shortly before it expires), Slack thread replies
//! (`chat.postMessage` with the bot token), GitLab notes, Jira and Linear comments (with the
//! profile's account, or a registered workspace's service account: `workspaces.rs`).

use plugin_sdk::{ErrorCode, PluginError};
use serde::Deserialize;
use serde_json::{json, Value};
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};
use tokio::sync::Mutex;

pub(crate) fn http() -> Result<reqwest::Client, PluginError> {
    plugin_sdk::enter_runtime(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .connect_timeout(Duration::from_secs(5))
            .user_agent("oh-host-integrations")
            .build()
    })
    .map_err(|e| PluginError::internal(format!("cannot build an HTTP client: {e}")))
}

/// A provider's failure: 5xx, 429 and network errors may pass (retried); the rest is INTERNAL
/// (also retried by the inbox, then dead-lettered).
async fn failure(what: &str, r: reqwest::Response) -> PluginError {
    let status = r.status();
    let body: String = r.text().await.unwrap_or_default().chars().take(300).collect();
    let code =
        if status.is_server_error() || status.as_u16() == 429 { ErrorCode::UNAVAILABLE } else { ErrorCode::INTERNAL };
    PluginError::new(code, format!("{what}: {status} {body}"))
}

pub(crate) fn unreachable(what: &str, e: reqwest::Error) -> PluginError {
    PluginError::unavailable(format!("{what}: {e}"))
}

/// Sends one request to a provider's API, counted in `oh_provider_api_calls_total` by
/// provider (the first word of `what`: `GitHub comment` is GitHub's) and outcome (`ok`, `error`
/// for an error status, `unreachable`): the integrations' health, per provider.
pub(crate) async fn counted(what: &str, request: reqwest::RequestBuilder) -> Result<reqwest::Response, reqwest::Error> {
    let answer = request.send().await;
    let outcome = match &answer {
        Ok(r) if r.status().is_success() => "ok",
        Ok(_) => "error",
        Err(_) => "unreachable",
    };
    count_call(what, outcome);
    answer
}

/// One provider API call in `oh_provider_api_calls_total` (see [`counted`]).
fn count_call(what: &str, outcome: &str) {
    let provider = what.split_whitespace().next().unwrap_or("unknown").to_ascii_lowercase();
    plugin_sdk::metric("oh_provider_api_calls_total", 1.0, &json!({ "provider": provider, "outcome": outcome }));
}

/// Exchanges an authorization code at `app`'s token endpoint (through `oauth_client`),
/// counted as [`counted`] counts API calls: the tokens; `Ok(Err(why))` when the provider
/// refused the code; an error when it could not be asked.
pub(crate) async fn exchange_code(
    http: &reqwest::Client,
    app: &oauth_client::Provider<'_>,
    code: &str,
    redirect_uri: &str,
) -> Result<Result<oauth_client::Tokens, String>, PluginError> {
    let answer = app.exchange_code(http, code, redirect_uri, None).await;
    let outcome = match &answer {
        Ok(_) => "ok",
        Err(oauth_client::Error::Refused { .. }) => "error",
        Err(_) => "unreachable",
    };
    count_call(app.label, outcome);
    match answer {
        Ok(tokens) => Ok(Ok(tokens)),
        Err(e @ oauth_client::Error::Refused { .. }) => Ok(Err(e.to_string())),
        Err(e) => Err(PluginError::unavailable(e.to_string())),
    }
}

/// Sends `request`; its response when it succeeded, else the failure, named by `what`.
pub(crate) async fn send(what: &str, request: reqwest::RequestBuilder) -> Result<reqwest::Response, PluginError> {
    let r = counted(what, request).await.map_err(|e| unreachable(what, e))?;
    if r.status().is_success() {
        Ok(r)
    } else {
        Err(failure(what, r).await)
    }
}

pub(crate) struct GitHub {
    http: reqwest::Client,
    api: String,
    app_id: String,
    key: jsonwebtoken::EncodingKey,
    /// Installation tokens by installation id, with when to stop using them.
    tokens: Mutex<HashMap<i64, (String, Instant)>>,
}

#[derive(Deserialize)]
struct InstallationToken {
    token: String,
    expires_at: String,
}

impl GitHub {
    pub(crate) fn new(api: String, app_id: String, private_key_pem: &str) -> Result<GitHub, PluginError> {
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(crate::config::pem(private_key_pem).as_bytes())
            .map_err(|e| PluginError::invalid_config(format!("github.private_key: {e}")))?;
        Ok(GitHub { http: http()?, api, app_id, key, tokens: Mutex::new(HashMap::new()) })
    }

    /// An installation of the App, as GitHub describes it (`account.login`, `account.type`):
    /// `None` when GitHub does not know it.
    pub(crate) async fn installation(&self, id: i64) -> Result<Option<Value>, PluginError> {
        let what = "GitHub installation";
        let request = self
            .http
            .get(format!("{}/app/installations/{id}", self.api))
            .bearer_auth(self.app_jwt()?)
            .header("accept", "application/vnd.github+json");
        let r = counted(what, request).await.map_err(|e| unreachable(what, e))?;
        if r.status().as_u16() == 404 {
            return Ok(None);
        }
        if !r.status().is_success() {
            return Err(failure(what, r).await);
        }
        r.json().await.map(Some).map_err(|e| unreachable(what, e))
    }

    /// The App's own token: `iss` = the App, valid nine minutes (backdated one for clocks).
    fn app_jwt(&self) -> Result<String, PluginError> {
        let now = chrono::Utc::now().timestamp();
        let claims = json!({ "iat": now - 60, "exp": now + 9 * 60, "iss": self.app_id });
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, &self.key)
            .map_err(|e| PluginError::internal(format!("cannot sign the GitHub App token: {e}")))
    }

    /// A token of the installation (cached until a minute before it expires).
    async fn installation_token(&self, installation: i64) -> Result<String, PluginError> {
        let mut tokens = self.tokens.lock().await;
        if let Some((token, until)) = tokens.get(&installation) {
            if Instant::now() < *until {
                return Ok(token.clone());
            }
        }
        let what = "GitHub installation token";
        let request = self
            .http
            .post(format!("{}/app/installations/{installation}/access_tokens", self.api))
            .bearer_auth(self.app_jwt()?)
            .header("accept", "application/vnd.github+json");
        let r = send(what, request).await?;
        let t: InstallationToken = r.json().await.map_err(|e| unreachable(what, e))?;
        let left = chrono::DateTime::parse_from_rfc3339(&t.expires_at)
            .map(|at| (at.timestamp() - chrono::Utc::now().timestamp() - 60).max(0) as u64)
            .unwrap_or(0);
        tokens.insert(installation, (t.token.clone(), Instant::now() + Duration::from_secs(left)));
        Ok(t.token)
    }

    /// Comments on an issue or pull request.
    pub(crate) async fn comment(
        &self,
        installation: i64,
        repo: &str,
        number: i64,
        body: &str,
    ) -> Result<(), PluginError> {
        let token = self.installation_token(installation).await?;
        let what = "GitHub comment";
        let request = self
            .http
            .post(format!("{}/repos/{repo}/issues/{number}/comments", self.api))
            .bearer_auth(token)
            .header("accept", "application/vnd.github+json")
            .json(&json!({ "body": body }));
        let r = counted(what, request).await.map_err(|e| unreachable(what, e))?;
        if r.status().as_u16() == 401 {
            self.tokens.lock().await.remove(&installation);
        }
        if !r.status().is_success() {
            return Err(failure(what, r).await);
        }
        Ok(())
    }
}

pub(crate) struct Slack {
    http: reqwest::Client,
    api: String,
    /// The deployment's bot token (SLACK_BOT_TOKEN), for teams without their own installation.
    bot_token: Option<String>,
}

impl Slack {
    pub(crate) fn new(api: String, bot_token: Option<String>) -> Result<Slack, PluginError> {
        Ok(Slack { http: http()?, api, bot_token })
    }

    /// Replies in the thread of `thread_ts` in `channel`, with the team's own token when it
    /// installed the app (`team_token`), else the deployment's.
    pub(crate) async fn reply(
        &self,
        team_token: Option<String>,
        channel: &str,
        thread_ts: &str,
        text: &str,
    ) -> Result<(), PluginError> {
        let what = "Slack chat.postMessage";
        let Some(token) = team_token.or_else(|| self.bot_token.clone()) else {
            return Err(PluginError::internal(
                "no Slack bot token for this workspace: install the app there (/slack/install) or set SLACK_BOT_TOKEN",
            ));
        };
        let request = self
            .http
            .post(format!("{}/chat.postMessage", self.api))
            .bearer_auth(token)
            .json(&json!({ "channel": channel, "thread_ts": thread_ts, "text": text }));
        let r = send(what, request).await?;
        // Slack answers 200 with {"ok": false, "error"} for refusals.
        let answer: Value = r.json().await.map_err(|e| unreachable(what, e))?;
        if answer["ok"] != true {
            let error = answer["error"].as_str().unwrap_or("unknown error");
            let code = if error == "ratelimited" { ErrorCode::UNAVAILABLE } else { ErrorCode::INTERNAL };
            return Err(PluginError::new(code, format!("{what}: {error}")));
        }
        Ok(())
    }
}

/// GitLab notes on issues and merge requests, with a token of the bot account
/// (`PRIVATE-TOKEN`).
pub(crate) struct GitLab {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl GitLab {
    pub(crate) fn new(base: String, token: String) -> Result<GitLab, PluginError> {
        Ok(GitLab { http: http()?, base, token })
    }

    /// A note on issue or merge request `iid` (`kind`: `issues` or `merge_requests`).
    pub(crate) async fn note(&self, project: i64, kind: &str, iid: i64, body: &str) -> Result<(), PluginError> {
        let request = self
            .http
            .post(format!("{}/api/v4/projects/{project}/{kind}/{iid}/notes", self.base))
            .header("PRIVATE-TOKEN", &self.token)
            .json(&json!({ "body": body }));
        send("GitLab note", request).await.map(drop)
    }
}

/// Jira comments: Cloud with the service account's email and API token (basic auth), Data
/// Center with a personal access token (bearer).
pub(crate) struct Jira {
    http: reqwest::Client,
    base: String,
    email: Option<String>,
    token: String,
}

impl Jira {
    pub(crate) fn new(base: String, email: Option<String>, token: String) -> Result<Jira, PluginError> {
        Ok(Jira { http: http()?, base, email, token })
    }

    pub(crate) async fn comment(&self, issue_key: &str, body: &str) -> Result<(), PluginError> {
        jira_comment(&self.http, &self.base, self.email.as_deref(), &self.token, issue_key, body).await
    }
}

/// A comment on a Jira issue under `base` (a site, Data Center, or Cloud's
/// `https://api.atlassian.com/ex/jira/{cloud id}`): basic auth with an account's email and API
/// token, or bearer with a personal access token.
pub(crate) async fn jira_comment(
    http: &reqwest::Client,
    base: &str,
    email: Option<&str>,
    token: &str,
    issue_key: &str,
    body: &str,
) -> Result<(), PluginError> {
    let request = http.post(format!("{base}/rest/api/2/issue/{issue_key}/comment"));
    let request = match email {
        Some(email) => request.basic_auth(email, Some(token)),
        None => request.bearer_auth(token),
    };
    send("Jira comment", request.json(&json!({ "body": body }))).await.map(drop)
}

/// Linear comments through its GraphQL API, with an API key.
pub(crate) struct Linear {
    http: reqwest::Client,
    api: String,
    key: String,
}

impl Linear {
    pub(crate) fn new(api: String, key: String) -> Result<Linear, PluginError> {
        Ok(Linear { http: http()?, api, key })
    }

    pub(crate) async fn comment(&self, issue_id: &str, body: &str) -> Result<(), PluginError> {
        linear_comment(&self.http, &self.api, &self.key, issue_id, body).await
    }
}

/// A comment on a Linear issue (GraphQL `commentCreate`) with an API key.
pub(crate) async fn linear_comment(
    http: &reqwest::Client,
    api: &str,
    key: &str,
    issue_id: &str,
    body: &str,
) -> Result<(), PluginError> {
    let what = "Linear commentCreate";
    let query = "mutation CommentCreate($input: CommentCreateInput!) { commentCreate(input: $input) { success } }";
    let request = http
        .post(format!("{api}/graphql"))
        .header("authorization", key)
        .json(&json!({ "query": query, "variables": { "input": { "issueId": issue_id, "body": body } } }));
    let r = send(what, request).await?;
    let answer: Value = r.json().await.map_err(|e| unreachable(what, e))?;
    if answer["data"]["commentCreate"]["success"] != true {
        return Err(PluginError::internal(format!("{what}: {}", answer["errors"])));
    }
    Ok(())
}
