//! Building the registry from a profile: load each library once, check each implementation,
//! instantiate it, read what routes it declares; every problem collected, nothing half-built.

use super::{
    call::{Kind, Meta},
    services::Services,
    Kept, Registry,
};
use crate::{
    config::{Config, ExtensionConfig},
    loader::{self, Library, Root},
};
use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RStr, RVec},
};
use async_ffi::FfiFuture;
use plugin_api::{
    CallContext, ConversationManagerObject, ConversationManager_TO, ConversationStoreObject, ConversationStore_TO,
    ErrorCode, ExtensionPoint, Health, HostServices_TO, MonitoringListener_TO, MonitoringObject, PResult,
    RouteHandler_TO, RouteSpec, RoutesObject, RuntimeObject, Runtime_TO, SecretsStoreObject, SecretsStore_TO,
    SettingsStoreObject, SettingsStore_TO, UserAuthObject, UserAuth_TO,
};
use std::sync::{Arc, OnceLock};

/// One instance: the stable-ABI object (reached only by the registry's typed calls) and what
/// the host knows about it.
pub(crate) struct Instance<T> {
    pub(super) obj: T,
    pub(crate) meta: Meta,
}

/// What every extension point's object has: the lifecycle methods.
pub(crate) trait Object: Send + Sync + 'static {
    fn health(&self, ctx: CallContext) -> FfiFuture<PResult<Health>>;
    fn shutdown(&self, deadline_ms: u64) -> FfiFuture<()>;
}

macro_rules! objects {
    ($($obj:ty => $trait:path;)*) => {$(
        impl Object for $obj {
            fn health(&self, ctx: CallContext) -> FfiFuture<PResult<Health>> {
                <$obj as $trait>::health(self, ctx)
            }
            fn shutdown(&self, deadline_ms: u64) -> FfiFuture<()> {
                <$obj as $trait>::shutdown(self, deadline_ms)
            }
        }
    )*};
}

objects! {
    SettingsStoreObject => plugin_api::SettingsStore;
    SecretsStoreObject => plugin_api::SecretsStore;
    ConversationStoreObject => plugin_api::ConversationStore;
    ConversationManagerObject => plugin_api::ConversationManager;
    UserAuthObject => plugin_api::UserAuth;
    MonitoringObject => plugin_api::MonitoringListener;
    RoutesObject => plugin_api::RouteHandler;
    RuntimeObject => plugin_api::Runtime;
}

/// Any instance, for what the host does to all of them (health, shutdown, listings).
pub(crate) trait AnyInstance: Send + Sync {
    fn meta(&self) -> &Meta;
    fn health(&self, ctx: CallContext) -> FfiFuture<PResult<Health>>;
    fn shutdown(&self, deadline_ms: u64) -> FfiFuture<()>;
}

impl<T: Object> AnyInstance for Instance<T> {
    fn meta(&self) -> &Meta {
        &self.meta
    }
    fn health(&self, ctx: CallContext) -> FfiFuture<PResult<Health>> {
        self.obj.health(ctx)
    }
    fn shutdown(&self, deadline_ms: u64) -> FfiFuture<()> {
        self.obj.shutdown(deadline_ms)
    }
}

/// Why the registry could not be built: every problem, each naming the extension point and
/// the library.
#[derive(Debug)]
pub struct LoadErrors {
    pub problems: Vec<String>,
    /// The routes the `routes` instances that did build declared (instance, origin, route),
    /// for `check` to find their overlaps in the same run.
    pub routes: Vec<(usize, String, super::DeclaredRoute)>,
}

impl std::fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.problems.len();
        writeln!(f, "cannot load the plugins: {n} problem{}", if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

/// A factory of the library's root module, called with the host's services as the minor the
/// library was built against defines them (`plugin_api::v1_0` for 1.0).
macro_rules! factory {
    ($root:expr, $new:ident, $services:expr) => {
        move |implementation: &str, config: &str| {
            let (i, c) = (RStr::from_str(implementation), RStr::from_str(config));
            match $root {
                Root::V1_0(m) => (m.$new())(i, c, plugin_api::v1_0::HostServices_TO::from_value($services, TD_Opaque)),
                Root::Current(m) => (m.$new())(i, c, HostServices_TO::from_value($services, TD_Opaque)),
            }
        }
    };
}

/// Builds one instance with the library's factory for its extension point.
fn instantiate<O>(
    factory: impl FnOnce(&str, &str) -> PResult<O>,
    e: &ExtensionConfig,
    lib: &Library,
) -> Result<Arc<Instance<O>>, String> {
    let meta = Meta::new(e, lib.sha256.clone(), lib.api.minor);
    let built = meta.call_sync_as("new", || factory(&e.implementation, &e.config_json).into_result(), Kind::Probe);
    match built.map_err(|e| e.error).and_then(|r| r) {
        Ok(obj) => Ok(Arc::new(Instance { obj, meta })),
        Err(err) => {
            let what = if err.code == ErrorCode::INVALID_CONFIG { "rejected its config" } else { "failed to start" };
            Err(format!("{}: {} ({}) {what}: {}", e.key, e.implementation, lib.path.display(), err))
        }
    }
}

/// Builds an isolated entry's instance: its runner, and the proxy the registry calls.
fn isolated<O>(
    e: &ExtensionConfig,
    config: &Config,
    services: Services,
    runtime: tokio::runtime::Handle,
    wrap: impl FnOnce(crate::isolation::Proxy) -> O,
) -> Result<Arc<Instance<O>>, String> {
    let services = HostServices_TO::from_value(services, TD_Opaque);
    let (proxy, runner, sha256, api_minor) = crate::isolation::start(e, config, services, runtime)?;
    let mut meta = Meta::new(e, loader::LibrarySum::known(sha256), api_minor);
    meta.runner = Some(runner);
    Ok(Arc::new(Instance { obj: wrap(proxy), meta }))
}

/// Each entry's sha256 pin against its library's file, read once per library; a missing or
/// unreadable file is left to the loader's message.
fn check_pins(config: &Config) -> Vec<String> {
    let mut sums: std::collections::HashMap<&str, Option<String>> = std::collections::HashMap::new();
    let mut problems = Vec::new();
    for e in &config.extensions {
        let Some(pin) = e.sha256.as_deref() else { continue };
        let path = loader::library_path(&config.server.plugins_dir, &e.library);
        let sum = sums.entry(e.library.as_str()).or_insert_with(|| loader::file_sha256(&path).ok());
        if let Some(sum) = sum.as_deref().filter(|sum| !pin.eq_ignore_ascii_case(sum)) {
            problems.push(format!(
                "{}: {}: sha256 is {sum} but the profile pins {pin}; refusing to load it (if the new build is intended, update the pin)",
                e.key,
                path.display()
            ));
        }
    }
    problems
}

/// Loads (once) and initialises the library an entry names; on a reload, the previous
/// generation's library when its file is the same (same sha256: a file replaced in place is
/// a new library, loaded from its own private copy).
fn library(
    config: &Config,
    e: &ExtensionConfig,
    libraries: &mut Vec<Library>,
    previous: &[Library],
    loaded: &mut std::collections::BTreeMap<String, Result<Library, String>>,
) -> Result<Library, String> {
    if !libraries.iter().any(|l| l.name == e.library) {
        let path = loader::library_path(&config.server.plugins_dir, &e.library);
        let same =
            |l: &&Library| l.name == e.library && loader::file_sha256(&path).is_ok_and(|sum| sum == l.sha256.get());
        if let Some(l) = previous.iter().find(same) {
            libraries.push(l.clone());
        }
    }
    if let Some(l) = libraries.iter().find(|l| l.name == e.library) {
        // Loaded for an earlier entry: this entry's pin is checked all the same.
        if let Some(pin) = e.sha256.as_deref().filter(|pin| !pin.eq_ignore_ascii_case(l.sha256.get())) {
            return Err(format!(
                "{}: {}: sha256 is {} but the profile pins {pin}; refusing to load it (if the new build is intended, update the pin)",
                e.key,
                l.path.display(),
                l.sha256
            ));
        }
        return Ok(l.clone());
    }
    let origin = if e.explicit { "" } else { " (the bundled default for an unnamed extension point)" };
    let lib = match loaded.remove(&e.library) {
        Some(l) => l,
        None => loader::load(&config.server.plugins_dir, &e.library, e.sha256.as_deref()),
    }
    .map_err(|msg| format!("{}{origin}: {msg}", e.key))?;
    let lib_config = config.libraries.get(&e.library).map(String::as_str).unwrap_or("{}");
    loader::init(&lib, lib_config).map_err(|msg| format!("{}: {msg}", e.key))?;
    libraries.push(lib.clone());
    Ok(lib)
}

/// "library `x` has no user_auth implementation named `Y`; it implements ... instead".
fn not_offered(e: &ExtensionConfig, lib: &Library) -> String {
    let elsewhere: Vec<_> =
        lib.implementations.iter().filter(|i| i.name == e.implementation).map(|i| i.point.key()).collect();
    let here: Vec<_> = lib.implementations.iter().filter(|i| i.point == e.point).map(|i| i.name.as_str()).collect();
    // The minor of the contract that added the point (all others are 1.0's).
    let since = if e.point == ExtensionPoint::RUNTIME { 1 } else { 0 };
    let hint = if lib.api.minor < since {
        format!(
            "it was built against plugin-api {}, which has no {} extension point (added in 1.{since}); rebuild it against 1.{since} or later",
            lib.api_version(),
            e.point
        )
    } else if !elsewhere.is_empty() {
        format!("it implements {} instead, not {}", elsewhere.join(", "), e.point)
    } else if here.is_empty() {
        format!("the library offers nothing for {}", e.point)
    } else {
        format!("for {} it offers: {}", e.point, here.join(", "))
    };
    format!(
        "{}: library `{}` ({}) has no {} implementation named `{}`; {hint} (see `oh-host plugins`)",
        e.key,
        e.library,
        lib.path.display(),
        e.point,
        e.implementation
    )
}

fn put<T>(slot: &mut Option<Arc<Instance<T>>>, built: Result<Arc<Instance<T>>, String>, problems: &mut Vec<String>) {
    match built {
        Ok(i) => *slot = Some(i),
        Err(p) => problems.push(p),
    }
}

fn push<T>(list: &mut Vec<Arc<Instance<T>>>, built: Result<Arc<Instance<T>>, String>, problems: &mut Vec<String>) {
    match built {
        Ok(i) => list.push(i),
        Err(p) => problems.push(p),
    }
}

impl Registry {
    /// Loads every library the profile names, checks each implementation, builds instances.
    /// All problems are collected; nothing is half-built on failure.
    pub fn build(config: &Config, runtime: tokio::runtime::Handle) -> Result<Arc<Registry>, LoadErrors> {
        let registry = Self::build_next(config, runtime, None)?;
        registry.activate();
        Ok(registry)
    }

    /// The next generation: built as [`Registry::build`] does, except that every entry the
    /// profile left as it was (same key, library file, implementation, config and timeout)
    /// keeps `previous`'s instance, and libraries whose file did not change are not loaded
    /// again. Host calls and the runtime handles keep reaching whichever generation is
    /// active. Nothing is switched: [`Registry::activate`] does that.
    pub fn build_next(
        config: &Config,
        runtime: tokio::runtime::Handle,
        previous: Option<&Registry>,
    ) -> Result<Arc<Registry>, LoadErrors> {
        // Every pin is checked before any library is opened: opening one runs its
        // initialisers, and an entry's factory may act (make a key file) before a later
        // entry's pin of the same library would have been compared.
        let mut problems = check_pins(config);
        if !problems.is_empty() {
            return Err(LoadErrors { problems, routes: Vec::new() });
        }
        let mut libraries: Vec<Library> = Vec::new();
        let handler: super::services::HandlerSlot =
            previous.map(|p| p.host_calls.clone()).unwrap_or_else(|| Arc::new(OnceLock::new()));
        let runtime_slot: super::services::RuntimeSlot = previous.map(|p| p.runtime_slot.clone()).unwrap_or_default();
        let previous_libraries = previous.map(|p| p.libraries.as_slice()).unwrap_or_default();
        let has_runtime = config.extensions.iter().any(|e| e.point == ExtensionPoint::RUNTIME);
        let (mut settings, mut secrets, mut conversations, mut manager, mut auth) = (None, None, None, None, None);
        let mut runtime_instance = None;
        let (mut monitoring, mut routes) = (Vec::new(), Vec::new());

        // A first build copies, opens and checks every library at once; each is initialised
        // in the profile's order. (A reload loads only what changed, as it goes.)
        let mut loaded = match previous {
            Some(_) => Default::default(),
            None => {
                let mut wanted: Vec<(String, Option<String>)> = Vec::new();
                for e in config.extensions.iter().filter(|e| e.process.is_none()) {
                    if !wanted.iter().any(|(name, _)| *name == e.library) {
                        wanted.push((e.library.clone(), e.sha256.clone()));
                    }
                }
                loader::load_all(&config.server.plugins_dir, &wanted)
            }
        };
        for e in &config.extensions {
            // Where the instance comes from: a runner (`isolation = "process"`), which loads
            // and checks the library itself, or the library loaded here.
            let lib = match &e.process {
                Some(_) => None,
                None => match library(config, e, &mut libraries, previous_libraries, &mut loaded) {
                    Ok(l) if l.offers(e.point, &e.implementation) => Some(l),
                    Ok(l) => {
                        problems.push(not_offered(e, &l));
                        continue;
                    }
                    Err(p) => {
                        problems.push(p);
                        continue;
                    }
                },
            };
            let services = Services {
                handler: handler.clone(),
                runtime_slot: has_runtime.then(|| runtime_slot.clone()),
                app_mode: config.server.app_mode,
                state_dir: config.server.state_dir.clone(),
                runtime: runtime.clone(),
            };
            // Unchanged since the previous generation: the same instance goes on serving. (A
            // runner checks the pin and hashes what it loads; this hash only tells a reload
            // whether the entry changed.)
            if let Some(previous) = previous {
                let sha256 = match (&lib, e.process.as_ref().and_then(|p| p.command.as_ref())) {
                    (Some(l), _) => l.sha256.get().to_owned(),
                    (None, Some(_)) => String::new(),
                    (None, None) => loader::file_sha256(&loader::library_path(&config.server.plugins_dir, &e.library))
                        .unwrap_or_default(),
                };
                let mut kept = Kept {
                    settings: &mut settings,
                    secrets: &mut secrets,
                    conversations: &mut conversations,
                    manager: &mut manager,
                    runtime: &mut runtime_instance,
                    auth: &mut auth,
                    monitoring: &mut monitoring,
                    routes: &mut routes,
                };
                if previous.reuse(e.point, &Meta::fingerprint_of(e, &sha256), &mut kept) {
                    continue;
                }
            }
            // One arm per point: the library's factory, or a runner and its proxy.
            macro_rules! build {
                ($add:ident, $slot:expr, $new:ident, $wrap:expr) => {
                    $add(
                        &mut $slot,
                        match &lib {
                            Some(lib) => instantiate(factory!(lib.module, $new, services), e, lib),
                            None => isolated(e, config, services, runtime.clone(), $wrap),
                        },
                        &mut problems,
                    )
                };
            }
            match e.point {
                ExtensionPoint::SETTINGS_STORE => {
                    build!(put, settings, new_settings_store, |p| SettingsStore_TO::from_value(p, TD_Opaque))
                }
                ExtensionPoint::SECRETS_STORE => {
                    build!(put, secrets, new_secrets_store, |p| SecretsStore_TO::from_value(p, TD_Opaque))
                }
                ExtensionPoint::CONVERSATION_STORE => build!(put, conversations, new_conversation_store, |p| {
                    ConversationStore_TO::from_value(p, TD_Opaque)
                }),
                ExtensionPoint::CONVERSATION_MANAGER => build!(put, manager, new_conversation_manager, |p| {
                    ConversationManager_TO::from_value(p, TD_Opaque)
                }),
                ExtensionPoint::USER_AUTH => build!(put, auth, new_user_auth, |p| UserAuth_TO::from_value(p, TD_Opaque)),
                ExtensionPoint::MONITORING => {
                    build!(push, monitoring, new_monitoring, |p| MonitoringListener_TO::from_value(p, TD_Opaque))
                }
                ExtensionPoint::ROUTES => {
                    build!(push, routes, new_routes, |p| RouteHandler_TO::from_value(p, TD_Opaque))
                }
                ExtensionPoint::RUNTIME => match &lib {
                    None => put(
                        &mut runtime_instance,
                        isolated(e, config, services, runtime.clone(), |p| {
                            Runtime_TO::from_value(crate::isolation::Via(p), TD_Opaque)
                        }),
                        &mut problems,
                    ),
                    Some(lib) => match lib.module.runtime_factory() {
                        Some(new_runtime) => {
                            let make = move |implementation: &str, config: &str| {
                                let services = HostServices_TO::from_value(services, TD_Opaque);
                                new_runtime(RStr::from_str(implementation), RStr::from_str(config), services)
                            };
                            put(&mut runtime_instance, instantiate(make, e, lib), &mut problems)
                        }
                        None => problems.push(format!(
                            "{}: library `{}` ({}) was built against plugin-api {}, which has no runtime extension point (added in 1.1); it offers no runtime",
                            e.key,
                            e.library,
                            lib.path.display(),
                            lib.api_version()
                        )),
                    },
                },
                other => problems.push(format!("{}: extension point {other} is not supported by this host", e.key)),
            }
        }

        // Each routes instance declares its routes once, now (also when other entries
        // failed: `check` reports their overlaps in the same run).
        let mut declared: Vec<Vec<super::DeclaredRoute>> = Vec::with_capacity(routes.len());
        for r in &routes {
            let specs: Result<RVec<RouteSpec>, _> = r.meta.call_sync_as("routes", || r.obj.routes(), Kind::Probe);
            match specs {
                Ok(specs) => declared.push(specs.into_iter().map(super::DeclaredRoute::from).collect()),
                Err(e) => {
                    problems.push(format!("{}: {e}", r.meta.key));
                    declared.push(Vec::new());
                }
            }
        }
        let failed = |problems: Vec<String>| {
            let routes = routes
                .iter()
                .zip(&declared)
                .enumerate()
                .flat_map(|(i, (r, specs))| specs.iter().map(move |s| (i, r.meta.origin(), s.clone())))
                .collect();
            LoadErrors { problems, routes }
        };
        if !problems.is_empty() {
            return Err(failed(problems));
        }
        let (Some(settings), Some(secrets), Some(conversations), Some(auth)) = (settings, secrets, conversations, auth)
        else {
            return Err(failed(vec!["internal: a required extension point has no instance".to_owned()]));
        };
        let registry = Arc::new(Registry {
            app_mode: config.server.app_mode,
            runtime: runtime_instance,
            runtime_slot,
            libraries,
            settings,
            secrets,
            conversations,
            manager,
            auth,
            monitoring,
            routes,
            declared,
            host_calls: handler,
        });
        Ok(registry)
    }
}
