//! The manager's `config` table: `agent_loop`'s `ManagerConfig`, the keys every manager built
//! on the agent loop takes (`docs/configuration.md`), unknown keys refused.

use plugin_sdk::PluginError;

pub(crate) use agent_loop::config::ManagerConfig as Config;

pub(crate) fn parse(json: &str) -> Result<Config, PluginError> {
    Config::parse(json)
}
