//! `BillingRoutes`: the balance, Stripe Checkout, its success and cancel returns, and its
//! signed webhook.

use crate::ledger::{Check, Completed, Ledger};
use crate::{config::Config, ledger, stripe};
use plugin_sdk::{
    http::{header, json, query_param, redirect, response},
    CallContext, HttpRequest, HttpResponse, PluginError, RouteSpec,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// Stripe object ids (`cs_test_a1B2…`) are letters, digits and underscores.
fn stripe_id(v: Option<&str>) -> Option<&str> {
    v.filter(|v| !v.is_empty() && v.len() <= 255 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

pub struct BillingRoutes {
    pub(crate) services: plugin_sdk::Services,
    pub(crate) ledger: Ledger,
    pub(crate) stripe: stripe::Stripe,
    pub(crate) subscription_price_id: Option<String>,
    webhook_secret: String,
    web_host: Option<String>,
    min_purchase: u32,
    max_purchase: u32,
    new_user_credits: Option<String>,
}

#[derive(Deserialize)]
struct CheckoutBody {
    amount: Value,
}

impl BillingRoutes {
    pub(crate) fn new(c: &Config, services: plugin_sdk::Services) -> Result<BillingRoutes, PluginError> {
        let (key, webhook_secret) = c.stripe()?;
        Ok(BillingRoutes {
            services,
            ledger: c.ledger()?,
            stripe: stripe::Stripe::new(&c.stripe_api_url, &key)?,
            webhook_secret,
            web_host: c.web_host(),
            min_purchase: c.min_purchase,
            max_purchase: c.max_purchase,
            new_user_credits: c.new_user_credits(),
            subscription_price_id: c.subscription_price_id(),
        })
    }

    /// Where buyers come back to: WEB_HOST, else the origin the request came to.
    pub(crate) fn base(&self, request: &HttpRequest) -> String {
        if let Some(host) = &self.web_host {
            return host.clone();
        }
        let proto = header(request, "x-forwarded-proto").unwrap_or("http");
        format!("{proto}://{}", header(request, "host").unwrap_or("localhost"))
    }

    /// The user's Stripe customer, made on first use.
    pub(crate) async fn customer_of(&self, user: &str) -> Result<String, PluginError> {
        match self.ledger.customer(user).await? {
            Some(c) => Ok(c),
            None => {
                let made = self.stripe.create_customer(user, None).await?;
                self.ledger.save_customer(user, &made).await
            }
        }
    }

    async fn checkout(&self, user: &str, request: &HttpRequest) -> Result<HttpResponse, PluginError> {
        let Ok(body) = serde_json::from_slice::<CheckoutBody>(&request.body) else {
            return Ok(json(422, &json!({ "error": "expected {\"amount\": <whole US dollars>}" })));
        };
        let amount = body.amount.as_u64().and_then(|a| u32::try_from(a).ok());
        let Some(amount) = amount.filter(|a| (self.min_purchase..=self.max_purchase).contains(a)) else {
            return Ok(json(
                422,
                &json!({ "error": format!(
                    "amount must be a whole number of US dollars from {} to {}",
                    self.min_purchase, self.max_purchase
                ) }),
            ));
        };
        let customer = self.customer_of(user).await?;
        let base = self.base(request);
        let session = self
            .stripe
            .create_checkout_session(
                &customer,
                user,
                amount,
                &format!("{base}/api/billing/success?session_id={{CHECKOUT_SESSION_ID}}"),
                &format!("{base}/api/billing/cancel?session_id={{CHECKOUT_SESSION_ID}}"),
            )
            .await?;
        self.ledger.save_session(&session.id, user, amount, "credits").await?;
        crate::metrics::counter("oh_billing_checkouts_total", 1.0, json!({}));
        let Some(url) = session.url else {
            return Err(PluginError::internal("Stripe made a Checkout Session without a url"));
        };
        Ok(json(200, &json!({ "redirect_url": url })))
    }

    /// The buyer is back from Stripe: ask Stripe whether it is paid, credit it (once). The
    /// route is public (Stripe sends the browser here), so Stripe is asked only about this
    /// server's own unfinished sessions, at most once every few seconds each: anyone else's
    /// requests cost a database read, never a call to Stripe.
    async fn success(&self, request: &HttpRequest) -> Result<HttpResponse, PluginError> {
        let given = query_param(&request.query, "session_id");
        let Some(id) = stripe_id(given.as_deref()) else {
            return Ok(json(400, &json!({ "error": "session_id is missing or malformed" })));
        };
        let kind = self.ledger.session_kind(id).await?;
        let back = |outcome: &str| redirect(format!("{}{}?checkout={outcome}", self.base(request), return_page(&kind)));
        match self.ledger.claim_check(id).await? {
            Check::Ask => {}
            Check::Unknown | Check::Cancelled => {
                return Ok(json(404, &json!({ "error": "no such checkout session here" })))
            }
            Check::Completed => return Ok(back("success")),
            Check::Recently => {
                let wait = ledger::CHECK_EVERY.as_secs();
                return Ok(response(
                    429,
                    vec![("content-type", "application/json".to_owned()), ("retry-after", wait.to_string())],
                    json!({ "error": format!("this payment was checked a moment ago; try again in {wait} seconds") })
                        .to_string()
                        .into_bytes(),
                ));
            }
        }
        let session = self.stripe.session(id).await?;
        if session.payment_status != "paid" {
            return Ok(json(
                400,
                &json!({ "error": format!("the payment is not complete (Stripe says {})", session.payment_status) }),
            ));
        }
        let completed = match (&session.subscription, kind.as_deref()) {
            (Some(subscription), Some("subscription")) => {
                self.ledger.complete_subscription(id, subscription, session.amount_total, None).await?
            }
            _ => self.ledger.complete_session(id, None).await?,
        };
        match completed {
            Completed::Unknown => Ok(json(404, &json!({ "error": "no such checkout session here" }))),
            Completed::Subscribed { user } => {
                crate::metrics::subscribed(&self.services, &user).await;
                Ok(back("success"))
            }
            Completed::Credited { user, amount } => {
                crate::metrics::credited(&self.services, &user, &amount, "return").await;
                Ok(back("success"))
            }
            Completed::Already => Ok(back("success")),
        }
    }

    async fn cancel(&self, request: &HttpRequest) -> Result<HttpResponse, PluginError> {
        let mut kind = None;
        if let Some(id) = stripe_id(query_param(&request.query, "session_id").as_deref()) {
            kind = self.ledger.session_kind(id).await?;
            self.ledger.cancel_session(id).await?;
        }
        Ok(redirect(format!("{}{}?checkout=cancel", self.base(request), return_page(&kind))))
    }

    /// A Stripe event: signature first (on the raw body), then at most once per event id.
    async fn webhook(&self, request: &HttpRequest) -> Result<HttpResponse, PluginError> {
        let now = chrono::Utc::now().timestamp();
        if let Err(refused) =
            stripe::verify(&request.body, header(request, "stripe-signature"), &self.webhook_secret, now)
        {
            tracing::warn!(reason = refused.message(), "Stripe webhook refused");
            return Ok(json(400, &json!({ "error": refused.message() })));
        }
        let Ok(event) = serde_json::from_slice::<Value>(&request.body) else {
            return Ok(json(400, &json!({ "error": "the payload is not JSON" })));
        };
        let (Some(event_id), Some(kind)) = (stripe_id(event["id"].as_str()), event["type"].as_str()) else {
            return Ok(json(400, &json!({ "error": "the event has no id or type" })));
        };
        let object = &event["data"]["object"];
        let fulfils = matches!(kind, "checkout.session.completed" | "checkout.session.async_payment_succeeded");
        let subscription = stripe_id(object["subscription"].as_str());
        let outcome = match stripe_id(object["id"].as_str()) {
            Some(session) if fulfils && object["payment_status"] == "paid" && object["mode"] == "subscription" => {
                let Some(subscription) = subscription else {
                    return Ok(json(400, &json!({ "error": "a paid subscription session without its subscription" })));
                };
                let amount = object["amount_total"].as_i64();
                match self.ledger.complete_subscription(session, subscription, amount, Some((event_id, kind))).await? {
                    Completed::Subscribed { user } => {
                        crate::metrics::subscribed(&self.services, &user).await;
                        "subscribed"
                    }
                    Completed::Unknown => "not a session of this server",
                    _ => "already handled",
                }
            }
            Some(sub) if kind == "customer.subscription.deleted" => {
                self.ledger.subscription_event((event_id, kind), sub, None).await?
            }
            Some(_) if kind == "invoice.paid" && subscription.is_some() => {
                let end = object["lines"]["data"][0]["period"]["end"].as_i64();
                self.ledger.subscription_event((event_id, kind), subscription.unwrap_or_default(), end).await?
            }
            Some(session) if fulfils && object["payment_status"] == "paid" => {
                match self.ledger.complete_session(session, Some((event_id, kind))).await? {
                    Completed::Credited { user, amount } => {
                        crate::metrics::credited(&self.services, &user, &amount, "webhook").await;
                        "credited"
                    }
                    Completed::Already | Completed::Subscribed { .. } => "already handled",
                    Completed::Unknown => "not a session of this server",
                }
            }
            _ => {
                if self.ledger.record_event(event_id, kind).await? {
                    "ignored"
                } else {
                    "already handled"
                }
            }
        };
        tracing::info!(event = event_id, kind, outcome, "Stripe event");
        crate::metrics::counter("oh_billing_stripe_events_total", 1.0, json!({ "type": kind, "outcome": outcome }));
        Ok(json(200, &json!({ "received": true, "outcome": outcome })))
    }
}

impl plugin_sdk::RouteHandler for BillingRoutes {
    fn routes(&self) -> Vec<RouteSpec> {
        let route = |method: &str, path: &str, authenticated| RouteSpec {
            method: method.into(),
            path: path.into(),
            authenticated,
        };
        vec![
            route("GET", "/api/billing/credits", true),
            route("GET", "/api/billing/subscription-access", true),
            route("POST", "/api/billing/subscription-checkout-session", true),
            route("GET", "/api/billing/create-subscription-checkout-session", true),
            route("POST", "/api/billing/cancel-subscription", true),
            route("POST", "/api/billing/has-payment-method", true),
            route("POST", "/api/billing/create-checkout-session", true),
            // Stripe sends the buyer (and its webhooks) here without our session.
            route("GET", "/api/billing/success", false),
            route("GET", "/api/billing/cancel", false),
            route("POST", "/api/billing/stripe-webhook", false),
        ]
    }

    async fn handle(&self, ctx: CallContext, request: HttpRequest) -> Result<HttpResponse, PluginError> {
        let user = ctx.user_id();
        match (request.method.as_str(), request.path.as_str(), user) {
            ("GET", "/api/billing/success", _) => self.success(&request).await,
            ("GET", "/api/billing/cancel", _) => self.cancel(&request).await,
            ("POST", "/api/billing/stripe-webhook", _) => self.webhook(&request).await,
            (_, _, None) => Ok(json(401, &json!({ "error": "sign in first" }))),
            ("GET", "/api/billing/credits", Some(user)) => {
                // The exact decimal as a JSON number (no float on the way). A user the ledger
                // has never seen gets the new users' credits first, when there are any.
                let mut balance = self.ledger.balance(user).await?;
                if balance.is_none() && self.new_user_credits.is_some() {
                    crate::metrics::welcome(&self.ledger, &self.services, user, self.new_user_credits.as_deref())
                        .await?;
                    balance = self.ledger.balance(user).await?;
                }
                let balance = balance.unwrap_or_else(|| "0".to_owned());
                Ok(response(
                    200,
                    vec![("content-type", "application/json".to_owned())],
                    format!("{{\"credits\":{balance}}}").into_bytes(),
                ))
            }
            ("GET", "/api/billing/subscription-access", Some(user)) => Ok(json(200, &self.ledger.access(user).await?)),
            ("POST", "/api/billing/subscription-checkout-session", Some(user))
            | ("GET", "/api/billing/create-subscription-checkout-session", Some(user)) => {
                self.subscribe(user, &request).await
            }
            ("POST", "/api/billing/cancel-subscription", Some(user)) => self.cancel_subscription(user).await,
            ("POST", "/api/billing/has-payment-method", Some(user)) => self.has_payment_method(user).await,
            ("POST", "/api/billing/create-checkout-session", Some(user)) => self.checkout(user, &request).await,
            (method, path, _) => Ok(json(404, &json!({ "error": format!("no route {method} {path}") }))),
        }
    }

    async fn health(&self) -> Result<String, PluginError> {
        self.ledger.health().await
    }
}

/// Where a buyer lands back from Stripe, as the 0.62 web client expects: its billing page for
/// credits, its LLM settings page for a subscription (which shows "Subscription successful!"
/// or "Something went wrong" for `?checkout=success|cancel`).
fn return_page(kind: &Option<String>) -> &'static str {
    match kind.as_deref() {
        Some("subscription") => "/settings",
        _ => "/settings/billing",
    }
}
