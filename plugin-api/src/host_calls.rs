//! What a plugin may ask of the host through [`crate::HostServices::call`]: one request type
//! per operation, naming its extension point, its method and its answer.
//!
//! The host dispatches on these types and the SDK sends them, so the protocol is written once:
//! the JSON on the wire is the serde form of the request (the `args_json` object) and of its
//! [`HostCall::Answer`]. Adding an operation is adding a type here (and its arm in the host);
//! a host that does not know an operation answers `UNIMPLEMENTED`.

use crate::{
    models::{Admission, ConversationMetadata, EventPage, LlmUsage, ProviderTokens, Secrets, Settings},
    ExtensionPoint,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;

/// One operation the host offers to plugins.
pub trait HostCall: Serialize + DeserializeOwned + Send + 'static {
    /// The extension point whose instance(s) serve it.
    const POINT: ExtensionPoint;
    /// Its method name on the wire.
    const METHOD: &'static str;
    /// What the host answers.
    type Answer: Serialize + DeserializeOwned + Send + 'static;
}

macro_rules! host_call {
    ($(#[$doc:meta])* $name:ident, $point:ident, $method:literal, $answer:ty) => {
        impl HostCall for $name {
            const POINT: ExtensionPoint = ExtensionPoint::$point;
            const METHOD: &'static str = $method;
            type Answer = $answer;
        }
    };
}

/// The calling user's settings (secret fields included), if stored.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct LoadSettings {}
host_call!(LoadSettings, SETTINGS_STORE, "load", Option<Settings>);

/// The calling user's secrets, if stored.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct LoadSecrets {}
host_call!(LoadSecrets, SECRETS_STORE, "load", Option<Secrets>);

/// A conversation's metadata, if it exists for the calling user.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct GetMetadata {
    pub conversation_id: String,
}
host_call!(GetMetadata, CONVERSATION_STORE, "get_metadata", Option<ConversationMetadata>);

/// Creates or replaces a conversation's metadata.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SaveMetadata {
    pub metadata: ConversationMetadata,
}
host_call!(SaveMetadata, CONVERSATION_STORE, "save_metadata", ());

/// Appends events to a conversation's log; answers the id given to the first. With a
/// `fence`, the store refuses (`CONFLICT`) the append when a holder of a higher fencing token
/// has appended already (`ConversationStore::append_events_fenced`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct AppendEvents {
    pub conversation_id: String,
    /// JSON objects; the store sets their `id`.
    pub events: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
}
host_call!(AppendEvents, CONVERSATION_STORE, "append_events", u64);

/// A page of a conversation's stored events.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct GetEvents {
    pub conversation_id: String,
    #[serde(default)]
    pub start_id: u64,
    #[serde(default)]
    pub end_id: Option<u64>,
    #[serde(default)]
    pub reverse: bool,
    /// At most this many (the host caps it at [`GetEvents::MAX_LIMIT`]).
    #[serde(default = "default_limit")]
    pub limit: u32,
}
host_call!(GetEvents, CONVERSATION_STORE, "get_events", EventPage);

impl GetEvents {
    /// The largest page the host reads in one call.
    pub const MAX_LIMIT: u32 = 10_000;
}

fn default_limit() -> u32 {
    100
}

/// Tells every monitoring listener about a session event (`on_session_event`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SessionEvent {
    pub event: Value,
}
host_call!(SessionEvent, MONITORING, "on_session_event", ());

/// Tells every monitoring listener an agent session started (`on_agent_session_start`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct AgentSessionStart {
    pub success: bool,
    pub duration_secs: f64,
}
host_call!(AgentSessionStart, MONITORING, "on_agent_session_start", ());

/// Tells every monitoring listener about a product-analytics event (`capture`): what the
/// user did ("user signed in", "api key created"), with its properties.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Capture {
    pub event: String,
    #[serde(default)]
    pub properties: Value,
}
host_call!(Capture, MONITORING, "capture", ());

/// Asks every monitoring listener whether the calling user may do this (`admit`): the
/// first refusal is the answer (`PAYMENT_REQUIRED` when out of credits).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Admit {
    pub admission: Admission,
}
host_call!(Admit, MONITORING, "admit", ());

/// Tells every monitoring listener an LLM call's usage and cost (`on_llm_usage`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ReportLlmUsage {
    pub usage: LlmUsage,
}
host_call!(ReportLlmUsage, MONITORING, "on_llm_usage", ());

/// Starts a conversation for the calling user, as `POST /api/conversations` does (the same
/// checks: maintenance, admission, settings); answers its id. With `conversation_id`, a
/// conversation of that id that exists already is answered as it is (`CONFLICT` if it is
/// another user's): a caller retrying after a crash gets the one it started.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct StartConversation {
    pub initial_user_msg: String,
    /// What started it, recorded in the metadata (`github_resolver`, `slack`, ...).
    pub trigger: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_provider: Option<String>,
}
host_call!(StartConversation, CONVERSATION_MANAGER, "start_conversation", String);

/// The calling user's git provider tokens: those the user-auth plugin brokers (SaaS: the
/// identity provider's), else those of their secrets (integrations install GitLab webhooks as
/// the user).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct GetProviderTokens {}
host_call!(GetProviderTokens, USER_AUTH, "provider_tokens", ProviderTokens);

/// Tells every monitoring listener a conversation was created (`on_create_conversation`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct CreateConversation {}
host_call!(CreateConversation, MONITORING, "on_create_conversation", ());

/// The calling user's feature flags (since 1.2): each flag's variant, from the monitoring
/// listeners that define flags (`ExperimentQuery::feature_flags`). `flags` empty asks for
/// every flag; a flag no listener defines is absent from the answer. A host older than 1.2
/// answers `UNIMPLEMENTED`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct FeatureFlags {
    #[serde(default)]
    pub flags: Vec<String>,
}
host_call!(FeatureFlags, MONITORING, "feature_flags", std::collections::BTreeMap<String, String>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_keep_their_wire_names() {
        let call =
            AppendEvents { conversation_id: "c1".into(), events: vec![serde_json::json!({ "a": 1 })], fence: None };
        assert_eq!(
            serde_json::to_value(&call).unwrap(),
            serde_json::json!({ "conversation_id": "c1", "events": [{ "a": 1 }] })
        );
        assert_eq!((AppendEvents::POINT.key(), AppendEvents::METHOD), ("conversation_store", "append_events"));
        let q: GetEvents = serde_json::from_str(r#"{"conversation_id":"c1"}"#).unwrap();
        assert_eq!((q.start_id, q.end_id, q.reverse, q.limit), (0, None, false, 100));
        assert_eq!(serde_json::to_string(&()).unwrap(), "null");
    }
}
