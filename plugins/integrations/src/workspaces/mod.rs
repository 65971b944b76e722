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

pub(crate) use crate::config::WORKSPACE_PROVIDERS as PROVIDERS;

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

impl App {
    /// The OAuth app, for `oauth_client` (the label names its token endpoint in errors and
    /// metrics).
    fn oauth<'a>(&'a self, label: &'a str) -> oauth_client::Provider<'a> {
        oauth_client::Provider {
            label,
            client_id: &self.client_id,
            client_secret: &self.client_secret,
            authorize_url: &self.authorize_url,
            token_url: &self.token_url,
        }
    }
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
}

mod routes;

#[cfg(test)]
mod tests;
