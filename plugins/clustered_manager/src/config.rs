//! The `config` table of `ClusteredConversationManager`: the cluster's own keys (Redis,
//! lease timing), and everything else as for the standalone manager
//! ([`agent_loop::config::ManagerConfig`]: limits, idle close, the LLM call).

use agent_loop::config::ManagerConfig;
use plugin_sdk::PluginError;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::time::Duration;

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ClusterConfig {
    /// `redis://…` or `rediss://…`; default from REDIS_HOST, REDIS_PORT (6379),
    /// REDIS_PASSWORD and REDIS_DB (0).
    pub(crate) redis_url: Option<String>,
    /// Prefix of every key this manager writes (several deployments can share one Redis).
    pub(crate) redis_key_prefix: String,
    /// How long a node's ownership of a conversation lasts without renewal; it renews every
    /// third of it. A dead node's conversations resume elsewhere within about this long.
    pub(crate) lease_ttl_ms: u64,
    /// How often a node announces itself.
    pub(crate) heartbeat_ms: u64,
    /// How often a node looks for conversations whose owner's lease expired.
    pub(crate) reaper_interval_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: None,
            redis_key_prefix: "oh:cluster:".to_owned(),
            lease_ttl_ms: 3000,
            heartbeat_ms: 1000,
            reaper_interval_ms: 250,
        }
    }
}

const CLUSTER_KEYS: [&str; 5] = ["redis_url", "redis_key_prefix", "lease_ttl_ms", "heartbeat_ms", "reaper_interval_ms"];

impl ClusterConfig {
    pub(crate) fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }

    /// The Redis URL: the configured one, else the OpenHands variables.
    pub(crate) fn redis_url(&self) -> String {
        if let Some(url) = self.redis_url.as_deref().filter(|u| !u.trim().is_empty()) {
            return url.to_owned();
        }
        plugin_sdk::redis_url_from_env()
    }
}

/// Splits the config table into the cluster's keys and the manager's.
pub(crate) fn parse(json: &str) -> Result<(ClusterConfig, ManagerConfig), PluginError> {
    let mut all: Map<String, Value> =
        serde_json::from_str(json).map_err(|e| PluginError::invalid_config(format!("config must be a table: {e}")))?;
    let cluster: Map<String, Value> =
        CLUSTER_KEYS.iter().filter_map(|k| all.remove(*k).map(|v| (k.to_string(), v))).collect();
    let cluster: ClusterConfig = plugin_sdk::parse_config(&Value::Object(cluster).to_string())?;
    let manager = ManagerConfig::parse(&Value::Object(all).to_string())
        .map_err(|e| PluginError::invalid_config(format!("{} (or one of {})", e.message, CLUSTER_KEYS.join(", "))))?;
    if cluster.lease_ttl_ms < 300 {
        return Err(PluginError::invalid_config("lease_ttl_ms must be at least 300"));
    }
    if cluster.heartbeat_ms == 0 || cluster.reaper_interval_ms == 0 {
        return Err(PluginError::invalid_config("heartbeat_ms and reaper_interval_ms must be above 0"));
    }
    Ok((cluster, manager))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_and_manager_keys_are_told_apart() {
        let (c, m) = parse(r#"{"lease_ttl_ms": 2000, "max_concurrent_conversations": 5}"#).unwrap();
        assert_eq!((c.lease_ttl_ms, m.max_concurrent_conversations), (2000, 5));
        let bad = parse(r#"{"lease_tll_ms": 2000}"#).unwrap_err();
        assert!(bad.message.as_str().contains("lease_tll_ms"), "{bad:?}");
        assert!(bad.message.as_str().contains("lease_ttl_ms"), "the cluster keys are named: {bad:?}");
        assert!(parse(r#"{"lease_ttl_ms": 10}"#).is_err());
        let moved = parse(r#"{"runtime": "local"}"#).unwrap_err();
        assert!(moved.message.as_str().contains("[extensions.runtime]"), "{moved:?}");
    }
}
