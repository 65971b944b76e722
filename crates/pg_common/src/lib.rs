//! What the PostgreSQL plugins share, so each is written once:
//! - [`Database`]: one lazy pool per database per process (the host starts while PostgreSQL
//!   is down), with migrations on first use; connection options from `database_url` or
//!   OpenHands' `DB_*` variables;
//! - the migrations of `migrations/` (embedded; every plugin must know all of them, or sqlx
//!   refuses a database that a newer one migrated), applied under an advisory lock;
//! - the mapping of database errors to plugin errors;
//! - [`crypto`]: the envelope encryption of secrets at rest, and the deployment's master keys
//!   ([`crypto::deployment_keyring`]).

pub mod crypto;
pub mod presence;

use plugin_sdk::{env, ErrorCode, PluginError};
use sqlx::{
    migrate::{Migration, MigrationType, Migrator},
    pool::PoolConnection,
    postgres::{PgConnectOptions, PgPoolOptions},
    PgConnection, PgPool, Postgres,
};
use std::{
    borrow::Cow,
    collections::HashMap,
    ops::{Deref, DerefMut},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, OnceLock, Weak,
    },
    time::{Duration, Instant},
};
use tokio::sync::watch;

/// The migrations in `migrations/`, in order.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../../migrations/0001_init.sql")),
    (2, "api_keys", include_str!("../../../migrations/0002_api_keys.sql")),
    (3, "user_tos", include_str!("../../../migrations/0003_user_tos.sql")),
    (4, "auth_tokens", include_str!("../../../migrations/0004_auth_tokens.sql")),
    (5, "per_row_secrets", include_str!("../../../migrations/0005_per_row_secrets.sql")),
    (6, "llm_keys", include_str!("../../../migrations/0006_llm_keys.sql")),
    (7, "fences", include_str!("../../../migrations/0007_fences.sql")),
    (8, "experiment_assignments", include_str!("../../../migrations/0008_experiment_assignments.sql")),
    (9, "secrets_version", include_str!("../../../migrations/0009_secrets_version.sql")),
    (10, "billing", include_str!("../../../migrations/0010_billing.sql")),
    (11, "conversation_feedback", include_str!("../../../migrations/0011_conversation_feedback.sql")),
    (12, "integrations", include_str!("../../../migrations/0012_integrations.sql")),
    (13, "integration_workspaces", include_str!("../../../migrations/0013_integration_workspaces.sql")),
    (14, "billing_checked_at", include_str!("../../../migrations/0014_billing_checked_at.sql")),
    (15, "webhook_content", include_str!("../../../migrations/0015_webhook_content.sql")),
    (16, "subscriptions", include_str!("../../../migrations/0016_subscriptions.sql")),
    (17, "slack_teams", include_str!("../../../migrations/0017_slack_teams.sql")),
    (18, "github_installations", include_str!("../../../migrations/0018_github_installations.sql")),
    (19, "flag_subjects", include_str!("../../../migrations/0019_flag_subjects.sql")),
    (20, "gitlab_projects", include_str!("../../../migrations/0020_gitlab_projects.sql")),
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

/// How long a call waits for a pooled connection before failing with 503, by default.
pub const DEFAULT_ACQUIRE_MS: u64 = 3000;

/// One database of this library: a lazy pool (created without connecting) and the migrations
/// applied to it, shared by every instance of the library that names the same database.
///
/// Migrations on first use are applied by one background task per database, retried with
/// backoff while PostgreSQL is unreachable; a request waits for it at most the pool's acquire
/// timeout, then gets 503 with the last failure. So an outage costs each request at most that
/// wait, never a queue of callers each retrying in turn.
pub struct Database {
    pool: PgPool,
    /// How the pool connects (for [`Database::announce_keys`]'s own connection).
    options: PgConnectOptions,
    /// Connections kept out of the pool by [`Kept`], with when each was last used.
    kept: Mutex<Vec<(PoolConnection<Postgres>, Instant)>>,
    /// At most this many are kept (half the pool; the others serve writes).
    keep_at_most: usize,
    label: String,
    acquire_timeout: Duration,
    migrated: watch::Sender<bool>,
    migrator_started: AtomicBool,
    last_error: Mutex<Option<String>>,
    this: OnceLock<Weak<Database>>,
}

/// The pool settings every PostgreSQL plugin's `config` has (`database_url`,
/// `max_connections`, `acquire_timeout_ms`). Each config keeps the three fields itself (serde's
/// `flatten` does not combine with the `deny_unknown_fields` every config uses) and hands
/// them over as one `Pool`.
#[derive(Clone, Copy, Debug)]
pub struct Pool<'a> {
    /// Default: the `DB_*` variables.
    pub database_url: Option<&'a str>,
    /// Default: `DB_POOL_SIZE` + `DB_MAX_OVERFLOW`.
    pub max_connections: Option<u32>,
    /// How long a call waits for a connection before failing with 503.
    pub acquire_timeout_ms: u64,
}

/// `acquire_timeout_ms` when a config names none (serde's `default` takes a function).
pub fn default_acquire_timeout_ms() -> u64 {
    DEFAULT_ACQUIRE_MS
}

impl Pool<'_> {
    /// This process's pool of the database (made on first use, within the plugin's runtime;
    /// migrations on first use when `migrate`, unless the host only checks).
    pub fn open(&self, migrate: bool) -> Result<Arc<Database>, PluginError> {
        // `oh-host check` migrates nothing (`oh-host migrate` does).
        let migrate = migrate && !plugin_sdk::read_only();
        plugin_sdk::enter_runtime(|| {
            Database::shared(self.database_url, self.max_connections, self.acquire_timeout_ms, migrate)
        })
    }
}

impl Database {
    /// The library's `Database` for `database_url` (else the `DB_*` variables); created on
    /// first use. Instances with different `migrate` settings share it; any one that asks for
    /// migrations on first use gets them.
    pub fn shared(
        database_url: Option<&str>,
        max_connections: Option<u32>,
        acquire_timeout_ms: u64,
        migrate_on_first_use: bool,
    ) -> Result<Arc<Database>, PluginError> {
        type ByTarget = HashMap<(String, bool), Arc<Database>>;
        static DATABASES: OnceLock<Mutex<ByTarget>> = OnceLock::new();
        let (options, label) = connect_options(database_url)?;
        let mut all = DATABASES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(db) = all.get(&(label.clone(), migrate_on_first_use)) {
            return Ok(db.clone());
        }
        let acquire_timeout = Duration::from_millis(acquire_timeout_ms);
        // Lazy: the host starts even while PostgreSQL is down; calls fail fast with 503 until
        // it is back, and the pool reconnects by itself.
        let pool = plugin_sdk::enter_runtime(|| {
            PgPoolOptions::new()
                .max_connections(crate::max_connections(max_connections))
                .min_connections(0)
                .acquire_timeout(acquire_timeout)
                .idle_timeout(Duration::from_secs(60))
                // sqlx pings every connection it takes back (release); one that sat idle (an
                // outage may have cut it) is pinged again before use. A busy one is not: that
                // would be a second round trip on every query.
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for > Duration::from_secs(1) {
                            sqlx::Connection::ping(conn).await?;
                        }
                        Ok(true)
                    })
                })
                .connect_lazy_with(options.clone())
        });
        let db = Arc::new(Database {
            pool,
            options,
            kept: Mutex::new(Vec::new()),
            keep_at_most: (crate::max_connections(max_connections) as usize / 2).clamp(1, 32),
            label: label.clone(),
            acquire_timeout,
            migrated: watch::channel(!migrate_on_first_use).0,
            migrator_started: AtomicBool::new(false),
            last_error: Mutex::new(None),
            this: OnceLock::new(),
        });
        let _ = db.this.set(Arc::downgrade(&db));
        all.insert((label, migrate_on_first_use), db.clone());
        Ok(db)
    }

    /// Keeps this process's master key ids visible to `oh-host rotate-keys` on every host
    /// (see [`presence`]).
    pub fn announce_keys(&self, keys: &crypto::Keyring) {
        presence::announce(&self.options, &self.label, keys);
    }

    /// `host:port/database`, without credentials.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The pool, once migrations are applied (when asked for): waits at most the acquire
    /// timeout for the background migrator, then `UNAVAILABLE` with its last failure.
    pub async fn ready(&self) -> Result<&PgPool, PluginError> {
        self.release_kept_if_pool_is_short();
        self.ready_within(self.acquire_timeout).await
    }

    /// Kept connections are out of the pool: when it has none idle and no room to open
    /// one, one kept goes back, so writers never wait on connections nobody uses.
    fn release_kept_if_pool_is_short(&self) {
        let full = self.pool.size() >= self.pool.options().get_max_connections();
        if full && self.pool.num_idle() == 0 {
            let released = self.kept.lock().unwrap_or_else(|e| e.into_inner()).pop();
            drop(released);
        }
    }

    async fn ready_within(&self, wait: Duration) -> Result<&PgPool, PluginError> {
        if *self.migrated.borrow() {
            return Ok(&self.pool);
        }
        self.start_migrator();
        let mut migrated = self.migrated.subscribe();
        let done = tokio::time::timeout(wait, async { migrated.wait_for(|m| *m).await.is_ok() }).await;
        match done {
            Ok(true) => Ok(&self.pool),
            _ => {
                let cause = self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
                Err(PluginError::unavailable(format!(
                    "PostgreSQL is not ready: {}; retrying in the background",
                    cause.unwrap_or_else(|| "migrations are being applied".to_owned())
                )))
            }
        }
    }

    /// Starts, once, the task that applies migrations, retrying with backoff until it has.
    fn start_migrator(&self) {
        if self.migrator_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(this) = self.this.get().cloned() else { return };
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(100);
            loop {
                let Some(db) = this.upgrade() else { return };
                match migrate(&db.pool).await {
                    Ok(_) => {
                        *db.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        // Stored even when nobody waits right now (`send` would drop it then,
                        // and the database would never be ready).
                        db.migrated.send_replace(true);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(database = %db.label, error = %e, "migrations not applied yet; retrying");
                        *db.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.message.to_string());
                    }
                }
                drop(db);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        });
    }

    /// A connection for one request's reads, kept out of the pool afterwards when the caller
    /// says the work went well ([`Kept::keep`]). sqlx pings every connection it takes back
    /// (a round trip each time); one kept here skips that, and one idle for over a second
    /// goes back through the pool (which pings it before use) instead of being trusted.
    pub async fn kept(&self) -> Result<Kept<'_>, PluginError> {
        let pool = self.ready().await?;
        loop {
            let next = self.kept.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match next {
                Some((conn, used)) if used.elapsed() < Duration::from_secs(1) => {
                    return Ok(Kept { db: self, conn: Some(conn), keep: false })
                }
                Some((stale, _)) => drop(stale),
                None => break,
            }
        }
        let conn = pool.acquire().await.map_err(db_error)?;
        Ok(Kept { db: self, conn: Some(conn), keep: false })
    }

    /// Applies pending migrations now; returns the versions this call applied.
    pub async fn migrate(&self) -> Result<Vec<i64>, PluginError> {
        let applied = migrate(&self.pool).await?;
        self.migrated.send_replace(true);
        Ok(applied)
    }

    /// `SELECT 1` within a second: a health probe (a load balancer's `/ready` must not hang).
    pub async fn ping(&self) -> Result<&PgPool, PluginError> {
        let probe = async {
            // Within the probe's second, so the migrator's last failure (the cause) is what a
            // slow start reports, rather than the bare timeout.
            let pool = self.ready_within(Duration::from_millis(800)).await?;
            sqlx::query("SELECT 1").execute(pool).await.map_err(db_error)?;
            Ok(pool)
        };
        tokio::time::timeout(Duration::from_secs(1), probe).await.unwrap_or_else(|_| {
            // A slow machine may use the second up before the first attempt fails: the last
            // failure, when there is one, still tells the operator why.
            let cause = self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
            Err(PluginError::unavailable(match cause {
                Some(cause) => format!("PostgreSQL did not answer within 1 s: {cause}"),
                None => "PostgreSQL did not answer within 1 s".to_owned(),
            }))
        })
    }
}

/// A connection from [`Database::kept`]. Dropped without [`Kept::keep`] (an error, a
/// cancelled request), it goes back to the pool, which checks it.
pub struct Kept<'a> {
    db: &'a Database,
    conn: Option<PoolConnection<Postgres>>,
    keep: bool,
}

impl Kept<'_> {
    /// The work on it went well: keep it for the next request.
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Deref for Kept<'_> {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        self.conn.as_ref().expect("connection present until drop")
    }
}

impl DerefMut for Kept<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("connection present until drop")
    }
}

impl Drop for Kept<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if self.keep {
            let mut kept = self.db.kept.lock().unwrap_or_else(|e| e.into_inner());
            if kept.len() < self.db.keep_at_most {
                kept.push((conn, Instant::now()));
            }
        }
    }
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
        // The server is up but refuses us: the database is missing, the role or its password
        // is wrong. An operator's fix, so the cause is in the message.
        sqlx::Error::Database(d) if d.code().is_some_and(|c| c == "3D000" || c.starts_with("28")) => {
            tracing::error!(error = %e, "PostgreSQL refused the connection");
            let fix = if d.code().as_deref() == Some("3D000") {
                "create the database (createdb), or point DB_NAME / database_url at one"
            } else {
                "check DB_USER / DB_PASS or database_url"
            };
            PluginError::unavailable(format!("PostgreSQL refused the connection: {} ({fix})", d.message()))
        }
        _ => {
            tracing::error!(error = %e, "PostgreSQL query failed");
            PluginError::new(ErrorCode::INTERNAL, "database error (see the server log)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::{Connection as _, Executor as _};

    const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migrations_that_outlast_the_first_wait_still_make_the_database_ready() {
        let mut id = [0u8; 6];
        getrandom::getrandom(&mut id).unwrap();
        let name = format!("oh_pgc_{}", id.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let mut server =
            sqlx::PgConnection::connect(&format!("{SERVER}/postgres")).await.expect("PostgreSQL on 127.0.0.1:5432");
        server.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
        let url = format!("{SERVER}/{name}");
        let db = Database::shared(Some(&url), Some(4), 3000, true).unwrap();

        // The first caller gives up long before the migrations are applied ...
        assert!(db.ready_within(Duration::from_millis(1)).await.is_err());
        // ... and nobody waits while they finish.
        let mut probe = sqlx::PgConnection::connect(&url).await.unwrap();
        let started = Instant::now();
        loop {
            let applied: Option<i64> = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(&mut probe)
                .await
                .ok();
            if applied == Some(MIGRATIONS.len() as i64) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "migrations not applied: {applied:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The migrator's last steps (reading back, unlocking) follow the last insert.
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Every later caller finds the database ready.
        let ready = db.ready().await.map(drop);
        drop(probe);
        db.pool.close().await;
        let _ = server.execute(format!("DROP DATABASE {name} WITH (FORCE)").as_str()).await;
        assert!(ready.is_ok(), "{ready:?}");
    }
}
