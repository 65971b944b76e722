//! A Slack user links their Slack identity to their OpenHands account by signing in with
//! Slack (OpenID Connect), as OpenHands' Slack integration sends them through Slack's OAuth:
//! `GET /slack/link` (signed in to OpenHands) sends them to Slack; `GET /slack/link/callback`
//! reads who they are there (`openid.connect.userInfo`) and links that Slack user id.

use crate::{oauth, providers};
use pg_common::{db_error, Database};
use plugin_sdk::{
    http::{json, redirect},
    CallContext, HttpRequest, HttpResponse, PluginError,
};
use serde_json::{json, Value};
use std::sync::Arc;

pub(crate) const START: &str = "/slack/link";
pub(crate) const CALLBACK: &str = "/slack/link/callback";

pub(crate) struct SlackLink {
    db: Arc<Database>,
    http: reqwest::Client,
    client_id: String,
    client_secret: String,
    /// Where users authorize (`https://slack.com`).
    oauth: String,
    /// Slack's Web API (`https://slack.com/api`).
    api: String,
    /// This server's public origin (`Config::web_origin`).
    web_origin: Option<String>,
}

fn detail(status: u16, message: impl Into<String>) -> HttpResponse {
    json(status, &json!({ "detail": message.into() }))
}

impl SlackLink {
    pub(crate) fn new(
        db: Arc<Database>,
        client_id: String,
        client_secret: String,
        oauth: String,
        api: String,
        web_origin: Option<String>,
    ) -> Result<SlackLink, PluginError> {
        Ok(SlackLink { db, http: providers::http()?, client_id, client_secret, oauth, api, web_origin })
    }

    /// Where a user goes to link (in the note to an unlinked Slack user).
    pub(crate) fn link_url(&self) -> Option<String> {
        self.web_origin.as_deref().map(|origin| format!("{origin}{START}"))
    }

    fn redirect_uri(&self, request: &HttpRequest) -> String {
        oauth::callback_url(self.web_origin.as_deref(), request, CALLBACK)
    }

    pub(crate) async fn handle(&self, ctx: &CallContext, request: &HttpRequest) -> Result<HttpResponse, PluginError> {
        let Some(user) = ctx.user_id() else {
            return Ok(detail(401, "sign in to OpenHands first, then open this link again"));
        };
        if request.path == START {
            let params = [("response_type", "code"), ("scope", "openid profile"), ("client_id", &self.client_id)];
            let authorize = format!("{}/openid/connect/authorize", self.oauth);
            let redirect_uri = self.redirect_uri(request);
            return oauth::authorize_redirect(
                &self.db,
                user,
                "slack_link",
                "Slack",
                &authorize,
                &params,
                &redirect_uri,
            )
            .await;
        }
        let code = match oauth::finish(&self.db, None, "slack_link", "Slack", user, &request.query).await? {
            Ok((code, _)) => code,
            Err((status, message)) => return Ok(detail(status, message)),
        };
        let form = [
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.as_str()),
            ("code", code.as_str()),
            ("redirect_uri", &self.redirect_uri(request)),
            ("grant_type", "authorization_code"),
        ];
        let what = "Slack openid.connect.token";
        let token: Value =
            providers::send(what, self.http.post(format!("{}/openid.connect.token", self.api)).form(&form))
                .await?
                .json()
                .await
                .map_err(|e| providers::unreachable(what, e))?;
        let Some(access) = token["access_token"].as_str().filter(|_| token["ok"] == true) else {
            return Ok(detail(
                400,
                format!("Slack refused the code: {}", token["error"].as_str().unwrap_or("no token")),
            ));
        };
        let what = "Slack openid.connect.userInfo";
        let me: Value =
            providers::send(what, self.http.get(format!("{}/openid.connect.userInfo", self.api)).bearer_auth(access))
                .await?
                .json()
                .await
                .map_err(|e| providers::unreachable(what, e))?;
        let Some(slack_user) = me["https://slack.com/user_id"].as_str().or_else(|| me["sub"].as_str()) else {
            return Ok(detail(400, "Slack did not say who signed in"));
        };
        let pool = self.db.ready().await?;
        sqlx::query(
            "INSERT INTO integration_links (provider, external_id, user_id) VALUES ('slack', $1, $2)
             ON CONFLICT (provider, external_id) DO UPDATE SET user_id = EXCLUDED.user_id",
        )
        .bind(slack_user)
        .bind(user)
        .execute(pool)
        .await
        .map_err(db_error)?;
        tracing::info!(slack_user, user, "Slack identity linked");
        let detail = json!({ "external_id": slack_user, "user_id": user, "through": "sign in with Slack" });
        crate::inbox::record(pool, "slack", None, "linked", detail).await?;
        Ok(redirect("/settings/integrations".to_owned()))
    }
}
