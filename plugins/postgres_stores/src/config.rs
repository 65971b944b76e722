//! Configuration of the PostgreSQL stores (each entry's `config` table), with OpenHands'
//! `DB_*` environment variables as defaults.

use pg_common::crypto::Keyring;
use plugin_sdk::PluginError;
use serde::Deserialize;
use sqlx::postgres::PgConnectOptions;

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// `postgres://user:pass@host:port/db`; default: built from DB_HOST (localhost), DB_PORT
    /// (5432), DB_NAME (openhands), DB_USER (postgres), DB_PASS.
    #[serde(default)]
    pub(crate) database_url: Option<String>,
    /// Master key for secrets at rest; default: $OH_MASTER_KEY, else $JWT_SECRET.
    #[serde(default)]
    pub(crate) master_key: Option<String>,
    /// Earlier master keys, still accepted for reading until `oh-host rotate-keys` has run.
    #[serde(default)]
    pub(crate) previous_master_keys: Vec<String>,
    /// Apply pending migrations on first use (default true); `oh-host migrate` does it too.
    #[serde(default = "yes")]
    pub(crate) migrate: bool,
    /// Pool size; default DB_POOL_SIZE (10) + DB_MAX_OVERFLOW (20).
    #[serde(default)]
    pub(crate) max_connections: Option<u32>,
    /// How long a call waits for a connection before failing with 503 (default 3000 ms).
    #[serde(default = "default_acquire_ms")]
    pub(crate) acquire_timeout_ms: u64,
}

fn yes() -> bool {
    true
}

fn default_acquire_ms() -> u64 {
    3000
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Config {
    pub(crate) fn parse(json: &str) -> Result<Config, PluginError> {
        plugin_sdk::parse_config(json)
    }

    /// Connection options and a label for logs (no password).
    pub(crate) fn connect_options(&self) -> Result<(PgConnectOptions, String), PluginError> {
        pg_common::connect_options(self.database_url.as_deref())
    }

    pub(crate) fn keyring(&self) -> Result<Keyring, PluginError> {
        let master =
            self.master_key.clone().or_else(|| env("OH_MASTER_KEY")).or_else(|| env("JWT_SECRET")).ok_or_else(
                || {
                    PluginError::invalid_config(
                        "no master key: set config.master_key, or OH_MASTER_KEY or JWT_SECRET in the environment",
                    )
                },
            )?;
        Keyring::new(&master, &self.previous_master_keys)
    }

    pub(crate) fn max_connections(&self) -> u32 {
        pg_common::max_connections(self.max_connections)
    }
}
