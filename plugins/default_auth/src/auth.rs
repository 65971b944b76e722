//! The one local user: no user id, no email, no credentials.

use plugin_sdk::{
    plugin_api::abi_stable::std_types::{RNone, RVec},
    AuthOutcome, AuthRequest, AuthType, CallContext, PluginError,
};

pub struct DefaultUserAuth;

impl plugin_sdk::UserAuth for DefaultUserAuth {
    async fn authenticate(&self, _ctx: CallContext, _request: AuthRequest) -> Result<AuthOutcome, PluginError> {
        Ok(AuthOutcome { user_id: RNone, email: RNone, auth_type: AuthType::NONE, response_headers: RVec::new() })
    }

    async fn health(&self) -> Result<String, PluginError> {
        Ok("single user".to_owned())
    }
}
