//! The documents that cross the boundary as JSON text (OpenHands' data models).
//!
//! Their field names and JSON shapes are OpenHands' (reference/openhands-server.md §3.3, §4.3,
//! §5.4, §6.1, §9.10), so a document stored by one implementation reads in another and the
//! HTTP layer can hand them to OpenHands clients as they are. Unknown fields are ignored on
//! input, as pydantic does by default.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A user's settings (OpenHands `Settings`). The three secret fields are carried in plain
/// text between host and store; stores encrypt them at rest, and the host never returns them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Settings {
    pub language: Option<String>,
    pub agent: Option<String>,
    pub max_iterations: Option<i64>,
    pub security_analyzer: Option<String>,
    pub confirmation_mode: Option<bool>,
    pub llm_model: Option<String>,
    pub llm_api_key: Option<String>,
    pub llm_base_url: Option<String>,
    pub remote_runtime_resource_factor: Option<i64>,
    #[serde(default = "yes")]
    pub enable_default_condenser: bool,
    pub enable_sound_notifications: bool,
    #[serde(default = "yes")]
    pub enable_proactive_conversation_starters: bool,
    #[serde(default = "yes")]
    pub enable_solvability_analysis: bool,
    pub user_consents_to_analytics: Option<bool>,
    pub sandbox_base_container_image: Option<String>,
    pub sandbox_runtime_container_image: Option<String>,
    pub mcp_config: Option<serde_json::Value>,
    pub search_api_key: Option<String>,
    pub sandbox_api_key: Option<String>,
    pub max_budget_per_task: Option<f64>,
    pub condenser_max_size: Option<i64>,
    pub email: Option<String>,
    pub email_verified: Option<bool>,
    pub git_user_name: Option<String>,
    pub git_user_email: Option<String>,
    pub v1_enabled: Option<bool>,
}

fn yes() -> bool {
    true
}

impl Settings {
    /// Names of the fields that hold secrets: never returned, encrypted at rest.
    pub const SECRET_FIELDS: [&'static str; 3] = ["llm_api_key", "search_api_key", "sandbox_api_key"];

    /// OpenHands turns empty or whitespace-only keys into `None`.
    pub fn normalize(&mut self) {
        for key in [&mut self.llm_api_key, &mut self.search_api_key] {
            if key.as_deref().is_some_and(|k| k.trim().is_empty()) {
                *key = None;
            }
        }
    }
}

/// Git providers OpenHands knows (`ProviderType`).
pub const PROVIDERS: [&str; 5] = ["github", "gitlab", "bitbucket", "azure_devops", "enterprise_sso"];

/// A git provider token (`ProviderToken`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct ProviderToken {
    pub token: Option<String>,
    pub host: Option<String>,
    pub user_id: Option<String>,
}

/// A user-defined secret (`CustomSecret`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct CustomSecret {
    pub secret: String,
    pub description: String,
}

/// Provider tokens by provider name.
pub type ProviderTokens = BTreeMap<String, ProviderToken>;

/// A user's secrets (OpenHands `Secrets`), values in plain text.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Secrets {
    pub provider_tokens: ProviderTokens,
    pub custom_secrets: BTreeMap<String, CustomSecret>,
}

/// Conversation metadata (OpenHands `ConversationMetadata`). Timestamps are RFC 3339 text in
/// UTC (`2025-11-28T10:00:00.123456Z`), which sorts in time order.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ConversationMetadata {
    pub conversation_id: String,
    #[serde(default)]
    pub selected_repository: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub selected_branch: Option<String>,
    #[serde(default)]
    pub git_provider: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub last_updated_at: Option<String>,
    #[serde(default)]
    pub trigger: Option<String>,
    #[serde(default)]
    pub pr_number: Vec<i64>,
    pub created_at: String,
    #[serde(default)]
    pub llm_model: Option<String>,
    #[serde(default)]
    pub accumulated_cost: f64,
    #[serde(default)]
    pub prompt_tokens: i64,
    #[serde(default)]
    pub completion_tokens: i64,
    #[serde(default)]
    pub total_tokens: i64,
    #[serde(default)]
    pub sandbox_id: Option<String>,
    #[serde(default)]
    pub conversation_version: Option<String>,
}

/// A page of conversation metadata, newest first.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ConversationMetadataResultSet {
    pub results: Vec<ConversationMetadata>,
    pub next_page_id: Option<String>,
}

/// A page of stored events (`GET /api/conversations/{id}/events`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct EventPage {
    /// Event dicts as OpenHands serializes them (`id`, `timestamp`, `source`, ...).
    pub events: Vec<serde_json::Value>,
    pub has_more: bool,
}

/// `conversation_manager.maybe_start` request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct StartRequest {
    pub conversation_id: String,
    /// The user's settings (secrets included) at start.
    pub settings: Settings,
    #[serde(default)]
    pub initial_user_msg: Option<String>,
    #[serde(default)]
    pub image_urls: Vec<String>,
    #[serde(default)]
    pub replay_json: Option<String>,
    #[serde(default)]
    pub conversation_instructions: Option<String>,
    #[serde(default)]
    pub provider_tokens: ProviderTokens,
    #[serde(default)]
    pub custom_secrets: BTreeMap<String, CustomSecret>,
}

/// A running agent loop (OpenHands `AgentLoopInfo`, without the event store).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct AgentLoopInfo {
    pub conversation_id: String,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub session_api_key: Option<String>,
    /// `STARTING`, `RUNNING`, `STOPPED`, `ARCHIVED` or `ERROR`.
    pub status: String,
    #[serde(default)]
    pub runtime_status: Option<String>,
}

/// OpenHands' page ids: base64 of the decimal offset (`offset_to_page_id`).
pub mod paging {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// The page id of `offset`, or `None` when there is no next page.
    pub fn offset_to_page_id(offset: usize, has_next: bool) -> Option<String> {
        has_next.then(|| encode(offset.to_string().as_bytes()))
    }

    /// The offset a page id stands for; `None` for text that is not one.
    pub fn page_id_to_offset(page_id: Option<&str>) -> Option<usize> {
        match page_id {
            None | Some("") => Some(0),
            Some(id) => String::from_utf8(decode(id)?).ok()?.parse().ok(),
        }
    }

    fn encode(bytes: &[u8]) -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    fn decode(text: &str) -> Option<Vec<u8>> {
        let text = text.trim_end_matches('=');
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0u32);
        for c in text.bytes() {
            let v = ALPHABET.iter().position(|&a| a == c)? as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        Some(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trips_like_python() {
            // base64.b64encode(b"20") == b"MjA="
            assert_eq!(offset_to_page_id(20, true).as_deref(), Some("MjA="));
            assert_eq!(offset_to_page_id(20, false), None);
            assert_eq!(page_id_to_offset(Some("MjA=")), Some(20));
            assert_eq!(page_id_to_offset(Some("MTIzNA==")), Some(1234));
            assert_eq!(page_id_to_offset(None), Some(0));
            assert_eq!(page_id_to_offset(Some("!!")), None);
        }
    }
}
