//! GitLab repository sync, as OpenHands' SaaS schedules it at sign-in: each user's GitLab
//! projects (those they are a member of) are read with their GitLab token and kept in
//! PostgreSQL (`gitlab_projects`), and the repository picker and search are served from
//! there (`GET /api/user/repositories/gitlab`, which the host consults for GitLab).
//!
//! When: at sign-in (in the background), at the first picker request of a user never synced
//! (inline), and when the stored list is older than `gitlab_sync_interval_secs` (the stored
//! list is served, a sync starts in the background). One sync per user at a time on any
//! host (`gitlab_syncs.started_at`, taken in one statement). A sync replaces the user's list
//! in one transaction; a failed one keeps the previous list and records its error.

use crate::keys::KeyStore;
use pg_common::db_error;
use plugin_sdk::{host_calls::GetProviderTokens, http::json, CallContext, HttpRequest, HttpResponse, PluginError};
use serde_json::{json, Value};
use sqlx::Row;
use std::{sync::Arc, time::Duration};

pub(crate) const ROUTE: &str = "/api/user/repositories/gitlab";
/// The most projects kept per user (OpenHands' "all repositories" limit).
const MAX_PROJECTS: usize = 1000;
/// A sync not finished after this long is taken over.
const STALE_SYNC_SECS: i64 = 120;

pub(crate) struct GitLabSync {
    keys: Arc<KeyStore>,
    services: plugin_sdk::Services,
    /// The API for tokens of gitlab.com (GITLAB_API_URL's meaning; the profile's).
    api_url: String,
    interval: Duration,
    saas: bool,
}

/// What a sync did.
#[derive(Debug)]
pub(crate) enum Synced {
    Projects(usize),
    /// Another host (or task) is syncing this user now.
    Busy,
    /// The user has no GitLab token.
    NoToken,
}

impl GitLabSync {
    pub(crate) fn new(
        keys: Arc<KeyStore>,
        services: plugin_sdk::Services,
        api_url: Option<String>,
        interval: Duration,
    ) -> GitLabSync {
        let saas = services.app_mode() == plugin_sdk::AppMode::SAAS;
        let api_url =
            api_url.unwrap_or_else(|| "https://gitlab.com/api/v4".to_owned()).trim_end_matches('/').to_owned();
        GitLabSync { keys, services, api_url, interval, saas }
    }

    /// Starts a sync of `user` in the background (sign-in); its outcome is logged.
    pub(crate) fn spawn(self: &Arc<Self>, user: &str) {
        let (sync, user) = (self.clone(), user.to_owned());
        tokio::spawn(async move {
            match sync.sync(&user).await {
                Ok(Synced::Projects(n)) => tracing::debug!(user, projects = n, "GitLab projects synced"),
                Ok(other) => tracing::debug!(user, ?other, "GitLab project sync skipped"),
                Err(e) => tracing::warn!(user, error = %e.message, "GitLab project sync failed"),
            }
        });
    }

    /// The user's GitLab API and token (the ones the host decides: brokered at sign-in, else
    /// stored in their secrets).
    async fn api(&self, user: &str) -> Result<Option<(reqwest::Client, String, String)>, PluginError> {
        let ctx = CallContext::new("gitlab-sync", Some(user), 0);
        let tokens = self.services.call(ctx, GetProviderTokens {}).await?;
        let Some(gitlab) = tokens.get("gitlab") else { return Ok(None) };
        let Some(token) = gitlab.token.clone().filter(|t| !t.trim().is_empty()) else { return Ok(None) };
        let host = gitlab.host.as_deref().map(str::trim).filter(|h| !h.is_empty() && *h != "gitlab.com");
        let base = match host {
            Some(h) if h.starts_with("http://") || h.starts_with("https://") => {
                format!("{}/api/v4", h.trim_end_matches('/'))
            }
            Some(h) => format!("https://{h}/api/v4"),
            None => self.api_url.clone(),
        };
        // A host the user named must be public in SaaS mode, at every redirect too.
        let policy = outbound::Policy {
            public_only: self.saas && host.is_some(),
            allowed_hosts: Vec::new(),
            subject: "the GitLab host of the user's token",
            allow_setting: "gitlab_api_url",
        };
        policy.check_url(&base).map_err(PluginError::invalid_argument)?;
        let builder =
            reqwest::Client::builder().timeout(Duration::from_secs(15)).connect_timeout(Duration::from_secs(5));
        let http = outbound::client(&policy, builder)
            .map_err(|e| PluginError::internal(format!("cannot build an HTTP client: {e}")))?;
        Ok(Some((http, base, token)))
    }

    /// Reads the user's projects from GitLab and replaces their stored list.
    pub(crate) async fn sync(&self, user: &str) -> Result<Synced, PluginError> {
        let pool = self.keys.ready().await?;
        let taken = sqlx::query(
            "INSERT INTO gitlab_syncs (user_id, started_at) VALUES ($1, now())
             ON CONFLICT (user_id) DO UPDATE SET started_at = now()
             WHERE gitlab_syncs.started_at IS NULL OR gitlab_syncs.started_at < now() - make_interval(secs => $2)
             RETURNING user_id",
        )
        .bind(user)
        .bind(STALE_SYNC_SECS as f64)
        .fetch_optional(pool)
        .await
        .map_err(db_error)?;
        if taken.is_none() {
            return Ok(Synced::Busy);
        }
        let outcome = self.fetch_and_store(user).await;
        let error = match &outcome {
            Ok(_) => None,
            Err(e) => Some(e.message.to_string()),
        };
        sqlx::query("UPDATE gitlab_syncs SET started_at = NULL, error = $2 WHERE user_id = $1")
            .bind(user)
            .bind(error)
            .execute(pool)
            .await
            .map_err(db_error)?;
        outcome
    }

    async fn fetch_and_store(&self, user: &str) -> Result<Synced, PluginError> {
        let Some((http, base, token)) = self.api(user).await? else { return Ok(Synced::NoToken) };
        let mut projects: Vec<Value> = Vec::new();
        for page in 1.. {
            let answer = http
                .get(format!("{base}/projects"))
                .bearer_auth(&token)
                .query(&[("membership", "true"), ("per_page", "100"), ("order_by", "last_activity_at")])
                .query(&[("page", page)])
                .send()
                .await
                .map_err(|e| PluginError::unavailable(format!("GitLab projects: {e}")))?;
            let status = answer.status();
            if !status.is_success() {
                return Err(PluginError::unavailable(format!("GitLab projects answered {status}")));
            }
            let more = answer.headers().get("x-next-page").and_then(|v| v.to_str().ok()).is_some_and(|v| !v.is_empty())
                || answer
                    .headers()
                    .get("link")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|l| l.contains("rel=\"next\""));
            let list: Vec<Value> =
                answer.json().await.map_err(|e| PluginError::unavailable(format!("GitLab projects: {e}")))?;
            let empty = list.is_empty();
            projects.extend(list);
            if !more || empty || projects.len() >= MAX_PROJECTS {
                break;
            }
        }
        projects.truncate(MAX_PROJECTS);
        let pool = self.keys.ready().await?;
        let mut tx = pool.begin().await.map_err(db_error)?;
        let now: chrono::DateTime<chrono::Utc> = chrono::Utc::now();
        let stamp = now.to_rfc3339();
        for p in &projects {
            let Some(id) = p["id"].as_i64() else { continue };
            sqlx::query(
                "INSERT INTO gitlab_projects (user_id, project_id, path, is_public, star_count, last_activity_at,
                     created_at, default_branch, group_owned, synced_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::timestamptz)
                 ON CONFLICT (user_id, project_id) DO UPDATE SET path = EXCLUDED.path, is_public = EXCLUDED.is_public,
                     star_count = EXCLUDED.star_count, last_activity_at = EXCLUDED.last_activity_at,
                     created_at = EXCLUDED.created_at, default_branch = EXCLUDED.default_branch,
                     group_owned = EXCLUDED.group_owned, synced_at = EXCLUDED.synced_at",
            )
            .bind(user)
            .bind(id)
            .bind(p["path_with_namespace"].as_str().unwrap_or_default())
            .bind(p["visibility"] == "public")
            .bind(p["star_count"].as_i64())
            .bind(p["last_activity_at"].as_str())
            .bind(p["created_at"].as_str())
            .bind(p["default_branch"].as_str())
            .bind(p["namespace"]["kind"] == "group")
            .bind(&stamp)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        sqlx::query("DELETE FROM gitlab_projects WHERE user_id = $1 AND synced_at < $2::timestamptz")
            .bind(user)
            .bind(&stamp)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        sqlx::query("UPDATE gitlab_syncs SET synced_at = $2::timestamptz, projects = $3 WHERE user_id = $1")
            .bind(user)
            .bind(&stamp)
            .bind(projects.len() as i32)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(Synced::Projects(projects.len()))
    }

    /// `GET /api/user/repositories/gitlab?page&per_page&sort` or `?query&per_page`: the
    /// user's stored projects in OpenHands' `Repository` shape, a page with a `link_header`
    /// naming the next one.
    pub(crate) async fn handle(
        self: &Arc<Self>,
        user: &str,
        request: &HttpRequest,
    ) -> Result<HttpResponse, PluginError> {
        let param = |name: &str| plugin_sdk::http::query_param(&request.query, name);
        let number = |name: &str, default: usize| param(name).and_then(|v| v.parse().ok()).unwrap_or(default);
        let pool = self.keys.ready().await?;
        let synced: Option<(Option<f64>, Option<String>)> = sqlx::query_as(
            "SELECT extract(epoch FROM now() - synced_at)::float8, error FROM gitlab_syncs WHERE user_id = $1",
        )
        .bind(user)
        .fetch_optional(pool)
        .await
        .map_err(db_error)?;
        match synced.as_ref().and_then(|s| s.0) {
            // Never synced: now, so the first picker shows the projects.
            None => match self.sync(user).await? {
                Synced::NoToken => {
                    return Ok(json(401, &json!("No gitlab token is set. Add one in the Git settings.")));
                }
                Synced::Projects(n) => tracing::debug!(user, projects = n, "GitLab projects synced"),
                Synced::Busy => {}
            },
            Some(age) if age > self.interval.as_secs_f64() => self.spawn(user),
            Some(_) => {}
        }
        let per_page = number("per_page", 30).clamp(1, MAX_PROJECTS);
        let page = number("page", 1).max(1);
        let query = param("query").map(|q| q.trim().to_owned()).filter(|q| !q.is_empty());
        let order = match param("sort").as_deref() {
            Some("full_name") => "lower(path)",
            Some("created") => "created_at DESC NULLS LAST, project_id",
            Some("stars") => "star_count DESC NULLS LAST, project_id",
            _ => "last_activity_at DESC NULLS LAST, project_id",
        };
        // A search is a case-insensitive part of the path (`group/sub/name`).
        let pattern =
            query.as_deref().map(|q| format!("%{}%", q.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
        let rows = sqlx::query(&format!(
            "SELECT project_id, path, is_public, star_count, last_activity_at, default_branch, group_owned
             FROM gitlab_projects WHERE user_id = $1 AND ($2::text IS NULL OR path ILIKE $2)
             ORDER BY {order} LIMIT $3 OFFSET $4"
        ))
        .bind(user)
        .bind(&pattern)
        .bind(per_page as i64 + 1)
        .bind(((page - 1) * per_page) as i64)
        .fetch_all(pool)
        .await
        .map_err(db_error)?;
        let more = rows.len() > per_page;
        let link = more.then(|| format!("<{ROUTE}?page={}&per_page={per_page}>; rel=\"next\"", page + 1));
        let repositories: Vec<Value> = rows
            .iter()
            .take(per_page)
            .map(|r| {
                json!({
                    "id": r.get::<i64, _>("project_id").to_string(),
                    "full_name": r.get::<String, _>("path"),
                    "git_provider": "gitlab",
                    "is_public": r.get::<bool, _>("is_public"),
                    "stargazers_count": r.get::<Option<i64>, _>("star_count"),
                    "link_header": if query.is_some() { None } else { Some(link.clone().unwrap_or_default()) },
                    "pushed_at": r.get::<Option<String>, _>("last_activity_at"),
                    "owner_type": if r.get::<bool, _>("group_owned") { "organization" } else { "user" },
                    "main_branch": r.get::<Option<String>, _>("default_branch"),
                })
            })
            .collect();
        Ok(json(200, &Value::Array(repositories)))
    }
}
