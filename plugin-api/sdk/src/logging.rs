//! Forwards the library's `tracing` and `log` events, and its panics, to the host.
//!
//! The library has its own copies of `tracing-core`, `log` and std: without this its events
//! vanish (a no-op global dispatcher) and its panics print without the host's formatting.

use plugin_api::{
    abi_stable::std_types::{RSlice, RStr, Tuple2},
    HostApi_Ref, Label, LogLevel,
};
use std::{
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    },
};
use tracing_core::{
    field::{Field, Visit},
    span, Event, Interest, Level, Metadata, Subscriber,
};

struct Forwarder {
    host: HostApi_Ref,
    library: &'static str,
    next_span: AtomicU64,
}

static FORWARDER: OnceLock<Forwarder> = OnceLock::new();

pub(crate) fn install(host: HostApi_Ref, library: &'static str) {
    if FORWARDER.set(Forwarder { host, library, next_span: AtomicU64::new(1) }).is_err() {
        return; // already installed: init called twice
    }
    let _ = tracing::subscriber::set_global_default(Dispatch);
    let _ = log::set_logger(&LogForwarder).map(|()| log::set_max_level(log::LevelFilter::Trace));
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        let message = crate::runtime::panic_message(info.payload());
        forward(LogLevel::Error, "panic", &format!("plugin panicked at {location}: {message}"), "");
    }));
}

fn forward(level: LogLevel, target: &str, message: &str, fields: &str) {
    if let Some(f) = FORWARDER.get() {
        (f.host.log())(
            level,
            RStr::from_str(f.library),
            RStr::from_str(target),
            RStr::from_str(message),
            RStr::from_str(fields),
        );
    }
}

/// A labels object (`{"name": "value"}`; a value that is not a string is written as JSON)
/// as the host's label list.
fn with_labels<T>(labels: &serde_json::Value, f: impl FnOnce(RSlice<'_, Label<'_>>) -> T) -> T {
    let owned: Vec<(String, String)> = labels
        .as_object()
        .map(|m| {
            m.iter().map(|(k, v)| (k.clone(), v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()))).collect()
        })
        .unwrap_or_default();
    let list: Vec<Label<'_>> = owned.iter().map(|(k, v)| Tuple2(RStr::from_str(k), RStr::from_str(v))).collect();
    f(RSlice::from_slice(&list))
}

/// Adds `value` to the host's counter `name` with `labels` (a JSON object of strings); it
/// shows in `/internal/metrics`. A no-op before `init`.
pub fn metric(name: &str, value: f64, labels: &serde_json::Value) {
    if let Some(f) = FORWARDER.get() {
        with_labels(labels, |labels| (f.host.metric())(RStr::from_str(name), value, labels));
    }
}

/// Sets the host's gauge `name` (adds to it when `delta`). A no-op before `init`.
pub fn gauge(name: &str, value: f64, delta: bool, labels: &serde_json::Value) {
    if let Some(f) = FORWARDER.get() {
        with_labels(labels, |labels| (f.host.gauge())(RStr::from_str(name), value, delta, labels));
    }
}

/// Records `value` in the host's histogram `name` with these bucket upper bounds. A no-op
/// before `init`.
pub fn observe(name: &str, value: f64, buckets: &[f64], labels: &serde_json::Value) {
    if let Some(f) = FORWARDER.get() {
        with_labels(labels, |labels| {
            (f.host.observe())(RStr::from_str(name), value, RSlice::from_slice(buckets), labels)
        });
    }
}

/// Whether the host runs this library to check it only (`oh-host check`): write nothing.
pub fn read_only() -> bool {
    FORWARDER.get().is_some_and(|f| (f.host.read_only())())
}

/// Whether the host exports traces (spans are made only then).
pub(crate) fn tracing_enabled() -> bool {
    FORWARDER.get().is_some_and(|f| (f.host.tracing_enabled())())
}

/// Hands a finished span (JSON, see `plugin_api::HostApi::span`) to the host.
pub(crate) fn report_span(span_json: &str) {
    if let Some(f) = FORWARDER.get() {
        (f.host.span())(RStr::from_str(span_json));
    }
}

fn enabled(level: LogLevel, target: &str) -> bool {
    FORWARDER.get().is_some_and(|f| (f.host.log_enabled())(level, RStr::from_str(target)))
}

fn level_of(level: &Level) -> LogLevel {
    match *level {
        Level::ERROR => LogLevel::Error,
        Level::WARN => LogLevel::Warn,
        Level::INFO => LogLevel::Info,
        Level::DEBUG => LogLevel::Debug,
        Level::TRACE => LogLevel::Trace,
    }
}

/// The library's global `tracing` subscriber.
struct Dispatch;

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let sep = if self.rest.is_empty() { "" } else { " " };
            let _ = write!(self.rest, "{sep}{}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let sep = if self.rest.is_empty() { "" } else { " " };
            let _ = write!(self.rest, "{sep}{}={value}", field.name());
        }
    }
}

impl Subscriber for Dispatch {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // Ask every time: the host's filter may change, and a cached answer would not.
        Interest::sometimes()
    }
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        enabled(level_of(metadata.level()), metadata.target())
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        let f = FORWARDER.get().expect("forwarder installed with the subscriber");
        span::Id::from_u64(f.next_span.fetch_add(1, Ordering::Relaxed))
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        forward(level_of(meta.level()), meta.target(), &fields.message, &fields.rest);
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

/// The library's `log` logger (many dependencies still use `log`).
struct LogForwarder;

fn log_level(level: log::Level) -> LogLevel {
    match level {
        log::Level::Error => LogLevel::Error,
        log::Level::Warn => LogLevel::Warn,
        log::Level::Info => LogLevel::Info,
        log::Level::Debug => LogLevel::Debug,
        log::Level::Trace => LogLevel::Trace,
    }
}

impl log::Log for LogForwarder {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        enabled(log_level(metadata.level()), metadata.target())
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            forward(log_level(record.level()), record.target(), &record.args().to_string(), "");
        }
    }
    fn flush(&self) {}
}
