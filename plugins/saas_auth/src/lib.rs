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
//! verifier in a signed short-lived cookie). The cookie names a server-side session in Redis
//! (`sessions.rs`), so sign-outs and revocations hold on every host.

mod auth;
mod byor;
mod config;
mod email;
mod gitlab_sync;
mod keycloak;
mod keys;
mod oauth;
mod providers;
mod ratelimit;
mod redis_conn;
mod routes;
mod sessions;

pub(crate) use auth::cookie_value;
pub use auth::SaasUserAuth;
use config::Config;
use plugin_sdk::Registry;
pub(crate) use routes::capture;
pub use routes::SaasAuthRoutes;

pub fn register(r: &mut Registry) {
    r.user_auth(
        "SaasUserAuth",
        "API keys (hashed, expiring, revocable) and per-user rate limits in Redis",
        |config, _| SaasUserAuth::new(&Config::parse(config)?),
    );
    r.routes(
        "SaasAuthRoutes",
        "/api/keys, /api/keys/llm/byor, GitLab's repository sync; with Keycloak the OAuth routes and /api/email",
        |config, services| {
            let c = Config::parse(config)?;
            let redis = redis_conn::Redis::open(&c.redis_url())?;
            let keys = c.key_store()?;
            Ok(SaasAuthRoutes {
                gitlab: c.gitlab_sync(keys.clone(), services.clone()),
                services,
                keys,
                sso: c.sso(&redis)?,
                providers: c.providers()?,
                byor: c.byor()?,
            })
        },
    );
}

plugin_sdk::export_plugin!(register);
