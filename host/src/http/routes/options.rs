//! `/api/options/*` (OpenHands §2.3, §9.3; the SaaS keys of §10.2 in `saas` mode).

use super::super::{auth::authenticate, call_context, AppState, RequestId};
use crate::config::AppMode;
use crate::http::Principal;
use axum::{
    extract::{ConnectInfo, State},
    http::{request::Parts, HeaderMap},
    Json,
};
use plugin_api::models::FlagSubject;
use serde_json::{json, Value};
use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

const OPENHANDS_POSTHOG_KEY: &str = "phc_3ESMmY9SgqEAGBB6sMGK5ayYHkeUuknH2vP6FmWH9RA";

/// The caller when the request signs in (these routes are public, as in OpenHands), with the
/// headers its authentication sends back: a refreshed cookie must reach the browser, whose
/// old cookie's refresh token is used up.
async fn signed_in(state: &AppState, parts: &Parts, request_id: &RequestId) -> Option<(Principal, HeaderMap)> {
    let remote = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    authenticate(state, request_id, &parts.method, &parts.uri, &parts.headers, remote).await.ok()
}

/// A flag's variant as the web client reads `FEATURE_FLAGS`: `true`/`false` as booleans.
fn flag_value(variant: &str) -> Value {
    match variant {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        other => Value::String(other.to_owned()),
    }
}

/// `GET /api/options/config`: the deployment's configuration for the web client; for a
/// signed-in caller, `FEATURE_FLAGS` also holds their feature flags (which win over the
/// deployment's own flags of the same name).
pub(super) async fn config(State(state): State<AppState>, parts: Parts) -> (HeaderMap, Json<Value>) {
    let env = &state.server.env;
    let mut config = json!({
        "APP_MODE": state.app.app_mode().as_str(),
        "GITHUB_CLIENT_ID": env.github_app_client_id.clone().unwrap_or_default(),
        // OSS: OpenHands' public key, as OpenHands does; SaaS: the deployment's own or none
        // (the document's default is empty: no events to someone else's project).
        "POSTHOG_CLIENT_KEY": env.posthog_client_key.clone().unwrap_or_else(|| match state.app.app_mode() {
            AppMode::Oss => OPENHANDS_POSTHOG_KEY.to_owned(),
            AppMode::Saas => String::new(),
        }),
        "FEATURE_FLAGS": {
            "ENABLE_BILLING": env.enable_billing,
            "HIDE_LLM_SETTINGS": env.hide_llm_settings,
        },
    });
    if state.app.app_mode() == AppMode::Saas {
        config["APP_SLUG"] = json!(env.github_app_slug);
        config["STRIPE_PUBLISHABLE_KEY"] = json!(env.stripe_publishable_key.clone().unwrap_or_default());
        config["FEATURE_FLAGS"]["ENABLE_JIRA"] = json!(env.enable_jira);
        config["FEATURE_FLAGS"]["ENABLE_JIRA_DC"] = json!(env.enable_jira_dc);
        config["FEATURE_FLAGS"]["ENABLE_LINEAR"] = json!(env.enable_linear);
        let providers: Vec<&str> = [
            (env.github_app_client_id.is_some(), "github"),
            (env.gitlab_app_client_id.is_some(), "gitlab"),
            (env.bitbucket_app_client_id.is_some(), "bitbucket"),
            (env.enable_enterprise_sso, "enterprise_sso"),
        ]
        .into_iter()
        .filter_map(|(on, p)| on.then_some(p))
        .collect();
        config["PROVIDERS_CONFIGURED"] = json!(providers);
        if let Some(start) = &env.maintenance_start_time {
            config["MAINTENANCE"] = json!({ "startTime": start });
        }
        if let Some(url) = &env.auth_url {
            config["AUTH_URL"] = json!(url);
        }
    }
    let request_id = RequestId("options-config".to_owned());
    let mut headers = HeaderMap::new();
    if let Some((principal, sent)) = signed_in(&state, &parts, &request_id).await {
        headers = sent;
        let ctx = call_context(&principal, &request_id, &state.server);
        let subject = FlagSubject { email: principal.email.clone(), flags: Vec::new() };
        for (flag, variant) in state.app.feature_flags(&ctx, &subject).await {
            config["FEATURE_FLAGS"][flag] = flag_value(&variant);
        }
    }
    (headers, Json(config))
}

/// Models of the common providers that work with OpenHands (its verified ones and their
/// current siblings), as `provider/model`: what the web client's model picker offers.
const KNOWN_MODELS: &[&str] = &[
    "openai/gpt-5-2025-08-07",
    "openai/gpt-5-mini-2025-08-07",
    "openai/gpt-4.1",
    "openai/gpt-4.1-2025-04-14",
    "openai/gpt-4o",
    "openai/gpt-4o-mini",
    "openai/o3",
    "openai/o3-2025-04-16",
    "openai/o4-mini",
    "openai/o4-mini-2025-04-16",
    "openai/codex-mini-latest",
    "anthropic/claude-sonnet-4-5-20250929",
    "anthropic/claude-haiku-4-5-20251001",
    "anthropic/claude-opus-4-1-20250805",
    "anthropic/claude-opus-4-20250514",
    "anthropic/claude-sonnet-4-20250514",
    "anthropic/claude-3-7-sonnet-20250219",
    "anthropic/claude-3-5-sonnet-20241022",
    "anthropic/claude-3-5-haiku-20241022",
    "gemini/gemini-2.5-pro",
    "gemini/gemini-2.5-flash",
    "mistral/devstral-medium-2507",
    "mistral/devstral-small-2507",
    "mistral/devstral-small-2505",
    "mistral/mistral-large-latest",
    "deepseek/deepseek-chat",
    "deepseek/deepseek-reasoner",
    "groq/llama-3.3-70b-versatile",
    "groq/moonshotai/kimi-k2-instruct",
    "openrouter/anthropic/claude-sonnet-4.5",
    "openrouter/qwen/qwen3-coder",
    "xai/grok-4",
    "together_ai/Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8",
    "ollama/devstral",
    "ollama/qwen2.5-coder",
];

/// `GET /api/options/models`: the known models, the deployment's default, in SaaS mode the
/// LiteLLM proxy's models, and the caller's current model when the request signs in.
pub(super) async fn models(State(state): State<AppState>, parts: Parts) -> (HeaderMap, Json<Vec<String>>) {
    let env = &state.server.env;
    let mut models: BTreeSet<String> = KNOWN_MODELS.iter().map(|m| m.to_string()).collect();
    models.extend(env.litellm_default_model.clone());
    if state.app.app_mode() == AppMode::Saas {
        if let Some(url) = &env.lite_llm_api_url {
            models.extend(proxy_models(url, env.lite_llm_api_key.as_deref()).await);
        }
    }
    // Public as in OpenHands; a signed-in caller's own model is added.
    let request_id = RequestId("options-models".to_owned());
    let mut headers = HeaderMap::new();
    if let Some((principal, sent)) = signed_in(&state, &parts, &request_id).await {
        headers = sent;
        let ctx = call_context(&principal, &request_id, &state.server);
        if let Ok(Some(settings)) = state.app.load_settings(&ctx).await {
            models.extend(settings.llm_model.filter(|m| !m.trim().is_empty()));
        }
    }
    (headers, Json(models.into_iter().collect()))
}

/// The models of a LiteLLM proxy (`GET /models`, OpenAI's list shape) as `openhands/<id>`, the
/// name OpenHands SaaS gives its proxy's models; none when it does not answer in 3 s.
async fn proxy_models(url: &str, key: Option<&str>) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut request = client.get(format!("{url}/models")).timeout(Duration::from_secs(3));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let answer = match request.send().await.and_then(|r| r.error_for_status()) {
        Ok(r) => r.json::<Value>().await.ok(),
        Err(e) => {
            tracing::warn!(error = %e, "the LiteLLM proxy's model list is unavailable");
            None
        }
    };
    answer
        .and_then(|v| v["data"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .map(|id| format!("openhands/{}", id.trim_start_matches("litellm_proxy/")))
        .collect()
}

/// `GET /api/options/agents`: the one agent this server runs.
pub(super) async fn agents() -> Json<Vec<&'static str>> {
    Json(vec!["CodeActAgent"])
}

/// `GET /api/options/security-analyzers`: none are offered (confirmation mode works without).
pub(super) async fn security_analyzers() -> Json<Vec<&'static str>> {
    Json(Vec::new())
}
