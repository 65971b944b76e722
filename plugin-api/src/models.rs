//! The documents that cross the boundary as JSON text (OpenHands' data models).
//!
//! Their field names and JSON shapes are OpenHands' (its `Settings`, `Secrets`,
//! `ConversationMetadata` and `event_to_dict` as of 0.62), so a document stored by one implementation reads in another and the
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

/// Calls `f(server, key, value)` for each secret value of an `mcp_config` (OpenHands
/// `MCPConfig`: `sse_servers` and `shttp_servers` with `api_key`, `stdio_servers` with an
/// `env` map). `server` identifies the server (its kind and url or name), `key` the value.
fn visit_mcp_secrets(config: Option<&mut serde_json::Value>, f: &mut dyn FnMut(&str, &str, &mut serde_json::Value)) {
    let Some(config) = config.and_then(|c| c.as_object_mut()) else { return };
    for kind in ["sse_servers", "shttp_servers", "stdio_servers"] {
        let Some(servers) = config.get_mut(kind).and_then(|s| s.as_array_mut()) else { continue };
        for (i, server) in servers.iter_mut().enumerate() {
            let Some(server) = server.as_object_mut() else { continue };
            let id = server
                .get("url")
                .or_else(|| server.get("name"))
                .and_then(|v| v.as_str())
                .map(|v| format!("{kind}:{v}"))
                .unwrap_or_else(|| format!("{kind}#{i}"));
            if let Some(key) = server.get_mut("api_key") {
                f(&id, "api_key", key);
            }
            if let Some(env) = server.get_mut("env").and_then(|e| e.as_object_mut()) {
                for (name, value) in env.iter_mut() {
                    f(&id, &format!("env:{name}"), value);
                }
            }
        }
    }
}

/// Settings with the version a store keeps for them (`SettingsStore::load_versioned`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct VersionedSettings {
    /// Grows with every store; 0 is never a stored version.
    pub version: u64,
    pub settings: Settings,
}

impl Settings {
    /// Names of the fields that hold secrets: never returned, encrypted at rest.
    pub const SECRET_FIELDS: [&'static str; 3] = ["llm_api_key", "search_api_key", "sandbox_api_key"];
    /// What stores encrypt at rest: the secret fields and `mcp_config` (its servers' API keys
    /// and environments).
    pub const SEALED_FIELDS: [&'static str; 4] = ["llm_api_key", "search_api_key", "sandbox_api_key", "mcp_config"];
    /// What a masked value reads as (OpenHands' `SecretStr`).
    pub const MASK: &'static str = "**********";

    /// Masks the secret values inside `mcp_config` (each server's `api_key`, each stdio
    /// server's `env` value), for showing the settings to a client.
    pub fn mask_mcp_secrets(&mut self) {
        visit_mcp_secrets(self.mcp_config.as_mut(), &mut |_, _, value| {
            if value.as_str().is_some_and(|v| !v.is_empty()) {
                *value = serde_json::Value::String(Self::MASK.to_owned());
            }
        });
    }

    /// Puts back, in posted settings, the `mcp_config` secrets a client sent masked: a masked
    /// value keeps the one `stored` has for the same server and key.
    pub fn unmask_mcp_secrets(&mut self, stored: Option<&Settings>) {
        let mut known = Vec::new();
        if let Some(stored) = stored {
            let mut stored = stored.mcp_config.clone();
            visit_mcp_secrets(stored.as_mut(), &mut |server, key, value| {
                known.push((server.to_owned(), key.to_owned(), value.clone()));
            });
        }
        visit_mcp_secrets(self.mcp_config.as_mut(), &mut |server, key, value| {
            if value.as_str() == Some(Self::MASK) {
                *value = known
                    .iter()
                    .find(|(s, k, _)| s == server && k == key)
                    .map(|(_, _, v)| v.clone())
                    .unwrap_or(serde_json::Value::Null);
            }
        });
    }

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

/// A provider token as a client submits it: no token keeps the stored one (and updates its
/// host).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct ProviderTokenChange {
    pub token: Option<String>,
    pub host: Option<String>,
    pub user_id: Option<String>,
}

/// One change to a user's secrets (`SecretsStore::update`): each names what it touches, so a
/// store applies it without losing another writer's change to something else.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SecretsChange {
    /// Adds a custom secret; `ALREADY_EXISTS` if the name is taken.
    CreateCustomSecret { name: String, secret: String, description: String },
    /// Renames or re-describes a custom secret, keeping its value; `NOT_FOUND` if `name` does
    /// not exist, `ALREADY_EXISTS` if `new_name` (another one) does.
    UpdateCustomSecret { name: String, new_name: String, description: String },
    /// Deletes a custom secret; `NOT_FOUND` if it does not exist.
    DeleteCustomSecret { name: String },
    /// The submitted providers replace the stored ones (OpenHands' `add-git-providers`): a
    /// provider without a token keeps its stored token with the submitted host, and is left
    /// out if none is stored; providers not submitted are removed.
    SetProviderTokens { provider_tokens: BTreeMap<String, ProviderTokenChange> },
    /// Removes every provider token.
    UnsetProviderTokens,
}

impl SecretsChange {
    /// The change applied to a whole document: what a store that keeps one document per user
    /// does under its lock, so every store gives a change the same meaning.
    pub fn apply(&self, secrets: &mut Secrets) -> Result<(), crate::PluginError> {
        use crate::{ErrorCode, PluginError};
        let exists = |name: &str| PluginError::new(ErrorCode::ALREADY_EXISTS, format!("Secret {name} already exists"));
        let missing = |name: &str| PluginError::not_found(format!("Secret with ID {name} not found"));
        match self {
            SecretsChange::CreateCustomSecret { name, secret, description } => {
                if secrets.custom_secrets.contains_key(name) {
                    return Err(exists(name));
                }
                let value = CustomSecret { secret: secret.clone(), description: description.clone() };
                secrets.custom_secrets.insert(name.clone(), value);
            }
            SecretsChange::UpdateCustomSecret { name, new_name, description } => {
                if !secrets.custom_secrets.contains_key(name) {
                    return Err(missing(name));
                }
                if new_name != name && secrets.custom_secrets.contains_key(new_name) {
                    return Err(exists(new_name));
                }
                let old = secrets.custom_secrets.remove(name).unwrap_or_default();
                let value = CustomSecret { secret: old.secret, description: description.clone() };
                secrets.custom_secrets.insert(new_name.clone(), value);
            }
            SecretsChange::DeleteCustomSecret { name } => {
                secrets.custom_secrets.remove(name).ok_or_else(|| missing(name))?;
            }
            SecretsChange::SetProviderTokens { provider_tokens } => {
                let mut next = ProviderTokens::new();
                for (provider, change) in provider_tokens {
                    if let Some(token) = Self::provider_token(change, secrets.provider_tokens.get(provider)) {
                        next.insert(provider.clone(), token);
                    }
                }
                secrets.provider_tokens = next;
            }
            SecretsChange::UnsetProviderTokens => secrets.provider_tokens.clear(),
        }
        Ok(())
    }

    /// What one submitted provider token becomes, given the stored one (`None`: left out).
    pub fn provider_token(change: &ProviderTokenChange, stored: Option<&ProviderToken>) -> Option<ProviderToken> {
        let token = change.token.clone().filter(|t| !t.trim().is_empty());
        match (token, stored) {
            (Some(token), _) => {
                Some(ProviderToken { token: Some(token), host: change.host.clone(), user_id: change.user_id.clone() })
            }
            (None, Some(stored)) => {
                Some(ProviderToken { host: change.host.clone().or(stored.host.clone()), ..stored.clone() })
            }
            (None, None) => None,
        }
    }
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
    /// Feedback the user gave on the conversation (`POST …/submit-feedback`), oldest first.
    /// Ours, not OpenHands' (which forwards it elsewhere).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feedback: Vec<serde_json::Value>,
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
    /// The system message the agent starts from, when an experiment sets one (else the
    /// manager's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
}

/// What the host asks monitoring listeners when a conversation starts
/// (`MonitoringListener::experiment_variant`: its `experiment` argument, as JSON).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ExperimentQuery {
    pub conversation_id: String,
    /// The model of the user's settings, if any.
    #[serde(default)]
    pub llm_model: Option<String>,
    /// Since 1.2: set when the host asks for the user's feature flags instead of a start's
    /// experiments (`conversation_id` is then empty). A listener that defines flags answers
    /// one `ExperimentAssignment` per flag it evaluated for the user (`experiment` = the flag,
    /// `variant` = its value); others answer `None`. Only listeners built against 1.2 or later
    /// are asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_flags: Option<FlagSubject>,
}

/// Whose feature flags the host asks for (`ExperimentQuery::feature_flags`; the user is the
/// call's `CallContext::user_id`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct FlagSubject {
    /// The user's email when the host knows it (a signed-in request); `None` from a host call.
    #[serde(default)]
    pub email: Option<String>,
    /// The flags wanted; empty for all.
    #[serde(default)]
    pub flags: Vec<String>,
}

/// One experiment a conversation takes part in; a listener answers a JSON array of these.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ExperimentAssignment {
    pub experiment: String,
    pub variant: String,
    /// The model to run instead of the user's (`None`: unchanged).
    #[serde(default)]
    pub llm_model: Option<String>,
    /// The system message to start from (`None`: the manager's).
    #[serde(default)]
    pub system_prompt: Option<String>,
}

/// What a user is about to do, for `MonitoringListener::admit`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Admission {
    /// [`Admission::START_CONVERSATION`] or [`Admission::LLM_CALL`]; others may come.
    pub action: String,
    /// The conversation, when there is one already.
    #[serde(default)]
    pub conversation_id: Option<String>,
}

impl Admission {
    /// A new conversation (`POST /api/conversations`).
    pub const START_CONVERSATION: &'static str = "start_conversation";
    /// An LLM call of a running conversation.
    pub const LLM_CALL: &'static str = "llm_call";
}

/// One LLM call's usage, for `MonitoringListener::on_llm_usage`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct LlmUsage {
    pub conversation_id: String,
    /// The stored event (agent message) the call produced: with the conversation, a key that
    /// makes a usage reported twice count once.
    pub event_id: u64,
    pub model: String,
    /// US dollars, as the LLM endpoint reported it (LiteLLM's response cost); 0 if unknown.
    pub cost: f64,
    #[serde(default)]
    pub prompt_tokens: i64,
    #[serde(default)]
    pub completion_tokens: i64,
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

/// `runtime.open`: a conversation's workspace, made ready for its tools. Added in 1.1.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct WorkspaceRequest {
    pub conversation_id: String,
    /// What to clone into a new workspace; `None`: an empty git repository.
    #[serde(default)]
    pub repository: Option<RepositoryClone>,
}

/// A repository to clone, with the user's token for its provider.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct RepositoryClone {
    /// `owner/repo`.
    pub repository: String,
    /// `github`, `gitlab` or `bitbucket`.
    pub provider: String,
    #[serde(default)]
    pub token: Option<String>,
    /// The provider's host, when not its public one.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub branch: Option<String>,
}

/// `runtime.open`'s answer.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct WorkspaceInfo {
    /// The workspace's directory as the agent's commands see it.
    pub root: String,
    /// Why the repository was not cloned (the workspace is an empty repository then).
    #[serde(default)]
    pub clone_error: Option<String>,
}

/// `runtime.run`: one step of a conversation's shell (OpenHands' `execute_bash`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct CommandRequest {
    /// A command; with `is_input`, text or a key (`C-c`, `C-z`, `C-d`) for the running one;
    /// empty: more of the running one's output.
    pub command: String,
    #[serde(default)]
    pub is_input: bool,
    /// How long this call waits before answering while the command goes on (default: until
    /// it prints nothing for 10 s).
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    /// Characters of output kept in the answer (0: the runtime's default).
    #[serde(default)]
    pub max_output_chars: usize,
}

/// `runtime.run`'s answer.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct CommandResult {
    /// The exit code; -1 while it runs, or when it was killed.
    pub exit_code: i32,
    /// What it printed during the call, with the runtime's notes, as the agent reads it.
    pub output: String,
    /// The command is over: a new one may start.
    pub done: bool,
}

/// An entry of a workspace directory.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct FileEntry {
    pub name: String,
    /// Relative to the workspace's root.
    pub path: String,
    pub dir: bool,
}

/// A changed file (the web client's Changes tab): `status` is `A`, `M`, `D`, `R` or `U`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct GitChange {
    pub status: String,
    pub path: String,
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

        proptest::proptest! {
            /// Any text as a page id: an offset or `None`, never a panic; offsets round-trip.
            #[test]
            fn page_ids_never_panic_and_offsets_round_trip(text in "(?s).{0,64}", offset in 0usize..10_000_000) {
                let _ = page_id_to_offset(Some(&text));
                let id = offset_to_page_id(offset, true).unwrap();
                proptest::prop_assert_eq!(page_id_to_offset(Some(&id)), Some(offset));
            }
        }

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
