//! Plugin-side handles on what the host provides: other extension points, event sinks.

use plugin_api::{
    abi_stable::std_types::RString, host_calls::HostCall, AppMode, CallContext, EventSinkObject, HostServicesObject,
    PluginError,
};
use plugin_api::{
    abi_stable::std_types::{RString as S, RVec},
    models, PResult, RuntimeObject,
};
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// The host's services, given to every constructor (see `plugin_api::HostServices`).
#[derive(Clone)]
pub struct Services {
    inner: Option<Arc<HostServicesObject>>,
}

impl Services {
    pub(crate) fn new(inner: HostServicesObject) -> Self {
        Self { inner: Some(Arc::new(inner)) }
    }

    /// Services that answer every call with `UNAVAILABLE`: for a plugin used as an rlib in
    /// its own tests.
    pub fn detached() -> Self {
        Self { inner: None }
    }

    /// How the deployment runs (`AppMode::OSS` when detached).
    pub fn app_mode(&self) -> AppMode {
        self.inner.as_ref().map(|s| s.app_mode()).unwrap_or(AppMode::OSS)
    }

    /// The deployment's runtime (`[extensions.runtime]`), `None` when the profile has none or
    /// the host predates plugin-api 1.1.
    pub fn runtime(&self) -> Option<RuntimeClient> {
        let inner = self.inner.as_ref()?;
        inner.runtime().into_option().map(|r| RuntimeClient { inner: Arc::new(r) })
    }

    /// The host's state directory, `None` when detached.
    pub fn state_dir(&self) -> Option<std::path::PathBuf> {
        self.inner.as_ref().map(|s| s.state_dir().into_string().into())
    }

    /// Asks the host for one of the operations of `plugin_api::host_calls`, e.g.
    /// `services.call(ctx, AppendEvents { .. })`.
    pub async fn call<C: HostCall>(&self, ctx: CallContext, request: C) -> Result<C::Answer, PluginError> {
        let Some(inner) = &self.inner else {
            return Err(PluginError::unavailable("no host services (plugin used without a host)"));
        };
        let (point, method) = (C::POINT, C::METHOD);
        let args = serde_json::to_string(&request)
            .map_err(|e| PluginError::internal(format!("cannot encode {point}.{method}: {e}")))?;
        let answer = inner.call(ctx, point, RString::from(method), RString::from(args)).await.into_result()?;
        serde_json::from_str(&answer)
            .map_err(|e| PluginError::internal(format!("host answered {point}.{method} with bad JSON: {e}")))
    }
}

/// Where a conversation manager pushes live events (see `plugin_api::EventSink`).
#[derive(Clone)]
pub struct EventSink {
    inner: Arc<EventSinkObject>,
}

impl EventSink {
    pub(crate) fn new(inner: EventSinkObject) -> Self {
        Self { inner: Arc::new(inner) }
    }

    /// Sends one `oh_event` payload; `false` once the subscriber is gone.
    pub fn send(&self, event: &serde_json::Value) -> bool {
        self.inner.send(RString::from(event.to_string()))
    }
}

/// A handle on the deployment's runtime (see `plugin_api::Runtime` for what each call means),
/// from [`Services::runtime`]. Cheap to clone.
#[derive(Clone)]
pub struct RuntimeClient {
    inner: Arc<RuntimeObject>,
}

fn decode<T: DeserializeOwned>(what: &str, answer: PResult<S>) -> Result<T, PluginError> {
    let text = answer.into_result()?;
    serde_json::from_str(&text)
        .map_err(|e| PluginError::internal(format!("the runtime answered {what} with bad JSON: {e}")))
}

fn encode<T: serde::Serialize>(value: &T) -> S {
    serde_json::to_string(value).unwrap_or_default().into()
}

impl RuntimeClient {
    pub async fn open(
        &self,
        ctx: CallContext,
        request: &models::WorkspaceRequest,
    ) -> Result<models::WorkspaceInfo, PluginError> {
        decode("open", self.inner.open(ctx, encode(request)).await)
    }
    pub async fn run(
        &self,
        ctx: CallContext,
        conversation_id: &str,
        request: &models::CommandRequest,
    ) -> Result<models::CommandResult, PluginError> {
        decode("run", self.inner.run(ctx, conversation_id.into(), encode(request)).await)
    }
    pub async fn interrupt(&self, ctx: CallContext, conversation_id: &str) -> Result<bool, PluginError> {
        self.inner.interrupt(ctx, conversation_id.into()).await.into_result()
    }
    pub async fn list_files(
        &self,
        ctx: CallContext,
        conversation_id: &str,
        path: &str,
    ) -> Result<Vec<models::FileEntry>, PluginError> {
        decode("list_files", self.inner.list_files(ctx, conversation_id.into(), path.into()).await)
    }
    pub async fn read_file(
        &self,
        ctx: CallContext,
        conversation_id: &str,
        path: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, PluginError> {
        Ok(self.inner.read_file(ctx, conversation_id.into(), path.into(), max_bytes).await.into_result()?.into_vec())
    }
    pub async fn write_file(
        &self,
        ctx: CallContext,
        conversation_id: &str,
        path: &str,
        content: &[u8],
    ) -> Result<(), PluginError> {
        self.inner.write_file(ctx, conversation_id.into(), path.into(), RVec::from_slice(content)).await.into_result()
    }
    pub async fn close(&self, ctx: CallContext, conversation_id: &str) -> Result<(), PluginError> {
        self.inner.close(ctx, conversation_id.into()).await.into_result()
    }
}
