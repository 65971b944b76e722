//! Subscriptions through Stripe Checkout in subscription mode (OpenHands'
//! `subscription-checkout-session`, `cancel-subscription`, `has-payment-method`,
//! `subscription-access`), kept in `subscription_access` (migration 0016).
//!
//! A subscription begins when its Checkout Session is paid (the buyer's return or the
//! `checkout.session.completed` webhook, whichever comes first: they serialise on the session's
//! row, as purchases do); `invoice.paid` moves its end to the new period's; a cancellation
//! (`cancel-subscription`) asks Stripe to stop at the period's end and access lasts until then;
//! `customer.subscription.deleted` ends it. Each webhook event is applied once.

use crate::ledger::{record_event_in, Completed, Ledger};
use crate::routes::BillingRoutes;
use pg_common::db_error;
use plugin_sdk::{
    http::{json, redirect},
    HttpRequest, HttpResponse, PluginError,
};
use serde_json::{json, Value};
use sqlx::Row;

impl Ledger {
    /// What session `id` buys (`credits`, `subscription`), if it is ours.
    pub(crate) async fn session_kind(&self, id: &str) -> Result<Option<String>, PluginError> {
        let pool = self.db.ready().await?;
        sqlx::query_scalar("SELECT kind FROM billing_sessions WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(db_error)
    }

    /// Starts the subscription a paid session bought, once (see `complete_session`).
    pub(crate) async fn complete_subscription(
        &self,
        id: &str,
        subscription: &str,
        amount_cents: Option<i64>,
        event: Option<(&str, &str)>,
    ) -> Result<Completed, PluginError> {
        let pool = self.db.ready().await?;
        let mut tx = pool.begin().await.map_err(db_error)?;
        if let Some((event_id, kind)) = event {
            if !record_event_in(&mut tx, event_id, kind).await? {
                return Ok(Completed::Already);
            }
        }
        let row = sqlx::query(
            "SELECT user_id, status FROM billing_sessions WHERE id = $1 AND kind = 'subscription' FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        let Some(row) = row else {
            tx.commit().await.map_err(db_error)?;
            return Ok(Completed::Unknown);
        };
        let (user, status): (String, String) = (row.get(0), row.get(1));
        let outcome = if status == "completed" {
            Completed::Already
        } else {
            sqlx::query(
                "INSERT INTO subscription_access (user_id, status, start_at, end_at, amount_paid, stripe_subscription_id, checkout_session_id)
                 VALUES ($1, 'ACTIVE', now(), now() + interval '1 month', $2::numeric / 100, $3, $4)
                 ON CONFLICT (stripe_subscription_id) DO NOTHING",
            )
            .bind(&user)
            .bind(amount_cents)
            .bind(subscription)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            sqlx::query("UPDATE billing_sessions SET status = 'completed', updated_at = now() WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            Completed::Subscribed { user: user.clone() }
        };
        tx.commit().await.map_err(db_error)?;
        Ok(outcome)
    }

    /// The user's current subscription as the web client shows it (`null`: none).
    pub(crate) async fn access(&self, user: &str) -> Result<Value, PluginError> {
        let pool = self.db.ready().await?;
        let row: Option<String> = sqlx::query_scalar(
            "SELECT json_build_object('start_at', start_at, 'end_at', end_at, 'created_at', created_at,
                                      'cancelled_at', cancelled_at, 'amount_paid', amount_paid)::text
             FROM subscription_access WHERE user_id = $1 AND status = 'ACTIVE' AND end_at > now()
             ORDER BY end_at DESC LIMIT 1",
        )
        .bind(user)
        .fetch_optional(pool)
        .await
        .map_err(db_error)?;
        Ok(row.and_then(|r| serde_json::from_str(&r).ok()).unwrap_or(Value::Null))
    }

    /// The user's running subscription not yet cancelled: its Stripe id.
    pub(crate) async fn cancellable(&self, user: &str) -> Result<Option<String>, PluginError> {
        let pool = self.db.ready().await?;
        sqlx::query_scalar(
            "SELECT stripe_subscription_id FROM subscription_access
             WHERE user_id = $1 AND status = 'ACTIVE' AND end_at > now() AND cancelled_at IS NULL
             ORDER BY end_at DESC LIMIT 1",
        )
        .bind(user)
        .fetch_optional(pool)
        .await
        .map_err(db_error)
    }

    /// Marks a subscription cancelled (access lasts to its end).
    pub(crate) async fn mark_cancelled(&self, subscription: &str) -> Result<(), PluginError> {
        let pool = self.db.ready().await?;
        sqlx::query(
            "UPDATE subscription_access SET cancelled_at = now(), updated_at = now()
             WHERE stripe_subscription_id = $1 AND cancelled_at IS NULL",
        )
        .bind(subscription)
        .execute(pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    /// A subscription event from Stripe's webhook, applied once: `invoice.paid` moves the end
    /// to `period_end` (a Unix time; else a month on), `customer.subscription.deleted` ends it.
    /// What happened, for the event's outcome.
    pub(crate) async fn subscription_event(
        &self,
        event: (&str, &str),
        subscription: &str,
        period_end: Option<i64>,
    ) -> Result<&'static str, PluginError> {
        let pool = self.db.ready().await?;
        let mut tx = pool.begin().await.map_err(db_error)?;
        if !record_event_in(&mut tx, event.0, event.1).await? {
            return Ok("already handled");
        }
        let update = if event.1 == "customer.subscription.deleted" {
            sqlx::query(
                "UPDATE subscription_access SET status = 'ENDED', end_at = LEAST(end_at, now()),
                     cancelled_at = coalesce(cancelled_at, now()), updated_at = now()
                 WHERE stripe_subscription_id = $1 AND status = 'ACTIVE'",
            )
            .bind(subscription)
        } else {
            sqlx::query(
                "UPDATE subscription_access SET end_at = coalesce(to_timestamp($2::bigint), end_at + interval '1 month'),
                     updated_at = now()
                 WHERE stripe_subscription_id = $1 AND status = 'ACTIVE'",
            )
            .bind(subscription)
            .bind(period_end)
        };
        let changed = update.execute(&mut *tx).await.map_err(db_error)?.rows_affected();
        tx.commit().await.map_err(db_error)?;
        Ok(match (changed, event.1) {
            (0, _) => "not a subscription of this server",
            (_, "customer.subscription.deleted") => "subscription ended",
            _ => "subscription renewed",
        })
    }
}

impl BillingRoutes {
    /// `POST /api/billing/subscription-checkout-session` (`{redirect_url}`) and
    /// `GET /api/billing/create-subscription-checkout-session` (a redirect to Stripe).
    pub(crate) async fn subscribe(&self, user: &str, request: &HttpRequest) -> Result<HttpResponse, PluginError> {
        let Some(price) = &self.subscription_price_id else {
            return Ok(json(
                503,
                &json!({ "error": "this deployment sells no subscription: set subscription_price_id (STRIPE_SUBSCRIPTION_PRICE_ID)" }),
            ));
        };
        if self.ledger.cancellable(user).await?.is_some() {
            return Ok(json(409, &json!({ "error": "you already have a subscription" })));
        }
        let customer = self.customer_of(user).await?;
        let base = self.base(request);
        let session = self
            .stripe
            .create_subscription_session(
                &customer,
                user,
                price,
                &format!("{base}/api/billing/success?session_id={{CHECKOUT_SESSION_ID}}"),
                &format!("{base}/api/billing/cancel?session_id={{CHECKOUT_SESSION_ID}}"),
            )
            .await?;
        self.ledger.save_session(&session.id, user, 0, "subscription").await?;
        crate::metrics::counter("oh_billing_checkouts_total", 1.0, json!({}));
        let Some(url) = session.url else {
            return Err(PluginError::internal("Stripe made a Checkout Session without a url"));
        };
        Ok(if request.method.as_str() == "GET" { redirect(url) } else { json(200, &json!({ "redirect_url": url })) })
    }

    /// `POST /api/billing/cancel-subscription`: Stripe stops it at the period's end.
    pub(crate) async fn cancel_subscription(&self, user: &str) -> Result<HttpResponse, PluginError> {
        let Some(subscription) = self.ledger.cancellable(user).await? else {
            return Ok(json(404, &json!({ "error": "no subscription to cancel" })));
        };
        self.stripe.cancel_at_period_end(&subscription).await?;
        self.ledger.mark_cancelled(&subscription).await?;
        crate::metrics::counter("oh_billing_subscriptions_cancelled_total", 1.0, json!({}));
        crate::metrics::capture(&self.services, user, "subscription cancelled", json!({})).await;
        let access = self.ledger.access(user).await?;
        Ok(json(200, &json!({ "status": "cancelled", "subscription": access })))
    }

    /// `POST /api/billing/has-payment-method`: whether Stripe keeps a card for the user.
    pub(crate) async fn has_payment_method(&self, user: &str) -> Result<HttpResponse, PluginError> {
        let has = match self.ledger.customer(user).await? {
            Some(customer) => self.stripe.has_payment_method(&customer).await?,
            None => false,
        };
        Ok(json(200, &json!(has)))
    }
}
