//! The one way a plugin instance is called: [`Meta::call`] for async methods (a deadline, a
//! guard against the panic async-ffi re-raises when a plugin future panics while polled, and
//! counters) and [`Meta::call_sync`] for the few sync ones (counters and the panic guard; a
//! sync call cannot be cancelled, so it has no deadline). Plus the JSON codec of documents.
//!
//! Errors: a failed call is a [`CallError`], which names the extension point, library,
//! implementation and method and carries the plugin's [`PluginError`]; the HTTP layer turns it
//! into a status and a JSON body (`http/error.rs`). Internal causes are logged here, once.

use crate::config::ExtensionConfig;
use abi_stable::std_types::{ROption, RString};
use async_ffi::FfiFuture;
use futures_util::FutureExt as _;
use plugin_api::{CallContext, ErrorCode, ExtensionPoint, PResult, PluginError};
use std::{
    panic::AssertUnwindSafe,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// Counters of one instance. Health probes and shutdown are counted apart (`probes`), so
/// `calls` and `errors` are what requests and plugins asked of it.
#[derive(Default, Debug)]
pub struct Stats {
    pub calls: AtomicU64,
    pub probes: AtomicU64,
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
    /// Where it came from in the profile, e.g. `extensions.routes[1]`.
    pub key: String,
    pub library: String,
    pub implementation: String,
    pub timeout: Duration,
    /// What the entry was built from besides its library's file (key, library name,
    /// implementation, config, timeout, isolation); see [`Meta::fingerprint`].
    entry: String,
    /// The library file's hash, computed when a reload first compares it.
    library_sha256: crate::loader::LibrarySum,
    pub stats: Stats,
    /// Cleared when the instance panics: a panicked instance is unhealthy until restarted.
    pub healthy: AtomicBool,
    /// The runner of an isolated instance (`isolation = "process"`).
    pub runner: Option<std::sync::Arc<crate::isolation::Supervisor>>,
    /// The plugin-api minor its library was built against: what it understands of the
    /// contract's JSON (a 1.1 listener is not asked for feature flags).
    pub api_minor: u32,
}

impl Meta {
    /// `extensions.routes[1] (library::Implementation)`: where it came from, for messages.
    pub fn origin(&self) -> String {
        format!("{} ({}::{})", self.key, self.library, self.implementation)
    }
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

impl std::error::Error for CallError {}

impl CallError {
    /// The plugin's error with the call's origin in its message (for answers to plugins).
    pub(crate) fn into_plugin_error(self) -> PluginError {
        PluginError { message: self.to_string().into(), ..self.error }
    }
}

/// What a call is for: how it is counted and how loudly its failure is logged.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A call the host makes for a request or a plugin: counted in `calls` (and `errors`);
    /// server-side failures (panics, timeouts, internal, unavailable) logged at ERROR.
    Call,
    /// Building an instance, reading its routes, a health probe or a shutdown: counted in
    /// `probes`; failures at DEBUG (`/ready` and the
    /// shutdown report them).
    Probe,
}

impl Meta {
    pub(crate) fn new(e: &ExtensionConfig, library_sha256: crate::loader::LibrarySum, api_minor: u32) -> Meta {
        Meta {
            entry: Self::entry_of(e),
            library_sha256,
            point: e.point,
            key: e.key.clone(),
            library: e.library.clone(),
            implementation: e.implementation.clone(),
            timeout: e.timeout,
            stats: Stats::default(),
            healthy: AtomicBool::new(true),
            runner: None,
            api_minor,
        }
    }

    /// What the instance was built from (entry, library file, implementation, config,
    /// timeout): a reload keeps the instance when it is the same.
    pub fn fingerprint(&self) -> String {
        format!("{}|{}", self.entry, self.library_sha256)
    }

    pub(crate) fn fingerprint_of(e: &ExtensionConfig, library_sha256: &str) -> String {
        format!("{}|{library_sha256}", Self::entry_of(e))
    }

    fn entry_of(e: &ExtensionConfig) -> String {
        // A bundled default and the same entry written out are the same instance.
        format!(
            "{}|{}|{}|{}|{}|{:?}",
            e.key.trim_end_matches(" (bundled default)"),
            e.library,
            e.implementation,
            e.config_json,
            e.timeout.as_millis(),
            e.process
        )
    }

    pub(crate) fn fail(&self, method: &'static str, error: PluginError) -> CallError {
        CallError {
            point: self.point,
            library: self.library.clone(),
            implementation: self.implementation.clone(),
            method,
            error,
        }
    }

    /// Awaits a plugin future with this instance's deadline, counting the outcome.
    /// A trace span for one call into the plugin, child of the caller's (`ctx.traceparent`);
    /// the plugin gets it as its parent. `None` when traces are not exported.
    pub(crate) fn traced(&self, ctx: &mut CallContext, method: &'static str) -> Option<crate::telemetry::SpanHandle> {
        // Under a trace that is not sampled, the call passes the parent's traceparent on.
        if !crate::telemetry::enabled() || !crate::telemetry::sampled(&ctx.traceparent) {
            return None;
        }
        let span = crate::telemetry::start(
            format!("{} {method}", self.point.key()),
            opentelemetry::trace::SpanKind::Internal,
            Some(ctx.traceparent.as_str()),
            vec![
                opentelemetry::KeyValue::new("oh.extension_point", self.point.key()),
                opentelemetry::KeyValue::new("oh.implementation", self.implementation.clone()),
                opentelemetry::KeyValue::new("oh.library", self.library.clone()),
            ],
        )?;
        ctx.traceparent = span.traceparent().into();
        Some(span)
    }

    pub(crate) async fn call<T>(&self, method: &'static str, fut: FfiFuture<PResult<T>>) -> Result<T, CallError> {
        self.call_with(method, fut, None, Kind::Call).await
    }

    /// [`Meta::call`] with another deadline than the instance's (shutdown has its own) and
    /// another log level for failures.
    pub(crate) async fn call_with<T>(
        &self,
        method: &'static str,
        fut: FfiFuture<PResult<T>>,
        deadline: Option<Duration>,
        kind: Kind,
    ) -> Result<T, CallError> {
        let start = Instant::now();
        let timeout = deadline.unwrap_or(self.timeout);
        let outcome = tokio::time::timeout(timeout, AssertUnwindSafe(fut).catch_unwind()).await;
        let result = match outcome {
            Ok(Ok(r)) => r.into_result(),
            Ok(Err(_)) => Err(PluginError::new(ErrorCode::PANICKED, "plugin future panicked while polled")),
            Err(_) => {
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(PluginError::new(
                    ErrorCode::DEADLINE_EXCEEDED,
                    format!("no answer within {} ms (timeout_ms of {})", timeout.as_millis(), self.key),
                ))
            }
        };
        self.count(method, start, result, kind)
    }

    /// Runs a sync plugin method under `catch_unwind`, counting the outcome.
    pub(crate) fn call_sync<T>(&self, method: &'static str, f: impl FnOnce() -> T) -> Result<T, CallError> {
        self.call_sync_as(method, f, Kind::Call)
    }

    /// [`Meta::call_sync`] counted as `kind` (building an instance and reading its routes are
    /// probes: the host's business, not a request's).
    pub(crate) fn call_sync_as<T>(
        &self,
        method: &'static str,
        f: impl FnOnce() -> T,
        kind: Kind,
    ) -> Result<T, CallError> {
        let start = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(f))
            .map_err(|_| PluginError::new(ErrorCode::PANICKED, "plugin panicked in a sync call"));
        self.count(method, start, result, kind)
    }

    fn count<T>(
        &self,
        method: &'static str,
        start: Instant,
        result: Result<T, PluginError>,
        kind: Kind,
    ) -> Result<T, CallError> {
        if kind == Kind::Probe {
            self.stats.probes.fetch_add(1, Ordering::Relaxed);
        } else {
            let took = start.elapsed();
            let outcome = match &result {
                Ok(_) => "ok",
                Err(e) if e.code == ErrorCode::DEADLINE_EXCEEDED => "timeout",
                Err(e) if e.code == ErrorCode::PANICKED => "panic",
                Err(_) => "error",
            };
            crate::metrics::global().observe(
                "oh_plugin_call_duration_seconds",
                "Time spent in a plugin call, by extension point, implementation, method and outcome.",
                crate::metrics::SECONDS,
                &[
                    ("extension_point", self.point.key()),
                    ("implementation", &self.implementation),
                    ("method", method),
                    ("outcome", outcome),
                ],
                took.as_secs_f64(),
            );
            let elapsed = took.as_micros() as u64;
            self.stats.calls.fetch_add(1, Ordering::Relaxed);
            self.stats.latency_us_total.fetch_add(elapsed, Ordering::Relaxed);
            self.stats.latency_us_max.fetch_max(elapsed, Ordering::Relaxed);
        }
        result.map_err(|error| {
            if kind == Kind::Call {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            if error.code == ErrorCode::PANICKED {
                self.stats.panics.fetch_add(1, Ordering::Relaxed);
                self.healthy.store(false, Ordering::Relaxed);
            }
            let err = self.fail(method, error);
            let server_side = matches!(
                err.error.code,
                ErrorCode::PANICKED | ErrorCode::INTERNAL | ErrorCode::DEADLINE_EXCEEDED | ErrorCode::UNAVAILABLE
            );
            if server_side && kind == Kind::Call {
                tracing::error!(error = %err, "plugin call failed");
            } else {
                tracing::debug!(error = %err, "plugin call returned an error");
            }
            err
        })
    }

    /// A document from the plugin, decoded; a malformed one is this call's error.
    pub(crate) fn decode<T: serde::de::DeserializeOwned>(
        &self,
        method: &'static str,
        json: &str,
    ) -> Result<T, CallError> {
        serde_json::from_str(json).map_err(|e| {
            self.fail(method, PluginError::internal(format!("the plugin answered with a malformed document: {e}")))
        })
    }

    pub(crate) fn decode_opt<T: serde::de::DeserializeOwned>(
        &self,
        method: &'static str,
        json: ROption<RString>,
    ) -> Result<Option<T>, CallError> {
        json.into_option().map(|j| self.decode(method, &j)).transpose()
    }
}

/// A document for the plugin. Our models always serialize.
pub(crate) fn encode<T: serde::Serialize>(value: &T) -> RString {
    serde_json::to_string(value).expect("models serialize").into()
}
