//! Configuration of the file stores (the `config` table of their `plugins.toml` entries).

use plugin_sdk::{PluginError, Services};
use serde::Deserialize;
use std::path::PathBuf;

/// Shared by `FileSettingsStore`, `FileSecretsStore` and `FileConversationStore`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileStoreConfig {
    /// Root directory of the files; default: the host's `[server] state_dir`.
    #[serde(default)]
    pub(crate) root: Option<PathBuf>,
}

impl FileStoreConfig {
    pub(crate) fn parse(config_json: &str, services: &Services) -> Result<(FileStoreConfig, PathBuf), PluginError> {
        let config: FileStoreConfig = plugin_sdk::parse_config(config_json)?;
        let root = config.root.clone().or_else(|| services.state_dir()).ok_or_else(|| {
            PluginError::invalid_config(
                "no `root` given and the host has no state_dir; set config = { root = \"/path\" }",
            )
        })?;
        if root.as_os_str().is_empty() {
            return Err(PluginError::invalid_config("`root` is empty; set it to a directory"));
        }
        std::fs::create_dir_all(&root)
            .map_err(|e| PluginError::invalid_config(format!("cannot create root {}: {e}", root.display())))?;
        Ok((config, root))
    }
}
