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

/// The Slack app of the deployment (its OAuth credentials), shared by the link flow here and
/// the installation flow (`slack_install.rs`).
pub(crate) struct SlackLink {
    pub(crate) db: Arc<Database>,
    pub(crate) http: reqwest::Client,
    client_id: String,
    client_secret: String,
    /// Where users authorize (`https://slack.com`).
    oauth: String,
    /// Slack's Web API (`https://slack.com/api`).
    pub(crate) api: String,
    /// This server's public origin (`Config::web_origin`).
    web_origin: Option<String>,
}

/// One of the app's OAuth flows: its state's tag, Slack's authorize path and token method,
/// what it asks for, and where Slack sends the browser back.
pub(crate) struct Flow {
    pub(crate) tag: &'static str,
    pub(crate) authorize: &'static str,
    pub(crate) token: &'static str,
    pub(crate) params: &'static [(&'static str, &'static str)],
    pub(crate) callback: &'static str,
}

const LINK: Flow = Flow {
    tag: "slack_link",
    authorize: "/openid/connect/authorize",
    token: "openid.connect.token",
    params: &[("scope", "openid profile")],
    callback: CALLBACK,
};

pub(crate) fn detail(status: u16, message: impl Into<String>) -> HttpResponse {
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

    /// Sends the browser to Slack's consent for `flow`.
    pub(crate) async fn start(
        &self,
        flow: &Flow,
        user: &str,
        request: &HttpRequest,
    ) -> Result<HttpResponse, PluginError> {
        let redirect_uri = oauth::callback_url(self.web_origin.as_deref(), request, flow.callback);
        let urls = self.endpoints(flow);
        oauth::authorize_redirect(&self.db, user, flow.tag, &self.app(&urls), flow.params, &redirect_uri).await
    }

    /// `flow`'s authorization URL and token method.
    fn endpoints(&self, flow: &Flow) -> (String, String) {
        (format!("{}{}", self.oauth, flow.authorize), format!("{}/{}", self.api, flow.token))
    }

    /// The app at `urls` (see [`Self::endpoints`]).
    fn app<'a>(&'a self, urls: &'a (String, String)) -> oauth_client::Provider<'a> {
        oauth_client::Provider {
            label: "Slack",
            client_id: &self.client_id,
            client_secret: &self.client_secret,
            authorize_url: &urls.0,
            token_url: &urls.1,
        }
    }

    /// Slack's answer to the callback's code (its token method), or what to answer instead.
    pub(crate) async fn exchange(
        &self,
        flow: &Flow,
        user: &str,
        request: &HttpRequest,
    ) -> Result<Result<oauth_client::Tokens, HttpResponse>, PluginError> {
        let code = match oauth::finish(&self.db, None, flow.tag, "Slack", user, &request.query).await? {
            Ok((code, _)) => code,
            Err((status, message)) => return Ok(Err(detail(status, message))),
        };
        let redirect_uri = oauth::callback_url(self.web_origin.as_deref(), request, flow.callback);
        let urls = self.endpoints(flow);
        match providers::exchange_code(&self.http, &self.app(&urls), &code, &redirect_uri).await? {
            Ok(tokens) => Ok(Ok(tokens)),
            Err(why) => Ok(Err(detail(400, why))),
        }
    }

    pub(crate) async fn handle(&self, ctx: &CallContext, request: &HttpRequest) -> Result<HttpResponse, PluginError> {
        let Some(user) = ctx.user_id() else {
            return Ok(detail(401, "sign in to OpenHands first, then open this link again"));
        };
        if request.path == START {
            return self.start(&LINK, user, request).await;
        }
        let token = match self.exchange(&LINK, user, request).await? {
            Ok(token) => token,
            Err(answer) => return Ok(answer),
        };
        let access = token.access();
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
