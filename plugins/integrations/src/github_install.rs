//! The GitHub App's installation flow, as OpenHands' "install the GitHub App" link: a signed-in
//! user goes to `GET /integration/github/install`, which sends them to GitHub's
//! `{web_url}/apps/{slug}/installations/new` with a one-time `state`; GitHub brings them back to
//! the App's Setup URL, `GET /integration/github/install-callback?installation_id&setup_action&state`,
//! where the installation is checked with GitHub (as the App) and linked to the user
//! (`github_installations`). `GET /api/integrations/github/installations` lists the user's.
//! GitHub's own `GET /user/installations`, which the repository picker reads, shows it too.
//!
//! The web client links straight to GitHub's install page, without a `state`. With the App's
//! "Request user authorization (OAuth) during installation" on, GitHub then brings a `code`
//! instead: it is exchanged (the App's OAuth credentials) for the GitHub user's token, and the
//! installation is linked only if that GitHub user can reach it (`GET /user/installations`).

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
    /// The App's OAuth credentials (GITHUB_APP_CLIENT_ID, GITHUB_APP_CLIENT_SECRET), its token
    /// endpoint and GitHub's API: for a callback that brings a `code` instead of a `state`.
    oauth: Option<AppOAuth>,
}

pub(crate) struct AppOAuth {
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
    pub(crate) token_url: String,
    pub(crate) api: String,
    pub(crate) http: reqwest::Client,
}

fn detail(status: u16, message: impl Into<String>) -> HttpResponse {
    json(status, &json!({ "detail": message.into() }))
}

impl GitHubInstall {
    pub(crate) fn new(db: Arc<Database>, web_url: &str, slug: &str, oauth: Option<AppOAuth>) -> GitHubInstall {
        let install_url = format!("{}/apps/{slug}/installations/new", web_url.trim_end_matches('/'));
        GitHubInstall { db, install_url, oauth }
    }

    /// Whether the GitHub user who authorized `code` can reach installation `id`.
    async fn reaches(&self, code: &str, id: i64) -> Result<Result<(), (u16, String)>, PluginError> {
        let Some(app) = &self.oauth else {
            return Ok(Err((
                400,
                "the callback brought no `state`, and the App's OAuth credentials (GITHUB_APP_CLIENT_SECRET) are not configured to check its `code`: start at /integration/github/install".to_owned(),
            )));
        };
        let provider = oauth_client::Provider {
            label: "GitHub token",
            client_id: &app.client_id,
            client_secret: &app.client_secret,
            authorize_url: "",
            token_url: &app.token_url,
        };
        let token = match crate::providers::exchange_code(&app.http, &provider, code, "").await? {
            Ok(tokens) => tokens,
            Err(why) => return Ok(Err((400, why))),
        };
        let what = "GitHub user installations";
        let request = app
            .http
            .get(format!("{}/user/installations", app.api))
            .bearer_auth(token.access())
            .header("accept", "application/vnd.github+json")
            .query(&[("per_page", "100")]);
        let answer: serde_json::Value = crate::providers::send(what, request)
            .await?
            .json()
            .await
            .map_err(|e| crate::providers::unreachable(what, e))?;
        let ids = answer["installations"].as_array().into_iter().flatten().filter_map(|i| i["id"].as_i64());
        if ids.into_iter().any(|i| i == id) {
            Ok(Ok(()))
        } else {
            Ok(Err((403, format!("the GitHub account that signed in cannot reach installation {id}"))))
        }
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
        let Some(id) = query_param(query, "installation_id").and_then(|i| i.parse::<i64>().ok()) else {
            return Ok(detail(
                400,
                "GitHub sent no installation_id (was the installation requested but not approved?)",
            ));
        };
        // Started here (a one-time state), or at GitHub's page (the user's code proves it).
        let proven = match (query_param(query, "state").filter(|s| !s.is_empty()), query_param(query, "code")) {
            (Some(state), _) => oauth::take(&self.db, None, "github_install", user, &state).await?.map(drop),
            (None, Some(code)) => self.reaches(&code, id).await?,
            (None, None) => Err((
                400,
                "the callback needs `state` (start at /integration/github/install) or GitHub's `code`".to_owned(),
            )),
        };
        if let Err((status, message)) = proven {
            return Ok(detail(status, message));
        }
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
