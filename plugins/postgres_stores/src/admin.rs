//! What the three stores share: the caller's user id, error helpers, the health probe, and
//! the operator commands (`migrate`, `rotate_keys`).

use crate::db::{db_error, Db};
use pg_common::crypto::Binding;
use plugin_sdk::{CallContext, PluginError};
use serde_json::{json, Value};
use sqlx::Row as _;
use std::time::{Duration, Instant};

/// Every query is scoped by this: the caller's user id, `''` in single-user mode.
pub(crate) fn user(ctx: &CallContext) -> &str {
    ctx.user_id().unwrap_or("")
}

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> PluginError {
    tracing::error!(error = %e, "stored {what} does not parse");
    PluginError::internal(format!("stored {what} is corrupt ({e})"))
}

pub(crate) async fn health(db: &Db) -> Result<String, PluginError> {
    let pool = db.ping().await?;
    Ok(format!("PostgreSQL {} ({} connections)", db.label(), pool.size()))
}

/// `health`, and whether every stored sealed value names a key this deployment has: a master
/// key changed without its predecessor in `previous_master_keys` fails here (`oh-host check`,
/// `/ready`) instead of at each user's next request. The key ids in use are read at most once
/// a minute.
pub(crate) async fn health_with_keys(db: &Db, sealed: &[SealedColumn]) -> Result<String, PluginError> {
    let mut base = health(db).await?;
    let what = format!(
        "{} {}",
        db.label(),
        sealed.iter().map(|s| format!("{}.{}", s.table, s.column)).collect::<Vec<_>>().join(",")
    );
    let unknown = match cached_unknown_keys(db, &what) {
        Some(unknown) => unknown,
        None => {
            let pool = db.ready().await?;
            let mut ids: Vec<String> = Vec::new();
            for s in sealed {
                // A database not migrated yet (what `oh-host check` may find) has nothing sealed.
                let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                    .bind(s.table)
                    .fetch_one(pool)
                    .await
                    .map_err(db_error)?;
                if !exists {
                    base.push_str(" (not migrated yet: `oh-host migrate`)");
                    return Ok(base);
                }
                let sql = format!(
                    "SELECT DISTINCT split_part({c}, '.', 2) FROM {t} WHERE {c} IS NOT NULL",
                    c = s.column,
                    t = s.table
                );
                let found: Vec<(String,)> = sqlx::query_as(&sql).fetch_all(pool).await.map_err(db_error)?;
                ids.extend(found.into_iter().map(|(id,)| id));
            }
            ids.sort();
            ids.dedup();
            let unknown: Vec<String> = ids.into_iter().filter(|id| !db.keys.knows(id)).collect();
            KEY_CHECK.lock().unwrap_or_else(|e| e.into_inner()).insert(what, (Instant::now(), unknown.clone()));
            unknown
        }
    };
    if unknown.is_empty() {
        Ok(base)
    } else {
        Err(PluginError::unavailable(format!(
            "stored secrets are sealed with master key(s) {} that this deployment does not have: add the old key to previous_master_keys (OH_PREVIOUS_MASTER_KEYS), or set the master key back",
            unknown.join(", ")
        )))
    }
}

/// The last key check of each database and set of columns: when, and the unknown key ids it
/// found.
static KEY_CHECK: std::sync::Mutex<std::collections::BTreeMap<String, (Instant, Vec<String>)>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn cached_unknown_keys(db: &Db, what: &str) -> Option<Vec<String>> {
    let check = KEY_CHECK.lock().unwrap_or_else(|e| e.into_inner());
    let (at, unknown) = check.get(what)?;
    // A cached finding holds only while the keyring still lacks those keys.
    (at.elapsed() < Duration::from_secs(60) && unknown.iter().all(|id| !db.keys.knows(id))).then(|| unknown.clone())
}

/// A column of sealed values, for key rotation: its table, the key columns that identify a
/// row (the user id first), and the binding's field for a row (from its key values).
pub(crate) struct SealedColumn {
    pub(crate) table: &'static str,
    pub(crate) column: &'static str,
    pub(crate) keys: &'static [&'static str],
    pub(crate) field: fn(&[String]) -> String,
}

/// `migrate`: the schema up to date (the secrets store also splits old one-document rows).
pub(crate) async fn migrate(db: &Db) -> Result<Value, PluginError> {
    Ok(json!({ "database": db.label(), "applied": db.migrate().await? }))
}

/// `rotate_keys` over a store's sealed columns.
pub(crate) async fn rotate_columns(db: &Db, sealed: &[SealedColumn]) -> Result<Value, PluginError> {
    pg_common::presence::refuse_rotation_while_lacking(db.ready().await?, &db.keys).await?;
    let mut reports = Vec::new();
    for column in sealed {
        reports.push(rotate_keys(db, column).await?);
    }
    let rotated: u64 = reports.iter().filter_map(|r| r["rotated"].as_u64()).sum();
    let remaining: i64 = reports.iter().filter_map(|r| r["remaining"].as_i64()).sum();
    Ok(json!({ "key_id": db.keys.current_id(), "rotated": rotated, "remaining": remaining, "columns": reports }))
}

/// Re-seals, with the current master key, every value of a column sealed with another one:
/// in batches, each its own transaction with `FOR UPDATE SKIP LOCKED`, so it is safe while
/// serving and resumable (a stop leaves a consistent table; the next run continues). Works
/// for at most 5 s per call and reports what remains.
async fn rotate_keys(db: &Db, s: &SealedColumn) -> Result<Value, PluginError> {
    let pool = db.ready().await?;
    let (table, column) = (s.table, s.column);
    let current = format!("v1.{}.%", db.keys.current_id());
    let keys = s.keys.join(", ");
    let matches: Vec<String> = s.keys.iter().enumerate().map(|(i, k)| format!("{k} = ${}", i + 2)).collect();
    let update_sql = format!("UPDATE {table} SET {column} = $1 WHERE {}", matches.join(" AND "));
    let started = Instant::now();
    let mut rotated = 0u64;
    while started.elapsed() < Duration::from_secs(5) {
        let mut tx = pool.begin().await.map_err(db_error)?;
        let rows = sqlx::query(&format!(
            "SELECT {keys}, {column} FROM {table} WHERE {column} IS NOT NULL AND {column} NOT LIKE $1 \
             LIMIT 200 FOR UPDATE SKIP LOCKED"
        ))
        .bind(&current)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let key_values: Vec<String> = (0..s.keys.len()).map(|i| row.get(i)).collect();
            let sealed: String = row.get(s.keys.len());
            let field = (s.field)(&key_values);
            let at = Binding { table, field: &field, user_id: &key_values[0] };
            let plain = db.keys.open(&sealed, &at)?;
            let mut update = sqlx::query(&update_sql).bind(db.keys.seal(&plain, &at)?);
            for v in &key_values {
                update = update.bind(v);
            }
            update.execute(&mut *tx).await.map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        rotated += rows.len() as u64;
    }
    let remaining: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {table} WHERE {column} IS NOT NULL AND {column} NOT LIKE $1"
    ))
    .bind(&current)
    .fetch_one(pool)
    .await
    .map_err(db_error)?;
    Ok(json!({ "table": table, "column": column, "rotated": rotated, "remaining": remaining }))
}
