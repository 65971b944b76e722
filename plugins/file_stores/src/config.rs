//! Configuration of the file stores (the `config` table of their `plugins.toml` entries).

use plugin_sdk::{PluginError, Services};
use serde::Deserialize;
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::Mutex,
};

/// Removes the temp files a crash left under `root`, once per process (the three stores
/// usually share a root), on a thread of its own: the walk visits every file under the root,
/// which with 100,000 conversations takes seconds a starting host should not wait. Serving
/// meanwhile is safe: only files of processes that are gone are removed, and a reader never
/// opens a temp file.
fn clean_once(root: &Path) {
    static CLEANED: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
    let mut cleaned = CLEANED.lock().unwrap_or_else(|e| e.into_inner());
    if cleaned.get_or_insert_with(HashSet::new).insert(root.to_path_buf()) {
        let root = root.to_path_buf();
        // This process writes under `root` only through stores made after this call; a second
        // back, because a file's times come from the kernel's coarse clock.
        let since = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
        let walk = move || {
            let removed = crate::fsutil::remove_stale_temp_files(&root, since);
            if removed > 0 {
                tracing::info!(root = %root.display(), removed, "removed temp files left by a crash");
            }
        };
        if let Err(e) = std::thread::Builder::new().name("file-stores-clean".into()).spawn(walk) {
            tracing::warn!(error = %e, "cannot start the cleaning of temp files left by a crash");
        }
    }
}

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
        // `oh-host check` writes nothing: the root is made (and cleaned) when serving.
        if !plugin_sdk::read_only() {
            std::fs::create_dir_all(&root)
                .map_err(|e| PluginError::invalid_config(format!("cannot create root {}: {e}", root.display())))?;
            clean_once(&root);
        }
        Ok((config, root))
    }
}
