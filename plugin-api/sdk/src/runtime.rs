//! The library's own tokio runtime, and running async work on it for the host.
//!
//! A cdylib has its own copy of tokio: a plugin future polled on a host thread sees no reactor.
//! So every method spawns its body here and hands the host a future that only awaits the task.

use plugin_api::{
    abi_stable::std_types::{RErr, ROk},
    async_ffi::{FfiFuture, FutureExt},
    ErrorCode, PResult, PluginError,
};
use std::{
    any::Any,
    future::Future,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::Duration,
};
use tokio::runtime::{Handle, Runtime};

static RUNTIME: Mutex<Option<Runtime>> = Mutex::new(None);
static HANDLE: OnceLock<Handle> = OnceLock::new();

/// Starts the runtime once; later calls are no-ops.
pub(crate) fn start(library: &str, worker_threads: usize) -> Result<(), PluginError> {
    let mut slot = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    if HANDLE.get().is_some() {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads.max(1))
        .max_blocking_threads(16)
        .thread_name(format!("plugin-{library}"))
        .enable_all()
        .build()
        .map_err(|e| PluginError::internal(format!("cannot start the plugin runtime: {e}")))?;
    let _ = HANDLE.set(runtime.handle().clone());
    *slot = Some(runtime);
    Ok(())
}

/// For a plugin crate's own tests and benchmarks, which use it as an rlib without `init`.
pub fn start_runtime_for_tests() {
    let _ = start("test", 2);
}

/// Runs a future to completion on the plugin runtime from a thread outside it (tests).
pub fn block_on_runtime<F: Future + Send + 'static>(future: F) -> F::Output
where
    F::Output: Send + 'static,
{
    start_runtime_for_tests();
    let handle = HANDLE.get().expect("runtime started").clone();
    std::thread::spawn(move || handle.block_on(future)).join().expect("test future panicked")
}

pub(crate) fn handle() -> Option<&'static Handle> {
    HANDLE.get()
}

/// Runs `f` inside the library's runtime context, for constructors that build clients whose
/// setup spawns tasks (connection pools). Outside any runtime when `init` was not called.
pub fn enter_runtime<R>(f: impl FnOnce() -> R) -> R {
    match HANDLE.get() {
        Some(h) => {
            let _guard = h.enter();
            f()
        }
        None => f(),
    }
}

/// Stops the runtime, waiting at most `deadline` for its tasks. Runs on a fresh thread:
/// a runtime cannot be dropped from inside an async context.
pub(crate) fn stop(deadline: Duration) -> FfiFuture<()> {
    let runtime = RUNTIME.lock().unwrap_or_else(|e| e.into_inner()).take();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    match runtime {
        Some(runtime) => {
            std::thread::spawn(move || {
                runtime.shutdown_timeout(deadline);
                let _ = tx.send(());
            });
        }
        None => {
            let _ = tx.send(());
        }
    }
    async move {
        let _ = rx.await;
    }
    .into_ffi()
}

/// Aborts the task when the host drops the future (e.g. its timeout fired).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Spawns `work` on the plugin runtime; the returned future awaits it. A panic in the work
/// becomes `PANICKED` and sets `poisoned`.
pub(crate) fn spawn_ffi<T, F>(poisoned: Arc<AtomicBool>, work: F) -> FfiFuture<PResult<T>>
where
    T: Send + 'static,
    F: Future<Output = Result<T, PluginError>> + Send + 'static,
{
    let Some(handle) = handle() else {
        return ready(RErr(PluginError::internal("plugin runtime not started (init was not called)")));
    };
    let task = AbortOnDrop(handle.spawn(work));
    async move {
        let mut task = task;
        match (&mut task.0).await {
            Ok(Ok(value)) => ROk(value),
            Ok(Err(err)) => RErr(err),
            Err(join) if join.is_panic() => {
                poisoned.store(true, Ordering::Relaxed);
                RErr(panicked(join.into_panic()))
            }
            Err(_) => RErr(PluginError::unavailable("plugin task was cancelled")),
        }
    }
    .into_ffi()
}

/// Runs a sync entry point under `catch_unwind`.
pub(crate) fn guard<T>(
    poisoned: Option<&AtomicBool>,
    f: impl FnOnce() -> Result<T, PluginError>,
) -> Result<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            if let Some(flag) = poisoned {
                flag.store(true, Ordering::Relaxed);
            }
            Err(panicked(payload))
        }
    }
}

pub(crate) fn ready<T: Send + 'static>(value: T) -> FfiFuture<T> {
    async move { value }.into_ffi()
}

pub(crate) fn panicked(payload: Box<dyn Any + Send>) -> PluginError {
    PluginError::new(ErrorCode::PANICKED, format!("plugin panicked: {}", panic_message(&*payload)))
}

pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
