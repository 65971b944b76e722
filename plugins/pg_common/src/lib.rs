//! What the PostgreSQL plugins share: connection options from OpenHands' `DB_*` variables,
//! the migrations of `migrations/` (embedded; every plugin must know all of them, or sqlx
//! refuses a database that a newer one migrated), migrating under an advisory lock, and the
//! mapping of database errors to plugin errors; and the envelope encryption of secrets at rest
//! (`crypto`).

pub mod crypto;

use plugin_sdk::{ErrorCode, PluginError};
use sqlx::{
    migrate::{Migration, MigrationType, Migrator},
    postgres::PgConnectOptions,
    PgPool,
};
use std::borrow::Cow;

/// The migrations in `migrations/`, in order.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../../migrations/0001_init.sql")),
    (2, "api_keys", include_str!("../../../migrations/0002_api_keys.sql")),
    (3, "user_tos", include_str!("../../../migrations/0003_user_tos.sql")),
    (4, "auth_tokens", include_str!("../../../migrations/0004_auth_tokens.sql")),
];

/// The advisory lock key around migrations ("ohhost" in ASCII).
const MIGRATION_LOCK: i64 = 0x6f68_686f_7374;

fn migrator() -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .map(|(version, description, sql)| {
            Migration::new(*version, Cow::Borrowed(*description), MigrationType::Simple, Cow::Borrowed(*sql), false)
        })
        .collect();
    Migrator { migrations: Cow::Owned(migrations), ignore_missing: false, locking: true, no_tx: false }
}

/// Applies pending migrations; returns the versions this call applied. Hosts starting
/// together serialise on an advisory lock, so each migration runs (and is reported) once.
pub async fn migrate(pool: &PgPool) -> Result<Vec<i64>, PluginError> {
    let mut conn = pool.acquire().await.map_err(db_error)?;
    sqlx::query("SELECT pg_advisory_lock($1)").bind(MIGRATION_LOCK).execute(&mut *conn).await.map_err(db_error)?;
    let result = async {
        let applied = || sqlx::query_scalar::<_, i64>("SELECT version FROM _sqlx_migrations WHERE success");
        let before: Vec<i64> = applied().fetch_all(pool).await.unwrap_or_default();
        // On another pooled connection; `conn` holds the lock for the whole sequence.
        migrator().run(pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => db_error(e),
            other => PluginError::internal(format!("migrations failed: {other}")),
        })?;
        let after: Vec<i64> = applied().fetch_all(pool).await.map_err(db_error)?;
        Ok(after.into_iter().filter(|v| !before.contains(v)).collect())
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(MIGRATION_LOCK).execute(&mut *conn).await;
    result
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Connection options from `database_url`, else DB_HOST (localhost), DB_PORT (5432),
/// DB_NAME (openhands), DB_USER (postgres), DB_PASS; and a label without the password.
pub fn connect_options(database_url: Option<&str>) -> Result<(PgConnectOptions, String), PluginError> {
    if let Some(url) = database_url {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| PluginError::invalid_config(format!("database_url is not a PostgreSQL URL: {e}")))?;
        let label = format!("{}:{}/{}", options.get_host(), options.get_port(), options.get_database().unwrap_or("?"));
        return Ok((options, label));
    }
    let host = env("DB_HOST").unwrap_or_else(|| "localhost".to_owned());
    let port = match env("DB_PORT") {
        None => 5432,
        Some(p) => p.parse().map_err(|_| PluginError::invalid_config(format!("DB_PORT `{p}` is not a port number")))?,
    };
    let name = env("DB_NAME").unwrap_or_else(|| "openhands".to_owned());
    let user = env("DB_USER").unwrap_or_else(|| "postgres".to_owned());
    let mut options = PgConnectOptions::new().host(&host).port(port).database(&name).username(&user);
    if let Some(pass) = env("DB_PASS") {
        options = options.password(&pass);
    }
    Ok((options, format!("{host}:{port}/{name}")))
}

/// Pool size: `max_connections`, else DB_POOL_SIZE (10) + DB_MAX_OVERFLOW (20).
pub fn max_connections(configured: Option<u32>) -> u32 {
    configured.unwrap_or_else(|| {
        let size: u32 = env("DB_POOL_SIZE").and_then(|v| v.parse().ok()).unwrap_or(10);
        let overflow: u32 = env("DB_MAX_OVERFLOW").and_then(|v| v.parse().ok()).unwrap_or(20);
        (size + overflow).max(1)
    })
}

/// A database error as a plugin error: unreachable -> UNAVAILABLE (503), else INTERNAL.
pub fn db_error(e: sqlx::Error) -> PluginError {
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
