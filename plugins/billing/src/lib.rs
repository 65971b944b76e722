//! Billing (OpenHands §10.9 `billing.py`): credits bought through Stripe Checkout, kept in a
//! ledger in PostgreSQL, spent on LLM usage.
//! - `BillingRoutes` (`routes`): `GET /api/billing/credits`, `POST
//!   /api/billing/create-checkout-session`, `GET /api/billing/success` and `/cancel` (where
//!   Stripe sends the buyer back), `POST /api/billing/stripe-webhook` (signed), and
//!   subscriptions (`subscription-checkout-session`, `create-subscription-checkout-session`,
//!   `cancel-subscription`, `has-payment-method`, `subscription-access`; `subscriptions.rs`).
//! - `BillingUsage` (`monitoring`): debits each LLM call's cost, and refuses (402) a new
//!   conversation or the next LLM call of a user without credits.
//!
//! A purchase is credited once: the success redirect and the `checkout.session.completed`
//! webhook may both arrive, in either order, at different hosts; they serialise on the
//! session's row and the ledger entry's unique reference (`ledger.rs`).

mod config;
mod ledger;
mod metrics;
mod routes;
pub mod stripe;
mod subscriptions;
mod usage;

use config::Config;
use plugin_sdk::Registry;
pub use routes::BillingRoutes;
pub use usage::BillingUsage;

pub fn register(r: &mut Registry) {
    r.routes(
        "BillingRoutes",
        "/api/billing/*: credits, Stripe Checkout, its success/cancel returns and its signed webhook",
        |config, services| BillingRoutes::new(&Config::parse(config)?, services),
    );
    r.monitoring(
        "BillingUsage",
        "debits each LLM call's cost from the user's credits; refuses new work without credits (402)",
        |config, services| BillingUsage::new(&Config::parse(config)?, services),
    );
}

plugin_sdk::export_plugin!(register);
