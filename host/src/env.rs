//! Every environment variable the host itself reads, in one place, and [`HostEnv`]: what the
//! profile loader reads of them, once, through the injected lookup (so tests pass a map).
//!
//! Plugins read their own variables (DB_*, REDIS_*, KEYCLOAK_*, ...) through `${VAR}` in
//! `plugins.toml` or `plugin_sdk::env`; `docs/configuration.md` lists them all.

use std::path::PathBuf;

/// The profile file; default `./plugins.toml`. `--config FILE` overrides it.
pub const OPENHANDS_PLUGINS_TOML: &str = "OPENHANDS_PLUGINS_TOML";
/// OpenHands' config class, for operators migrating: its OSS `ServerConfig` means the bundled
/// default profile, its enterprise `SaaSServerConfig` the SaaS one; a path names a profile.
/// Read when neither `--config` nor `OPENHANDS_PLUGINS_TOML` says.
pub const OPENHANDS_CONFIG_CLS: &str = "OPENHANDS_CONFIG_CLS";
/// `OSS` or `SAAS` (any case): the mode of a profile whose `[server] app_mode` does not say.
pub const APP_MODE: &str = "APP_MODE";
/// `tracing` filter for the logs (e.g. `info,oh_host=debug`); default `info`.
pub const RUST_LOG: &str = "RUST_LOG";
/// A flag, as in OpenHands: each log line a JSON object (for log shippers); default plain text.
pub const LOG_JSON: &str = "LOG_JSON";
/// `HOME`, for `~` in profile paths.
pub const HOME: &str = "HOME";
/// Comma-separated origins allowed by CORS; default: any `localhost`/`127.0.0.1` origin.
pub const PERMITTED_CORS_ORIGINS: &str = "PERMITTED_CORS_ORIGINS";
/// A directory of static files (the web client) served at `/` when set.
pub const FRONTEND_DIRECTORY: &str = "FRONTEND_DIRECTORY";
/// Where the web client's build is looked for when `FRONTEND_DIRECTORY` is unset (relative to
/// the working directory, as in OpenHands).
pub const DEFAULT_FRONTEND_DIRECTORY: &str = "frontend/build";
/// `1` lets `POST /api/conversations` choose the conversation id (as OpenHands).
pub const ALLOW_SET_CONVERSATION_ID: &str = "ALLOW_SET_CONVERSATION_ID";
/// The web app's host name (`app.example.com`; a full URL is accepted too): `https://` is
/// added (`http://` on loopback); allowed by CORS and the cross-site guard.
pub const WEB_HOST: &str = "WEB_HOST";
/// The host name of the sign-in routes (the OAuth callbacks); default `WEB_HOST`.
pub const AUTH_WEB_HOST: &str = "AUTH_WEB_HOST";
/// Shown as `GITHUB_CLIENT_ID` by `/api/options/config`; SaaS: `github` in `PROVIDERS_CONFIGURED`.
pub const GITHUB_APP_CLIENT_ID: &str = "GITHUB_APP_CLIENT_ID";
/// SaaS: `gitlab` in `PROVIDERS_CONFIGURED` when set.
pub const GITLAB_APP_CLIENT_ID: &str = "GITLAB_APP_CLIENT_ID";
/// SaaS: `bitbucket` in `PROVIDERS_CONFIGURED` when set.
pub const BITBUCKET_APP_CLIENT_ID: &str = "BITBUCKET_APP_CLIENT_ID";
/// SaaS: `enterprise_sso` in `PROVIDERS_CONFIGURED` when set.
pub const ENABLE_ENTERPRISE_SSO: &str = "ENABLE_ENTERPRISE_SSO";
/// SaaS: shown as `APP_SLUG` (the GitHub App's slug).
pub const GITHUB_APP_SLUG: &str = "GITHUB_APP_SLUG";
/// PostHog key shown to the frontend; default OpenHands' public key in OSS mode, none in SaaS
/// mode (the document: a SaaS deployment sends to its own project or nowhere).
pub const POSTHOG_CLIENT_KEY: &str = "POSTHOG_CLIENT_KEY";
/// `true`/`1`: `FEATURE_FLAGS.ENABLE_BILLING` in `/api/options/config`.
pub const ENABLE_BILLING: &str = "ENABLE_BILLING";
/// `true`/`1`: `FEATURE_FLAGS.HIDE_LLM_SETTINGS` in `/api/options/config`.
pub const HIDE_LLM_SETTINGS: &str = "HIDE_LLM_SETTINGS";
/// SaaS, `true`/`1`: `FEATURE_FLAGS.ENABLE_JIRA`.
pub const ENABLE_JIRA: &str = "ENABLE_JIRA";
/// SaaS, `true`/`1`: `FEATURE_FLAGS.ENABLE_JIRA_DC`.
pub const ENABLE_JIRA_DC: &str = "ENABLE_JIRA_DC";
/// SaaS, `true`/`1`: `FEATURE_FLAGS.ENABLE_LINEAR`.
pub const ENABLE_LINEAR: &str = "ENABLE_LINEAR";
/// An RFC 3339 time (`2026-12-01T02:00:00Z`): announced as `MAINTENANCE.startTime` in
/// `/api/options/config` (SaaS), and from then on new conversations answer 503.
pub const MAINTENANCE_START_TIME: &str = "MAINTENANCE_START_TIME";
/// SaaS: `AUTH_URL` in `/api/options/config` when set.
pub const AUTH_URL: &str = "AUTH_URL";
/// SaaS: `STRIPE_PUBLISHABLE_KEY` in `/api/options/config` (Stripe's browser key).
pub const STRIPE_PUBLISHABLE_KEY: &str = "STRIPE_PUBLISHABLE_KEY";
/// The deployment's default model: listed first by `/api/options/models`.
pub const LITELLM_DEFAULT_MODEL: &str = "LITELLM_DEFAULT_MODEL";
/// A LiteLLM proxy: in SaaS mode `/api/options/models` lists its models (`GET {url}/models`).
pub const LITE_LLM_API_URL: &str = "LITE_LLM_API_URL";
/// The key for the LiteLLM proxy's `/models`.
pub const LITE_LLM_API_KEY: &str = "LITE_LLM_API_KEY";
/// OpenTelemetry: traces go to `{endpoint}/v1/traces` (OTLP/HTTP) when set.
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The service name on the traces (default `oh-host`).
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// `http/protobuf` (default) or `http/json`: how traces are encoded.
pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// The `oh-plugin-runner` program for `isolation = "process"` (default: beside `oh-host`).
pub const OH_PLUGIN_RUNNER: &str = "OH_PLUGIN_RUNNER";
/// Set by the host for a runner it starts: the socket to connect to.
pub const OH_PLUGIN_SOCKET: &str = "OH_PLUGIN_SOCKET";

/// Every variable above, for the configuration reference (a test checks it lists them all).
pub const ALL: &[&str] = &[
    OPENHANDS_PLUGINS_TOML,
    OPENHANDS_CONFIG_CLS,
    APP_MODE,
    RUST_LOG,
    LOG_JSON,
    HOME,
    PERMITTED_CORS_ORIGINS,
    FRONTEND_DIRECTORY,
    ALLOW_SET_CONVERSATION_ID,
    WEB_HOST,
    AUTH_WEB_HOST,
    GITHUB_APP_CLIENT_ID,
    GITLAB_APP_CLIENT_ID,
    BITBUCKET_APP_CLIENT_ID,
    ENABLE_ENTERPRISE_SSO,
    GITHUB_APP_SLUG,
    POSTHOG_CLIENT_KEY,
    ENABLE_BILLING,
    HIDE_LLM_SETTINGS,
    ENABLE_JIRA,
    ENABLE_JIRA_DC,
    ENABLE_LINEAR,
    MAINTENANCE_START_TIME,
    AUTH_URL,
    STRIPE_PUBLISHABLE_KEY,
    LITELLM_DEFAULT_MODEL,
    LITE_LLM_API_URL,
    LITE_LLM_API_KEY,
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_SERVICE_NAME,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OH_PLUGIN_RUNNER,
    OH_PLUGIN_SOCKET,
];

/// How the host reads a variable: the process environment, or a map in tests.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment; an empty value counts as unset.
pub fn process(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// What the host reads of its environment, once, when the profile is loaded.
#[derive(Clone, Debug, Default)]
pub struct HostEnv {
    /// `PERMITTED_CORS_ORIGINS`, split and without trailing slashes; `None` = localhost only.
    pub permitted_cors_origins: Option<Vec<String>>,
    pub frontend_directory: Option<PathBuf>,
    pub allow_set_conversation_id: bool,
    /// `WEB_HOST` as a URL (`https://` added to a bare host name).
    pub web_host: Option<String>,
    /// `AUTH_WEB_HOST` as a URL; `None`: the same as `web_host`.
    pub auth_web_host: Option<String>,
    pub github_app_client_id: Option<String>,
    pub gitlab_app_client_id: Option<String>,
    pub bitbucket_app_client_id: Option<String>,
    pub enable_enterprise_sso: bool,
    pub github_app_slug: Option<String>,
    pub posthog_client_key: Option<String>,
    pub enable_billing: bool,
    pub hide_llm_settings: bool,
    pub enable_jira: bool,
    pub enable_jira_dc: bool,
    pub enable_linear: bool,
    pub maintenance_start_time: Option<String>,
    /// `MAINTENANCE_START_TIME` parsed.
    pub maintenance_start: Option<chrono::DateTime<chrono::Utc>>,
    pub auth_url: Option<String>,
    pub stripe_publishable_key: Option<String>,
    pub litellm_default_model: Option<String>,
    pub lite_llm_api_url: Option<String>,
    pub lite_llm_api_key: Option<String>,
    pub otel_endpoint: Option<String>,
    pub otel_service_name: String,
    pub otel_protocol: Option<String>,
}

impl HostEnv {
    /// Reads the variables; a problem (a frontend directory that is not one) is pushed.
    pub fn read(lookup: Lookup<'_>, problems: &mut Vec<String>) -> HostEnv {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        // Every flag through the one parser; a value that is not one is a problem, not "off".
        let mut flag_problems = Vec::new();
        let mut flag = |name: &str| match seed_env::flag(&get(name).unwrap_or_default()) {
            Ok(on) => on,
            Err(e) => {
                flag_problems.push(format!("environment variable {name}: {e}"));
                false
            }
        };
        let (enable_billing, hide_llm_settings, enable_jira, enable_jira_dc, enable_linear, allow_set_conversation_id) = (
            flag(ENABLE_BILLING),
            flag(HIDE_LLM_SETTINGS),
            flag(ENABLE_JIRA),
            flag(ENABLE_JIRA_DC),
            flag(ENABLE_LINEAR),
            flag(ALLOW_SET_CONVERSATION_ID),
        );
        problems.extend(flag_problems);
        let mut url = |name: &str| {
            get(name).and_then(|v| match seed_env::public_url(&v) {
                Ok(url) => Some(url),
                Err(e) => {
                    problems.push(format!("environment variable {name}: {e}"));
                    None
                }
            })
        };
        let (web_host, auth_web_host) = (url(WEB_HOST), url(AUTH_WEB_HOST));
        // As OpenHands: `./frontend/build` when the variable is unset and a build is there
        // (`make frontend` puts one there).
        let frontend_directory = get(FRONTEND_DIRECTORY).map(PathBuf::from).or_else(|| {
            let default = PathBuf::from(DEFAULT_FRONTEND_DIRECTORY);
            default.join("index.html").is_file().then_some(default)
        });
        if let Some(dir) = &frontend_directory {
            if !dir.join("index.html").is_file() {
                problems.push(format!(
                    "environment variable {FRONTEND_DIRECTORY}: {} has no index.html; point it at the web client's build",
                    dir.display()
                ));
            }
        }
        let maintenance_start_time = get(MAINTENANCE_START_TIME);
        let maintenance_start =
            maintenance_start_time.as_deref().and_then(|t| match chrono::DateTime::parse_from_rfc3339(t.trim()) {
                Ok(at) => Some(at.with_timezone(&chrono::Utc)),
                Err(e) => {
                    problems.push(format!(
                        "environment variable {MAINTENANCE_START_TIME}: `{t}` is not an RFC 3339 time ({e}); \
                         write it like 2026-12-01T02:00:00Z, or unset it"
                    ));
                    None
                }
            });
        HostEnv {
            maintenance_start,
            permitted_cors_origins: get(PERMITTED_CORS_ORIGINS).map(|v| {
                v.split(',').map(|s| s.trim().trim_end_matches('/').to_owned()).filter(|s| !s.is_empty()).collect()
            }),
            frontend_directory,
            allow_set_conversation_id,
            web_host,
            auth_web_host,
            github_app_client_id: get(GITHUB_APP_CLIENT_ID),
            gitlab_app_client_id: get(GITLAB_APP_CLIENT_ID),
            bitbucket_app_client_id: get(BITBUCKET_APP_CLIENT_ID),
            enable_enterprise_sso: seed_env::switched_on(get(ENABLE_ENTERPRISE_SSO).as_deref()),
            github_app_slug: get(GITHUB_APP_SLUG),
            posthog_client_key: get(POSTHOG_CLIENT_KEY),
            enable_billing,
            hide_llm_settings,
            enable_jira,
            enable_jira_dc,
            enable_linear,
            maintenance_start_time,
            auth_url: get(AUTH_URL),
            stripe_publishable_key: get(STRIPE_PUBLISHABLE_KEY),
            litellm_default_model: get(LITELLM_DEFAULT_MODEL),
            lite_llm_api_url: get(LITE_LLM_API_URL).map(|u| u.trim_end_matches('/').to_owned()),
            lite_llm_api_key: get(LITE_LLM_API_KEY),
            otel_endpoint: get(OTEL_EXPORTER_OTLP_ENDPOINT),
            otel_service_name: get(OTEL_SERVICE_NAME).unwrap_or_else(|| "oh-host".to_owned()),
            otel_protocol: get(OTEL_EXPORTER_OTLP_PROTOCOL),
        }
    }
}
