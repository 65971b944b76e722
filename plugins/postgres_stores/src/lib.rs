//! Enterprise stores in PostgreSQL (OpenHands SaaS §10.6, with our improvements):
//! - `SaasSettingsStore`: `user_settings`, secret fields sealed together, a version checked on
//!   write;
//! - `SaasSecretsStore`: a row per custom secret and per provider token, each sealed;
//! - `SaasConversationStore`: `conversation_metadata` + `conversation_events`, dense ids under
//!   a row lock so several hosts can append to one conversation;
//! - `SaasFeedbackRoutes` (`routes`): users' ratings of those conversations and their events.
//!
//! Every query is scoped by the caller's user id. Secrets are sealed with per-user keys
//! derived from a master key (see `pg_common::crypto`), rotatable with `oh-host rotate-keys`. Migrations
//! (`migrations/`, embedded) run on first use under an advisory lock, and with `oh-host migrate`.

mod admin;
mod cache;
mod config;
mod conversations;
mod db;
mod feedback;
mod secrets;
mod settings;

pub use conversations::SaasConversationStore;
pub use feedback::SaasFeedbackRoutes;
pub use pg_common::crypto::{Binding, Keyring};
pub use secrets::SaasSecretsStore;
pub use settings::SaasSettingsStore;

use config::Config;
use plugin_sdk::Registry;

pub fn register(r: &mut Registry) {
    r.settings_store(
        "SaasSettingsStore",
        "PostgreSQL user_settings, per user, secret fields encrypted",
        |config, _| Ok(SaasSettingsStore { db: db::open(&Config::parse(config)?)?, cache: Default::default() }),
    );
    r.secrets_store(
        "SaasSecretsStore",
        "PostgreSQL user_secrets, per user, envelope-encrypted with key rotation",
        |config, _| Ok(SaasSecretsStore { db: db::open(&Config::parse(config)?)?, cache: Default::default() }),
    );
    r.conversation_store(
        "SaasConversationStore",
        "PostgreSQL conversation metadata and event log, every query filtered by user",
        |config, _| Ok(SaasConversationStore { db: db::open(&Config::parse(config)?)? }),
    );
    r.routes(
        "SaasFeedbackRoutes",
        "POST /feedback/conversation, GET /feedback/conversation/{id}/batch: ratings of a user's conversations",
        |config, _| {
            let c = Config::parse(config)?;
            let database = c.pool().open(c.migrate)?;
            Ok(SaasFeedbackRoutes { database })
        },
    );
}

plugin_sdk::export_plugin!(register);
