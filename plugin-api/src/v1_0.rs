//! The types of plugin-api 1.0 that later minors extended, frozen as 1.0 released them.
//!
//! abi_stable checks a library's layouts against the host's, and refuses a prefix type or a
//! trait's vtable with **fewer** fields in the library than in the host: its model is a host
//! no newer than its libraries. Ours is the opposite (a library built against 1.k loads in
//! every host 1.m, m >= k), so the host keeps each released definition of every type a later
//! minor extended, and checks a library built against 1.k against the 1.k definitions
//! (`host/src/loader.rs` chooses them from the version in the library's header). A type is
//! frozen here the first time a minor extends it; types no minor changed are shared with the
//! current contract (`crate::SettingsStoreObject`, ...).
//!
//! Extended in 1.1: [`PluginLib`] (the `runtime` factory) and [`HostServices`] (`runtime`).

#![allow(non_local_definitions)] // emitted by #[sabi_trait] on recent compilers; harmless

use crate::{
    ApiInfo, AppMode, CallContext, ConversationManagerObject, ConversationStoreObject, ExtensionPoint, HostApi_Ref,
    ImplementationInfo, MonitoringObject, PResult, RoutesObject, SecretsStoreObject, SettingsStoreObject,
    UserAuthObject,
};
use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RStr, RString, RVec},
    StableAbi,
};
use async_ffi::FfiFuture;

/// `HostServices` as 1.0 released it (see the current [`crate::HostServices`]).
#[sabi_trait]
pub trait HostServices: Send + Sync {
    fn call(
        &self,
        ctx: CallContext,
        point: ExtensionPoint,
        method: RString,
        args_json: RString,
    ) -> FfiFuture<PResult<RString>>;
    fn app_mode(&self) -> AppMode;
    #[sabi(last_prefix_field)]
    fn state_dir(&self) -> RString;
}

/// The host's services as a 1.0 library's factories receive them.
pub type HostServicesObject = HostServices_TO<'static, RBox<()>>;

/// The root module as 1.0 released it (see the current [`crate::PluginLib`]).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginLib_Ref)))]
#[sabi(missing_field(option))]
pub struct PluginLib {
    pub api: ApiInfo,
    pub name: RStr<'static>,
    pub version: RStr<'static>,
    pub init: extern "C" fn(host: HostApi_Ref, library_config_json: RStr<'_>) -> PResult<()>,
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
    #[sabi(last_prefix_field)]
    pub shutdown: extern "C" fn(deadline_ms: u64) -> FfiFuture<()>,
}

impl RootModule for PluginLib_Ref {
    declare_root_module_statics! {PluginLib_Ref}
    const BASE_NAME: &'static str = "oh_plugin";
    const NAME: &'static str = "oh-host plugin (plugin-api 1.0)";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
