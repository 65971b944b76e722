//! Every environment variable the host itself reads, in one place.
//!
//! Plugins read their own (DB_*, REDIS_*, KEYCLOAK_*, ...) through `${VAR}` in `plugins.toml`.

/// The profile file; default `./plugins.toml`. `--config FILE` overrides it.
pub const OPENHANDS_PLUGINS_TOML: &str = "OPENHANDS_PLUGINS_TOML";
/// Comma-separated origins allowed by CORS; default: any `localhost`/`127.0.0.1` origin.
pub const PERMITTED_CORS_ORIGINS: &str = "PERMITTED_CORS_ORIGINS";
/// `tracing` filter for the host's logs (e.g. `info,oh_host=debug`); default `info`.
pub const RUST_LOG: &str = "RUST_LOG";
/// Shown as `GITHUB_CLIENT_ID` by `/api/options/config`.
pub const GITHUB_APP_CLIENT_ID: &str = "GITHUB_APP_CLIENT_ID";
/// `"true"` turns on `FEATURE_FLAGS.ENABLE_BILLING` in `/api/options/config`.
pub const ENABLE_BILLING: &str = "ENABLE_BILLING";
/// `"true"` turns on `FEATURE_FLAGS.HIDE_LLM_SETTINGS` in `/api/options/config`.
pub const HIDE_LLM_SETTINGS: &str = "HIDE_LLM_SETTINGS";
/// PostHog key shown to the frontend; default OpenHands' public key.
pub const POSTHOG_CLIENT_KEY: &str = "POSTHOG_CLIENT_KEY";
/// `HOME`, for `~` in paths.
pub const HOME: &str = "HOME";

/// Reads a variable, treating an empty value as unset.
pub fn get(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}
/// SaaS: shown as `APP_SLUG` (the GitHub App's slug).
pub const GITHUB_APP_SLUG: &str = "GITHUB_APP_SLUG";
/// SaaS: which providers `PROVIDERS_CONFIGURED` lists (set = configured).
pub const GITLAB_APP_CLIENT_ID: &str = "GITLAB_APP_CLIENT_ID";
pub const BITBUCKET_APP_CLIENT_ID: &str = "BITBUCKET_APP_CLIENT_ID";
pub const ENABLE_ENTERPRISE_SSO: &str = "ENABLE_ENTERPRISE_SSO";
/// SaaS feature flags (`"true"` or `"1"`).
pub const ENABLE_JIRA: &str = "ENABLE_JIRA";
pub const ENABLE_JIRA_DC: &str = "ENABLE_JIRA_DC";
pub const ENABLE_LINEAR: &str = "ENABLE_LINEAR";
/// SaaS: `MAINTENANCE.startTime` in `/api/options/config` when set.
pub const MAINTENANCE_START_TIME: &str = "MAINTENANCE_START_TIME";
/// SaaS: `AUTH_URL` in `/api/options/config` when set.
pub const AUTH_URL: &str = "AUTH_URL";
/// A directory of static files (the web client) served at `/` when set.
pub const FRONTEND_DIRECTORY: &str = "FRONTEND_DIRECTORY";
