//! The Slack app installed per workspace (team), as OpenHands' `/slack/install`: a workspace's
//! admin, signed in to OpenHands, goes to `GET /slack/install`, approves the app in Slack (OAuth
//! v2), and `GET /slack/install-callback` exchanges the code (`oauth.v2.access`) for that
//! team's bot token, kept sealed in `slack_teams`. Replies in a team's channels then go out
//! with the team's own token; the deployment's `bot_token` (SLACK_BOT_TOKEN), when set, serves
//! teams that did not install the app.

use crate::slack_link::{detail, Flow, SlackLink};
use pg_common::{
    crypto::{Binding, Keyring},
    db_error,
};
use plugin_sdk::{http::redirect, CallContext, HttpRequest, HttpResponse, PluginError};
use serde_json::json;
use sqlx::Row;
use std::sync::Arc;

pub(crate) const START: &str = "/slack/install";
pub(crate) const CALLBACK: &str = "/slack/install-callback";
/// What the bot may do: hear its mentions, answer in threads.
const SCOPES: &str = "app_mentions:read,chat:write";

pub(crate) struct SlackInstall {
    app: Arc<SlackLink>,
    keys: Keyring,
}

const INSTALL: Flow = Flow {
    tag: "slack_install",
    authorize: "/oauth/v2/authorize",
    token: "oauth.v2.access",
    params: &[("scope", SCOPES)],
    callback: CALLBACK,
};

fn at(team: &str) -> Binding<'_> {
    Binding { table: "slack_teams", field: "bot_token", user_id: team }
}

impl SlackInstall {
    /// `None` without a master key to seal teams' tokens with (logged).
    pub(crate) fn new(app: Arc<SlackLink>, master_key: Option<&str>) -> Result<Option<SlackInstall>, PluginError> {
        let keys = match pg_common::crypto::deployment_keyring(master_key, None, None) {
            Ok(keys) => keys,
            Err(e) if master_key.is_none() => {
                tracing::warn!(error = %e.message, "Slack app installation is off: set OH_MASTER_KEY (or JWT_SECRET)");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        Ok(Some(SlackInstall { app, keys }))
    }

    pub(crate) async fn handle(&self, ctx: &CallContext, request: &HttpRequest) -> Result<HttpResponse, PluginError> {
        let Some(user) = ctx.user_id() else {
            return Ok(detail(401, "sign in to OpenHands first, then open this link again"));
        };
        if request.path == START {
            return self.app.start(&INSTALL, user, request).await;
        }
        let answer = match self.app.exchange(&INSTALL, user, request).await? {
            Ok(answer) => answer,
            Err(refused) => return Ok(refused),
        };
        let (token, Some(team)) = (answer.access(), answer.field("team")["id"].as_str()) else {
            return Ok(detail(400, "Slack's answer names no team"));
        };
        if answer.field("ok") != true || answer.kind() != "bot" {
            return Ok(detail(400, "Slack did not give a bot token"));
        }
        let sealed = self.keys.seal(token.as_bytes(), &at(team))?;
        let name = answer.field("team")["name"].as_str().unwrap_or("");
        let pool = self.app.db.ready().await?;
        sqlx::query(
            "INSERT INTO slack_teams (team_id, team_name, bot_token, bot_user_id, installed_by) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (team_id) DO UPDATE SET team_name = EXCLUDED.team_name, bot_token = EXCLUDED.bot_token,
                 bot_user_id = EXCLUDED.bot_user_id, installed_by = EXCLUDED.installed_by, updated_at = now()",
        )
        .bind(team)
        .bind(name)
        .bind(&sealed)
        .bind(answer.field("bot_user_id").as_str())
        .bind(user)
        .execute(pool)
        .await
        .map_err(db_error)?;
        tracing::info!(team, user, "Slack app installed");
        crate::inbox::record(
            pool,
            "slack",
            None,
            "installed",
            json!({ "team_id": team, "team_name": name, "user_id": user }),
        )
        .await?;
        Ok(redirect("/settings/integrations?slack=installed".to_owned()))
    }

    /// The bot token of a team that installed the app.
    pub(crate) async fn team_token(&self, team: &str) -> Result<Option<String>, PluginError> {
        let pool = self.app.db.ready().await?;
        let sealed: Option<String> = sqlx::query_scalar("SELECT bot_token FROM slack_teams WHERE team_id = $1")
            .bind(team)
            .fetch_optional(pool)
            .await
            .map_err(db_error)?;
        sealed
            .map(|s| {
                let plain = self.keys.open(&s, &at(team))?;
                String::from_utf8(plain).map_err(|_| PluginError::internal("a sealed Slack token is not text"))
            })
            .transpose()
    }

    /// Re-seals every team's token with the current master key; how many.
    pub(crate) async fn rotate_keys(&self) -> Result<u64, PluginError> {
        let pool = self.app.db.ready().await?;
        let rows = sqlx::query("SELECT team_id, bot_token FROM slack_teams").fetch_all(pool).await.map_err(db_error)?;
        let mut rotated = 0;
        for row in rows {
            let (team, sealed): (String, String) = (row.get(0), row.get(1));
            if Keyring::key_id(&sealed) == Some(self.keys.current_id()) {
                continue;
            }
            let resealed = self.keys.seal(&self.keys.open(&sealed, &at(&team))?, &at(&team))?;
            sqlx::query(
                "UPDATE slack_teams SET bot_token = $2, updated_at = now() WHERE team_id = $1 AND bot_token = $3",
            )
            .bind(&team)
            .bind(resealed)
            .bind(&sealed)
            .execute(pool)
            .await
            .map_err(db_error)?;
            rotated += 1;
        }
        Ok(rotated)
    }
}
