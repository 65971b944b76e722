//! `FileSecretsStore`: one `secrets.json` per user, the whole document sealed. Every write
//! is a read-modify-write under the user directory's OS lock, so hosts sharing the state
//! directory never lose each other's changes.

use crate::{
    crypto::{self, Keyring, Sealed},
    fsutil,
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
}

impl FileSecretsStore {
    pub(crate) fn new(root: PathBuf) -> Result<Self, PluginError> {
        let keys = Arc::new(Keyring::open(&root)?);
        Ok(Self { root, keys })
    }

    fn dir(&self, ctx: &CallContext) -> Result<PathBuf, PluginError> {
        fsutil::user_dir(&self.root, ctx.user_id())
    }
}

fn read(keys: &Keyring, path: &Path, user: Option<&str>) -> Result<Option<Secrets>, PluginError> {
    let Some(bytes) = fsutil::read_optional(path).map_err(|e| fsutil::io_error("read secrets", path, e))? else {
        return Ok(None);
    };
    let sealed: Sealed = serde_json::from_slice(&bytes).map_err(|e| fsutil::corrupt(path, e))?;
    let plain =
        keys.open_sealed(&sealed, &crypto::aad("secrets", user)).map_err(|e| fsutil::corrupt(path, e.message))?;
    let mut secrets: Secrets = serde_json::from_slice(&plain).map_err(|e| fsutil::corrupt(path, e))?;
    // OpenHands drops provider tokens without a token on load.
    secrets.provider_tokens.retain(|_, t| t.token.as_deref().is_some_and(|t| !t.is_empty()) || t.user_id.is_some());
    Ok(Some(secrets))
}

fn write(keys: &Keyring, path: &Path, user: Option<&str>, secrets: &Secrets) -> Result<(), PluginError> {
    let plain = serde_json::to_vec(secrets).map_err(|e| PluginError::internal(e.to_string()))?;
    let sealed = keys.seal(&plain, &crypto::aad("secrets", user))?;
    let bytes = serde_json::to_vec_pretty(&sealed).map_err(|e| PluginError::internal(e.to_string()))?;
    fsutil::write_atomic(path, &bytes, 0o600).map_err(|e| fsutil::io_error("write secrets", path, e))
}

impl plugin_sdk::SecretsStore for FileSecretsStore {
    async fn load(&self, ctx: CallContext) -> Result<Option<Secrets>, PluginError> {
        let path = self.dir(&ctx)?.join("secrets.json");
        let keys = self.keys.clone();
        fsutil::blocking(move || read(&keys, &path, ctx.user_id())).await
    }

    async fn store(&self, ctx: CallContext, secrets: Secrets) -> Result<(), PluginError> {
        let dir = self.dir(&ctx)?;
        let keys = self.keys.clone();
        fsutil::blocking(move || {
            fsutil::with_dir_lock(&dir, || write(&keys, &dir.join("secrets.json"), ctx.user_id(), &secrets))
        })
        .await
    }

    async fn update(&self, ctx: CallContext, change: SecretsChange) -> Result<(), PluginError> {
        let dir = self.dir(&ctx)?;
        let keys = self.keys.clone();
        fsutil::blocking(move || {
            fsutil::with_dir_lock(&dir, || {
                let path = dir.join("secrets.json");
                let mut secrets = read(&keys, &path, ctx.user_id())?.unwrap_or_default();
                change.apply(&mut secrets)?;
                write(&keys, &path, ctx.user_id(), &secrets)
            })
        })
        .await
    }
}
