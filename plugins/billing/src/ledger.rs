//! The credits ledger in PostgreSQL (migration 0010): append-only entries, each with a unique
//! reference (so a purchase or a usage debit is written once however often it is reported),
//! and a balance row per user kept by the same transaction. Amounts cross as decimal text
//! and are summed by PostgreSQL's `numeric`: never a float.

use pg_common::{db_error, Database};
use plugin_sdk::PluginError;
use sqlx::Row;
use std::sync::Arc;

/// What a ledger entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Purchase,
    Usage,
    /// Credits given, not bought (a new user's).
    Adjustment,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Purchase => "purchase",
            Kind::Usage => "usage",
            Kind::Adjustment => "adjustment",
        }
    }
}

pub(crate) struct Ledger {
    pub(crate) db: Arc<Database>,
}

/// What the success return may do about a session.
#[derive(Debug, PartialEq)]
pub(crate) enum Check {
    /// Ask Stripe (this return claimed the check).
    Ask,
    /// Not a session of this server's: Stripe is not asked.
    Unknown,
    Completed,
    Cancelled,
    /// Asked within the last few seconds.
    Recently,
}

/// How often the success return may ask Stripe about one session.
pub(crate) const CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// What completing a checkout did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Completed {
    /// Credited now: to whom, how much (decimal text, US dollars).
    Credited { user: String, amount: String },
    /// A subscription began now, for this user.
    Subscribed { user: String },
    /// Credited before (the other of webhook and success redirect came first).
    Already,
    /// Not a session this server created.
    Unknown,
}

/// An amount as PostgreSQL prints a trimmed `numeric` ("12.5", "0", "-0.0025").
pub(crate) type Decimal = String;

impl Ledger {
    pub(crate) fn new(db: Arc<Database>) -> Ledger {
        Ledger { db }
    }

    pub(crate) async fn health(&self) -> Result<String, PluginError> {
        self.db.ping().await?;
        Ok(format!("PostgreSQL {}", self.db.label()))
    }

    /// The user's balance: one row, however long their ledger; `None` for a user the ledger
    /// has never seen.
    pub(crate) async fn balance(&self, user: &str) -> Result<Option<Decimal>, PluginError> {
        let pool = self.db.ready().await?;
        let row = sqlx::query("SELECT trim_scale(balance)::text FROM credit_balances WHERE user_id = $1")
            .bind(user)
            .fetch_optional(pool)
            .await
            .map_err(db_error)?;
        Ok(row.map(|r| r.get::<String, _>(0)))
    }

    /// A new user's credits (`new_user_credits`), once: granted to a user the ledger has never
    /// seen, under the reference `welcome:<user>` (so two hosts, or two requests, grant it
    /// once). Whether it was granted now.
    pub(crate) async fn welcome(&self, user: &str, amount: &str) -> Result<bool, PluginError> {
        let pool = self.db.ready().await?;
        let mut tx = pool.begin().await.map_err(db_error)?;
        // Two requests (or hosts) racing here grant it once: the reference is unique.
        let seen: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM credit_ledger WHERE user_id = $1)")
            .bind(user)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
        let granted = !seen && append_in(&mut tx, user, Kind::Adjustment, amount, &format!("welcome:{user}")).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(granted)
    }

    /// Whether the user has credits left (a balance above zero).
    pub(crate) async fn has_credits(&self, user: &str) -> Result<bool, PluginError> {
        let pool = self.db.ready().await?;
        let positive: Option<bool> = sqlx::query_scalar("SELECT balance > 0 FROM credit_balances WHERE user_id = $1")
            .bind(user)
            .fetch_optional(pool)
            .await
            .map_err(db_error)?;
        Ok(positive.unwrap_or(false))
    }

    /// Appends an entry unless one with `reference` exists; the balance moves with it, in
    /// one transaction. `amount` is decimal text (negative for a debit). Whether it was new.
    pub(crate) async fn append(
        &self,
        user: &str,
        kind: Kind,
        amount: &str,
        reference: &str,
    ) -> Result<bool, PluginError> {
        let pool = self.db.ready().await?;
        let mut tx = pool.begin().await.map_err(db_error)?;
        let added = append_in(&mut tx, user, kind, amount, reference).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(added)
    }

    /// The user's Stripe customer, if made already.
    pub(crate) async fn customer(&self, user: &str) -> Result<Option<String>, PluginError> {
        let pool = self.db.ready().await?;
        sqlx::query_scalar("SELECT stripe_customer_id FROM stripe_customers WHERE user_id = $1")
            .bind(user)
            .fetch_optional(pool)
            .await
            .map_err(db_error)
    }

    /// Records the user's customer; the one stored first wins (and is answered).
    pub(crate) async fn save_customer(&self, user: &str, customer: &str) -> Result<String, PluginError> {
        let pool = self.db.ready().await?;
        sqlx::query(
            "INSERT INTO stripe_customers (user_id, stripe_customer_id) VALUES ($1, $2) ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(user)
        .bind(customer)
        .execute(pool)
        .await
        .map_err(db_error)?;
        Ok(self.customer(user).await?.unwrap_or_else(|| customer.to_owned()))
    }

    /// A session this server created for `user`: `credits` buying `price` dollars, or a
    /// `subscription` (price 0: what it costs is Stripe's Price).
    pub(crate) async fn save_session(&self, id: &str, user: &str, price: u32, kind: &str) -> Result<(), PluginError> {
        let pool = self.db.ready().await?;
        sqlx::query(
            "INSERT INTO billing_sessions (id, user_id, status, price, kind) VALUES ($1, $2, 'in_progress', $3, $4)",
        )
        .bind(id)
        .bind(user)
        .bind(i64::from(price))
        .bind(kind)
        .execute(pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    /// Whether the success return may ask Stripe about session `id` now: only for a session
    /// of this server's that is not finished, and not within `CHECK_EVERY` of the last time
    /// (claimed atomically, so concurrent returns ask once).
    pub(crate) async fn claim_check(&self, id: &str) -> Result<Check, PluginError> {
        let pool = self.db.ready().await?;
        let claimed = sqlx::query(
            "UPDATE billing_sessions SET checked_at = now() \
             WHERE id = $1 AND status = 'in_progress' AND (checked_at IS NULL OR checked_at < now() - make_interval(secs => $2)) \
             RETURNING id",
        )
        .bind(id)
        .bind(CHECK_EVERY.as_secs_f64())
        .fetch_optional(pool)
        .await
        .map_err(db_error)?;
        if claimed.is_some() {
            return Ok(Check::Ask);
        }
        let status: Option<(String,)> = sqlx::query_as("SELECT status FROM billing_sessions WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(db_error)?;
        Ok(match status.as_ref().map(|s| s.0.as_str()) {
            None => Check::Unknown,
            Some("completed") => Check::Completed,
            Some("in_progress") => Check::Recently,
            Some(_) => Check::Cancelled,
        })
    }

    /// Marks an unfinished session cancelled (the buyer went back); whether it was ours.
    pub(crate) async fn cancel_session(&self, id: &str) -> Result<bool, PluginError> {
        let pool = self.db.ready().await?;
        let r = sqlx::query(
            "UPDATE billing_sessions SET status = 'cancelled', updated_at = now() WHERE id = $1 AND status = 'in_progress'",
        )
        .bind(id)
        .execute(pool)
        .await
        .map_err(db_error)?;
        Ok(r.rows_affected() > 0)
    }

    /// Credits a paid session once: the session row is locked, so the success redirect and
    /// the webhook (on any hosts, in either order) serialise here, and the ledger's unique
    /// reference backs that up. With `event`, the Stripe event is recorded in the same
    /// transaction (`None` from `record_event` means it was handled before).
    pub(crate) async fn complete_session(
        &self,
        id: &str,
        event: Option<(&str, &str)>,
    ) -> Result<Completed, PluginError> {
        let pool = self.db.ready().await?;
        let mut tx = pool.begin().await.map_err(db_error)?;
        if let Some((event_id, kind)) = event {
            if !record_event_in(&mut tx, event_id, kind).await? {
                return Ok(Completed::Already);
            }
        }
        let row = sqlx::query("SELECT user_id, status, price::text FROM billing_sessions WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        let Some(row) = row else {
            tx.commit().await.map_err(db_error)?;
            return Ok(Completed::Unknown);
        };
        let (user, status, price): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let outcome = if status == "completed" {
            Completed::Already
        } else {
            append_in(&mut tx, &user, Kind::Purchase, &price, &format!("checkout:{id}")).await?;
            sqlx::query("UPDATE billing_sessions SET status = 'completed', updated_at = now() WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            Completed::Credited { user: user.clone(), amount: price.clone() }
        };
        tx.commit().await.map_err(db_error)?;
        Ok(outcome)
    }

    /// Records a Stripe event that needs no other write; false when handled before.
    pub(crate) async fn record_event(&self, event_id: &str, kind: &str) -> Result<bool, PluginError> {
        let pool = self.db.ready().await?;
        let mut tx = pool.begin().await.map_err(db_error)?;
        let new = record_event_in(&mut tx, event_id, kind).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(new)
    }
}

pub(crate) async fn record_event_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    event_id: &str,
    kind: &str,
) -> Result<bool, PluginError> {
    let r = sqlx::query("INSERT INTO stripe_events (id, type) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING")
        .bind(event_id)
        .bind(kind)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    Ok(r.rows_affected() == 1)
}

async fn append_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    user: &str,
    kind: Kind,
    amount: &str,
    reference: &str,
) -> Result<bool, PluginError> {
    let inserted = sqlx::query(
        "INSERT INTO credit_ledger (user_id, kind, amount, reference) VALUES ($1, $2, $3::numeric, $4)
         ON CONFLICT (reference) DO NOTHING",
    )
    .bind(user)
    .bind(kind.as_str())
    .bind(amount)
    .bind(reference)
    .execute(&mut **tx)
    .await
    .map_err(db_error)?
    .rows_affected()
        == 1;
    if inserted {
        sqlx::query(
            "INSERT INTO credit_balances (user_id, balance) VALUES ($1, $2::numeric)
             ON CONFLICT (user_id) DO UPDATE SET balance = credit_balances.balance + EXCLUDED.balance, updated_at = now()",
        )
        .bind(user)
        .bind(amount)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    }
    Ok(inserted)
}

/// A usage cost (US dollars, as the LLM proxy reports it) as ledger text: a debit, to the
/// micro-dollar. Non-finite or non-positive costs are nothing to debit.
pub(crate) fn debit_of(cost: f64) -> Option<String> {
    (cost.is_finite() && cost >= 0.000_000_5).then(|| format!("-{cost:.6}"))
}

#[cfg(test)]
mod tests {
    use super::debit_of;

    #[test]
    fn costs_become_exact_debits() {
        assert_eq!(debit_of(0.0025).as_deref(), Some("-0.002500"));
        assert_eq!(debit_of(4.0).as_deref(), Some("-4.000000"));
        assert_eq!(debit_of(0.0), None);
        assert_eq!(debit_of(-1.0), None);
        assert_eq!(debit_of(f64::NAN), None);
        assert_eq!(debit_of(f64::INFINITY), None);
    }
}
