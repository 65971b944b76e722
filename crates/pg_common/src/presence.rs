//! Which master keys the live hosts hold, answered by PostgreSQL itself.
//!
//! Each process that opens a store keeps one connection of its own whose `application_name`
//! lists its key ids (`oh-host keys=<current>,<previous>...`). `pg_stat_activity` then says
//! which processes are up and what they can read: no table, no heartbeat, no stale row (a
//! process that dies, even by `kill -9`, takes its connection with it). `oh-host rotate-keys`
//! asks before re-sealing anything, so a host that cannot read the new key does not start
//! failing every read of what the rotation touched.

use crate::crypto::Keyring;
use plugin_sdk::{ErrorCode, PluginError};
use sqlx::{postgres::PgConnectOptions, Connection, PgConnection, PgPool, Row};
use std::{
    collections::HashSet,
    sync::{Mutex, OnceLock},
    time::Duration,
};

const PREFIX: &str = "oh-host keys=";
/// PostgreSQL keeps the first 63 bytes of an `application_name`.
const NAME_LIMIT: usize = 63;

/// The `application_name` announcing these key ids (current first); ids that do not fit are
/// left out, marked by a trailing `+`.
fn announcement(ids: &[&str]) -> String {
    let mut name = PREFIX.to_owned();
    for (i, id) in ids.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        if name.len() + sep.len() + id.len() + 1 > NAME_LIMIT {
            name.push('+');
            break;
        }
        name.push_str(sep);
        name.push_str(id);
    }
    name
}

/// Announces, for as long as this process lives, that it holds `keys` on the database of
/// `options`: once per process per database and key set, reconnecting after an outage. Not
/// while the host only checks (`oh-host check` leaves no trace).
pub fn announce(options: &PgConnectOptions, label: &str, keys: &Keyring) {
    static ANNOUNCED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    if plugin_sdk::read_only() {
        return;
    }
    let name = announcement(&keys.ids());
    let announced = ANNOUNCED.get_or_init(Default::default);
    if !announced.lock().unwrap_or_else(|e| e.into_inner()).insert(format!("{label}|{name}")) {
        return;
    }
    let options = options.clone().application_name(&name);
    plugin_sdk::enter_runtime(|| {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // no runtime (a unit test): nothing to keep open
        };
        runtime.spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                match PgConnection::connect_with(&options).await {
                    Ok(mut conn) => {
                        backoff = Duration::from_millis(200);
                        // Held; a ping now and then notices an outage, to reconnect after it.
                        loop {
                            tokio::time::sleep(Duration::from_secs(15)).await;
                            if conn.ping().await.is_err() {
                                break;
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "master-key announcement: cannot connect yet"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        });
    });
}

/// A live process on this database that cannot read values sealed with a given key.
#[derive(Debug)]
pub struct Holder {
    pub client: String,
    pub since: String,
    pub keys: String,
}

/// The live processes announcing keys on this database (other than this connection) that do
/// not list `id`. One that announced more keys than fit is counted as holding it.
pub async fn lacking(pool: &PgPool, id: &str) -> Result<Vec<Holder>, PluginError> {
    let rows = sqlx::query(
        "SELECT application_name, coalesce(host(client_addr), 'local socket') AS client, \
                to_char(backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS \"UTC\"') AS since \
         FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name LIKE $1 AND pid <> pg_backend_pid()",
    )
    .bind(format!("{PREFIX}%"))
    .fetch_all(pool)
    .await
    .map_err(crate::db_error)?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let name: String = row.get("application_name");
            let keys = name.strip_prefix(PREFIX)?.to_owned();
            let truncated = keys.ends_with('+');
            let holds = keys.trim_end_matches('+').split(',').any(|k| k == id);
            (!holds && !truncated).then(|| Holder { client: row.get("client"), since: row.get("since"), keys })
        })
        .collect())
}

/// Refuses a rotation to `keys`' current key while a live host lacks it; what to do instead.
pub async fn refuse_rotation_while_lacking(pool: &PgPool, keys: &Keyring) -> Result<(), PluginError> {
    let id = keys.current_id();
    let lacking = lacking(pool, id).await?;
    if lacking.is_empty() {
        return Ok(());
    }
    let hosts: Vec<String> =
        lacking.iter().map(|h| format!("{} (connected since {}, keys {})", h.client, h.since, h.keys)).collect();
    Err(PluginError::new(
        ErrorCode::CONFLICT,
        format!(
            "refused, nothing re-sealed: {} live host(s) on this database cannot read master key {id}: {}; \
             restart each with OH_MASTER_KEY set to the new key and the old one in OH_PREVIOUS_MASTER_KEYS, \
             then run rotate-keys again",
            lacking.len(),
            hosts.join("; ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_fits_postgres_name_limit_and_says_when_it_left_ids_out() {
        assert_eq!(announcement(&["98c27d56", "0a1b2c3d"]), "oh-host keys=98c27d56,0a1b2c3d");
        let many = ["11111111"; 9];
        let name = announcement(&many);
        assert!(name.len() <= NAME_LIMIT && name.ends_with('+'), "{name}");
        assert_eq!(name.matches("11111111").count(), 5, "{name}");
    }
}
