//! Configuration of `SaasUserAuth` and `SaasAuthRoutes` (their `config` tables).

use plugin_sdk::PluginError;
use serde::Deserialize;

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// PostgreSQL for API keys; default from DB_HOST/DB_PORT/DB_NAME/DB_USER/DB_PASS.
    #[serde(default)]
    pub(crate) database_url: Option<String>,
    /// Pool size; default DB_POOL_SIZE + DB_MAX_OVERFLOW.
    #[serde(default)]
    pub(crate) max_connections: Option<u32>,
    /// How long a call waits for a database connection before 503 (ms).
    #[serde(default = "pg_common::default_acquire_timeout_ms")]
    pub(crate) acquire_timeout_ms: u64,
    /// Redis for rate limits; default from REDIS_HOST (localhost), REDIS_PORT (6379),
    /// REDIS_PASSWORD.
    #[serde(default)]
    pub(crate) redis_url: Option<String>,
    /// Requests per user per second (OpenHands: 10). 0 turns the limit off.
    #[serde(default = "default_per_second")]
    pub(crate) rate_limit_per_second: u64,
    /// Requests per user per minute (OpenHands: 100). 0 turns the limit off.
    #[serde(default = "default_per_minute")]
    pub(crate) rate_limit_per_minute: u64,
    /// Failed sign-ins (an unknown, revoked or tampered credential) per client address per
    /// minute before that address is refused (429) for the rest of the minute. 0 turns it off.
    #[serde(default = "default_failed_per_minute")]
    pub(crate) failed_auth_per_minute: u64,
    /// How long a verified API key is trusted without asking the database again (ms). A key
    /// revoked on another host stops working there within this time (at once on the host
    /// that revoked it); an expired one at its expiry. 0 asks on every request.
    #[serde(default = "default_api_key_cache_ms")]
    pub(crate) api_key_cache_ms: u64,
    /// Prefix of every Redis key this plugin writes.
    #[serde(default = "default_prefix")]
    pub(crate) redis_key_prefix: String,
    /// Service-account keys given by hash in the profile (no database row): how the first
    /// real API keys get created, and how automation signs in without Keycloak.
    #[serde(default)]
    pub(crate) static_keys: Vec<StaticKey>,
    /// Keycloak as this server reaches it (KEYCLOAK_SERVER_URL); cookie sign-in is off
    /// without it.
    #[serde(default)]
    pub(crate) keycloak_server_url: Option<String>,
    /// Keycloak as browsers reach it (KEYCLOAK_SERVER_URL_EXT); default: the server URL.
    #[serde(default)]
    pub(crate) keycloak_server_url_ext: Option<String>,
    /// KEYCLOAK_REALM_NAME.
    #[serde(default)]
    pub(crate) keycloak_realm_name: Option<String>,
    /// KEYCLOAK_CLIENT_ID.
    #[serde(default)]
    pub(crate) keycloak_client_id: Option<String>,
    /// KEYCLOAK_CLIENT_SECRET.
    #[serde(default)]
    pub(crate) keycloak_client_secret: Option<String>,
    /// Signs the `keycloak_auth` cookie (JWT_SECRET).
    #[serde(default)]
    pub(crate) jwt_secret: Option<String>,
    /// The web app's host (WEB_HOST): `app.example.com` (`https://` added; `http://` on
    /// loopback) or a full URL. The only origin `redirect_url` may point to.
    #[serde(default)]
    pub(crate) web_host: Option<String>,
    /// The host the OAuth callbacks are served on (AUTH_WEB_HOST); default `web_host`.
    #[serde(default)]
    pub(crate) auth_web_host: Option<String>,
    /// How long a sign-in session lives in Redis (default 30 days; Keycloak's own session
    /// limits apply too, through the refresh token).
    #[serde(default = "default_session_ttl")]
    pub(crate) session_ttl_secs: u64,
    /// Accept a sign-in the browser started itself, as the OpenHands web client does (it
    /// sends users to Keycloak with `state` set to the page to return to, without PKCE or a
    /// state cookie). Such a callback cannot be told from a forged one (login CSRF: a victim
    /// signed in to the attacker's account); `false` accepts only sign-ins started at
    /// `/oauth/keycloak/login`, which a client built for it must then use.
    #[serde(default = "yes")]
    pub(crate) client_initiated_sign_in: bool,
    /// Git providers whose tokens Keycloak brokers (GitHub, GitLab, Bitbucket).
    #[serde(default)]
    pub(crate) providers: Vec<crate::providers::ProviderConfig>,
    /// The deployment's LiteLLM proxy (LITE_LLM_API_URL) and its master key
    /// (LITE_LLM_API_KEY): each user's own proxy key (`/api/keys/llm/byor`) is made there.
    #[serde(default)]
    pub(crate) litellm_api_url: Option<String>,
    #[serde(default)]
    pub(crate) litellm_api_key: Option<String>,
    /// The proxy team users' keys belong to (LITE_LLM_TEAM_ID): its budget and models apply.
    #[serde(default)]
    pub(crate) litellm_team_id: Option<String>,
    /// Keep each user's GitLab projects in PostgreSQL and serve the repository picker and
    /// search from them; default: on when a `gitlab` provider has an OAuth app.
    #[serde(default)]
    pub(crate) gitlab_repository_sync: Option<bool>,
    /// GitLab's API for tokens of gitlab.com; default `https://gitlab.com/api/v4` (a token
    /// naming another host uses that host's).
    #[serde(default)]
    pub(crate) gitlab_api_url: Option<String>,
    /// A stored list older than this is refreshed in the background when read (seconds).
    #[serde(default = "default_gitlab_sync_interval")]
    pub(crate) gitlab_sync_interval_secs: u64,
    /// Master key sealing provider tokens at rest; default OH_MASTER_KEY, else JWT_SECRET
    /// (the environment's, else `jwt_secret`).
    #[serde(default)]
    pub(crate) master_key: Option<String>,
}

/// Cookie sign-in settings, when Keycloak is configured.
pub(crate) struct Sso {
    pub(crate) keycloak: crate::keycloak::Keycloak,
    pub(crate) jwt_secret: String,
    pub(crate) web_host: String,
    /// Where Keycloak sends users back (`{auth_web_host}/oauth/keycloak/callback`).
    pub(crate) auth_web_host: String,
    pub(crate) client_initiated_sign_in: bool,
    /// The server-side sessions the cookies name.
    pub(crate) sessions: crate::sessions::Sessions,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct StaticKey {
    pub(crate) user_id: String,
    /// Hex SHA-256 of the key.
    pub(crate) sha256: String,
}

fn default_gitlab_sync_interval() -> u64 {
    900
}

fn default_per_second() -> u64 {
    10
}
fn default_per_minute() -> u64 {
    100
}
fn default_failed_per_minute() -> u64 {
    20
}
fn default_api_key_cache_ms() -> u64 {
    5000
}
fn yes() -> bool {
    true
}
fn default_session_ttl() -> u64 {
    30 * 24 * 3600
}

fn default_prefix() -> String {
    "oh:".to_owned()
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

    /// The library's API keys in its database (shared by both implementations).
    pub(crate) fn key_store(&self) -> Result<std::sync::Arc<crate::keys::KeyStore>, PluginError> {
        crate::keys::KeyStore::shared(self.pool(), self.api_key_cache_ms)
    }

    pub(crate) fn parse(json: &str) -> Result<Config, PluginError> {
        let c: Config = plugin_sdk::parse_config(json)?;
        for (i, k) in c.static_keys.iter().enumerate() {
            if k.sha256.len() != 64 || !k.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(PluginError::invalid_config(format!(
                    "static_keys[{i}].sha256 must be 64 hex digits (`printf %s KEY | sha256sum`)"
                )));
            }
            if k.user_id.is_empty() {
                return Err(PluginError::invalid_config(format!("static_keys[{i}].user_id is empty")));
            }
        }
        Ok(c)
    }

    /// Keycloak sign-in, when `keycloak_server_url` is set; then realm, client, secret,
    /// `jwt_secret` and `web_host` are required.
    pub(crate) fn sso(&self, redis: &crate::redis_conn::Redis) -> Result<Option<Sso>, PluginError> {
        let Some(server) = self.keycloak_server_url.as_deref().filter(|s| !s.is_empty()) else { return Ok(None) };
        let need = |v: &Option<String>, key: &str, var: &str| {
            v.clone().filter(|s| !s.is_empty()).ok_or_else(|| {
                PluginError::invalid_config(format!("keycloak_server_url is set, so `{key}` is required (from {var})"))
            })
        };
        let realm = need(&self.keycloak_realm_name, "keycloak_realm_name", "KEYCLOAK_REALM_NAME")?;
        let client_id = need(&self.keycloak_client_id, "keycloak_client_id", "KEYCLOAK_CLIENT_ID")?;
        let client_secret = need(&self.keycloak_client_secret, "keycloak_client_secret", "KEYCLOAK_CLIENT_SECRET")?;
        let jwt_secret = need(&self.jwt_secret, "jwt_secret", "JWT_SECRET")?;
        if jwt_secret.len() < 16 {
            return Err(PluginError::invalid_config("jwt_secret must be at least 16 characters"));
        }
        let url = |value: String, key: &str, var: &str| {
            seed_env::public_url(&value).map_err(|e| PluginError::invalid_config(format!("{key} ({var}): {e}")))
        };
        let web_host = url(need(&self.web_host, "web_host", "WEB_HOST")?, "web_host", "WEB_HOST")?;
        let auth_web_host = match self.auth_web_host.clone().filter(|s| !s.trim().is_empty()) {
            Some(v) => url(v, "auth_web_host", "AUTH_WEB_HOST")?,
            None => web_host.clone(),
        };
        let keycloak = crate::keycloak::Keycloak::new(
            server,
            self.keycloak_server_url_ext.as_deref().filter(|s| !s.is_empty()),
            &realm,
            &client_id,
            &client_secret,
        );
        let client_initiated_sign_in = self.client_initiated_sign_in;
        if self.session_ttl_secs < 60 {
            return Err(PluginError::invalid_config("session_ttl_secs must be at least 60"));
        }
        let sessions =
            crate::sessions::Sessions::new(redis.clone(), self.redis_key_prefix.clone(), self.session_ttl_secs);
        Ok(Some(Sso { keycloak, jwt_secret, web_host, auth_web_host, client_initiated_sign_in, sessions }))
    }

    pub(crate) fn providers(&self) -> Result<crate::providers::Providers, PluginError> {
        let active = self.providers.iter().any(|p| !p.client_id.is_empty());
        // Nothing is sealed without a provider: any valid key will do then.
        let fallback = if active { self.jwt_secret.as_deref() } else { Some("no-providers-configured-key") };
        let keys = pg_common::crypto::deployment_keyring(self.master_key.as_deref(), None, fallback)?;
        Ok(crate::providers::Providers::new(self.providers.clone(), keys))
    }

    /// The GitLab repository sync, when on.
    pub(crate) fn gitlab_sync(
        &self,
        keys: std::sync::Arc<crate::keys::KeyStore>,
        services: plugin_sdk::Services,
    ) -> Option<std::sync::Arc<crate::gitlab_sync::GitLabSync>> {
        let gitlab_app = self.providers.iter().any(|p| p.idp == "gitlab" && !p.client_id.is_empty());
        self.gitlab_repository_sync.unwrap_or(gitlab_app).then(|| {
            std::sync::Arc::new(crate::gitlab_sync::GitLabSync::new(
                keys,
                services,
                self.gitlab_api_url.clone(),
                std::time::Duration::from_secs(self.gitlab_sync_interval_secs.max(1)),
            ))
        })
    }

    /// The LLM proxy for users' own keys, when configured.
    pub(crate) fn byor(&self) -> Result<Option<crate::byor::Proxy>, PluginError> {
        // The document's proxy when only its key is configured (this plugin is SaaS-only).
        let url = seed_env::lite_llm_api_url(self.litellm_api_url.as_deref(), self.litellm_api_key.as_deref(), true);
        if url.is_none() || self.litellm_api_key.as_deref().is_none_or(|k| k.trim().is_empty()) {
            return Ok(None);
        }
        let keys = pg_common::crypto::deployment_keyring(self.master_key.as_deref(), None, self.jwt_secret.as_deref())?;
        Ok(crate::byor::Proxy::new(
            url.as_deref(),
            self.litellm_api_key.as_deref(),
            self.litellm_team_id.as_deref(),
            keys,
        ))
    }

    pub(crate) fn redis_url(&self) -> String {
        self.redis_url.clone().unwrap_or_else(plugin_sdk::redis_url_from_env)
    }
}
