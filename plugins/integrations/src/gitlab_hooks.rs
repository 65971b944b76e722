//! GitLab webhooks with a secret each (OpenHands' `gitlab_webhook`): a signed-in user installs
//! one on a GitLab project they maintain, with their own GitLab token; its secret token is new
//! and random, sealed at rest, and GitLab sends the row's id back in `X-OpenHands-Webhook-Id`
//! (a custom webhook header) so a delivery is checked against that webhook's secret alone.
//!
//! `POST /api/integrations/gitlab/webhooks {project}` (an id or `group/project`),
//! `GET` of the same path (the user's webhooks, no secrets), `DELETE .../{id}` (removed at
//! GitLab, then here).

use crate::providers;
use pg_common::{
    crypto::{Binding, Keyring},
    db_error, Database,
};
use plugin_sdk::{
    host_calls::GetProviderTokens, http::json, CallContext, HttpRequest, HttpResponse, PluginError, Services,
};
use serde_json::{json, Value};
use sqlx::Row;
use std::sync::Arc;

pub(crate) const PATH: &str = "/api/integrations/gitlab/webhooks";
/// The header GitLab sends back with each delivery of a webhook installed here.
pub(crate) const ID_HEADER: &str = "x-openhands-webhook-id";

pub(crate) struct GitLabHooks {
    db: Arc<Database>,
    keys: Keyring,
    http: reqwest::Client,
    services: Services,
    /// The GitLab the deployment serves (`gitlab.api_url`).
    base: String,
    /// Where GitLab delivers: `{web_host}/integration/gitlab/events`.
    events_url: Option<String>,
}

fn at(id: &str) -> Binding<'_> {
    Binding { table: "gitlab_webhooks", field: "webhook_secret", user_id: id }
}

fn error(status: u16, message: impl Into<String>) -> HttpResponse {
    json(status, &json!({ "error": message.into() }))
}

fn random_hex(bytes: usize) -> Result<String, PluginError> {
    let mut b = vec![0u8; bytes];
    getrandom::getrandom(&mut b).map_err(|e| PluginError::internal(format!("no randomness: {e}")))?;
    Ok(b.iter().map(|b| format!("{b:02x}")).collect())
}

/// A path segment with `/` and other reserved characters escaped (GitLab takes a project's
/// `group/project` path URL-encoded where its id goes).
fn escape(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl GitLabHooks {
    pub(crate) fn new(
        db: Arc<Database>,
        master_key: Option<&str>,
        services: Services,
        base: String,
        web_origin: Option<&str>,
    ) -> Result<Option<GitLabHooks>, PluginError> {
        // Without a master key a deployment keeps its one GitLab secret, and users cannot
        // install webhooks (their secrets could not be sealed).
        let keys = match pg_common::crypto::deployment_keyring(master_key, None, None) {
            Ok(keys) => keys,
            Err(e) if master_key.is_none() => {
                tracing::warn!(error = %e.message, "GitLab webhooks of users are off: set OH_MASTER_KEY (or JWT_SECRET)");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let events_url = web_origin.map(|origin| format!("{origin}/integration/gitlab/events"));
        Ok(Some(GitLabHooks { db, keys, http: providers::http()?, services, base, events_url }))
    }

    /// Re-seals with the current master key the secrets sealed with an earlier one. How many.
    pub(crate) async fn rotate_keys(&self) -> Result<u64, PluginError> {
        let pool = self.db.ready().await?;
        let mut tx = pool.begin().await.map_err(db_error)?;
        let rows =
            sqlx::query("SELECT id, webhook_secret FROM gitlab_webhooks WHERE webhook_secret NOT LIKE $1 FOR UPDATE")
                .bind(format!("v1.{}.%", self.keys.current_id()))
                .fetch_all(&mut *tx)
                .await
                .map_err(db_error)?;
        for row in &rows {
            let id: String = row.get("id");
            let plain = self.keys.open(&row.get::<String, _>("webhook_secret"), &at(&id))?;
            sqlx::query("UPDATE gitlab_webhooks SET webhook_secret = $2 WHERE id = $1")
                .bind(&id)
                .bind(self.keys.seal(&plain, &at(&id))?)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        Ok(rows.len() as u64)
    }

    /// The secret of the webhook `id`, if it is one of ours.
    pub(crate) async fn secret(&self, id: &str) -> Result<Option<String>, PluginError> {
        if id.len() > 64 {
            return Ok(None);
        }
        let pool = self.db.ready().await?;
        let sealed: Option<String> = sqlx::query_scalar("SELECT webhook_secret FROM gitlab_webhooks WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(db_error)?;
        sealed
            .map(|s| {
                let plain = self.keys.open(&s, &at(id))?;
                String::from_utf8(plain).map_err(|_| PluginError::internal("stored webhook secret is not text"))
            })
            .transpose()
    }

    pub(crate) async fn handle(&self, ctx: &CallContext, request: &HttpRequest) -> Result<HttpResponse, PluginError> {
        let Some(user) = ctx.user_id() else { return Ok(error(401, "sign in first")) };
        match request.method.as_str() {
            "GET" => self.list(user).await,
            "POST" => self.install(ctx, user, request).await,
            "DELETE" => self.remove(ctx, user, request.path.trim_start_matches(PATH).trim_start_matches('/')).await,
            _ => Ok(error(405, "GET, POST or DELETE")),
        }
    }

    async fn list(&self, user: &str) -> Result<HttpResponse, PluginError> {
        let pool = self.db.ready().await?;
        let rows = sqlx::query(
            "SELECT id, project_id, project_path, hook_id, created_at::text AS created_at FROM gitlab_webhooks
             WHERE user_id = $1 ORDER BY created_at",
        )
        .bind(user)
        .fetch_all(pool)
        .await
        .map_err(db_error)?;
        let hooks: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "id": r.get::<String, _>("id"), "project_id": r.get::<i64, _>("project_id"),
                    "project": r.get::<String, _>("project_path"), "hook_id": r.get::<Option<i64>, _>("hook_id"),
                    "created_at": r.get::<String, _>("created_at"),
                })
            })
            .collect();
        Ok(json(200, &json!({ "webhooks": hooks })))
    }

    /// The user's GitLab token (brokered at sign-in, or saved in their git settings).
    async fn token(&self, ctx: &CallContext) -> Result<Option<String>, PluginError> {
        let tokens = self.services.call(ctx.clone(), GetProviderTokens {}).await?;
        Ok(tokens.get("gitlab").and_then(|t| t.token.clone()).filter(|t| !t.trim().is_empty()))
    }

    async fn install(&self, ctx: &CallContext, user: &str, request: &HttpRequest) -> Result<HttpResponse, PluginError> {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let project = match &body["project"] {
            Value::Number(n) if n.as_i64().is_some_and(|n| n > 0) => n.to_string(),
            Value::String(s) if !s.trim().is_empty() && s.len() <= 255 => s.trim().to_owned(),
            _ => return Ok(error(422, "expected {\"project\": a GitLab project id or its group/project path}")),
        };
        let Some(events_url) = &self.events_url else {
            return Ok(error(503, "web_host (WEB_HOST) is not configured: GitLab would not know where to deliver"));
        };
        let Some(token) = self.token(ctx).await? else {
            return Ok(error(400, "no GitLab token: sign in with GitLab or add a GitLab token in the git settings"));
        };
        let what = "GitLab project";
        let request = self.http.get(format!("{}/api/v4/projects/{}", self.base, escape(&project))).bearer_auth(&token);
        let r = providers::counted(what, request).await.map_err(|e| providers::unreachable(what, e))?;
        if !r.status().is_success() {
            return Ok(error(
                if r.status().as_u16() == 404 { 404 } else { 400 },
                format!("GitLab has no project {project} this token can see ({})", r.status()),
            ));
        }
        let p: Value = r.json().await.map_err(|e| providers::unreachable(what, e))?;
        let (Some(project_id), Some(path)) = (p["id"].as_i64(), p["path_with_namespace"].as_str()) else {
            return Ok(error(502, "GitLab's project answer has no id"));
        };
        let (id, secret) = (random_hex(16)?, random_hex(32)?);
        let pool = self.db.ready().await?;
        // Stored before GitLab knows the secret: a delivery can never come for a secret we lost.
        let stored = sqlx::query(
            "INSERT INTO gitlab_webhooks (id, user_id, project_id, project_path, webhook_secret) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (project_id) DO NOTHING",
        )
        .bind(&id)
        .bind(user)
        .bind(project_id)
        .bind(path)
        .bind(self.keys.seal(secret.as_bytes(), &at(&id))?)
        .execute(pool)
        .await
        .map_err(db_error)?;
        if stored.rows_affected() == 0 {
            return Ok(error(409, format!("{path} already has an OpenHands webhook: remove it first")));
        }
        let hook = json!({
            "url": events_url, "token": secret, "note_events": true, "push_events": false,
            "issues_events": false, "merge_requests_events": false, "enable_ssl_verification": true,
            "custom_headers": [{ "key": "X-OpenHands-Webhook-Id", "value": id }],
        });
        let request =
            self.http.post(format!("{}/api/v4/projects/{project_id}/hooks", self.base)).bearer_auth(&token).json(&hook);
        let r = providers::counted("GitLab webhook", request).await;
        let installed = match r {
            Ok(r) if r.status().is_success() => r.json::<Value>().await.ok().and_then(|h| h["id"].as_i64()),
            Ok(r) => {
                self.forget(&id).await?;
                let status = r.status();
                let status_out = if status.as_u16() == 403 { 403 } else { 502 };
                return Ok(error(
                    status_out,
                    format!("GitLab refused the webhook on {path} ({status}): it takes a Maintainer of the project"),
                ));
            }
            Err(e) => {
                self.forget(&id).await?;
                return Err(providers::unreachable("GitLab webhook", e));
            }
        };
        sqlx::query("UPDATE gitlab_webhooks SET hook_id = $2 WHERE id = $1")
            .bind(&id)
            .bind(installed)
            .execute(pool)
            .await
            .map_err(db_error)?;
        tracing::info!(project = path, user, "GitLab webhook installed");
        let detail = json!({ "webhook": id, "project": path, "user_id": user, "hook_id": installed });
        crate::inbox::record(pool, "gitlab", None, "webhook_installed", detail).await?;
        Ok(json(200, &json!({ "id": id, "project_id": project_id, "project": path, "hook_id": installed })))
    }

    async fn forget(&self, id: &str) -> Result<(), PluginError> {
        let pool = self.db.ready().await?;
        sqlx::query("DELETE FROM gitlab_webhooks WHERE id = $1").bind(id).execute(pool).await.map_err(db_error)?;
        Ok(())
    }

    async fn remove(&self, ctx: &CallContext, user: &str, id: &str) -> Result<HttpResponse, PluginError> {
        let pool = self.db.ready().await?;
        let row = sqlx::query("SELECT project_id, hook_id FROM gitlab_webhooks WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user)
            .fetch_optional(pool)
            .await
            .map_err(db_error)?;
        let Some(row) = row else { return Ok(error(404, format!("no webhook {id} of yours"))) };
        if let (project, Some(hook)) = (row.get::<i64, _>("project_id"), row.get::<Option<i64>, _>("hook_id")) {
            let Some(token) = self.token(ctx).await? else {
                return Ok(error(400, "no GitLab token to remove the webhook at GitLab with"));
            };
            let request =
                self.http.delete(format!("{}/api/v4/projects/{project}/hooks/{hook}", self.base)).bearer_auth(token);
            let r = providers::counted("GitLab webhook", request)
                .await
                .map_err(|e| providers::unreachable("GitLab webhook", e))?;
            // Already gone at GitLab is as good as removed.
            if !r.status().is_success() && r.status().as_u16() != 404 {
                return Ok(error(502, format!("GitLab did not remove the webhook ({})", r.status())));
            }
        }
        self.forget(id).await?;
        crate::inbox::record(pool, "gitlab", None, "webhook_removed", json!({ "webhook": id, "user_id": user }))
            .await?;
        Ok(json(200, &json!({ "removed": id })))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn project_paths_are_escaped_for_gitlab() {
        assert_eq!(super::escape("grp/sub/app"), "grp%2Fsub%2Fapp");
        assert_eq!(super::escape("42"), "42");
    }
}
