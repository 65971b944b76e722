//! A small Stripe on 127.0.0.1 (a third party we cannot run here), speaking the wire format
//! billing uses: form-encoded `POST /v1/customers` and `POST /v1/checkout/sessions` with a
//! bearer secret key and `Idempotency-Key` (a repeated key answers what it answered first),
//! `GET /v1/checkout/sessions/{id}`, and the hosted checkout page a browser is sent to (it pays
//! at once and sends the buyer to the session's `success_url`). Tests flip a session to paid
//! ([`FakeStripe::pay`]) and make the signed webhook delivery Stripe would send
//! ([`FakeStripe::completed_event`]). Subscriptions too: Checkout in subscription mode (paying
//! makes a `sub_…`), `POST /v1/subscriptions/{id}` (`cancel_at_period_end`), and a customer's
//! `GET /v1/customers/{id}/payment_methods` (a card once they paid).

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde_json::{json, Value};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// The secret key the fake accepts.
pub const SECRET_KEY: &str = "sk_test_fake_0123456789";
/// The webhook endpoint's signing secret.
pub const WEBHOOK_SECRET: &str = "whsec_fake_endpoint_secret_0123456789";

#[derive(Default)]
struct Account {
    /// Where the fake listens (its hosted checkout page is there too).
    base: String,
    customers: Vec<Value>,
    sessions: HashMap<String, Value>,
    /// Idempotency key -> the answer given first.
    idempotent: HashMap<String, Value>,
    /// The form of each session creation.
    checkout_forms: Vec<HashMap<String, String>>,
    /// How many times a session was looked up (`GET /v1/checkout/sessions/{id}`).
    lookups: usize,
    subscriptions: HashMap<String, Value>,
    /// Customers who paid (a saved card).
    paying: Vec<String>,
}

/// The price of the fake account's one recurring Price, in cents.
pub const SUBSCRIPTION_PRICE_ID: &str = "price_fake_pro_monthly";
const SUBSCRIPTION_CENTS: i64 = 2000;

impl Account {
    /// The buyer paid session `id`: complete, a card saved, and in subscription mode the
    /// subscription made.
    fn pay(&mut self, id: &str) -> Option<&Value> {
        let n = self.subscriptions.len() + 1;
        let s = self.sessions.get_mut(id)?;
        s["payment_status"] = json!("paid");
        s["status"] = json!("complete");
        let customer = s["customer"].as_str().unwrap_or_default().to_owned();
        if s["mode"] == "subscription" && s["subscription"].is_null() {
            let sub = format!("sub_fake{n}");
            s["subscription"] = json!(sub);
            let record = json!({ "id": sub, "object": "subscription", "status": "active",
                                 "customer": customer, "cancel_at_period_end": false });
            self.subscriptions.insert(sub, record);
        }
        self.paying.push(customer);
        self.sessions.get(id)
    }
}

pub struct FakeStripe {
    pub base_url: String,
    account: Arc<Mutex<Account>>,
}

fn form(body: &[u8]) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let s = s.replace('+', " ");
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn authorized(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {SECRET_KEY}"))
}

fn refused() -> Response {
    let body = json!({ "error": { "type": "invalid_request_error", "message": "Invalid API Key provided" } });
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

type Shared = Arc<Mutex<Account>>;

async fn create_customer(State(account): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&headers) {
        return refused();
    }
    let mut a = account.lock().unwrap();
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let Some(answer) = key.as_ref().and_then(|k| a.idempotent.get(k)) {
        return Json(answer.clone()).into_response();
    }
    let f = form(&body);
    let customer = json!({ "id": format!("cus_fake{}", a.customers.len() + 1), "object": "customer",
                           "metadata": { "user_id": f.get("metadata[user_id]") } });
    a.customers.push(customer.clone());
    if let Some(k) = key {
        a.idempotent.insert(k, customer.clone());
    }
    Json(customer).into_response()
}

async fn create_session(State(account): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&headers) {
        return refused();
    }
    let mut a = account.lock().unwrap();
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let Some(answer) = key.as_ref().and_then(|k| a.idempotent.get(k)) {
        return Json(answer.clone()).into_response();
    }
    let f = form(&body);
    let id = format!("cs_test_fake{}", a.sessions.len() + 1);
    let amount: i64 = match f.get("line_items[0][price]").map(String::as_str) {
        Some(SUBSCRIPTION_PRICE_ID) => SUBSCRIPTION_CENTS,
        Some(other) => {
            let body =
                json!({ "error": { "type": "invalid_request_error", "message": format!("No such price: '{other}'") } });
            return (StatusCode::BAD_REQUEST, Json(body)).into_response();
        }
        None => f.get("line_items[0][price_data][unit_amount]").and_then(|v| v.parse().ok()).unwrap_or(0),
    };
    let session = json!({
        "id": id, "object": "checkout.session", "mode": f.get("mode"),
        "url": format!("{}/c/pay/{id}", a.base),
        "payment_status": "unpaid", "status": "open",
        "customer": f.get("customer"), "client_reference_id": f.get("client_reference_id"),
        "amount_total": amount, "currency": f.get("line_items[0][price_data][currency]"),
        "success_url": f.get("success_url"), "cancel_url": f.get("cancel_url"),
        "metadata": { "user_id": f.get("metadata[user_id]"), "credits": f.get("metadata[credits]") },
    });
    a.sessions.insert(id, session.clone());
    a.checkout_forms.push(f);
    if let Some(k) = key {
        a.idempotent.insert(k, session.clone());
    }
    Json(session).into_response()
}

async fn get_session(State(account): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    account.lock().unwrap().lookups += 1;
    if !authorized(&headers) {
        return refused();
    }
    match account.lock().unwrap().sessions.get(&id) {
        Some(s) => Json(s.clone()).into_response(),
        None => {
            let body = json!({ "error": { "type": "invalid_request_error", "message": format!("No such checkout.session: '{id}'") } });
            (StatusCode::NOT_FOUND, Json(body)).into_response()
        }
    }
}

/// The hosted checkout page: the buyer pays at once and is sent to the session's
/// `success_url`, as Stripe does after a payment.
async fn pay_page(State(account): State<Shared>, Path(id): Path<String>) -> Response {
    let mut a = account.lock().unwrap();
    let Some(s) = a.pay(&id) else { return StatusCode::NOT_FOUND.into_response() };
    let to = s["success_url"].as_str().unwrap_or("").replace("{CHECKOUT_SESSION_ID}", &id);
    (StatusCode::SEE_OTHER, [(axum::http::header::LOCATION, to)]).into_response()
}

async fn update_subscription(
    State(account): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if !authorized(&headers) {
        return refused();
    }
    let f = form(&body);
    let mut a = account.lock().unwrap();
    let Some(sub) = a.subscriptions.get_mut(&id) else {
        let body =
            json!({ "error": { "type": "invalid_request_error", "message": format!("No such subscription: '{id}'") } });
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    };
    if let Some(v) = f.get("cancel_at_period_end") {
        sub["cancel_at_period_end"] = json!(v == "true");
    }
    Json(sub.clone()).into_response()
}

async fn payment_methods(State(account): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if !authorized(&headers) {
        return refused();
    }
    let a = account.lock().unwrap();
    let data: Vec<Value> = if a.paying.contains(&id) {
        vec![json!({ "id": "pm_fake_card", "object": "payment_method", "type": "card", "customer": id })]
    } else {
        Vec::new()
    };
    Json(json!({ "object": "list", "data": data, "has_more": false })).into_response()
}

impl FakeStripe {
    pub async fn start() -> FakeStripe {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let account: Shared = Arc::new(Mutex::new(Account { base: base_url.clone(), ..Default::default() }));
        let app = Router::new()
            .route("/v1/customers", post(create_customer))
            .route("/v1/checkout/sessions", post(create_session))
            .route("/v1/checkout/sessions/{id}", get(get_session))
            .route("/c/pay/{id}", get(pay_page))
            .route("/v1/subscriptions/{id}", post(update_subscription))
            .route("/v1/customers/{id}/payment_methods", get(payment_methods))
            .with_state(account.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeStripe { base_url, account }
    }

    /// The buyer paid: the session is complete.
    pub fn pay(&self, session_id: &str) {
        self.account.lock().unwrap().pay(session_id).expect("a session the fake made");
    }

    /// A subscription as the fake holds it.
    pub fn subscription(&self, id: &str) -> Value {
        self.account.lock().unwrap().subscriptions[id].clone()
    }

    /// A signed-ready event of `kind` about `object`, as Stripe delivers it.
    pub fn event(&self, event_id: &str, kind: &str, object: Value) -> Vec<u8> {
        let event = json!({ "id": event_id, "object": "event", "api_version": "2025-09-30.clover",
                            "created": chrono::Utc::now().timestamp(), "livemode": false,
                            "type": kind, "data": { "object": object } });
        event.to_string().into_bytes()
    }

    /// The session as the fake holds it.
    pub fn session(&self, session_id: &str) -> Value {
        self.account.lock().unwrap().sessions[session_id].clone()
    }

    /// How many customers were made.
    /// How many times the server looked a session up.
    pub fn lookups(&self) -> usize {
        self.account.lock().unwrap().lookups
    }

    pub fn customers(&self) -> usize {
        self.account.lock().unwrap().customers.len()
    }

    /// The form fields of each Checkout Session created.
    pub fn checkout_forms(&self) -> Vec<HashMap<String, String>> {
        self.account.lock().unwrap().checkout_forms.clone()
    }

    /// The `checkout.session.completed` event Stripe sends for a session, with its id.
    pub fn completed_event(&self, event_id: &str, session_id: &str) -> Vec<u8> {
        let session = self.session(session_id);
        let event = json!({ "id": event_id, "object": "event", "api_version": "2025-09-30.clover",
                            "created": chrono::Utc::now().timestamp(), "livemode": false,
                            "type": "checkout.session.completed", "data": { "object": session } });
        event.to_string().into_bytes()
    }
}

/// A `Stripe-Signature` header for `payload` at `timestamp`, as Stripe makes it:
/// `t=<ts>,v1=hex(HMAC-SHA256(secret, "<ts>.<payload>"))`.
pub fn signature(payload: &[u8], secret: &str, timestamp: i64) -> String {
    let mut message = format!("{timestamp}.").into_bytes();
    message.extend_from_slice(payload);
    format!("t={timestamp},v1={}", crate::hmac_sha256_hex(secret.as_bytes(), &message))
}
