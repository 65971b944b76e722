//! The connection pool (one per database and key set, shared by the library's stores),
//! migrations under PostgreSQL's advisory lock, and error mapping.

use crate::{config::Config, crypto::Keyring};
use plugin_sdk::{ErrorCode, PluginError};
use sqlx::{
    migrate::{Migration, MigrationType, Migrator},
    postgres::{PgConnectOptions, PgPoolOptions},
    PgPool,
};
use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};
use tokio::sync::OnceCell;

/// The migrations in `migrations/`, embedded at build time (sqlx's file format).
const MIGRATIONS: &[(i64, &str, &str)] = &[(1, "init", include_str!("../../../migrations/0001_init.sql"))];

pub(crate) fn migrator() -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .map(|(version, description, sql)| {
            Migration::new(*version, Cow::Borrowed(*description), MigrationType::Simple, Cow::Borrowed(*sql), false)
        })
        .collect();
    // `locking`: sqlx takes pg_advisory_lock around the run, so hosts starting together
    // apply each migration once.
    Migrator { migrations: Cow::Owned(migrations), ignore_missing: false, locking: true, no_tx: false }
}

/// The advisory lock key around migrations ("ohhost" in ASCII).
const MIGRATION_LOCK: i64 = 0x6f68_686f_7374;

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

    /// Applies pending migrations; returns the versions this call applied. Hosts starting
    /// together serialise on an advisory lock, so each migration runs (and is reported) once.
    pub(crate) async fn migrate(&self) -> Result<Vec<i64>, PluginError> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        sqlx::query("SELECT pg_advisory_lock($1)").bind(MIGRATION_LOCK).execute(&mut *conn).await.map_err(db_error)?;
        let result = async {
            let applied = || sqlx::query_scalar::<_, i64>("SELECT version FROM _sqlx_migrations WHERE success");
            let before: Vec<i64> = applied().fetch_all(&self.pool).await.unwrap_or_default();
            // On another pooled connection; `conn` holds the lock for the whole sequence.
            migrator().run(&self.pool).await.map_err(|e| match e {
                sqlx::migrate::MigrateError::Execute(e) => db_error(e),
                other => PluginError::internal(format!("migrations failed: {other}")),
            })?;
            let after: Vec<i64> = applied().fetch_all(&self.pool).await.map_err(db_error)?;
            Ok(after.into_iter().filter(|v| !before.contains(v)).collect())
        }
        .await;
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(MIGRATION_LOCK).execute(&mut *conn).await;
        result
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

/// A database error as a plugin error: unreachable -> UNAVAILABLE (503), else INTERNAL.
pub(crate) fn db_error(e: sqlx::Error) -> PluginError {
    match &e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => {
            tracing::warn!(error = %e, "PostgreSQL unreachable");
            PluginError::unavailable(format!("PostgreSQL is unreachable ({e}); retry shortly"))
        }
        sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("08") || c == "57P01" || c == "57P03") => {
            tracing::warn!(error = %e, "PostgreSQL connection lost");
            PluginError::unavailable(format!("PostgreSQL is unavailable ({e}); retry shortly"))
        }
        _ => {
            tracing::error!(error = %e, "PostgreSQL query failed");
            PluginError::new(ErrorCode::INTERNAL, "database error (see the server log)")
        }
    }
}
