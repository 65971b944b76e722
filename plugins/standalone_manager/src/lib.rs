//! `StandaloneConversationManager`: agent loops in this process (OpenHands §6.3).
//!
//! One task per running conversation owns its history and runs turns one at a time; every
//! event it emits is stored through the host's `conversation_store` (which gives it its dense
//! id), then pushed to the conversation's subscribers (the host's socket.io connections) and to
//! the monitoring listeners. Streaming deltas and status updates are pushed live only.

mod config;
mod manager;

pub use manager::*;
use plugin_sdk::Registry;

pub fn register(r: &mut Registry) {
    r.conversation_manager(
        "StandaloneConversationManager",
        "agent loops in this process, per-user limit, idle close (OpenHands StandaloneConversationManager)",
        |config, services| StandaloneConversationManager::new(services, config::parse(config)?),
    );
}

plugin_sdk::export_plugin!(register);
