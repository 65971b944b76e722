//! What one store instance holds: the library's shared [`Database`] for its target, and the
//! deployment's master keys.

use crate::config::Config;
use pg_common::{crypto::Keyring, Database};
use plugin_sdk::PluginError;
use sqlx::PgPool;
use std::sync::Arc;

pub(crate) struct Db {
    database: Arc<Database>,
    pub(crate) keys: Keyring,
}

impl Db {
    pub(crate) async fn ready(&self) -> Result<&PgPool, PluginError> {
        self.database.ready().await
    }

    /// A connection kept between requests' reads (see `pg_common::Database::kept`).
    pub(crate) async fn kept(&self) -> Result<pg_common::Kept<'_>, PluginError> {
        self.database.kept().await
    }

    pub(crate) async fn migrate(&self) -> Result<Vec<i64>, PluginError> {
        self.database.migrate().await
    }

    pub(crate) fn label(&self) -> &str {
        self.database.label()
    }

    pub(crate) async fn ping(&self) -> Result<&PgPool, PluginError> {
        self.database.ping().await
    }
}

pub(crate) fn open(config: &Config) -> Result<Arc<Db>, PluginError> {
    let database = config.pool().open(config.migrate)?;
    let keys = pg_common::crypto::deployment_keyring(
        config.master_key.as_deref(),
        config.previous_master_keys.as_deref(),
        None,
    )?;
    database.announce_keys(&keys);
    Ok(Arc::new(Db { database, keys }))
}

pub(crate) use pg_common::db_error;
