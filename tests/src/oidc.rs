//! A fake Keycloak on 127.0.0.1 speaking the endpoints the enterprise auth uses (realm and
//! client `allhands`, the names the OpenHands web client builds its sign-in URL with): certs
//! (JWKS, with key rotation), token (`authorization_code`, with PKCE when the authorization
//! request used it, and `refresh_token` grants), auth (auto-approves the configured user and
//! redirects back with a code), logout. It also serves HTTPS on request, since the web
//! client always sends browsers to `https://AUTH_URL`. Tokens are RS256 JWTs signed with the test keys in `tests/fixtures/keys`.

use axum::{
    body::Bytes,
    extract::{Query, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine as _};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

pub const REALM: &str = "allhands";
pub const CLIENT_ID: &str = "allhands";
pub const CLIENT_SECRET: &str = "kc-client-secret";

fn key_file(name: &str) -> String {
    std::fs::read_to_string(crate::workspace().join("tests/fixtures/keys").join(name)).unwrap()
}

/// Who signs in next, and how.
#[derive(Clone)]
pub struct User {
    pub sub: String,
    pub email: String,
    pub email_verified: bool,
}

struct Code {
    user: User,
    challenge: String,
    redirect_uri: String,
}

struct Inner {
    key: char,
    access_ttl: i64,
    user: User,
    codes: HashMap<String, Code>,
    refresh: HashMap<String, User>,
    logouts: usize,
    /// Refresh tokens revoked at the revocation endpoint (RFC 7009).
    revoked: Vec<String>,
    /// Where discovery says the revocation endpoint is (HTTPS once served so).
    revocation_endpoint: Option<String>,
    counter: u64,
    /// `expires_in` of brokered GitHub tokens.
    github_expires_in: i64,
    github_refreshes: usize,
    /// Users as the admin API sees and changes them, by `sub`; tokens reflect them.
    directory: HashMap<String, User>,
    /// Tokens of the client's service account (admin API).
    admin_tokens: Vec<String>,
    /// Verification emails sent: (user, the link's redirect_uri).
    verify_emails: Vec<(String, String)>,
    /// Users' identities at identity providers: sub -> [(idp, user id, user name)].
    identities: HashMap<String, Vec<(String, String, String)>>,
}

#[derive(Clone)]
pub struct FakeKeycloak {
    pub base: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeKeycloak {
    pub async fn start() -> FakeKeycloak {
        let inner = Arc::new(Mutex::new(Inner {
            key: 'a',
            access_ttl: 300,
            user: User { sub: "kc-user-1".into(), email: "user1@example.com".into(), email_verified: true },
            codes: HashMap::new(),
            refresh: HashMap::new(),
            logouts: 0,
            revoked: Vec::new(),
            revocation_endpoint: None,
            counter: 0,
            github_expires_in: 8 * 3600,
            github_refreshes: 0,
            directory: HashMap::new(),
            admin_tokens: Vec::new(),
            verify_emails: Vec::new(),
            identities: HashMap::new(),
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let kc = FakeKeycloak { base, inner };
        let app = kc.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        kc
    }

    /// The same endpoints over HTTPS too (a self-signed test certificate made in `dir`);
    /// returns `127.0.0.1:PORT`, the web client's `AUTH_URL`.
    pub async fn serve_https(&self, dir: &std::path::Path) -> String {
        format!("127.0.0.1:{}", self.serve_tls(dir).await.0)
    }

    /// Serves the endpoints over HTTPS until the test's runtime ends: the port and the CA.
    async fn serve_tls(&self, dir: &std::path::Path) -> (u16, std::path::PathBuf) {
        let (port, ca, task) = crate::tls::serve(self.router(), dir).await;
        std::mem::forget(task);
        (port, ca)
    }

    fn router(&self) -> Router {
        let p = format!("/realms/{REALM}/protocol/openid-connect");
        Router::new()
            .route(&format!("/realms/{REALM}/.well-known/openid-configuration"), get(discovery))
            .route(&format!("{p}/userinfo"), get(userinfo))
            .route(&format!("{p}/certs"), get(certs))
            .route(&format!("{p}/token"), post(token))
            .route(&format!("{p}/auth"), get(auth))
            .route(&format!("{p}/logout"), post(logout))
            .route(&format!("{p}/revoke"), post(revoke))
            .route(&format!("/realms/{REALM}/broker/{{idp}}/token"), get(broker))
            .route("/github/login/oauth/access_token", post(github_refresh))
            .route(&format!("/admin/realms/{REALM}/users/{{id}}"), get(admin_get_user).put(admin_put_user))
            .route(
                &format!("/admin/realms/{REALM}/users/{{id}}/send-verify-email"),
                axum::routing::put(send_verify_email),
            )
            .route(&format!("/admin/realms/{REALM}/users/{{id}}/federated-identity"), get(federated_identity))
            .with_state(self.clone())
    }

    pub fn issuer(&self) -> String {
        format!("{}/realms/{REALM}", self.base)
    }

    pub fn set_user(&self, user: User) {
        let mut i = self.inner.lock().unwrap();
        i.directory.insert(user.sub.clone(), user.clone());
        i.user = user;
    }

    /// The user as Keycloak holds them now.
    pub fn user(&self, sub: &str) -> Option<User> {
        self.inner.lock().unwrap().directory.get(sub).cloned()
    }

    /// The user signed in with `idp` too (a linked identity provider account).
    pub fn add_identity(&self, sub: &str, idp: &str, user_id: &str, user_name: &str) {
        let mut i = self.inner.lock().unwrap();
        i.identities.entry(sub.to_owned()).or_default().push((idp.into(), user_id.into(), user_name.into()));
    }

    /// The verification emails Keycloak sent: (user, where the link leads after verifying).
    pub fn verification_emails(&self) -> Vec<(String, String)> {
        self.inner.lock().unwrap().verify_emails.clone()
    }

    /// The user follows the link of a verification email: their address is verified.
    pub fn verify_email(&self, sub: &str) {
        let mut i = self.inner.lock().unwrap();
        let user = i.directory.get_mut(sub).expect("a known user");
        user.email_verified = true;
    }

    pub fn set_access_ttl(&self, secs: i64) {
        self.inner.lock().unwrap().access_ttl = secs;
    }

    /// Switches signing to the other test key; the JWKS then lists only the new one.
    pub fn rotate_key(&self) {
        let mut i = self.inner.lock().unwrap();
        i.key = if i.key == 'a' { 'b' } else { 'a' };
    }

    /// How long the GitHub tokens Keycloak brokers from now on live.
    pub fn set_github_expires_in(&self, secs: i64) {
        self.inner.lock().unwrap().github_expires_in = secs;
    }

    /// How many times GitHub's token endpoint refreshed a token.
    pub fn github_refreshes(&self) -> usize {
        self.inner.lock().unwrap().github_refreshes
    }

    /// The token URL to configure for GitHub.
    pub fn github_token_url(&self) -> String {
        format!("{}/github/login/oauth/access_token", self.base)
    }

    /// Serves the endpoints over HTTPS too and names the HTTPS revocation endpoint in
    /// discovery (RFC 7009 requires TLS); the CA that signed it, for `SSL_CERT_FILE`.
    pub async fn serve_revocation_over_https(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let (port, ca) = self.serve_tls(dir).await;
        self.inner.lock().unwrap().revocation_endpoint =
            Some(format!("https://localhost:{port}/realms/{REALM}/protocol/openid-connect/revoke"));
        ca
    }

    /// The refresh tokens revoked so far.
    pub fn revoked(&self) -> Vec<String> {
        self.inner.lock().unwrap().revoked.clone()
    }

    pub fn logouts(&self) -> usize {
        self.inner.lock().unwrap().logouts
    }

    /// An RS256 access token as Keycloak would sign it, with `claims` merged over the usual.
    pub fn mint(&self, user: &User, overrides: Value) -> String {
        let (key, ttl) = {
            let i = self.inner.lock().unwrap();
            (i.key, i.access_ttl)
        };
        let now = chrono_now();
        let mut claims = json!({
            "sub": user.sub, "email": user.email, "email_verified": user.email_verified,
            "iss": self.issuer(), "iat": now, "exp": now + ttl, "typ": "Bearer", "azp": CLIENT_ID,
        });
        for (k, v) in overrides.as_object().cloned().unwrap_or_default() {
            claims[k] = v;
        }
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(format!("test-key-{key}"));
        let pem = key_file(&format!("{key}.pem"));
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()).unwrap()
    }

    /// The PEM of the public half of the current key (for the alg-confusion attack).
    pub fn public_jwk(&self) -> Value {
        let key = self.inner.lock().unwrap().key;
        serde_json::from_str(&key_file(&format!("{key}.jwk.json"))).unwrap()
    }

    fn issue(&self, user: &User) -> Value {
        let access = self.mint(user, json!({}));
        let refresh = {
            let mut i = self.inner.lock().unwrap();
            i.counter += 1;
            let r = format!("refresh-{}-{}", i.counter, user.sub);
            i.refresh.insert(r.clone(), user.clone());
            r
        };
        json!({ "access_token": access, "refresh_token": refresh, "token_type": "Bearer", "expires_in": 300 })
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn form(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.replace('+', " ");
    let b = b.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap(), 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

async fn certs(State(kc): State<FakeKeycloak>) -> Json<Value> {
    Json(json!({ "keys": [kc.public_jwk()] }))
}

fn invalid_grant(why: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": "invalid_grant", "error_description": why }))).into_response()
}

async fn token(State(kc): State<FakeKeycloak>, body: Bytes) -> Response {
    let f = form(&body);
    if f.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || f.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET)
    {
        return (StatusCode::UNAUTHORIZED, Json(json!({ "error": "unauthorized_client" }))).into_response();
    }
    match f.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let code = kc.inner.lock().unwrap().codes.remove(f.get("code").map(String::as_str).unwrap_or(""));
            let Some(code) = code else { return invalid_grant("code unknown or already used") };
            // As Keycloak: PKCE is checked when the authorization request used it.
            let verifier = f.get("code_verifier").cloned().unwrap_or_default();
            if code.challenge.is_empty() && !verifier.is_empty() {
                return invalid_grant("PKCE code verifier specified but challenge not present in authorization");
            }
            if !code.challenge.is_empty() && B64.encode(Sha256::digest(verifier.as_bytes())) != code.challenge {
                return invalid_grant("PKCE verification failed");
            }
            if f.get("redirect_uri") != Some(&code.redirect_uri) {
                return invalid_grant("redirect_uri mismatch");
            }
            Json(kc.issue(&code.user)).into_response()
        }
        Some("refresh_token") => {
            let user = {
                let mut i = kc.inner.lock().unwrap();
                let user = i.refresh.remove(f.get("refresh_token").map(String::as_str).unwrap_or(""));
                // As Keycloak: new tokens say what the user is now.
                user.map(|u| i.directory.get(&u.sub).cloned().unwrap_or(u))
            };
            match user {
                Some(u) => Json(kc.issue(&u)).into_response(),
                None => invalid_grant("refresh token unknown, used or revoked"),
            }
        }
        Some("client_credentials") => {
            let token = {
                let mut i = kc.inner.lock().unwrap();
                i.counter += 1;
                let t = format!("admin-token-{}", i.counter);
                i.admin_tokens.push(t.clone());
                t
            };
            Json(json!({ "access_token": token, "expires_in": 60, "token_type": "Bearer" })).into_response()
        }
        _ => (StatusCode::BAD_REQUEST, Json(json!({ "error": "unsupported_grant_type" }))).into_response(),
    }
}

/// The admin API takes the service account's tokens only.
fn admin(kc: &FakeKeycloak, headers: &axum::http::HeaderMap) -> bool {
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
    bearer.strip_prefix("Bearer ").is_some_and(|t| kc.inner.lock().unwrap().admin_tokens.iter().any(|a| a == t))
}

fn representation(u: &User) -> Value {
    json!({ "id": u.sub, "username": u.email, "enabled": true, "email": u.email, "emailVerified": u.email_verified })
}

async fn admin_get_user(
    State(kc): State<FakeKeycloak>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    if !admin(&kc, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match kc.user(&id) {
        Some(u) => Json(representation(&u)).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({ "error": "User not found" }))).into_response(),
    }
}

async fn admin_put_user(
    State(kc): State<FakeKeycloak>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !admin(&kc, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if body["username"].as_str().is_none_or(str::is_empty) {
        return (StatusCode::BAD_REQUEST, Json(json!({ "errorMessage": "username is required" }))).into_response();
    }
    let mut i = kc.inner.lock().unwrap();
    let Some(user) = i.directory.get_mut(&id) else { return StatusCode::NOT_FOUND.into_response() };
    if let Some(email) = body["email"].as_str() {
        user.email = email.to_owned();
    }
    if let Some(verified) = body["emailVerified"].as_bool() {
        user.email_verified = verified;
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn federated_identity(
    State(kc): State<FakeKeycloak>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    if !admin(&kc, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let i = kc.inner.lock().unwrap();
    let list: Vec<Value> = i
        .identities
        .get(&id)
        .into_iter()
        .flatten()
        .map(|(idp, uid, name)| json!({ "identityProvider": idp, "userId": uid, "userName": name }))
        .collect();
    Json(list).into_response()
}

async fn send_verify_email(
    State(kc): State<FakeKeycloak>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !admin(&kc, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if q.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
        return (StatusCode::BAD_REQUEST, Json(json!({ "errorMessage": "Client doesn't exist" }))).into_response();
    }
    let mut i = kc.inner.lock().unwrap();
    if !i.directory.contains_key(&id) {
        return StatusCode::NOT_FOUND.into_response();
    }
    i.verify_emails.push((id, q.get("redirect_uri").cloned().unwrap_or_default()));
    StatusCode::NO_CONTENT.into_response()
}

/// The user "signs in" at once: back to `redirect_uri` with a code.
async fn auth(State(kc): State<FakeKeycloak>, Query(q): Query<HashMap<String, String>>) -> Response {
    let challenge_method = q.get("code_challenge").map(|_| q.get("code_challenge_method").map(String::as_str));
    if q.get("client_id").map(String::as_str) != Some(CLIENT_ID) || challenge_method.is_some_and(|m| m != Some("S256"))
    {
        return (StatusCode::BAD_REQUEST, "bad authorization request").into_response();
    }
    let redirect_uri = q.get("redirect_uri").cloned().unwrap_or_default();
    let code = {
        let mut i = kc.inner.lock().unwrap();
        i.counter += 1;
        let code = format!("code-{}", i.counter);
        let user = i.directory.get(&i.user.sub).cloned().unwrap_or_else(|| i.user.clone());
        i.codes.insert(
            code.clone(),
            Code {
                user,
                challenge: q.get("code_challenge").cloned().unwrap_or_default(),
                redirect_uri: redirect_uri.clone(),
            },
        );
        code
    };
    let state = q.get("state").cloned().unwrap_or_default();
    let location = format!("{redirect_uri}?code={code}&state={}", urlencode(&state));
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (c as char).to_string(),
            _ => format!("%{c:02X}"),
        })
        .collect()
}

async fn logout(State(kc): State<FakeKeycloak>, body: Bytes) -> StatusCode {
    let f = form(&body);
    let mut i = kc.inner.lock().unwrap();
    i.logouts += 1;
    i.refresh.remove(f.get("refresh_token").map(String::as_str).unwrap_or(""));
    StatusCode::NO_CONTENT
}

/// RFC 7009: the client's own refresh token is revoked; an unknown one is answered 200 too.
async fn revoke(State(kc): State<FakeKeycloak>, body: Bytes) -> Response {
    let f = form(&body);
    if f.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || f.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET)
    {
        return (StatusCode::UNAUTHORIZED, Json(json!({ "error": "invalid_client" }))).into_response();
    }
    let token = f.get("token").cloned().unwrap_or_default();
    let mut i = kc.inner.lock().unwrap();
    if f.get("token_type_hint").map(String::as_str) == Some("refresh_token") && i.refresh.remove(&token).is_some() {
        i.revoked.push(token);
    }
    StatusCode::OK.into_response()
}

/// Keycloak's broker endpoint: the linked GitHub identity's tokens, form-encoded as GitHub
/// returns them.
async fn broker(
    State(kc): State<FakeKeycloak>,
    axum::extract::Path(idp): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !bearer.starts_with("Bearer ey") || !["github", "gitlab"].contains(&idp.as_str()) {
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": "not linked" }))).into_response();
    }
    if idp == "gitlab" {
        // GitLab's answer, in JSON; the token the fake GitLab (`git::FakeProvider`) takes.
        return Json(json!({ "access_token": "glpat_good", "expires_in": 28800, "refresh_token": "glr_brokered", "token_type": "bearer" }))
            .into_response();
    }
    let (n, expires) = {
        let mut i = kc.inner.lock().unwrap();
        i.counter += 1;
        (i.counter, i.github_expires_in)
    };
    let body = format!("access_token=gho_brokered_{n}&expires_in={expires}&refresh_token=ghr_brokered_{n}&refresh_token_expires_in=15811200&scope=repo&token_type=bearer");
    ([(header::CONTENT_TYPE, "application/x-www-form-urlencoded")], body).into_response()
}

/// GitHub's token endpoint, refresh grant.
async fn github_refresh(State(kc): State<FakeKeycloak>, body: Bytes) -> Response {
    let f = form(&body);
    if f.get("grant_type").map(String::as_str) != Some("refresh_token")
        || !f.get("refresh_token").is_some_and(|r| r.starts_with("ghr_"))
        || f.get("client_id").map(String::as_str) != Some("gh-app-id")
    {
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": "bad_refresh_token" }))).into_response();
    }
    let n = {
        let mut i = kc.inner.lock().unwrap();
        i.github_refreshes += 1;
        i.counter += 1;
        i.counter
    };
    Json(json!({ "access_token": format!("gho_refreshed_{n}"), "expires_in": 28800, "refresh_token": format!("ghr_refreshed_{n}"),
                 "refresh_token_expires_in": 15811200, "token_type": "bearer" }))
    .into_response()
}

/// The realm's discovery document: where everything else is.
async fn discovery(State(kc): State<FakeKeycloak>) -> Json<Value> {
    let p = format!("{}/realms/{REALM}/protocol/openid-connect", kc.base);
    Json(json!({
        "issuer": kc.issuer(),
        "authorization_endpoint": format!("{p}/auth"),
        "token_endpoint": format!("{p}/token"),
        "userinfo_endpoint": format!("{p}/userinfo"),
        "end_session_endpoint": format!("{p}/logout"),
        "revocation_endpoint": kc.inner.lock().unwrap().revocation_endpoint.clone().unwrap_or(format!("{p}/revoke")),
        "jwks_uri": format!("{p}/certs"),
        "code_challenge_methods_supported": ["S256"],
    }))
}

/// The signed-in user, for a valid access token.
async fn userinfo(State(kc): State<FakeKeycloak>, headers: axum::http::HeaderMap) -> Response {
    let token =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = token else { return StatusCode::UNAUTHORIZED.into_response() };
    let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
    validation.validate_aud = false;
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(kc.public_jwk()).unwrap();
    match jsonwebtoken::decode::<Value>(token, &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(), &validation) {
        Ok(d) => Json(
            json!({ "sub": d.claims["sub"], "email": d.claims["email"], "email_verified": d.claims["email_verified"] }),
        )
        .into_response(),
        Err(_) => StatusCode::UNAUTHORIZED.into_response(),
    }
}
