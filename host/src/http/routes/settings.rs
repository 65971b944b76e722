//! `/api/settings` (OpenHands §9.4): secret fields never leave the server.

use crate::{
    app::{AppError, AppResult},
    http::{
        error::{ApiError, ApiResult},
        extract::{Caller, JsonBody},
        AppState,
    },
};
use axum::{
    extract::State,
    http::StatusCode,
    routing::{get, post},
    Json, Router,
};
use plugin_api::models::{Secrets, Settings};
use serde_json::{json, Map, Value};

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/api/settings", get(load).post(store)).route("/api/reset-settings", post(reset))
}

/// OpenHands' `GETSettingsModel`: Settings without `secrets_store`, the three secret fields
/// `null`, plus `llm_api_key_set`, `search_api_key_set` and `provider_tokens_set`.
pub(crate) fn settings_view(settings: &Settings, secrets: Option<&Secrets>) -> Value {
    let mut masked = settings.clone();
    masked.mask_mcp_secrets();
    let mut doc = serde_json::to_value(&masked).unwrap_or_default();
    let obj = doc.as_object_mut().expect("settings serialize to an object");
    for field in Settings::SECRET_FIELDS {
        obj.insert(field.to_owned(), Value::Null);
    }
    let set = |v: &Option<String>| v.as_deref().is_some_and(|k| !k.trim().is_empty());
    obj.insert("llm_api_key_set".to_owned(), json!(set(&settings.llm_api_key)));
    obj.insert("search_api_key_set".to_owned(), json!(set(&settings.search_api_key)));
    let providers: Map<String, Value> = secrets
        .map(|s| {
            s.provider_tokens
                .iter()
                .filter(|(_, t)| t.token.as_deref().is_some_and(|t| !t.is_empty()) || t.user_id.is_some())
                .map(|(p, t)| (p.clone(), json!(t.host)))
                .collect()
        })
        .unwrap_or_default();
    obj.insert("provider_tokens_set".to_owned(), Value::Object(providers));
    doc
}

async fn load(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let app = &state.app;
    let (settings, stored) =
        tokio::join!(app.settings_or_saas_default(&caller.ctx), app.secrets_and_tokens(&caller.ctx));
    let Some(settings) = settings? else {
        return Err(ApiError::not_found("Settings not found"));
    };
    let (mut secrets, tokens) = stored?;
    if secrets.is_some() || !tokens.is_empty() {
        secrets.get_or_insert_with(Default::default).provider_tokens = tokens;
    }
    Ok(Json(settings_view(&settings, secrets.as_ref())))
}

/// Stores the posted Settings. As OpenHands: when settings exist, a null `llm_api_key`,
/// `llm_model`, `llm_base_url`, `search_api_key` or `user_consents_to_analytics` keeps the
/// stored value; every other field is replaced. An `mcp_config` secret posted masked (as GET
/// shows it) keeps the stored value.
async fn store(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(mut settings): JsonBody<Settings>,
) -> ApiResult<Json<Value>> {
    validate(&settings)?;
    settings.normalize();
    let hide_llm_settings = state.server.env.hide_llm_settings;
    state
        .app
        .update_settings(&caller.ctx, |stored| {
            if hide_llm_settings {
                refuse_llm_changes(&settings, stored.as_ref())?;
            }
            let mut posted = settings.clone();
            posted.unmask_mcp_secrets(stored.as_ref());
            if let Some(existing) = stored {
                posted.llm_api_key = posted.llm_api_key.or(existing.llm_api_key);
                posted.llm_model = posted.llm_model.or(existing.llm_model);
                posted.llm_base_url = posted.llm_base_url.or(existing.llm_base_url);
                posted.search_api_key = posted.search_api_key.or(existing.search_api_key);
                posted.user_consents_to_analytics =
                    posted.user_consents_to_analytics.or(existing.user_consents_to_analytics);
            }
            Ok(posted)
        })
        .await?;
    Ok(Json(json!({ "message": "Settings stored" })))
}

/// The values OpenHands' pydantic model would refuse, or that nothing downstream can use: a
/// 422 naming the field, before anything is stored.
fn validate(settings: &Settings) -> ApiResult<()> {
    if settings.condenser_max_size.is_some_and(|n| n < 20) {
        return Err(ApiError::unprocessable("condenser_max_size must be at least 20"));
    }
    if settings.max_iterations.is_some_and(|n| !(1..=MAX_ITERATIONS).contains(&n)) {
        return Err(ApiError::unprocessable(format!("max_iterations must be between 1 and {MAX_ITERATIONS}")));
    }
    if settings.remote_runtime_resource_factor.is_some_and(|n| n < 1) {
        return Err(ApiError::unprocessable("remote_runtime_resource_factor must be at least 1"));
    }
    if settings.max_budget_per_task.is_some_and(|b| !b.is_finite() || b < 0.0) {
        return Err(ApiError::unprocessable("max_budget_per_task must be a non-negative number"));
    }
    match &settings.mcp_config {
        None | Some(Value::Null) => {}
        Some(Value::Object(config)) => {
            for list in ["sse_servers", "stdio_servers", "shttp_servers"] {
                if config.get(list).is_some_and(|v| !v.is_array() && !v.is_null()) {
                    return Err(ApiError::unprocessable(format!("mcp_config.{list} must be a list of servers")));
                }
            }
        }
        Some(_) => {
            return Err(ApiError::unprocessable(
                "mcp_config must be an object ({\"sse_servers\": [...], \"stdio_servers\": [...], \"shttp_servers\": [...]}) or null",
            ))
        }
    }
    Ok(())
}

/// The most LLM calls a user may allow per message.
const MAX_ITERATIONS: i64 = 10_000;

/// With `HIDE_LLM_SETTINGS` the deployment chooses the LLM: a posted LLM field that differs
/// from the stored one is refused (403). The web client posts them back unchanged (the key
/// as `null`), which passes.
fn refuse_llm_changes(posted: &Settings, stored: Option<&Settings>) -> AppResult<()> {
    let changed = |field: &str, new: &Option<String>, old: Option<&Option<String>>| {
        new.as_ref().is_some_and(|v| Some(v) != old.and_then(Option::as_ref)).then(|| field.to_owned())
    };
    let changes: Vec<String> = [
        changed("llm_model", &posted.llm_model, stored.map(|s| &s.llm_model)),
        changed("llm_base_url", &posted.llm_base_url, stored.map(|s| &s.llm_base_url)),
        changed("llm_api_key", &posted.llm_api_key, stored.map(|s| &s.llm_api_key)),
    ]
    .into_iter()
    .flatten()
    .collect();
    if changes.is_empty() {
        return Ok(());
    }
    Err(AppError::Forbidden(format!(
        "LLM settings are managed by this deployment (HIDE_LLM_SETTINGS); cannot change {}",
        changes.join(", ")
    )))
}

async fn reset() -> ApiError {
    ApiError::error(StatusCode::GONE, "Reset settings functionality has been removed.")
}
