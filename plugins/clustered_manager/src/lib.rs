//! `ClusteredConversationManager`: agent loops spread over any number of hosts sharing one
//! conversation store and one Redis (OpenHands' enterprise `ClusteredConversationManager`,
//! with ownership made safe).
//!
//! - **Ownership**: one node runs a conversation's loop, holding a lease in Redis with a
//!   fencing token; every event it stores carries the token, and the store refuses a lower
//!   one, so a node paused past its lease cannot write after its successor did.
//! - **Any node serves any conversation**: the owner publishes each event (stored ones with
//!   their id, and streaming deltas) on a Redis pub/sub channel per conversation; other nodes
//!   relay it to their sockets, filling any gap from the store. A user message sent on another node is
//!   stored there (acknowledged means stored), then the owner is told through the
//!   conversation's command stream.
//! - **Failover**: every node's reaper takes over conversations whose lease expired (owner
//!   dead) or was handed over (owner shutting down), resuming them from the stored history.
//! - **Limits and idle** hold cluster-wide (Redis scripts; sockets counted per node).
//! - **Redis down**: running loops go on storing their events; starting a conversation
//!   answers 503; all resumes when Redis is back, including a Redis that lost its data.
//!
//! The agent itself is `agent_loop::session`, the same code the standalone manager runs.

mod config;
mod kv;
mod relay;

mod manager;
mod node;
mod presence;

pub use manager::ClusteredConversationManager;
use plugin_sdk::Registry;

pub fn register(r: &mut Registry) {
    r.conversation_manager(
        "ClusteredConversationManager",
        "agent loops over several hosts: Redis leases with fencing, a gap-free relay, failover",
        |config, services| ClusteredConversationManager::new(services, config),
    );
}

plugin_sdk::export_plugin!(register);
