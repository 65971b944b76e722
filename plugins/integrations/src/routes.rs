//! `Integrations`: each enabled source's webhook route (verify, rate-limit, store), the
//! link codes, the workspace and GitLab-hook routes, and the operators' routes.

use crate::config::Config;
use crate::inbox::Inbox;
use crate::verify::Refusal;
use crate::{
    config, github_install, gitlab_hooks, inbox, providers, ratelimit, slack_install, slack_link, verify, work,
    workspaces,
};
use plugin_sdk::{
    http::{header, json, json_with},
    CallContext, HttpRequest, HttpResponse, PluginError, RouteSpec, Services,
};
use serde_json::{json, Value};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

/// The sources and their routes.
pub(crate) const ROUTES: &[(&str, &str)] = &[
    ("github", "/integration/github/events"),
    ("gitlab", "/integration/gitlab/events"),
    ("slack", "/slack/on-event"),
    ("jira", "/integration/jira/events"),
    ("jira_dc", "/integration/jira-dc/events"),
    ("linear", "/integration/linear/events"),
];

pub struct Integrations {
    config: Config,
    hub: Arc<work::Hub>,
    /// Jira, Jira DC and Linear workspaces, when an OAuth app is configured for one.
    workspaces: Option<Arc<workspaces::Workspaces>>,
    /// GitLab webhooks installed by users, each with its own secret (when GitLab is on).
    gitlab_hooks: Option<gitlab_hooks::GitLabHooks>,
    /// Slack users linking themselves by signing in with Slack (when its OAuth app is set).
    slack_link: Option<Arc<slack_link::SlackLink>>,
    slack_install: Option<Arc<slack_install::SlackInstall>>,
    github_install: Option<github_install::GitHubInstall>,
    limiter: ratelimit::Limiter,
    /// Refused requests, audited in aggregate.
    refusals: Arc<inbox::Refusals>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// A verified delivery: its id at the provider, its event type, its body as JSON.
struct Verified {
    delivery_id: String,
    event: String,
    payload: Value,
}

impl Integrations {
    pub(crate) fn new(c: Config, services: Services) -> Result<Integrations, PluginError> {
        let db = c.pool().open(true)?;
        let web_origin = c.web_origin();
        let workspaces = workspaces::Workspaces::new(
            db.clone(),
            c.master_key.as_deref(),
            web_origin.clone(),
            [&c.jira, &c.jira_dc, &c.linear],
        )?
        .map(Arc::new);
        let gitlab_hooks = if c.gitlab.on() {
            gitlab_hooks::GitLabHooks::new(
                db.clone(),
                c.master_key.as_deref(),
                services.clone(),
                c.gitlab.api("https://gitlab.com"),
                web_origin.as_deref(),
            )?
        } else {
            None
        };
        let slack_link = if c.slack.on() && c.slack.has_oauth_app() {
            Some(Arc::new(slack_link::SlackLink::new(
                db.clone(),
                c.slack.need("slack", "oauth_client_id", "SLACK_CLIENT_ID")?,
                c.slack.need("slack", "oauth_client_secret", "SLACK_CLIENT_SECRET")?,
                c.slack.oauth("https://slack.com"),
                c.slack.api("https://slack.com/api"),
                web_origin.clone(),
            )?))
        } else {
            None
        };
        // The same Slack app installs per workspace, with a master key to seal their tokens.
        let slack_install = match &slack_link {
            Some(app) => slack_install::SlackInstall::new(app.clone(), c.master_key.as_deref())?.map(Arc::new),
            None => None,
        };
        let github_install =
            c.github.app_slug.as_deref().map(str::trim).filter(|slug| c.github.on() && !slug.is_empty()).map(|slug| {
                let web = crate::config::url_or(&c.github.web_url, "https://github.com");
                let oauth = match (&c.github.app_id, &c.github.oauth_client_secret, providers::http()) {
                    (Some(id), Some(secret), Ok(http)) if !secret.trim().is_empty() => Some(github_install::AppOAuth {
                        client_id: c.github.oauth_client_id.clone().unwrap_or_else(|| id.clone()),
                        client_secret: secret.clone(),
                        token_url: format!("{}/login/oauth/access_token", web.trim_end_matches('/')),
                        api: crate::config::url_or(&c.github.api_url, "https://api.github.com"),
                        http,
                    }),
                    _ => None,
                };
                github_install::GitHubInstall::new(db.clone(), &web, slug, oauth)
            });
        let inbox =
            Inbox { db, max_attempts: c.max_attempts, backoff: Duration::from_millis(c.retry_backoff_ms.max(1)) };
        let github = if c.github.on() {
            Some(providers::GitHub::new(
                c.github.api("https://api.github.com"),
                c.github.need("github", "app_id", "GITHUB_APP_CLIENT_ID")?,
                &c.github.need("github", "private_key", "GITHUB_APP_PRIVATE_KEY")?,
            )?)
        } else {
            None
        };
        let slack = if c.slack.on() {
            let bot_token = if c.slack.has_oauth_app() {
                c.slack.bot_token.clone().filter(|t| !t.trim().is_empty())
            } else {
                Some(c.slack.need("slack", "bot_token", "SLACK_BOT_TOKEN")?)
            };
            Some(providers::Slack::new(c.slack.api("https://slack.com/api"), bot_token)?)
        } else {
            None
        };
        let gitlab = if c.gitlab.on() {
            Some(providers::GitLab::new(
                c.gitlab.api("https://gitlab.com"),
                c.gitlab.need("gitlab", "token", "GITLAB_TOKEN")?,
            )?)
        } else {
            None
        };
        let jira = if c.jira.on() && c.jira.global() {
            Some(providers::Jira::new(
                c.jira.need("jira", "api_url", "JIRA_BASE_URL")?.trim_end_matches('/').to_owned(),
                Some(c.jira.need("jira", "account_email", "JIRA_SERVICE_ACCOUNT_EMAIL")?),
                c.jira.need("jira", "token", "JIRA_API_TOKEN")?,
            )?)
        } else {
            None
        };
        let jira_dc = if c.jira_dc.on() && c.jira_dc.global() {
            Some(providers::Jira::new(
                c.jira_dc.need("jira_dc", "api_url", "JIRA_DC_BASE_URL")?.trim_end_matches('/').to_owned(),
                None,
                c.jira_dc.need("jira_dc", "token", "JIRA_DC_TOKEN")?,
            )?)
        } else {
            None
        };
        let linear = if c.linear.on() && c.linear.global() {
            Some(providers::Linear::new(
                c.linear.api("https://api.linear.app"),
                c.linear.need("linear", "token", "LINEAR_API_KEY")?,
            )?)
        } else {
            None
        };
        let hub = Arc::new(work::Hub {
            inbox,
            services,
            mention: c.mention.clone(),
            web_origin,
            slack_link: slack_link.clone(),
            slack_install: slack_install.clone(),
            workspaces: workspaces.clone(),
            github,
            slack,
            gitlab,
            jira,
            jira_dc,
            linear,
            wake: tokio::sync::Notify::new(),
            answers: tokio::sync::Notify::new(),
        });
        let limiter = ratelimit::Limiter::new(&c.redis_url(), c.redis_key_prefix.clone(), c.rate_limit_per_minute)?;
        let refusals = Arc::new(inbox::Refusals::default());
        // Inbox workers (two by default: one slow provider call does not hold the rest) and
        // the one that posts answers.
        // None at all when no source is enabled: the plugin then only serves its routes.
        let any_source = ROUTES.iter().any(|(name, _)| c.source(name).on());
        // None either when the host only checks (`oh-host check`): a worker takes work.
        let workers = if any_source && !plugin_sdk::read_only() { c.workers } else { 0 };
        let tasks = plugin_sdk::enter_runtime(|| {
            let mut tasks: Vec<_> = (0..workers).map(|_| tokio::spawn(hub.clone().deliveries())).collect();
            if workers > 0 {
                tasks.push(tokio::spawn(hub.clone().callbacks()));
            }
            let (hub, refusals) = (hub.clone(), refusals.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(inbox::REFUSALS_EVERY).await;
                    refusals.flush(&hub.inbox).await;
                }
            }));
            tasks
        });
        Ok(Integrations {
            config: c,
            hub,
            workspaces,
            gitlab_hooks,
            slack_link,
            slack_install,
            github_install,
            limiter,
            refusals,
            tasks: Mutex::new(tasks),
        })
    }

    fn source(&self, name: &str) -> &config::Source {
        self.config.source(name)
    }

    /// Checks a delivery of `source` with `secret` and reads its id and event type.
    fn verify(&self, source: &str, secret: &str, request: &HttpRequest) -> Result<Verified, (u16, String)> {
        let body = &request.body[..];
        let refused = |r: Refusal| (if r == Refusal::Missing { 401 } else { 403 }, r.reason().to_owned());
        let now = chrono::Utc::now();
        match source {
            "github" => verify::hub_signature(secret, body, header(request, "x-hub-signature-256")).map_err(refused)?,
            "jira" | "jira_dc" => {
                verify::hub_signature(secret, body, header(request, "x-hub-signature")).map_err(refused)?
            }
            // A signing token (GitLab 19) when the delivery is signed, else the classic token.
            "gitlab" if header(request, "webhook-signature").is_some() => verify::standard_webhooks(
                secret,
                body,
                header(request, "webhook-id"),
                header(request, "webhook-timestamp"),
                header(request, "webhook-signature"),
                now.timestamp(),
            )
            .map_err(refused)?,
            "gitlab" => verify::gitlab_token(secret, header(request, "x-gitlab-token")).map_err(refused)?,
            "slack" => verify::slack(
                secret,
                body,
                header(request, "x-slack-signature"),
                header(request, "x-slack-request-timestamp"),
                now.timestamp(),
            )
            .map_err(refused)?,
            _ => {
                // Linear's timestamp is in the (signed) body: verify, then read it.
                let signature = header(request, "linear-signature");
                let ts = serde_json::from_slice::<Value>(body).ok().and_then(|v| v["webhookTimestamp"].as_i64());
                verify::linear(secret, body, signature, ts, now.timestamp_millis()).map_err(refused)?
            }
        }
        let payload: Value = serde_json::from_slice(body).map_err(|e| (400, format!("the body is not JSON: {e}")))?;
        let pick = |names: &[&str]| names.iter().find_map(|n| header(request, n)).map(str::to_owned);
        let (delivery_id, event) = match source {
            "github" => (pick(&["x-github-delivery"]), pick(&["x-github-event"])),
            "gitlab" => (pick(&["x-gitlab-event-uuid", "idempotency-key", "webhook-id"]), pick(&["x-gitlab-event"])),
            "slack" => (
                payload["event_id"].as_str().map(str::to_owned),
                payload["event"]["type"].as_str().or_else(|| payload["type"].as_str()).map(str::to_owned),
            ),
            "jira" | "jira_dc" => {
                (pick(&["x-atlassian-webhook-identifier"]), payload["webhookEvent"].as_str().map(str::to_owned))
            }
            _ => (
                pick(&["linear-delivery"]),
                pick(&["linear-event"]).or_else(|| payload["type"].as_str().map(str::to_owned)),
            ),
        };
        // A Slack URL check has no event id; it is answered before the inbox.
        let delivery_id = match (delivery_id, source, payload["type"].as_str()) {
            (Some(id), _, _) if !id.is_empty() && id.len() <= 200 => id,
            (None, "slack", Some("url_verification")) => String::new(),
            _ => return Err((400, "the delivery has no delivery id header (or a malformed one)".to_owned())),
        };
        Ok(Verified { delivery_id, event: event.unwrap_or_else(|| "unknown".to_owned()), payload })
    }

    async fn receive(&self, source: &str, request: &HttpRequest) -> Result<HttpResponse, PluginError> {
        // Jira and Linear deliveries are signed with their workspace's secret, when it is a
        // registered one: the body names it (read only for that, before it is trusted).
        let mut workspace = None;
        if let Some(ws) = self.workspaces.as_ref().filter(|w| w.serves(source)) {
            if let Ok(payload) = serde_json::from_slice::<Value>(&request.body) {
                workspace = ws.for_delivery(source, &payload).await?;
            }
        }
        // A GitLab webhook installed by a user names itself, and has its own secret.
        let mut own = None;
        if let (Some(hooks), Some(id)) = (&self.gitlab_hooks, header(request, gitlab_hooks::ID_HEADER)) {
            if source == "gitlab" {
                own = Some(hooks.secret(id).await?.ok_or((403, "the delivery names an unknown webhook".to_owned())));
            }
        }
        let global = self.source(source).webhook_secret.as_deref().filter(|s| !s.trim().is_empty());
        let secret = match (own, &workspace, global) {
            (Some(own), _, _) => own,
            (None, Some(ws), _) => Ok(ws.webhook_secret.clone()),
            (None, None, Some(global)) => Ok(global.to_owned()),
            (None, None, None) if source == "gitlab" => {
                Err((403, "the delivery names no webhook installed here".to_owned()))
            }
            (None, None, None) => Err((403, "the delivery names no registered workspace".to_owned())),
        };
        let v = match secret.and_then(|secret| self.verify(source, &secret, request)) {
            Ok(v) => v,
            Err((status, reason)) => {
                let delivery =
                    ["x-github-delivery", "x-gitlab-event-uuid", "x-atlassian-webhook-identifier", "linear-delivery"]
                        .iter()
                        .find_map(|h| header(request, h));
                // Counted apart from verified deliveries (a flood of forged requests does not
                // use up the rate limit of real ones), and audited in aggregate.
                if self.refusals.note(source, &reason, status) {
                    tracing::warn!(source, reason, "webhook delivery refused");
                    let detail = json!({ "reason": reason, "status": status });
                    self.hub.inbox.audit(source, delivery, "refused", detail).await;
                }
                return Ok(json(status, &json!({ "error": format!("{source} delivery refused: {reason}") })));
            }
        };
        // The rate limit counts verified deliveries only.
        if let Some(retry_after) = self.limiter.over(source).await {
            self.hub.inbox.audit(source, Some(&v.delivery_id), "refused", json!({ "reason": "rate limited" })).await;
            return Ok(json_with(
                429,
                &json!({ "error": format!("too many {source} deliveries; retry in {retry_after} s") }),
                vec![("retry-after", retry_after.to_string())],
            ));
        }
        if let Some(ws) = workspace.filter(|ws| !ws.active()) {
            let detail = json!({ "reason": "workspace inactive", "workspace": ws.name });
            self.hub.inbox.audit(source, Some(&v.delivery_id), "ignored", detail).await;
            return Ok(json(
                200,
                &json!({ "status": "ignored", "reason": format!("workspace {} is inactive", ws.name) }),
            ));
        }
        if source == "slack" && v.payload["type"] == "url_verification" {
            self.hub.inbox.audit(source, None, "url_verification", json!({})).await;
            return Ok(json(200, &json!({ "challenge": v.payload["challenge"] })));
        }
        let content = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&request.body));
        let stored = self.hub.inbox.store(source, &v.delivery_id, &v.event, &v.payload, &content).await?;
        if stored {
            self.hub.wake.notify_one();
        }
        let status = if stored { "accepted" } else { "duplicate" };
        Ok(json(200, &json!({ "status": status, "delivery_id": v.delivery_id })))
    }

    /// A one-time code for the signed-in user to link an identity at a provider with:
    /// `<mention> link CODE` written from it.
    async fn link_code(&self, ctx: &CallContext) -> Result<HttpResponse, PluginError> {
        let Some(user) = ctx.user_id() else {
            return Ok(json(401, &json!({ "error": "sign in first" })));
        };
        const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
        let mut bytes = [0u8; 10];
        getrandom::getrandom(&mut bytes).map_err(|e| PluginError::internal(format!("no randomness: {e}")))?;
        let code: String = bytes.iter().map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char).collect();
        let pool = self.hub.inbox.db.ready().await?;
        sqlx::query(
            "INSERT INTO integration_link_codes (code_sha256, user_id, expires_at) VALUES ($1, $2, now() + interval '10 minutes')",
        )
        .bind(work::code_hash(&code))
        .bind(user)
        .execute(pool)
        .await
        .map_err(pg_common::db_error)?;
        let how = format!("Comment `{} link {code}` from the account to link (GitHub, GitLab, Slack, Jira, Linear) within 10 minutes.", self.config.mention);
        Ok(json(200, &json!({ "code": code, "expires_in": 600, "how": how })))
    }

    /// The operators' routes (admin listener).
    async fn operate(&self, request: &HttpRequest) -> Result<HttpResponse, PluginError> {
        let path = request.path.as_str();
        match (request.method.as_str(), path) {
            ("POST", "/internal/integrations/rotate-keys") => {
                let workspaces = match &self.workspaces {
                    Some(w) => w.rotate_keys().await?,
                    None => 0,
                };
                let gitlab_webhooks = match &self.gitlab_hooks {
                    Some(h) => h.rotate_keys().await?,
                    None => 0,
                };
                let slack_teams = match &self.slack_install {
                    Some(s) => s.rotate_keys().await?,
                    None => 0,
                };
                let rotated =
                    json!({ "workspaces": workspaces, "gitlab_webhooks": gitlab_webhooks, "slack_teams": slack_teams });
                self.hub.inbox.audit("integrations", None, "keys_rotated", rotated.clone()).await;
                Ok(json(200, &json!({ "rotated": rotated })))
            }
            ("GET", "/internal/webhooks/dead-letters") => {
                Ok(json(200, &json!({ "dead_letters": self.hub.inbox.dead_letters().await? })))
            }
            ("POST", "/internal/integrations/links") => {
                #[derive(serde::Deserialize)]
                struct Link {
                    provider: String,
                    external_id: String,
                    user_id: String,
                }
                let Ok(link) = serde_json::from_slice::<Link>(&request.body) else {
                    return Ok(json(422, &json!({ "error": "expected {provider, external_id, user_id}" })));
                };
                if !ROUTES.iter().any(|(s, _)| *s == link.provider)
                    || link.external_id.is_empty()
                    || link.user_id.is_empty()
                {
                    return Ok(json(
                        422,
                        &json!({ "error": "provider must be one of github, gitlab, slack, jira, jira_dc, linear; ids not empty" }),
                    ));
                }
                // GitHub logins and GitLab usernames are case-insensitive.
                let external = if ["github", "gitlab"].contains(&link.provider.as_str()) {
                    link.external_id.to_lowercase()
                } else {
                    link.external_id
                };
                let pool = self.hub.inbox.db.ready().await?;
                sqlx::query(
                    "INSERT INTO integration_links (provider, external_id, user_id) VALUES ($1, $2, $3)
                     ON CONFLICT (provider, external_id) DO UPDATE SET user_id = EXCLUDED.user_id",
                )
                .bind(&link.provider)
                .bind(&external)
                .bind(&link.user_id)
                .execute(pool)
                .await
                .map_err(pg_common::db_error)?;
                self.hub
                    .inbox
                    .audit(&link.provider, None, "linked", json!({ "external_id": external, "user_id": link.user_id }))
                    .await;
                Ok(json(200, &json!({ "linked": true })))
            }
            ("POST", p) if p.starts_with("/internal/webhooks/") && p.ends_with("/replay") => {
                let id = p.trim_start_matches("/internal/webhooks/").trim_end_matches("/replay");
                let Ok(id) = id.parse::<i64>() else {
                    return Ok(json(
                        400,
                        &json!({ "error": format!("`{id}` is not a delivery id (a number from the list)") }),
                    ));
                };
                if self.hub.inbox.replay(id).await? {
                    self.hub.wake.notify_one();
                    Ok(json(200, &json!({ "replayed": id })))
                } else {
                    Ok(json(404, &json!({ "error": format!("no dead letter {id}") })))
                }
            }
            _ => Ok(json(404, &json!({ "error": "no such route" }))),
        }
    }
}

impl plugin_sdk::RouteHandler for Integrations {
    fn routes(&self) -> Vec<RouteSpec> {
        let mut routes: Vec<RouteSpec> = ROUTES
            .iter()
            .filter(|(source, _)| self.source(source).on())
            .map(|(_, path)| RouteSpec { method: "POST".into(), path: (*path).into(), authenticated: false })
            .collect();
        routes.push(RouteSpec {
            method: "POST".into(),
            path: "/api/integrations/link-code".into(),
            authenticated: true,
        });
        if self.slack_link.is_some() {
            for path in [slack_link::START, slack_link::CALLBACK] {
                routes.push(RouteSpec { method: "GET".into(), path: path.into(), authenticated: true });
            }
        }
        if self.github_install.is_some() {
            for path in [github_install::START, github_install::CALLBACK, github_install::LIST] {
                routes.push(RouteSpec { method: "GET".into(), path: path.into(), authenticated: true });
            }
        }
        if self.slack_install.is_some() {
            for path in [slack_install::START, slack_install::CALLBACK] {
                routes.push(RouteSpec { method: "GET".into(), path: path.into(), authenticated: true });
            }
        }
        if self.gitlab_hooks.is_some() {
            for (method, path) in [
                ("GET", gitlab_hooks::PATH.to_owned()),
                ("POST", gitlab_hooks::PATH.to_owned()),
                ("DELETE", format!("{}/{{id}}", gitlab_hooks::PATH)),
            ] {
                routes.push(RouteSpec { method: method.into(), path: path.into(), authenticated: true });
            }
        }
        // Mounted whenever the source is on: without an OAuth app they say what is missing
        // (the web client shows these rows when ENABLE_JIRA & co. are set).
        for (provider, slug, _) in workspaces::PROVIDERS {
            if self.source(provider).on() {
                for (method, path) in workspaces::routes(slug) {
                    routes.push(RouteSpec { method: method.into(), path: path.into(), authenticated: true });
                }
            }
        }
        for (method, path) in [
            ("GET", "/internal/webhooks/dead-letters"),
            ("POST", "/internal/webhooks/{id}/replay"),
            ("POST", "/internal/integrations/links"),
            ("POST", "/internal/integrations/rotate-keys"),
        ] {
            routes.push(RouteSpec { method: method.into(), path: path.into(), authenticated: false });
        }
        routes
    }

    async fn handle(&self, ctx: CallContext, request: HttpRequest) -> Result<HttpResponse, PluginError> {
        if request.path.starts_with("/internal/") {
            return self.operate(&request).await;
        }
        if request.path == "/api/integrations/link-code" {
            return self.link_code(&ctx).await;
        }
        if let Some(link) = self.slack_link.as_ref().filter(|_| request.path.starts_with(slack_link::START)) {
            return link.handle(&ctx, &request).await;
        }
        if let Some(install) = self.slack_install.as_ref().filter(|_| request.path.starts_with(slack_install::START)) {
            return install.handle(&ctx, &request).await;
        }
        let github_paths = [github_install::START, github_install::CALLBACK, github_install::LIST];
        if let Some(install) = self.github_install.as_ref().filter(|_| github_paths.contains(&request.path.as_str())) {
            return install.handle(self.hub.github.as_ref(), &ctx, &request).await;
        }
        if let Some(hooks) = self.gitlab_hooks.as_ref().filter(|_| request.path.starts_with(gitlab_hooks::PATH)) {
            return hooks.handle(&ctx, &request).await;
        }
        for (provider, slug, _) in workspaces::PROVIDERS {
            let prefix = format!("/integration/{slug}/");
            if request.path.starts_with(&prefix) && !request.path.ends_with("/events") {
                return match self.workspaces.as_ref().filter(|w| w.serves(provider)) {
                    Some(ws) => ws.handle(provider, slug, &ctx, &request).await,
                    None => Ok(workspaces::without_app(provider, slug, &request)),
                };
            }
        }
        match ROUTES.iter().find(|(_, path)| *path == request.path.as_str()) {
            Some((source, _)) if self.source(source).on() => self.receive(source, &request).await,
            _ => Ok(json(404, &json!({ "error": "this integration is not enabled" }))),
        }
    }

    async fn health(&self) -> Result<String, PluginError> {
        self.hub.inbox.db.ping().await?;
        let on: Vec<&str> = ROUTES.iter().filter(|(s, _)| self.source(s).on()).map(|(s, _)| *s).collect();
        Ok(format!("inbox on PostgreSQL {}; sources: {}", self.hub.inbox.db.label(), on.join(", ")))
    }

    /// Workers stop between deliveries' steps: whatever they held is claimed again later
    /// (by this host after a restart, or by another) once its lease runs out.
    async fn shutdown(&self) {
        for task in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            task.abort();
        }
        self.refusals.flush(&self.hub.inbox).await;
    }
}
