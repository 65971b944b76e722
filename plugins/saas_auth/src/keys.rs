//! API keys in PostgreSQL: created shown once, stored as a SHA-256, with expiry,
//! `last_used_at` and revocation. A verified key is trusted for `api_key_cache_ms` without
//! a query (see [`Verified`]).

use pg_common::{db_error, Database};
use plugin_sdk::{ErrorCode, PluginError};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row as _};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant, SystemTime},
};

pub(crate) struct KeyStore {
    database: Arc<Database>,
    /// How long a verification is trusted.
    cache_ttl: Duration,
}

/// A key verified against the database: trusted until `until` (the cache TTL) or its expiry.
struct Verified {
    key_id: String,
    user: String,
    until: Instant,
    expires_at: Option<SystemTime>,
}

/// Beyond this many keys the cache starts again empty: a bound on memory.
const MAX_CACHED_KEYS: usize = 10_000;

/// Verified keys by (database, key hash), shared by every instance of the library, so a
/// revocation through the routes evicts what the auth instance trusts.
fn verified() -> &'static Mutex<HashMap<(String, String), Verified>> {
    static VERIFIED: OnceLock<Mutex<HashMap<(String, String), Verified>>> = OnceLock::new();
    VERIFIED.get_or_init(Default::default)
}

/// A key as listed (never the key itself).
#[derive(Serialize)]
pub(crate) struct KeyInfo {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) prefix: String,
    pub(crate) created_at: String,
    pub(crate) expires_at: Option<String>,
    pub(crate) last_used_at: Option<String>,
}

pub(crate) fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(bytes: usize) -> Result<String, PluginError> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).map_err(|e| PluginError::internal(format!("no randomness: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Why a key was refused.
pub(crate) enum Refusal {
    Unknown,
    Revoked,
    Expired,
}

const TIME: &str = "to_char(%s AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

fn time(col: &str) -> String {
    TIME.replace("%s", col)
}

impl KeyStore {
    /// The library's store for this database: `SaasUserAuth` and `SaasAuthRoutes` share the
    /// pool of `pg_common::Database` rather than opening one each.
    pub(crate) fn shared(pool: pg_common::Pool<'_>, cache_ms: u64) -> Result<Arc<KeyStore>, PluginError> {
        Ok(Arc::new(KeyStore { database: pool.open(true)?, cache_ttl: Duration::from_millis(cache_ms) }))
    }

    fn cached(&self, hash: &str) -> Option<String> {
        let cache = verified().lock().unwrap_or_else(|e| e.into_inner());
        let v = cache.get(&(self.database.label().to_owned(), hash.to_owned()))?;
        let live = v.until > Instant::now() && v.expires_at.is_none_or(|e| e > SystemTime::now());
        live.then(|| v.user.clone())
    }

    pub(crate) async fn ready(&self) -> Result<&PgPool, PluginError> {
        self.database.ready().await
    }

    /// The user a key signs in as, or why not; records the use (when it asks the database).
    pub(crate) async fn verify(&self, key: &str) -> Result<Result<String, Refusal>, PluginError> {
        let hash = sha256_hex(key);
        if let Some(user) = self.cached(&hash) {
            return Ok(Ok(user));
        }
        let pool = self.ready().await?;
        let row = sqlx::query(
            "SELECT id, user_id, revoked_at IS NOT NULL, expires_at IS NOT NULL AND expires_at <= now(), \
             EXTRACT(EPOCH FROM expires_at)::float8 FROM api_keys WHERE key_sha256 = $1",
        )
        .bind(&hash)
        .fetch_optional(pool)
        .await
        .map_err(db_error)?;
        let Some(row) = row else { return Ok(Err(Refusal::Unknown)) };
        let (id, user, revoked, expired, expires_at): (String, String, bool, bool, Option<f64>) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        if revoked {
            return Ok(Err(Refusal::Revoked));
        }
        if expired {
            return Ok(Err(Refusal::Expired));
        }
        // At most one write a minute per key: a busy script must not turn reads into writes.
        sqlx::query(
            "UPDATE api_keys SET last_used_at = now() \
             WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '60 seconds')",
        )
        .bind(&id)
        .execute(pool)
        .await
        .map_err(db_error)?;
        if !self.cache_ttl.is_zero() {
            let expires_at = expires_at.map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(s.max(0.0)));
            let mut cache = verified().lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() >= MAX_CACHED_KEYS {
                cache.clear();
            }
            let until = Instant::now() + self.cache_ttl;
            cache.insert(
                (self.database.label().to_owned(), hash),
                Verified { key_id: id, user: user.clone(), until, expires_at },
            );
        }
        Ok(Ok(user))
    }

    /// Creates a key; returns it (the only time it is seen) and its listing.
    pub(crate) async fn create(
        &self,
        user: &str,
        name: &str,
        expires_at: Option<&str>,
    ) -> Result<(String, KeyInfo), PluginError> {
        let pool = self.ready().await?;
        let key = format!("oh_{}", random_hex(32)?);
        let id = random_hex(8)?;
        let prefix: String = key.chars().take(10).collect();
        let row = sqlx::query(&format!(
            "INSERT INTO api_keys (id, user_id, name, key_sha256, prefix, expires_at) VALUES ($1, $2, $3, $4, $5, $6::timestamptz) \
             RETURNING {}, {}",
            time("created_at"),
            time("expires_at")
        ))
        .bind(&id)
        .bind(user)
        .bind(name)
        .bind(sha256_hex(&key))
        .bind(&prefix)
        .bind(expires_at)
        .fetch_one(pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.code().as_deref() == Some("22007") || d.code().as_deref() == Some("22008") => {
                PluginError::invalid_argument("expires_at is not a valid timestamp")
            }
            _ => db_error(e),
        })?;
        let info = KeyInfo {
            id,
            name: name.to_owned(),
            prefix,
            created_at: row.get(0),
            expires_at: row.get(1),
            last_used_at: None,
        };
        Ok((key, info))
    }

    pub(crate) async fn list(&self, user: &str) -> Result<Vec<KeyInfo>, PluginError> {
        let pool = self.ready().await?;
        let rows = sqlx::query(&format!(
            "SELECT id, name, prefix, {}, {}, {} FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC",
            time("created_at"),
            time("expires_at"),
            time("last_used_at")
        ))
        .bind(user)
        .fetch_all(pool)
        .await
        .map_err(db_error)?;
        Ok(rows
            .iter()
            .map(|r| KeyInfo {
                id: r.get(0),
                name: r.get(1),
                prefix: r.get(2),
                created_at: r.get(3),
                expires_at: r.get(4),
                last_used_at: r.get(5),
            })
            .collect())
    }

    /// Revokes one of the user's keys; `NOT_FOUND` for anyone else's.
    pub(crate) async fn revoke(&self, user: &str, id: &str) -> Result<(), PluginError> {
        let pool = self.ready().await?;
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL")
                .bind(id)
                .bind(user)
                .execute(pool)
                .await
                .map_err(db_error)?;
        if done.rows_affected() == 0 {
            return Err(PluginError::new(ErrorCode::NOT_FOUND, format!("API key {id} not found")));
        }
        // At once on this host; other hosts within their cache TTL.
        let label = self.database.label();
        verified().lock().unwrap_or_else(|e| e.into_inner()).retain(|(db, _), v| db != label || v.key_id != id);
        Ok(())
    }

    /// Records that the user accepted the terms of service.
    pub(crate) async fn accept_tos(&self, user: &str) -> Result<(), PluginError> {
        let pool = self.ready().await?;
        sqlx::query("INSERT INTO user_tos (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING")
            .bind(user)
            .execute(pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    pub(crate) async fn accepted_tos(&self, user: &str) -> Result<bool, PluginError> {
        let pool = self.ready().await?;
        let found: Option<String> = sqlx::query_scalar("SELECT user_id FROM user_tos WHERE user_id = $1")
            .bind(user)
            .fetch_optional(pool)
            .await
            .map_err(db_error)?;
        Ok(found.is_some())
    }

    pub(crate) async fn health(&self) -> Result<String, PluginError> {
        self.database.ping().await?;
        Ok("api keys: PostgreSQL reachable".to_owned())
    }
}
