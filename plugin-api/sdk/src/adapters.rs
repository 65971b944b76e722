//! Adapters from the SDK's `async fn` traits to the stable-ABI trait objects.
//!
//! Each adapter method does the same three things: guard the synchronous part against
//! panics, spawn the body on the plugin runtime, convert documents to and from JSON text.

use crate::{runtime, services::EventSink};
use plugin_api::{
    abi_stable::std_types::{RErr, ROption, RString, RVec},
    async_ffi::FfiFuture,
    models, AuthOutcome, AuthRequest, CallContext, ErrorCode, EventQuery, EventSinkObject, Health, HttpRequest,
    HttpResponse, PResult, PluginError, RouteSpec,
};
use serde::{de::DeserializeOwned, Serialize};
use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

pub(crate) struct Adapter<T> {
    inner: Arc<T>,
    poisoned: Arc<AtomicBool>,
}

impl<T: Send + Sync + 'static> Adapter<T> {
    pub(crate) fn new(inner: T) -> Self {
        Self { inner: Arc::new(inner), poisoned: Arc::new(AtomicBool::new(false)) }
    }

    /// Runs `body(inner)` for the host, inside the plugin runtime.
    fn run<R, Fut>(&self, body: impl FnOnce(Arc<T>) -> Fut) -> FfiFuture<PResult<R>>
    where
        R: Send + 'static,
        Fut: Future<Output = Result<R, PluginError>> + Send + 'static,
    {
        let inner = self.inner.clone();
        let poisoned = self.poisoned.clone();
        match runtime::guard(Some(&self.poisoned), || Ok(body(inner))) {
            Ok(fut) => runtime::run_ffi(poisoned, fut),
            Err(e) => runtime::ready(RErr(e)),
        }
    }

    fn health_of<Fut>(&self, body: impl FnOnce(Arc<T>) -> Fut + Send + 'static) -> FfiFuture<PResult<Health>>
    where
        Fut: Future<Output = Result<String, PluginError>> + Send + 'static,
    {
        if self.poisoned.load(Ordering::Relaxed) {
            return runtime::ready(RErr(PluginError::new(
                ErrorCode::INTERNAL,
                "instance panicked earlier and is marked unhealthy (reload or restart the host)",
            )));
        }
        self.run(move |t| async move { body(t).await.map(|detail| Health { detail: detail.into() }) })
    }

    fn shutdown_of<Fut>(&self, body: impl FnOnce(Arc<T>) -> Fut + Send + 'static) -> FfiFuture<()>
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let fut = self.run(move |t| async move {
            body(t).await;
            Ok(())
        });
        plugin_api::async_ffi::FutureExt::into_ffi(async move {
            let _ = fut.await;
        })
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<RString, PluginError> {
    serde_json::to_string(value)
        .map(RString::from)
        .map_err(|e| PluginError::internal(format!("cannot encode a document: {e}")))
}

fn from_json<T: DeserializeOwned>(what: &str, text: &str) -> Result<T, PluginError> {
    serde_json::from_str(text).map_err(|e| PluginError::invalid_argument(format!("bad {what} JSON: {e}")))
}

impl<T: crate::SettingsStore> plugin_api::SettingsStore for Adapter<T> {
    fn load_versioned(&self, ctx: CallContext) -> FfiFuture<PResult<ROption<RString>>> {
        self.run(move |t| async move {
            let versioned = t.load_versioned(ctx).await?;
            Ok(versioned.map(|v| to_json(&v)).transpose()?.into())
        })
    }
    fn store_versioned(&self, ctx: CallContext, settings_json: RString, expected: u64) -> FfiFuture<PResult<u64>> {
        self.run(move |t| async move {
            let settings: models::Settings = from_json("settings", &settings_json)?;
            t.store_versioned(ctx, settings, expected).await
        })
    }
    fn load(&self, ctx: CallContext) -> FfiFuture<PResult<ROption<RString>>> {
        self.run(move |t| async move {
            let settings = t.load(ctx).await?;
            Ok(settings.map(|s| to_json(&s)).transpose()?.into())
        })
    }
    fn store(&self, ctx: CallContext, settings_json: RString) -> FfiFuture<PResult<()>> {
        self.run(move |t| async move {
            let settings: models::Settings = from_json("settings", &settings_json)?;
            t.store(ctx, settings).await
        })
    }
    fn health(&self, _ctx: CallContext) -> FfiFuture<PResult<Health>> {
        self.health_of(|t| async move { t.health().await })
    }
    fn shutdown(&self, _deadline_ms: u64) -> FfiFuture<()> {
        self.shutdown_of(|t| async move { t.shutdown().await })
    }
    fn migrate(&self, ctx: CallContext) -> FfiFuture<PResult<RString>> {
        self.run(move |t| async move { to_json(&t.migrate(ctx).await?) })
    }
    fn rotate_keys(&self, ctx: CallContext) -> FfiFuture<PResult<RString>> {
        self.run(move |t| async move { to_json(&t.rotate_keys(ctx).await?) })
    }
}

impl<T: crate::SecretsStore> plugin_api::SecretsStore for Adapter<T> {
    fn update(&self, ctx: CallContext, change_json: RString) -> FfiFuture<PResult<()>> {
        self.run(move |t| async move {
            let change: models::SecretsChange = from_json("secrets change", &change_json)?;
            t.update(ctx, change).await
        })
    }
    fn load(&self, ctx: CallContext) -> FfiFuture<PResult<ROption<RString>>> {
        self.run(move |t| async move {
            let secrets = t.load(ctx).await?;
            Ok(secrets.map(|s| to_json(&s)).transpose()?.into())
        })
    }
    fn store(&self, ctx: CallContext, secrets_json: RString) -> FfiFuture<PResult<()>> {
        self.run(move |t| async move {
            let secrets: models::Secrets = from_json("secrets", &secrets_json)?;
            t.store(ctx, secrets).await
        })
    }
    fn health(&self, _ctx: CallContext) -> FfiFuture<PResult<Health>> {
        self.health_of(|t| async move { t.health().await })
    }
    fn shutdown(&self, _deadline_ms: u64) -> FfiFuture<()> {
        self.shutdown_of(|t| async move { t.shutdown().await })
    }
    fn migrate(&self, ctx: CallContext) -> FfiFuture<PResult<RString>> {
        self.run(move |t| async move { to_json(&t.migrate(ctx).await?) })
    }
    fn rotate_keys(&self, ctx: CallContext) -> FfiFuture<PResult<RString>> {
        self.run(move |t| async move { to_json(&t.rotate_keys(ctx).await?) })
    }
}

impl<T: crate::ConversationStore> plugin_api::ConversationStore for Adapter<T> {
    fn save_metadata(&self, ctx: CallContext, metadata_json: RString) -> FfiFuture<PResult<()>> {
        self.run(move |t| async move {
            let metadata: models::ConversationMetadata = from_json("metadata", &metadata_json)?;
            t.save_metadata(ctx, metadata).await
        })
    }
    fn get_metadata(&self, ctx: CallContext, id: RString) -> FfiFuture<PResult<ROption<RString>>> {
        self.run(move |t| async move {
            let metadata = t.get_metadata(ctx, id.into_string()).await?;
            Ok(metadata.map(|m| to_json(&m)).transpose()?.into())
        })
    }
    fn delete_metadata(&self, ctx: CallContext, id: RString) -> FfiFuture<PResult<bool>> {
        self.run(move |t| async move { t.delete_metadata(ctx, id.into_string()).await })
    }
    fn validate_metadata(&self, ctx: CallContext, id: RString, user_id: RString) -> FfiFuture<PResult<bool>> {
        self.run(move |t| async move { t.validate_metadata(ctx, id.into_string(), user_id.into_string()).await })
    }
    fn search(&self, ctx: CallContext, page_id: ROption<RString>, limit: u32) -> FfiFuture<PResult<RString>> {
        self.run(move |t| async move {
            let page = t.search(ctx, page_id.map(RString::into_string).into_option(), limit).await?;
            to_json(&page)
        })
    }
    fn append_events(&self, ctx: CallContext, id: RString, events_json: RVec<RString>) -> FfiFuture<PResult<u64>> {
        self.run(move |t| async move {
            let events = events_json
                .iter()
                .map(|e| from_json::<serde_json::Value>("event", e))
                .collect::<Result<Vec<_>, _>>()?;
            t.append_events(ctx, id.into_string(), events).await
        })
    }
    fn append_events_fenced(
        &self,
        ctx: CallContext,
        id: RString,
        events_json: RVec<RString>,
        fence: u64,
    ) -> FfiFuture<PResult<u64>> {
        self.run(move |t| async move {
            let events = events_json
                .iter()
                .map(|e| from_json::<serde_json::Value>("event", e))
                .collect::<Result<Vec<_>, _>>()?;
            t.append_events_fenced(ctx, id.into_string(), events, fence).await
        })
    }
    fn get_events(&self, ctx: CallContext, id: RString, query: EventQuery) -> FfiFuture<PResult<RString>> {
        self.run(move |t| async move { to_json(&t.get_events(ctx, id.into_string(), query).await?) })
    }
    fn health(&self, _ctx: CallContext) -> FfiFuture<PResult<Health>> {
        self.health_of(|t| async move { t.health().await })
    }
    fn shutdown(&self, _deadline_ms: u64) -> FfiFuture<()> {
        self.shutdown_of(|t| async move { t.shutdown().await })
    }
    fn migrate(&self, ctx: CallContext) -> FfiFuture<PResult<RString>> {
        self.run(move |t| async move { to_json(&t.migrate(ctx).await?) })
    }
    fn rotate_keys(&self, ctx: CallContext) -> FfiFuture<PResult<RString>> {
        self.run(move |t| async move { to_json(&t.rotate_keys(ctx).await?) })
    }
}

impl<T: crate::ConversationManager> plugin_api::ConversationManager for Adapter<T> {
    fn maybe_start(&self, ctx: CallContext, request_json: RString) -> FfiFuture<PResult<RString>> {
        self.run(move |t| async move {
            let request: models::StartRequest = from_json("start request", &request_json)?;
            to_json(&t.maybe_start(ctx, request).await?)
        })
    }
    fn send_event(&self, ctx: CallContext, id: RString, event_json: RString) -> FfiFuture<PResult<()>> {
        self.run(move |t| async move {
            let event = from_json("event", &event_json)?;
            t.send_event(ctx, id.into_string(), event).await
        })
    }
    fn close(&self, ctx: CallContext, id: RString) -> FfiFuture<PResult<bool>> {
        self.run(move |t| async move { t.close(ctx, id.into_string()).await })
    }
    fn running(&self, ctx: CallContext, filter_ids: RVec<RString>) -> FfiFuture<PResult<RString>> {
        self.run(move |t| async move {
            let ids = filter_ids.into_iter().map(RString::into_string).collect();
            to_json(&t.running(ctx, ids).await?)
        })
    }
    fn subscribe(&self, ctx: CallContext, id: RString, sink: EventSinkObject) -> FfiFuture<PResult<u64>> {
        let sink = EventSink::new(sink);
        self.run(move |t| async move { t.subscribe(ctx, id.into_string(), sink).await })
    }
    fn unsubscribe(&self, ctx: CallContext, subscription_id: u64) -> FfiFuture<PResult<()>> {
        self.run(move |t| async move { t.unsubscribe(ctx, subscription_id).await })
    }
    fn health(&self, _ctx: CallContext) -> FfiFuture<PResult<Health>> {
        self.health_of(|t| async move { t.health().await })
    }
    fn shutdown(&self, _deadline_ms: u64) -> FfiFuture<()> {
        self.shutdown_of(|t| async move { t.shutdown().await })
    }
    fn cluster(&self, ctx: CallContext) -> FfiFuture<PResult<RString>> {
        self.run(move |t| async move { to_json(&t.cluster(ctx).await?) })
    }
    fn workspace(&self, ctx: CallContext, conversation_id: RString) -> FfiFuture<PResult<ROption<RString>>> {
        self.run(move |t| async move {
            Ok(t.workspace(ctx, conversation_id.into_string()).await?.map(RString::from).into())
        })
    }
}

impl<T: crate::UserAuth> plugin_api::UserAuth for Adapter<T> {
    fn authenticate(&self, ctx: CallContext, request: AuthRequest) -> FfiFuture<PResult<AuthOutcome>> {
        self.run(move |t| async move { t.authenticate(ctx, request).await })
    }
    fn provider_tokens(&self, ctx: CallContext) -> FfiFuture<PResult<ROption<RString>>> {
        self.run(move |t| async move {
            let tokens = t.provider_tokens(ctx).await?;
            Ok(tokens.map(|s| to_json(&s)).transpose()?.into())
        })
    }
    fn health(&self, _ctx: CallContext) -> FfiFuture<PResult<Health>> {
        self.health_of(|t| async move { t.health().await })
    }
    fn shutdown(&self, _deadline_ms: u64) -> FfiFuture<()> {
        self.shutdown_of(|t| async move { t.shutdown().await })
    }
}

impl<T: crate::MonitoringListener> Adapter<T> {
    /// The hooks are sync: run inline under the panic guard, log what a panic said.
    fn hook(&self, name: &str, f: impl FnOnce(&T)) {
        let result = runtime::guard(Some(&self.poisoned), || {
            f(&self.inner);
            Ok(())
        });
        if let Err(err) = result {
            tracing::error!(hook = name, error = %err, "monitoring hook failed");
        }
    }
}

impl<T: crate::MonitoringListener> plugin_api::MonitoringListener for Adapter<T> {
    fn on_session_event(&self, ctx: CallContext, event_json: RString) {
        match serde_json::from_str::<serde_json::Value>(&event_json) {
            Ok(event) => self.hook("on_session_event", |t| t.on_session_event(&ctx, &event)),
            Err(e) => tracing::warn!(error = %e, "on_session_event got bad JSON"),
        }
    }
    fn on_agent_session_start(&self, ctx: CallContext, success: bool, duration_secs: f64) {
        self.hook("on_agent_session_start", |t| t.on_agent_session_start(&ctx, success, duration_secs));
    }
    fn on_create_conversation(&self, ctx: CallContext) {
        self.hook("on_create_conversation", |t| t.on_create_conversation(&ctx));
    }
    fn experiment_variant(&self, ctx: CallContext, experiment: RString) -> FfiFuture<PResult<ROption<RString>>> {
        self.run(move |t| async move {
            Ok(t.experiment_variant(ctx, experiment.into_string()).await?.map(RString::from).into())
        })
    }
    fn health(&self, _ctx: CallContext) -> FfiFuture<PResult<Health>> {
        self.health_of(|t| async move { t.health().await })
    }
    fn shutdown(&self, _deadline_ms: u64) -> FfiFuture<()> {
        self.shutdown_of(|t| async move { t.shutdown().await })
    }
    fn capture(&self, ctx: CallContext, event: RString, properties_json: RString) {
        let properties = serde_json::from_str::<serde_json::Value>(&properties_json).unwrap_or_default();
        self.hook("capture", |t| t.capture(&ctx, &event, &properties));
    }
    fn admit(&self, ctx: CallContext, admission_json: RString) -> FfiFuture<PResult<()>> {
        self.run(move |t| async move {
            let admission = serde_json::from_str::<plugin_api::models::Admission>(&admission_json)
                .map_err(|e| PluginError::invalid_argument(format!("admit: {e}")))?;
            t.admit(ctx, admission).await
        })
    }
    fn on_llm_usage(&self, ctx: CallContext, usage_json: RString) {
        match serde_json::from_str::<plugin_api::models::LlmUsage>(&usage_json) {
            Ok(usage) => self.hook("on_llm_usage", |t| t.on_llm_usage(&ctx, &usage)),
            Err(e) => tracing::warn!(error = %e, "on_llm_usage got bad JSON"),
        }
    }
}

impl<T: crate::RouteHandler> plugin_api::RouteHandler for Adapter<T> {
    fn routes(&self) -> RVec<RouteSpec> {
        match runtime::guard(Some(&self.poisoned), || Ok(self.inner.routes())) {
            Ok(routes) => routes.into(),
            Err(err) => {
                tracing::error!(error = %err, "routes() failed; serving none");
                RVec::new()
            }
        }
    }
    fn handle(&self, ctx: CallContext, request: HttpRequest) -> FfiFuture<PResult<HttpResponse>> {
        self.run(move |t| async move { t.handle(ctx, request).await })
    }
    fn health(&self, _ctx: CallContext) -> FfiFuture<PResult<Health>> {
        self.health_of(|t| async move { t.health().await })
    }
    fn shutdown(&self, _deadline_ms: u64) -> FfiFuture<()> {
        self.shutdown_of(|t| async move { t.shutdown().await })
    }
}

impl<T: crate::Runtime> plugin_api::Runtime for Adapter<T> {
    fn open(&self, ctx: CallContext, request_json: RString) -> FfiFuture<PResult<RString>> {
        self.run(move |t| async move {
            let request: models::WorkspaceRequest = from_json("workspace request", &request_json)?;
            to_json(&t.open(ctx, request).await?)
        })
    }
    fn run(&self, ctx: CallContext, id: RString, request_json: RString) -> FfiFuture<PResult<RString>> {
        self.run(move |t| async move {
            let request: models::CommandRequest = from_json("command request", &request_json)?;
            to_json(&t.run(ctx, id.into_string(), request).await?)
        })
    }
    fn interrupt(&self, ctx: CallContext, id: RString) -> FfiFuture<PResult<bool>> {
        self.run(move |t| async move { t.interrupt(ctx, id.into_string()).await })
    }
    fn list_files(&self, ctx: CallContext, id: RString, path: RString) -> FfiFuture<PResult<RString>> {
        self.run(move |t| async move { to_json(&t.list_files(ctx, id.into_string(), path.into_string()).await?) })
    }
    fn read_file(&self, ctx: CallContext, id: RString, path: RString, max_bytes: u64) -> FfiFuture<PResult<RVec<u8>>> {
        self.run(
            move |t| async move { Ok(t.read_file(ctx, id.into_string(), path.into_string(), max_bytes).await?.into()) },
        )
    }
    fn write_file(&self, ctx: CallContext, id: RString, path: RString, content: RVec<u8>) -> FfiFuture<PResult<()>> {
        self.run(
            move |t| async move { t.write_file(ctx, id.into_string(), path.into_string(), content.into_vec()).await },
        )
    }
    fn git_changes(&self, ctx: CallContext, id: RString) -> FfiFuture<PResult<RString>> {
        self.run(move |t| async move { to_json(&t.git_changes(ctx, id.into_string()).await?) })
    }
    fn git_original(
        &self,
        ctx: CallContext,
        id: RString,
        path: RString,
        max_bytes: u64,
    ) -> FfiFuture<PResult<ROption<RVec<u8>>>> {
        self.run(move |t| async move {
            Ok(t.git_original(ctx, id.into_string(), path.into_string(), max_bytes).await?.map(RVec::from).into())
        })
    }
    fn close(&self, ctx: CallContext, id: RString) -> FfiFuture<PResult<()>> {
        self.run(move |t| async move { t.close(ctx, id.into_string()).await })
    }
    fn destroy(&self, ctx: CallContext, id: RString) -> FfiFuture<PResult<bool>> {
        self.run(move |t| async move { t.destroy(ctx, id.into_string()).await })
    }
    fn health(&self, _ctx: CallContext) -> FfiFuture<PResult<Health>> {
        self.health_of(|t| async move { t.health().await })
    }
    fn shutdown(&self, _deadline_ms: u64) -> FfiFuture<()> {
        self.shutdown_of(|t| async move { t.shutdown().await })
    }
}
