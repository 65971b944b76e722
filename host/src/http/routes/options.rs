//! `/api/options/config` (OpenHands §2.3, and the SaaS keys of §10.2 in `saas` mode).

use crate::{config::AppMode, env, http::AppState};
use axum::{extract::State, Json};
use serde_json::{json, Value};

const OPENHANDS_POSTHOG_KEY: &str = "phc_3ESMmY9SgqEAGBB6sMGK5ayYHkeUuknH2vP6FmWH9RA";

fn flag(name: &str) -> bool {
    env::get(name).is_some_and(|v| v == "true" || v == "1")
}

pub(super) async fn config(State(state): State<AppState>) -> Json<Value> {
    let mut config = json!({
        "APP_MODE": state.registry.app_mode.as_str(),
        "GITHUB_CLIENT_ID": env::get(env::GITHUB_APP_CLIENT_ID).unwrap_or_default(),
        "POSTHOG_CLIENT_KEY": env::get(env::POSTHOG_CLIENT_KEY).unwrap_or_else(|| OPENHANDS_POSTHOG_KEY.to_owned()),
        "FEATURE_FLAGS": {
            "ENABLE_BILLING": flag(env::ENABLE_BILLING),
            "HIDE_LLM_SETTINGS": flag(env::HIDE_LLM_SETTINGS),
        },
    });
    if state.registry.app_mode == AppMode::Saas {
        config["APP_SLUG"] = json!(env::get(env::GITHUB_APP_SLUG));
        for f in [env::ENABLE_JIRA, env::ENABLE_JIRA_DC, env::ENABLE_LINEAR] {
            config["FEATURE_FLAGS"][f] = json!(flag(f));
        }
        let providers: Vec<&str> = [
            (env::GITHUB_APP_CLIENT_ID, "github"),
            (env::GITLAB_APP_CLIENT_ID, "gitlab"),
            (env::BITBUCKET_APP_CLIENT_ID, "bitbucket"),
            (env::ENABLE_ENTERPRISE_SSO, "enterprise_sso"),
        ]
        .into_iter()
        .filter(|(var, _)| env::get(var).is_some())
        .map(|(_, p)| p)
        .collect();
        config["PROVIDERS_CONFIGURED"] = json!(providers);
        if let Some(start) = env::get(env::MAINTENANCE_START_TIME) {
            config["MAINTENANCE"] = json!({ "startTime": start });
        }
        if let Some(url) = env::get(env::AUTH_URL) {
            config["AUTH_URL"] = json!(url);
        }
    }
    Json(config)
}
