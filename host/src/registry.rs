//! The loaded instances, one per configured extension, and every call into them.
//!
//! Each call goes through [`Meta::call`]: a deadline, a guard against the panic async-ffi
//! re-raises when a plugin future panics while polled, and per-instance counters (calls,
//! errors, panics, timeouts, latency). The rest of the host never sees an `R*` type.

use crate::{
    config::{AppMode, Config, ExtensionConfig},
    loader::{self, Library},
};
use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RBox, RNone, ROption, RSome, RString, RVec},
};
use async_ffi::{FfiFuture, FutureExt as _};
use futures_util::FutureExt as _;
use plugin_api::{
    models, CallContext, ConversationManager_TO, ConversationStore_TO, ErrorCode, EventQuery, EventSink_TO,
    ExtensionPoint, HostServices, HostServices_TO, MonitoringListener_TO, PResult, PluginError, RouteHandler_TO,
    SecretsStore_TO, SettingsStore_TO, UserAuth_TO,
};
use serde_json::{json, Value};
use std::{
    panic::AssertUnwindSafe,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, OnceLock, Weak,
    },
    time::{Duration, Instant},
};

/// Counters of one instance.
#[derive(Default, Debug)]
pub struct Stats {
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    pub panics: AtomicU64,
    pub timeouts: AtomicU64,
    pub latency_us_total: AtomicU64,
    pub latency_us_max: AtomicU64,
}

/// What the host knows about one instance.
#[derive(Debug)]
pub struct Meta {
    pub point: ExtensionPoint,
    pub key: String,
    pub library: String,
    pub implementation: String,
    pub timeout: Duration,
    pub stats: Stats,
    /// Cleared when the instance panics (DESIGN §5: a panicked instance is unhealthy).
    pub healthy: AtomicBool,
}

/// A failed plugin call, with what the operator needs to find it.
#[derive(Debug, Clone)]
pub struct CallError {
    pub point: ExtensionPoint,
    pub library: String,
    pub implementation: String,
    pub method: &'static str,
    pub error: PluginError,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}::{}.{}: {}", self.point, self.library, self.implementation, self.method, self.error)
    }
}

impl Meta {
    fn new(e: &ExtensionConfig) -> Meta {
        Meta {
            point: e.point,
            key: e.key.clone(),
            library: e.library.clone(),
            implementation: e.implementation.clone(),
            timeout: e.timeout,
            stats: Stats::default(),
            healthy: AtomicBool::new(true),
        }
    }

    fn fail(&self, method: &'static str, error: PluginError) -> CallError {
        CallError {
            point: self.point,
            library: self.library.clone(),
            implementation: self.implementation.clone(),
            method,
            error,
        }
    }

    /// Awaits a plugin future with this instance's deadline, counting the outcome.
    pub async fn call<T>(&self, method: &'static str, fut: FfiFuture<PResult<T>>) -> Result<T, CallError> {
        let start = Instant::now();
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let outcome = tokio::time::timeout(self.timeout, AssertUnwindSafe(fut).catch_unwind()).await;
        let elapsed = start.elapsed().as_micros() as u64;
        self.stats.latency_us_total.fetch_add(elapsed, Ordering::Relaxed);
        self.stats.latency_us_max.fetch_max(elapsed, Ordering::Relaxed);
        let result = match outcome {
            Ok(Ok(r)) => r.into_result(),
            Ok(Err(_)) => Err(PluginError::new(ErrorCode::PANICKED, "plugin future panicked while polled")),
            Err(_) => {
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(PluginError::new(
                    ErrorCode::DEADLINE_EXCEEDED,
                    format!("no answer within {} ms (timeout_ms of {})", self.timeout.as_millis(), self.key),
                ))
            }
        };
        result.map_err(|error| {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            if error.code == ErrorCode::PANICKED {
                self.stats.panics.fetch_add(1, Ordering::Relaxed);
                self.healthy.store(false, Ordering::Relaxed);
            }
            let err = self.fail(method, error);
            match err.error.code {
                ErrorCode::PANICKED | ErrorCode::INTERNAL | ErrorCode::DEADLINE_EXCEEDED | ErrorCode::UNAVAILABLE => {
                    tracing::error!(error = %err, "plugin call failed")
                }
                _ => tracing::debug!(error = %err, "plugin call returned an error"),
            }
            err
        })
    }
}

/// One instance: the stable-ABI object and its metadata.
pub struct Instance<T> {
    pub obj: T,
    pub meta: Meta,
}

pub type SettingsStore = Instance<SettingsStore_TO<'static, RBox<()>>>;
pub type SecretsStore = Instance<SecretsStore_TO<'static, RBox<()>>>;
pub type ConversationStore = Instance<ConversationStore_TO<'static, RBox<()>>>;
pub type ConversationManager = Instance<ConversationManager_TO<'static, RBox<()>>>;
pub type UserAuth = Instance<UserAuth_TO<'static, RBox<()>>>;
pub type Monitoring = Instance<MonitoringListener_TO<'static, RBox<()>>>;
pub type Routes = Instance<RouteHandler_TO<'static, RBox<()>>>;

/// Everything loaded from a profile.
pub struct Registry {
    pub app_mode: AppMode,
    pub libraries: Vec<Library>,
    pub settings: SettingsStore,
    pub secrets: SecretsStore,
    pub conversations: ConversationStore,
    pub manager: Option<ConversationManager>,
    pub auth: UserAuth,
    pub monitoring: Vec<Monitoring>,
    pub routes: Vec<Routes>,
}

/// Why the registry could not be built: every problem, each naming the extension point and
/// the library.
#[derive(Debug)]
pub struct LoadErrors(pub Vec<String>);

impl std::fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.len();
        writeln!(f, "cannot load the plugins: {n} problem{}", if n == 1 { "" } else { "s" })?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

/// The host's side of `HostServices`, handed to every instance. It reaches the registry
/// through a weak link filled once the registry exists.
struct Services {
    registry: Arc<OnceLock<Weak<Registry>>>,
    app_mode: AppMode,
    state_dir: PathBuf,
    runtime: tokio::runtime::Handle,
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl HostServices for Services {
    fn call(
        &self,
        ctx: CallContext,
        point: RString,
        method: RString,
        args_json: RString,
    ) -> FfiFuture<PResult<RString>> {
        // Polled on a plugin thread, which has no host runtime: run the work on ours.
        let registry = self.registry.get().and_then(Weak::upgrade);
        let task = AbortOnDrop(self.runtime.spawn(async move {
            let Some(registry) = registry else {
                return Err(PluginError::unavailable("the host is starting or stopping"));
            };
            let args: Value = serde_json::from_str(&args_json)
                .map_err(|e| PluginError::invalid_argument(format!("args_json: {e}")))?;
            registry.dispatch(ctx, &point, &method, args).await.map(|v| RString::from(v.to_string()))
        }));
        async move {
            let mut task = task;
            match (&mut task.0).await {
                Ok(r) => r.into(),
                Err(e) => PResult::RErr(PluginError::internal(format!("host task failed: {e}"))),
            }
        }
        .into_ffi()
    }

    fn app_mode(&self) -> RString {
        self.app_mode.as_str().into()
    }

    fn state_dir(&self) -> RString {
        self.state_dir.display().to_string().into()
    }
}

fn arg_str(args: &Value, key: &str) -> Result<RString, PluginError> {
    args.get(key)
        .and_then(Value::as_str)
        .map(RString::from)
        .ok_or_else(|| PluginError::invalid_argument(format!("missing string argument `{key}`")))
}

fn from_call(e: CallError) -> PluginError {
    PluginError { message: format!("{e}").into(), ..e.error }
}

impl Registry {
    /// Loads every library the profile names, checks each implementation, builds instances.
    /// All problems are collected; nothing is half-built on failure.
    pub fn build(config: &Config, runtime: tokio::runtime::Handle) -> Result<Arc<Registry>, LoadErrors> {
        let mut problems = Vec::new();
        let mut libraries: Vec<Library> = Vec::new();
        let slot: Arc<OnceLock<Weak<Registry>>> = Arc::new(OnceLock::new());

        let mut settings = None;
        let mut secrets = None;
        let mut conversations = None;
        let mut manager = None;
        let mut auth = None;
        let mut monitoring = Vec::new();
        let mut routes = Vec::new();

        for e in &config.extensions {
            let origin = if e.explicit {
                String::new()
            } else {
                " (the bundled default for an unnamed extension point)".to_owned()
            };
            let lib = match libraries.iter().find(|l| l.name == e.library) {
                Some(l) => l.clone(),
                None => match loader::load(&config.server.plugins_dir, &e.library, e.sha256.as_deref()) {
                    Ok(l) => {
                        let lib_config = config.libraries.get(&e.library).map(String::as_str).unwrap_or("{}");
                        if let Err(msg) = loader::init(&l, lib_config) {
                            problems.push(format!("{}: {msg}", e.key));
                            continue;
                        }
                        libraries.push(l.clone());
                        l
                    }
                    Err(msg) => {
                        problems.push(format!("{}{origin}: {msg}", e.key));
                        continue;
                    }
                },
            };
            if !lib.offers(e.point, &e.implementation) {
                let elsewhere: Vec<_> =
                    lib.implementations.iter().filter(|i| i.name == e.implementation).map(|i| i.point.key()).collect();
                let here: Vec<_> =
                    lib.implementations.iter().filter(|i| i.point == e.point).map(|i| i.name.as_str()).collect();
                let hint = if !elsewhere.is_empty() {
                    format!("it implements {} instead, not {}", elsewhere.join(", "), e.point)
                } else if here.is_empty() {
                    format!("the library offers nothing for {}", e.point)
                } else {
                    format!("for {} it offers: {}", e.point, here.join(", "))
                };
                problems.push(format!(
                    "{}: library `{}` ({}) has no {} implementation named `{}`; {hint} (see `oh-host plugins`)",
                    e.key,
                    e.library,
                    lib.path.display(),
                    e.point,
                    e.implementation
                ));
                continue;
            }
            let services = || {
                HostServices_TO::from_value(
                    Services {
                        registry: slot.clone(),
                        app_mode: config.server.app_mode,
                        state_dir: config.server.state_dir.clone(),
                        runtime: runtime.clone(),
                    },
                    TD_Opaque,
                )
            };
            let name = abi_stable::std_types::RStr::from_str(&e.implementation);
            let cfg = abi_stable::std_types::RStr::from_str(&e.config_json);
            let m = lib.module;
            let meta = Meta::new(e);
            let fail = |err: PluginError| {
                let what =
                    if err.code == ErrorCode::INVALID_CONFIG { "rejected its config" } else { "failed to start" };
                format!("{}: {} ({}) {what}: {}", e.key, e.implementation, lib.path.display(), err)
            };
            match e.point {
                ExtensionPoint::SETTINGS_STORE => match (m.new_settings_store())(name, cfg, services()).into_result() {
                    Ok(obj) => settings = Some(Instance { obj, meta }),
                    Err(err) => problems.push(fail(err)),
                },
                ExtensionPoint::SECRETS_STORE => match (m.new_secrets_store())(name, cfg, services()).into_result() {
                    Ok(obj) => secrets = Some(Instance { obj, meta }),
                    Err(err) => problems.push(fail(err)),
                },
                ExtensionPoint::CONVERSATION_STORE => {
                    match (m.new_conversation_store())(name, cfg, services()).into_result() {
                        Ok(obj) => conversations = Some(Instance { obj, meta }),
                        Err(err) => problems.push(fail(err)),
                    }
                }
                ExtensionPoint::CONVERSATION_MANAGER => {
                    match (m.new_conversation_manager())(name, cfg, services()).into_result() {
                        Ok(obj) => manager = Some(Instance { obj, meta }),
                        Err(err) => problems.push(fail(err)),
                    }
                }
                ExtensionPoint::USER_AUTH => match (m.new_user_auth())(name, cfg, services()).into_result() {
                    Ok(obj) => auth = Some(Instance { obj, meta }),
                    Err(err) => problems.push(fail(err)),
                },
                ExtensionPoint::MONITORING => match (m.new_monitoring())(name, cfg, services()).into_result() {
                    Ok(obj) => monitoring.push(Instance { obj, meta }),
                    Err(err) => problems.push(fail(err)),
                },
                ExtensionPoint::ROUTES => match (m.new_routes())(name, cfg, services()).into_result() {
                    Ok(obj) => routes.push(Instance { obj, meta }),
                    Err(err) => problems.push(fail(err)),
                },
                other => problems.push(format!("{}: extension point {other} is not supported by this host", e.key)),
            }
        }

        if !problems.is_empty() {
            return Err(LoadErrors(problems));
        }
        let (Some(settings), Some(secrets), Some(conversations), Some(auth)) = (settings, secrets, conversations, auth)
        else {
            return Err(LoadErrors(vec!["internal: a required extension point has no instance".to_owned()]));
        };
        let registry = Arc::new(Registry {
            app_mode: config.server.app_mode,
            libraries,
            settings,
            secrets,
            conversations,
            manager,
            auth,
            monitoring,
            routes,
        });
        let _ = slot.set(Arc::downgrade(&registry));
        Ok(registry)
    }

    /// Every instance's metadata, in a stable order.
    pub fn metas(&self) -> Vec<&Meta> {
        let mut all = vec![&self.settings.meta, &self.secrets.meta, &self.conversations.meta];
        all.extend(self.manager.as_ref().map(|m| &m.meta));
        all.push(&self.auth.meta);
        all.extend(self.monitoring.iter().map(|m| &m.meta));
        all.extend(self.routes.iter().map(|m| &m.meta));
        all
    }

    /// Calls `health` on every instance (in parallel); `(meta, Ok(detail) | Err(reason))`.
    /// Health probes are bounded by each instance's timeout but not counted as calls.
    pub async fn health(&self) -> Vec<(&Meta, Result<String, String>)> {
        type Probe<'a> =
            std::pin::Pin<Box<dyn std::future::Future<Output = (&'a Meta, Result<String, String>)> + Send + 'a>>;
        fn probe(meta: &Meta, fut: FfiFuture<PResult<plugin_api::Health>>) -> Probe<'_> {
            Box::pin(async move {
                let outcome = tokio::time::timeout(meta.timeout, AssertUnwindSafe(fut).catch_unwind()).await;
                let result = match outcome {
                    Ok(Ok(r)) => r.into_result().map(|h| h.detail.into_string()).map_err(|e| e.to_string()),
                    Ok(Err(_)) => Err("health check panicked".to_owned()),
                    Err(_) => Err(format!("no health answer within {} ms", meta.timeout.as_millis())),
                };
                let result = match result {
                    Ok(_) if !meta.healthy.load(Ordering::Relaxed) => Err("the instance panicked earlier".to_owned()),
                    other => other,
                };
                (meta, result)
            })
        }
        let ctx = CallContext::default;
        let mut probes = vec![
            probe(&self.settings.meta, self.settings.obj.health(ctx())),
            probe(&self.secrets.meta, self.secrets.obj.health(ctx())),
            probe(&self.conversations.meta, self.conversations.obj.health(ctx())),
        ];
        probes.extend(self.manager.iter().map(|m| probe(&m.meta, m.obj.health(ctx()))));
        probes.push(probe(&self.auth.meta, self.auth.obj.health(ctx())));
        probes.extend(self.monitoring.iter().map(|m| probe(&m.meta, m.obj.health(ctx()))));
        probes.extend(self.routes.iter().map(|m| probe(&m.meta, m.obj.health(ctx()))));
        futures_util::future::join_all(probes).await
    }

    /// Calls every instance's `shutdown`, then every library's, each bounded by `deadline`.
    pub async fn shutdown(&self, deadline: Duration) {
        let ms = deadline.as_millis() as u64;
        let mut futures: Vec<(String, FfiFuture<()>)> = Vec::new();
        for m in self.routes.iter().rev() {
            futures.push((m.meta.key.clone(), m.obj.shutdown(ms)));
        }
        for m in self.monitoring.iter().rev() {
            futures.push((m.meta.key.clone(), m.obj.shutdown(ms)));
        }
        futures.push((self.auth.meta.key.clone(), self.auth.obj.shutdown(ms)));
        if let Some(m) = &self.manager {
            futures.push((m.meta.key.clone(), m.obj.shutdown(ms)));
        }
        futures.push((self.conversations.meta.key.clone(), self.conversations.obj.shutdown(ms)));
        futures.push((self.secrets.meta.key.clone(), self.secrets.obj.shutdown(ms)));
        futures.push((self.settings.meta.key.clone(), self.settings.obj.shutdown(ms)));
        for (key, fut) in futures {
            if tokio::time::timeout(deadline, AssertUnwindSafe(fut).catch_unwind()).await.is_err() {
                tracing::warn!(extension = %key, "shutdown did not finish within {ms} ms");
            }
        }
        for lib in self.libraries.iter().rev() {
            let fut = (lib.module.shutdown())(ms);
            if tokio::time::timeout(deadline + Duration::from_millis(100), fut).await.is_err() {
                tracing::warn!(library = %lib.name, "library runtime did not stop within {ms} ms");
            }
        }
    }

    // ---- Typed calls used by the HTTP layer. ----

    pub async fn load_settings(&self, ctx: CallContext) -> Result<Option<models::Settings>, CallError> {
        let i = &self.settings;
        let json = i.meta.call("load", i.obj.load(ctx)).await?;
        decode_opt(&i.meta, "load", json)
    }

    pub async fn store_settings(&self, ctx: CallContext, settings: &models::Settings) -> Result<(), CallError> {
        let i = &self.settings;
        i.meta.call("store", i.obj.store(ctx, encode(settings))).await
    }

    pub async fn load_secrets(&self, ctx: CallContext) -> Result<Option<models::Secrets>, CallError> {
        let i = &self.secrets;
        let json = i.meta.call("load", i.obj.load(ctx)).await?;
        decode_opt(&i.meta, "load", json)
    }

    pub async fn store_secrets(&self, ctx: CallContext, secrets: &models::Secrets) -> Result<(), CallError> {
        let i = &self.secrets;
        i.meta.call("store", i.obj.store(ctx, encode(secrets))).await
    }

    pub async fn get_metadata(
        &self,
        ctx: CallContext,
        id: &str,
    ) -> Result<Option<models::ConversationMetadata>, CallError> {
        let i = &self.conversations;
        let json = i.meta.call("get_metadata", i.obj.get_metadata(ctx, id.into())).await?;
        decode_opt(&i.meta, "get_metadata", json)
    }

    pub async fn save_metadata(&self, ctx: CallContext, m: &models::ConversationMetadata) -> Result<(), CallError> {
        let i = &self.conversations;
        i.meta.call("save_metadata", i.obj.save_metadata(ctx, encode(m))).await
    }

    pub async fn delete_metadata(&self, ctx: CallContext, id: &str) -> Result<bool, CallError> {
        let i = &self.conversations;
        i.meta.call("delete_metadata", i.obj.delete_metadata(ctx, id.into())).await
    }

    pub async fn search_conversations(
        &self,
        ctx: CallContext,
        page_id: Option<&str>,
        limit: u32,
    ) -> Result<models::ConversationMetadataResultSet, CallError> {
        let i = &self.conversations;
        let page: ROption<RString> = page_id.map(RString::from).into();
        let json = i.meta.call("search", i.obj.search(ctx, page, limit)).await?;
        decode(&i.meta, "search", &json)
    }

    pub async fn get_events(
        &self,
        ctx: CallContext,
        id: &str,
        query: EventQuery,
    ) -> Result<models::EventPage, CallError> {
        let i = &self.conversations;
        let json = i.meta.call("get_events", i.obj.get_events(ctx, id.into(), query)).await?;
        decode(&i.meta, "get_events", &json)
    }

    pub async fn append_events(&self, ctx: CallContext, id: &str, events: &[Value]) -> Result<u64, CallError> {
        let i = &self.conversations;
        let events: RVec<RString> = events.iter().map(|e| RString::from(e.to_string())).collect();
        i.meta.call("append_events", i.obj.append_events(ctx, id.into(), events)).await
    }

    /// Running agent loops, when a conversation manager is configured.
    pub async fn running(&self, ctx: CallContext, ids: &[String]) -> Result<Vec<models::AgentLoopInfo>, CallError> {
        let Some(m) = &self.manager else {
            return Ok(Vec::new());
        };
        let ids: RVec<RString> = ids.iter().map(|s| RString::from(s.as_str())).collect();
        let json = m.meta.call("running", m.obj.running(ctx, ids)).await?;
        decode(&m.meta, "running", &json)
    }

    /// Runs an operator command on each store (settings, secrets, conversations), once per
    /// distinct library + implementation: `(extension, Ok(report) | Err(reason))`. Stores
    /// without the command answer `UNIMPLEMENTED`, reported as `Ok(None)`.
    pub async fn admin(&self, command: &str, args: &Value) -> Vec<(String, Result<Option<Value>, String>)> {
        let ctx = CallContext::default;
        let args = RString::from(args.to_string());
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let calls: [(&Meta, FfiFuture<PResult<RString>>); 3] = [
            (&self.settings.meta, self.settings.obj.admin(ctx(), command.into(), args.clone())),
            (&self.secrets.meta, self.secrets.obj.admin(ctx(), command.into(), args.clone())),
            (&self.conversations.meta, self.conversations.obj.admin(ctx(), command.into(), args.clone())),
        ];
        for (meta, fut) in calls {
            let key = format!("{} ({}::{})", meta.key, meta.library, meta.implementation);
            if !seen.insert((meta.library.clone(), meta.implementation.clone())) {
                continue;
            }
            let result = match meta.call("admin", fut).await {
                Ok(json) => Ok(Some(serde_json::from_str(&json).unwrap_or(Value::String(json.into_string())))),
                Err(e) if e.error.code == ErrorCode::UNIMPLEMENTED => Ok(None),
                Err(e) => Err(e.error.to_string()),
            };
            out.push((key, result));
        }
        out
    }

    /// Git provider tokens brokered by the auth system (`None`: the secrets store has them).
    pub async fn provider_tokens(&self, ctx: CallContext) -> Result<Option<models::ProviderTokens>, CallError> {
        let i = &self.auth;
        let json = i.meta.call("provider_tokens", i.obj.provider_tokens(ctx)).await?;
        decode_opt(&i.meta, "provider_tokens", json)
    }

    /// The configured conversation manager, or `UNIMPLEMENTED` (HTTP 501) without one.
    pub fn manager(&self) -> Result<&ConversationManager, CallError> {
        self.manager.as_ref().ok_or_else(|| CallError {
            point: ExtensionPoint::CONVERSATION_MANAGER,
            library: "-".to_owned(),
            implementation: "-".to_owned(),
            method: "any",
            error: PluginError::new(
                ErrorCode::UNIMPLEMENTED,
                "no conversation_manager is configured; add [extensions.conversation_manager] to the profile",
            ),
        })
    }

    pub async fn maybe_start(
        &self,
        ctx: CallContext,
        request: &models::StartRequest,
    ) -> Result<models::AgentLoopInfo, CallError> {
        let m = self.manager()?;
        let json = m.meta.call("maybe_start", m.obj.maybe_start(ctx, encode(request))).await?;
        decode(&m.meta, "maybe_start", &json)
    }

    pub async fn send_event(&self, ctx: CallContext, id: &str, event: &Value) -> Result<(), CallError> {
        let m = self.manager()?;
        m.meta.call("send_event", m.obj.send_event(ctx, id.into(), event.to_string().into())).await
    }

    pub async fn close_conversation(&self, ctx: CallContext, id: &str) -> Result<bool, CallError> {
        let m = self.manager()?;
        m.meta.call("close", m.obj.close(ctx, id.into())).await
    }

    /// Subscribes a channel to a conversation's live events; returns the subscription id.
    pub async fn subscribe(
        &self,
        ctx: CallContext,
        id: &str,
        events: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<u64, CallError> {
        let m = self.manager()?;
        let sink = EventSink_TO::from_value(ChannelSink(events), TD_Opaque);
        m.meta.call("subscribe", m.obj.subscribe(ctx, id.into(), sink)).await
    }

    pub async fn unsubscribe(&self, ctx: CallContext, subscription: u64) -> Result<(), CallError> {
        let m = self.manager()?;
        m.meta.call("unsubscribe", m.obj.unsubscribe(ctx, subscription)).await
    }

    pub fn on_create_conversation(&self, ctx: &CallContext) {
        for m in &self.monitoring {
            m.obj.on_create_conversation(ctx.clone());
        }
    }

    /// `HostServices::call`: the operations plugins may reach through the host.
    async fn dispatch(&self, ctx: CallContext, point: &str, method: &str, args: Value) -> Result<Value, PluginError> {
        let unknown =
            || PluginError::new(ErrorCode::UNIMPLEMENTED, format!("the host offers no `{point}.{method}` to plugins"));
        let v = |r: Result<Value, CallError>| r.map_err(from_call);
        match (point, method) {
            ("settings_store", "load") => v(self.load_settings(ctx).await.map(|s| json!(s))),
            ("secrets_store", "load") => v(self.load_secrets(ctx).await.map(|s| json!(s))),
            ("conversation_store", "get_metadata") => {
                let id = arg_str(&args, "conversation_id")?;
                v(self.get_metadata(ctx, &id).await.map(|m| json!(m)))
            }
            ("conversation_store", "save_metadata") => {
                let m: models::ConversationMetadata =
                    serde_json::from_value(args.get("metadata").cloned().unwrap_or_default())
                        .map_err(|e| PluginError::invalid_argument(format!("metadata: {e}")))?;
                v(self.save_metadata(ctx, &m).await.map(|()| Value::Null))
            }
            ("conversation_store", "append_events") => {
                let id = arg_str(&args, "conversation_id")?;
                let events = args.get("events").and_then(Value::as_array).cloned().unwrap_or_default();
                v(self.append_events(ctx, &id, &events).await.map(|first| json!(first)))
            }
            ("conversation_store", "get_events") => {
                let id = arg_str(&args, "conversation_id")?;
                let query = EventQuery {
                    start_id: args.get("start_id").and_then(Value::as_u64).unwrap_or(0),
                    end_id: args.get("end_id").and_then(Value::as_u64).map_or(RNone, RSome),
                    reverse: args.get("reverse").and_then(Value::as_bool).unwrap_or(false),
                    limit: args.get("limit").and_then(Value::as_u64).unwrap_or(100).min(10_000) as u32,
                };
                v(self.get_events(ctx, &id, query).await.map(|p| json!(p)))
            }
            ("monitoring", "on_session_event") => {
                let event = RString::from(args.get("event").cloned().unwrap_or_default().to_string());
                for m in &self.monitoring {
                    m.obj.on_session_event(ctx.clone(), event.clone());
                }
                Ok(Value::Null)
            }
            ("monitoring", "on_agent_session_start") => {
                let success = args.get("success").and_then(Value::as_bool).unwrap_or(false);
                let duration = args.get("duration_secs").and_then(Value::as_f64).unwrap_or(0.0);
                for m in &self.monitoring {
                    m.obj.on_agent_session_start(ctx.clone(), success, duration);
                }
                Ok(Value::Null)
            }
            ("monitoring", "on_create_conversation") => {
                self.on_create_conversation(&ctx);
                Ok(Value::Null)
            }
            _ => Err(unknown()),
        }
    }
}

/// The host's `EventSink`: a channel to the socket that subscribed. Called from plugin
/// threads; an unbounded send needs no runtime and never blocks.
struct ChannelSink(tokio::sync::mpsc::UnboundedSender<String>);

impl plugin_api::EventSink for ChannelSink {
    fn send(&self, event_json: RString) -> bool {
        self.0.send(event_json.into_string()).is_ok()
    }
}

fn encode<T: serde::Serialize>(value: &T) -> RString {
    serde_json::to_string(value).expect("models serialize").into()
}

fn decode<T: serde::de::DeserializeOwned>(meta: &Meta, method: &'static str, json: &str) -> Result<T, CallError> {
    serde_json::from_str(json).map_err(|e| {
        meta.fail(method, PluginError::internal(format!("the plugin answered with a malformed document: {e}")))
    })
}

fn decode_opt<T: serde::de::DeserializeOwned>(
    meta: &Meta,
    method: &'static str,
    json: ROption<RString>,
) -> Result<Option<T>, CallError> {
    json.into_option().map(|j| decode(meta, method, &j)).transpose()
}
