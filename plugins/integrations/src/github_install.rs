//! The GitHub App's installation flow, as OpenHands' "install the GitHub App" link: a signed-in
//! user goes to `GET /integration/github/install`, which sends them to GitHub's
//! `{web_url}/apps/{slug}/installations/new` with a one-time `state`; GitHub brings them back to
//! the App's Setup URL, `GET /integration/github/install-callback?installation_id&setup_action&state`,
//! where the installation is checked with GitHub (as the App) and linked to the user
//! (`github_installations`). `GET /api/integrations/github/installations` lists the user's.
//! GitHub's own `GET /user/installations`, which the repository picker reads, shows it too.

use crate::{oauth, providers::GitHub};
use pg_common::{db_error, Database};
use plugin_sdk::{
    http::{json, query_param, redirect},
    CallContext, HttpRequest, HttpResponse, PluginError,
};
use serde_json::json;
use sqlx::Row;
use std::sync::Arc;

pub(crate) const START: &str = "/integration/github/install";
pub(crate) const CALLBACK: &str = "/integration/github/install-callback";
pub(crate) const LIST: &str = "/api/integrations/github/installations";

pub(crate) struct GitHubInstall {
    db: Arc<Database>,
    /// Where users install the App: `{web_url}/apps/{slug}/installations/new`.
    install_url: String,
}

fn detail(status: u16, message: impl Into<String>) -> HttpResponse {
    json(status, &json!({ "detail": message.into() }))
}

impl GitHubInstall {
    pub(crate) fn new(db: Arc<Database>, web_url: &str, slug: &str) -> GitHubInstall {
        GitHubInstall { db, install_url: format!("{}/apps/{slug}/installations/new", web_url.trim_end_matches('/')) }
    }

    pub(crate) async fn handle(
        &self,
        github: Option<&GitHub>,
        ctx: &CallContext,
        request: &HttpRequest,
    ) -> Result<HttpResponse, PluginError> {
        let Some(user) = ctx.user_id() else {
            return Ok(detail(401, "sign in to OpenHands first, then open this link again"));
        };
        match request.path.as_str() {
            START => {
                let state = oauth::begin(&self.db, None, user, "github_install", "github_install", "", None).await?;
                let url = reqwest::Url::parse_with_params(&self.install_url, [("state", state.as_str())])
                    .map_err(|e| PluginError::internal(format!("GitHub install URL: {e}")))?;
                Ok(redirect(url.to_string()))
            }
            CALLBACK => self.callback(github, user, &request.query).await,
            _ => self.list(user).await,
        }
    }

    async fn callback(&self, github: Option<&GitHub>, user: &str, query: &str) -> Result<HttpResponse, PluginError> {
        let Some(state) = query_param(query, "state") else {
            return Ok(detail(400, "the callback needs `state` (start at /integration/github/install)"));
        };
        if let Err((status, message)) = oauth::take(&self.db, None, "github_install", user, &state).await? {
            return Ok(detail(status, message));
        }
        let Some(id) = query_param(query, "installation_id").and_then(|i| i.parse::<i64>().ok()) else {
            return Ok(detail(
                400,
                "GitHub sent no installation_id (was the installation requested but not approved?)",
            ));
        };
        let Some(github) = github else {
            return Ok(detail(503, "the GitHub App is not configured (GITHUB_APP_CLIENT_ID, GITHUB_APP_PRIVATE_KEY)"));
        };
        // Asked as the App: only a real installation of this App is linked.
        let Some(installation) = github.installation(id).await? else {
            return Ok(detail(404, format!("GitHub knows no installation {id} of this App")));
        };
        let (login, kind) = (
            installation["account"]["login"].as_str().unwrap_or(""),
            installation["account"]["type"].as_str().unwrap_or("User"),
        );
        let pool = self.db.ready().await?;
        sqlx::query(
            "INSERT INTO github_installations (installation_id, account_login, account_type, user_id) VALUES ($1, $2, $3, $4)
             ON CONFLICT (installation_id) DO UPDATE SET account_login = EXCLUDED.account_login,
                 account_type = EXCLUDED.account_type, user_id = EXCLUDED.user_id, updated_at = now()",
        )
        .bind(id)
        .bind(login)
        .bind(kind)
        .bind(user)
        .execute(pool)
        .await
        .map_err(db_error)?;
        let setup = query_param(query, "setup_action").unwrap_or_default();
        tracing::info!(installation = id, account = login, user, setup, "GitHub App installed");
        let detail = json!({ "installation_id": id, "account": login, "user_id": user, "setup_action": setup });
        crate::inbox::record(pool, "github", None, "installed", detail).await?;
        Ok(redirect("/settings/integrations?github=installed".to_owned()))
    }

    async fn list(&self, user: &str) -> Result<HttpResponse, PluginError> {
        let pool = self.db.ready().await?;
        let rows = sqlx::query(
            "SELECT installation_id, account_login, account_type FROM github_installations WHERE user_id = $1
             ORDER BY installed_at",
        )
        .bind(user)
        .fetch_all(pool)
        .await
        .map_err(db_error)?;
        let list: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({ "installation_id": r.get::<i64, _>(0), "account": r.get::<String, _>(1),
                        "account_type": r.get::<String, _>(2) })
            })
            .collect();
        Ok(json(200, &json!({ "installations": list })))
    }
}
