//! Enterprise authentication, first part (OpenHands §10.3, §10.9): API keys and per-user
//! rate limits.
//! - `SaasUserAuth` (`user_auth`): `Authorization: Bearer <key>` or `X-Session-API-Key`,
//!   checked against SHA-256 hashes (database keys with expiry and revocation, or
//!   `static_keys` from the profile); then the user's rate limit in Redis.
//! - `SaasAuthRoutes` (`routes`): `POST/GET /api/keys`, `DELETE /api/keys/{id}`.
//!
//! Keycloak SSO cookies, the OAuth routes, TOS/email gates and provider tokens are the next
//! part; until then a `keycloak_auth` cookie alone is refused with a message saying so.

mod config;
mod keys;
mod ratelimit;

use config::Config;
use keys::{KeyStore, Refusal};
use plugin_sdk::{
    plugin_api::abi_stable::std_types::{RNone, RSome, RString, RVec, Tuple2},
    AuthOutcome, AuthRequest, AuthType, CallContext, ErrorCode, HttpRequest, HttpResponse, PluginError, Registry,
    RouteSpec,
};
use ratelimit::RateLimiter;
use serde::Deserialize;
use serde_json::{json, Value};

pub struct SaasUserAuth {
    keys: KeyStore,
    limiter: RateLimiter,
    static_keys: Vec<([u8; 32], String)>,
}

fn header<'a>(request: &'a AuthRequest, name: &str) -> Option<&'a str> {
    request
        .headers
        .iter()
        .find(|h| h.0.eq_ignore_ascii_case(name))
        .map(|h| h.1.as_str().trim())
        .filter(|v| !v.is_empty())
}

fn has_cookie(request: &AuthRequest, name: &str) -> bool {
    header(request, "cookie").is_some_and(|c| c.split(';').any(|kv| kv.trim().split('=').next() == Some(name)))
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
            keys: KeyStore::new(c.database_url.as_deref(), c.max_connections, c.acquire_timeout_ms)?,
            limiter: RateLimiter::new(
                &c.redis_url(),
                c.rate_limit_per_second,
                c.rate_limit_per_minute,
                c.redis_key_prefix.clone(),
            )?,
            static_keys: c
                .static_keys
                .iter()
                .map(|k| (unhex(&k.sha256.to_ascii_lowercase()), k.user_id.clone()))
                .collect(),
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

impl plugin_sdk::UserAuth for SaasUserAuth {
    async fn authenticate(&self, _ctx: CallContext, request: AuthRequest) -> Result<AuthOutcome, PluginError> {
        let key = header(&request, "authorization")
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .or_else(|| header(&request, "x-session-api-key"));
        let Some(key) = key else {
            if has_cookie(&request, "keycloak_auth") {
                return Err(auth_error(
                    ErrorCode::UNAUTHENTICATED,
                    "keycloak_auth cookies are not accepted by this build yet; use an API key",
                ));
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

    async fn health(&self) -> Result<String, PluginError> {
        self.keys.health().await
    }
}

pub struct SaasAuthRoutes {
    keys: KeyStore,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    /// RFC 3339; default: never.
    #[serde(default)]
    expires_at: Option<String>,
}

fn respond(status: u16, body: &Value) -> HttpResponse {
    HttpResponse {
        status,
        headers: RVec::from(vec![Tuple2(RString::from("content-type"), RString::from("application/json"))]),
        body: body.to_string().into_bytes().into(),
    }
}

impl plugin_sdk::RouteHandler for SaasAuthRoutes {
    fn routes(&self) -> Vec<RouteSpec> {
        vec![
            RouteSpec { method: "POST".into(), path: "/api/keys".into(), authenticated: true },
            RouteSpec { method: "GET".into(), path: "/api/keys".into(), authenticated: true },
            RouteSpec { method: "DELETE".into(), path: "/api/keys/{id}".into(), authenticated: true },
        ]
    }

    async fn handle(&self, ctx: CallContext, request: HttpRequest) -> Result<HttpResponse, PluginError> {
        let Some(user) = ctx.user_id() else {
            return Ok(respond(401, &json!({ "error": "API keys belong to a signed-in user" })));
        };
        match (request.method.as_str(), request.path.as_str()) {
            ("POST", "/api/keys") => {
                let body: NewKey = match serde_json::from_slice(&request.body) {
                    Ok(b) => b,
                    Err(e) => return Ok(respond(422, &json!({ "error": format!("invalid request body: {e}") }))),
                };
                let name = body.name.trim();
                if name.is_empty() || name.chars().count() > 100 {
                    return Ok(respond(422, &json!({ "error": "name must be 1 to 100 characters" })));
                }
                if let Some(t) = &body.expires_at {
                    if chrono::DateTime::parse_from_rfc3339(t).is_err() {
                        return Ok(respond(422, &json!({ "error": "expires_at must be an RFC 3339 time" })));
                    }
                }
                let (key, info) = self.keys.create(user, name, body.expires_at.as_deref()).await?;
                let mut out = serde_json::to_value(info).map_err(|e| PluginError::internal(e.to_string()))?;
                out["key"] = Value::String(key);
                Ok(respond(201, &out))
            }
            ("GET", "/api/keys") => Ok(respond(200, &json!(self.keys.list(user).await?))),
            ("DELETE", path) => {
                let id = path.trim_start_matches("/api/keys/");
                match self.keys.revoke(user, id).await {
                    Ok(()) => Ok(respond(200, &json!({ "message": "API key deleted" }))),
                    Err(e) if e.code == ErrorCode::NOT_FOUND => {
                        Ok(respond(404, &json!({ "error": e.message.as_str() })))
                    }
                    Err(e) => Err(e),
                }
            }
            _ => Ok(respond(404, &json!({ "error": "no such route" }))),
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
    r.routes("SaasAuthRoutes", "POST/GET /api/keys, DELETE /api/keys/{id}", |config, _| {
        let c = Config::parse(config)?;
        Ok(SaasAuthRoutes { keys: KeyStore::new(c.database_url.as_deref(), c.max_connections, c.acquire_timeout_ms)? })
    });
}

plugin_sdk::export_plugin!(register);
