//! Integrations (OpenHands §10.9 `integration/*`, with the seed's webhook duties): signed
//! deliveries from GitHub, GitLab, Slack, Jira, Jira DC and Linear.
//!
//! `Integrations` (`routes`) mounts the route of each enabled source. A delivery is checked on
//! its raw body (`verify.rs`), rate-limited per source in Redis, stored in the durable inbox
//! (`inbox.rs`, deduplicated by the provider's delivery id) and answered 2xx at once; workers
//! process it (`work.rs`: a linked user's mention of the agent starts a conversation, whose
//! answer goes back as a comment, a note or a thread reply), retrying with backoff and dead-lettering
//! what keeps failing. Operators list and replay dead letters on the admin listener
//! (`/internal/webhooks/...`, also `oh-host webhooks list|replay ID`) and link identities
//! (`/internal/integrations/links`). Every delivery and decision is in `audit_log`.

mod config;
mod github_install;
mod gitlab_hooks;
mod inbox;
mod oauth;
mod providers;
mod ratelimit;
mod routes;
mod slack_install;
mod slack_link;
pub mod verify;
mod work;
mod workspaces;

use config::Config;
use plugin_sdk::Registry;
pub use routes::Integrations;

pub fn register(r: &mut Registry) {
    r.routes(
        "Integrations",
        "signed webhooks (GitHub, GitLab, Slack, Jira, Jira DC, Linear) into a durable inbox; answers posted back",
        |config, services| Integrations::new(Config::parse(config)?, services),
    );
}

plugin_sdk::export_plugin!(register);
