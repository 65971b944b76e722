//! The root module each library exports, and the host API it receives.

use crate::{
    ext::{
        ConversationManagerObject, ConversationStoreObject, HostServicesObject, MonitoringObject, RoutesObject,
        RuntimeObject, SecretsStoreObject, SettingsStoreObject, UserAuthObject,
    },
    ImplementationInfo, PResult,
};
use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings,
    sabi_types::VersionStrings,
    std_types::{RSlice, RStr, RVec, Tuple2},
    StableAbi,
};
use async_ffi::FfiFuture;

/// Identifies the contract a library was built against, checked by the host before anything
/// else is called. `rustc`, `target` and `sdk_version` are for diagnostics only.
#[repr(C)]
#[derive(StableAbi, Copy, Clone, Debug)]
pub struct ApiInfo {
    /// Always [`crate::API_MAGIC`].
    pub magic: u64,
    pub major: u32,
    pub minor: u32,
    /// `cfg!(panic = "unwind")` in the library's build. The host refuses `false`: a plugin
    /// built with `panic = "abort"` would take the whole server down on its first panic.
    pub panic_unwind: bool,
    pub rustc: RStr<'static>,
    pub target: RStr<'static>,
    pub sdk_version: RStr<'static>,
}

/// Each `new_*` field is a factory: implementation name, its config (JSON) and the host's
/// services -> an instance.
///
/// The root module: what `lib<name>.so` exports (one per library).
///
/// A prefix type: fields can be appended in later versions. A factory called for an
/// implementation the library does not offer returns `UNIMPLEMENTED`.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginLib_Ref)))]
#[sabi(missing_field(option))]
pub struct PluginLib {
    pub api: ApiInfo,
    /// The library's name (its crate name), e.g. `file_stores`.
    pub name: RStr<'static>,
    pub version: RStr<'static>,
    /// Called once, before any factory: starts the library's runtime and log forwarding.
    /// `library_config_json` is the `[libraries.<name>]` table of `plugins.toml` (or `{}`).
    pub init: extern "C" fn(host: HostApi_Ref, library_config_json: RStr<'_>) -> PResult<()>,
    /// The implementations this library offers, per extension point.
    pub implementations: extern "C" fn() -> RVec<ImplementationInfo>,
    pub new_settings_store: extern "C" fn(
        implementation: RStr<'_>,
        config_json: RStr<'_>,
        services: HostServicesObject,
    ) -> PResult<SettingsStoreObject>,
    pub new_secrets_store: extern "C" fn(
        implementation: RStr<'_>,
        config_json: RStr<'_>,
        services: HostServicesObject,
    ) -> PResult<SecretsStoreObject>,
    pub new_conversation_store: extern "C" fn(
        implementation: RStr<'_>,
        config_json: RStr<'_>,
        services: HostServicesObject,
    ) -> PResult<ConversationStoreObject>,
    pub new_conversation_manager: extern "C" fn(
        implementation: RStr<'_>,
        config_json: RStr<'_>,
        services: HostServicesObject,
    ) -> PResult<ConversationManagerObject>,
    pub new_user_auth: extern "C" fn(
        implementation: RStr<'_>,
        config_json: RStr<'_>,
        services: HostServicesObject,
    ) -> PResult<UserAuthObject>,
    pub new_monitoring: extern "C" fn(
        implementation: RStr<'_>,
        config_json: RStr<'_>,
        services: HostServicesObject,
    ) -> PResult<MonitoringObject>,
    pub new_routes: extern "C" fn(
        implementation: RStr<'_>,
        config_json: RStr<'_>,
        services: HostServicesObject,
    ) -> PResult<RoutesObject>,
    /// Stops the library's runtime, waiting at most `deadline_ms`.
    #[sabi(last_prefix_field)]
    pub shutdown: extern "C" fn(deadline_ms: u64) -> FfiFuture<()>,
    /// The `runtime` factory. Added in plugin-api 1.1: `None` in a library built against
    /// 1.0, which offers no runtime.
    pub new_runtime: extern "C" fn(
        implementation: RStr<'_>,
        config_json: RStr<'_>,
        services: HostServicesObject,
    ) -> PResult<RuntimeObject>,
}

impl RootModule for PluginLib_Ref {
    declare_root_module_statics! {PluginLib_Ref}
    const BASE_NAME: &'static str = "oh_plugin";
    const NAME: &'static str = "oh-host plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// Log levels, as `tracing` orders them.
#[repr(u8)]
#[derive(StableAbi, Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

/// Callbacks the host gives each library at `init`, so that the library's logs, metrics and
/// spans land in the host's output. A prefix type: a field appended in a later minor reads as
/// `None` in a library that meets an older host (which cannot happen today: the loader refuses
/// a library newer than the host, but the accessors stay honest about it).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = HostApi_Ref)))]
#[sabi(missing_field(option))]
pub struct HostApi {
    /// Whether the host would record an event of this level and target.
    pub log_enabled: extern "C" fn(level: LogLevel, target: RStr<'_>) -> bool,
    /// Records one log event. `library` is the plugin library's name; `fields` is
    /// `key=value` text of the event's fields.
    pub log: extern "C" fn(level: LogLevel, library: RStr<'_>, target: RStr<'_>, message: RStr<'_>, fields: RStr<'_>),
    /// Adds `value` to a counter named `name` with these labels (name, value).
    pub metric: extern "C" fn(name: RStr<'_>, value: f64, labels: RSlice<'_, Label<'_>>),
    /// Sets a gauge (adds to it when `delta`).
    pub gauge: extern "C" fn(name: RStr<'_>, value: f64, delta: bool, labels: RSlice<'_, Label<'_>>),
    /// Records an observation in a histogram whose bucket upper bounds are `buckets` (the
    /// first observation of a name fixes them; empty: the host's seconds buckets).
    pub observe: extern "C" fn(name: RStr<'_>, value: f64, buckets: RSlice<'_, f64>, labels: RSlice<'_, Label<'_>>),
    /// A finished span for the host's trace exporter, as JSON: `{trace_id, span_id,
    /// parent_span_id, name, kind ("client"|"internal"), start_unix_nanos, end_unix_nanos,
    /// attributes, error}`; its parent is the `traceparent` of the `CallContext` it ran under.
    /// (JSON because a span's attributes are open-ended and the exporter's format is.)
    pub span: extern "C" fn(span_json: RStr<'_>),
    /// Whether the host exports traces (a plugin makes no spans otherwise).
    pub tracing_enabled: extern "C" fn() -> bool,
    /// Whether this process only checks (`oh-host check`): instances are built and probed,
    /// and must write nothing (no migration, no file, no registration, no worker taking
    /// work).
    #[sabi(last_prefix_field)]
    pub read_only: extern "C" fn() -> bool,
}

/// One metric label: (name, value).
pub type Label<'a> = Tuple2<RStr<'a>, RStr<'a>>;
