//! The host's side of the plugin → host direction: `HostServices` (plugins reach the other
//! extension points through it, with the operations of `plugin_api::host_calls`) and the
//! `EventSink` a socket subscribes with.

use super::{
    build::Instance,
    call::{CallError, Kind},
};
use crate::config::AppMode;
use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{ROption, RString, RVec},
};
use async_ffi::{FfiFuture, FutureExt as _};
use futures_util::future::BoxFuture;
use plugin_api::{CallContext, ExtensionPoint, Health, HostServices, PResult, PluginError, RuntimeObject, Runtime_TO};
use std::{
    path::PathBuf,
    sync::{Arc, OnceLock, Weak},
    time::Duration,
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

/// The active generation's runtime instance: what the handles `HostServices::runtime` gives
/// reach (shared by every generation, set when one is activated).
pub(super) type RuntimeSlot = Arc<std::sync::RwLock<Option<Arc<Instance<RuntimeObject>>>>>;

/// Handed to every instance.
pub(super) struct Services {
    pub(super) handler: HandlerSlot,
    /// `Some` when the profile configures a runtime.
    pub(super) runtime_slot: Option<RuntimeSlot>,
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

/// A plugin's call into the host: polled on a plugin thread, which has no host runtime, so the
/// work runs on ours (and is aborted if the plugin drops the future).
fn on_host<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    work: impl std::future::Future<Output = Result<T, PluginError>> + Send + 'static,
) -> FfiFuture<PResult<T>> {
    let task = AbortOnDrop(runtime.spawn(work));
    async move {
        let mut task = task;
        match (&mut task.0).await {
            Ok(r) => r.into(),
            Err(e) => PResult::RErr(PluginError::internal(format!("host task failed: {e}"))),
        }
    }
    .into_ffi()
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
        let handler = self.handler.get().and_then(Weak::upgrade);
        on_host(&self.runtime, async move {
            let Some(handler) = handler else {
                return Err(PluginError::unavailable("the host is starting or stopping"));
            };
            handler.serve(ctx, point, &method, &args_json).await.map(RString::from)
        })
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

    fn runtime(&self) -> ROption<RuntimeObject> {
        match &self.runtime_slot {
            Some(slot) => ROption::RSome(Runtime_TO::from_value(
                RuntimeHandle { slot: slot.clone(), runtime: self.runtime.clone() },
                TD_Opaque,
            )),
            None => ROption::RNone,
        }
    }
}

// The same services for a library built against plugin-api 1.0 (its `HostServices` has no
// `runtime`).
host_services_for_v1_0!(Services);

/// What a plugin holds as "the runtime": each call runs on the host's runtime through the
/// runtime instance's `Meta` (counters, panic containment, a deadline).
struct RuntimeHandle {
    slot: RuntimeSlot,
    runtime: tokio::runtime::Handle,
}

/// How long the host waits for a runtime call that may run a command or clone a repository:
/// the runtime bounds those itself, this is the backstop.
const LONG_RUNTIME_CALL: Duration = Duration::from_secs(3600);

impl RuntimeHandle {
    fn forward<T: Send + 'static>(
        &self,
        method: &'static str,
        long: bool,
        call: impl FnOnce(&RuntimeObject) -> FfiFuture<PResult<T>> + Send + 'static,
    ) -> FfiFuture<PResult<T>> {
        let slot = self.slot.clone();
        on_host(&self.runtime, async move {
            let active = slot.read().unwrap_or_else(|e| e.into_inner()).clone();
            let Some(instance) = active else {
                return Err(PluginError::unavailable("the runtime is starting or stopping"));
            };
            let deadline = long.then_some(LONG_RUNTIME_CALL.max(instance.meta.timeout));
            instance
                .meta
                .call_with(method, call(&instance.obj), deadline, Kind::Call)
                .await
                .map_err(CallError::into_plugin_error)
        })
    }
}

impl plugin_api::Runtime for RuntimeHandle {
    fn open(&self, ctx: CallContext, request_json: RString) -> FfiFuture<PResult<RString>> {
        self.forward("open", true, move |r| r.open(ctx, request_json))
    }
    fn run(&self, ctx: CallContext, id: RString, request_json: RString) -> FfiFuture<PResult<RString>> {
        self.forward("run", true, move |r| r.run(ctx, id, request_json))
    }
    fn interrupt(&self, ctx: CallContext, id: RString) -> FfiFuture<PResult<bool>> {
        self.forward("interrupt", false, move |r| r.interrupt(ctx, id))
    }
    fn list_files(&self, ctx: CallContext, id: RString, path: RString) -> FfiFuture<PResult<RString>> {
        self.forward("list_files", false, move |r| r.list_files(ctx, id, path))
    }
    fn read_file(&self, ctx: CallContext, id: RString, path: RString, max_bytes: u64) -> FfiFuture<PResult<RVec<u8>>> {
        self.forward("read_file", false, move |r| r.read_file(ctx, id, path, max_bytes))
    }
    fn write_file(&self, ctx: CallContext, id: RString, path: RString, content: RVec<u8>) -> FfiFuture<PResult<()>> {
        self.forward("write_file", false, move |r| r.write_file(ctx, id, path, content))
    }
    fn git_changes(&self, ctx: CallContext, id: RString) -> FfiFuture<PResult<RString>> {
        self.forward("git_changes", false, move |r| r.git_changes(ctx, id))
    }
    fn git_original(
        &self,
        ctx: CallContext,
        id: RString,
        path: RString,
        max_bytes: u64,
    ) -> FfiFuture<PResult<ROption<RVec<u8>>>> {
        self.forward("git_original", false, move |r| r.git_original(ctx, id, path, max_bytes))
    }
    fn close(&self, ctx: CallContext, id: RString) -> FfiFuture<PResult<()>> {
        self.forward("close", false, move |r| r.close(ctx, id))
    }
    fn destroy(&self, ctx: CallContext, id: RString) -> FfiFuture<PResult<bool>> {
        self.forward("destroy", false, move |r| r.destroy(ctx, id))
    }
    fn health(&self, ctx: CallContext) -> FfiFuture<PResult<Health>> {
        self.forward("health", false, move |r| r.health(ctx))
    }
    fn shutdown(&self, _deadline_ms: u64) -> FfiFuture<()> {
        // The host shuts the runtime down itself, once, after the managers.
        async {}.into_ffi()
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
