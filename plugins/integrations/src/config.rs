//! Configuration of `Integrations` (its `config` table; the example profile fills it from
//! OpenHands' environment variables).

use plugin_sdk::PluginError;
use serde::Deserialize;

/// The providers with workspaces (Jira, Jira DC, Linear): their name, path segment and
/// variables' prefix.
pub(crate) const WORKSPACE_PROVIDERS: [(&str, &str, &str); 3] =
    [("jira", "jira", "JIRA"), ("jira_dc", "jira-dc", "JIRA_DC"), ("linear", "linear", "LINEAR")];

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// PostgreSQL for the inbox, the audit log, links and callbacks; default from DB_*.
    #[serde(default)]
    pub(crate) database_url: Option<String>,
    #[serde(default)]
    pub(crate) max_connections: Option<u32>,
    #[serde(default = "pg_common::default_acquire_timeout_ms")]
    pub(crate) acquire_timeout_ms: u64,
    /// Redis for the per-source rate limits; default from REDIS_HOST/REDIS_PORT/REDIS_PASSWORD.
    #[serde(default)]
    pub(crate) redis_url: Option<String>,
    #[serde(default = "default_prefix")]
    pub(crate) redis_key_prefix: String,
    /// Deliveries accepted per source per minute (then 429 with Retry-After); 0: no limit.
    #[serde(default = "default_rate")]
    pub(crate) rate_limit_per_minute: u64,
    /// What a comment must contain to call the agent.
    #[serde(default = "default_mention")]
    pub(crate) mention: String,
    /// Attempts at processing a delivery (and at posting an answer) before it is a dead letter.
    #[serde(default = "default_attempts")]
    pub(crate) max_attempts: i32,
    /// The first retry's wait (ms); each next one doubles it (with jitter).
    #[serde(default = "default_backoff_ms")]
    pub(crate) retry_backoff_ms: u64,
    /// Inbox workers on this host (plus one that posts answers). 0 makes a host that only
    /// receives: deliveries wait in the inbox for hosts that work.
    #[serde(default = "default_workers")]
    pub(crate) workers: usize,
    /// This server's public origin (WEB_HOST): the link users are sent to, to link accounts.
    #[serde(default)]
    pub(crate) web_host: Option<String>,
    /// Seals workspaces' secrets at rest; default from OH_MASTER_KEY (else JWT_SECRET), as
    /// every PostgreSQL plugin of the deployment.
    #[serde(default)]
    pub(crate) master_key: Option<String>,
    #[serde(default)]
    pub(crate) github: Source,
    #[serde(default)]
    pub(crate) gitlab: Source,
    #[serde(default)]
    pub(crate) slack: Source,
    #[serde(default)]
    pub(crate) jira: Source,
    #[serde(default)]
    pub(crate) jira_dc: Source,
    #[serde(default)]
    pub(crate) linear: Source,
}

/// One provider. Which fields apply depends on it (see docs/configuration.md).
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Source {
    /// What mounts its route, as the enterprise document says: GitHub's when
    /// `GITHUB_APP_CLIENT_ID` is set, GitLab's when `GITLAB_APP_CLIENT_ID` is, Jira's, Jira
    /// DC's and Linear's when `ENABLE_JIRA` / `ENABLE_JIRA_DC` / `ENABLE_LINEAR` are on (set
    /// and not a "no"). Absent: `enabled` alone decides.
    #[serde(default)]
    pub(crate) mounted_by: Option<String>,
    /// A flag (`${GITHUB_WEBHOOKS_ENABLED:-}`): with `mounted_by`, only a "no" matters (it
    /// leaves the source out); without, a "yes" mounts the route.
    #[serde(default)]
    pub(crate) enabled: Option<String>,
    /// The shared secret its deliveries are signed with.
    #[serde(default)]
    pub(crate) webhook_secret: Option<String>,
    /// Its API (GitHub `https://api.github.com`, Slack `https://slack.com/api`, ...).
    #[serde(default)]
    pub(crate) api_url: Option<String>,
    /// GitHub: the App's id (GITHUB_APP_CLIENT_ID) and private key (GITHUB_APP_PRIVATE_KEY, PEM).
    #[serde(default)]
    pub(crate) app_id: Option<String>,
    #[serde(default)]
    pub(crate) private_key: Option<String>,
    /// Slack: the bot token that posts answers (`xoxb-…`).
    #[serde(default)]
    pub(crate) bot_token: Option<String>,
    /// The token answers are posted with: GitLab a bot account's (`PRIVATE-TOKEN`), Jira
    /// Cloud the service account's API token, Jira DC a personal access token, Linear an API
    /// key.
    #[serde(default)]
    pub(crate) token: Option<String>,
    /// Jira Cloud: the service account's email (with `token`, basic auth).
    #[serde(default)]
    pub(crate) account_email: Option<String>,
    /// Jira, Jira DC, Linear: the OAuth app through which admins register workspaces and users
    /// link to them (JIRA_CLIENT_ID/JIRA_CLIENT_SECRET, JIRA_DC_CLIENT_ID/..., LINEAR_CLIENT_ID/...).
    #[serde(default)]
    pub(crate) oauth_client_id: Option<String>,
    #[serde(default)]
    pub(crate) oauth_client_secret: Option<String>,
    /// Where users authorize it: Jira `https://auth.atlassian.com` (also its token endpoint),
    /// Linear `https://linear.app`; Jira DC's is its own `api_url`.
    #[serde(default)]
    pub(crate) oauth_url: Option<String>,
    /// Jira Cloud's platform API (`https://api.atlassian.com`): who signed in, their sites, and
    /// comments as a workspace's service account.
    #[serde(default)]
    pub(crate) cloud_api_url: Option<String>,
    /// GitHub: the App's slug (GITHUB_APP_SLUG), for its install link
    /// (`{web_url}/apps/{slug}/installations/new`).
    #[serde(default)]
    pub(crate) app_slug: Option<String>,
    /// GitHub's web address (`https://github.com`; GitHub Enterprise: its own).
    #[serde(default)]
    pub(crate) web_url: Option<String>,
}

fn default_prefix() -> String {
    "oh:".to_owned()
}
fn default_rate() -> u64 {
    600
}
fn default_mention() -> String {
    "@openhands".to_owned()
}
fn default_attempts() -> i32 {
    5
}
fn default_workers() -> usize {
    2
}
fn default_backoff_ms() -> u64 {
    2000
}

fn set(v: &Option<String>) -> Option<String> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned)
}

impl Source {
    pub(crate) fn on(&self) -> bool {
        let enabled = set(&self.enabled).map(|v| seed_env::flag(&v) == Ok(true));
        match &self.mounted_by {
            Some(condition) => seed_env::switched_on(Some(condition)) && enabled != Some(false),
            None => enabled == Some(true),
        }
    }

    /// A field an enabled source needs.
    pub(crate) fn need(&self, source: &str, key: &str, var: &str) -> Result<String, PluginError> {
        let value = match key {
            "webhook_secret" => &self.webhook_secret,
            "app_id" => &self.app_id,
            "private_key" => &self.private_key,
            "bot_token" => &self.bot_token,
            "token" => &self.token,
            "account_email" => &self.account_email,
            "oauth_client_id" => &self.oauth_client_id,
            "oauth_client_secret" => &self.oauth_client_secret,
            _ => &self.api_url,
        };
        set(value).ok_or_else(|| {
            PluginError::invalid_config(format!(
                "{source} is enabled, so `{source}.{key}` is required (from {var}); or leave {source} out with `{source}.enabled` false"
            ))
        })
    }

    pub(crate) fn api(&self, default: &str) -> String {
        url_or(&self.api_url, default)
    }

    /// Where users authorize its OAuth app (`oauth_url`, else `default`).
    pub(crate) fn oauth(&self, default: &str) -> String {
        url_or(&self.oauth_url, default)
    }

    /// Whether one site's secret and account are configured (else deliveries need a
    /// registered workspace).
    pub(crate) fn global(&self) -> bool {
        set(&self.webhook_secret).is_some()
    }

    /// Whether its OAuth app is configured (Jira, Jira DC, Linear: workspaces; Slack: users
    /// link by signing in with Slack).
    pub(crate) fn has_oauth_app(&self) -> bool {
        set(&self.oauth_client_id).is_some()
    }
}

impl Config {
    /// The database pool this config names.
    pub(crate) fn pool(&self) -> pg_common::Pool<'_> {
        pg_common::Pool {
            database_url: self.database_url.as_deref(),
            max_connections: self.max_connections,
            acquire_timeout_ms: self.acquire_timeout_ms,
        }
    }

    pub(crate) fn parse(json: &str) -> Result<Config, PluginError> {
        let c: Config = plugin_sdk::parse_config(json)?;
        if c.max_attempts < 1 {
            return Err(PluginError::invalid_config("max_attempts must be at least 1"));
        }
        if c.mention.trim().is_empty() {
            return Err(PluginError::invalid_config("mention must not be empty (e.g. \"@openhands\")"));
        }
        if let Some(Err(e)) = set(&c.web_host).map(|h| seed_env::public_url(&h)) {
            return Err(PluginError::invalid_config(format!("web_host (WEB_HOST): {e}")));
        }
        for (name, _) in crate::routes::ROUTES {
            let source = c.source(name);
            if let Some(Err(e)) = set(&source.enabled).map(|v| seed_env::flag(&v)) {
                return Err(PluginError::invalid_config(format!("{name}.enabled: {e}")));
            }
        }
        for (name, source, var) in
            [("github", &c.github, "GITHUB_APP_WEBHOOK_SECRET"), ("slack", &c.slack, "SLACK_SIGNING_SECRET")]
        {
            if source.on() {
                source.need(name, "webhook_secret", var)?;
            }
        }
        if c.github.on() {
            c.github.need("github", "app_id", "GITHUB_APP_CLIENT_ID")?;
            let key = c.github.need("github", "private_key", "GITHUB_APP_PRIVATE_KEY")?;
            jsonwebtoken::EncodingKey::from_rsa_pem(pem(&key).as_bytes()).map_err(|e| {
                PluginError::invalid_config(format!(
                    "github.private_key (GITHUB_APP_PRIVATE_KEY) is not an RSA PEM key: {e}"
                ))
            })?;
        }
        // Without the deployment's bot token, each workspace installs the app (its OAuth app).
        if c.slack.on() && !c.slack.has_oauth_app() {
            c.slack.need("slack", "bot_token", "SLACK_BOT_TOKEN")?;
        }
        if c.gitlab.on() {
            c.gitlab.need("gitlab", "token", "GITLAB_TOKEN")?;
        }
        // Jira, Jira DC and Linear take one site's secret and account from the profile, or
        // workspaces registered by their admins through an OAuth app, or both.
        for (name, _, prefix) in WORKSPACE_PROVIDERS {
            let source = c.source(name);
            if !source.on() {
                continue;
            }
            if !source.global() && !source.has_oauth_app() {
                return Err(PluginError::invalid_config(format!(
                    "{name} is enabled, so it needs `{name}.webhook_secret` ({prefix}_WEBHOOK_SECRET) for one site, \
                     or `{name}.oauth_client_id` and `{name}.oauth_client_secret` ({prefix}_CLIENT_ID, \
                     {prefix}_CLIENT_SECRET) for workspaces registered by their admins"
                )));
            }
            if source.has_oauth_app() {
                source.need(name, "oauth_client_secret", &format!("{prefix}_CLIENT_SECRET"))?;
            }
        }
        if c.jira.on() && c.jira.global() {
            c.jira.need("jira", "api_url", "JIRA_BASE_URL")?;
            c.jira.need("jira", "account_email", "JIRA_SERVICE_ACCOUNT_EMAIL")?;
            c.jira.need("jira", "token", "JIRA_API_TOKEN")?;
        }
        if c.jira_dc.on() {
            // Data Center is one server: its OAuth and its API are there.
            c.jira_dc.need("jira_dc", "api_url", "JIRA_DC_BASE_URL")?;
            if c.jira_dc.global() {
                c.jira_dc.need("jira_dc", "token", "JIRA_DC_TOKEN")?;
            }
        }
        if c.linear.on() && c.linear.global() {
            c.linear.need("linear", "token", "LINEAR_API_KEY")?;
        }
        Ok(c)
    }

    /// A source by name (`github`, `gitlab`, `slack`, `jira`, `jira_dc`, `linear`).
    pub(crate) fn source(&self, name: &str) -> &Source {
        match name {
            "github" => &self.github,
            "gitlab" => &self.gitlab,
            "slack" => &self.slack,
            "jira" => &self.jira,
            "jira_dc" => &self.jira_dc,
            _ => &self.linear,
        }
    }

    /// This server's public origin from `web_host` (a bare host name gets `https://`, as
    /// `WEB_HOST` is read everywhere), if configured.
    pub(crate) fn web_origin(&self) -> Option<String> {
        set(&self.web_host).and_then(|h| seed_env::public_url(&h).ok())
    }

    pub(crate) fn redis_url(&self) -> String {
        set(&self.redis_url).unwrap_or_else(plugin_sdk::redis_url_from_env)
    }
}

/// A configured URL (else `default`), without a trailing slash.
pub(crate) fn url_or(value: &Option<String>, default: &str) -> String {
    set(value).unwrap_or_else(|| default.to_owned()).trim_end_matches('/').to_owned()
}

/// A PEM key as environments carry it: with real newlines, or `\n` escapes on one line.
pub(crate) fn pem(key: &str) -> String {
    key.replace("\\n", "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jira_and_linear_need_a_site_secret_or_an_oauth_app_and_say_which_variables() {
        let none = Config::parse(r#"{"jira": {"enabled": "1"}}"#).unwrap_err();
        for named in ["JIRA_WEBHOOK_SECRET", "JIRA_CLIENT_ID", "JIRA_CLIENT_SECRET"] {
            assert!(none.message.contains(named), "{named}: {}", none.message);
        }
        let half = Config::parse(r#"{"linear": {"enabled": "1", "oauth_client_id": "id"}}"#).unwrap_err();
        assert!(half.message.contains("LINEAR_CLIENT_SECRET"), "{}", half.message);
        let workspaces = r#"{"linear": {"enabled": "1", "oauth_client_id": "id", "oauth_client_secret": "s"}}"#;
        let c = Config::parse(workspaces).unwrap();
        assert!(c.linear.has_oauth_app() && !c.linear.global());
        assert_eq!(c.linear.oauth("https://linear.app"), "https://linear.app");
        // GitLab's own secret is optional: webhooks installed by users have theirs.
        assert!(Config::parse(r#"{"gitlab": {"enabled": "1", "token": "t"}}"#).is_ok());
        let dc = Config::parse(r#"{"jira_dc": {"enabled": "1", "oauth_client_id": "i", "oauth_client_secret": "s"}}"#)
            .unwrap_err();
        assert!(dc.message.contains("JIRA_DC_BASE_URL"), "{}", dc.message);
    }
}
