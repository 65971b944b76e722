//! Sign-in sessions kept in Redis (the enterprise document's "Redis-backed session storage"):
//! a sign-out, "sign out everywhere" and an operator's `oh-host sessions revoke USER` end a
//! session on every host at its next request; while Redis is unreachable cookie sessions fail
//! closed (503, the cookie kept) and API keys go on.

use crate::sso::{start_with, Sso, BOB_KEY};
use reqwest::Method;

async fn settings(s: &Sso, host: &oh_e2e::TestHost, session: &str) -> u16 {
    let request = s.browser.get(host.url("/api/settings")).header("cookie", format!("keycloak_auth={session}"));
    host.send(request).await.status
}

#[tokio::test]
async fn a_sign_out_ends_the_session_on_every_host_at_once() {
    let s = start_with("").await;
    let other = s.d.start();
    let (first, second) = (s.session().await, s.session().await);
    // Signed in: both hosts honour both cookies (no settings yet: 404).
    for session in [&first, &second] {
        assert_eq!(settings(&s, &s.host, session).await, 404);
        assert_eq!(settings(&s, &other, session).await, 404);
    }
    let out = s.api(Method::POST, "/api/logout", &first).await;
    assert_eq!(out.status, 200, "{}", out.text);
    // The other host refuses the signed-out cookie at its very next request; the user's other
    // session goes on.
    assert_eq!(settings(&s, &other, &first).await, 401);
    assert_eq!(settings(&s, &s.host, &first).await, 401);
    assert_eq!(settings(&s, &other, &second).await, 404);

    // Everywhere: every session of the user ends, wherever it was made.
    let third = s.session().await;
    let everywhere = s.api(Method::POST, "/api/logout/everywhere", &third).await;
    assert_eq!(everywhere.status, 200, "{}", everywhere.text);
    assert_eq!(everywhere.json()["sessions_ended"], 2, "{}", everywhere.text);
    for session in [&second, &third] {
        assert_eq!(settings(&s, &other, session).await, 401);
    }
}

#[tokio::test]
async fn an_operator_revokes_a_users_sessions_from_the_command_line() {
    let s = start_with("").await;
    let user = "carol".to_owned();
    s.kc.set_user(oh_e2e::oidc::User { sub: user.clone(), email: "carol@example.com".into(), email_verified: true });
    let session = s.session().await;
    assert_eq!(settings(&s, &s.host, &session).await, 404);
    let admin = s.host.admin.clone().expect("an admin listener");
    let out = s.d.run_cli(&["sessions", "revoke", &user, "--admin", &admin]);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains(&format!("ended 1 session(s) of {user}")), "{}", out.stdout);
    assert_eq!(settings(&s, &s.host, &session).await, 401);
    // A user with none: said so, not an error.
    let out = s.d.run_cli(&["sessions", "revoke", "nobody", "--admin", &admin]);
    assert!(out.stdout.contains("ended 0 session(s) of nobody"), "{}", out.stdout);
}

#[tokio::test]
async fn while_redis_is_down_cookie_sessions_fail_closed_and_keys_go_on() {
    let mut redis = oh_e2e::redis::OwnRedis::start();
    let s = start_with(&format!(", redis_url = \"{}\"", redis.url())).await;
    let session = s.session().await;
    assert_eq!(settings(&s, &s.host, &session).await, 404);
    redis.stop();
    let request = s.browser.get(s.host.url("/api/settings")).header("cookie", format!("keycloak_auth={session}"));
    let down = s.host.send(request).await;
    assert_eq!(down.status, 503, "{}", down.text);
    assert!(down.text.contains("Redis"), "{}", down.text);
    assert!(down.headers.get("set-cookie").is_none(), "the cookie is kept for when Redis is back");
    // API keys are in PostgreSQL: served (without a rate limit) while Redis is away.
    let by_key = s.host.send(s.browser.get(s.host.url("/api/settings")).bearer_auth(BOB_KEY)).await;
    assert_eq!(by_key.status, 404, "{}", by_key.text);
}
