//! Keycloak sign-in through the real host against the fake Keycloak: the full login flow,
//! the TOS and email gates, refresh and cookie rewrite, logout, key rotation, and the attacks
//! (each refused).

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine as _};
use oh_e2e::{
    oidc::{urlencode, FakeKeycloak, User, CLIENT_ID, CLIENT_SECRET, REALM},
    pg::TestDb,
    Deployment, Response, TestHost,
};
use serde_json::json;

const JWT_SECRET: &str = "sso-test-jwt-secret-0123456789";
const WEB_HOST: &str = "http://localhost:3000";

pub(crate) struct Sso {
    _db: TestDb,
    pub(crate) d: Deployment,
    pub(crate) host: TestHost,
    pub(crate) kc: FakeKeycloak,
    pub(crate) browser: reqwest::Client,
}

pub(crate) const BOB_KEY: &str = "sso-test-bob-service-key";

async fn start() -> Sso {
    start_with("").await
}

pub(crate) async fn start_with(extra: &str) -> Sso {
    start_full(extra, false).await
}

/// With `revocation_over_tls`, the fake Keycloak's revocation endpoint is on HTTPS, its CA
/// trusted by the host (`SSL_CERT_FILE`).
async fn start_full(extra: &str, revocation_over_tls: bool) -> Sso {
    let db = TestDb::create().await;
    let kc = FakeKeycloak::start().await;
    let d = Deployment::new();
    let ca = match revocation_over_tls {
        true => Some(kc.serve_revocation_over_https(d.dir.path()).await),
        false => None,
    };
    d.install_bundled();
    let config = format!(
        "{{ database_url = \"{}\", redis_key_prefix = \"ohtest:sso:{}:\", rate_limit_per_second = 0, rate_limit_per_minute = 0, keycloak_server_url = \"{}\", \
         keycloak_realm_name = \"{REALM}\", keycloak_client_id = \"{CLIENT_ID}\", keycloak_client_secret = \"{CLIENT_SECRET}\", \
         jwt_secret = \"{JWT_SECRET}\", web_host = \"{WEB_HOST}\", \
         static_keys = [{{ user_id = \"bob\", sha256 = \"{}\" }}]{} }}",
        db.url,
        // Its own Redis keys: the attacks below count failed sign-ins for 127.0.0.1, which
        // must not lock out other tests running at the same time.
        db.name,
        kc.base,
        oh_e2e::sha256_hex(BOB_KEY),
        extra.replace("GITHUB_TOKEN_URL", &kc.github_token_url())
    );
    d.write_profile(
        "",
        &format!(
            "[extensions.user_auth]\nlibrary = \"saas_auth\"\nimplementation = \"SaasUserAuth\"\nconfig = {config}\n\
             [[extensions.routes]]\nlibrary = \"saas_auth\"\nimplementation = \"SaasAuthRoutes\"\nconfig = {config}\n"
        ),
    );
    let host = match &ca {
        Some(ca) => d.start_with_env(&[("SSL_CERT_FILE", ca.to_str().unwrap())]),
        None => d.start(),
    };
    oh_e2e::redis::cli(&["SET", &format!("ohtest:sso:{}:session:forged", db.name), "mallory", "EX", "600"]);
    let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    Sso { _db: db, d, host, kc, browser }
}

pub(crate) fn set_cookie(r: &Response, name: &str) -> Option<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

pub(crate) fn cookie_value(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().split_once('=').unwrap().1.to_owned()
}

impl Sso {
    async fn get(&self, url: &str, cookie: Option<&str>) -> Response {
        let mut req = self.browser.get(url);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        self.host.send(req).await
    }

    pub(crate) async fn api(&self, method: reqwest::Method, path: &str, session: &str) -> Response {
        self.host
            .send(
                self.browser.request(method, self.host.url(path)).header("cookie", format!("keycloak_auth={session}")),
            )
            .await
    }

    /// The whole browser flow; returns the callback response.
    async fn login(&self, redirect_url: &str) -> Response {
        let start = self.get(&self.host.url(&format!("/oauth/keycloak/login?redirect_url={redirect_url}")), None).await;
        assert_eq!(start.status, 302, "{}", start.text);
        let state_cookie = set_cookie(&start, "oh_oauth_state").expect("state cookie");
        let to_kc = start.headers["location"].to_str().unwrap().to_owned();
        assert!(
            to_kc.starts_with(&format!("{}/realms/{REALM}/protocol/openid-connect/auth?", self.kc.base)),
            "{to_kc}"
        );
        assert!(to_kc.contains("code_challenge_method=S256") && to_kc.contains("state="));
        let at_kc = self.get(&to_kc, None).await;
        let back = at_kc.headers["location"].to_str().unwrap().to_owned();
        let query = back.split_once('?').unwrap().1;
        self.get(
            &self.host.url(&format!("/oauth/keycloak/callback?{query}")),
            Some(&format!("oh_oauth_state={}", cookie_value(&state_cookie))),
        )
        .await
    }

    /// Signs in and accepts the TOS; returns the session cookie value.
    pub(crate) async fn session(&self) -> String {
        let callback = self.login("/").await;
        let session = cookie_value(&set_cookie(&callback, "keycloak_auth").expect("session cookie"));
        let accepted = self.api(reqwest::Method::POST, "/api/accept_tos", &session).await;
        assert_eq!(accepted.status, 200, "{}", accepted.text);
        cookie_value(&set_cookie(&accepted, "keycloak_auth").expect("rewritten cookie"))
    }

    /// A cookie wrapping `access_token`, signed as the host signs them.
    fn forged(&self, access_token: &str) -> String {
        // With a live session (made in Redis by `start_with`): what is tested is the token inside.
        let claims =
            json!({ "access_token": access_token, "refresh_token": "unknown", "accepted_tos": true, "sid": "forged" });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        )
        .unwrap()
    }
}

#[tokio::test]
async fn the_login_flow_sets_a_cookie_and_the_tos_gate_holds_until_accepted() {
    let s = start().await;
    let callback = s.login("/conversations/1").await;
    assert_eq!(callback.status, 302, "{}", callback.text);
    // As OpenHands: the terms first, then the page asked for.
    assert_eq!(callback.headers["location"], "/accept-tos?redirect_url=%2Fconversations%2F1");
    let cookie = set_cookie(&callback, "keycloak_auth").unwrap();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && !cookie.contains("Secure"), "{cookie}");
    let session = cookie_value(&cookie);

    let gated = s.api(reqwest::Method::GET, "/api/settings", &session).await;
    assert_eq!((gated.status, gated.json()["error"].as_str()), (401, Some("TosNotAcceptedError")));
    let accepted = s.api(reqwest::Method::POST, "/api/accept_tos", &session).await;
    assert_eq!(accepted.status, 200);
    let session = cookie_value(&set_cookie(&accepted, "keycloak_auth").unwrap());
    assert_eq!(s.api(reqwest::Method::GET, "/api/settings", &session).await.status, 404, "signed in: no settings yet");
    assert_eq!(s.api(reqwest::Method::POST, "/api/authenticate", &session).await.status, 200);
    // Acceptance is remembered: the next login goes straight to its page, and its cookie
    // already carries it.
    let next = s.login("/conversations/2").await;
    assert_eq!(next.headers["location"], "/conversations/2");
    let again = cookie_value(&set_cookie(&next, "keycloak_auth").unwrap());
    assert_eq!(s.api(reqwest::Method::GET, "/api/settings", &again).await.status, 404);
}

/// The OpenHands web client's own sign-in: it sends the browser to Keycloak itself, with
/// `state` set to the page to come back to and no PKCE.
async fn client_sign_in(s: &Sso, state: &str) -> Response {
    let auth = format!(
        "{}/realms/{REALM}/protocol/openid-connect/auth?client_id={CLIENT_ID}&kc_idp_hint=github&response_type=code\
         &redirect_uri={}&scope=openid%20email%20profile&state={}",
        s.kc.base,
        urlencode(&format!("{WEB_HOST}/oauth/keycloak/callback")),
        urlencode(state)
    );
    let at_kc = s.get(&auth, None).await;
    assert_eq!(at_kc.status, 302, "{}", at_kc.text);
    let back = at_kc.headers["location"].to_str().unwrap().to_owned();
    let query = back.split_once('?').unwrap().1;
    s.get(&s.host.url(&format!("/oauth/keycloak/callback?{query}")), None).await
}

#[tokio::test]
async fn the_web_clients_own_sign_in_returns_to_its_page_unless_turned_off() {
    let s = start().await;
    let page = format!("{WEB_HOST}/conversations/9?login_method=github");
    let callback = client_sign_in(&s, &page).await;
    assert_eq!(callback.status, 302, "{}", callback.text);
    assert_eq!(
        callback.headers["location"].to_str().unwrap(),
        format!("/accept-tos?redirect_url={}", urlencode(&page))
    );
    let session = cookie_value(&set_cookie(&callback, "keycloak_auth").expect("signed in"));
    assert_eq!(s.api(reqwest::Method::POST, "/api/accept_tos", &session).await.status, 200);
    // Another site as `state`, or none: refused.
    for state in ["https://evil.example/x", "", "not-a-url"] {
        let r = client_sign_in(&s, state).await;
        assert_eq!(r.status, 400, "{state}: {}", r.text);
        assert!(set_cookie(&r, "keycloak_auth").is_none());
    }

    let strict = start_with(", client_initiated_sign_in = false").await;
    let refused = client_sign_in(&strict, &page).await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert!(refused.json()["error"].as_str().unwrap().contains("start the sign-in again"));
}

#[tokio::test]
async fn an_expired_access_token_is_refreshed_and_the_cookie_rewritten_then_logout_ends_it() {
    let s = start().await;
    s.kc.set_access_ttl(1);
    let session = s.session().await;
    // exp has one-second resolution and verification allows 5 s of clock skew.
    tokio::time::sleep(std::time::Duration::from_millis(7600)).await;
    let r = s.api(reqwest::Method::GET, "/api/settings", &session).await;
    assert_eq!(r.status, 404, "{}", r.text);
    let rewritten = set_cookie(&r, "keycloak_auth")
        .unwrap_or_else(|| panic!("no refreshed cookie: {:?} {}\n{}", r.headers, r.text, s.host.log()));
    let fresh = cookie_value(&rewritten);
    assert_ne!(fresh, session);
    // The old refresh token was used up: the old cookie is now expired for good.
    let stale = s.api(reqwest::Method::GET, "/api/settings", &session).await;
    assert_eq!((stale.status, stale.json()["error"].as_str()), (401, Some("ExpiredError")));
    assert!(set_cookie(&stale, "keycloak_auth").unwrap().contains("Max-Age=0"));

    s.kc.set_access_ttl(300);
    let out = s.api(reqwest::Method::POST, "/api/logout", &fresh).await;
    assert_eq!(out.status, 200, "{}", out.text);
    assert!(set_cookie(&out, "keycloak_auth").unwrap().contains("Max-Age=0"));
    assert_eq!(s.kc.logouts(), 1);
    // Keycloak's revocation endpoint is on plain HTTP here: RFC 7009 requires TLS, so the
    // session is ended without a revocation.
    assert!(s.kc.revoked().is_empty());
}

#[tokio::test]
async fn sign_out_revokes_the_refresh_token_at_keycloak_over_tls() {
    let s = start_full("", true).await;
    let session = s.session().await;
    let out = s.api(reqwest::Method::POST, "/api/logout", &session).await;
    assert_eq!(out.status, 200, "{}", out.text);
    assert_eq!(s.kc.revoked().len(), 1, "{}", s.host.log());
    assert_eq!(s.kc.logouts(), 1);
    // The revoked refresh token cannot mint new tokens: the cookie is dead on every host.
    let after = s.api(reqwest::Method::GET, "/api/settings", &session).await;
    assert_eq!(after.status, 401, "{}", after.text);
}

#[tokio::test]
async fn unverified_email_is_403_except_on_exempt_routes() {
    let s = start().await;
    s.kc.set_user(User { sub: "kc-unverified".into(), email: "u@example.com".into(), email_verified: false });
    let session = s.session().await;
    let gated = s.api(reqwest::Method::GET, "/api/secrets", &session).await;
    assert_eq!((gated.status, gated.json()["error"].as_str()), (403, Some("EmailNotVerifiedError")));
    assert_eq!(s.api(reqwest::Method::GET, "/api/settings", &session).await.status, 404);
}

#[tokio::test]
async fn an_email_change_goes_through_keycloak_and_the_gate_lifts_once_verified() {
    let s = start().await;
    let sub = format!("kc-mover-{}", std::process::id());
    s.kc.set_user(User { sub: sub.clone(), email: "old@example.com".into(), email_verified: true });
    let session = s.session().await;
    let send = |method: reqwest::Method, path: &str, session: &str, body: Option<serde_json::Value>| {
        let mut req = s.browser.request(method, s.host.url(path)).header("cookie", format!("keycloak_auth={session}"));
        if let Some(b) = body {
            req = req.json(&b);
        }
        s.host.send(req)
    };
    for bad in ["not-an-email", "a@b", "x@y.z", ""] {
        let r = send(reqwest::Method::POST, "/api/email", &session, Some(json!({ "email": bad }))).await;
        assert_eq!((r.status, r.json()["detail"].as_str()), (422, Some("Invalid email format")), "{bad}");
    }
    assert_eq!(s.kc.user(&sub).unwrap().email, "old@example.com", "nothing changed");

    // The change: Keycloak has the new, unverified address and mailed a link back to us.
    let changed =
        send(reqwest::Method::POST, "/api/email", &session, Some(json!({ "email": "new@example.com" }))).await;
    assert_eq!((changed.status, changed.json()), (200, json!({ "message": "Email changed" })), "{}", changed.text);
    let user = s.kc.user(&sub).unwrap();
    assert_eq!((user.email.as_str(), user.email_verified), ("new@example.com", false));
    assert_eq!(s.kc.verification_emails(), vec![(sub.clone(), format!("{WEB_HOST}/api/email/verified"))]);
    // The rewritten cookie carries the new tokens: the email gate now holds...
    let session = cookie_value(&set_cookie(&changed, "keycloak_auth").expect("a refreshed session cookie"));
    let gated = s.api(reqwest::Method::GET, "/api/secrets", &session).await;
    assert_eq!((gated.status, gated.json()["error"].as_str()), (403, Some("EmailNotVerifiedError")), "{}", gated.text);
    // ...except on the email routes: the link can be sent again.
    let again = send(reqwest::Method::PUT, "/api/email/verify", &session, None).await;
    assert_eq!((again.status, again.json()), (200, json!({ "message": "Email verification message sent" })));
    assert_eq!(s.kc.verification_emails().len(), 2);

    // The user follows the link: Keycloak verifies, then sends them to /api/email/verified,
    // which refreshes the session and goes on to the settings page. The gate lifts.
    s.kc.verify_email(&sub);
    let back = send(reqwest::Method::GET, "/api/email/verified", &session, None).await;
    assert_eq!(back.status, 302, "{}", back.text);
    assert_eq!(back.headers["location"], format!("{WEB_HOST}/settings/user"));
    let session = cookie_value(&set_cookie(&back, "keycloak_auth").expect("a refreshed session cookie"));
    let open = s.api(reqwest::Method::GET, "/api/secrets", &session).await;
    assert_eq!(open.status, 200, "{}", open.text);

    // An API key cannot move the account to another address.
    let by_key = s
        .host
        .send(
            s.browser.post(s.host.url("/api/email")).bearer_auth(BOB_KEY).json(&json!({ "email": "evil@example.com" })),
        )
        .await;
    assert_eq!(by_key.status, 403, "{}", by_key.text);
}

#[tokio::test]
async fn signing_keys_rotate_with_a_jwks_refetch() {
    let s = start().await;
    let before = s.session().await;
    assert_eq!(s.api(reqwest::Method::GET, "/api/settings", &before).await.status, 404);
    s.kc.rotate_key();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let after = s.session().await;
    assert_eq!(s.api(reqwest::Method::GET, "/api/settings", &after).await.status, 404);
}

#[tokio::test]
async fn attacks_are_refused() {
    let s = start().await;
    let user = User { sub: "mallory".into(), email: "m@example.com".into(), email_verified: true };
    let refused = |r: &Response| assert_eq!(r.status, 401, "{}", r.text);

    // alg: none.
    let header = B64.encode(br#"{"alg":"none","typ":"JWT","kid":"test-key-a"}"#);
    let payload = B64.encode(json!({ "sub": "mallory", "iss": s.kc.issuer(), "exp": 4_000_000_000u64 }).to_string());
    refused(&s.api(reqwest::Method::GET, "/api/settings", &s.forged(&format!("{header}.{payload}."))).await);
    // HS256 signed with the RSA public key (algorithm confusion).
    let jwk = s.kc.public_jwk();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some("test-key-a".into());
    let confused = jsonwebtoken::encode(
        &h,
        &json!({ "sub": "mallory", "iss": s.kc.issuer(), "exp": 4_000_000_000u64 }),
        &jsonwebtoken::EncodingKey::from_secret(jwk["n"].as_str().unwrap().as_bytes()),
    )
    .unwrap();
    refused(&s.api(reqwest::Method::GET, "/api/settings", &s.forged(&confused)).await);
    // A token of this realm issued to another client (its audience and azp name that one).
    let other_client = s.kc.mint(&user, json!({ "azp": "other-app", "aud": ["other-app", "account"] }));
    let r = s.api(reqwest::Method::GET, "/api/settings", &s.forged(&other_client)).await;
    refused(&r);
    assert!(r.json()["message"].as_str().unwrap().contains("issued to another client"), "{}", r.text);
    // Named as an audience, it is accepted (aud may carry the client id instead of azp).
    let audience = s.kc.mint(&user, json!({ "azp": "other-app", "aud": ["account", oh_e2e::oidc::CLIENT_ID] }));
    let r = s.api(reqwest::Method::GET, "/api/settings", &s.forged(&audience)).await;
    assert_eq!(r.status, 404, "signed in, no settings yet: {}", r.text);
    // Another issuer; an expired token (and no valid refresh token); an unknown kid.
    refused(
        &s.api(
            reqwest::Method::GET,
            "/api/settings",
            &s.forged(&s.kc.mint(&user, json!({ "iss": "http://evil/realms/oh" }))),
        )
        .await,
    );
    let expired =
        s.api(reqwest::Method::GET, "/api/settings", &s.forged(&s.kc.mint(&user, json!({ "exp": 1_000_000 })))).await;
    assert_eq!((expired.status, expired.json()["error"].as_str()), (401, Some("ExpiredError")));
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some("no-such-key".into());
    let pem = std::fs::read(oh_e2e::workspace().join("tests/fixtures/keys/a.pem")).unwrap();
    let unknown_kid = jsonwebtoken::encode(
        &h,
        &json!({ "sub": "mallory", "iss": s.kc.issuer(), "exp": 4_000_000_000u64 }),
        &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap();
    refused(&s.api(reqwest::Method::GET, "/api/settings", &s.forged(&unknown_kid)).await);
    // A tampered cookie: refused and cleared.
    let good = s.session().await;
    let mut tampered = good.clone();
    tampered.replace_range(tampered.len() - 3.., "AAA");
    let r = s.api(reqwest::Method::GET, "/api/settings", &tampered).await;
    refused(&r);
    assert!(set_cookie(&r, "keycloak_auth").unwrap().contains("Max-Age=0"));
    // An open redirect.
    let open = s.get(&s.host.url("/oauth/keycloak/login?redirect_url=https://evil.example/"), None).await;
    assert_eq!(open.status, 400);
    let open = s.get(&s.host.url("/oauth/keycloak/login?redirect_url=//evil.example/"), None).await;
    assert_eq!(open.status, 400);
    // A missing state, a mismatched state, a replayed callback.
    let start = s.get(&s.host.url("/oauth/keycloak/login"), None).await;
    let state_cookie = format!("oh_oauth_state={}", cookie_value(&set_cookie(&start, "oh_oauth_state").unwrap()));
    let at_kc = s.get(start.headers["location"].to_str().unwrap(), None).await;
    let query = at_kc.headers["location"].to_str().unwrap().split_once('?').unwrap().1.to_owned();
    assert_eq!(s.get(&s.host.url(&format!("/oauth/keycloak/callback?{query}")), None).await.status, 400);
    let code = query.split('&').next().unwrap();
    assert_eq!(
        s.get(&s.host.url(&format!("/oauth/keycloak/callback?{code}&state=forged")), Some(&state_cookie)).await.status,
        400
    );
    let first = s.get(&s.host.url(&format!("/oauth/keycloak/callback?{query}")), Some(&state_cookie)).await;
    assert_eq!(first.status, 302, "{}", first.text);
    let replay = s.get(&s.host.url(&format!("/oauth/keycloak/callback?{query}")), Some(&state_cookie)).await;
    assert_eq!(replay.status, 401, "a replayed code must not sign in: {}", replay.text);
}

#[tokio::test]
async fn provider_tokens_are_brokered_at_sign_in_stored_sealed_and_refreshed_before_they_expire() {
    let s = start_with(
        ", providers = [{ idp = \"github\", client_id = \"gh-app-id\", client_secret = \"gh-app-secret\", token_url = \"GITHUB_TOKEN_URL\" }]",
    )
    .await;
    // The user signed in to Keycloak with GitHub: that identity is theirs at the integrations.
    s.kc.add_identity("kc-user-1", "github", "583231", "Octo-Cat");
    let session = s.session().await;
    let settings = s
        .host
        .send(
            s.browser
                .post(s.host.url("/api/settings"))
                .header("cookie", format!("keycloak_auth={session}"))
                .json(&json!({ "language": "en" })),
        )
        .await;
    assert_eq!(settings.status, 200, "{}", settings.text);
    let got = s.api(reqwest::Method::GET, "/api/settings", &session).await.json();
    assert_eq!(got["provider_tokens_set"], json!({ "github": "github.com" }));
    let mut conn = s._db.connect().await;
    let links: Vec<(String, String, String)> =
        sqlx::query_as("SELECT provider, external_id, user_id FROM integration_links")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(links, [("github".to_owned(), "octo-cat".to_owned(), "kc-user-1".to_owned())]);
    assert_eq!(s.kc.github_refreshes(), 0, "a token valid for 8 h is not refreshed");

    // Sealed at rest.
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT row_to_json(t)::text FROM auth_tokens t").fetch_all(&mut conn).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(!rows[0].contains("gho_") && !rows[0].contains("ghr_"), "{rows:?}");

    // A token expiring within 4 h is refreshed once, then good for 8 h.
    s.kc.set_github_expires_in(600);
    let session = s.session().await;
    s.api(reqwest::Method::GET, "/api/settings", &session).await;
    assert_eq!(s.kc.github_refreshes(), 1);
    let got = s.api(reqwest::Method::GET, "/api/settings", &session).await.json();
    assert_eq!(got["provider_tokens_set"], json!({ "github": "github.com" }));
    assert_eq!(s.kc.github_refreshes(), 1);
}

async fn with_key(
    host: &TestHost,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Response {
    let mut req = host.http.request(method, host.url(path)).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    host.send(req).await
}

#[tokio::test]
async fn api_keys_are_made_in_a_session_shown_once_stored_hashed_and_revocable() {
    use reqwest::Method;
    let sso = start().await;
    let session = sso.session().await;
    let host = &sso.host;
    let create = |body: serde_json::Value| {
        let req =
            sso.browser.post(host.url("/api/keys")).header("cookie", format!("keycloak_auth={session}")).json(&body);
        host.send(req)
    };
    let created = create(json!({ "name": "ci" })).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let key = created.json()["key"].as_str().unwrap().to_owned();
    let id = created.json()["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("oh_") && key.len() > 40);

    // The new key signs in as the session's user (no settings yet: 404, not 401).
    assert_eq!(with_key(host, &key, Method::GET, "/api/settings", None).await.status, 404);
    let listed = with_key(host, &key, Method::GET, "/api/keys", None).await;
    assert!(!listed.text.contains(&key), "a listing must never show a key");
    let item = &listed.json()[0];
    assert_eq!((item["id"].as_str(), item["name"].as_str()), (Some(id.as_str()), Some("ci")));
    assert!(item["last_used_at"].is_string(), "{item}");
    assert_eq!(item["prefix"].as_str().unwrap(), &key[..10]);

    // A key cannot mint a key that outlives it, nor revoke its owner's keys.
    let minted = with_key(host, &key, Method::POST, "/api/keys", Some(json!({ "name": "child" }))).await;
    assert_eq!(minted.status, 403, "{}", minted.text);
    assert_eq!(with_key(host, &key, Method::DELETE, &format!("/api/keys/{id}"), None).await.status, 403);

    // Stored as a hash only.
    let mut conn = sso._db.connect().await;
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT row_to_json(k)::text FROM api_keys k").fetch_all(&mut conn).await.unwrap();
    assert!(rows.iter().all(|r| !r.contains(&key)), "{rows:?}");
    assert!(rows[0].contains(&oh_e2e::sha256_hex(&key)));

    // Bob can neither see it nor use it as his.
    assert_eq!(with_key(host, BOB_KEY, Method::GET, "/api/keys", None).await.json(), json!([]));

    // Another host on the database trusts the key once verified (api_key_cache_ms, 5 s).
    let other = sso.d.start();
    assert_eq!(with_key(&other, &key, Method::GET, "/api/settings", None).await.status, 404);

    // Revoked in the session: refused at once on this host, and on the other within the
    // cache's 5 s. Expired keys are refused too.
    let revoked = sso.api(Method::DELETE, &format!("/api/keys/{id}"), &session).await;
    let revoked_at = std::time::Instant::now();
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    let refused = with_key(host, &key, Method::GET, "/api/settings", None).await;
    assert_eq!((refused.status, refused.json()["message"].as_str()), (401, Some("this API key was revoked")));
    while with_key(&other, &key, Method::GET, "/api/settings", None).await.status != 401 {
        assert!(revoked_at.elapsed() < std::time::Duration::from_secs(7), "the other host still takes a revoked key");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let expired_key = create(json!({ "name": "old", "expires_at": "2020-01-01T00:00:00Z" })).await.json()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let expired = with_key(host, &expired_key, Method::GET, "/api/settings", None).await;
    assert_eq!((expired.status, expired.json()["error"].as_str()), (401, Some("ExpiredError")));
    assert_eq!(create(json!({ "name": "" })).await.status, 422);
}

#[tokio::test]
async fn signing_in_with_gitlab_linked_syncs_the_users_gitlab_projects() {
    let gitlab = oh_e2e::git::FakeProvider::start(oh_e2e::git::Kind::GitLab, "glpat_good").await;
    let s = start_with(&format!(
        ", providers = [{{ idp = \"gitlab\", client_id = \"gl-app-id\", client_secret = \"gl-app-secret\" }}], gitlab_api_url = \"{}\"",
        gitlab.api_url
    ))
    .await;
    let _session = s.session().await;
    let mut conn = s._db.connect().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM gitlab_projects WHERE user_id = 'kc-user-1'")
            .fetch_one(&mut conn)
            .await
            .unwrap_or(0);
        if stored == oh_e2e::git::REPOSITORIES as i64 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no sync after sign-in ({stored} stored)\n{}", s.host.log());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let seen = gitlab.seen_at("/api/v4/projects");
    assert_eq!(seen[0].authorization, "Bearer glpat_good", "the brokered token");
}
