//! `FileSecretsStore`: one `secrets.json` per user, the whole document sealed.

use crate::{
    crypto::{self, Keyring, Sealed},
    fsutil,
};
use plugin_sdk::{models::Secrets, CallContext, PluginError};
use std::{path::PathBuf, sync::Arc};

pub struct FileSecretsStore {
    root: PathBuf,
    keys: Arc<Keyring>,
}

impl FileSecretsStore {
    pub(crate) fn new(root: PathBuf) -> Result<Self, PluginError> {
        let keys = Arc::new(Keyring::open(&root)?);
        Ok(Self { root, keys })
    }

    fn path(&self, ctx: &CallContext) -> Result<PathBuf, PluginError> {
        Ok(fsutil::user_dir(&self.root, ctx.user_id())?.join("secrets.json"))
    }
}

impl plugin_sdk::SecretsStore for FileSecretsStore {
    async fn load(&self, ctx: CallContext) -> Result<Option<Secrets>, PluginError> {
        let path = self.path(&ctx)?;
        let keys = self.keys.clone();
        fsutil::blocking(move || {
            let Some(bytes) = fsutil::read_optional(&path).map_err(|e| fsutil::io_error("read secrets", &path, e))?
            else {
                return Ok(None);
            };
            let sealed: Sealed = serde_json::from_slice(&bytes).map_err(|e| fsutil::corrupt(&path, e))?;
            let plain = keys
                .open_sealed(&sealed, &crypto::aad("secrets", ctx.user_id()))
                .map_err(|e| fsutil::corrupt(&path, e.message))?;
            let mut secrets: Secrets = serde_json::from_slice(&plain).map_err(|e| fsutil::corrupt(&path, e))?;
            // OpenHands drops provider tokens without a token on load.
            secrets
                .provider_tokens
                .retain(|_, t| t.token.as_deref().is_some_and(|t| !t.is_empty()) || t.user_id.is_some());
            Ok(Some(secrets))
        })
        .await
    }

    async fn store(&self, ctx: CallContext, secrets: Secrets) -> Result<(), PluginError> {
        let path = self.path(&ctx)?;
        let plain = serde_json::to_vec(&secrets).map_err(|e| PluginError::internal(e.to_string()))?;
        let sealed = self.keys.seal(&plain, &crypto::aad("secrets", ctx.user_id()))?;
        fsutil::blocking(move || {
            let bytes = serde_json::to_vec_pretty(&sealed).map_err(|e| PluginError::internal(e.to_string()))?;
            fsutil::write_atomic(&path, &bytes, 0o600).map_err(|e| fsutil::io_error("write secrets", &path, e))
        })
        .await
    }
}
