//! `DefaultUserAuth`: the single-user mode of OpenHands (§7.2). Every request is the one
//! local user, with no user id, no email and no credentials; stores keep their files at the
//! root of the state dir.

mod auth;
mod config;

pub use auth::DefaultUserAuth;
use plugin_sdk::Registry;

pub fn register(r: &mut Registry) {
    r.user_auth("DefaultUserAuth", "single user, no credentials (OpenHands DefaultUserAuth)", |config, _| {
        let config::Config {} = config::parse(config)?;
        Ok(DefaultUserAuth)
    });
}

plugin_sdk::export_plugin!(register);
