//! What starting an agent loop needs: the user's settings, secrets and provider tokens as a
//! manager's start request. Used by the conversation routes and the socket.io join.

use super::{error::ApiError, error::ApiResult, AppState};
use axum::http::StatusCode;
use plugin_api::{
    models::{ExperimentQuery, StartRequest},
    CallContext,
};

/// The start request of a conversation; 400 as OpenHands when the settings are missing or
/// have no LLM key.
pub(crate) async fn start_request(
    state: &AppState,
    ctx: &CallContext,
    conversation_id: &str,
) -> ApiResult<StartRequest> {
    let registry = &state.registry;
    let (settings, secrets) = tokio::join!(state.settings_or_saas_default(ctx), registry.load_secrets(ctx.clone()));
    let Some(settings) = settings? else {
        return Err(ApiError::with_msg_id(
            StatusCode::BAD_REQUEST,
            "Settings not found",
            "CONFIGURATION$SETTINGS_NOT_FOUND",
        ));
    };
    let model = settings.llm_model.as_deref().unwrap_or("");
    // The deployment's proxy key (LITE_LLM_API_KEY) stands in for the user's.
    let keyless =
        model.starts_with("bedrock/") || model.starts_with("lemonade/") || state.server.env.lite_llm_api_key.is_some();
    if settings.llm_api_key.as_deref().is_none_or(|k| k.trim().is_empty()) && !keyless {
        return Err(ApiError::with_msg_id(
            StatusCode::BAD_REQUEST,
            "Error authenticating with the LLM provider. Please check your API key",
            "STATUS$ERROR_LLM_AUTHENTICATION",
        ));
    }
    let secrets = secrets?.unwrap_or_default();
    // Tokens the auth system brokers (Keycloak in SaaS) win over stored ones, as in OpenHands.
    let provider_tokens = registry.provider_tokens(ctx.clone()).await?.unwrap_or(secrets.provider_tokens);
    let mut settings = settings;
    let mut system_prompt = None;
    // A/B experiments (monitoring listeners run them): the variant's model or system prompt.
    let query = ExperimentQuery { conversation_id: conversation_id.to_owned(), llm_model: settings.llm_model.clone() };
    for assignment in registry.experiments(ctx, &query).await {
        tracing::debug!(experiment = %assignment.experiment, variant = %assignment.variant, "experiment variant applied");
        if let Some(model) = assignment.llm_model {
            settings.llm_model = Some(model);
        }
        if let Some(prompt) = assignment.system_prompt {
            system_prompt = Some(prompt);
        }
    }
    Ok(StartRequest {
        conversation_id: conversation_id.to_owned(),
        settings,
        provider_tokens,
        custom_secrets: secrets.custom_secrets,
        system_prompt,
        ..Default::default()
    })
}
