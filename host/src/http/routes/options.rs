//! `/api/options/config` (OpenHands §2.3, and the SaaS keys of §10.2 in `saas` mode).

use crate::{config::AppMode, http::AppState};
use axum::{extract::State, Json};
use serde_json::{json, Value};

const OPENHANDS_POSTHOG_KEY: &str = "phc_3ESMmY9SgqEAGBB6sMGK5ayYHkeUuknH2vP6FmWH9RA";

pub(super) async fn config(State(state): State<AppState>) -> Json<Value> {
    let env = &state.server.env;
    let mut config = json!({
        "APP_MODE": state.registry.app_mode().as_str(),
        "GITHUB_CLIENT_ID": env.github_app_client_id.clone().unwrap_or_default(),
        "POSTHOG_CLIENT_KEY": env.posthog_client_key.clone().unwrap_or_else(|| OPENHANDS_POSTHOG_KEY.to_owned()),
        "FEATURE_FLAGS": {
            "ENABLE_BILLING": env.enable_billing,
            "HIDE_LLM_SETTINGS": env.hide_llm_settings,
        },
    });
    if state.registry.app_mode() == AppMode::Saas {
        config["APP_SLUG"] = json!(env.github_app_slug);
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
    Json(config)
}
