//! The durable inbox (migrations 0012, 0015): a verified delivery is stored, deduplicated by
//! the provider's delivery id and by its body's hash (the id is not signed: a replayed body
//! under a new id is the same delivery), before the provider gets its 2xx; workers claim due deliveries
//! (`FOR UPDATE SKIP LOCKED`, with a lease so a worker killed mid-way gives its claim back),
//! retry failures with backoff, and dead-letter what keeps failing. Every step goes to
//! `audit_log`.

use pg_common::{db_error, Database};
use plugin_sdk::PluginError;
use serde_json::{json, Value};
use sqlx::Row;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

/// How long a claim lasts: a worker that dies holding one frees it after this.
pub(crate) const LEASE: Duration = Duration::from_secs(60);

pub(crate) struct Inbox {
    pub(crate) db: Arc<Database>,
    pub(crate) max_attempts: i32,
    pub(crate) backoff: Duration,
}

/// A delivery a worker claimed.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub(crate) id: i64,
    pub(crate) source: String,
    pub(crate) delivery_id: String,
    pub(crate) event: String,
    pub(crate) payload: Value,
    pub(crate) attempts: i32,
}

/// A dead letter, as operators list them.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct DeadLetter {
    pub(crate) id: i64,
    pub(crate) source: String,
    pub(crate) delivery_id: String,
    pub(crate) event: String,
    pub(crate) attempts: i32,
    pub(crate) last_error: Option<String>,
    pub(crate) received_at: String,
}

/// An `audit_log` row, through `executor` (a pool, or a transaction the row must share).
pub(crate) async fn record<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    source: &str,
    delivery_id: Option<&str>,
    action: &str,
    detail: Value,
) -> Result<(), PluginError> {
    sqlx::query("INSERT INTO audit_log (source, delivery_id, action, detail) VALUES ($1, $2, $3, $4)")
        .bind(source)
        .bind(delivery_id)
        .bind(action)
        .bind(detail)
        .execute(executor)
        .await
        .map(drop)
        .map_err(db_error)
}

impl Inbox {
    /// Records a decision.
    pub(crate) async fn audit(&self, source: &str, delivery_id: Option<&str>, action: &str, detail: Value) {
        let write = async {
            let pool = self.db.ready().await?;
            record(pool, source, delivery_id, action, detail).await
        };
        if let Err(e) = write.await {
            tracing::error!(source, delivery_id, action, error = %e, "audit entry not written");
        }
    }

    /// Stores a verified delivery; false when this delivery id, or this body (`content`, its
    /// SHA-256), was stored before (a retry by the provider, or a replay). The answer is
    /// durable: committed before it returns.
    pub(crate) async fn store(
        &self,
        source: &str,
        delivery_id: &str,
        event: &str,
        payload: &Value,
        content: &str,
    ) -> Result<bool, PluginError> {
        let pool = self.db.ready().await?;
        let mut tx = pool.begin().await.map_err(db_error)?;
        // No conflict target: either unique index (the id, or the content) makes it a
        // duplicate.
        let stored = sqlx::query(
            "INSERT INTO webhook_deliveries (source, delivery_id, event, payload, content_sha256) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
        )
        .bind(source)
        .bind(delivery_id)
        .bind(event)
        .bind(payload)
        .bind(content)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?
        .rows_affected()
            == 1;
        let action = if stored { "received" } else { "duplicate" };
        sqlx::query("INSERT INTO audit_log (source, delivery_id, action, detail) VALUES ($1, $2, $3, $4)")
            .bind(source)
            .bind(delivery_id)
            .bind(action)
            .bind(json!({ "event": event }))
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        delivery_metric(source, action);
        Ok(stored)
    }

    /// Up to `n` due deliveries, oldest first (pending and due, or claimed by a worker whose
    /// lease ran out), in one statement. A claim need not survive a database crash (the
    /// delivery would be claimed again, as after a worker's crash, and processing is
    /// idempotent), so it is committed without waiting for the disk.
    pub(crate) async fn claim(&self, n: i64) -> Result<Vec<Claimed>, PluginError> {
        let pool = self.db.ready().await?;
        let mut tx = pool.begin().await.map_err(db_error)?;
        sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await.map_err(db_error)?;
        let rows = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'processing', attempts = attempts + 1,
                 locked_until = now() + make_interval(secs => $1)
             WHERE id IN (
                 SELECT id FROM webhook_deliveries
                 WHERE (status = 'pending' AND next_attempt_at <= now())
                    OR (status = 'processing' AND locked_until < now())
                 ORDER BY id FOR UPDATE SKIP LOCKED LIMIT $2)
             RETURNING id, source, delivery_id, event, payload, attempts",
        )
        .bind(LEASE.as_secs_f64())
        .bind(n)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        let mut claimed: Vec<Claimed> = rows
            .into_iter()
            .map(|r| Claimed {
                id: r.get(0),
                source: r.get(1),
                delivery_id: r.get(2),
                event: r.get(3),
                payload: r.get(4),
                attempts: r.get(5),
            })
            .collect();
        claimed.sort_by_key(|c| c.id);
        Ok(claimed)
    }

    /// Processed: done, with what was done (one transaction with its audit row).
    pub(crate) async fn done(&self, d: &Claimed, outcome: &str) -> Result<(), PluginError> {
        let update = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'done', locked_until = NULL, finished_at = now(), last_error = NULL
             WHERE id = $1",
        )
        .bind(d.id);
        // Not waiting for the disk here either: lost in a database crash, the delivery is
        // claimed and processed again (idempotent), and audited again.
        self.step_with(update, d, "processed", json!({ "outcome": outcome, "attempt": d.attempts }), false).await?;
        delivery_metric(&d.source, "processed");
        Ok(())
    }

    /// Failed: again later (exponential backoff with jitter), or dead after the last attempt.
    pub(crate) async fn failed(&self, d: &Claimed, error: &str) -> Result<(), PluginError> {
        if d.attempts >= self.max_attempts {
            tracing::error!(source = %d.source, delivery = %d.delivery_id, error, "webhook delivery dead-lettered");
            let update = sqlx::query(
                "UPDATE webhook_deliveries SET status = 'dead', locked_until = NULL, finished_at = now(), last_error = $2
                 WHERE id = $1",
            )
            .bind(d.id)
            .bind(error);
            self.step(update, d, "dead_lettered", json!({ "attempts": d.attempts, "error": error })).await?;
            delivery_metric(&d.source, "dead_lettered");
            Ok(())
        } else {
            let wait = backoff(self.backoff, d.attempts);
            tracing::warn!(source = %d.source, delivery = %d.delivery_id, error, attempt = d.attempts, "webhook delivery failed; retrying");
            let update = sqlx::query(
                "UPDATE webhook_deliveries SET status = 'pending', locked_until = NULL, last_error = $2,
                     next_attempt_at = now() + make_interval(secs => $3)
                 WHERE id = $1",
            )
            .bind(d.id)
            .bind(error)
            .bind(wait.as_secs_f64());
            let detail = json!({ "attempt": d.attempts, "in_ms": wait.as_millis() as u64, "error": error });
            self.step(update, d, "retry_scheduled", detail).await?;
            delivery_metric(&d.source, "retried");
            Ok(())
        }
    }

    /// A delivery's state change and its audit row, committed together (one round of
    /// durability per step, and the log never disagrees with the state).
    async fn step(
        &self,
        update: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
        d: &Claimed,
        action: &str,
        detail: Value,
    ) -> Result<(), PluginError> {
        self.step_with(update, d, action, detail, true).await
    }

    /// `step`, committed waiting for the disk or not (`durable`).
    async fn step_with(
        &self,
        update: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
        d: &Claimed,
        action: &str,
        detail: Value,
        durable: bool,
    ) -> Result<(), PluginError> {
        let pool = self.db.ready().await?;
        let mut tx = pool.begin().await.map_err(db_error)?;
        if !durable {
            sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await.map_err(db_error)?;
        }
        update.execute(&mut *tx).await.map_err(db_error)?;
        sqlx::query("INSERT INTO audit_log (source, delivery_id, action, detail) VALUES ($1, $2, $3, $4)")
            .bind(&d.source)
            .bind(&d.delivery_id)
            .bind(action)
            .bind(detail)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)
    }

    pub(crate) async fn dead_letters(&self) -> Result<Vec<DeadLetter>, PluginError> {
        let pool = self.db.ready().await?;
        let rows = sqlx::query(
            "SELECT id, source, delivery_id, event, attempts, last_error, received_at::text
             FROM webhook_deliveries WHERE status = 'dead' ORDER BY id",
        )
        .fetch_all(pool)
        .await
        .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|r| DeadLetter {
                id: r.get(0),
                source: r.get(1),
                delivery_id: r.get(2),
                event: r.get(3),
                attempts: r.get(4),
                last_error: r.get(5),
                received_at: r.get(6),
            })
            .collect())
    }

    /// A dead letter goes back to the queue with fresh attempts; false if `id` is no dead
    /// letter.
    pub(crate) async fn replay(&self, id: i64) -> Result<bool, PluginError> {
        let pool = self.db.ready().await?;
        let row = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = now(), finished_at = NULL
             WHERE id = $1 AND status = 'dead' RETURNING source, delivery_id",
        )
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(db_error)?;
        let Some(row) = row else { return Ok(false) };
        let (source, delivery_id): (String, String) = (row.get(0), row.get(1));
        self.audit(&source, Some(&delivery_id), "replayed", json!({ "id": id })).await;
        Ok(true)
    }
}

/// The wait before attempt `attempts + 1`: `base`·2^(attempts−1), capped at an hour, with up
/// to 25% jitter either way so retries of many deliveries spread out.
pub(crate) fn backoff(base: Duration, attempts: i32) -> Duration {
    let exp =
        base.saturating_mul(1u32 << attempts.clamp(1, 20).saturating_sub(1) as u32).min(Duration::from_secs(3600));
    let mut r = [0u8; 2];
    let _ = getrandom::getrandom(&mut r);
    let jitter = f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX) * 0.5 - 0.25; // -25%..+25%
    exp.mul_f64(1.0 + jitter)
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_with_jitter_and_a_cap() {
        let base = Duration::from_secs(1);
        for (attempt, nominal) in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0)] {
            let w = backoff(base, attempt).as_secs_f64();
            assert!(w >= nominal * 0.75 - 1e-9 && w <= nominal * 1.25 + 1e-9, "attempt {attempt}: {w}");
        }
        assert!(backoff(base, 40) <= Duration::from_secs(4500));
    }
}

/// Counts a delivery's step in `oh_webhook_deliveries_total{source, outcome}`: `received`,
/// `duplicate`, `refused` (bad signature, rate limit, too large...), `processed`, `retried`,
/// `dead_lettered`: the integrations' health per source, beside `audit_log`'s detail.
pub(crate) fn delivery_metric(source: &str, outcome: &str) {
    plugin_sdk::metric("oh_webhook_deliveries_total", 1.0, &json!({ "source": source, "outcome": outcome }));
}

/// Refused requests, aggregated for `audit_log`: the first of each (source, reason, status)
/// since the last flush is written at once, the rest are counted and written as one row a
/// minute (`Refusals::flush`), so a flood of forged requests adds a few rows, not one each.
#[derive(Default)]
pub(crate) struct Refusals(Mutex<HashMap<(String, String, u16), u64>>);

/// How often counted refusals are written.
pub(crate) const REFUSALS_EVERY: Duration = Duration::from_secs(60);

impl Refusals {
    /// Counts one; true when it is the first of its kind since the last flush (write it).
    pub(crate) fn note(&self, source: &str, reason: &str, status: u16) -> bool {
        delivery_metric(source, "refused");
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry((source.to_owned(), reason.to_owned(), status)).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// The refusals counted since the last call and not written yet: (source, reason,
    /// status, how many).
    pub(crate) fn take(&self) -> Vec<(String, String, u16, u64)> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        counts
            .drain()
            .filter(|(_, n)| *n > 1)
            .map(|((source, reason, status), n)| (source, reason, status, n - 1))
            .collect()
    }

    /// Writes what `take` gives, one row per kind.
    pub(crate) async fn flush(&self, inbox: &Inbox) {
        for (source, reason, status, count) in self.take() {
            let detail = json!({ "reason": reason, "status": status, "count": count, "aggregated": true,
                                 "window_secs": REFUSALS_EVERY.as_secs() });
            inbox.audit(&source, None, "refused", detail).await;
        }
    }
}

#[cfg(test)]
mod refusal_tests {
    use super::Refusals;

    #[test]
    fn the_first_refusal_of_a_kind_is_written_and_the_rest_counted() {
        let r = Refusals::default();
        assert!(r.note("github", "signature does not match", 403));
        for _ in 0..649 {
            assert!(!r.note("github", "signature does not match", 403));
        }
        assert!(r.note("github", "signature missing", 401));
        assert_eq!(r.take(), vec![("github".to_owned(), "signature does not match".to_owned(), 403, 649)]);
        assert!(r.take().is_empty());
        assert!(r.note("github", "signature does not match", 403), "a new window");
    }
}
