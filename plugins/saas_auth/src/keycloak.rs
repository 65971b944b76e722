//! Keycloak (OIDC) as the enterprise edition uses it: access tokens verified (RS256 against
//! the realm's JWKS, `kid` rotation with a rate-limited refetch, `iss`, `exp`, `sub`), tokens
//! refreshed with the refresh token, codes exchanged with the PKCE verifier, sessions ended.
//! And the `keycloak_auth` cookie: an HS256 token (`JWT_SECRET`) wrapping the Keycloak tokens
//! and `accepted_tos`, as OpenHands writes it.

use jsonwebtoken::{
    decode, decode_header, encode, errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use plugin_sdk::PluginError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};
use tokio::sync::Mutex;

/// The least time between two JWKS fetches triggered by an unknown `kid`.
const JWKS_REFETCH: Duration = Duration::from_secs(1);

pub(crate) struct Keycloak {
    /// Where this server reaches Keycloak.
    server_url: String,
    /// Where browsers reach it (and what its tokens name as issuer).
    public_url: String,
    realm: String,
    pub(crate) client_id: String,
    client_secret: String,
    http: reqwest::Client,
    jwks: Mutex<(HashMap<String, DecodingKey>, Option<Instant>)>,
    /// Tokens already verified, by SHA-256, until their `exp`: one RS256 verification per
    /// token, not per request. Bounded; cleared when full.
    verified: std::sync::Mutex<HashMap<[u8; 32], AccessClaims>>,
    discovery: tokio::sync::OnceCell<Option<Value>>,
    /// The admin API's token (the client's service account) and when to stop using it.
    admin_token: Mutex<Option<(String, Instant)>>,
}

const VERIFIED_CACHE: usize = 10_000;

/// Claims of a Keycloak access token that we use.
#[derive(Deserialize, Debug, Clone)]
pub(crate) struct AccessClaims {
    pub(crate) sub: String,
    #[serde(default)]
    pub(crate) email: Option<String>,
    #[serde(default)]
    pub(crate) email_verified: Option<bool>,
    pub(crate) exp: i64,
    /// Who the token is for (a string or a list); Keycloak puts `account` and resource servers.
    #[serde(default)]
    pub(crate) aud: Option<Value>,
    /// The client the token was issued to.
    #[serde(default)]
    pub(crate) azp: Option<String>,
}

impl AccessClaims {
    /// Whether the token was issued to `client_id` (its `azp`) or names it as an audience: a
    /// token the realm issued to another client must not sign in here.
    fn is_for(&self, client_id: &str) -> bool {
        let in_aud = match &self.aud {
            Some(Value::String(a)) => a == client_id,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(client_id)),
            _ => false,
        };
        in_aud || self.azp.as_deref() == Some(client_id)
    }
}

/// A token endpoint's answer.
#[derive(Debug)]
pub(crate) struct Tokens {
    pub(crate) access_token: String,
    pub(crate) refresh_token: String,
}

pub(crate) enum TokenError {
    Expired,
    Invalid(String),
    Unavailable(String),
}

impl Keycloak {
    pub(crate) fn new(
        server_url: &str,
        public_url: Option<&str>,
        realm: &str,
        client_id: &str,
        client_secret: &str,
    ) -> Self {
        let server_url = server_url.trim_end_matches('/').to_owned();
        Keycloak {
            public_url: public_url.map(|u| u.trim_end_matches('/').to_owned()).unwrap_or_else(|| server_url.clone()),
            server_url,
            realm: realm.to_owned(),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("HTTP client"),
            jwks: Mutex::new((HashMap::new(), None)),
            verified: std::sync::Mutex::new(HashMap::new()),
            discovery: tokio::sync::OnceCell::new(),
            admin_token: Mutex::new(None),
        }
    }

    fn realm_url(&self, base: &str) -> String {
        format!("{base}/realms/{}", self.realm)
    }

    pub(crate) fn issuer(&self) -> String {
        self.realm_url(&self.public_url)
    }

    /// The browser-facing authorization URL.
    pub(crate) fn authorize_url(&self) -> String {
        format!("{}/protocol/openid-connect/auth", self.realm_url(&self.public_url))
    }

    /// Whether the realm answers its discovery document (`check` and `/ready` probe it): an
    /// unreachable or misnamed Keycloak is a problem now, not at the first sign-in.
    pub(crate) async fn probe(&self) -> Result<(), String> {
        let url = format!("{}/.well-known/openid-configuration", self.realm_url(&self.server_url));
        let answer = self.http.get(&url).send().await.map_err(|e| format!("Keycloak at {url} is unreachable: {e}"))?;
        if !answer.status().is_success() {
            return Err(format!("Keycloak at {url} answered {} (is KEYCLOAK_REALM_NAME right?)", answer.status()));
        }
        let document: Value =
            answer.json().await.map_err(|e| format!("Keycloak at {url}: not a discovery document: {e}"))?;
        if document["issuer"].is_string() {
            Ok(())
        } else {
            Err(format!("Keycloak at {url}: the discovery document names no issuer"))
        }
    }

    /// An endpoint from the realm's discovery document (`certs` = `jwks_uri`, `token`,
    /// `logout` = `end_session_endpoint`, `userinfo`), fetched once; Keycloak's fixed paths
    /// when discovery is unreachable.
    async fn endpoint(&self, path: &str) -> String {
        let discovered = self
            .discovery
            .get_or_init(|| async {
                let url = format!("{}/.well-known/openid-configuration", self.realm_url(&self.server_url));
                match self.http.get(url).send().await.and_then(|r| r.error_for_status()) {
                    Ok(r) => r.json::<Value>().await.ok(),
                    Err(e) => {
                        tracing::warn!(error = %e, "Keycloak discovery failed; using the standard paths");
                        None
                    }
                }
            })
            .await;
        let key = match path {
            "certs" => "jwks_uri",
            "token" => "token_endpoint",
            "logout" => "end_session_endpoint",
            "revoke" => "revocation_endpoint",
            _ => "userinfo_endpoint",
        };
        discovered
            .as_ref()
            .and_then(|d| d[key].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{}/protocol/openid-connect/{path}", self.realm_url(&self.server_url)))
    }

    /// The userinfo of an access token's user (checked against the token at sign-in).
    pub(crate) async fn userinfo(&self, access_token: &str) -> Result<Value, TokenError> {
        let r = self
            .http
            .get(self.endpoint("userinfo").await)
            .bearer_auth(access_token)
            .send()
            .await
            .map_err(|e| TokenError::Unavailable(format!("cannot reach Keycloak: {e}")))?;
        if !r.status().is_success() {
            return Err(TokenError::Invalid(format!("userinfo refused: {}", r.status())));
        }
        r.json().await.map_err(|e| TokenError::Unavailable(format!("malformed userinfo: {e}")))
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, TokenError> {
        let mut cache = self.jwks.lock().await;
        if let Some(k) = cache.0.get(kid) {
            return Ok(k.clone());
        }
        if cache.1.is_some_and(|t| t.elapsed() < JWKS_REFETCH) {
            return Err(TokenError::Invalid(format!("unknown signing key `{kid}`")));
        }
        cache.1 = Some(Instant::now());
        let jwks: jsonwebtoken::jwk::JwkSet = self
            .http
            .get(self.endpoint("certs").await)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| TokenError::Unavailable(format!("cannot fetch Keycloak's keys: {e}")))?
            .json()
            .await
            .map_err(|e| TokenError::Unavailable(format!("Keycloak's keys are malformed: {e}")))?;
        cache.0 =
            jwks.keys.iter().filter_map(|k| Some((k.common.key_id.clone()?, DecodingKey::from_jwk(k).ok()?))).collect();
        cache.0.get(kid).cloned().ok_or_else(|| TokenError::Invalid(format!("unknown signing key `{kid}`")))
    }

    /// Verifies a Keycloak access token (or finds it verified already and not expired).
    pub(crate) async fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        use sha2::Digest as _;
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = chrono::Utc::now().timestamp();
        if let Some(claims) = self.verified.lock().unwrap_or_else(|e| e.into_inner()).get(&digest) {
            if claims.exp > now {
                return Ok(claims.clone());
            }
        }
        let claims = self.verify_signature(token).await?;
        let mut cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= VERIFIED_CACHE {
            cache.clear();
        }
        cache.insert(digest, claims.clone());
        Ok(claims)
    }

    async fn verify_signature(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let header = decode_header(token).map_err(|e| TokenError::Invalid(format!("malformed access token: {e}")))?;
        // Only RS256: refuses `none` and HS256 signed with the public key (alg confusion).
        if header.alg != Algorithm::RS256 {
            return Err(TokenError::Invalid(format!("access token algorithm {:?} is not accepted", header.alg)));
        }
        let kid = header.kid.ok_or_else(|| TokenError::Invalid("access token has no kid".to_owned()))?;
        let key = self.key(&kid).await?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[self.issuer()]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.validate_aud = false;
        validation.leeway = 5;
        let claims =
            decode::<AccessClaims>(token, &key, &validation).map(|d| d.claims).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(format!("access token refused: {e}")),
            })?;
        if !claims.is_for(&self.client_id) {
            return Err(TokenError::Invalid(format!(
                "access token refused: issued to another client (azp {:?}), not {}",
                claims.azp.as_deref().unwrap_or("none"),
                self.client_id
            )));
        }
        Ok(claims)
    }

    /// This client at the realm: `token_url` for the grants, the browser-facing authorization
    /// URL for sign-in.
    fn oauth<'a>(&'a self, token_url: &'a str, authorize_url: &'a str) -> oauth_client::Provider<'a> {
        oauth_client::Provider {
            label: "Keycloak",
            client_id: &self.client_id,
            client_secret: &self.client_secret,
            authorize_url,
            token_url,
        }
    }

    fn grant(tokens: Result<oauth_client::Tokens, oauth_client::Error>) -> Result<Tokens, TokenError> {
        match tokens {
            Ok(t) => {
                Ok(Tokens { access_token: t.access().to_owned(), refresh_token: t.refresh().unwrap_or("").to_owned() })
            }
            Err(e) if e.is_invalid_grant() => Err(TokenError::Expired),
            Err(e @ oauth_client::Error::Refused { .. }) => Err(TokenError::Invalid(e.to_string())),
            Err(e) => Err(TokenError::Unavailable(e.to_string())),
        }
    }

    /// Where to send a browser to sign in: the code flow with `state` and PKCE's challenge of
    /// `verifier`, back to `redirect_uri`.
    pub(crate) fn sign_in_url(&self, redirect_uri: &str, state: &str, verifier: &str) -> Result<String, PluginError> {
        let authorize = self.authorize_url();
        let token = format!("{}/protocol/openid-connect/token", self.realm_url(&self.server_url));
        self.oauth(&token, &authorize)
            .authorize_url(redirect_uri, state, Some(verifier), &[("scope", "openid email profile")])
            .map_err(|e| PluginError::internal(e.to_string()))
    }

    pub(crate) async fn refresh(&self, refresh_token: &str) -> Result<Tokens, TokenError> {
        let token_url = self.endpoint("token").await;
        Self::grant(self.oauth(&token_url, "").refresh(&self.http, refresh_token).await)
    }

    /// The authorization code's tokens; `verifier` is PKCE's, empty for a flow without it.
    pub(crate) async fn exchange(&self, code: &str, verifier: &str, redirect_uri: &str) -> Result<Tokens, TokenError> {
        let token_url = self.endpoint("token").await;
        let tokens = self.oauth(&token_url, "").exchange_code(&self.http, code, redirect_uri, Some(verifier)).await;
        Self::grant(tokens)
    }

    /// A linked identity provider's tokens, from Keycloak's broker endpoint (the raw answer).
    pub(crate) async fn broker_token(&self, idp: &str, access_token: &str) -> Result<String, String> {
        let url = format!("{}/broker/{idp}/token", self.realm_url(&self.server_url));
        let r = self.http.get(url).bearer_auth(access_token).send().await.map_err(|e| e.to_string())?;
        let status = r.status();
        if !status.is_success() {
            return Err(format!("broker answered {status}"));
        }
        r.text().await.map_err(|e| e.to_string())
    }

    /// A token for the admin API: the client's service account (client credentials grant;
    /// the client needs the `realm-management` role `manage-users`), reused until 30 s
    /// before it expires.
    async fn admin_token(&self) -> Result<String, PluginError> {
        let mut cached = self.admin_token.lock().await;
        if let Some((token, until)) = cached.as_ref() {
            if Instant::now() < *until {
                return Ok(token.clone());
            }
        }
        let token_url = self.endpoint("token").await;
        let grant = match self.oauth(&token_url, "").client_credentials(&self.http).await {
            Ok(grant) => grant,
            Err(e @ oauth_client::Error::Refused { .. }) => {
                return Err(PluginError::internal(format!(
                    "{e}: give the client `{}` a service account with the realm-management role manage-users",
                    self.client_id
                )))
            }
            Err(e) => return Err(PluginError::unavailable(e.to_string())),
        };
        let expires_in = grant.expires_in().unwrap_or_default();
        let until = Instant::now() + expires_in.saturating_sub(Duration::from_secs(30));
        *cached = Some((grant.access().to_owned(), until));
        Ok(grant.access().to_owned())
    }

    /// `{server}/admin/realms/{realm}/users/{id}{rest}`.
    fn admin_user_url(&self, user_id: &str, rest: &str) -> String {
        let id: String =
            user_id.bytes().filter(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(b)).map(char::from).collect();
        format!("{}/admin/realms/{}/users/{id}{rest}", self.server_url, self.realm)
    }

    async fn admin_call(&self, request: reqwest::RequestBuilder, what: &str) -> Result<reqwest::Response, PluginError> {
        let token = self.admin_token().await?;
        let r = request
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| PluginError::unavailable(format!("cannot reach Keycloak: {e}")))?;
        let status = r.status();
        if status.is_success() {
            return Ok(r);
        }
        if status.as_u16() == 401 {
            *self.admin_token.lock().await = None;
        }
        let code = match status.as_u16() {
            404 => plugin_sdk::ErrorCode::NOT_FOUND,
            409 => plugin_sdk::ErrorCode::CONFLICT,
            s if s >= 500 => plugin_sdk::ErrorCode::UNAVAILABLE,
            _ => plugin_sdk::ErrorCode::INTERNAL,
        };
        let body = r.text().await.unwrap_or_default();
        Err(PluginError::new(code, format!("Keycloak could not {what}: {status} {body}")))
    }

    /// The user's representation (`username`, `enabled`, `email`, `emailVerified`, ...).
    pub(crate) async fn admin_user(&self, user_id: &str) -> Result<Value, PluginError> {
        let r = self.admin_call(self.http.get(self.admin_user_url(user_id, "")), "read the user").await?;
        r.json().await.map_err(|e| PluginError::unavailable(format!("malformed user answer: {e}")))
    }

    /// Updates the user with `fields` (a partial representation).
    pub(crate) async fn admin_update_user(&self, user_id: &str, fields: &Value) -> Result<(), PluginError> {
        let request = self.http.put(self.admin_user_url(user_id, "")).json(fields);
        self.admin_call(request, "update the user").await.map(drop)
    }

    /// The identities the user signed in with through Keycloak's identity providers:
    /// (`github`, their login), (`gitlab`, their username), ...
    pub(crate) async fn federated_identities(&self, user_id: &str) -> Result<Vec<(String, String)>, PluginError> {
        let r = self
            .admin_call(
                self.http.get(self.admin_user_url(user_id, "/federated-identity")),
                "list the user's identities",
            )
            .await?;
        let list: Vec<Value> =
            r.json().await.map_err(|e| PluginError::unavailable(format!("malformed identities answer: {e}")))?;
        Ok(list
            .iter()
            .filter_map(|i| Some((i["identityProvider"].as_str()?.to_owned(), i["userName"].as_str()?.to_owned())))
            .collect())
    }

    /// Keycloak mails the user a link that verifies their address and then sends them to
    /// `redirect_uri`.
    pub(crate) async fn send_verify_email(&self, user_id: &str, redirect_uri: &str) -> Result<(), PluginError> {
        let request = self
            .http
            .put(self.admin_user_url(user_id, "/send-verify-email"))
            .query(&[("redirect_uri", redirect_uri), ("client_id", self.client_id.as_str())]);
        self.admin_call(request, "send the verification email").await.map(drop)
    }

    /// Ends the Keycloak session (best effort: the cookie is cleared anyway): the refresh
    /// token revoked (RFC 7009, where the realm's revocation endpoint is on TLS, as the RFC
    /// requires), then the session ended at the end-session endpoint, which also signs the
    /// user out of the realm's other clients.
    pub(crate) async fn logout(&self, refresh_token: &str) {
        let revoke = self.endpoint("revoke").await;
        if revoke.starts_with("https://") {
            let token_url = self.endpoint("token").await;
            if let Err(e) = self.oauth(&token_url, "").revoke(&self.http, &revoke, refresh_token, false).await {
                tracing::warn!(error = %e, "Keycloak token revocation failed");
            }
        } else {
            tracing::debug!(revoke, "Keycloak's revocation endpoint is not on TLS; the session is only ended");
        }
        let form = [
            ("client_id", self.client_id.as_str()),
            ("client_secret", &self.client_secret),
            ("refresh_token", refresh_token),
        ];
        if let Err(e) =
            self.http.post(self.endpoint("logout").await).form(&form).send().await.and_then(|r| r.error_for_status())
        {
            tracing::warn!(error = %e, "Keycloak logout failed");
        }
    }
}

impl From<TokenError> for PluginError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Expired => {
                PluginError::new(plugin_sdk::ErrorCode::AUTH_EXPIRED, "session expired; sign in again")
            }
            TokenError::Invalid(m) => PluginError::new(plugin_sdk::ErrorCode::AUTH_INVALID, m),
            TokenError::Unavailable(m) => PluginError::unavailable(m),
        }
    }
}

/// The `keycloak_auth` cookie's claims (OpenHands' names).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct CookieClaims {
    pub(crate) access_token: String,
    pub(crate) refresh_token: String,
    #[serde(default)]
    pub(crate) accepted_tos: bool,
    /// The server-side session (`sessions.rs`); a cookie without one (made before sessions
    /// moved to Redis) is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sid: Option<String>,
}

pub(crate) fn sign<T: Serialize>(claims: &T, secret: &str) -> Result<String, PluginError> {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes()))
        .map_err(|e| PluginError::internal(format!("cannot sign: {e}")))
}

/// Verifies an HS256 token of ours; `exp` is checked when present.
pub(crate) fn verify_signed<T: serde::de::DeserializeOwned>(token: &str, secret: &str) -> Option<T> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims::<&str>(&[]);
    validation.validate_aud = false;
    decode::<T>(token, &DecodingKey::from_secret(secret.as_bytes()), &validation).ok().map(|d| d.claims)
}

/// Cookie attributes as OpenHands sets them: HttpOnly; Secure except on localhost; SameSite
/// Lax on localhost, Strict elsewhere.
pub(crate) fn cookie(name: &str, value: &str, web_host: &str, max_age: Option<i64>) -> String {
    let local = is_local(web_host);
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite={}", if local { "Lax" } else { "Strict" });
    if !local {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    c
}

pub(crate) fn clear_cookie(name: &str, web_host: &str) -> String {
    cookie(name, "", web_host, Some(0))
}

fn is_local(web_host: &str) -> bool {
    let host = web_host.split("://").nth(1).unwrap_or(web_host).split(['/', ':']).next().unwrap_or("");
    host == "localhost" || host == "127.0.0.1"
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &str = "property-test-secret-0123456789";

    proptest! {
        /// Any text as a cookie or token: refused (`None`), never a panic.
        #[test]
        fn arbitrary_tokens_are_refused(token in "(?s).{0,300}", jwt_like in "[A-Za-z0-9_-]{0,40}\\\\.[A-Za-z0-9_-]{0,80}\\\\.[A-Za-z0-9_-]{0,60}") {
            prop_assert!(verify_signed::<CookieClaims>(&token, SECRET).is_none());
            prop_assert!(verify_signed::<CookieClaims>(&jwt_like, SECRET).is_none());
        }

        /// A signed cookie reads back; any change to it is refused.
        #[test]
        fn signed_cookies_read_back_and_tampering_is_refused(access in "[a-zA-Z0-9.]{1,40}", position in 0usize..1000, with in "[A-Za-z0-9]") {
            let claims = CookieClaims { access_token: access.clone(), refresh_token: "r".into(), accepted_tos: true, sid: Some("s".into()) };
            let signed = sign(&claims, SECRET).unwrap();
            prop_assert_eq!(verify_signed::<CookieClaims>(&signed, SECRET).unwrap().access_token, access);
            prop_assert!(verify_signed::<CookieClaims>(&signed, "another-secret-0123456789").is_none());
            let at = position % signed.len();
            let mut tampered = signed.clone();
            tampered.replace_range(at..at + 1, &with);
            if tampered != signed {
                let read = verify_signed::<CookieClaims>(&tampered, SECRET);
                // Base64 padding bits aside, a changed token does not verify.
                prop_assert!(read.is_none() || read.is_some_and(|c| c.access_token == claims.access_token));
            }
        }

        #[test]
        fn cookie_headers_never_panic(header in "(?s).{0,200}", name in "[a-z_]{1,12}") {
            let _ = crate::cookie_value(Some(&header), &name);
        }
    }
}
