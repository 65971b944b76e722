//! The connection pool (one per database and key set, shared by the library's stores),
//! migrations under PostgreSQL's advisory lock, and error mapping.

use crate::config::Config;
use pg_common::crypto::Keyring;
use plugin_sdk::PluginError;
use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    PgPool,
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};
use tokio::sync::OnceCell;

/// What the stores of one database share.
pub(crate) struct Db {
    pub(crate) pool: PgPool,
    pub(crate) keys: Keyring,
    migrate_on_start: bool,
    migrated: OnceCell<()>,
    pub(crate) label: String,
}

impl Db {
    /// The pool, with migrations applied once per process (when `migrate` is on). A failure
    /// (database down) is returned and retried on the next call.
    pub(crate) async fn ready(&self) -> Result<&PgPool, PluginError> {
        if self.migrate_on_start {
            self.migrated.get_or_try_init(|| async { self.migrate().await.map(|_| ()) }).await?;
        }
        Ok(&self.pool)
    }

    /// Applies pending migrations; returns the versions this call applied.
    pub(crate) async fn migrate(&self) -> Result<Vec<i64>, PluginError> {
        pg_common::migrate(&self.pool).await
    }
}

/// One `Db` per (connection target, current key id) in this library.
pub(crate) fn open(config: &Config) -> Result<Arc<Db>, PluginError> {
    static DBS: OnceLock<Mutex<HashMap<String, Arc<Db>>>> = OnceLock::new();
    let (options, label) = config.connect_options()?;
    let keys = config.keyring()?;
    let cache_key = format!("{label}|{}|{}", keys.current_id(), config.migrate);
    let mut dbs = DBS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(db) = dbs.get(&cache_key) {
        return Ok(db.clone());
    }
    let pool = pool(options, config);
    let db = Arc::new(Db { pool, keys, migrate_on_start: config.migrate, migrated: OnceCell::new(), label });
    dbs.insert(cache_key, db.clone());
    Ok(db)
}

fn pool(options: PgConnectOptions, config: &Config) -> PgPool {
    // Lazy: the host starts even while PostgreSQL is down; calls fail fast with 503 until it
    // is back, and the pool reconnects by itself.
    plugin_sdk::enter_runtime(|| {
        PgPoolOptions::new()
            .max_connections(config.max_connections())
            .min_connections(0)
            .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
            .idle_timeout(Duration::from_secs(60))
            .test_before_acquire(true)
            .connect_lazy_with(options)
    })
}

pub(crate) use pg_common::db_error;
