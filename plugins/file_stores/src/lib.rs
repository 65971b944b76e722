//! Bundled OSS stores: settings, secrets and conversations as files under the state dir.
//!
//! - `FileSettingsStore`: `settings.json` per user; the secret fields sealed.
//! - `FileSecretsStore`: `secrets.json` per user, sealed whole.
//! - `FileConversationStore`: metadata plus an append-only event log per conversation.
//!
//! Single-user mode (no user id) keeps files at the root as OpenHands does; with a user id
//! everything lives under `users/<id>/`. Every write is atomic (temp file, fsync, rename).
//! Loads of settings and secrets that did not change since they were read cost a `stat`
//! (`cache.rs`); a search page costs the page (`index.rs`).

mod cache;
mod config;
mod conversations;
mod crypto;
mod fsutil;
mod index;
mod secrets;
mod settings;

pub use conversations::FileConversationStore;
pub use secrets::FileSecretsStore;
pub use settings::FileSettingsStore;

use config::FileStoreConfig;
use plugin_sdk::Registry;

/// Registers the three stores (also used by benchmarks that link this crate statically).
pub fn register(r: &mut Registry) {
    r.settings_store(
        "FileSettingsStore",
        "settings.json per user under the state dir, secret fields encrypted",
        |config, services| {
            let (_, root) = FileStoreConfig::parse(config, &services)?;
            FileSettingsStore::new(root)
        },
    );
    r.secrets_store(
        "FileSecretsStore",
        "secrets.json per user under the state dir, encrypted with a local key file",
        |config, services| {
            let (_, root) = FileStoreConfig::parse(config, &services)?;
            FileSecretsStore::new(root)
        },
    );
    r.conversation_store(
        "FileConversationStore",
        "metadata.json and an append-only event log per conversation",
        |config, services| {
            let (_, root) = FileStoreConfig::parse(config, &services)?;
            Ok(FileConversationStore::new(root))
        },
    );
}

plugin_sdk::export_plugin!(register);

#[cfg(test)]
mod tests;
