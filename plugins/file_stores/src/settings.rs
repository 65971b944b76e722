//! `FileSettingsStore`: one `settings.json` per user; the secret fields are sealed.
//!
//! On disk the document is the Settings JSON with the sealed fields (`llm_api_key`,
//! `search_api_key`, `sandbox_api_key`, `mcp_config`) removed and `sealed_secrets` added
//! (those fields encrypted together), plus `version`, which grows with every write. Writes
//! happen under the user directory's OS lock, so a versioned store from another host that
//! shares the state directory sees a conflict instead of losing a change.

use crate::{
    cache::{FileCache, Lookup},
    crypto::{self, Keyring, Sealed},
    fsutil::{self, Stamp},
};
use plugin_sdk::{
    models::{Settings, VersionedSettings},
    CallContext, ErrorCode, PluginError,
};
use serde_json::{Map, Value};
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

pub struct FileSettingsStore {
    root: PathBuf,
    keys: Arc<Keyring>,
    /// Decrypted settings by file, so a load of unchanged settings reads and decrypts nothing.
    cache: Arc<FileCache<VersionedSettings>>,
}

impl FileSettingsStore {
    pub(crate) fn new(root: PathBuf) -> Result<Self, PluginError> {
        let keys = Arc::new(Keyring::open(&root)?);
        Ok(Self { root, keys, cache: Arc::default() })
    }

    fn dir(&self, ctx: &CallContext) -> Result<PathBuf, PluginError> {
        fsutil::user_dir(&self.root, ctx.user_id())
    }
}

/// The stored settings and their version (0 when there are none; files from before versions
/// read as version 1).
fn read(keys: &Keyring, path: &Path, user: Option<&str>) -> Result<Option<(Stamp, VersionedSettings)>, PluginError> {
    let Some((stamp, bytes)) = fsutil::read_stamped(path).map_err(|e| fsutil::io_error("read settings", path, e))?
    else {
        return Ok(None);
    };
    let mut doc: Value = serde_json::from_slice(&bytes).map_err(|e| fsutil::corrupt(path, e))?;
    let version = doc.as_object_mut().and_then(|o| o.remove("version")).and_then(|v| v.as_u64()).unwrap_or(1);
    let settings = open_settings(keys, doc, user).map_err(|e| fsutil::corrupt(path, e))?;
    Ok(Some((stamp, VersionedSettings { version, settings })))
}

/// Writes `settings` as the next version, if the stored one is `expected` (any when `None`).
/// Under the directory's lock; the written document goes into `cache`.
fn write(
    keys: &Keyring,
    cache: &FileCache<VersionedSettings>,
    dir: &Path,
    user: Option<&str>,
    settings: &Settings,
    expected: Option<u64>,
) -> Result<u64, PluginError> {
    let path = dir.join("settings.json");
    let current = read(keys, &path, user)?.map_or(0, |(_, v)| v.version);
    if expected.is_some_and(|e| e != current) {
        return Err(PluginError::new(ErrorCode::CONFLICT, "the settings changed since they were read"));
    }
    let mut doc = seal_settings(keys, settings, user)?;
    let version = current + 1;
    doc["version"] = Value::from(version);
    let bytes = serde_json::to_vec_pretty(&doc).map_err(|e| PluginError::internal(e.to_string()))?;
    fsutil::write_atomic(&path, &bytes, 0o600).map_err(|e| fsutil::io_error("write settings", &path, e))?;
    match Stamp::of(&path) {
        Ok(Some(stamp)) => cache.put(&path, stamp, Arc::new(VersionedSettings { version, settings: settings.clone() })),
        _ => cache.forget(&path),
    }
    Ok(version)
}

/// Splits the secret fields off a Settings document and seals them.
pub(crate) fn seal_settings(keys: &Keyring, settings: &Settings, user: Option<&str>) -> Result<Value, PluginError> {
    let mut doc = serde_json::to_value(settings).map_err(|e| PluginError::internal(e.to_string()))?;
    let obj = doc.as_object_mut().ok_or_else(|| PluginError::internal("settings is not an object"))?;
    let mut secret = Map::new();
    for field in Settings::SEALED_FIELDS {
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
        Ok(self.load_versioned(ctx).await?.map(|v| v.settings))
    }

    async fn store(&self, ctx: CallContext, settings: Settings) -> Result<(), PluginError> {
        let dir = self.dir(&ctx)?;
        let (keys, cache) = (self.keys.clone(), self.cache.clone());
        fsutil::blocking(move || {
            fsutil::with_dir_lock(&dir, || write(&keys, &cache, &dir, ctx.user_id(), &settings, None))
        })
        .await
        .map(|_| ())
    }

    async fn load_versioned(&self, ctx: CallContext) -> Result<Option<VersionedSettings>, PluginError> {
        let path = self.dir(&ctx)?.join("settings.json");
        match self.cache.lookup(&path).map_err(|e| fsutil::io_error("stat settings", &path, e))? {
            Lookup::Hit(cached) => return Ok(Some((*cached).clone())),
            Lookup::Absent => return Ok(None),
            Lookup::Miss => {}
        }
        let (keys, cache) = (self.keys.clone(), self.cache.clone());
        fsutil::blocking(move || {
            let Some((stamp, settings)) = read(&keys, &path, ctx.user_id())? else { return Ok(None) };
            cache.put(&path, stamp, Arc::new(settings.clone()));
            Ok(Some(settings))
        })
        .await
    }

    async fn store_versioned(&self, ctx: CallContext, settings: Settings, expected: u64) -> Result<u64, PluginError> {
        let dir = self.dir(&ctx)?;
        let (keys, cache) = (self.keys.clone(), self.cache.clone());
        fsutil::blocking(move || {
            fsutil::with_dir_lock(&dir, || write(&keys, &cache, &dir, ctx.user_id(), &settings, Some(expected)))
        })
        .await
    }

    async fn health(&self) -> Result<String, PluginError> {
        let root = self.root.clone();
        fsutil::blocking(move || match std::fs::metadata(&root) {
            Ok(m) if m.is_dir() => Ok(format!("files under {}", root.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && plugin_sdk::read_only() => {
                Ok(format!("files under {} (made when the server starts)", root.display()))
            }
            Ok(_) => Err(PluginError::unavailable(format!("{} is not a directory", root.display()))),
            Err(e) => Err(PluginError::unavailable(format!("{}: {e}", root.display()))),
        })
        .await
    }
}
