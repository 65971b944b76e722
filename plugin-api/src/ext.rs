//! The extension points, as stable-ABI trait objects, and the host-side objects plugins get.
//!
//! Rules every trait follows (`docs/plugin-api.md` is the full contract):
//! - I/O methods return an [`FfiFuture`] and take a [`CallContext`]; the plugin runs the work on
//!   its own runtime and the host bounds the wait with the context's deadline.
//! - Documents cross as JSON text of the types in [`crate::models`]: a field added to a document
//!   later does not break a library built earlier.
//! - Every trait has `health` and `shutdown`.
//! - The methods of 1.0 end at the one marked `#[sabi(last_prefix_field)]`: every library has
//!   them. A method added in a minor release is appended after it **with a default body** in
//!   the trait declaration (the documented default: usually an `UNIMPLEMENTED` error); abi_stable
//!   runs that body when the object comes from a library built before the method existed, so
//!   the caller never meets a missing method.
//! - Sync methods are only for cheap, non-blocking work.
#![allow(non_local_definitions)] // emitted by #[sabi_trait] on recent compilers; harmless

use crate::{AppMode, CallContext, ExtensionPoint, PResult};
use abi_stable::{
    sabi_trait,
    std_types::{RBox, ROption, RString, RVec, Tuple2},
    StableAbi,
};
use async_ffi::FfiFuture;

/// A header list (name, value), in the order received.
pub type Headers = RVec<Tuple2<RString, RString>>;

// The owned trait objects, one per trait: what a factory returns, what the host holds and
// what the SDK builds. Named once, here, so neither side spells `_TO<'static, RBox<()>>`.

/// An owned `settings_store` instance.
pub type SettingsStoreObject = SettingsStore_TO<'static, RBox<()>>;
/// An owned `secrets_store` instance.
pub type SecretsStoreObject = SecretsStore_TO<'static, RBox<()>>;
/// An owned `conversation_store` instance.
pub type ConversationStoreObject = ConversationStore_TO<'static, RBox<()>>;
/// An owned `conversation_manager` instance.
pub type ConversationManagerObject = ConversationManager_TO<'static, RBox<()>>;
/// An owned `user_auth` instance.
pub type UserAuthObject = UserAuth_TO<'static, RBox<()>>;
/// An owned `monitoring` instance.
pub type MonitoringObject = MonitoringListener_TO<'static, RBox<()>>;
/// An owned `routes` instance.
pub type RoutesObject = RouteHandler_TO<'static, RBox<()>>;
/// An owned `runtime` instance (the host hands managers one through
/// [`HostServices::runtime`]). Added in plugin-api 1.1.
pub type RuntimeObject = Runtime_TO<'static, RBox<()>>;
/// The host's services, as every factory receives them.
pub type HostServicesObject = HostServices_TO<'static, RBox<()>>;
/// A live-event sink, as `ConversationManager::subscribe` receives it.
pub type EventSinkObject = EventSink_TO<'static, RBox<()>>;

/// What a `health` call reports when the instance is fine; failures are errors.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct Health {
    /// A short human-readable status ("ok", "3 connections idle", ...).
    pub detail: RString,
}

/// `settings_store`: load and store one user's Settings document (OpenHands §3).
#[sabi_trait]
pub trait SettingsStore: Send + Sync {
    /// The user's `models::Settings` as JSON (secret fields included), or `None` if never stored.
    fn load(&self, ctx: CallContext) -> FfiFuture<PResult<ROption<RString>>>;
    /// Replaces the user's Settings with this JSON document.
    fn store(&self, ctx: CallContext, settings_json: RString) -> FfiFuture<PResult<()>>;
    fn health(&self, ctx: CallContext) -> FfiFuture<PResult<Health>>;
    fn shutdown(&self, deadline_ms: u64) -> FfiFuture<()>;
    /// `oh-host migrate`: brings the store's schema up to date; answers a report for the
    /// operator (a JSON object the CLI prints). `UNIMPLEMENTED` from a store with no schema.
    ///
    fn migrate(&self, ctx: CallContext) -> FfiFuture<PResult<RString>>;
    /// `oh-host rotate-keys`: re-seals what the store keeps sealed with the deployment's
    /// current master key (resumable, safe while serving); answers a report for the operator
    /// (a JSON object: what was re-sealed, what remains). `UNIMPLEMENTED` from a store that
    /// seals nothing with the deployment's keys.
    fn rotate_keys(&self, ctx: CallContext) -> FfiFuture<PResult<RString>>;
    /// The user's Settings with their version (`models::VersionedSettings` JSON), or `None`.
    /// `UNIMPLEMENTED` from a store that keeps no versions.
    fn load_versioned(&self, ctx: CallContext) -> FfiFuture<PResult<ROption<RString>>>;
    /// Stores the Settings only if the stored version is still `expected_version` (0: nothing
    /// stored yet) and answers the new version; `CONFLICT` when another writer (another host
    /// included) stored first: the caller reloads and tries again.
    #[sabi(last_prefix_field)]
    fn store_versioned(
        &self,
        ctx: CallContext,
        settings_json: RString,
        expected_version: u64,
    ) -> FfiFuture<PResult<u64>>;
}

/// `secrets_store`: provider tokens and custom secrets of one user (OpenHands §4).
#[sabi_trait]
pub trait SecretsStore: Send + Sync {
    /// The user's `models::Secrets` as JSON with plaintext values, or `None`.
    fn load(&self, ctx: CallContext) -> FfiFuture<PResult<ROption<RString>>>;
    /// Replaces the user's Secrets with this JSON document.
    fn store(&self, ctx: CallContext, secrets_json: RString) -> FfiFuture<PResult<()>>;
    fn health(&self, ctx: CallContext) -> FfiFuture<PResult<Health>>;
    fn shutdown(&self, deadline_ms: u64) -> FfiFuture<()>;
    /// `oh-host migrate`: brings the store's schema up to date; answers a report for the
    /// operator (a JSON object the CLI prints). `UNIMPLEMENTED` from a store with no schema.
    ///
    fn migrate(&self, ctx: CallContext) -> FfiFuture<PResult<RString>>;
    /// `oh-host rotate-keys`: re-seals what the store keeps sealed with the deployment's
    /// current master key (resumable, safe while serving); answers a report for the operator
    /// (a JSON object: what was re-sealed, what remains). `UNIMPLEMENTED` from a store that
    /// seals nothing with the deployment's keys.
    fn rotate_keys(&self, ctx: CallContext) -> FfiFuture<PResult<RString>>;
    /// Applies one change (`models::SecretsChange` JSON) atomically with respect to every other
    /// writer, other hosts included, touching only what it names; `NOT_FOUND` /
    /// `ALREADY_EXISTS` as the change says. `UNIMPLEMENTED` from a store that cannot.
    #[sabi(last_prefix_field)]
    fn update(&self, ctx: CallContext, change_json: RString) -> FfiFuture<PResult<()>>;
}

/// A page request for event reads.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct EventQuery {
    /// First event id to return (inclusive).
    pub start_id: u64,
    /// Last event id to return (inclusive), if bounded.
    pub end_id: ROption<u64>,
    /// Newest first instead of oldest first.
    pub reverse: bool,
    /// At most this many events.
    pub limit: u32,
}

impl EventQuery {
    /// Events `start_id..=end_id` (unbounded without `end_id`), at most `limit`.
    pub fn new(start_id: u64, end_id: Option<u64>, reverse: bool, limit: u32) -> Self {
        EventQuery { start_id, end_id: end_id.into(), reverse, limit }
    }
}

/// `conversation_store`: conversation metadata and the append-only event log (OpenHands §5).
/// Every call is scoped by `ctx.user_id`: a conversation of another user does not exist.
#[sabi_trait]
pub trait ConversationStore: Send + Sync {
    /// Creates or replaces `models::ConversationMetadata` (JSON).
    fn save_metadata(&self, ctx: CallContext, metadata_json: RString) -> FfiFuture<PResult<()>>;
    /// The metadata as JSON, or `None` when the conversation does not exist for this user.
    fn get_metadata(&self, ctx: CallContext, conversation_id: RString) -> FfiFuture<PResult<ROption<RString>>>;
    /// Deletes the metadata and the events; `false` when there was nothing to delete.
    fn delete_metadata(&self, ctx: CallContext, conversation_id: RString) -> FfiFuture<PResult<bool>>;
    /// Whether `user_id` owns the conversation (OpenHands `validate_metadata`).
    fn validate_metadata(
        &self,
        ctx: CallContext,
        conversation_id: RString,
        user_id: RString,
    ) -> FfiFuture<PResult<bool>>;
    /// Newest first, `models::ConversationMetadataResultSet` as JSON.
    fn search(&self, ctx: CallContext, page_id: ROption<RString>, limit: u32) -> FfiFuture<PResult<RString>>;
    /// Appends events (JSON objects) in order, giving them dense ids that continue the log.
    /// Returns the id given to the first one.
    fn append_events(
        &self,
        ctx: CallContext,
        conversation_id: RString,
        events_json: RVec<RString>,
    ) -> FfiFuture<PResult<u64>>;
    /// A page of stored events, `models::EventPage` as JSON.
    fn get_events(&self, ctx: CallContext, conversation_id: RString, query: EventQuery) -> FfiFuture<PResult<RString>>;
    fn health(&self, ctx: CallContext) -> FfiFuture<PResult<Health>>;
    fn shutdown(&self, deadline_ms: u64) -> FfiFuture<()>;
    /// `oh-host migrate`: brings the store's schema up to date; answers a report for the
    /// operator (a JSON object the CLI prints). `UNIMPLEMENTED` from a store with no schema.
    ///
    fn migrate(&self, ctx: CallContext) -> FfiFuture<PResult<RString>>;
    /// `oh-host rotate-keys`: re-seals what the store keeps sealed with the deployment's
    /// current master key (resumable, safe while serving); answers a report for the operator
    /// (a JSON object: what was re-sealed, what remains). `UNIMPLEMENTED` from a store that
    /// seals nothing with the deployment's keys.
    fn rotate_keys(&self, ctx: CallContext) -> FfiFuture<PResult<RString>>;
    /// [`ConversationStore::append_events`] by the holder of fencing token `fence` (a
    /// conversation's owner in a cluster; tokens grow with each new owner). The store keeps
    /// the highest token it has seen per conversation and refuses (`CONFLICT`) an append with
    /// a lower one, atomically with the append: a node that lost its lease while paused cannot
    /// write after its successor did.
    #[sabi(last_prefix_field)]
    fn append_events_fenced(
        &self,
        ctx: CallContext,
        conversation_id: RString,
        events_json: RVec<RString>,
        fence: u64,
    ) -> FfiFuture<PResult<u64>>;
}

/// Where a conversation manager pushes a conversation's live events; implemented by the host.
/// `send` must not block: the host queues, and returns `false` once the subscriber is gone.
#[sabi_trait]
pub trait EventSink: Send + Sync {
    /// One `oh_event` payload (an event, or a status update), as JSON.
    #[sabi(last_prefix_field)]
    fn send(&self, event_json: RString) -> bool;
}

/// `conversation_manager`: runs agent loops (OpenHands §6). Requests and answers are JSON of
/// the types in `models` (`StartRequest`, `AgentLoopInfo`).
#[sabi_trait]
pub trait ConversationManager: Send + Sync {
    /// Starts the agent loop of a conversation unless it runs already; returns `AgentLoopInfo`.
    fn maybe_start(&self, ctx: CallContext, request_json: RString) -> FfiFuture<PResult<RString>>;
    /// Delivers a user event (an action dict) to a running conversation.
    fn send_event(&self, ctx: CallContext, conversation_id: RString, event_json: RString) -> FfiFuture<PResult<()>>;
    /// Stops a conversation's loop; `false` when it was not running.
    fn close(&self, ctx: CallContext, conversation_id: RString) -> FfiFuture<PResult<bool>>;
    /// `AgentLoopInfo`s (JSON array) of running loops, filtered by user and by ids when given.
    fn running(&self, ctx: CallContext, filter_ids: RVec<RString>) -> FfiFuture<PResult<RString>>;
    /// Subscribes a sink to the live events of a conversation; returns a subscription id.
    fn subscribe(&self, ctx: CallContext, conversation_id: RString, sink: EventSinkObject) -> FfiFuture<PResult<u64>>;
    fn unsubscribe(&self, ctx: CallContext, subscription_id: u64) -> FfiFuture<PResult<()>>;
    fn health(&self, ctx: CallContext) -> FfiFuture<PResult<Health>>;
    fn shutdown(&self, deadline_ms: u64) -> FfiFuture<()>;
    /// `/internal/cluster` (the operators' address): the nodes, their leases and relay lag,
    /// as a report (a JSON object). `UNIMPLEMENTED` from a manager that is not a cluster.
    ///
    fn cluster(&self, ctx: CallContext) -> FfiFuture<PResult<RString>>;
    /// The directory where the conversation's tools act (its workspace), for the host's
    /// workspace routes; `None` when the manager runs it without one (a chat without tools,
    /// or not started yet). The host has checked the caller owns the conversation.
    #[sabi(last_prefix_field)]
    fn workspace(&self, ctx: CallContext, conversation_id: RString) -> FfiFuture<PResult<ROption<RString>>>;
}

/// What the auth gate hands to `user_auth`.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct AuthRequest {
    pub method: RString,
    /// Path without the query string.
    pub path: RString,
    pub query: RString,
    /// Request headers, cookies included (`cookie`).
    pub headers: Headers,
    pub remote_addr: RString,
}

/// How the user authenticated (OpenHands `AuthType`).
#[repr(transparent)]
#[derive(StableAbi, Copy, Clone, Debug, PartialEq, Eq)]
pub struct AuthType(pub u32);

impl AuthType {
    pub const NONE: AuthType = AuthType(0);
    pub const COOKIE: AuthType = AuthType(1);
    pub const BEARER: AuthType = AuthType(2);
}

/// A successful authentication.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct AuthOutcome {
    /// `None` = single-user mode (OpenHands' `user_id is None`).
    pub user_id: ROption<RString>,
    pub email: ROption<RString>,
    pub auth_type: AuthType,
    /// Headers the host adds to the response (e.g. a refreshed `Set-Cookie`).
    pub response_headers: Headers,
}

/// `user_auth`: turns a request's credentials into a user or a typed error (OpenHands §7).
/// Errors use the `AUTH_*` codes of [`crate::ErrorCode`].
#[sabi_trait]
pub trait UserAuth: Send + Sync {
    fn authenticate(&self, ctx: CallContext, request: AuthRequest) -> FfiFuture<PResult<AuthOutcome>>;
    /// The user's git provider tokens (`models::ProviderTokens` JSON) when the auth system
    /// brokers them, `None` when the secrets store holds them.
    fn provider_tokens(&self, ctx: CallContext) -> FfiFuture<PResult<ROption<RString>>>;
    fn health(&self, ctx: CallContext) -> FfiFuture<PResult<Health>>;
    #[sabi(last_prefix_field)]
    fn shutdown(&self, deadline_ms: u64) -> FfiFuture<()>;
}

/// `monitoring` (0..n): hears what happens. The hooks are sync and must not block or do I/O
/// inline: queue and return (OpenHands §8).
#[sabi_trait]
pub trait MonitoringListener: Send + Sync {
    fn on_session_event(&self, ctx: CallContext, event_json: RString);
    fn on_agent_session_start(&self, ctx: CallContext, success: bool, duration_secs: f64);
    fn on_create_conversation(&self, ctx: CallContext);
    /// The experiments a starting conversation takes part in. The host sends
    /// `models::ExperimentQuery` as JSON; a listener that runs experiments answers a JSON array
    /// of `models::ExperimentAssignment` (what each changes: the model, the system prompt),
    /// others `None`. Asked once per start; the answer must not change for a user.
    fn experiment_variant(&self, ctx: CallContext, experiment: RString) -> FfiFuture<PResult<ROption<RString>>>;
    fn health(&self, ctx: CallContext) -> FfiFuture<PResult<Health>>;
    fn shutdown(&self, deadline_ms: u64) -> FfiFuture<()>;
    /// A product-analytics event another plugin captured (`host_calls::Capture`: "user signed
    /// in", "api key created"), for the calling user. Must queue and return.
    fn capture(&self, ctx: CallContext, event: RString, properties_json: RString);
    /// May the calling user do this (`models::Admission` as JSON: start a conversation, make
    /// an LLM call)? `Ok` lets it happen; `PAYMENT_REQUIRED` refuses it (402: no credits),
    /// as may any other error. Listeners that do not gate answer `Ok`. Asked before every
    /// start and every LLM call, so it must be quick.
    fn admit(&self, ctx: CallContext, admission_json: RString) -> FfiFuture<PResult<()>>;
    /// An LLM call's usage and cost (`models::LlmUsage` as JSON), once per stored agent
    /// message, for the calling user. Must queue and return.
    #[sabi(last_prefix_field)]
    fn on_llm_usage(&self, ctx: CallContext, usage_json: RString);
}

/// One route a `routes` instance serves.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct RouteSpec {
    /// `GET`, `POST`, ... or `*` for any.
    pub method: RString,
    /// An axum path (`/api/keys/{id}`); absolute.
    pub path: RString,
    /// Whether the host's auth gate runs before the handler (the user id is then in the
    /// call context).
    pub authenticated: bool,
}

/// An HTTP request as a route handler sees it (body fully read, bounded by the host).
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct HttpRequest {
    pub method: RString,
    pub path: RString,
    pub query: RString,
    pub headers: Headers,
    pub body: RVec<u8>,
}

/// A route handler's answer.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Headers,
    pub body: RVec<u8>,
}

/// `routes` (0..n): extra HTTP routes (OAuth callbacks, webhooks, billing, ...).
#[sabi_trait]
pub trait RouteHandler: Send + Sync {
    /// Read once after the instance is built.
    fn routes(&self) -> RVec<RouteSpec>;
    fn handle(&self, ctx: CallContext, request: HttpRequest) -> FfiFuture<PResult<HttpResponse>>;
    fn health(&self, ctx: CallContext) -> FfiFuture<PResult<Health>>;
    #[sabi(last_prefix_field)]
    fn shutdown(&self, deadline_ms: u64) -> FfiFuture<()>;
}

/// `runtime` (zero or one): where the agent's tools act, one workspace per conversation
/// (OpenHands' runtime: Docker, remote, Kubernetes, here bubblewrap or a local shell). Requests
/// and answers are JSON of the types in `models` (`WorkspaceRequest`, `WorkspaceInfo`,
/// `CommandRequest`, `CommandResult`, `FileEntry`, `GitChange`). Paths are the agent's: relative
/// to the workspace, or absolute within it; one that leads out is `INVALID_ARGUMENT`. A
/// conversation whose workspace was never opened is `NOT_FOUND` for every method but `open`.
/// Added in plugin-api 1.1.
#[sabi_trait]
pub trait Runtime: Send + Sync {
    /// Makes the conversation's workspace ready and answers `WorkspaceInfo`: a new one is a
    /// clone of the request's repository (with its token, which must not stay in the
    /// workspace), else an empty git repository; a clone that fails leaves an empty
    /// repository and says why in `clone_error`. An existing workspace is reopened as it is.
    fn open(&self, ctx: CallContext, request_json: RString) -> FfiFuture<PResult<RString>>;
    /// One step of the conversation's shell, as OpenHands' `execute_bash` (`CommandRequest` →
    /// `CommandResult`): a new command (refused while one runs), input or a key (`C-c`,
    /// `C-z`, `C-d`) for the running one, or an empty command to read more of its output. The
    /// call answers when the command ends, when it printed nothing for 10 s, or after the
    /// request's soft timeout; the command goes on between calls, and the shell's directory
    /// and exported variables carry over to the next command. The runtime kills a command at
    /// its own hard limit.
    fn run(&self, ctx: CallContext, conversation_id: RString, request_json: RString) -> FfiFuture<PResult<RString>>;
    /// Kills what runs in the conversation's shell (the user stopped the agent): a `run` in
    /// progress answers at once. `false` when nothing ran.
    fn interrupt(&self, ctx: CallContext, conversation_id: RString) -> FfiFuture<PResult<bool>>;
    /// The entries of a workspace directory (`""`: its root), as a JSON array of `FileEntry`.
    fn list_files(&self, ctx: CallContext, conversation_id: RString, path: RString) -> FfiFuture<PResult<RString>>;
    /// A file's bytes; `TOO_LARGE` past `max_bytes`, `NOT_A_FILE` for anything but a regular
    /// file, `NOT_FOUND` when absent.
    fn read_file(
        &self,
        ctx: CallContext,
        conversation_id: RString,
        path: RString,
        max_bytes: u64,
    ) -> FfiFuture<PResult<RVec<u8>>>;
    /// Writes a file (made, or replaced whole), never through a link the workspace holds.
    fn write_file(
        &self,
        ctx: CallContext,
        conversation_id: RString,
        path: RString,
        content: RVec<u8>,
    ) -> FfiFuture<PResult<()>>;
    /// What changed since the last commit, as a JSON array of `GitChange`; `NOT_FOUND` when
    /// the workspace is not a git repository. Nothing the workspace configures may run.
    fn git_changes(&self, ctx: CallContext, conversation_id: RString) -> FfiFuture<PResult<RString>>;
    /// A file as of the last commit; `None` when it was not committed. `TOO_LARGE` past
    /// `max_bytes`.
    fn git_original(
        &self,
        ctx: CallContext,
        conversation_id: RString,
        path: RString,
        max_bytes: u64,
    ) -> FfiFuture<PResult<ROption<RVec<u8>>>>;
    /// The conversation stopped: end what runs in its workspace (its files stay).
    fn close(&self, ctx: CallContext, conversation_id: RString) -> FfiFuture<PResult<()>>;
    /// The conversation was deleted: remove its workspace; `false` when there was none.
    fn destroy(&self, ctx: CallContext, conversation_id: RString) -> FfiFuture<PResult<bool>>;
    fn health(&self, ctx: CallContext) -> FfiFuture<PResult<Health>>;
    #[sabi(last_prefix_field)]
    fn shutdown(&self, deadline_ms: u64) -> FfiFuture<()>;
}

/// The host's side of the wiring, given to every instance when it is built: how a plugin
/// reaches the other extension points (a conversation manager stores events through the
/// configured `conversation_store`, reads settings, calls the monitoring listeners).
///
/// `call` is a small RPC so that the set of reachable operations can grow without an ABI
/// change: `point` is the extension point that serves it, `method` its name, `args_json` a
/// JSON object of the arguments; the answer is JSON. The operations, their arguments and
/// answers are the types of [`crate::host_calls`]; neither side spells them by hand. A host
/// that does not know an operation answers `UNIMPLEMENTED` (the plugin's "unsupported").
#[sabi_trait]
pub trait HostServices: Send + Sync {
    fn call(
        &self,
        ctx: CallContext,
        point: ExtensionPoint,
        method: RString,
        args_json: RString,
    ) -> FfiFuture<PResult<RString>>;
    /// `[server] app_mode`.
    fn app_mode(&self) -> AppMode;
    /// The root directory for file-backed state (`[server] state_dir`, `~` expanded).
    #[sabi(last_prefix_field)]
    fn state_dir(&self) -> RString;
    /// The deployment's `runtime`, when the profile configures one: a handle whose calls go
    /// through the host (deadlines, panic containment, counters) to the runtime instance.
    /// Each call answers a new handle. Added in plugin-api 1.1 (a host before it has none).
    fn runtime(&self) -> ROption<RuntimeObject> {
        ROption::RNone
    }
}
