//! What a flow of the application layer can fail with. Each door renders it once: HTTP in
//! `http::error` (status and OpenHands' body), plugins' host calls with a `PluginError` code
//! (`AppError::into_plugin_error`). Callers branch on the variant, never on a message.

use crate::registry::CallError;
use plugin_api::{ErrorCode, PluginError};

#[derive(Debug)]
pub enum AppError {
    /// A plugin call failed; its code says how.
    Plugin(CallError),
    /// The conversation manager did not start a stored conversation's loop.
    StartFailed(CallError),
    /// The user has no settings (OpenHands: `CONFIGURATION$SETTINGS_NOT_FOUND`).
    SettingsNotFound,
    /// The settings name no LLM key and the deployment supplies none.
    NoLlmKey,
    /// No `conversation_manager` is configured.
    NoManager,
    /// New conversations are refused from `since` (an RFC 3339 time) on.
    Maintenance { since: String, retry_after_secs: u64 },
    /// A monitoring listener refused (billing: no credits left).
    PaymentRequired(String),
    /// The user has `cap` stored conversations already.
    TooManyStored { cap: usize },
    /// A conversation with this id exists already.
    ConversationExists(String),
    /// The settings kept changing under this writer.
    SettingsContended,
    /// The custom secret is not there.
    SecretNotFound(String),
    /// A custom secret of that name exists already.
    SecretExists(String),
    /// A request that cannot be carried out as given.
    Invalid(String),
    /// Not the caller's to do (a deployment-managed setting).
    Forbidden(String),
}

pub type AppResult<T> = Result<T, AppError>;

impl From<CallError> for AppError {
    fn from(e: CallError) -> Self {
        AppError::Plugin(e)
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Plugin(e) | AppError::StartFailed(e) => write!(f, "{e}"),
            AppError::SettingsNotFound => f.write_str("Settings not found"),
            AppError::NoLlmKey => f.write_str("Error authenticating with the LLM provider. Please check your API key"),
            AppError::NoManager => f.write_str(
                "no conversation_manager is configured; add [extensions.conversation_manager] to the profile",
            ),
            AppError::Maintenance { since, .. } => write!(
                f,
                "The server is under maintenance since {since}: new conversations cannot start until it ends. Conversations already running continue."
            ),
            AppError::PaymentRequired(m) => f.write_str(m),
            AppError::TooManyStored { cap } => write!(
                f,
                "You have {cap} conversations, the most this server keeps per user (max_conversations_per_user); delete some to start new ones"
            ),
            AppError::ConversationExists(id) => write!(f, "conversation {id} exists already"),
            AppError::SettingsContended => f.write_str("the settings are being changed by others; try again"),
            AppError::SecretNotFound(name) => write!(f, "Secret with ID {name} not found"),
            AppError::SecretExists(name) => write!(f, "Secret {name} already exists"),
            AppError::Invalid(m) | AppError::Forbidden(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for AppError {}

impl AppError {
    /// The plugin's own message, when a plugin call failed (what sockets show).
    pub fn plugin_message(&self) -> Option<&str> {
        match self {
            AppError::Plugin(e) | AppError::StartFailed(e) => Some(e.error.message.as_str()),
            _ => None,
        }
    }

    /// For a plugin's host call: the code a plugin branches on, and the message.
    pub fn into_plugin_error(self) -> PluginError {
        if let AppError::Plugin(e) | AppError::StartFailed(e) = self {
            return e.into_plugin_error();
        }
        let code = match &self {
            AppError::Plugin(_) | AppError::StartFailed(_) => ErrorCode::INTERNAL,
            AppError::Forbidden(_) => ErrorCode::PERMISSION_DENIED,
            AppError::SettingsNotFound | AppError::NoLlmKey | AppError::Invalid(_) => ErrorCode::INVALID_ARGUMENT,
            AppError::NoManager => ErrorCode::UNIMPLEMENTED,
            AppError::Maintenance { .. } => ErrorCode::UNAVAILABLE,
            AppError::PaymentRequired(_) => ErrorCode::PAYMENT_REQUIRED,
            AppError::TooManyStored { .. } => ErrorCode::RESOURCE_EXHAUSTED,
            AppError::ConversationExists(_) | AppError::SecretExists(_) => ErrorCode::ALREADY_EXISTS,
            AppError::SettingsContended => ErrorCode::CONFLICT,
            AppError::SecretNotFound(_) => ErrorCode::NOT_FOUND,
        };
        PluginError::new(code, self.to_string())
    }
}
