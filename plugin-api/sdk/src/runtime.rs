//! The library's own tokio runtime, and running async work on it for the host.
//!
//! A cdylib has its own copy of tokio: a plugin future polled on a host thread sees no reactor
//! unless the library's runtime is entered. So the future handed to the host enters it around
//! every poll and at drop ([`InRuntime`]): the host's thread drives the method's body (no hop
//! to another thread and back, which cost two context switches per call), while what the body
//! registers (sockets, timers, `spawn_blocking`, spawned tasks) lives in this runtime.

use plugin_api::{
    abi_stable::std_types::{RErr, ROk},
    async_ffi::{FfiFuture, FutureExt},
    ErrorCode, PResult, PluginError,
};
use std::{
    any::Any,
    future::Future,
    panic::{catch_unwind, AssertUnwindSafe},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, OnceLock,
    },
    task::{Context, Poll},
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
        // Blocking work here is mostly file I/O that ends in fsync. Sixteen threads per
        // library let 200 conversations ending their turns at once run hundreds of fsyncs in
        // parallel, and the kernel work stalled live event delivery for 20-30 ms (p99 of LLM
        // chunk -> client 6-9 ms on 2 cores); two per core: 1.5-3 ms, writes as fast.
        .max_blocking_threads((2 * std::thread::available_parallelism().map_or(2, |n| n.get())).clamp(4, 64))
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

/// A method's body as the host awaits it: polled, and dropped, inside the library's runtime
/// context, a panic in a poll caught there. Dropping it (the host's deadline fired) cancels
/// the work, as aborting a task would.
struct InRuntime<F> {
    handle: &'static Handle,
    work: Option<Pin<Box<F>>>,
    poisoned: Arc<AtomicBool>,
}

impl<T, F: Future<Output = Result<T, PluginError>>> Future for InRuntime<F> {
    type Output = PResult<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PResult<T>> {
        let this = self.get_mut();
        let Some(work) = this.work.as_mut() else {
            return Poll::Ready(RErr(PluginError::internal("polled after completion")));
        };
        let _entered = this.handle.enter();
        let outcome = match catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(Ok(value))) => ROk(value),
            Ok(Poll::Ready(Err(err))) => RErr(err),
            Err(payload) => {
                this.poisoned.store(true, Ordering::Relaxed);
                RErr(panicked(payload))
            }
        };
        // Done: what the body still holds goes now, inside the runtime.
        let finished = this.work.take();
        let _ = catch_unwind(AssertUnwindSafe(move || drop(finished)));
        Poll::Ready(outcome)
    }
}

impl<F> Drop for InRuntime<F> {
    fn drop(&mut self) {
        if let Some(work) = self.work.take() {
            // Cancelled: some clients spawn cleanup from their destructors (a pooled
            // connection going home), which needs the runtime.
            let _entered = self.handle.enter();
            let _ = catch_unwind(AssertUnwindSafe(move || drop(work)));
        }
    }
}

/// Runs `work` for the host: the returned future polls it inside the plugin runtime. A panic
/// in the work becomes `PANICKED` and sets `poisoned`.
pub(crate) fn run_ffi<T, F>(poisoned: Arc<AtomicBool>, work: F) -> FfiFuture<PResult<T>>
where
    T: Send + 'static,
    F: Future<Output = Result<T, PluginError>> + Send + 'static,
{
    let Some(handle) = handle() else {
        return ready(RErr(PluginError::internal("plugin runtime not started (init was not called)")));
    };
    InRuntime { handle, work: Some(Box::pin(work)), poisoned }.into_ffi()
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
