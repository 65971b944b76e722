//! OpenTelemetry traces, exported with OTLP over HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set (`OTEL_SERVICE_NAME` names the service; default `oh-host`). Off otherwise: every
//! function here is then one atomic load and returns nothing.
//!
//! Spans: one per HTTP request (server; its parent from an incoming `traceparent`), one per
//! socket.io action, one per plugin call (its W3C `traceparent` handed to the plugin in the
//! `CallContext`, so the plugin's own spans are its children), and the spans plugins report
//! through `HostApi::span` (the LLM call), recreated here with their own ids and times.
//!
//! Sampling is the SDK's, from the standard `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG`
//! (default: every trace). Below a request that was not sampled nothing is built: plugin
//! calls pass its `traceparent` on (flags `00`) and make no span of their own.

use opentelemetry::{
    trace::{
        Span as _, SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
        TraceState, Tracer as _, TracerProvider as _,
    },
    Context, KeyValue,
};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use serde_json::Value;
use std::{
    sync::OnceLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

/// Starts the exporter when `endpoint` is set (the OTLP/HTTP base URL; traces go to
/// `{endpoint}/v1/traces`), encoded as `protocol` says (`http/protobuf`, the default, or
/// `http/json`).
pub fn init(endpoint: Option<&str>, service: &str, protocol: Option<&str>) -> Result<(), String> {
    let Some(endpoint) = endpoint.map(str::trim).filter(|e| !e.is_empty()) else { return Ok(()) };
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let protocol = match protocol.map(str::trim).filter(|p| !p.is_empty()) {
        None | Some("http/protobuf") => opentelemetry_otlp::Protocol::HttpBinary,
        Some("http/json") => opentelemetry_otlp::Protocol::HttpJson,
        Some(other) => {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL `{other}` is not supported: use `http/protobuf` or `http/json`"
            ))
        }
    };
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot build the OTLP client: {e}"))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(protocol)
        .with_endpoint(url.clone())
        .build()
        .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT `{endpoint}`: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service.to_owned()).build())
        .build();
    let tracer = provider.tracer("oh-host");
    let _ = TELEMETRY.set(Telemetry { provider, tracer });
    tracing::info!(endpoint = %url, service, "exporting traces (OpenTelemetry, OTLP/HTTP)");
    Ok(())
}

pub fn enabled() -> bool {
    TELEMETRY.get().is_some()
}

/// Whether a W3C `traceparent` says its trace is sampled (flags bit 0).
pub fn sampled(traceparent: &str) -> bool {
    traceparent.rsplit('-').next().and_then(|f| u8::from_str_radix(f, 16).ok()).is_some_and(|f| f & 1 == 1)
}

/// Sends what is buffered (at shutdown).
pub fn shutdown() {
    if let Some(t) = TELEMETRY.get() {
        let _ = t.provider.force_flush();
        let _ = t.provider.shutdown();
    }
}

/// A span in progress; it ends when dropped.
pub struct SpanHandle {
    span: opentelemetry_sdk::trace::Span,
    traceparent: String,
}

impl SpanHandle {
    /// Its W3C `traceparent`, for a child in another process or library.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// Whether the span is sampled (else attributes and names are dropped anyway).
    pub fn is_recording(&self) -> bool {
        self.span.is_recording()
    }

    pub fn rename(&mut self, name: String) {
        self.span.update_name(name);
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        self.span.set_attribute(KeyValue::new(key, value));
    }

    pub fn error(&mut self, message: &str) {
        self.span.set_status(Status::error(message.to_owned()));
    }
}

impl Drop for SpanHandle {
    fn drop(&mut self) {
        self.span.end();
    }
}

/// `00-{trace}-{span}-{flags}` as a remote parent.
fn parent_context(traceparent: Option<&str>) -> Context {
    let Some(tp) = traceparent.filter(|t| !t.is_empty()) else { return Context::new() };
    let parts: Vec<&str> = tp.split('-').collect();
    if parts.len() != 4 || parts[0] != "00" {
        return Context::new();
    }
    let (Ok(trace), Ok(span), Ok(flags)) =
        (TraceId::from_hex(parts[1]), SpanId::from_hex(parts[2]), u8::from_str_radix(parts[3], 16))
    else {
        return Context::new();
    };
    if trace == TraceId::INVALID || span == SpanId::INVALID {
        return Context::new();
    }
    let sc = SpanContext::new(trace, span, TraceFlags::new(flags), true, TraceState::default());
    Context::new().with_remote_span_context(sc)
}

/// Starts a span (`None` when tracing is off), child of `parent` when given.
pub fn start(
    name: impl Into<std::borrow::Cow<'static, str>>,
    kind: SpanKind,
    parent: Option<&str>,
    attributes: Vec<KeyValue>,
) -> Option<SpanHandle> {
    let t = TELEMETRY.get()?;
    let cx = parent_context(parent);
    let span =
        t.tracer.span_builder(name).with_kind(kind).with_attributes(attributes).start_with_context(&t.tracer, &cx);
    let sc = span.span_context();
    let traceparent = format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8());
    Some(SpanHandle { span, traceparent })
}

fn time(nanos: &Value) -> Option<SystemTime> {
    nanos.as_u64().map(|n| UNIX_EPOCH + Duration::from_nanos(n))
}

/// A finished span a plugin reported (`HostApi::span`): `{trace_id, span_id, parent_span_id,
/// name, kind, start_unix_nanos, end_unix_nanos, attributes, error}`.
pub fn record(report: &str) {
    let Some(t) = TELEMETRY.get() else { return };
    let Ok(v) = serde_json::from_str::<Value>(report) else { return };
    let (Some(trace), Some(span_id)) = (v["trace_id"].as_str(), v["span_id"].as_str()) else { return };
    let (Ok(trace_id), Ok(span_id)) = (TraceId::from_hex(trace), SpanId::from_hex(span_id)) else { return };
    let parent = v["parent_span_id"].as_str().map(|p| format!("00-{trace}-{p}-01"));
    let cx = parent_context(parent.as_deref());
    let kind = match v["kind"].as_str() {
        Some("client") => SpanKind::Client,
        Some("server") => SpanKind::Server,
        _ => SpanKind::Internal,
    };
    let attributes: Vec<KeyValue> = v["attributes"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, val)| match val {
            Value::Number(n) if n.is_i64() => KeyValue::new(k.clone(), n.as_i64().unwrap_or(0)),
            Value::Number(n) => KeyValue::new(k.clone(), n.as_f64().unwrap_or(0.0)),
            Value::Bool(b) => KeyValue::new(k.clone(), *b),
            Value::String(s) => KeyValue::new(k.clone(), s.clone()),
            other => KeyValue::new(k.clone(), other.to_string()),
        })
        .collect();
    let mut builder = SpanBuilder::from_name(v["name"].as_str().unwrap_or("plugin span").to_owned())
        .with_kind(kind)
        .with_attributes(attributes)
        .with_span_id(span_id)
        .with_trace_id(trace_id);
    if let Some(start) = time(&v["start_unix_nanos"]) {
        builder = builder.with_start_time(start);
    }
    let mut span = builder.start_with_context(&t.tracer, &cx);
    if let Some(error) = v["error"].as_str() {
        span.set_status(Status::error(error.to_owned()));
    }
    match time(&v["end_unix_nanos"]) {
        Some(end) => span.end_with_timestamp(end),
        None => span.end(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_sampled_flag_is_read_from_the_traceparent() {
        let tp = |flags: &str| format!("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-{flags}");
        assert!(super::sampled(&tp("01")));
        assert!(super::sampled(&tp("03")));
        assert!(!super::sampled(&tp("00")));
        assert!(!super::sampled(""));
        assert!(!super::sampled(&tp("zz")));
    }
}
