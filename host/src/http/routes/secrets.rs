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
use plugin_api::models::{CustomSecret, ProviderToken, PROVIDERS};
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

#[derive(Deserialize)]
struct ProviderTokenIn {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
}

/// `POSTProviderModel`.
#[derive(Deserialize)]
struct ProvidersIn {
    #[serde(default)]
    provider_tokens: BTreeMap<String, ProviderTokenIn>,
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
        .update_secrets(&caller, |secrets| {
            let mut tokens = BTreeMap::new();
            for (provider, incoming) in body.provider_tokens {
                let token = incoming.token.filter(|t| !t.trim().is_empty());
                let entry = match (token, secrets.provider_tokens.get(&provider)) {
                    (Some(token), _) => {
                        ProviderToken { token: Some(token), host: incoming.host, user_id: incoming.user_id }
                    }
                    (None, Some(stored)) => {
                        ProviderToken { host: incoming.host.or(stored.host.clone()), ..stored.clone() }
                    }
                    (None, None) => continue,
                };
                tokens.insert(provider, entry);
            }
            secrets.provider_tokens = tokens;
            Ok(())
        })
        .await?;
    Ok(Json(json!({ "message": "Git providers stored" })))
}

async fn unset_provider_tokens(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    state
        .update_secrets(&caller, |secrets| {
            secrets.provider_tokens.clear();
            Ok(())
        })
        .await?;
    Ok(Json(json!({ "message": "Unset Git provider tokens" })))
}

async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let secrets = state.registry.load_secrets(caller.ctx).await?.unwrap_or_default();
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
    state
        .update_secrets(&caller, |secrets| {
            if secrets.custom_secrets.contains_key(&body.name) {
                return Err(ApiError::secret_exists(&body.name));
            }
            let secret = CustomSecret { secret: body.value, description: body.description.unwrap_or_default() };
            secrets.custom_secrets.insert(body.name, secret);
            Ok(())
        })
        .await?;
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
    state
        .update_secrets(&caller, |secrets| {
            let Some(existing) = secrets.custom_secrets.remove(&id) else {
                return Err(ApiError::secret_not_found(&id));
            };
            if body.name != id && secrets.custom_secrets.contains_key(&body.name) {
                return Err(ApiError::secret_exists(&body.name));
            }
            let secret = CustomSecret { secret: existing.secret, description: body.description.unwrap_or_default() };
            secrets.custom_secrets.insert(body.name, secret);
            Ok(())
        })
        .await?;
    Ok(Json(json!({ "message": "Secret updated successfully" })))
}

async fn remove(State(state): State<AppState>, caller: Caller, SecretId(id): SecretId) -> ApiResult<Json<Value>> {
    state
        .update_secrets(&caller, |secrets| match secrets.custom_secrets.remove(&id) {
            Some(_) => Ok(()),
            None => Err(ApiError::secret_not_found(&id)),
        })
        .await?;
    Ok(Json(json!({ "message": "Secret deleted successfully" })))
}
