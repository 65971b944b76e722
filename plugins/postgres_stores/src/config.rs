//! Configuration of the PostgreSQL stores (each entry's `config` table). Connection settings
//! default to OpenHands' `DB_*` variables and master keys to the environment (see
//! `pg_common`), so a profile usually sets nothing here.

use plugin_sdk::PluginError;
use serde::Deserialize;

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// `postgres://user:pass@host:port/db`; default: built from DB_HOST (localhost), DB_PORT
    /// (5432), DB_NAME (openhands), DB_USER (postgres), DB_PASS.
    #[serde(default)]
    pub(crate) database_url: Option<String>,
    /// The master key of secrets at rest; default $OH_MASTER_KEY, else $JWT_SECRET. Set it in
    /// the environment rather than here, so every entry uses the same.
    #[serde(default)]
    pub(crate) master_key: Option<String>,
    /// Earlier master keys still accepted for reading; default $OH_PREVIOUS_MASTER_KEYS
    /// (comma-separated).
    #[serde(default)]
    pub(crate) previous_master_keys: Option<Vec<String>>,
    /// Apply pending migrations on first use (default true); `oh-host migrate` does it too.
    #[serde(default = "yes")]
    pub(crate) migrate: bool,
    /// Pool size; default DB_POOL_SIZE (10) + DB_MAX_OVERFLOW (20).
    #[serde(default)]
    pub(crate) max_connections: Option<u32>,
    /// How long a call waits for a connection before failing with 503 (default 3000 ms).
    #[serde(default = "pg_common::default_acquire_timeout_ms")]
    pub(crate) acquire_timeout_ms: u64,
}

fn yes() -> bool {
    true
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
        plugin_sdk::parse_config(json)
    }
}
