//! Spans a plugin reports to the host's trace exporter: children of the `traceparent` of the
//! `CallContext` they run under, so they join the caller's trace. Inert (no ids, nothing
//! reported) when the host does not export traces or the context carries no trace; a trace
//! that was not sampled (flags `00`) is passed on as it came, with no span of its own.

use serde_json::{json, Map, Value};
use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

/// A span in progress; reported when it ends (or is dropped).
pub struct Span {
    live: Option<Live>,
    /// The caller's `traceparent`, when its trace is not sampled: what requests carry on.
    passthrough: Option<String>,
}

struct Live {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    kind: &'static str,
    start: u128,
    attributes: Map<String, Value>,
    error: Option<String>,
}

fn nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// 16 hex digits, not zero, unique within the process.
fn span_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(nanos());
    format!("{:016x}", h.finish().max(1))
}

impl Span {
    /// Starts a span under `traceparent` (`00-{trace}-{parent}-{flags}`). `kind`: `"client"`
    /// for a call out (an LLM), else `"internal"`.
    pub fn start(traceparent: &str, name: &str, kind: &'static str) -> Span {
        let parts: Vec<&str> = traceparent.split('-').collect();
        let valid = parts.len() == 4
            && parts[1].len() == 32
            && parts[2].len() == 16
            && parts[1].chars().chain(parts[2].chars()).all(|c| c.is_ascii_hexdigit());
        if !valid || !crate::logging::tracing_enabled() {
            return Span { live: None, passthrough: None };
        }
        let sampled = u8::from_str_radix(parts[3], 16).is_ok_and(|flags| flags & 1 == 1);
        if !sampled {
            return Span { live: None, passthrough: Some(traceparent.to_owned()) };
        }
        Span {
            passthrough: None,
            live: Some(Live {
                trace_id: parts[1].to_owned(),
                span_id: span_id(),
                parent_span_id: parts[2].to_owned(),
                name: name.to_owned(),
                kind,
                start: nanos(),
                attributes: Map::new(),
                error: None,
            }),
        }
    }

    /// This span as a `traceparent`, for the request it makes (W3C trace context).
    pub fn traceparent(&self) -> Option<String> {
        match &self.live {
            Some(l) => Some(format!("00-{}-{}-01", l.trace_id, l.span_id)),
            None => self.passthrough.clone(),
        }
    }

    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        if let Some(l) = self.live.as_mut() {
            l.attributes.insert(key.to_owned(), value.into());
        }
    }

    pub fn error(&mut self, message: &str) {
        if let Some(l) = self.live.as_mut() {
            l.error = Some(message.to_owned());
        }
    }

    /// Ends the span now.
    pub fn end(mut self) {
        self.report();
    }

    fn report(&mut self) {
        if let Some(l) = self.live.take() {
            let span = json!({
                "trace_id": l.trace_id, "span_id": l.span_id, "parent_span_id": l.parent_span_id,
                "name": l.name, "kind": l.kind, "start_unix_nanos": l.start as u64, "end_unix_nanos": nanos() as u64,
                "attributes": l.attributes, "error": l.error,
            });
            crate::logging::report_span(&span.to_string());
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.report();
    }
}
