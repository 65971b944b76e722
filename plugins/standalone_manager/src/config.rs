//! Configuration of `StandaloneConversationManager` (its `config` table in `plugins.toml`).

use agent_loop::llm::LlmLimits;
use serde::Deserialize;
use std::time::Duration;

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Config {
    /// Running conversations per user; starting one more closes the least recently active
    /// (OpenHands `max_concurrent_conversations`, default 3).
    pub(crate) max_concurrent_conversations: usize,
    /// A conversation nobody is connected to and whose agent is not running is closed after
    /// this many seconds of quiet (OpenHands `sandbox.close_delay`, default 3600). 0 = never.
    pub(crate) close_delay_secs: u64,
    /// How often idle conversations are looked for, in milliseconds (default 15000).
    pub(crate) cleanup_interval_ms: u64,
    /// Deadline of one LLM call, in seconds.
    pub(crate) llm_timeout_secs: u64,
    /// Longest gap between two streamed chunks, in seconds.
    pub(crate) llm_chunk_timeout_secs: u64,
    /// Retries of a failed LLM call (429, 5xx, timeouts).
    pub(crate) llm_max_retries: u32,
    /// First wait between retries, in milliseconds; doubled each time.
    pub(crate) llm_retry_initial_ms: u64,
    /// The system message that starts every conversation's history.
    pub(crate) system_prompt: String,
    /// In SaaS mode a user's `llm_base_url` may not lead to a loopback, private or link-local
    /// address; these host names or IPs are allowed all the same (an internal LLM gateway).
    pub(crate) llm_private_hosts_allowed: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_concurrent_conversations: 3,
            close_delay_secs: 3600,
            cleanup_interval_ms: 15_000,
            llm_timeout_secs: 120,
            llm_chunk_timeout_secs: 30,
            llm_max_retries: 3,
            llm_retry_initial_ms: 1000,
            system_prompt: "You are OpenHands agent, a helpful AI assistant.".to_owned(),
            llm_private_hosts_allowed: Vec::new(),
        }
    }
}

impl Config {
    pub(crate) fn limits(&self) -> LlmLimits {
        LlmLimits {
            request_timeout: Duration::from_secs(self.llm_timeout_secs.max(1)),
            chunk_timeout: Duration::from_secs(self.llm_chunk_timeout_secs.max(1)),
            max_retries: self.llm_max_retries,
            initial_backoff: Duration::from_millis(self.llm_retry_initial_ms),
        }
    }

    pub(crate) fn close_delay(&self) -> Duration {
        if self.close_delay_secs == 0 {
            Duration::MAX
        } else {
            Duration::from_secs(self.close_delay_secs)
        }
    }

    pub(crate) fn cleanup_interval(&self) -> Duration {
        Duration::from_millis(self.cleanup_interval_ms.max(10))
    }
}
