//! The loaded instances, one per configured extension, and the only way to reach them.
//!
//! Every call to a plugin goes through a typed method here, which goes through
//! [`call::Meta`]: async calls get a deadline, panic containment and counters; sync calls
//! (monitoring hooks, `routes()`, factories) get panic containment and counters. Outside this
//! module the host sees its own types, plugin-api's documents (`models`) and the per-call
//! `CallContext`; the `R*` types of the ABI stay in here (`convert.rs` turns HTTP vocabulary
//! into them and back).
//!
//! - `build.rs`: loading libraries and building instances from a profile;
//! - `call.rs`: `Meta`, the counters, `CallError`, the document codec;
//! - `services.rs`: what plugins ask of the host (`HostServices`) and live-event sinks;
//! - `convert.rs`: HTTP requests, responses and headers to and from the ABI.

mod build;
mod call;
mod convert;
mod generations;
mod runtime;
mod services;

pub use build::LoadErrors;
pub use call::{CallError, Meta, Stats};

/// What an entry's instance is built from (see `Meta::fingerprint`).
pub fn fingerprint_of(e: &crate::config::ExtensionConfig, library_sha256: &str) -> String {
    Meta::fingerprint_of(e, library_sha256)
}
pub use convert::AuthInput;
pub(super) use generations::Kept;
pub use services::HostCallHandler;

use crate::{config::AppMode, loader::Library};
use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{ROk, ROption, RString, RVec},
};
use async_ffi::{FfiFuture, FutureExt as _};
use axum::{
    body::Bytes,
    http::{HeaderMap, Method, Uri},
    response::Response,
};
use build::{AnyInstance, Instance};
use call::{encode, Kind};
use plugin_api::{
    models, AuthType, CallContext, ConversationManagerObject, ConversationStoreObject, ErrorCode, EventQuery,
    EventSink_TO, ExtensionPoint, MonitoringObject, PResult, PluginError, RoutesObject, RuntimeObject,
    SecretsStoreObject, SettingsStoreObject, UserAuthObject,
};
use serde_json::Value;
use std::{sync::Arc, time::Duration};

/// An operator operation every store may offer (`oh-host migrate`, `oh-host rotate-keys`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StoreOperation {
    Migrate,
    RotateKeys,
}

impl StoreOperation {
    /// The store method it calls.
    pub fn method(self) -> &'static str {
        match self {
            StoreOperation::Migrate => "migrate",
            StoreOperation::RotateKeys => "rotate_keys",
        }
    }
}

/// Everything loaded from a profile.
pub struct Registry {
    app_mode: AppMode,
    libraries: Vec<Library>,
    settings: Arc<Instance<SettingsStoreObject>>,
    secrets: Arc<Instance<SecretsStoreObject>>,
    conversations: Arc<Instance<ConversationStoreObject>>,
    manager: Option<Arc<Instance<ConversationManagerObject>>>,
    /// Shared with the handles plugins get (`HostServices::runtime`).
    runtime: Option<Arc<Instance<RuntimeObject>>>,
    auth: Arc<Instance<UserAuthObject>>,
    monitoring: Vec<Arc<Instance<MonitoringObject>>>,
    routes: Vec<Arc<Instance<RoutesObject>>>,
    /// What each `routes` instance declared when it was built, by instance.
    declared: Vec<Vec<DeclaredRoute>>,
    /// Where plugins' host calls go (the application layer, once it exists); shared by every
    /// generation.
    host_calls: services::HandlerSlot,
    /// Where the runtime handles lead; shared by every generation.
    runtime_slot: services::RuntimeSlot,
}

/// A route a `routes` instance serves (as declared; `http::plugin_routes` validates it).
#[derive(Clone, Debug)]
pub struct DeclaredRoute {
    /// `GET`, `POST`, ... or `*`.
    pub method: String,
    pub path: String,
    pub authenticated: bool,
}

impl From<plugin_api::RouteSpec> for DeclaredRoute {
    fn from(s: plugin_api::RouteSpec) -> Self {
        DeclaredRoute { method: s.method.into_string(), path: s.path.into_string(), authenticated: s.authenticated }
    }
}

/// A successful authentication, in the host's terms.
#[derive(Clone, Debug)]
pub struct Authenticated {
    /// `None` in single-user mode.
    pub user_id: Option<String>,
    pub email: Option<String>,
    pub auth_type: AuthType,
    /// Headers for the response (a refreshed cookie, rate-limit headers).
    pub response_headers: HeaderMap,
}

fn shutdown_result(fut: FfiFuture<()>) -> FfiFuture<PResult<()>> {
    async move {
        fut.await;
        ROk(())
    }
    .into_ffi()
}

impl Registry {
    pub fn app_mode(&self) -> AppMode {
        self.app_mode
    }

    /// The libraries loaded, in load order.
    pub fn libraries(&self) -> &[Library] {
        &self.libraries
    }

    /// Every instance, in a stable order: stores, manager, auth, monitoring, routes.
    fn instances(&self) -> Vec<&dyn AnyInstance> {
        let mut all: Vec<&dyn AnyInstance> = vec![&*self.settings, &*self.secrets, &*self.conversations];
        all.extend(self.manager.iter().map(|m| &**m as &dyn AnyInstance));
        all.extend(self.runtime.iter().map(|r| &**r as &dyn AnyInstance));
        all.push(&*self.auth);
        all.extend(self.monitoring.iter().map(|m| &**m as &dyn AnyInstance));
        all.extend(self.routes.iter().map(|m| &**m as &dyn AnyInstance));
        all
    }

    /// Every instance's metadata, in the order of [`Registry::instances`].
    pub fn metas(&self) -> Vec<&Meta> {
        self.instances().into_iter().map(AnyInstance::meta).collect()
    }

    /// Calls `health` on every instance (in parallel); `(meta, Ok(detail) | Err(reason))`.
    /// An instance that panicked earlier is unhealthy whatever it answers.
    pub async fn health(&self) -> Vec<(&Meta, Result<String, String>)> {
        let probes = self.instances().into_iter().map(|i| async move {
            let meta = i.meta();
            let answer = meta.call_with("health", i.health(CallContext::default()), None, Kind::Probe).await;
            let result = match answer {
                Ok(_) if !meta.healthy.load(std::sync::atomic::Ordering::Relaxed) => {
                    Err("the instance panicked earlier".to_owned())
                }
                Ok(h) => Ok(h.detail.into_string()),
                Err(e) => Err(e.error.to_string()),
            };
            (meta, result)
        });
        futures_util::future::join_all(probes).await
    }

    /// Calls every instance's `shutdown`, then every library's, each bounded by `deadline`.
    /// Order: routes, the conversation manager (its loops still store their last events), the
    /// runtime (after the loops that use it), auth, monitoring, then the stores.
    pub async fn shutdown(&self, deadline: Duration) {
        let ms = deadline.as_millis() as u64;
        let mut order: Vec<&dyn AnyInstance> = self.routes.iter().rev().map(|i| &**i as &dyn AnyInstance).collect();
        order.extend(self.manager.iter().map(|i| &**i as &dyn AnyInstance));
        order.extend(self.runtime.iter().map(|i| &**i as &dyn AnyInstance));
        order.push(&*self.auth);
        order.extend(self.monitoring.iter().rev().map(|i| &**i as &dyn AnyInstance));
        order.extend([&*self.conversations as &dyn AnyInstance, &*self.secrets, &*self.settings]);
        for i in order {
            let meta = i.meta();
            if meta.call_with("shutdown", shutdown_result(i.shutdown(ms)), Some(deadline), Kind::Probe).await.is_err() {
                tracing::warn!(extension = %meta.key, "shutdown did not finish within {ms} ms");
            }
        }
        for lib in self.libraries.iter().rev() {
            let fut = (lib.module.shutdown())(ms);
            if tokio::time::timeout(deadline + Duration::from_millis(100), fut).await.is_err() {
                tracing::warn!(library = %lib.name, "library runtime did not stop within {ms} ms");
            }
        }
    }

    // ---- user_auth ----

    /// Authenticates a request (the HTTP auth gate and the socket.io handshake both use this).
    pub async fn authenticate(&self, mut ctx: CallContext, input: AuthInput<'_>) -> Result<Authenticated, CallError> {
        let i = &self.auth;
        let _span = i.meta.traced(&mut ctx, "authenticate");
        let outcome = i.meta.call("authenticate", i.obj.authenticate(ctx, convert::auth_request(&input))).await?;
        Ok(Authenticated {
            user_id: outcome.user_id.into_option().map(RString::into_string),
            email: outcome.email.into_option().map(RString::into_string),
            auth_type: outcome.auth_type,
            response_headers: convert::from_abi_headers(outcome.response_headers),
        })
    }

    /// Git provider tokens brokered by the auth system (`None`: the secrets store has them).
    pub async fn provider_tokens(&self, mut ctx: CallContext) -> Result<Option<models::ProviderTokens>, CallError> {
        let i = &self.auth;
        let _span = i.meta.traced(&mut ctx, "provider_tokens");
        let json = i.meta.call("provider_tokens", i.obj.provider_tokens(ctx)).await?;
        i.meta.decode_opt("provider_tokens", json)
    }

    // ---- settings_store, secrets_store ----

    pub async fn load_settings(&self, mut ctx: CallContext) -> Result<Option<models::Settings>, CallError> {
        let i = &self.settings;
        let _span = i.meta.traced(&mut ctx, "load");
        let json = i.meta.call("load", i.obj.load(ctx)).await?;
        i.meta.decode_opt("load", json)
    }

    pub async fn store_settings(&self, mut ctx: CallContext, settings: &models::Settings) -> Result<(), CallError> {
        let i = &self.settings;
        let _span = i.meta.traced(&mut ctx, "store");
        i.meta.call("store", i.obj.store(ctx, encode(settings))).await
    }

    /// The Settings with their version; `UNIMPLEMENTED` from a store that keeps none.
    pub async fn load_settings_versioned(
        &self,
        mut ctx: CallContext,
    ) -> Result<Option<models::VersionedSettings>, CallError> {
        let i = &self.settings;
        let _span = i.meta.traced(&mut ctx, "load_versioned");
        let json = i.meta.call("load_versioned", i.obj.load_versioned(ctx)).await?;
        i.meta.decode_opt("load_versioned", json)
    }

    /// Stores if the stored version is `expected` (0: none); the new version, or `CONFLICT`.
    pub async fn store_settings_versioned(
        &self,
        mut ctx: CallContext,
        settings: &models::Settings,
        expected: u64,
    ) -> Result<u64, CallError> {
        let i = &self.settings;
        let _span = i.meta.traced(&mut ctx, "store_versioned");
        i.meta.call("store_versioned", i.obj.store_versioned(ctx, encode(settings), expected)).await
    }

    /// Applies one change to the user's secrets; `UNIMPLEMENTED` from a store that cannot.
    pub async fn update_secrets(&self, mut ctx: CallContext, change: &models::SecretsChange) -> Result<(), CallError> {
        let i = &self.secrets;
        let _span = i.meta.traced(&mut ctx, "update");
        i.meta.call("update", i.obj.update(ctx, encode(change))).await
    }

    pub async fn load_secrets(&self, mut ctx: CallContext) -> Result<Option<models::Secrets>, CallError> {
        let i = &self.secrets;
        let _span = i.meta.traced(&mut ctx, "load");
        let json = i.meta.call("load", i.obj.load(ctx)).await?;
        i.meta.decode_opt("load", json)
    }

    pub async fn store_secrets(&self, mut ctx: CallContext, secrets: &models::Secrets) -> Result<(), CallError> {
        let i = &self.secrets;
        let _span = i.meta.traced(&mut ctx, "store");
        i.meta.call("store", i.obj.store(ctx, encode(secrets))).await
    }

    // ---- conversation_store ----

    pub async fn get_metadata(
        &self,
        mut ctx: CallContext,
        id: &str,
    ) -> Result<Option<models::ConversationMetadata>, CallError> {
        let i = &self.conversations;
        let _span = i.meta.traced(&mut ctx, "get_metadata");
        let json = i.meta.call("get_metadata", i.obj.get_metadata(ctx, id.into())).await?;
        i.meta.decode_opt("get_metadata", json)
    }

    pub async fn save_metadata(&self, mut ctx: CallContext, m: &models::ConversationMetadata) -> Result<(), CallError> {
        let i = &self.conversations;
        let _span = i.meta.traced(&mut ctx, "save_metadata");
        i.meta.call("save_metadata", i.obj.save_metadata(ctx, encode(m))).await
    }

    pub async fn delete_metadata(&self, mut ctx: CallContext, id: &str) -> Result<bool, CallError> {
        let i = &self.conversations;
        let _span = i.meta.traced(&mut ctx, "delete_metadata");
        i.meta.call("delete_metadata", i.obj.delete_metadata(ctx, id.into())).await
    }

    pub async fn search_conversations(
        &self,
        mut ctx: CallContext,
        page_id: Option<&str>,
        limit: u32,
    ) -> Result<models::ConversationMetadataResultSet, CallError> {
        let i = &self.conversations;
        let page: ROption<RString> = page_id.map(RString::from).into();
        let _span = i.meta.traced(&mut ctx, "search");
        let json = i.meta.call("search", i.obj.search(ctx, page, limit)).await?;
        i.meta.decode("search", &json)
    }

    pub async fn get_events(
        &self,
        mut ctx: CallContext,
        id: &str,
        query: EventQuery,
    ) -> Result<models::EventPage, CallError> {
        let i = &self.conversations;
        let _span = i.meta.traced(&mut ctx, "get_events");
        let json = i.meta.call("get_events", i.obj.get_events(ctx, id.into(), query)).await?;
        i.meta.decode("get_events", &json)
    }

    /// Appends events; with a `fence`, only while no higher fencing token has appended
    /// (`CONFLICT` otherwise).
    pub async fn append_events(
        &self,
        mut ctx: CallContext,
        id: &str,
        events: &[Value],
        fence: Option<u64>,
    ) -> Result<u64, CallError> {
        let i = &self.conversations;
        let events: RVec<RString> = events.iter().map(|e| RString::from(e.to_string())).collect();
        match fence {
            None => i.meta.call("append_events", i.obj.append_events(ctx, id.into(), events)).await,
            Some(fence) => {
                let _span = i.meta.traced(&mut ctx, "append_events_fenced");
                i.meta.call("append_events_fenced", i.obj.append_events_fenced(ctx, id.into(), events, fence)).await
            }
        }
    }

    /// Runs an operator operation on each store (settings, secrets, conversations), once per
    /// distinct library + implementation: `(extension, Ok(report) | Err(reason))`. Stores
    /// without it answer `UNIMPLEMENTED`, reported as `Ok(None)`.
    pub async fn operate(&self, op: StoreOperation) -> Vec<(String, Result<Option<Value>, String>)> {
        let ctx = CallContext::default;
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let calls: [(&Meta, FfiFuture<PResult<RString>>); 3] = match op {
            StoreOperation::Migrate => [
                (&self.settings.meta, self.settings.obj.migrate(ctx())),
                (&self.secrets.meta, self.secrets.obj.migrate(ctx())),
                (&self.conversations.meta, self.conversations.obj.migrate(ctx())),
            ],
            StoreOperation::RotateKeys => [
                (&self.settings.meta, self.settings.obj.rotate_keys(ctx())),
                (&self.secrets.meta, self.secrets.obj.rotate_keys(ctx())),
                (&self.conversations.meta, self.conversations.obj.rotate_keys(ctx())),
            ],
        };
        let method = op.method();
        for (meta, fut) in calls {
            let key = format!("{} ({}::{})", meta.key, meta.library, meta.implementation);
            if !seen.insert((meta.library.clone(), meta.implementation.clone())) {
                continue;
            }
            let result = match meta.call(method, fut).await {
                Ok(json) => Ok(Some(serde_json::from_str(&json).unwrap_or(Value::String(json.into_string())))),
                Err(e) if e.error.code == ErrorCode::UNIMPLEMENTED => Ok(None),
                Err(e) => Err(e.error.to_string()),
            };
            out.push((key, result));
        }
        out
    }

    // ---- conversation_manager ----

    /// Whether a conversation manager is configured.
    pub fn has_manager(&self) -> bool {
        self.manager.is_some()
    }

    /// The configured conversation manager, or `UNIMPLEMENTED` (HTTP 501) without one.
    fn manager(&self) -> Result<&Instance<ConversationManagerObject>, CallError> {
        self.manager.as_deref().ok_or_else(|| CallError {
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

    /// Running agent loops, when a conversation manager is configured.
    pub async fn running(&self, mut ctx: CallContext, ids: &[String]) -> Result<Vec<models::AgentLoopInfo>, CallError> {
        let Some(m) = &self.manager else {
            return Ok(Vec::new());
        };
        let ids: RVec<RString> = ids.iter().map(|s| RString::from(s.as_str())).collect();
        let _span = m.meta.traced(&mut ctx, "running");
        let json = m.meta.call("running", m.obj.running(ctx, ids)).await?;
        m.meta.decode("running", &json)
    }

    pub async fn maybe_start(
        &self,
        mut ctx: CallContext,
        request: &models::StartRequest,
    ) -> Result<models::AgentLoopInfo, CallError> {
        let m = self.manager()?;
        let _span = m.meta.traced(&mut ctx, "maybe_start");
        let json = m.meta.call("maybe_start", m.obj.maybe_start(ctx, encode(request))).await?;
        m.meta.decode("maybe_start", &json)
    }

    pub async fn send_event(&self, mut ctx: CallContext, id: &str, event: &Value) -> Result<(), CallError> {
        let m = self.manager()?;
        let _span = m.meta.traced(&mut ctx, "send_event");
        m.meta.call("send_event", m.obj.send_event(ctx, id.into(), event.to_string().into())).await
    }

    /// Stops a conversation's loop; `false` when it was not running (or no manager runs loops).
    /// The conversation manager's report of its cluster (`/internal/cluster`); `None`
    /// without a manager.
    pub async fn cluster_report(&self, mut ctx: CallContext) -> Option<Result<Value, CallError>> {
        let m = self.manager.as_ref()?;
        let _span = m.meta.traced(&mut ctx, "cluster");
        let answer = m.meta.call("cluster", m.obj.cluster(ctx)).await;
        Some(answer.and_then(|json| m.meta.decode("cluster", &json)))
    }

    /// Where a conversation's tools act (its manager's workspace); `None` without a manager
    /// or a workspace.
    pub async fn workspace(&self, mut ctx: CallContext, id: &str) -> Result<Option<String>, CallError> {
        let Some(m) = self.manager.as_ref() else { return Ok(None) };
        let _span = m.meta.traced(&mut ctx, "workspace");
        let answer = m.meta.call("workspace", m.obj.workspace(ctx, id.into())).await?;
        Ok(answer.into_option().map(RString::into_string))
    }

    pub async fn close_conversation(&self, mut ctx: CallContext, id: &str) -> Result<bool, CallError> {
        let Some(m) = &self.manager else {
            return Ok(false);
        };
        let _span = m.meta.traced(&mut ctx, "close");
        m.meta.call("close", m.obj.close(ctx, id.into())).await
    }

    /// Subscribes a channel to a conversation's live events; returns the subscription id.
    pub async fn subscribe(
        &self,
        mut ctx: CallContext,
        id: &str,
        events: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<u64, CallError> {
        let m = self.manager()?;
        let sink = EventSink_TO::from_value(services::ChannelSink(events), TD_Opaque);
        let _span = m.meta.traced(&mut ctx, "subscribe");
        m.meta.call("subscribe", m.obj.subscribe(ctx, id.into(), sink)).await
    }

    pub async fn unsubscribe(&self, mut ctx: CallContext, subscription: u64) -> Result<(), CallError> {
        let m = self.manager()?;
        let _span = m.meta.traced(&mut ctx, "unsubscribe");
        m.meta.call("unsubscribe", m.obj.unsubscribe(ctx, subscription)).await
    }

    /// Sends plugins' host calls to `handler` from now on (once; later calls are ignored).
    pub fn serve_host_calls(&self, handler: std::sync::Weak<dyn HostCallHandler>) {
        let _ = self.host_calls.set(handler);
    }

    // ---- monitoring (sync hooks: they must not block; see plugin-api) ----

    pub fn on_create_conversation(&self, ctx: &CallContext) {
        for m in &self.monitoring {
            let _ = m.meta.call_sync("on_create_conversation", || m.obj.on_create_conversation(ctx.clone()));
        }
    }

    pub fn on_session_event(&self, ctx: &CallContext, event: &Value) {
        let event = RString::from(event.to_string());
        for m in &self.monitoring {
            let _ = m.meta.call_sync("on_session_event", || m.obj.on_session_event(ctx.clone(), event.clone()));
        }
    }

    pub fn on_agent_session_start(&self, ctx: &CallContext, success: bool, duration_secs: f64) {
        for m in &self.monitoring {
            let _ = m.meta.call_sync("on_agent_session_start", || {
                m.obj.on_agent_session_start(ctx.clone(), success, duration_secs)
            });
        }
    }

    /// A product-analytics event, to every listener.
    pub fn capture(&self, ctx: &CallContext, event: &str, properties: &Value) {
        let (event, properties) = (RString::from(event), RString::from(properties.to_string()));
        for m in &self.monitoring {
            let _ = m.meta.call_sync("capture", || m.obj.capture(ctx.clone(), event.clone(), properties.clone()));
        }
    }

    /// An LLM call's usage, to every listener (billing debits it).
    pub fn on_llm_usage(&self, ctx: &CallContext, usage: &models::LlmUsage) {
        let usage = RString::from(serde_json::to_string(usage).unwrap_or_default());
        for m in &self.monitoring {
            let _ = m.meta.call_sync("on_llm_usage", || m.obj.on_llm_usage(ctx.clone(), usage.clone()));
        }
    }

    /// Whether the user may do this: every listener is asked in turn and the first refusal
    /// is the answer (`PAYMENT_REQUIRED` from billing when out of credits).
    pub async fn admit(&self, ctx: &CallContext, admission: &models::Admission) -> Result<(), CallError> {
        let admission = RString::from(serde_json::to_string(admission).unwrap_or_default());
        for m in &self.monitoring {
            m.meta.call("admit", m.obj.admit(ctx.clone(), admission.clone())).await?;
        }
        Ok(())
    }

    /// The experiments a starting conversation takes part in, from every listener that runs
    /// some. A listener that fails is logged and skipped: an experiment never stops a start.
    pub async fn experiments(
        &self,
        ctx: &CallContext,
        query: &models::ExperimentQuery,
    ) -> Vec<models::ExperimentAssignment> {
        self.assignments(ctx, query, 0).await
    }

    /// The user's feature flags (`flag -> variant`) from the listeners that define flags and
    /// were built against plugin-api 1.2 or later (an older one would read the query as a
    /// start's). The first listener to answer a flag decides it. A listener that fails is
    /// logged and skipped: the flags it defines are absent, which their users read as "off".
    pub async fn feature_flags(
        &self,
        ctx: &CallContext,
        subject: &models::FlagSubject,
    ) -> std::collections::BTreeMap<String, String> {
        let mut flags = std::collections::BTreeMap::new();
        if ctx.user_id().is_none() {
            return flags;
        }
        let query = models::ExperimentQuery { feature_flags: Some(subject.clone()), ..Default::default() };
        for a in self.assignments(ctx, &query, 2).await {
            flags.entry(a.experiment).or_insert(a.variant);
        }
        flags
    }

    /// `experiment_variant(query)` of every listener built against plugin-api 1.`min_minor`
    /// or later, their answers in order; a failing or malformed answer is logged and skipped.
    async fn assignments(
        &self,
        ctx: &CallContext,
        query: &models::ExperimentQuery,
        min_minor: u32,
    ) -> Vec<models::ExperimentAssignment> {
        let query = RString::from(serde_json::to_string(query).unwrap_or_default());
        let mut all = Vec::new();
        for m in self.monitoring.iter().filter(|m| m.meta.api_minor >= min_minor) {
            let answer = m.meta.call("experiment_variant", m.obj.experiment_variant(ctx.clone(), query.clone())).await;
            match answer.map(|a| a.into_option()) {
                Ok(Some(json)) => match serde_json::from_str::<Vec<models::ExperimentAssignment>>(&json) {
                    Ok(assignments) => all.extend(assignments),
                    Err(e) => {
                        tracing::warn!(listener = %m.meta.key, error = %e, "experiment answer is not a list of assignments")
                    }
                },
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "experiment lookup failed; going on without"),
            }
        }
        all
    }

    // ---- routes ----

    /// What each `routes` instance declared: `(instance, its meta, the route)`.
    pub fn declared_routes(&self) -> impl Iterator<Item = (usize, &Meta, &DeclaredRoute)> {
        self.declared
            .iter()
            .enumerate()
            .flat_map(move |(i, routes)| routes.iter().map(move |r| (i, &self.routes[i].meta, r)))
    }

    /// Forwards one request (body read in full by the caller) to a `routes` instance.
    pub async fn handle_route(
        &self,
        instance: usize,
        mut ctx: CallContext,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response, CallError> {
        let r = &self.routes[instance];
        let request = convert::http_request(method, uri, headers, body);
        let _span = r.meta.traced(&mut ctx, "handle");
        let answer = r.meta.call("handle", r.obj.handle(ctx, request)).await?;
        Ok(convert::http_response(answer))
    }
}
