//! `DefaultUserAuth` takes no settings; an empty table is the only valid config.

use plugin_sdk::PluginError;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {}

pub(crate) fn parse(json: &str) -> Result<Config, PluginError> {
    plugin_sdk::parse_config(json)
}
