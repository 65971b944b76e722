//! `SaaSMonitoringListener`: OpenHands' enterprise monitoring (`SaaSMonitoringListener`).
//!
//! - PostHog product analytics (`posthog`): conversation created, agent session start,
//!   agent state errors, and what other plugins capture (sign-in, API key created), with the
//!   user as distinct id; users who declined analytics send nothing.
//! - A/B experiments (`experiments`) on the model and the system prompt, answered to the host
//!   when a conversation starts, recorded in PostgreSQL and reported to PostHog.
//! - OpenHands' SaaS metrics in the host's `/internal/metrics`: `saas_agent_status_errors`,
//!   `saas_agent_session_start` (histogram, by success), `saas_create_conversation`,
//!   `saas_running_agent_loops`.
//!
//! A hook only queues or counts: it never waits on PostHog or the database.

mod config;
mod experiments;
mod flags;
mod listener;
mod posthog;

pub use listener::*;
use plugin_sdk::Registry;

pub fn register(r: &mut Registry) {
    r.monitoring(
        "SaaSMonitoringListener",
        "PostHog analytics, A/B experiments on the model and the system prompt, OpenHands' SaaS metrics",
        |config, services| SaaSMonitoringListener::new(services, config),
    );
}

plugin_sdk::export_plugin!(register);
