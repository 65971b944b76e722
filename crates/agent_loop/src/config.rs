//! What every conversation manager built on this library is configured with (its `config`
//! table in `plugins.toml`): limits, idle close, the LLM call's deadlines and retries, the
//! system prompt, private hosts allowed.

use crate::llm::LlmLimits;
use serde::Deserialize;
use std::time::Duration;

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct ManagerConfig {
    /// Running conversations per user; starting one more closes the least recently active
    /// (OpenHands `max_concurrent_conversations`, default 3).
    pub max_concurrent_conversations: usize,
    /// A conversation nobody is connected to and whose agent is not running is closed after
    /// this many seconds of quiet (OpenHands `sandbox.close_delay`, default 3600). 0 = never.
    pub close_delay_secs: u64,
    /// How often idle conversations are looked for, in milliseconds (default 15000).
    pub cleanup_interval_ms: u64,
    /// Deadline of one LLM call, in seconds.
    pub llm_timeout_secs: u64,
    /// Longest gap between two streamed chunks, in seconds.
    pub llm_chunk_timeout_secs: u64,
    /// Retries of a failed LLM call (429, 5xx, timeouts).
    pub llm_max_retries: u32,
    /// First wait between retries, in milliseconds; doubled each time.
    pub llm_retry_initial_ms: u64,
    /// The system message that starts every conversation's history.
    pub system_prompt: String,
    /// In SaaS mode a user's `llm_base_url` may not lead to a loopback, private or link-local
    /// address; these host names or IPs are allowed all the same (an internal LLM gateway).
    pub llm_private_hosts_allowed: Vec<String>,
    /// Characters of a command's output (or a file view) the agent gets; the rest is noted.
    pub max_output_chars: usize,
    /// LLM calls per user message at most, when the user's settings name no `max_iterations`.
    pub max_iterations: usize,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            max_concurrent_conversations: 3,
            close_delay_secs: 3600,
            cleanup_interval_ms: 15_000,
            llm_timeout_secs: 120,
            llm_chunk_timeout_secs: 30,
            llm_max_retries: 3,
            llm_retry_initial_ms: 1000,
            system_prompt: "You are OpenHands agent, a helpful AI assistant.".to_owned(),
            llm_private_hosts_allowed: Vec::new(),
            max_output_chars: 30_000,
            max_iterations: 50,
        }
    }
}

impl ManagerConfig {
    pub fn limits(&self) -> LlmLimits {
        LlmLimits {
            request_timeout: Duration::from_secs(self.llm_timeout_secs.max(1)),
            chunk_timeout: Duration::from_secs(self.llm_chunk_timeout_secs.max(1)),
            max_retries: self.llm_max_retries,
            initial_backoff: Duration::from_millis(self.llm_retry_initial_ms),
        }
    }

    pub fn close_delay(&self) -> Duration {
        if self.close_delay_secs == 0 {
            Duration::MAX
        } else {
            Duration::from_secs(self.close_delay_secs)
        }
    }

    /// Parses a manager's `config` table: an unknown key is refused, and a key of the
    /// runtime's left here (plugin-api 1.0's layout) says where it goes now.
    pub fn parse(config_json: &str) -> Result<ManagerConfig, plugin_sdk::PluginError> {
        let raw: serde_json::Value =
            serde_json::from_str(if config_json.trim().is_empty() { "{}" } else { config_json })
                .map_err(|e| plugin_sdk::PluginError::invalid_config(e.to_string()))?;
        let moved = raw.as_object().and_then(|table| MOVED.iter().find(|key| table.contains_key(**key)));
        let Some(&key) = moved else { return plugin_sdk::parse_config(config_json) };
        let message = if key == "runtime" {
            "`runtime` moved from the conversation manager to its own extension point in plugin-api 1.1: add [extensions.runtime] with library = \"sandbox_runtime\" and implementation = \"BubblewrapRuntime\" (\"LocalRuntime\" for runtime = \"local\"), and move the other runtime keys (workspace_root, command_timeout_secs, git_http_hosts, sandbox_*) into its config table".to_owned()
        } else {
            format!("`{key}` moved from the conversation manager to the runtime in plugin-api 1.1: put it in the config table of [extensions.runtime] (library = \"sandbox_runtime\")")
        };
        Err(plugin_sdk::PluginError::invalid_config(message))
    }

    /// The tools' setup, when the deployment has a runtime (`services.runtime()`).
    pub fn tools(&self, runtime: Option<plugin_sdk::RuntimeClient>) -> Option<crate::tools::ToolSetup> {
        runtime.map(|runtime| crate::tools::ToolSetup {
            runtime,
            limits: crate::tools::ToolLimits { max_output_chars: self.max_output_chars.max(100) },
            max_iterations: self.max_iterations.max(1),
        })
    }

    pub fn cleanup_interval(&self) -> Duration {
        Duration::from_millis(self.cleanup_interval_ms.max(10))
    }
}

/// The keys a manager took before the runtime became an extension point (plugin-api 1.1).
const MOVED: &[&str] = &[
    "runtime",
    "sandbox_network",
    "sandbox_cpu_secs",
    "sandbox_memory_mb",
    "sandbox_max_processes",
    "sandbox_tmp_mb",
    "sandbox_workspace_mb",
    "sandbox_read_only",
    "git_http_hosts",
    "workspace_root",
    "command_timeout_secs",
];

#[cfg(test)]
mod tests {
    use super::ManagerConfig;

    #[test]
    fn a_runtime_key_left_in_the_manager_says_where_it_goes() {
        let e = ManagerConfig::parse(r#"{"runtime": "bubblewrap"}"#).unwrap_err();
        assert!(e.message.contains("[extensions.runtime]") && e.message.contains("BubblewrapRuntime"), "{}", e.message);
        let e = ManagerConfig::parse(r#"{"sandbox_cpu_secs": 5}"#).unwrap_err();
        assert!(e.message.contains("moved") && e.message.contains("sandbox_runtime"), "{}", e.message);
        let e = ManagerConfig::parse(r#"{"max_iterationz": 5}"#).unwrap_err();
        assert!(e.message.contains("unknown field `max_iterationz`, expected one of"), "{}", e.message);
        assert_eq!(ManagerConfig::parse(r#"{"max_iterations": 5}"#).unwrap().max_iterations, 5);
    }
}
