//! Subscriptions through (a fake) Stripe Checkout in subscription mode: bought, seen by the web
//! client's `subscription-access`, renewed by `invoice.paid`, cancelled at the period's end,
//! ended by `customer.subscription.deleted`; each webhook applied once.

use crate::billing::{deliver, profile_with, signed, success, ALICE};
use oh_e2e::{
    stripe::{FakeStripe, SUBSCRIPTION_PRICE_ID},
    Deployment, TestHost,
};
use reqwest::Method;
use serde_json::{json, Value};

/// The billing profile, selling the fake Stripe's recurring price.
fn profile(db: &str, stripe: &str) -> String {
    profile_with(db, stripe, &format!(", subscription_price_id = \"{SUBSCRIPTION_PRICE_ID}\""))
}

async fn call(host: &TestHost, method: Method, path: &str) -> oh_e2e::Response {
    host.as_key(ALICE, method, path, if path.contains("subscription-access") { None } else { Some(json!({})) }).await
}

async fn access(host: &TestHost) -> Value {
    let r = call(host, Method::GET, "/api/billing/subscription-access").await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
}

async fn webhook(host: &TestHost, payload: &[u8]) -> Value {
    let r = deliver(host, payload, signed(payload)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_is_bought_renewed_cancelled_and_ended() {
    let db = oh_e2e::pg::TestDb::create().await;
    let stripe = FakeStripe::start().await;
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("app_mode = \"saas\"\n", &profile(&db.url, &stripe.base_url));
    let host = d.start_with_env(&[("ENABLE_BILLING", "true")]);

    assert_eq!(access(&host).await, Value::Null);
    assert_eq!(call(&host, Method::POST, "/api/billing/has-payment-method").await.json(), json!(false));
    assert_eq!(call(&host, Method::POST, "/api/billing/cancel-subscription").await.status, 404);

    // Bought through Checkout in subscription mode, for the account's recurring price.
    let r = call(&host, Method::POST, "/api/billing/subscription-checkout-session").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let session = r.json()["redirect_url"].as_str().unwrap().rsplit('/').next().unwrap().to_owned();
    let form = stripe.checkout_forms().pop().unwrap();
    assert_eq!((form["mode"].as_str(), form["line_items[0][price]"].as_str()), ("subscription", SUBSCRIPTION_PRICE_ID));
    stripe.pay(&session);
    let back = success(&host, &session).await;
    assert_eq!(back.status, 302, "{}", back.text);
    let bought = access(&host).await;
    assert!(bought["start_at"].is_string() && bought["cancelled_at"].is_null(), "{bought}");
    assert_eq!(bought["amount_paid"], json!(20.0));
    // Stripe's webhook for the same payment changes nothing.
    let completed = stripe.completed_event("evt_sub_1", &session);
    assert_eq!(webhook(&host, &completed).await["outcome"], "already handled");
    assert_eq!(call(&host, Method::POST, "/api/billing/has-payment-method").await.json(), json!(true));
    assert_eq!(call(&host, Method::POST, "/api/billing/subscription-checkout-session").await.status, 409);

    // Renewed: the next period's end, from the invoice; the same event again does nothing.
    let sub = stripe.session(&session)["subscription"].as_str().unwrap().to_owned();
    let period_end = chrono::Utc::now().timestamp() + 60 * 86_400;
    let invoice = json!({ "id": "in_fake1", "object": "invoice", "subscription": sub,
                          "lines": { "data": [{ "period": { "end": period_end } }] } });
    let paid = stripe.event("evt_sub_2", "invoice.paid", invoice);
    assert_eq!(webhook(&host, &paid).await["outcome"], "subscription renewed");
    assert_eq!(webhook(&host, &paid).await["outcome"], "already handled");
    let renewed = access(&host).await;
    let end = chrono::DateTime::parse_from_rfc3339(renewed["end_at"].as_str().unwrap()).unwrap().timestamp();
    assert_eq!(end, period_end, "{renewed}");

    // Cancelled: Stripe stops at the period's end, and access lasts until then.
    let r = call(&host, Method::POST, "/api/billing/cancel-subscription").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(stripe.subscription(&sub)["cancel_at_period_end"], true);
    let cancelled = access(&host).await;
    assert!(cancelled["cancelled_at"].is_string() && cancelled["end_at"] == renewed["end_at"], "{cancelled}");

    // Ended by Stripe: no access.
    let deleted = stripe.event("evt_sub_3", "customer.subscription.deleted", stripe.subscription(&sub));
    assert_eq!(webhook(&host, &deleted).await["outcome"], "subscription ended");
    assert_eq!(access(&host).await, Value::Null);

    use oh_e2e::metrics::{scrape, value};
    let s = scrape(&host.admin_get("/internal/metrics").await.text);
    assert_eq!(value(&s, "oh_billing_subscriptions_started_total", &[]), 1.0);
    assert_eq!(value(&s, "oh_billing_subscriptions_cancelled_total", &[]), 1.0);
}

#[tokio::test]
async fn without_a_price_no_subscription_is_sold() {
    let db = oh_e2e::pg::TestDb::create().await;
    let stripe = FakeStripe::start().await;
    let d = Deployment::new();
    d.install_bundled();
    let profile = profile(&db.url, &stripe.base_url)
        .replace(&format!(", subscription_price_id = \"{SUBSCRIPTION_PRICE_ID}\""), "");
    d.write_profile("app_mode = \"saas\"\n", &profile);
    let host = d.start_with_env(&[("ENABLE_BILLING", "true")]);
    let r = call(&host, Method::POST, "/api/billing/subscription-checkout-session").await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(r.text.contains("STRIPE_SUBSCRIPTION_PRICE_ID"), "{}", r.text);
}
