//! Enterprise authentication, first part (OpenHands §10.3, §10.9): API keys and per-user
//! rate limits.
//! - `SaasUserAuth` (`user_auth`): `Authorization: Bearer <key>` or `X-Session-API-Key`,
//!   checked against SHA-256 hashes (database keys with expiry and revocation, or
//!   `static_keys` from the profile); then the user's rate limit in Redis.
//! - `SaasAuthRoutes` (`routes`): `POST/GET /api/keys`, `DELETE /api/keys/{id}`.
//!
//! With Keycloak configured, also the `keycloak_auth` cookie: the outer HS256 token
//! (`JWT_SECRET`) and the Keycloak access token inside it are verified (RS256, JWKS); an
//! expired access token is refreshed and the rewritten cookie set on the response; the TOS and
//! email-verification gates apply; and the OAuth routes sign users in (`state` and the PKCE
//! verifier in a signed short-lived cookie). Provider tokens through Keycloak's broker are the
//! next part.

mod byor;
mod config;
mod email;
mod keycloak;
mod keys;
mod oauth;
mod providers;
mod ratelimit;

use config::Config;
use keys::{KeyStore, Refusal};
use plugin_sdk::{
    http::json,
    plugin_api::abi_stable::std_types::{RNone, RSome, RString, Tuple2},
    AuthOutcome, AuthRequest, AuthType, CallContext, ErrorCode, HttpRequest, HttpResponse, PluginError, Registry,
    RouteSpec,
};
use ratelimit::RateLimiter;
use serde::Deserialize;
use serde_json::{json, Value};

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
        || ["/api/settings", "/api/logout", "/api/authenticate", "/api/accept_tos"].contains(&path)
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
    fn new(c: &Config) -> Result<Self, PluginError> {
        Ok(SaasUserAuth {
            keys: c.key_store()?,
            limiter: RateLimiter::new(
                &c.redis_url(),
                c.rate_limit_per_second,
                c.rate_limit_per_minute,
                c.failed_auth_per_minute,
                c.redis_key_prefix.clone(),
            )?,
            static_keys: c
                .static_keys
                .iter()
                .map(|k| (unhex(&k.sha256.to_ascii_lowercase()), k.user_id.clone()))
                .collect(),
            sso: c.sso()?,
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
        self.keys.health().await
    }
}

pub struct SaasAuthRoutes {
    services: plugin_sdk::Services,
    keys: std::sync::Arc<KeyStore>,
    sso: Option<config::Sso>,
    providers: providers::Providers,
    byor: Option<byor::Proxy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    /// RFC 3339; default: never.
    #[serde(default)]
    expires_at: Option<String>,
}

/// Tells the monitoring listeners what the user did (product analytics); never fails the
/// request.
pub(crate) async fn capture(services: &plugin_sdk::Services, ctx: &CallContext, event: &str, properties: Value) {
    let call = plugin_sdk::host_calls::Capture { event: event.to_owned(), properties };
    if let Err(e) = services.call(ctx.clone(), call).await {
        tracing::debug!(error = %e, event, "analytics event not delivered");
    }
}

impl plugin_sdk::RouteHandler for SaasAuthRoutes {
    fn routes(&self) -> Vec<RouteSpec> {
        let mut routes = vec![
            RouteSpec { method: "POST".into(), path: "/api/keys".into(), authenticated: true },
            RouteSpec { method: "GET".into(), path: "/api/keys".into(), authenticated: true },
            RouteSpec { method: "DELETE".into(), path: "/api/keys/{id}".into(), authenticated: true },
            RouteSpec { method: "GET".into(), path: "/api/keys/llm/byor".into(), authenticated: true },
            RouteSpec { method: "POST".into(), path: "/api/keys/llm/byor/refresh".into(), authenticated: true },
        ];
        if self.sso.is_some() {
            routes.extend(oauth::routes());
            routes.extend(email::routes());
        }
        routes
    }

    async fn handle(&self, ctx: CallContext, request: HttpRequest) -> Result<HttpResponse, PluginError> {
        if let Some(sso) = &self.sso {
            if let Some(answer) =
                oauth::handle(sso, &self.keys, &self.providers, &self.services, &ctx, &request).await?
            {
                return Ok(answer);
            }
        }
        let Some(user) = ctx.user_id() else {
            return Ok(json(401, &json!({ "error": "API keys belong to a signed-in user" })));
        };
        // Creating and revoking keys needs an interactive sign-in: a key (even one expiring
        // soon) must not mint a key that outlives it, or revoke its owner's other keys. The
        // auth gate authenticates by key whenever one is sent, so a key here means a key.
        let by_key = request.headers.iter().any(|h| {
            (h.0.eq_ignore_ascii_case("authorization") && h.1.trim().to_ascii_lowercase().starts_with("bearer "))
                || h.0.eq_ignore_ascii_case("x-session-api-key")
        });
        if let Some(sso) = self.sso.as_ref().filter(|_| request.path.starts_with("/api/email")) {
            // A leaked key must not be able to move the account to another address.
            if by_key && request.method.as_str() == "POST" {
                return Ok(json(
                    403,
                    &json!({ "error": "the email address is changed from a signed-in browser session, not with an API key" }),
                ));
            }
            if let Some(answer) = email::handle(sso, user, &request).await? {
                return Ok(answer);
            }
        }
        if by_key && matches!(request.method.as_str(), "POST" | "DELETE") {
            return Ok(json(
                403,
                &json!({ "error": "API keys are managed from a signed-in browser session; an API key cannot create or revoke keys" }),
            ));
        }
        match (request.method.as_str(), request.path.as_str()) {
            ("POST", "/api/keys") => {
                let body: NewKey = match serde_json::from_slice(&request.body) {
                    Ok(b) => b,
                    Err(e) => return Ok(json(422, &json!({ "error": format!("invalid request body: {e}") }))),
                };
                let name = body.name.trim();
                if name.is_empty() || name.chars().count() > 100 {
                    return Ok(json(422, &json!({ "error": "name must be 1 to 100 characters" })));
                }
                if let Some(t) = &body.expires_at {
                    if chrono::DateTime::parse_from_rfc3339(t).is_err() {
                        return Ok(json(422, &json!({ "error": "expires_at must be an RFC 3339 time" })));
                    }
                }
                let (key, info) = self.keys.create(user, name, body.expires_at.as_deref()).await?;
                capture(&self.services, &ctx, "api key created", json!({ "expires": body.expires_at.is_some() })).await;
                let mut out = serde_json::to_value(info).map_err(|e| PluginError::internal(e.to_string()))?;
                out["key"] = Value::String(key);
                Ok(json(201, &out))
            }
            ("GET", "/api/keys") => Ok(json(200, &json!(self.keys.list(user).await?))),
            ("GET", "/api/keys/llm/byor") | ("POST", "/api/keys/llm/byor/refresh") => {
                let Some(proxy) = &self.byor else {
                    return Ok(json(
                        503,
                        &json!({ "error": "this deployment has no LLM proxy: set litellm_api_url and litellm_api_key (LITE_LLM_API_URL, LITE_LLM_API_KEY)" }),
                    ));
                };
                let pool = self.keys.ready().await?;
                let key = if request.method.as_str() == "GET" {
                    proxy.key(pool, user).await?
                } else {
                    proxy.refresh(pool, user).await?
                };
                Ok(json(200, &json!({ "key": key })))
            }
            ("DELETE", path) => {
                let id = path.trim_start_matches("/api/keys/");
                match self.keys.revoke(user, id).await {
                    Ok(()) => Ok(json(200, &json!({ "message": "API key deleted" }))),
                    Err(e) if e.code == ErrorCode::NOT_FOUND => Ok(json(404, &json!({ "error": e.message.as_str() }))),
                    Err(e) => Err(e),
                }
            }
            _ => Ok(json(404, &json!({ "error": "no such route" }))),
        }
    }

    async fn health(&self) -> Result<String, PluginError> {
        self.keys.health().await
    }
}

pub fn register(r: &mut Registry) {
    r.user_auth(
        "SaasUserAuth",
        "API keys (hashed, expiring, revocable) and per-user rate limits in Redis",
        |config, _| SaasUserAuth::new(&Config::parse(config)?),
    );
    r.routes(
        "SaasAuthRoutes",
        "/api/keys, /api/keys/llm/byor; with Keycloak the OAuth routes and /api/email",
        |config, services| {
            let c = Config::parse(config)?;
            Ok(SaasAuthRoutes {
                services,
                keys: c.key_store()?,
                sso: c.sso()?,
                providers: c.providers()?,
                byor: c.byor()?,
            })
        },
    );
}

plugin_sdk::export_plugin!(register);
