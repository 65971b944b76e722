//! Provider tokens and custom secrets (OpenHands §9.5). Values go in, never out.

use crate::http::{
    error::{ApiError, ApiResult},
    extract::{validate_secret_name, Caller, JsonBody, SecretId},
    AppState,
};
use axum::{
    extract::State,
    http::StatusCode,
    routing::{get, post, put},
    Json, Router,
};
use plugin_api::models::{ProviderTokenChange, SecretsChange, PROVIDERS};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/add-git-providers", post(add_git_providers))
        .route("/api/unset-provider-tokens", post(unset_provider_tokens))
        .route("/api/secrets", get(list).post(create))
        .route("/api/secrets/{id}", put(update).delete(remove))
}

/// `POSTProviderModel`.
#[derive(Deserialize)]
struct ProvidersIn {
    #[serde(default)]
    provider_tokens: BTreeMap<String, ProviderTokenChange>,
    #[serde(default)]
    #[allow(dead_code)] // accepted for compatibility; MCP config lives in Settings
    mcp_config: Option<Value>,
}

/// The submitted map replaces the stored provider tokens; an entry with an empty token keeps
/// the stored token and updates its host. Custom secrets are kept.
async fn add_git_providers(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<ProvidersIn>,
) -> ApiResult<Json<Value>> {
    if let Some(provider) = body.provider_tokens.keys().find(|p| !PROVIDERS.contains(&p.as_str())) {
        return Err(ApiError::unprocessable(format!("unknown provider `{provider}`; known: {}", PROVIDERS.join(", "))));
    }
    state
        .app
        .change_secrets(&caller.ctx, SecretsChange::SetProviderTokens { provider_tokens: body.provider_tokens })
        .await?;
    Ok(Json(json!({ "message": "Git providers stored" })))
}

async fn unset_provider_tokens(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    state.app.change_secrets(&caller.ctx, SecretsChange::UnsetProviderTokens).await?;
    Ok(Json(json!({ "message": "Unset Git provider tokens" })))
}

async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let secrets = state.app.load_secrets(&caller.ctx).await?.unwrap_or_default();
    let items: Vec<Value> = secrets
        .custom_secrets
        .iter()
        .map(|(name, s)| json!({ "name": name, "description": if s.description.is_empty() { None } else { Some(&s.description) } }))
        .collect();
    Ok(Json(json!({ "custom_secrets": items })))
}

/// `CustomSecretModel`.
#[derive(Deserialize)]
struct SecretIn {
    name: String,
    value: String,
    #[serde(default)]
    description: Option<String>,
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<SecretIn>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    validate_secret_name(&body.name)?;
    let description = body.description.unwrap_or_default();
    let change = SecretsChange::CreateCustomSecret { name: body.name, secret: body.value, description };
    state.app.change_secrets(&caller.ctx, change).await?;
    Ok((StatusCode::CREATED, Json(json!({ "message": "Secret created successfully" }))))
}

/// `CustomSecretWithoutValueModel`: rename or re-describe; the value is kept.
#[derive(Deserialize)]
struct SecretUpdate {
    name: String,
    #[serde(default)]
    description: Option<String>,
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    SecretId(id): SecretId,
    JsonBody(body): JsonBody<SecretUpdate>,
) -> ApiResult<Json<Value>> {
    validate_secret_name(&body.name)?;
    let description = body.description.unwrap_or_default();
    state
        .app
        .change_secrets(&caller.ctx, SecretsChange::UpdateCustomSecret { name: id, new_name: body.name, description })
        .await?;
    Ok(Json(json!({ "message": "Secret updated successfully" })))
}

async fn remove(State(state): State<AppState>, caller: Caller, SecretId(id): SecretId) -> ApiResult<Json<Value>> {
    state.app.change_secrets(&caller.ctx, SecretsChange::DeleteCustomSecret { name: id }).await?;
    Ok(Json(json!({ "message": "Secret deleted successfully" })))
}
