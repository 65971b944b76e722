//! The host's side of the plugin → host direction: `HostServices` (plugins reach the other
//! extension points through it, with the operations of `plugin_api::host_calls`) and the
//! `EventSink` a socket subscribes with.

use crate::config::AppMode;
use abi_stable::std_types::RString;
use async_ffi::{FfiFuture, FutureExt as _};
use futures_util::future::BoxFuture;
use plugin_api::{CallContext, ExtensionPoint, HostServices, PResult, PluginError};
use std::{
    path::PathBuf,
    sync::{Arc, OnceLock, Weak},
};

/// Serves plugins' host calls (`plugin_api::host_calls`): the application layer implements
/// it (`app::host_calls`), so the registry knows no flow.
pub trait HostCallHandler: Send + Sync {
    /// The answer to `point.method(args)`, as JSON text.
    fn serve<'a>(
        &'a self,
        ctx: CallContext,
        point: &'a str,
        method: &'a str,
        args: &'a str,
    ) -> BoxFuture<'a, Result<String, PluginError>>;
}

/// Where host calls go: set once the application exists (instances are built before it).
pub(super) type HandlerSlot = Arc<OnceLock<Weak<dyn HostCallHandler>>>;

/// Handed to every instance.
pub(super) struct Services {
    pub(super) handler: HandlerSlot,
    pub(super) app_mode: AppMode,
    pub(super) state_dir: PathBuf,
    pub(super) runtime: tokio::runtime::Handle,
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
        point: ExtensionPoint,
        method: RString,
        args_json: RString,
    ) -> FfiFuture<PResult<RString>> {
        // A point this host does not know reads "unknown": answered UNIMPLEMENTED.
        let point = point.key();
        // Polled on a plugin thread, which has no host runtime: run the work on ours.
        let handler = self.handler.get().and_then(Weak::upgrade);
        let task = AbortOnDrop(self.runtime.spawn(async move {
            let Some(handler) = handler else {
                return Err(PluginError::unavailable("the host is starting or stopping"));
            };
            handler.serve(ctx, point, &method, &args_json).await.map(RString::from)
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

    fn app_mode(&self) -> plugin_api::AppMode {
        match self.app_mode {
            AppMode::Oss => plugin_api::AppMode::OSS,
            AppMode::Saas => plugin_api::AppMode::SAAS,
        }
    }

    fn state_dir(&self) -> RString {
        self.state_dir.display().to_string().into()
    }
}

/// The host's `EventSink`: a channel to the socket that subscribed. Called from plugin
/// threads; an unbounded send needs no runtime and never blocks.
pub(super) struct ChannelSink(pub(super) tokio::sync::mpsc::UnboundedSender<String>);

impl plugin_api::EventSink for ChannelSink {
    fn send(&self, event_json: RString) -> bool {
        self.0.send(event_json.into_string()).is_ok()
    }
}
