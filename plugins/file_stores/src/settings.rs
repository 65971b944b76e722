//! `FileSettingsStore`: one `settings.json` per user; the secret fields are sealed.
//!
//! On disk the document is the Settings JSON with `llm_api_key`, `search_api_key` and
//! `sandbox_api_key` removed and `sealed_secrets` added: those three fields encrypted together.

use crate::{
    crypto::{self, Keyring, Sealed},
    fsutil,
};
use plugin_sdk::{models::Settings, CallContext, PluginError};
use serde_json::{Map, Value};
use std::{path::PathBuf, sync::Arc};

pub struct FileSettingsStore {
    root: PathBuf,
    keys: Arc<Keyring>,
}

impl FileSettingsStore {
    pub(crate) fn new(root: PathBuf) -> Result<Self, PluginError> {
        let keys = Arc::new(Keyring::open(&root)?);
        Ok(Self { root, keys })
    }

    fn path(&self, ctx: &CallContext) -> Result<PathBuf, PluginError> {
        Ok(fsutil::user_dir(&self.root, ctx.user_id())?.join("settings.json"))
    }
}

/// Splits the secret fields off a Settings document and seals them.
pub(crate) fn seal_settings(keys: &Keyring, settings: &Settings, user: Option<&str>) -> Result<Value, PluginError> {
    let mut doc = serde_json::to_value(settings).map_err(|e| PluginError::internal(e.to_string()))?;
    let obj = doc.as_object_mut().ok_or_else(|| PluginError::internal("settings is not an object"))?;
    let mut secret = Map::new();
    for field in Settings::SECRET_FIELDS {
        if let Some(value) = obj.remove(field) {
            secret.insert(field.to_owned(), value);
        }
    }
    let sealed = keys.seal(Value::Object(secret).to_string().as_bytes(), &crypto::aad("settings", user))?;
    obj.insert(
        "sealed_secrets".to_owned(),
        serde_json::to_value(sealed).map_err(|e| PluginError::internal(e.to_string()))?,
    );
    Ok(doc)
}

pub(crate) fn open_settings(keys: &Keyring, mut doc: Value, user: Option<&str>) -> Result<Settings, String> {
    let obj = doc.as_object_mut().ok_or("not a JSON object")?;
    if let Some(sealed) = obj.remove("sealed_secrets") {
        let sealed: Sealed = serde_json::from_value(sealed).map_err(|e| format!("bad sealed_secrets: {e}"))?;
        let plain = keys.open_sealed(&sealed, &crypto::aad("settings", user)).map_err(|e| e.message.to_string())?;
        let secret: Map<String, Value> = serde_json::from_slice(&plain).map_err(|e| e.to_string())?;
        obj.extend(secret);
    }
    serde_json::from_value(doc).map_err(|e| e.to_string())
}

impl plugin_sdk::SettingsStore for FileSettingsStore {
    async fn load(&self, ctx: CallContext) -> Result<Option<Settings>, PluginError> {
        let path = self.path(&ctx)?;
        let keys = self.keys.clone();
        fsutil::blocking(move || {
            let Some(bytes) = fsutil::read_optional(&path).map_err(|e| fsutil::io_error("read settings", &path, e))?
            else {
                return Ok(None);
            };
            let doc: Value = serde_json::from_slice(&bytes).map_err(|e| fsutil::corrupt(&path, e))?;
            open_settings(&keys, doc, ctx.user_id()).map(Some).map_err(|e| fsutil::corrupt(&path, e))
        })
        .await
    }

    async fn store(&self, ctx: CallContext, settings: Settings) -> Result<(), PluginError> {
        let path = self.path(&ctx)?;
        let doc = seal_settings(&self.keys, &settings, ctx.user_id())?;
        fsutil::blocking(move || {
            let bytes = serde_json::to_vec_pretty(&doc).map_err(|e| PluginError::internal(e.to_string()))?;
            fsutil::write_atomic(&path, &bytes, 0o600).map_err(|e| fsutil::io_error("write settings", &path, e))
        })
        .await
    }

    async fn health(&self) -> Result<String, PluginError> {
        let root = self.root.clone();
        fsutil::blocking(move || match std::fs::metadata(&root) {
            Ok(m) if m.is_dir() => Ok(format!("files under {}", root.display())),
            Ok(_) => Err(PluginError::unavailable(format!("{} is not a directory", root.display()))),
            Err(e) => Err(PluginError::unavailable(format!("{}: {e}", root.display()))),
        })
        .await
    }
}
