//! One module per resource; handlers are thin.

mod conversations;
mod health;
mod options;
mod secrets;
mod settings;

pub(crate) use conversations::start_request;

use super::{call_context, error::ApiError, AppState, Principal, RequestId};
use axum::{extract::FromRequestParts, http::request::Parts, routing::get, Router};
use plugin_api::CallContext;

/// Routes outside the auth gate: health, options, host internals.
pub(super) fn public() -> Router<AppState> {
    Router::new()
        .route("/alive", get(health::alive))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/internal/plugins", get(health::plugins))
        .route("/internal/metrics", get(health::metrics))
        .route("/api/options/config", get(options::config))
}

/// Routes behind the auth gate.
pub(super) fn api() -> Router<AppState> {
    Router::new().merge(settings::routes()).merge(secrets::routes()).merge(conversations::routes())
}

/// The authenticated caller and the context for its plugin calls.
pub(crate) struct Caller {
    pub(crate) principal: Principal,
    pub(crate) ctx: CallContext,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
            ApiError::error(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "route is not behind the auth gate")
        })?;
        let request_id = parts.extensions.get::<RequestId>().cloned().unwrap_or_else(|| RequestId(String::new()));
        let mut ctx = call_context(&principal, &request_id, &state.server);
        // W3C trace context, passed through so plugin logs can join the caller's trace.
        if let Some(tp) = parts.headers.get("traceparent").and_then(|v| v.to_str().ok()) {
            if tp.len() <= 128 && tp.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                ctx.traceparent = tp.into();
            }
        }
        Ok(Caller { principal, ctx })
    }
}
