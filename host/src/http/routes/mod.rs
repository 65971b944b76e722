//! One module per resource; handlers are thin.

mod agents;
mod conversations;
mod health;
mod options;
mod secrets;
mod settings;
mod user;
mod workspace;

use super::{
    error::{ApiError, ApiResult},
    extract::Caller,
    AppState,
};
use axum::{routing::get, Router};
use plugin_api::models::ConversationMetadata;

/// Routes outside the auth gate: health and options.
pub(super) fn public() -> Router<AppState> {
    Router::new()
        .route("/alive", get(health::alive))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/api/options/config", get(options::config))
        .route("/api/options/models", get(options::models))
        .route("/api/options/agents", get(options::agents))
        .route("/api/options/security-analyzers", get(options::security_analyzers))
}

/// The operators' routes (the admin listener): what is loaded, counters, health in detail.
pub(super) fn admin() -> Router<AppState> {
    Router::new()
        .route("/alive", get(health::alive))
        .route("/internal/ready", get(health::ready_detail))
        .route("/internal/plugins", get(health::plugins))
        .route("/internal/metrics", get(health::metrics))
        .route("/internal/cluster", get(health::cluster))
        .route("/internal/reload", axum::routing::post(health::reload))
}

/// Routes behind the auth gate.
pub(super) fn api() -> Router<AppState> {
    Router::new()
        .merge(settings::routes())
        .merge(secrets::routes())
        .merge(conversations::routes())
        .merge(agents::routes())
        .merge(workspace::routes())
        .merge(user::routes())
}

/// The caller's conversation `id`, or `missing()` (each route answers absence in its own
/// OpenHands shape). The store is scoped by user: another user's conversation is absent.
async fn conversation(
    state: &AppState,
    caller: &Caller,
    id: &str,
    missing: impl FnOnce() -> ApiError,
) -> ApiResult<ConversationMetadata> {
    state.app.conversation(&caller.ctx, id).await?.ok_or_else(missing)
}
