//! `DefaultUserAuth`: the single-user mode of OpenHands (§7.2). Every request is the one
//! local user, with no user id, no email and no credentials; stores keep their files at the
//! root of the state dir.

use plugin_sdk::{
    plugin_api::abi_stable::std_types::{RNone, RVec},
    AuthOutcome, AuthRequest, AuthType, CallContext, PluginError, Registry,
};
use serde::Deserialize;

/// `DefaultUserAuth` takes no settings; an empty table is the only valid config.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {}

pub struct DefaultUserAuth;

impl plugin_sdk::UserAuth for DefaultUserAuth {
    async fn authenticate(&self, _ctx: CallContext, _request: AuthRequest) -> Result<AuthOutcome, PluginError> {
        Ok(AuthOutcome { user_id: RNone, email: RNone, auth_type: AuthType::NONE, response_headers: RVec::new() })
    }

    async fn health(&self) -> Result<String, PluginError> {
        Ok("single user".to_owned())
    }
}

pub fn register(r: &mut Registry) {
    r.user_auth("DefaultUserAuth", "single user, no credentials (OpenHands DefaultUserAuth)", |config, _| {
        let Config {} = plugin_sdk::parse_config(config)?;
        Ok(DefaultUserAuth)
    });
}

plugin_sdk::export_plugin!(register);
