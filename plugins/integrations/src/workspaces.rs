//! Jira, Jira DC and Linear workspaces (OpenHands §10.9: `/integration/{jira,jira-dc,linear}/
//! workspaces…` and `/callback`), the way one server serves many organisations there.
//!
//! An admin registers a workspace (its webhook secret and service account) and proves, by the
//! provider's OAuth, that they belong to it; users link to it the same way, which proves
//! their identity there. A delivery names its workspace (Jira: the host of `issue.self`;
//! Linear: `organizationId`), is verified with that workspace's secret, and is answered with
//! its service account. Secrets are sealed at rest (`pg_common::crypto`); an OAuth `state` is
//! stored hashed, for ten minutes, and used once, by the user who asked for it.

use crate::{config::Source, oauth, providers};
use pg_common::{
    crypto::{Binding, Keyring},
    db_error, Database,
};
use plugin_sdk::{
    http::{json, redirect},
    CallContext, HttpRequest, HttpResponse, PluginError,
};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::{Postgres, Row, Transaction};
use std::sync::Arc;

/// The providers with workspaces: their name, path segment and variables' prefix.
pub(crate) const PROVIDERS: [(&str, &str, &str); 3] =
    [("jira", "jira", "JIRA"), ("jira_dc", "jira-dc", "JIRA_DC"), ("linear", "linear", "LINEAR")];

/// The variables' prefix of a provider with workspaces (`JIRA_DC` for `jira_dc`).
fn prefix_of(provider: &str) -> &'static str {
    PROVIDERS.iter().find(|(p, ..)| *p == provider).map_or("LINEAR", |(.., prefix)| prefix)
}

/// The routes of a provider with workspaces (all for signed-in users).
pub(crate) fn routes(slug: &str) -> Vec<(&'static str, String)> {
    vec![
        ("POST", format!("/integration/{slug}/workspaces")),
        ("POST", format!("/integration/{slug}/workspaces/link")),
        ("GET", format!("/integration/{slug}/workspaces/link")),
        ("POST", format!("/integration/{slug}/workspaces/unlink")),
        ("GET", format!("/integration/{slug}/workspaces/validate/{{workspace_name}}")),
        ("GET", format!("/integration/{slug}/callback")),
    ]
}

/// A provider's OAuth app and where its APIs are.
struct App {
    provider: &'static str,
    label: &'static str,
    client_id: String,
    client_secret: String,
    authorize_url: String,
    token_url: String,
    scope: &'static str,
    /// Jira Cloud: the platform API (`https://api.atlassian.com`); Jira DC: the server;
    /// Linear: its API.
    api: String,
}

/// The routes of a provider whose OAuth app is not configured: no link and no workspace
/// (so the web client shows its form), and a 503 naming the settings for the rest.
pub(crate) fn without_app(provider: &str, slug: &str, request: &HttpRequest) -> HttpResponse {
    let rest = request.path.trim_start_matches(&format!("/integration/{slug}"));
    if request.method == "GET" && (rest == "/workspaces/link" || rest.starts_with("/workspaces/validate/")) {
        return detail(404, format!("{provider} has no registered workspaces on this server"));
    }
    let prefix = prefix_of(provider);
    detail(
        503,
        format!(
            "{provider} workspaces need the server's OAuth app: set {prefix}_CLIENT_ID and {prefix}_CLIENT_SECRET \
             ({provider}.oauth_client_id and oauth_client_secret in the integrations config)"
        ),
    )
}

/// A registered workspace, its secrets opened.
pub(crate) struct Workspace {
    pub(crate) id: i64,
    pub(crate) provider: String,
    pub(crate) name: String,
    pub(crate) external_id: String,
    pub(crate) admin_user_id: String,
    pub(crate) status: String,
    pub(crate) webhook_secret: String,
    pub(crate) svc_acc_email: String,
    pub(crate) svc_acc_api_key: String,
    created_at: String,
    updated_at: String,
}

/// A workspace row, its times in ISO 8601 as OpenHands shows them.
const COLUMNS: &str = "id, provider, name, external_id, admin_user_id, status, webhook_secret, svc_acc_email, \
    svc_acc_api_key, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"') AS created_at, \
    to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"') AS updated_at";

impl Workspace {
    pub(crate) fn active(&self) -> bool {
        self.status == "active"
    }
}

pub(crate) struct Workspaces {
    db: Arc<Database>,
    keys: Keyring,
    http: reqwest::Client,
    /// This server's public origin (`Config::web_origin`).
    web_origin: Option<String>,
    apps: Vec<App>,
}

/// What the admin sends to register (or update) a workspace.
#[derive(Deserialize, serde::Serialize)]
struct Registration {
    workspace_name: String,
    webhook_secret: String,
    svc_acc_email: String,
    svc_acc_api_key: String,
    #[serde(default)]
    is_active: bool,
}

#[derive(Deserialize)]
struct LinkRequest {
    workspace_name: String,
}

/// An answer as OpenHands gives these routes': `{"detail": ...}`.
fn detail(status: u16, message: impl Into<String>) -> HttpResponse {
    json(status, &json!({ "detail": message.into() }))
}

type Refused = (u16, String);

fn valid_name(name: &str) -> Result<String, Refused> {
    let ok =
        !name.is_empty() && name.len() <= 255 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err((
            422,
            "workspace_name can only contain alphanumeric characters, hyphens, underscores, and periods".to_owned(),
        ))
    }
}

/// The host of a URL, lowercase.
fn host_of(url: &str) -> Option<String> {
    reqwest::Url::parse(url).ok()?.host_str().map(str::to_ascii_lowercase)
}

fn at<'a>(column: &'a str, owner: &'a str) -> Binding<'a> {
    Binding { table: "integration_workspaces", field: column, user_id: owner }
}

impl Workspaces {
    /// The workspaces of the enabled providers that have an OAuth app; None when there are
    /// none.
    pub(crate) fn new(
        db: Arc<Database>,
        master_key: Option<&str>,
        web_origin: Option<String>,
        sources: [&Source; 3],
    ) -> Result<Option<Workspaces>, PluginError> {
        let mut apps = Vec::new();
        for ((provider, _, prefix), source) in PROVIDERS.iter().zip(sources) {
            if !source.on() || !source.has_oauth_app() {
                continue;
            }
            let client_id = source.need(provider, "oauth_client_id", &format!("{prefix}_CLIENT_ID"))?;
            let client_secret = source.need(provider, "oauth_client_secret", &format!("{prefix}_CLIENT_SECRET"))?;
            apps.push(match *provider {
                "jira" => {
                    let auth = source.oauth("https://auth.atlassian.com");
                    let api = crate::config::url_or(&source.cloud_api_url, "https://api.atlassian.com");
                    App {
                        provider: "jira",
                        label: "Jira",
                        client_id,
                        client_secret,
                        authorize_url: format!("{auth}/authorize"),
                        token_url: format!("{auth}/oauth/token"),
                        scope: "read:me read:jira-user read:jira-work",
                        api,
                    }
                }
                "jira_dc" => {
                    let base = source.api("");
                    App {
                        provider: "jira_dc",
                        label: "Jira DC",
                        client_id,
                        client_secret,
                        authorize_url: format!("{base}/rest/oauth2/latest/authorize"),
                        token_url: format!("{base}/rest/oauth2/latest/token"),
                        scope: "READ",
                        api: base,
                    }
                }
                _ => {
                    let api = source.api("https://api.linear.app");
                    App {
                        provider: "linear",
                        label: "Linear",
                        client_id,
                        client_secret,
                        authorize_url: format!("{}/oauth/authorize", source.oauth("https://linear.app")),
                        token_url: format!("{api}/oauth/token"),
                        scope: "read",
                        api,
                    }
                }
            });
        }
        if apps.is_empty() {
            return Ok(None);
        }
        let keys = pg_common::crypto::deployment_keyring(master_key, None, None)?;
        Ok(Some(Workspaces { db, keys, http: providers::http()?, web_origin, apps }))
    }

    /// Re-seals with the current master key the secrets sealed with an earlier one (after a
    /// rotation: `OH_MASTER_KEY` new, the old one in `OH_PREVIOUS_MASTER_KEYS`). How many rows.
    pub(crate) async fn rotate_keys(&self) -> Result<u64, PluginError> {
        let pool = self.db.ready().await?;
        let mut tx = pool.begin().await.map_err(db_error)?;
        let current = format!("v1.{}.%", self.keys.current_id());
        let rows = sqlx::query(
            "SELECT id, provider, name, webhook_secret, svc_acc_api_key FROM integration_workspaces
             WHERE webhook_secret NOT LIKE $1 OR svc_acc_api_key NOT LIKE $1 FOR UPDATE",
        )
        .bind(&current)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        for row in &rows {
            let owner = format!("{}:{}", row.get::<String, _>("provider"), row.get::<String, _>("name"));
            let mut sealed = Vec::new();
            for column in ["webhook_secret", "svc_acc_api_key"] {
                let plain = self.keys.open(&row.get::<String, _>(column), &at(column, &owner))?;
                sealed.push(self.keys.seal(&plain, &at(column, &owner))?);
            }
            sqlx::query("UPDATE integration_workspaces SET webhook_secret = $2, svc_acc_api_key = $3 WHERE id = $1")
                .bind(row.get::<i64, _>("id"))
                .bind(&sealed[0])
                .bind(&sealed[1])
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        Ok(rows.len() as u64)
    }

    pub(crate) fn serves(&self, provider: &str) -> bool {
        self.apps.iter().any(|a| a.provider == provider)
    }

    fn app(&self, provider: &str) -> Option<&App> {
        self.apps.iter().find(|a| a.provider == provider)
    }

    fn open_row(&self, row: &sqlx::postgres::PgRow) -> Result<Workspace, PluginError> {
        let provider: String = row.get("provider");
        let name: String = row.get("name");
        let owner = format!("{provider}:{name}");
        let open = |column: &str| -> Result<String, PluginError> {
            let sealed: String = row.get(column);
            let plain = self.keys.open(&sealed, &at(column, &owner))?;
            String::from_utf8(plain).map_err(|_| PluginError::internal(format!("stored {column} is not text")))
        };
        Ok(Workspace {
            id: row.get("id"),
            webhook_secret: open("webhook_secret")?,
            svc_acc_api_key: open("svc_acc_api_key")?,
            provider,
            name,
            external_id: row.get("external_id"),
            admin_user_id: row.get("admin_user_id"),
            status: row.get("status"),
            svc_acc_email: row.get("svc_acc_email"),
            created_at: row.get("created_at"),
            updated_at: row.get("updated_at"),
        })
    }

    async fn find(&self, clause: &str, provider: &str, key: &str) -> Result<Option<Workspace>, PluginError> {
        let pool = self.db.ready().await?;
        let row =
            sqlx::query(&format!("SELECT {COLUMNS} FROM integration_workspaces WHERE provider = $1 AND {clause} = $2"))
                .bind(provider)
                .bind(key)
                .fetch_optional(pool)
                .await
                .map_err(db_error)?;
        row.map(|r| self.open_row(&r)).transpose()
    }

    pub(crate) async fn by_id(&self, id: i64) -> Result<Option<Workspace>, PluginError> {
        let pool = self.db.ready().await?;
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM integration_workspaces WHERE id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(db_error)?;
        row.map(|r| self.open_row(&r)).transpose()
    }

    /// The workspace a delivery comes from, if it is registered: Jira names its site in every
    /// `self` link, Linear its organization.
    pub(crate) async fn for_delivery(&self, provider: &str, payload: &Value) -> Result<Option<Workspace>, PluginError> {
        if !self.serves(provider) {
            return Ok(None);
        }
        if provider == "linear" {
            if let Some(org) = payload["organizationId"].as_str().filter(|o| !o.is_empty()) {
                if let Some(ws) = self.find("external_id", provider, org).await? {
                    return Ok(Some(ws));
                }
            }
            // https://linear.app/<urlKey>/issue/...
            let key = payload["url"]
                .as_str()
                .and_then(|u| reqwest::Url::parse(u).ok())
                .and_then(|u| u.path_segments().and_then(|mut s| s.next().map(str::to_ascii_lowercase)));
            return match key {
                Some(key) if !key.is_empty() => self.find("name", provider, &key).await,
                _ => Ok(None),
            };
        }
        let site = ["issue", "comment", "user"].iter().find_map(|k| payload[k]["self"].as_str().and_then(host_of));
        match site {
            Some(site) => self.find("name", provider, &site).await,
            None => Ok(None),
        }
    }

    /// The oh-host user linked (and active) in `workspace` as `external_user`.
    pub(crate) async fn linked_user(&self, workspace: i64, external_user: &str) -> Result<Option<String>, PluginError> {
        let pool = self.db.ready().await?;
        sqlx::query_scalar(
            "SELECT u.user_id FROM integration_workspace_users u JOIN integration_workspaces w ON w.id = u.workspace_id
             WHERE u.workspace_id = $1 AND u.external_user_id = $2 AND u.status = 'active' AND w.status = 'active'",
        )
        .bind(workspace)
        .bind(external_user)
        .fetch_optional(pool)
        .await
        .map_err(db_error)
    }

    /// Comments on an issue as the workspace's service account.
    pub(crate) async fn comment(&self, workspace: i64, target: &Value, text: &str) -> Result<(), PluginError> {
        let ws = self
            .by_id(workspace)
            .await?
            .ok_or_else(|| PluginError::internal(format!("workspace {workspace} is no longer registered")))?;
        let app = self
            .app(&ws.provider)
            .ok_or_else(|| PluginError::internal(format!("{} workspaces are not configured", ws.provider)))?;
        match ws.provider.as_str() {
            "jira" => {
                let base = format!("{}/ex/jira/{}", app.api, ws.external_id);
                let issue = target["issue"].as_str().unwrap_or("");
                providers::jira_comment(&self.http, &base, Some(&ws.svc_acc_email), &ws.svc_acc_api_key, issue, text)
                    .await
            }
            "jira_dc" => {
                let issue = target["issue"].as_str().unwrap_or("");
                providers::jira_comment(&self.http, &app.api, None, &ws.svc_acc_api_key, issue, text).await
            }
            _ => {
                let issue = target["issue_id"].as_str().unwrap_or("");
                providers::linear_comment(&self.http, &app.api, &ws.svc_acc_api_key, issue, text).await
            }
        }
    }

    /// The routes; `provider` is the one the path names.
    pub(crate) async fn handle(
        &self,
        provider: &str,
        slug: &str,
        ctx: &CallContext,
        request: &HttpRequest,
    ) -> Result<HttpResponse, PluginError> {
        let Some(app) = self.app(provider) else {
            return Ok(detail(404, format!("{provider} workspaces are not enabled on this server")));
        };
        let Some(user) = ctx.user_id() else {
            return Ok(detail(401, "sign in first"));
        };
        let rest = request.path.trim_start_matches(&format!("/integration/{slug}"));
        let answer = match (request.method.as_str(), rest) {
            ("POST", "/workspaces") => self.start(app, user, request, true).await?,
            ("POST", "/workspaces/link") => self.start(app, user, request, false).await?,
            ("GET", "/callback") => self.callback(app, user, request).await?,
            ("GET", "/workspaces/link") => self.current(app, user).await?,
            ("POST", "/workspaces/unlink") => self.unlink(app, user).await?,
            ("GET", p) if p.starts_with("/workspaces/validate/") => {
                self.validate(app, p.trim_start_matches("/workspaces/validate/")).await?
            }
            _ => Err((404, "no such route".to_owned())),
        };
        Ok(answer.unwrap_or_else(|(status, message)| detail(status, message)))
    }

    fn redirect_uri(&self, app: &App, request: &HttpRequest) -> String {
        let slug = PROVIDERS.iter().find(|(p, ..)| *p == app.provider).map_or(app.provider, |(_, slug, _)| slug);
        oauth::callback_url(self.web_origin.as_deref(), request, &format!("/integration/{slug}/callback"))
    }

    /// Registering (or updating) a workspace, or linking to one: the request is kept under a
    /// new `state`, and the user is sent to the provider to prove who they are there.
    async fn start(
        &self,
        app: &App,
        user: &str,
        request: &HttpRequest,
        register: bool,
    ) -> Result<Result<HttpResponse, Refused>, PluginError> {
        let (name, details) = if register {
            let r: Registration = match serde_json::from_slice(&request.body) {
                Ok(r) => r,
                Err(e) => {
                    return Ok(Err((
                        422,
                        format!(
                        "expected {{workspace_name, webhook_secret, svc_acc_email, svc_acc_api_key, is_active}}: {e}"
                    ),
                    )))
                }
            };
            let email_ok = r.svc_acc_email.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty() && domain.contains('.') && !r.svc_acc_email.contains(char::is_whitespace)
            });
            // Jira DC answers with a personal access token alone.
            if app.provider == "jira" && !email_ok {
                return Ok(Err((422, "svc_acc_email must be a valid email address".to_owned())));
            }
            for (field, value) in [("webhook_secret", &r.webhook_secret), ("svc_acc_api_key", &r.svc_acc_api_key)] {
                if value.is_empty() || value.contains(char::is_whitespace) {
                    return Ok(Err((422, format!("{field} must be set and cannot contain spaces"))));
                }
            }
            let name = match valid_name(&r.workspace_name) {
                Ok(n) => n,
                Err(e) => return Ok(Err(e)),
            };
            let plain = serde_json::to_vec(&r).map_err(|e| PluginError::internal(e.to_string()))?;
            (name, Some(plain))
        } else {
            let r: LinkRequest = match serde_json::from_slice(&request.body) {
                Ok(r) => r,
                Err(e) => return Ok(Err((422, format!("expected {{workspace_name}}: {e}")))),
            };
            match valid_name(&r.workspace_name) {
                Ok(n) => (n, None),
                Err(e) => return Ok(Err(e)),
            }
        };
        let operation = if register { "workspace_integration" } else { "workspace_link" };
        let state =
            oauth::begin(&self.db, Some(&self.keys), user, app.provider, operation, &name, details.as_deref()).await?;
        let mut params = vec![
            ("client_id", app.client_id.as_str()),
            ("scope", app.scope),
            ("state", state.as_str()),
            ("response_type", "code"),
        ];
        let redirect_uri = self.redirect_uri(app, request);
        params.push(("redirect_uri", &redirect_uri));
        if app.provider == "jira" {
            params.extend([("audience", "api.atlassian.com"), ("prompt", "consent")]);
        }
        let url = reqwest::Url::parse_with_params(&app.authorize_url, &params)
            .map_err(|e| PluginError::internal(format!("{} authorize URL: {e}", app.label)))?;
        Ok(Ok(json(200, &json!({ "success": true, "redirect": true, "authorizationUrl": url.as_str() }))))
    }

    /// The provider sends the user back: who they are there, then what they asked for.
    async fn callback(
        &self,
        app: &App,
        user: &str,
        request: &HttpRequest,
    ) -> Result<Result<HttpResponse, Refused>, PluginError> {
        let (code, pending) =
            match oauth::finish(&self.db, Some(&self.keys), app.provider, app.label, user, &request.query).await? {
                Ok(taken) => taken,
                Err(refused) => return Ok(Err(refused)),
            };
        let name = pending.name;
        let identity = match self.identify(app, &code, &self.redirect_uri(app, request), &name).await? {
            Ok(i) => i,
            Err(e) => return Ok(Err(e)),
        };
        let pool = self.db.ready().await?;
        let mut tx = pool.begin().await.map_err(db_error)?;
        let outcome = if pending.operation == "workspace_integration" {
            let plain = pending.details.unwrap_or_default();
            let r: Registration = serde_json::from_slice(&plain)
                .map_err(|e| PluginError::internal(format!("stored registration: {e}")))?;
            self.register(&mut tx, app, user, &name, &identity, &r).await?
        } else {
            self.link(&mut tx, app, user, &name, &identity.user).await?
        };
        if let Err(e) = outcome {
            tx.rollback().await.map_err(db_error)?;
            return Ok(Err(e));
        }
        let action =
            if pending.operation == "workspace_integration" { "workspace_registered" } else { "workspace_linked" };
        let detail = json!({ "workspace": name, "user_id": user, "external_user": identity.user });
        crate::inbox::record(&mut *tx, app.provider, None, action, detail).await?;
        tx.commit().await.map_err(db_error)?;
        tracing::info!(provider = app.provider, workspace = name, user, "workspace linked");
        Ok(Ok(redirect("/settings/integrations".to_owned())))
    }

    /// Exchanges the code and reads who signed in, and that they belong to `name`.
    async fn identify(
        &self,
        app: &App,
        code: &str,
        redirect_uri: &str,
        name: &str,
    ) -> Result<Result<Identity, Refused>, PluginError> {
        let form = [
            ("grant_type", "authorization_code"),
            ("client_id", app.client_id.as_str()),
            ("client_secret", app.client_secret.as_str()),
            ("code", code),
            ("redirect_uri", redirect_uri),
        ];
        let request = self.http.post(&app.token_url);
        // Atlassian's token endpoint takes JSON; Jira DC's and Linear's a form.
        let request = if app.provider == "jira" {
            request.json(&form.iter().copied().collect::<std::collections::HashMap<_, _>>())
        } else {
            request.form(&form)
        };
        let what = format!("{} token", app.label);
        let r = request.send().await.map_err(|e| providers::unreachable(&what, e))?;
        if !r.status().is_success() {
            let status = r.status();
            let body: String = r.text().await.unwrap_or_default().chars().take(200).collect();
            return Ok(Err((400, format!("Error fetching token: {status} {body}"))));
        }
        let token: Value = r.json().await.map_err(|e| providers::unreachable(&what, e))?;
        let Some(token) = token["access_token"].as_str() else {
            return Ok(Err((400, format!("{what}: the answer has no access_token"))));
        };
        let get = |url: String| self.http.get(url).bearer_auth(token).header("accept", "application/json");
        let refused = |what: &str| (401, format!("User is not authorized to access workspace: {name} ({what})"));
        match app.provider {
            "jira" => {
                let sites =
                    match json_of("Jira sites", get(format!("{}/oauth/token/accessible-resources", app.api))).await? {
                        Ok(v) => v,
                        Err(e) => return Ok(Err(e)),
                    };
                let site = sites
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|s| s["url"].as_str().and_then(host_of).as_deref() == Some(name));
                let Some(cloud_id) = site.and_then(|s| s["id"].as_str()) else {
                    return Ok(Err(refused("not among the sites this account can reach")));
                };
                let me = match json_of("Jira user", get(format!("{}/me", app.api))).await? {
                    Ok(v) => v,
                    Err(e) => return Ok(Err(e)),
                };
                match me["account_id"].as_str() {
                    Some(id) => Ok(Ok(Identity { workspace: cloud_id.to_owned(), user: id.to_owned() })),
                    None => Ok(Err((400, "Error fetching user info: no account_id".to_owned()))),
                }
            }
            "jira_dc" => {
                if host_of(&app.api).as_deref() != Some(name) {
                    return Ok(Err(refused(&format!("this server's Jira Data Center is {}", app.api))));
                }
                let me = match json_of("Jira DC user", get(format!("{}/rest/api/2/myself", app.api))).await? {
                    Ok(v) => v,
                    Err(e) => return Ok(Err(e)),
                };
                match me["key"].as_str().or_else(|| me["name"].as_str()) {
                    Some(key) => Ok(Ok(Identity { workspace: String::new(), user: key.to_owned() })),
                    None => Ok(Err((400, "Error fetching user info: no key".to_owned()))),
                }
            }
            _ => {
                let query = json!({ "query": "query { viewer { id email organization { id name urlKey } } }" });
                let request = self.http.post(format!("{}/graphql", app.api)).bearer_auth(token).json(&query);
                let viewer = match json_of("Linear viewer", request).await? {
                    Ok(v) => v,
                    Err(e) => return Ok(Err(e)),
                };
                let v = &viewer["data"]["viewer"];
                let org = &v["organization"];
                if org["urlKey"].as_str().map(str::to_ascii_lowercase).as_deref() != Some(name) {
                    return Ok(Err(refused("the account belongs to another organization")));
                }
                match (v["id"].as_str(), org["id"].as_str()) {
                    (Some(user), Some(org)) => Ok(Ok(Identity { workspace: org.to_owned(), user: user.to_owned() })),
                    _ => Ok(Err((400, "Error fetching user info: no viewer id".to_owned()))),
                }
            }
        }
    }

    /// A new workspace for the admin, or new details for theirs; then they are linked to it.
    async fn register(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        app: &App,
        user: &str,
        name: &str,
        identity: &Identity,
        r: &Registration,
    ) -> Result<Result<(), Refused>, PluginError> {
        let owner = format!("{}:{name}", app.provider);
        let secret = self.keys.seal(r.webhook_secret.as_bytes(), &at("webhook_secret", &owner))?;
        let key = self.keys.seal(r.svc_acc_api_key.as_bytes(), &at("svc_acc_api_key", &owner))?;
        let status = if r.is_active { "active" } else { "inactive" };
        let existing = sqlx::query(
            "SELECT id, admin_user_id FROM integration_workspaces WHERE provider = $1 AND name = $2 FOR UPDATE",
        )
        .bind(app.provider)
        .bind(name)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_error)?;
        match existing {
            None => {
                let id: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO integration_workspaces
                        (provider, name, external_id, admin_user_id, webhook_secret, svc_acc_email, svc_acc_api_key, status)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (provider, name) DO NOTHING RETURNING id",
                )
                .bind(app.provider)
                .bind(name)
                .bind(&identity.workspace)
                .bind(user)
                .bind(&secret)
                .bind(&r.svc_acc_email)
                .bind(&key)
                .bind(status)
                .fetch_optional(&mut **tx)
                .await
                .map_err(db_error)?;
                if id.is_none() {
                    return Ok(Err((409, format!("Workspace \"{name}\" was registered meanwhile: try again"))));
                }
            }
            Some(row) => {
                let id: i64 = row.get("id");
                if row.get::<String, _>("admin_user_id") != user {
                    return Ok(Err((403, "You do not have permission to update this workspace".to_owned())));
                }
                if active_workspace(tx, app.provider, user).await?.is_some_and(|c| c != id) {
                    return Ok(Err((403, "You can only update the workspace you are currently linked to".to_owned())));
                }
                sqlx::query(
                    "UPDATE integration_workspaces SET external_id = $2, webhook_secret = $3, svc_acc_email = $4,
                        svc_acc_api_key = $5, status = $6, updated_at = now() WHERE id = $1",
                )
                .bind(id)
                .bind(&identity.workspace)
                .bind(&secret)
                .bind(&r.svc_acc_email)
                .bind(&key)
                .bind(status)
                .execute(&mut **tx)
                .await
                .map_err(db_error)?;
            }
        }
        // An inactive workspace takes no links yet: its admin turns it on by registering again.
        if !r.is_active {
            return Ok(Ok(()));
        }
        self.link(tx, app, user, name, &identity.user).await
    }

    /// Links the user, as `external_user`, to the active workspace `name`: once per
    /// provider (unlink first to change), a previous link to it revived.
    async fn link(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        app: &App,
        user: &str,
        name: &str,
        external_user: &str,
    ) -> Result<Result<(), Refused>, PluginError> {
        let ws = sqlx::query("SELECT id, status FROM integration_workspaces WHERE provider = $1 AND name = $2")
            .bind(app.provider)
            .bind(name)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_error)?;
        let Some(ws) = ws else {
            return Ok(Err((404, format!("Workspace \"{name}\" not found"))));
        };
        if ws.get::<String, _>("status") != "active" {
            return Ok(Err((400, format!("Workspace \"{name}\" is not active"))));
        }
        let id: i64 = ws.get("id");
        let current = active_workspace(tx, app.provider, user).await?;
        const ALREADY: &str = "You already have an active workspace link. Please unlink from your current workspace before linking to a different one.";
        if current.is_some_and(|c| c != id) {
            return Ok(Err((400, ALREADY.to_owned())));
        }
        let linked = sqlx::query(
            "INSERT INTO integration_workspace_users (provider, user_id, workspace_id, external_user_id, status)
             VALUES ($1, $2, $3, $4, 'active')
             ON CONFLICT (user_id, workspace_id) DO UPDATE
                SET status = 'active', external_user_id = EXCLUDED.external_user_id, updated_at = now()",
        )
        .bind(app.provider)
        .bind(user)
        .bind(id)
        .bind(external_user)
        .execute(&mut **tx)
        .await;
        match linked {
            Ok(_) => Ok(Ok(())),
            // Another link of this user became active meanwhile (the one-active index).
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(Err((400, ALREADY.to_owned()))),
            Err(e) => Err(db_error(e)),
        }
    }

    /// The user's active link and its workspace (OpenHands' `JiraUserResponse` shape).
    async fn current(&self, app: &App, user: &str) -> Result<Result<HttpResponse, Refused>, PluginError> {
        let pool = self.db.ready().await?;
        let row = sqlx::query(
            "SELECT id, workspace_id, status,
                to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"') AS created_at,
                to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"') AS updated_at
             FROM integration_workspace_users WHERE provider = $1 AND user_id = $2 AND status = 'active'",
        )
        .bind(app.provider)
        .bind(user)
        .fetch_optional(pool)
        .await
        .map_err(db_error)?;
        let Some(link) = row else {
            return Ok(Err((404, format!("User is not registered for {} integration", app.label))));
        };
        let Some(ws) = self.by_id(link.get("workspace_id")).await? else {
            return Ok(Err((404, "Workspace not found for the user".to_owned())));
        };
        let p = app.provider;
        let mut workspace = json!({
            "id": ws.id, "name": ws.name, "status": ws.status, "editable": ws.admin_user_id == user,
            "created_at": ws.created_at, "updated_at": ws.updated_at,
        });
        match p {
            "jira" => workspace["jira_cloud_id"] = json!(ws.external_id),
            "linear" => workspace["linear_org_id"] = json!(ws.external_id),
            _ => {}
        }
        let mut body = json!({
            "id": link.get::<i64, _>("id"), "keycloak_user_id": user, "status": link.get::<String, _>("status"),
            "created_at": link.get::<String, _>("created_at"), "updated_at": link.get::<String, _>("updated_at"),
            "workspace": workspace,
        });
        body[format!("{p}_workspace_id")] = json!(ws.id);
        Ok(Ok(json(200, &body)))
    }

    /// A user leaves their workspace; its admin leaving turns it off (and every link to it).
    async fn unlink(&self, app: &App, user: &str) -> Result<Result<HttpResponse, Refused>, PluginError> {
        let pool = self.db.ready().await?;
        let mut tx = pool.begin().await.map_err(db_error)?;
        let row = sqlx::query(
            "SELECT u.workspace_id, w.admin_user_id FROM integration_workspace_users u
             JOIN integration_workspaces w ON w.id = u.workspace_id
             WHERE u.provider = $1 AND u.user_id = $2 AND u.status = 'active' FOR UPDATE OF u, w",
        )
        .bind(app.provider)
        .bind(user)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        let Some(row) = row else {
            return Ok(Err((404, format!("User is not registered for {} integration", app.label))));
        };
        let id: i64 = row.get("workspace_id");
        let admin = row.get::<String, _>("admin_user_id") == user;
        let action = if admin { "workspace_deactivated" } else { "workspace_unlinked" };
        crate::inbox::record(&mut *tx, app.provider, None, action, json!({ "workspace_id": id, "user_id": user }))
            .await?;
        if admin {
            for sql in [
                "UPDATE integration_workspaces SET status = 'inactive', updated_at = now() WHERE id = $1",
                "UPDATE integration_workspace_users SET status = 'inactive', updated_at = now() WHERE workspace_id = $1 AND status = 'active'",
            ] {
                sqlx::query(sql).bind(id).execute(&mut *tx).await.map_err(db_error)?;
            }
        } else {
            sqlx::query(
                "UPDATE integration_workspace_users SET status = 'inactive', updated_at = now() WHERE workspace_id = $1 AND user_id = $2",
            )
            .bind(id)
            .bind(user)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        Ok(Ok(json(200, &json!({ "success": true }))))
    }

    async fn validate(&self, app: &App, name: &str) -> Result<Result<HttpResponse, Refused>, PluginError> {
        let name = match valid_name(name) {
            Ok(n) => n,
            Err((_, message)) => return Ok(Err((400, message))),
        };
        match self.find("name", app.provider, &name).await? {
            None => Ok(Err((404, format!("Workspace with name '{name}' not found")))),
            Some(ws) if !ws.active() => Ok(Err((404, format!("Workspace '{}' is not active", ws.name)))),
            Some(ws) => Ok(Ok(json(
                200,
                &json!({ "name": ws.name, "status": ws.status, "message": "Workspace integration is active" }),
            ))),
        }
    }
}

/// The workspace `user` is actively linked to at `provider` (the link locked).
async fn active_workspace(
    tx: &mut Transaction<'_, Postgres>,
    provider: &str,
    user: &str,
) -> Result<Option<i64>, PluginError> {
    sqlx::query_scalar(
        "SELECT workspace_id FROM integration_workspace_users WHERE provider = $1 AND user_id = $2 AND status = 'active' FOR UPDATE",
    )
    .bind(provider)
    .bind(user)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db_error)
}

/// Who signed in at the provider: the workspace's id there (Jira Cloud's cloud id, Linear's
/// organization id) and theirs.
struct Identity {
    workspace: String,
    user: String,
}

/// A provider's JSON answer; a refusal is a 400 the user sees, an unreachable provider 503.
async fn json_of(what: &str, request: reqwest::RequestBuilder) -> Result<Result<Value, Refused>, PluginError> {
    let r = request.send().await.map_err(|e| providers::unreachable(what, e))?;
    let status = r.status();
    if !status.is_success() {
        let body: String = r.text().await.unwrap_or_default().chars().take(200).collect();
        return Ok(Err((400, format!("Error fetching {what}: {status} {body}"))));
    }
    r.json().await.map(Ok).map_err(|e| providers::unreachable(what, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_names_are_checked_and_folded() {
        assert_eq!(valid_name("Acme.atlassian.net").unwrap(), "acme.atlassian.net");
        assert_eq!(valid_name("my_org-2").unwrap(), "my_org-2");
        for bad in ["", "a b", "a/b", "x?y", &"a".repeat(256)] {
            assert_eq!(valid_name(bad).unwrap_err().0, 422, "{bad:?}");
        }
        assert_eq!(host_of("https://Acme.atlassian.net/rest/api/2/issue/1").as_deref(), Some("acme.atlassian.net"));
        assert_eq!(host_of("not a url"), None);
    }
}
