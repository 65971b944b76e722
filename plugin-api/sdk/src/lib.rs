//! The plugin-side SDK: write ordinary `async fn` Rust, export it with [`export_plugin!`].
//!
//! A plugin library implements some of the traits below ([`SettingsStore`], [`UserAuth`], ...),
//! registers constructors in a `register` function, and calls
//! `plugin_sdk::export_plugin!(register);` once. The SDK then owns everything the ABI needs:
//! - the library's own tokio runtime (started in `init`, stopped in `shutdown`): the future the
//!   host awaits polls the method's body on the host's thread with this runtime entered (no
//!   thread hop per call), so whatever the body registers (sockets, timers, blocking work,
//!   spawned tasks) belongs to the library's runtime; dropping the future (a host-side
//!   deadline) cancels the work;
//! - the panic guard: a panic in a method becomes a `PANICKED` error and marks the instance
//!   unhealthy, instead of crossing the FFI boundary (which would end the host process);
//! - log forwarding: `tracing` and `log` events of the library go to the host's output.
//!
//! ```text
//! fn register(r: &mut plugin_sdk::Registry) {
//!     r.settings_store("MySettingsStore", "settings in my database", |config, _services| {
//!         let config: MyConfig = plugin_sdk::parse_config(config)?;
//!         Ok(MySettingsStore::new(config))
//!     });
//! }
//! plugin_sdk::export_plugin!(register);
//! ```
//! Environment variables: read them with [`env`] only, so that the configuration reference
//! (`docs/configuration.md`) can list every variable a bundled plugin reads (a test looks for
//! each `plugin_sdk::env("…")` call).

mod adapters;
mod export;
mod logging;
mod runtime;
mod services;

use plugin_api::models::{Secrets, Settings};
use std::future::Future;

pub use export::{__call_root_module_loader, __lib_header, __root_module, parse_config, Registry};
pub use logging::{gauge, metric, observe, read_only};
pub mod http;
pub mod trace;
pub use plugin_api::{
    self, host_calls, models, AppMode, AuthOutcome, AuthRequest, AuthType, CallContext, ConversationManagerObject,
    ConversationStoreObject, ErrorCode, EventQuery, HttpRequest, HttpResponse, MonitoringObject, PluginError,
    RouteSpec, RoutesObject, RuntimeObject, SecretsStoreObject, SettingsStoreObject, UserAuthObject,
};
pub use runtime::{block_on_runtime, enter_runtime, start_runtime_for_tests};
pub use services::{EventSink, RuntimeClient, Services};

/// What every plugin method returns.
pub type Result<T, E = PluginError> = std::result::Result<T, E>;

/// An environment variable of the host process; an empty value counts as unset. Plugins read
/// the environment through this function only (see the crate documentation).
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The Redis OpenHands' variables name: `REDIS_HOST` (default `localhost`), `REDIS_PORT`
/// (`6379`), `REDIS_PASSWORD`, `REDIS_DB` (`0`); for plugins whose config names none.
pub fn redis_url_from_env() -> String {
    let host = env("REDIS_HOST").unwrap_or_else(|| "localhost".to_owned());
    let port = env("REDIS_PORT").unwrap_or_else(|| "6379".to_owned());
    let db = env("REDIS_DB").unwrap_or_else(|| "0".to_owned());
    match env("REDIS_PASSWORD") {
        Some(p) => format!("redis://:{p}@{host}:{port}/{db}"),
        None => format!("redis://{host}:{port}/{db}"),
    }
}

/// `settings_store` (OpenHands `SettingsStore`). Scope every read and write by `ctx.user_id()`.
pub trait SettingsStore: Send + Sync + 'static {
    fn load(&self, ctx: CallContext) -> impl Future<Output = Result<Option<Settings>>> + Send;
    fn store(&self, ctx: CallContext, settings: Settings) -> impl Future<Output = Result<()>> + Send;
    /// The Settings with their version. Implement it with [`SettingsStore::store_versioned`]
    /// so several hosts can write one user's settings without losing a change; the default
    /// answers `UNIMPLEMENTED` and the host falls back to `load`/`store` under a lock of its
    /// own process only.
    fn load_versioned(
        &self,
        _ctx: CallContext,
    ) -> impl Future<Output = Result<Option<models::VersionedSettings>>> + Send {
        async { Err(PluginError::new(ErrorCode::UNIMPLEMENTED, "this settings store keeps no versions")) }
    }
    /// Stores if the stored version is `expected_version` (0: none stored); the new version,
    /// or `CONFLICT`.
    fn store_versioned(
        &self,
        _ctx: CallContext,
        _settings: Settings,
        _expected_version: u64,
    ) -> impl Future<Output = Result<u64>> + Send {
        async { Err(PluginError::new(ErrorCode::UNIMPLEMENTED, "this settings store keeps no versions")) }
    }
    fn health(&self) -> impl Future<Output = Result<String>> + Send {
        async { Ok("ok".to_owned()) }
    }
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// `oh-host migrate`: bring the schema up to date; a report for the operator (a JSON
    /// object). Default: `UNIMPLEMENTED` (nothing to migrate).
    fn migrate(&self, _ctx: CallContext) -> impl Future<Output = Result<serde_json::Value>> + Send {
        async { Err(PluginError::new(ErrorCode::UNIMPLEMENTED, "this store has no schema to migrate")) }
    }
    /// `oh-host rotate-keys`: re-seal with the current master key; a report (a JSON object).
    /// Default: `UNIMPLEMENTED` (nothing sealed with the deployment's keys).
    fn rotate_keys(&self, _ctx: CallContext) -> impl Future<Output = Result<serde_json::Value>> + Send {
        async { Err(PluginError::new(ErrorCode::UNIMPLEMENTED, "this store seals nothing with the deployment's keys")) }
    }
}

/// `secrets_store` (OpenHands `SecretsStore`). Scope by `ctx.user_id()`; never log values.
pub trait SecretsStore: Send + Sync + 'static {
    fn load(&self, ctx: CallContext) -> impl Future<Output = Result<Option<Secrets>>> + Send;
    fn store(&self, ctx: CallContext, secrets: Secrets) -> impl Future<Output = Result<()>> + Send;
    /// Applies one change atomically with respect to every writer, other hosts included
    /// (`SecretsChange::apply` gives each change its meaning). The default answers
    /// `UNIMPLEMENTED` and the host falls back to `load`/`store` under a lock of its own
    /// process only.
    fn update(&self, _ctx: CallContext, _change: models::SecretsChange) -> impl Future<Output = Result<()>> + Send {
        async { Err(PluginError::new(ErrorCode::UNIMPLEMENTED, "this secrets store cannot apply one change")) }
    }
    fn health(&self) -> impl Future<Output = Result<String>> + Send {
        async { Ok("ok".to_owned()) }
    }
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// `oh-host migrate`: bring the schema up to date; a report for the operator (a JSON
    /// object). Default: `UNIMPLEMENTED` (nothing to migrate).
    fn migrate(&self, _ctx: CallContext) -> impl Future<Output = Result<serde_json::Value>> + Send {
        async { Err(PluginError::new(ErrorCode::UNIMPLEMENTED, "this store has no schema to migrate")) }
    }
    /// `oh-host rotate-keys`: re-seal with the current master key; a report (a JSON object).
    /// Default: `UNIMPLEMENTED` (nothing sealed with the deployment's keys).
    fn rotate_keys(&self, _ctx: CallContext) -> impl Future<Output = Result<serde_json::Value>> + Send {
        async { Err(PluginError::new(ErrorCode::UNIMPLEMENTED, "this store seals nothing with the deployment's keys")) }
    }
}

/// `conversation_store`: metadata and the event log. A conversation that another user owns
/// behaves as absent.
pub trait ConversationStore: Send + Sync + 'static {
    fn save_metadata(
        &self,
        ctx: CallContext,
        metadata: models::ConversationMetadata,
    ) -> impl Future<Output = Result<()>> + Send;
    fn get_metadata(
        &self,
        ctx: CallContext,
        conversation_id: String,
    ) -> impl Future<Output = Result<Option<models::ConversationMetadata>>> + Send;
    fn delete_metadata(&self, ctx: CallContext, conversation_id: String) -> impl Future<Output = Result<bool>> + Send;
    /// Default: the metadata's `user_id` equals `user_id` (OpenHands' default).
    fn validate_metadata(
        &self,
        ctx: CallContext,
        conversation_id: String,
        user_id: String,
    ) -> impl Future<Output = Result<bool>> + Send {
        async move {
            let metadata = self.get_metadata(ctx, conversation_id).await?;
            Ok(metadata.is_some_and(|m| !user_id.is_empty() && m.user_id.as_deref() == Some(&*user_id)))
        }
    }
    fn search(
        &self,
        ctx: CallContext,
        page_id: Option<String>,
        limit: u32,
    ) -> impl Future<Output = Result<models::ConversationMetadataResultSet>> + Send;
    fn append_events(
        &self,
        ctx: CallContext,
        conversation_id: String,
        events: Vec<serde_json::Value>,
    ) -> impl Future<Output = Result<u64>> + Send;
    fn get_events(
        &self,
        ctx: CallContext,
        conversation_id: String,
        query: EventQuery,
    ) -> impl Future<Output = Result<models::EventPage>> + Send;
    fn health(&self) -> impl Future<Output = Result<String>> + Send {
        async { Ok("ok".to_owned()) }
    }
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// `oh-host migrate`: bring the schema up to date; a report for the operator (a JSON
    /// object). Default: `UNIMPLEMENTED` (nothing to migrate).
    fn migrate(&self, _ctx: CallContext) -> impl Future<Output = Result<serde_json::Value>> + Send {
        async { Err(PluginError::new(ErrorCode::UNIMPLEMENTED, "this store has no schema to migrate")) }
    }
    /// `oh-host rotate-keys`: re-seal with the current master key; a report (a JSON object).
    /// Default: `UNIMPLEMENTED` (nothing sealed with the deployment's keys).
    fn rotate_keys(&self, _ctx: CallContext) -> impl Future<Output = Result<serde_json::Value>> + Send {
        async { Err(PluginError::new(ErrorCode::UNIMPLEMENTED, "this store seals nothing with the deployment's keys")) }
    }
    /// `append_events` by the holder of fencing token `fence`: refuse (`CONFLICT`) when a
    /// higher token was seen for the conversation, atomically with the append. Default:
    /// `UNIMPLEMENTED` (such a store cannot serve a clustered manager).
    fn append_events_fenced(
        &self,
        _ctx: CallContext,
        _conversation_id: String,
        _events: Vec<serde_json::Value>,
        _fence: u64,
    ) -> impl Future<Output = Result<u64>> + Send {
        async { Err(PluginError::new(ErrorCode::UNIMPLEMENTED, "this store does not fence appends")) }
    }
}

/// `conversation_manager`: runs agent loops and streams their events to subscribers.
pub trait ConversationManager: Send + Sync + 'static {
    fn maybe_start(
        &self,
        ctx: CallContext,
        request: models::StartRequest,
    ) -> impl Future<Output = Result<models::AgentLoopInfo>> + Send;
    fn send_event(
        &self,
        ctx: CallContext,
        conversation_id: String,
        event: serde_json::Value,
    ) -> impl Future<Output = Result<()>> + Send;
    fn close(&self, ctx: CallContext, conversation_id: String) -> impl Future<Output = Result<bool>> + Send;
    fn running(
        &self,
        ctx: CallContext,
        filter_ids: Vec<String>,
    ) -> impl Future<Output = Result<Vec<models::AgentLoopInfo>>> + Send;
    fn subscribe(
        &self,
        ctx: CallContext,
        conversation_id: String,
        sink: EventSink,
    ) -> impl Future<Output = Result<u64>> + Send;
    fn unsubscribe(&self, ctx: CallContext, subscription_id: u64) -> impl Future<Output = Result<()>> + Send;
    fn health(&self) -> impl Future<Output = Result<String>> + Send {
        async { Ok("ok".to_owned()) }
    }
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// `/internal/cluster`: the nodes, leases, relay lag (a JSON object). Default:
    /// `UNIMPLEMENTED` (not a cluster).
    fn cluster(&self, _ctx: CallContext) -> impl Future<Output = Result<serde_json::Value>> + Send {
        async { Err(PluginError::new(ErrorCode::UNIMPLEMENTED, "this manager is not a cluster")) }
    }
    /// Where the conversation's tools act, for the host's workspace routes; `None` (the
    /// default) when it has no workspace.
    fn workspace(
        &self,
        _ctx: CallContext,
        _conversation_id: String,
    ) -> impl Future<Output = Result<Option<String>>> + Send {
        async { Ok(None) }
    }
}

/// `user_auth`: credentials -> user, or an `AUTH_*` error.
pub trait UserAuth: Send + Sync + 'static {
    fn authenticate(&self, ctx: CallContext, request: AuthRequest) -> impl Future<Output = Result<AuthOutcome>> + Send;
    /// Provider tokens brokered by the auth system; `None` (the default) = ask the secrets store.
    fn provider_tokens(
        &self,
        _ctx: CallContext,
    ) -> impl Future<Output = Result<Option<models::ProviderTokens>>> + Send {
        async { Ok(None) }
    }
    fn health(&self) -> impl Future<Output = Result<String>> + Send {
        async { Ok("ok".to_owned()) }
    }
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// `monitoring`: sync hooks that must not block (queue, then return).
pub trait MonitoringListener: Send + Sync + 'static {
    fn on_session_event(&self, _ctx: &CallContext, _event: &serde_json::Value) {}
    fn on_agent_session_start(&self, _ctx: &CallContext, _success: bool, _duration_secs: f64) {}
    fn on_create_conversation(&self, _ctx: &CallContext) {}
    /// A product-analytics event another plugin captured. Must queue and return.
    fn capture(&self, _ctx: &CallContext, _event: &str, _properties: &serde_json::Value) {}
    /// See `plugin_api::MonitoringListener::experiment_variant` (the query and the answer
    /// are `models::ExperimentQuery` / a JSON array of `models::ExperimentAssignment`).
    fn experiment_variant(
        &self,
        _ctx: CallContext,
        _experiment: String,
    ) -> impl Future<Output = Result<Option<String>>> + Send {
        async { Ok(None) }
    }
    /// See `plugin_api::MonitoringListener::admit`. Default: allowed.
    fn admit(&self, _ctx: CallContext, _admission: models::Admission) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }
    /// An LLM call's usage and cost. Must queue and return.
    fn on_llm_usage(&self, _ctx: &CallContext, _usage: &models::LlmUsage) {}
    fn health(&self) -> impl Future<Output = Result<String>> + Send {
        async { Ok("ok".to_owned()) }
    }
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// `runtime`: where the agent's tools act, a workspace per conversation (see
/// `plugin_api::Runtime` for each method's meaning and errors).
pub trait Runtime: Send + Sync + 'static {
    fn open(
        &self,
        ctx: CallContext,
        request: models::WorkspaceRequest,
    ) -> impl Future<Output = Result<models::WorkspaceInfo>> + Send;
    fn run(
        &self,
        ctx: CallContext,
        conversation_id: String,
        request: models::CommandRequest,
    ) -> impl Future<Output = Result<models::CommandResult>> + Send;
    fn interrupt(&self, ctx: CallContext, conversation_id: String) -> impl Future<Output = Result<bool>> + Send;
    fn list_files(
        &self,
        ctx: CallContext,
        conversation_id: String,
        path: String,
    ) -> impl Future<Output = Result<Vec<models::FileEntry>>> + Send;
    fn read_file(
        &self,
        ctx: CallContext,
        conversation_id: String,
        path: String,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Vec<u8>>> + Send;
    fn write_file(
        &self,
        ctx: CallContext,
        conversation_id: String,
        path: String,
        content: Vec<u8>,
    ) -> impl Future<Output = Result<()>> + Send;
    fn git_changes(
        &self,
        ctx: CallContext,
        conversation_id: String,
    ) -> impl Future<Output = Result<Vec<models::GitChange>>> + Send;
    fn git_original(
        &self,
        ctx: CallContext,
        conversation_id: String,
        path: String,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;
    fn close(&self, ctx: CallContext, conversation_id: String) -> impl Future<Output = Result<()>> + Send;
    fn destroy(&self, ctx: CallContext, conversation_id: String) -> impl Future<Output = Result<bool>> + Send;
    fn health(&self) -> impl Future<Output = Result<String>> + Send {
        async { Ok("ok".to_owned()) }
    }
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// `routes`: extra HTTP routes.
pub trait RouteHandler: Send + Sync + 'static {
    fn routes(&self) -> Vec<RouteSpec>;
    fn handle(&self, ctx: CallContext, request: HttpRequest) -> impl Future<Output = Result<HttpResponse>> + Send;
    fn health(&self) -> impl Future<Output = Result<String>> + Send {
        async { Ok("ok".to_owned()) }
    }
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}
