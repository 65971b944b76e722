//! Plugin-side handles on what the host provides: other extension points, event sinks.

use plugin_api::{
    abi_stable::std_types::{RBox, RString},
    CallContext, EventSink_TO, HostServices_TO, PluginError,
};
use std::sync::Arc;

/// The host's services, given to every constructor (see `plugin_api::HostServices`).
#[derive(Clone)]
pub struct Services {
    inner: Option<Arc<HostServices_TO<'static, RBox<()>>>>,
}

impl Services {
    pub(crate) fn new(inner: HostServices_TO<'static, RBox<()>>) -> Self {
        Self { inner: Some(Arc::new(inner)) }
    }

    /// Services that answer every call with `UNAVAILABLE`: for a plugin used as an rlib in
    /// its own tests.
    pub fn detached() -> Self {
        Self { inner: None }
    }

    /// `"oss"` or `"saas"`.
    pub fn app_mode(&self) -> String {
        self.inner.as_ref().map(|s| s.app_mode().into_string()).unwrap_or_else(|| "oss".to_owned())
    }

    /// The host's state directory, `None` when detached.
    pub fn state_dir(&self) -> Option<std::path::PathBuf> {
        self.inner.as_ref().map(|s| s.state_dir().into_string().into())
    }

    /// Calls `method` of the extension point `point` (e.g. `"conversation_store"`) in the host,
    /// with JSON arguments; answers JSON.
    pub async fn call(
        &self,
        ctx: CallContext,
        point: &str,
        method: &str,
        args: serde_json::Value,
    ) -> Result<serde_json::Value, PluginError> {
        let Some(inner) = &self.inner else {
            return Err(PluginError::unavailable("no host services (plugin used without a host)"));
        };
        let answer = inner
            .call(ctx, RString::from(point), RString::from(method), RString::from(args.to_string()))
            .await
            .into_result()?;
        serde_json::from_str(&answer)
            .map_err(|e| PluginError::internal(format!("host answered {point}.{method} with bad JSON: {e}")))
    }
}

/// Where a conversation manager pushes live events (see `plugin_api::EventSink`).
#[derive(Clone)]
pub struct EventSink {
    inner: Arc<EventSink_TO<'static, RBox<()>>>,
}

impl EventSink {
    pub(crate) fn new(inner: EventSink_TO<'static, RBox<()>>) -> Self {
        Self { inner: Arc::new(inner) }
    }

    /// Sends one `oh_event` payload; `false` once the subscriber is gone.
    pub fn send(&self, event: &serde_json::Value) -> bool {
        self.inner.send(RString::from(event.to_string()))
    }
}
