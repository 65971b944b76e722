//! Billing's business metrics (the enterprise document's "billing events"): Prometheus series
//! in `/internal/metrics`, and the user-scoped ones as analytics events too (the host hands
//! them to the monitoring listeners, which respect each user's analytics consent).
//!
//! - `oh_billing_checkouts_total`: Stripe Checkout sessions started;
//! - `oh_billing_purchases_total{via}` and `oh_billing_credits_added_usd_total`: purchases
//!   credited (`via`: `return` when the buyer came back first, `webhook`);
//! - `oh_billing_credits_spent_usd_total`: LLM usage debited;
//! - `oh_billing_refusals_total{action}`: work refused for lack of credits;
//! - `oh_billing_stripe_events_total{type, outcome}`: Stripe's webhook events;
//! - `oh_billing_subscriptions_started_total`, `oh_billing_subscriptions_cancelled_total`.

use plugin_sdk::{CallContext, Services};
use serde_json::{json, Value};

pub(crate) fn counter(name: &str, value: f64, labels: Value) {
    plugin_sdk::metric(name, value, &labels);
}

/// A user's billing event for product analytics; never fails the caller.
pub(crate) async fn capture(services: &Services, user: &str, event: &str, properties: Value) {
    let ctx = CallContext::new("", Some(user), 0);
    let call = plugin_sdk::host_calls::Capture { event: event.to_owned(), properties };
    if let Err(e) = services.call(ctx, call).await {
        tracing::debug!(error = %e, event, "analytics event not delivered");
    }
}

/// Grants a new user's credits if `credits` is configured and the ledger has never seen them.
pub(crate) async fn welcome(
    ledger: &crate::ledger::Ledger,
    services: &Services,
    user: &str,
    credits: Option<&str>,
) -> Result<(), plugin_sdk::PluginError> {
    let Some(amount) = credits else { return Ok(()) };
    if ledger.welcome(user, amount).await? {
        let usd = amount.parse::<f64>().unwrap_or(0.0);
        counter("oh_billing_new_user_credits_total", 1.0, json!({}));
        counter("oh_billing_credits_added_usd_total", usd, json!({}));
        capture(services, user, "free credits granted", json!({ "amount_usd": usd })).await;
    }
    Ok(())
}

/// A subscription began now.
pub(crate) async fn subscribed(services: &Services, user: &str) {
    counter("oh_billing_subscriptions_started_total", 1.0, json!({}));
    capture(services, user, "subscription started", json!({})).await;
}

/// A purchase credited now.
pub(crate) async fn credited(services: &Services, user: &str, amount: &str, via: &str) {
    counter("oh_billing_purchases_total", 1.0, json!({ "via": via }));
    let usd = amount.parse::<f64>().unwrap_or(0.0);
    counter("oh_billing_credits_added_usd_total", usd, json!({}));
    capture(services, user, "credits purchased", json!({ "amount_usd": usd })).await;
}
