//! The registry of a library's implementations and the root module built from it.

use crate::{adapters::Adapter, logging, runtime, services::Services};
use plugin_api::{
    abi_stable::{
        library::{LibHeader, RootModuleResult},
        prefix_type::PrefixTypeTrait,
        sabi_trait::TD_Opaque,
        std_types::{RStr, RVec},
    },
    async_ffi::FfiFuture,
    ApiInfo, ConversationManagerObject, ConversationManager_TO, ConversationStoreObject, ConversationStore_TO,
    ErrorCode, ExtensionPoint, HostApi_Ref, HostServicesObject, ImplementationInfo, MonitoringListener_TO,
    MonitoringObject, PResult, PluginError, PluginLib, PluginLib_Ref, RouteHandler_TO, RoutesObject, RuntimeObject,
    Runtime_TO, SecretsStoreObject, SecretsStore_TO, SettingsStoreObject, SettingsStore_TO, UserAuthObject,
    UserAuth_TO,
};
use std::{sync::OnceLock, time::Duration};

type Ctor<O> = Box<dyn Fn(&str, Services) -> Result<O, PluginError> + Send + Sync>;

struct Entry<O> {
    name: String,
    description: String,
    ctor: Ctor<O>,
}

/// The implementations a library offers, filled by its `register` function.
#[derive(Default)]
pub struct Registry {
    settings: Vec<Entry<SettingsStoreObject>>,
    secrets: Vec<Entry<SecretsStoreObject>>,
    conversations: Vec<Entry<ConversationStoreObject>>,
    managers: Vec<Entry<ConversationManagerObject>>,
    auth: Vec<Entry<UserAuthObject>>,
    monitoring: Vec<Entry<MonitoringObject>>,
    routes: Vec<Entry<RoutesObject>>,
    runtimes: Vec<Entry<RuntimeObject>>,
}

macro_rules! registry_methods {
    ($($add:ident, $build:ident, $field:ident, $trait:ident, $to:ident, $obj:ty;)*) => {
        impl Registry {
            $(
                /// Registers an implementation: `ctor(config_json, services)` builds an instance.
                pub fn $add<T: crate::$trait>(
                    &mut self,
                    name: &str,
                    description: &str,
                    ctor: impl Fn(&str, Services) -> Result<T, PluginError> + Send + Sync + 'static,
                ) -> &mut Self {
                    self.$field.push(Entry {
                        name: name.to_owned(),
                        description: description.to_owned(),
                        ctor: Box::new(move |config, services| {
                            ctor(config, services).map(|t| $to::from_value(Adapter::new(t), TD_Opaque))
                        }),
                    });
                    self
                }

                /// Builds an instance without dynamic loading: for a plugin crate linked as an
                /// rlib (its tests, benchmarks). Starts the runtime if needed.
                pub fn $build(&self, name: &str, config_json: &str) -> Result<$obj, PluginError> {
                    runtime::start_runtime_for_tests();
                    build(&self.$field, name, config_json, Services::detached())
                }
            )*
        }
    };
}

registry_methods! {
    settings_store, build_settings_store, settings, SettingsStore, SettingsStore_TO, SettingsStoreObject;
    secrets_store, build_secrets_store, secrets, SecretsStore, SecretsStore_TO, SecretsStoreObject;
    conversation_store, build_conversation_store, conversations, ConversationStore, ConversationStore_TO, ConversationStoreObject;
    conversation_manager, build_conversation_manager, managers, ConversationManager, ConversationManager_TO, ConversationManagerObject;
    user_auth, build_user_auth, auth, UserAuth, UserAuth_TO, UserAuthObject;
    monitoring, build_monitoring, monitoring, MonitoringListener, MonitoringListener_TO, MonitoringObject;
    routes, build_routes, routes, RouteHandler, RouteHandler_TO, RoutesObject;
    runtime, build_runtime, runtimes, Runtime, Runtime_TO, RuntimeObject;
}

impl Registry {
    /// A registry filled by `register`, for tests that use a plugin crate as an rlib.
    pub fn from_register(register: fn(&mut Registry)) -> Registry {
        let mut r = Registry::default();
        register(&mut r);
        r
    }

    fn implementations(&self) -> Vec<ImplementationInfo> {
        fn infos<O>(point: ExtensionPoint, entries: &[Entry<O>]) -> impl Iterator<Item = ImplementationInfo> + '_ {
            entries.iter().map(move |e| ImplementationInfo {
                point,
                name: e.name.as_str().into(),
                description: e.description.as_str().into(),
            })
        }
        infos(ExtensionPoint::SETTINGS_STORE, &self.settings)
            .chain(infos(ExtensionPoint::SECRETS_STORE, &self.secrets))
            .chain(infos(ExtensionPoint::CONVERSATION_STORE, &self.conversations))
            .chain(infos(ExtensionPoint::CONVERSATION_MANAGER, &self.managers))
            .chain(infos(ExtensionPoint::USER_AUTH, &self.auth))
            .chain(infos(ExtensionPoint::MONITORING, &self.monitoring))
            .chain(infos(ExtensionPoint::ROUTES, &self.routes))
            .chain(infos(ExtensionPoint::RUNTIME, &self.runtimes))
            .collect()
    }
}

fn build<O>(entries: &[Entry<O>], name: &str, config: &str, services: Services) -> Result<O, PluginError> {
    let entry = entries.iter().find(|e| e.name == name).ok_or_else(|| {
        PluginError::new(ErrorCode::UNIMPLEMENTED, format!("this library has no implementation named `{name}` here"))
    })?;
    (entry.ctor)(config, services)
}

/// Parses an implementation's config, naming the problem on failure. Use a struct with
/// `#[serde(deny_unknown_fields)]` so that a misspelt key is an error, not a silent default.
pub fn parse_config<C: serde::de::DeserializeOwned>(config_json: &str) -> Result<C, PluginError> {
    let text = if config_json.trim().is_empty() { "{}" } else { config_json };
    serde_json::from_str(text).map_err(|e| PluginError::invalid_config(e.to_string()))
}

struct Library {
    name: &'static str,
    register: fn(&mut Registry),
}

static LIBRARY: OnceLock<Library> = OnceLock::new();
static REGISTRY: OnceLock<Registry> = OnceLock::new();

fn registry() -> &'static Registry {
    REGISTRY.get_or_init(|| {
        let mut r = Registry::default();
        if let Some(lib) = LIBRARY.get() {
            (lib.register)(&mut r);
        }
        r
    })
}

/// Used by [`crate::export_plugin!`]; not part of the public API.
#[doc(hidden)]
pub fn __root_module(
    name: &'static str,
    version: &'static str,
    panic_unwind: bool,
    register: fn(&mut Registry),
) -> PluginLib_Ref {
    let _ = LIBRARY.set(Library { name, register });
    PluginLib {
        api: ApiInfo {
            magic: plugin_api::API_MAGIC,
            major: plugin_api::API_MAJOR,
            minor: plugin_api::API_MINOR,
            panic_unwind,
            rustc: RStr::from_str(env!("OH_SDK_RUSTC")),
            target: RStr::from_str(env!("OH_SDK_TARGET")),
            sdk_version: RStr::from_str(env!("CARGO_PKG_VERSION")),
        },
        name: RStr::from_str(name),
        version: RStr::from_str(version),
        init,
        implementations,
        new_settings_store,
        new_secrets_store,
        new_conversation_store,
        new_conversation_manager,
        new_user_auth,
        new_monitoring,
        new_routes,
        shutdown,
        new_runtime,
    }
    .leak_into_prefix()
}

/// Used by [`crate::export_plugin!`]: the library header abi_stable's loader looks for.
#[doc(hidden)]
#[allow(unsafe_code)] // the one unsafe call of the SDK; see SAFETY below
pub const fn __lib_header(constructor: extern "C" fn() -> RootModuleResult) -> LibHeader {
    // SAFETY: `constructor` is the function `export_plugin!` generates, which returns the
    // `PluginLib_Ref` built by `__root_module`; the layout check stays on.
    unsafe {
        LibHeader::from_constructor::<PluginLib_Ref>(constructor, plugin_api::abi_stable::library::CheckTypeLayout::Yes)
    }
}

#[doc(hidden)]
pub fn __call_root_module_loader(f: fn() -> PluginLib_Ref) -> RootModuleResult {
    plugin_api::abi_stable::library::__call_root_module_loader(f)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LibraryConfig {
    /// Worker threads of the library's runtime (see [`default_workers`]).
    #[serde(default)]
    worker_threads: Option<usize>,
}

/// The host's threads poll every method's body, so a library's own workers only drive its
/// sockets and timers and run the tasks it spawns: one is enough (a second costs PostgreSQL
/// reads ~10% in wake-ups), except where agent loops run as tasks (conversation managers).
fn default_workers() -> usize {
    if registry().managers.is_empty() {
        1
    } else {
        2
    }
}

extern "C" fn init(host: HostApi_Ref, library_config_json: RStr<'_>) -> PResult<()> {
    runtime::guard(None, || {
        let name = LIBRARY.get().map(|l| l.name).unwrap_or("plugin");
        logging::install(host, name);
        let config: LibraryConfig = parse_config(library_config_json.as_str())
            .map_err(|e| PluginError::invalid_config(format!("[libraries.{name}]: {}", e.message)))?;
        let workers = config.worker_threads.unwrap_or_else(default_workers);
        runtime::start(name, workers)?;
        tracing::debug!(library = name, workers, "plugin library initialised");
        Ok(())
    })
    .into()
}

extern "C" fn implementations() -> RVec<ImplementationInfo> {
    runtime::guard(None, || Ok(registry().implementations().into())).unwrap_or_default()
}

macro_rules! factories {
    ($($fn:ident, $field:ident, $obj:ty;)*) => {$(
        extern "C" fn $fn(
            implementation: RStr<'_>,
            config_json: RStr<'_>,
            services: HostServicesObject,
        ) -> PResult<$obj> {
            runtime::guard(None, || {
                build(&registry().$field, implementation.as_str(), config_json.as_str(), Services::new(services))
            })
            .into()
        }
    )*};
}

factories! {
    new_settings_store, settings, SettingsStoreObject;
    new_secrets_store, secrets, SecretsStoreObject;
    new_conversation_store, conversations, ConversationStoreObject;
    new_conversation_manager, managers, ConversationManagerObject;
    new_user_auth, auth, UserAuthObject;
    new_monitoring, monitoring, MonitoringObject;
    new_routes, routes, RoutesObject;
    new_runtime, runtimes, RuntimeObject;
}

extern "C" fn shutdown(deadline_ms: u64) -> FfiFuture<()> {
    runtime::stop(Duration::from_millis(deadline_ms))
}

/// Exports the library's root module. Call once, in the library's `lib.rs`, with the function
/// that registers its implementations: `plugin_sdk::export_plugin!(register);`.
#[macro_export]
macro_rules! export_plugin {
    ($register:path) => {
        fn __oh_plugin_root_module() -> $crate::plugin_api::PluginLib_Ref {
            $crate::__root_module(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"), cfg!(panic = "unwind"), $register)
        }

        /// The header abi_stable's loader finds in every oh-host plugin library.
        #[no_mangle]
        #[allow(unsafe_code, non_upper_case_globals)]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::plugin_api::abi_stable::library::LibHeader = {
            extern "C" fn erased() -> $crate::plugin_api::abi_stable::library::RootModuleResult {
                $crate::__call_root_module_loader(__oh_plugin_root_module)
            }
            $crate::__lib_header(erased)
        };
    };
}
