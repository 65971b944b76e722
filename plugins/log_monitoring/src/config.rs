//! `LogMonitoringListener`'s `config` table.

use plugin_sdk::PluginError;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// `debug` (default) or `info`: the level of the per-event lines (one per stored
    /// conversation event). The other hooks log at `info`.
    #[serde(default = "default_level")]
    level: String,
}

fn default_level() -> String {
    "debug".to_owned()
}

impl Config {
    /// Whether the per-event lines are at `debug` (else `info`).
    pub(crate) fn debug(&self) -> Result<bool, PluginError> {
        match self.level.as_str() {
            "info" => Ok(false),
            "debug" => Ok(true),
            other => Err(PluginError::invalid_config(format!("level `{other}`: use \"info\" or \"debug\""))),
        }
    }
}

pub(crate) fn parse(json: &str) -> Result<Config, PluginError> {
    plugin_sdk::parse_config(json)
}
