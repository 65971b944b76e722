//! Billing: credits bought through (a fake) Stripe Checkout, credited once whatever the order
//! of the success return and the webhook and whichever hosts they reach; usage that spends
//! them; 402 without credits; forged, stale and replayed webhooks refused.

use oh_e2e::{
    llm::FakeLlm,
    stripe::{signature, FakeStripe, WEBHOOK_SECRET},
    Deployment, TestHost,
};
use serde_json::{json, Value};
use std::time::Duration;

pub(crate) const ALICE: &str = "alice-billing-key-0123456789";
const BOB: &str = "bob-billing-key-0123456789";
const WEB: &str = "http://app.example.test";

fn profile(db: &str, stripe: &str) -> String {
    profile_with(db, stripe, "")
}

/// The billing profile; `extra` goes into both billing configs (`, key = value`).
pub(crate) fn profile_with(db: &str, stripe: &str, extra: &str) -> String {
    let billing = format!(
        "{{ database_url = \"{db}\", stripe_api_key = \"{}\", stripe_webhook_secret = \"{WEBHOOK_SECRET}\", \
         stripe_api_url = \"{stripe}\", web_host = \"{WEB}\"{extra} }}",
        oh_e2e::stripe::SECRET_KEY
    );
    let base = oh_e2e::saas_base_profile(db, &[("alice", ALICE), ("bob", BOB)], "");
    format!(
        "{base}[[extensions.routes]]\nlibrary = \"billing\"\nimplementation = \"BillingRoutes\"\nconfig = {billing}\n\
         [[extensions.monitoring]]\nlibrary = \"billing\"\nimplementation = \"BillingUsage\"\nconfig = {{ database_url = \"{db}\"{extra} }}\n"
    )
}

fn host(db: &oh_e2e::pg::TestDb, stripe: &FakeStripe) -> (Deployment, TestHost) {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("app_mode = \"saas\"\n", &profile(&db.url, &stripe.base_url));
    let host = d.start_with_env(&[("ENABLE_BILLING", "true"), ("STRIPE_PUBLISHABLE_KEY", "pk_test_fake")]);
    (d, host)
}

async fn credits(host: &TestHost, key: &str) -> String {
    let r = host.as_key(key, reqwest::Method::GET, "/api/billing/credits", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let credits = &r.json()["credits"];
    assert!(credits.is_number(), "a JSON number: {}", r.text);
    credits.to_string()
}

/// Starts a checkout for `amount` dollars; the session id.
async fn checkout(host: &TestHost, key: &str, amount: u32) -> String {
    let r = host
        .as_key(key, reqwest::Method::POST, "/api/billing/create-checkout-session", Some(json!({ "amount": amount })))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let url = r.json()["redirect_url"].as_str().unwrap().to_owned();
    url.rsplit('/').next().unwrap().to_owned()
}

/// The browser's return from Stripe (no session cookie: Stripe sends it there).
pub(crate) async fn success(host: &TestHost, session: &str) -> oh_e2e::Response {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    host.send(client.get(host.url(&format!("/api/billing/success?session_id={session}")))).await
}

pub(crate) async fn deliver(host: &TestHost, payload: &[u8], signature: Option<String>) -> oh_e2e::Response {
    let mut req = host
        .http
        .post(host.url("/api/billing/stripe-webhook"))
        .header("content-type", "application/json")
        .body(payload.to_vec());
    if let Some(s) = signature {
        req = req.header("stripe-signature", s);
    }
    host.send(req).await
}

pub(crate) fn signed(payload: &[u8]) -> Option<String> {
    Some(signature(payload, WEBHOOK_SECRET, chrono::Utc::now().timestamp()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_is_credited_once_whichever_of_webhook_and_return_arrives_first_and_where() {
    let db = oh_e2e::pg::TestDb::create().await;
    let stripe = FakeStripe::start().await;
    let (_da, a) = host(&db, &stripe);
    let (_db, b) = host(&db, &stripe);

    let config = a.get("/api/options/config").await.json();
    assert_eq!(config["STRIPE_PUBLISHABLE_KEY"], "pk_test_fake");
    assert_eq!(config["FEATURE_FLAGS"]["ENABLE_BILLING"], true);
    assert_eq!(credits(&a, ALICE).await, "0");
    assert_eq!(a.as_key(ALICE, reqwest::Method::GET, "/api/billing/subscription-access", None).await.text, "null");
    for bad in [json!({ "amount": 5 }), json!({ "amount": 10.5 }), json!({ "amount": "10" }), json!({})] {
        let r = a.as_key(ALICE, reqwest::Method::POST, "/api/billing/create-checkout-session", Some(bad.clone())).await;
        assert_eq!(r.status, 422, "{bad}: {}", r.text);
        assert!(r.json()["error"].is_string());
    }
    assert_eq!(credits(&a, BOB).await, "0");
    assert_eq!(a.send(a.http.get(a.url("/api/billing/credits"))).await.status, 401, "credits are a signed-in user's");

    // First purchase: the webhook reaches host B before the buyer returns to host A.
    let first = checkout(&a, ALICE, 25).await;
    let form = &stripe.checkout_forms()[0];
    assert_eq!(form["line_items[0][price_data][unit_amount]"], "2500");
    assert_eq!(form["client_reference_id"], "alice");
    assert_eq!(form["success_url"], format!("{WEB}/api/billing/success?session_id={{CHECKOUT_SESSION_ID}}"));
    let early = success(&a, &first).await;
    assert_eq!(early.status, 400, "not paid yet: {}", early.text);
    stripe.pay(&first);
    let event = stripe.completed_event("evt_first", &first);
    let r = deliver(&b, &event, signed(&event)).await;
    assert_eq!((r.status, r.json()["outcome"].clone()), (200, json!("credited")), "{}", r.text);
    let back = success(&a, &first).await;
    assert_eq!(back.status, 302, "{}", back.text);
    assert_eq!(back.headers["location"], format!("{WEB}/settings/billing?checkout=success"));
    assert_eq!(credits(&a, ALICE).await, "25");

    // Second: the return (host B) before the webhook (host A); Stripe then retries it.
    let second = checkout(&b, ALICE, 10).await;
    stripe.pay(&second);
    assert_eq!(success(&b, &second).await.status, 302);
    let event = stripe.completed_event("evt_second", &second);
    let r = deliver(&a, &event, signed(&event)).await;
    assert_eq!((r.status, r.json()["outcome"].clone()), (200, json!("already handled")), "{}", r.text);
    let retry = deliver(&b, &event, signed(&event)).await;
    assert_eq!((retry.status, retry.json()["outcome"].clone()), (200, json!("already handled")));
    assert_eq!(credits(&b, ALICE).await, "35");
    assert_eq!(stripe.customers(), 1, "one Stripe customer per user, made once");

    // Third: both at once, on different hosts.
    let third = checkout(&a, ALICE, 12).await;
    stripe.pay(&third);
    let event = stripe.completed_event("evt_third", &third);
    let (hook, ret) = tokio::join!(deliver(&a, &event, signed(&event)), success(&b, &third));
    assert_eq!((hook.status, ret.status), (200, 302), "{} {}", hook.text, ret.text);
    assert_eq!(credits(&a, ALICE).await, "47");

    // Refused: forged, stale, unsigned, tampered. Nothing is credited by them.
    let fourth = checkout(&a, ALICE, 10).await;
    stripe.pay(&fourth);
    let event = stripe.completed_event("evt_fourth", &fourth);
    let now = chrono::Utc::now().timestamp();
    let tampered = String::from_utf8(event.clone()).unwrap().replace("\"paid\"", "\"paid\" ").into_bytes();
    for (what, payload, header) in [
        ("forged", event.clone(), Some(signature(&event, "whsec_attacker", now))),
        ("stale", event.clone(), Some(signature(&event, WEBHOOK_SECRET, now - 301))),
        ("unsigned", event.clone(), None),
        ("tampered", tampered.clone(), signed(&event)),
        ("garbled", event.clone(), Some("t=abc,v1=zz".to_owned())),
    ] {
        let r = deliver(&b, &payload, header).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text);
        assert!(r.json()["error"].as_str().unwrap().contains("Stripe-Signature"), "{what}: {}", r.text);
    }
    assert_eq!(credits(&a, ALICE).await, "47");
    // An event for a session that is not ours, and one of a kind billing does not handle.
    let foreign = json!({ "id": "evt_foreign", "type": "checkout.session.completed",
                          "data": { "object": { "id": "cs_someone_else", "payment_status": "paid" } } })
    .to_string()
    .into_bytes();
    let r = deliver(&a, &foreign, signed(&foreign)).await;
    assert_eq!((r.status, r.json()["outcome"].clone()), (200, json!("not a session of this server")));
    let other =
        json!({ "id": "evt_other", "type": "customer.updated", "data": { "object": {} } }).to_string().into_bytes();
    assert_eq!(deliver(&a, &other, signed(&other)).await.json()["outcome"], "ignored");

    // The cancel return: back to the billing page, and the session is no longer pending.
    let fifth = checkout(&a, ALICE, 10).await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let cancel = a.send(client.get(a.url(&format!("/api/billing/cancel?session_id={fifth}")))).await;
    assert_eq!(cancel.status, 302);
    assert_eq!(cancel.headers["location"], format!("{WEB}/settings/billing?checkout=cancel"));

    // The ledger: one entry per purchase, and the balance row is their sum.
    let mut conn = db.connect().await;
    let (entries, sum, balance): (i64, String, String) = sqlx::query_as(
        "SELECT count(*), trim_scale(sum(amount))::text, (SELECT trim_scale(balance)::text FROM credit_balances WHERE user_id = 'alice')
         FROM credit_ledger WHERE user_id = 'alice' AND kind = 'purchase'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!((entries, sum.as_str(), balance.as_str()), (3, "47", "47"));
    let status: String = sqlx::query_scalar("SELECT status FROM billing_sessions WHERE id = $1")
        .bind(&fifth)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(status, "cancelled");
    assert_eq!(credits(&b, BOB).await, "0", "Alice's purchases are hers");
}

async fn wait_for_credits(host: &TestHost, key: &str, expected: &str) {
    let started = std::time::Instant::now();
    loop {
        let now = credits(host, key).await;
        if now == expected {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "credits stayed {now}, expected {expected}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn events(host: &TestHost, id: &str) -> Vec<Value> {
    let r = host.as_key(ALICE, reqwest::Method::GET, &format!("/api/conversations/{id}/events?limit=100"), None).await;
    r.json()["events"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_spends_credits_until_work_is_refused_with_402() {
    let db = oh_e2e::pg::TestDb::create().await;
    let stripe = FakeStripe::start().await;
    let llm = FakeLlm::start().await;
    let (_d, host) = host(&db, &stripe);
    let settings = json!({ "llm_model": "openai/fake-model", "llm_base_url": llm.base_url, "llm_api_key": "sk-test" });
    assert_eq!(host.as_key(ALICE, reqwest::Method::POST, "/api/settings", Some(settings)).await.status, 200);

    // No credits: no conversation, with the status the web client shows.
    let start = json!({ "initial_user_msg": "hello" });
    let r = host.as_key(ALICE, reqwest::Method::POST, "/api/conversations", Some(start.clone())).await;
    assert_eq!(r.status, 402, "{}", r.text);
    assert_eq!(r.json()["msg_id"], "STATUS$ERROR_LLM_OUT_OF_CREDITS");
    assert!(llm.requests().is_empty());

    // $10 of credits; each LLM call costs $4 (as the LiteLLM proxy reports it).
    let session = checkout(&host, ALICE, 10).await;
    stripe.pay(&session);
    assert_eq!(success(&host, &session).await.status, 302);
    llm.set_cost("4");
    let r = host.as_key(ALICE, reqwest::Method::POST, "/api/conversations", Some(start)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.json()["conversation_id"].as_str().unwrap().to_owned();
    wait_for_credits(&host, ALICE, "6").await;
    for (message, left) in [("two", "2"), ("three", "-2")] {
        let path = format!("/api/conversations/{id}/message");
        assert_eq!(
            host.as_key(ALICE, reqwest::Method::POST, &path, Some(json!({ "message": message }))).await.status,
            200
        );
        wait_for_credits(&host, ALICE, left).await;
    }
    // Out of credits: the next message is stored, but the agent stops with the error status
    // instead of calling the LLM.
    let path = format!("/api/conversations/{id}/message");
    assert_eq!(host.as_key(ALICE, reqwest::Method::POST, &path, Some(json!({ "message": "four" }))).await.status, 200);
    let started = std::time::Instant::now();
    loop {
        let all = events(&host, &id).await;
        let refused = all.iter().any(|e| {
            e["observation"] == "agent_state_changed"
                && e["extras"]["agent_state"] == "error"
                && e["extras"]["reason"] == "STATUS$ERROR_LLM_OUT_OF_CREDITS"
        });
        if refused {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "no out-of-credits error among {all:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(llm.requests().len(), 3, "no LLM call without credits");
    let again = host.as_key(ALICE, reqwest::Method::POST, "/api/conversations", Some(json!({}))).await;
    assert_eq!(again.status, 402, "{}", again.text);

    // Three usage entries of exactly -4 (one per stored answer), and the balance is the sum.
    let mut conn = db.connect().await;
    let usage: Vec<String> = sqlx::query_scalar(
        "SELECT trim_scale(amount)::text FROM credit_ledger WHERE user_id = 'alice' AND kind = 'usage' ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(usage, ["-4", "-4", "-4"]);
    // Bob is refused on his own account, Alice's purchase is not his.
    let bob = host.as_key(BOB, reqwest::Method::POST, "/api/conversations", Some(json!({}))).await;
    assert_eq!(bob.status, 402);

    // The business metrics say the same: one checkout, one purchase credited on the buyer's
    // return, $10 added, $12 spent, the refusals for lack of credits.
    use oh_e2e::metrics::{scrape, value};
    let s = scrape(&host.admin_get("/internal/metrics").await.text);
    assert_eq!(value(&s, "oh_billing_checkouts_total", &[]), 1.0);
    assert_eq!(value(&s, "oh_billing_purchases_total", &[("via", "return")]), 1.0);
    assert_eq!(value(&s, "oh_billing_credits_added_usd_total", &[]), 10.0);
    assert_eq!(value(&s, "oh_billing_credits_spent_usd_total", &[]), 12.0);
    let refusals: f64 = s
        .samples
        .iter()
        .filter(|m| m.metric == "oh_billing_refusals_total")
        .map(|m| match m.value {
            prometheus_parse::Value::Counter(n) => n,
            _ => 0.0,
        })
        .sum();
    assert!(refusals >= 4.0, "402s for Alice (twice), Bob, and the agent's next call: {refusals}");
}

/// The success return is public (Stripe sends the buyer there), so it asks Stripe only about
/// this server's own unfinished sessions, once every few seconds each: anonymous requests
/// with made-up ids never reach Stripe.
#[tokio::test]
async fn anonymous_success_returns_do_not_reach_stripe() {
    let db = oh_e2e::pg::TestDb::create().await;
    let stripe = FakeStripe::start().await;
    let (_d, host) = host(&db, &stripe);
    for i in 0..50 {
        let r = success(&host, &format!("cs_test_forged_{i:04}")).await;
        assert_eq!(r.status, 404, "{}", r.text);
    }
    assert_eq!(stripe.lookups(), 0);
    // A real one, not paid yet: asked once, then told to wait.
    let session = checkout(&host, ALICE, 10).await;
    assert_eq!(success(&host, &session).await.status, 400);
    for _ in 0..5 {
        let r = success(&host, &session).await;
        assert_eq!(r.status, 429, "{}", r.text);
        assert_eq!(r.headers["retry-after"], "5");
    }
    assert_eq!(stripe.lookups(), 1);
}

/// `new_user_credits`: a user billing has never seen gets them once (on the balance page or
/// their first piece of work, on any host); a user it has seen gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_user_gets_the_configured_credits_once() {
    let db = oh_e2e::pg::TestDb::create().await;
    let stripe = FakeStripe::start().await;
    // Before the offer: Alice buys $10.
    let (_d, before) = host(&db, &stripe);
    let session = checkout(&before, ALICE, 10).await;
    stripe.pay(&session);
    assert_eq!(success(&before, &session).await.status, 302);
    assert_eq!(credits(&before, ALICE).await, "10");
    drop(before);

    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("app_mode = \"saas\"\n", &profile_with(&db.url, &stripe.base_url, ", new_user_credits = \"2.5\""));
    let env = [("ENABLE_BILLING", "true")];
    let (a, b) = (d.start_with_env(&env), d.start_with_env(&env));
    // Bob is new: his first look at his balance, on either host, shows the credits, once.
    let (first, second) = tokio::join!(credits(&a, BOB), credits(&b, BOB));
    assert_eq!((first.as_str(), second.as_str()), ("2.5", "2.5"));
    assert_eq!(credits(&a, BOB).await, "2.5");
    // Alice was seen before the offer: nothing more.
    assert_eq!(credits(&b, ALICE).await, "10");
    let mut conn = db.connect().await;
    let grants: Vec<(String, String)> = sqlx::query_as(
        "SELECT user_id, trim_scale(amount)::text FROM credit_ledger WHERE kind = 'adjustment' ORDER BY user_id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(grants, [("bob".to_owned(), "2.5".to_owned())]);
    use oh_e2e::metrics::{scrape, value};
    let mut granted = 0.0;
    for host in [&a, &b] {
        granted +=
            value(&scrape(&host.admin_get("/internal/metrics").await.text), "oh_billing_new_user_credits_total", &[]);
    }
    assert_eq!(granted, 1.0, "one grant, counted by the host that made it");

    // A bad amount is refused at start-up, naming the key and the variable.
    d.write_profile("app_mode = \"saas\"\n", &profile_with(&db.url, &stripe.base_url, ", new_user_credits = \"ten\""));
    let out = d.run_cli_env(&["check"], &[("ENABLE_BILLING", "true")]);
    let printed = format!("{}{}", out.stdout, out.stderr);
    assert!(!out.status.success() && printed.contains("new_user_credits (NEW_USER_CREDITS)"), "{printed}");
}
