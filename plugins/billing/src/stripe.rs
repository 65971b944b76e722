//! Stripe: the API calls Checkout (payments and subscriptions) needs, and webhook signatures.
//!
//! The API is form-encoded over HTTPS with the secret key as a bearer token; writes carry an
//! `Idempotency-Key`, so a retried request (a timeout, a crash between our write and Stripe's
//! answer) cannot make a second customer. Webhooks: `Stripe-Signature: t=<unix s>,v1=<hex>[,v1=…]`
//! where `v1 = hex(HMAC-SHA256(endpoint secret, "<t>.<raw body>"))`; any `v1` may match (the
//! secret is being rolled), and `t` must be within the tolerance of now.

use hmac::{Hmac, Mac};
use plugin_sdk::{ErrorCode, PluginError};
use serde::Deserialize;
use sha2::Sha256;
use std::time::Duration;

/// Stripe's default tolerance for a webhook's timestamp, in seconds.
pub(crate) const TOLERANCE_SECS: i64 = 300;

/// A client of one Stripe account.
pub(crate) struct Stripe {
    http: reqwest::Client,
    base: String,
    key: String,
}

/// A Checkout Session, as far as billing reads it.
#[derive(Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct Session {
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) url: Option<String>,
    /// `paid`, `unpaid`, `no_payment_required`.
    #[serde(default)]
    pub(crate) payment_status: String,
    /// `open`, `complete`, `expired`.
    #[serde(default)]
    pub(crate) status: Option<String>,
    /// In subscription mode, once paid: the subscription (`sub_…`).
    #[serde(default)]
    pub(crate) subscription: Option<String>,
    /// What was paid, in cents.
    #[serde(default)]
    pub(crate) amount_total: Option<i64>,
}

#[derive(Deserialize)]
struct List {
    #[serde(default)]
    data: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Customer {
    id: String,
}

impl Stripe {
    pub(crate) fn new(base: &str, key: &str) -> Result<Stripe, PluginError> {
        let http = plugin_sdk::enter_runtime(|| {
            reqwest::Client::builder().timeout(Duration::from_secs(20)).connect_timeout(Duration::from_secs(5)).build()
        })
        .map_err(|e| PluginError::internal(format!("cannot build the Stripe client: {e}")))?;
        Ok(Stripe { http, base: base.trim_end_matches('/').to_owned(), key: key.to_owned() })
    }

    /// A new customer for `user_id`. The idempotency key is the user's, so two hosts racing
    /// to create the first one get the same customer back.
    pub(crate) async fn create_customer(&self, user_id: &str, email: Option<&str>) -> Result<String, PluginError> {
        let mut form = vec![("metadata[user_id]", user_id.to_owned())];
        if let Some(email) = email {
            form.push(("email", email.to_owned()));
        }
        let c: Customer = self.post("/v1/customers", &format!("oh-customer-{user_id}"), &form).await?;
        Ok(c.id)
    }

    /// A Checkout Session buying `amount` US dollars of credits.
    pub(crate) async fn create_checkout_session(
        &self,
        customer: &str,
        user_id: &str,
        amount: u32,
        success_url: &str,
        cancel_url: &str,
    ) -> Result<Session, PluginError> {
        let form = vec![
            ("mode", "payment".to_owned()),
            ("customer", customer.to_owned()),
            ("client_reference_id", user_id.to_owned()),
            ("line_items[0][quantity]", "1".to_owned()),
            ("line_items[0][price_data][currency]", "usd".to_owned()),
            ("line_items[0][price_data][unit_amount]", (u64::from(amount) * 100).to_string()),
            ("line_items[0][price_data][product_data][name]", "OpenHands Credits".to_owned()),
            ("payment_method_types[0]", "card".to_owned()),
            ("saved_payment_method_options[payment_method_save]", "enabled".to_owned()),
            ("metadata[user_id]", user_id.to_owned()),
            ("metadata[credits]", amount.to_string()),
            ("success_url", success_url.to_owned()),
            ("cancel_url", cancel_url.to_owned()),
        ];
        // Each click is a new purchase: a fresh key, which still makes a retry of this very
        // request safe.
        let key = format!("oh-checkout-{}", random_hex(16));
        self.post("/v1/checkout/sessions", &key, &form).await
    }

    /// A Checkout Session subscribing the customer to `price_id` (a recurring Price of the
    /// Stripe account).
    pub(crate) async fn create_subscription_session(
        &self,
        customer: &str,
        user_id: &str,
        price_id: &str,
        success_url: &str,
        cancel_url: &str,
    ) -> Result<Session, PluginError> {
        let form = vec![
            ("mode", "subscription".to_owned()),
            ("customer", customer.to_owned()),
            ("client_reference_id", user_id.to_owned()),
            ("line_items[0][quantity]", "1".to_owned()),
            ("line_items[0][price]", price_id.to_owned()),
            ("metadata[user_id]", user_id.to_owned()),
            ("success_url", success_url.to_owned()),
            ("cancel_url", cancel_url.to_owned()),
        ];
        let key = format!("oh-subscribe-{}", random_hex(16));
        self.post("/v1/checkout/sessions", &key, &form).await
    }

    /// Cancels a subscription at the end of the period paid for (access lasts until then).
    pub(crate) async fn cancel_at_period_end(&self, subscription: &str) -> Result<(), PluginError> {
        let form = vec![("cancel_at_period_end", "true".to_owned())];
        let key = format!("oh-cancel-{subscription}");
        self.post::<serde_json::Value>(&format!("/v1/subscriptions/{subscription}"), &key, &form).await.map(drop)
    }

    /// Whether the customer has a saved payment method.
    pub(crate) async fn has_payment_method(&self, customer: &str) -> Result<bool, PluginError> {
        let response = self
            .http
            .get(format!("{}/v1/customers/{customer}/payment_methods?limit=1", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(unreachable)?;
        let list: List = answer(response).await?;
        Ok(!list.data.is_empty())
    }

    /// A session as Stripe has it now.
    pub(crate) async fn session(&self, id: &str) -> Result<Session, PluginError> {
        let response = self
            .http
            .get(format!("{}/v1/checkout/sessions/{id}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(unreachable)?;
        answer(response).await
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        idempotency_key: &str,
        form: &[(&str, String)],
    ) -> Result<T, PluginError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .header("Idempotency-Key", idempotency_key)
            .form(form)
            .send()
            .await
            .map_err(unreachable)?;
        answer(response).await
    }
}

fn unreachable(e: reqwest::Error) -> PluginError {
    PluginError::unavailable(format!("Stripe is unreachable ({e}); try again shortly"))
}

/// Stripe's answer, or its error message (`{"error": {"message"}}`) as ours.
async fn answer<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> Result<T, PluginError> {
    let status = response.status();
    let body = response.text().await.map_err(unreachable)?;
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("HTTP {status}"));
        tracing::warn!(status = %status, error = %message, "Stripe refused a request");
        let code = if status.is_server_error() { ErrorCode::UNAVAILABLE } else { ErrorCode::INTERNAL };
        return Err(PluginError::new(code, format!("Stripe answered {status}: {message}")));
    }
    serde_json::from_str(&body).map_err(|e| PluginError::internal(format!("unexpected answer from Stripe: {e}")))
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).expect("the system's random source");
    hex::encode(buf)
}

/// Why a webhook's signature is refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// No header, or no `t=` / `v1=` in it.
    Malformed,
    /// `t` is further from now than the tolerance (a replay, or a clock far off).
    Stale,
    /// No `v1` matches.
    Mismatch,
}

impl Refused {
    pub(crate) fn message(&self) -> &'static str {
        match self {
            Refused::Malformed => "Stripe-Signature is missing or malformed (t=<unix seconds>,v1=<hex>)",
            Refused::Stale => "Stripe-Signature timestamp is outside the 300 s tolerance",
            Refused::Mismatch => "Stripe-Signature does not match the payload",
        }
    }
}

/// Checks `header` against the raw `payload` with the endpoint's `secret` (the whole
/// `whsec_…` string is the HMAC key), at `now` (Unix seconds). Constant-time comparison.
pub(crate) fn verify(payload: &[u8], header: Option<&str>, secret: &str, now: i64) -> Result<(), Refused> {
    let header = header.ok_or(Refused::Malformed)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", sig)) => signatures.push(sig),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(Refused::Malformed)?;
    if signatures.is_empty() {
        return Err(Refused::Malformed);
    }
    if (now - timestamp).abs() > TOLERANCE_SECS {
        return Err(Refused::Stale);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    let matches = signatures.iter().filter_map(|s| hex::decode(s).ok()).any(|s| mac.clone().verify_slice(&s).is_ok());
    if matches {
        Ok(())
    } else {
        Err(Refused::Mismatch)
    }
}

/// A signature header for `payload` at `timestamp` (what Stripe sends; tests and the bench).
pub fn sign(payload: &[u8], secret: &str, timestamp: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(payload);
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret";
    const PAYLOAD: &[u8] = br#"{"id":"evt_1","object":"event"}"#;

    #[test]
    fn a_fixed_vector_verifies() {
        // Computed with Python's hmac: hmac.new(b"whsec_test_secret",
        // b'1700000000.{"id":"evt_1","object":"event"}', hashlib.sha256).hexdigest()
        let header = "t=1700000000,v1=0c8670ed117751cc551a20e35839447075c42800ea3cf3e8a2fbda99cd1e6edd";
        assert_eq!(sign(PAYLOAD, SECRET, 1_700_000_000), header);
        assert_eq!(verify(PAYLOAD, Some(header), SECRET, 1_700_000_000), Ok(()));
    }

    #[test]
    fn any_v1_may_match_and_other_schemes_are_ignored() {
        let good = sign(PAYLOAD, SECRET, 100);
        let sig = good.split("v1=").nth(1).unwrap();
        let header = format!("t=100,v0=abc,v1={},v1={sig}", "00".repeat(32));
        assert_eq!(verify(PAYLOAD, Some(&header), SECRET, 100), Ok(()));
    }

    #[test]
    fn forged_stale_and_malformed_headers_are_refused() {
        let good = sign(PAYLOAD, SECRET, 1000);
        assert_eq!(verify(b"{}", Some(&good), SECRET, 1000), Err(Refused::Mismatch));
        assert_eq!(verify(PAYLOAD, Some(&good), "whsec_other", 1000), Err(Refused::Mismatch));
        assert_eq!(verify(PAYLOAD, Some(&good), SECRET, 1000 + TOLERANCE_SECS + 1), Err(Refused::Stale));
        assert_eq!(verify(PAYLOAD, Some(&good), SECRET, 1000 - TOLERANCE_SECS - 1), Err(Refused::Stale));
        assert_eq!(verify(PAYLOAD, Some(&good), SECRET, 1000 + TOLERANCE_SECS), Ok(()));
        assert_eq!(verify(PAYLOAD, None, SECRET, 1000), Err(Refused::Malformed));
        assert_eq!(verify(PAYLOAD, Some("t=1000"), SECRET, 1000), Err(Refused::Malformed));
        assert_eq!(verify(PAYLOAD, Some("v1=00"), SECRET, 1000), Err(Refused::Malformed));
        assert_eq!(verify(PAYLOAD, Some("t=1000,v1=zz"), SECRET, 1000), Err(Refused::Mismatch));
        // A truncated signature is not a prefix match.
        let short = &good[..good.len() - 2];
        assert_eq!(verify(PAYLOAD, Some(short), SECRET, 1000), Err(Refused::Mismatch));
    }
}
