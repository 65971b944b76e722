//! Plugin-side handles on what the host provides: other extension points, event sinks.

use plugin_api::{
    abi_stable::std_types::RString, host_calls::HostCall, AppMode, CallContext, EventSinkObject, HostServicesObject,
    PluginError,
};
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
