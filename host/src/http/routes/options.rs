//! `/api/options/config` (OpenHands §2.3).

use crate::{env, http::AppState};
use axum::{extract::State, Json};
use serde_json::{json, Value};

const OPENHANDS_POSTHOG_KEY: &str = "phc_3ESMmY9SgqEAGBB6sMGK5ayYHkeUuknH2vP6FmWH9RA";

pub(super) async fn config(State(state): State<AppState>) -> Json<Value> {
    let flag = |name: &str| env::get(name).is_some_and(|v| v == "true");
    Json(json!({
        "APP_MODE": state.registry.app_mode.as_str(),
        "GITHUB_CLIENT_ID": env::get(env::GITHUB_APP_CLIENT_ID).unwrap_or_default(),
        "POSTHOG_CLIENT_KEY": env::get(env::POSTHOG_CLIENT_KEY).unwrap_or_else(|| OPENHANDS_POSTHOG_KEY.to_owned()),
        "FEATURE_FLAGS": {
            "ENABLE_BILLING": flag(env::ENABLE_BILLING),
            "HIDE_LLM_SETTINGS": flag(env::HIDE_LLM_SETTINGS),
        },
    }))
}
