//! `SaasAuthRoutes`: API keys, sign-in and sign-out, the TOS, the email routes.

use crate::keys::KeyStore;
use crate::{byor, config, email, oauth, providers};
use plugin_sdk::{http::json, CallContext, ErrorCode, HttpRequest, HttpResponse, PluginError, RouteSpec};
use serde::Deserialize;
use serde_json::{json, Value};

pub struct SaasAuthRoutes {
    pub(crate) services: plugin_sdk::Services,
    pub(crate) keys: std::sync::Arc<KeyStore>,
    pub(crate) sso: Option<config::Sso>,
    pub(crate) providers: providers::Providers,
    pub(crate) byor: Option<byor::Proxy>,
    /// GitLab repository sync, when on (`gitlab_sync.rs`).
    pub(crate) gitlab: Option<std::sync::Arc<crate::gitlab_sync::GitLabSync>>,
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
        if self.gitlab.is_some() {
            // The host serves GitLab's repository picker and search from it.
            routes.push(RouteSpec {
                method: "GET".into(),
                path: crate::gitlab_sync::ROUTE.into(),
                authenticated: true,
            });
        }
        if self.sso.is_some() {
            routes.extend(oauth::routes());
            routes.extend(email::routes());
        }
        routes
    }

    async fn handle(&self, ctx: CallContext, request: HttpRequest) -> Result<HttpResponse, PluginError> {
        if let Some(sso) = &self.sso {
            if let Some(answer) =
                oauth::handle(sso, &self.keys, &self.providers, &self.services, self.gitlab.as_ref(), &ctx, &request)
                    .await?
            {
                return Ok(answer);
            }
        }
        let Some(user) = ctx.user_id() else {
            return Ok(json(401, &json!({ "error": "API keys belong to a signed-in user" })));
        };
        if let Some(sync) = self.gitlab.as_ref().filter(|_| request.path == crate::gitlab_sync::ROUTE) {
            return sync.handle(user, &request).await;
        }
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
