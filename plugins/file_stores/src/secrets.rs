//! `FileSecretsStore`: one `secrets.json` per user, the whole document sealed. Every write
//! is a read-modify-write under the user directory's OS lock, so hosts sharing the state
//! directory never lose each other's changes.

use crate::{
    cache::{FileCache, Lookup},
    crypto::{self, Keyring, Sealed},
    fsutil::{self, Stamp},
};
use plugin_sdk::{
    models::{Secrets, SecretsChange},
    CallContext, PluginError,
};
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

pub struct FileSecretsStore {
    root: PathBuf,
    keys: Arc<Keyring>,
    /// Decrypted secrets by file, so a load of unchanged secrets reads and decrypts nothing.
    cache: Arc<FileCache<Secrets>>,
}

impl FileSecretsStore {
    pub(crate) fn new(root: PathBuf) -> Result<Self, PluginError> {
        let keys = Arc::new(Keyring::open(&root)?);
        Ok(Self { root, keys, cache: Arc::default() })
    }

    fn dir(&self, ctx: &CallContext) -> Result<PathBuf, PluginError> {
        fsutil::user_dir(&self.root, ctx.user_id())
    }
}

fn read(keys: &Keyring, path: &Path, user: Option<&str>) -> Result<Option<(Stamp, Secrets)>, PluginError> {
    let Some((stamp, bytes)) = fsutil::read_stamped(path).map_err(|e| fsutil::io_error("read secrets", path, e))?
    else {
        return Ok(None);
    };
    let sealed: Sealed = serde_json::from_slice(&bytes).map_err(|e| fsutil::corrupt(path, e))?;
    let plain =
        keys.open_sealed(&sealed, &crypto::aad("secrets", user)).map_err(|e| fsutil::corrupt(path, e.message))?;
    let mut secrets: Secrets = serde_json::from_slice(&plain).map_err(|e| fsutil::corrupt(path, e))?;
    // OpenHands drops provider tokens without a token on load.
    retain_live_tokens(&mut secrets);
    Ok(Some((stamp, secrets)))
}

/// OpenHands drops provider tokens without a token on load.
fn retain_live_tokens(secrets: &mut Secrets) {
    secrets.provider_tokens.retain(|_, t| t.token.as_deref().is_some_and(|t| !t.is_empty()) || t.user_id.is_some());
}

/// Under the directory's lock; the written document goes into `cache` as a load would see it.
fn write(
    keys: &Keyring,
    cache: &FileCache<Secrets>,
    path: &Path,
    user: Option<&str>,
    secrets: &Secrets,
) -> Result<(), PluginError> {
    let plain = serde_json::to_vec(secrets).map_err(|e| PluginError::internal(e.to_string()))?;
    let sealed = keys.seal(&plain, &crypto::aad("secrets", user))?;
    let bytes = serde_json::to_vec_pretty(&sealed).map_err(|e| PluginError::internal(e.to_string()))?;
    fsutil::write_atomic(path, &bytes, 0o600).map_err(|e| fsutil::io_error("write secrets", path, e))?;
    match Stamp::of(path) {
        Ok(Some(stamp)) => {
            let mut loaded = secrets.clone();
            retain_live_tokens(&mut loaded);
            cache.put(path, stamp, Arc::new(loaded));
        }
        _ => cache.forget(path),
    }
    Ok(())
}

impl plugin_sdk::SecretsStore for FileSecretsStore {
    async fn load(&self, ctx: CallContext) -> Result<Option<Secrets>, PluginError> {
        let path = self.dir(&ctx)?.join("secrets.json");
        match self.cache.lookup(&path).map_err(|e| fsutil::io_error("stat secrets", &path, e))? {
            Lookup::Hit(cached) => return Ok(Some((*cached).clone())),
            Lookup::Absent => return Ok(None),
            Lookup::Miss => {}
        }
        let (keys, cache) = (self.keys.clone(), self.cache.clone());
        fsutil::blocking(move || {
            let Some((stamp, secrets)) = read(&keys, &path, ctx.user_id())? else { return Ok(None) };
            cache.put(&path, stamp, Arc::new(secrets.clone()));
            Ok(Some(secrets))
        })
        .await
    }

    async fn store(&self, ctx: CallContext, secrets: Secrets) -> Result<(), PluginError> {
        let dir = self.dir(&ctx)?;
        let (keys, cache) = (self.keys.clone(), self.cache.clone());
        fsutil::blocking(move || {
            fsutil::with_dir_lock(&dir, || write(&keys, &cache, &dir.join("secrets.json"), ctx.user_id(), &secrets))
        })
        .await
    }

    async fn update(&self, ctx: CallContext, change: SecretsChange) -> Result<(), PluginError> {
        let dir = self.dir(&ctx)?;
        let (keys, cache) = (self.keys.clone(), self.cache.clone());
        fsutil::blocking(move || {
            fsutil::with_dir_lock(&dir, || {
                let path = dir.join("secrets.json");
                let mut secrets = read(&keys, &path, ctx.user_id())?.map(|(_, s)| s).unwrap_or_default();
                change.apply(&mut secrets)?;
                write(&keys, &cache, &path, ctx.user_id(), &secrets)
            })
        })
        .await
    }
}
