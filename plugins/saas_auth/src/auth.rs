//! `SaasUserAuth`: API keys, the Keycloak cookie (refreshed when expired), the TOS and
//! email gates, rate limits, and the git provider tokens brokered at sign-in.

use crate::config::Config;
use crate::keys::{KeyStore, Refusal};
use crate::ratelimit::RateLimiter;
use crate::{config, keycloak, keys, providers};
use plugin_sdk::{
    plugin_api::abi_stable::std_types::{RNone, RSome, RString, Tuple2},
    AuthOutcome, AuthRequest, AuthType, CallContext, ErrorCode, PluginError,
};
use serde_json::json;

pub struct SaasUserAuth {
    keys: std::sync::Arc<KeyStore>,
    limiter: RateLimiter,
    static_keys: Vec<([u8; 32], String)>,
    sso: Option<config::Sso>,
    providers: providers::Providers,
}

/// The value of cookie `name` in a `Cookie` header.
pub(crate) fn cookie_value<'a>(cookie_header: Option<&'a str>, name: &str) -> Option<&'a str> {
    cookie_header?.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// Paths a user with an unverified email may still use: OpenHands' exemptions, plus
/// `/api/accept_tos` (so the two gates can be passed in either order).
fn email_exempt(path: &str) -> bool {
    path.starts_with("/api/email")
        || ["/api/settings", "/api/logout", "/api/logout/everywhere", "/api/authenticate", "/api/accept_tos"]
            .contains(&path)
}

fn header<'a>(request: &'a AuthRequest, name: &str) -> Option<&'a str> {
    plugin_sdk::http::header_in(&request.headers, name)
}

fn unhex(hex: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate().take(32) {
        out[i] = u8::from_str_radix(std::str::from_utf8(chunk).unwrap_or("00"), 16).unwrap_or(0);
    }
    out
}

fn auth_error(code: ErrorCode, message: &str) -> PluginError {
    PluginError::new(code, message).with_details(&json!({ "headers": { "WWW-Authenticate": "Bearer" } }))
}

impl SaasUserAuth {
    pub(crate) fn new(c: &Config) -> Result<Self, PluginError> {
        let redis = crate::redis_conn::Redis::open(&c.redis_url())?;
        Ok(SaasUserAuth {
            keys: c.key_store()?,
            limiter: RateLimiter::new(
                redis.clone(),
                c.rate_limit_per_second,
                c.rate_limit_per_minute,
                c.failed_auth_per_minute,
                c.redis_key_prefix.clone(),
            ),
            static_keys: c
                .static_keys
                .iter()
                .map(|k| (unhex(&k.sha256.to_ascii_lowercase()), k.user_id.clone()))
                .collect(),
            sso: c.sso(&redis)?,
            providers: c.providers()?,
        })
    }

    /// The cookie path: verify, refresh when expired, apply the gates.
    async fn authenticate_cookie(
        &self,
        sso: &config::Sso,
        cookie: &str,
        path: &str,
    ) -> Result<AuthOutcome, PluginError> {
        let clear = || json!({ "headers": { "Set-Cookie": keycloak::clear_cookie("keycloak_auth", &sso.web_host) } });
        let Some(mut claims) = keycloak::verify_signed::<keycloak::CookieClaims>(cookie, &sso.jwt_secret) else {
            return Err(PluginError::new(ErrorCode::AUTH_INVALID, "invalid session cookie; sign in again")
                .with_details(&clear()));
        };
        // The session must still be live in Redis (signed out, revoked: refused on every host).
        let ended = || {
            PluginError::new(ErrorCode::AUTH_INVALID, "this session was signed out; sign in again")
                .with_details(&clear())
        };
        let Some(sid) = claims.sid.as_deref() else { return Err(ended()) };
        let Some(session_user) = sso.sessions.user_of(sid).await? else { return Err(ended()) };
        let mut set_cookie = None;
        let access = match sso.keycloak.verify(&claims.access_token).await {
            Ok(a) => a,
            Err(keycloak::TokenError::Expired) => {
                let tokens = sso
                    .keycloak
                    .refresh(&claims.refresh_token)
                    .await
                    .map_err(|e| PluginError::from(e).with_details(&clear()))?;
                claims.access_token = tokens.access_token;
                claims.refresh_token = tokens.refresh_token;
                let access = sso
                    .keycloak
                    .verify(&claims.access_token)
                    .await
                    .map_err(|e| PluginError::from(e).with_details(&clear()))?;
                set_cookie = Some(keycloak::cookie(
                    "keycloak_auth",
                    &keycloak::sign(&claims, &sso.jwt_secret)?,
                    &sso.web_host,
                    None,
                ));
                access
            }
            Err(e @ keycloak::TokenError::Unavailable(_)) => return Err(e.into()),
            Err(e) => return Err(PluginError::from(e).with_details(&clear())),
        };
        if session_user != access.sub {
            return Err(ended());
        }
        if !claims.accepted_tos && path != "/api/accept_tos" {
            return Err(PluginError::new(
                ErrorCode::AUTH_TOS_NOT_ACCEPTED,
                "accept the terms of service first (POST /api/accept_tos)",
            ));
        }
        if access.email_verified == Some(false) && !email_exempt(path) {
            return Err(PluginError::new(ErrorCode::AUTH_EMAIL_NOT_VERIFIED, "verify your email address first"));
        }
        let mut headers = self.limiter.check(&access.sub).await?;
        if let Some(c) = set_cookie {
            headers.push(("Set-Cookie".to_owned(), c));
        }
        Ok(AuthOutcome {
            user_id: RSome(access.sub.into()),
            email: access.email.map(RString::from).into(),
            auth_type: AuthType::COOKIE,
            response_headers: headers.into_iter().map(|(k, v)| Tuple2(RString::from(k), RString::from(v))).collect(),
        })
    }

    /// The credentials of a request: an API key (header), else the session cookie.
    async fn authenticate_credentials(
        &self,
        _ctx: CallContext,
        request: AuthRequest,
    ) -> Result<AuthOutcome, PluginError> {
        let key = header(&request, "authorization")
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .or_else(|| header(&request, "x-session-api-key"));
        let Some(key) = key else {
            if let Some(cookie) = cookie_value(header(&request, "cookie"), "keycloak_auth") {
                return match &self.sso {
                    Some(sso) => self.authenticate_cookie(sso, cookie, request.path.as_str()).await,
                    None => Err(auth_error(
                        ErrorCode::UNAUTHENTICATED,
                        "keycloak_auth cookies are not accepted: no Keycloak is configured (keycloak_server_url)",
                    )),
                };
            }
            return Err(auth_error(
                ErrorCode::AUTH_NO_CREDENTIALS,
                "no credentials: send Authorization: Bearer <API key>",
            ));
        };
        let user = self.user_of(key).await?;
        let headers = self.limiter.check(&user).await?;
        Ok(AuthOutcome {
            user_id: RSome(user.into()),
            email: RNone,
            auth_type: AuthType::BEARER,
            response_headers: headers.into_iter().map(|(k, v)| Tuple2(RString::from(k), RString::from(v))).collect(),
        })
    }

    async fn user_of(&self, key: &str) -> Result<String, PluginError> {
        let hash = unhex(&keys::sha256_hex(key));
        // Constant time over every static key.
        let mut found = None;
        for (expected, user) in &self.static_keys {
            if expected.iter().zip(&hash).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0 {
                found = Some(user.clone());
            }
        }
        if let Some(user) = found {
            return Ok(user);
        }
        match self.keys.verify(key).await? {
            Ok(user) => Ok(user),
            Err(Refusal::Unknown) => Err(auth_error(ErrorCode::AUTH_INVALID, "invalid API key")),
            Err(Refusal::Revoked) => Err(auth_error(ErrorCode::AUTH_INVALID, "this API key was revoked")),
            Err(Refusal::Expired) => Err(auth_error(ErrorCode::AUTH_EXPIRED, "this API key has expired")),
        }
    }
}

/// The client's IP address (the port left out): what failed sign-ins are counted by.
fn client_address(remote: &str) -> String {
    remote.parse::<std::net::SocketAddr>().map(|a| a.ip().to_string()).unwrap_or_else(|_| remote.to_owned())
}

impl plugin_sdk::UserAuth for SaasUserAuth {
    /// Refuses an address with too many failed sign-ins this minute (before its credentials
    /// cost a query), then checks the credentials; an invalid one counts as a failure.
    async fn authenticate(&self, ctx: CallContext, request: AuthRequest) -> Result<AuthOutcome, PluginError> {
        let address = client_address(&request.remote_addr);
        self.limiter.check_failures(&address).await?;
        let outcome = self.authenticate_credentials(ctx, request).await;
        if let Err(e) = &outcome {
            if e.code == ErrorCode::AUTH_INVALID {
                self.limiter.count_failure(&address).await;
            }
        }
        outcome
    }

    async fn provider_tokens(
        &self,
        ctx: CallContext,
    ) -> Result<Option<plugin_sdk::models::ProviderTokens>, PluginError> {
        if self.providers.is_empty() {
            return Ok(None);
        }
        let Some(user) = ctx.user_id() else { return Ok(None) };
        let pool = self.keys.ready().await?;
        self.providers.tokens(pool, user).await.map(Some)
    }

    async fn health(&self) -> Result<String, PluginError> {
        let keys = self.keys.health().await?;
        match &self.sso {
            Some(sso) => {
                sso.keycloak.probe().await.map_err(PluginError::unavailable)?;
                Ok(format!("{keys}; Keycloak discovery answered"))
            }
            None => Ok(keys),
        }
    }
}
