//! `/alive`, `/health`, `/ready` and the host's own `/internal/*` views.

use crate::{http::AppState, registry::Meta};
use axum::{
    extract::State,
    http::{header, StatusCode},
    response::IntoResponse,
    Json,
};
use serde_json::{json, Value};
use std::{fmt::Write as _, sync::atomic::Ordering};

pub(super) async fn alive() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub(super) async fn health() -> Json<&'static str> {
    Json("OK")
}

/// 200 `{"status": "ready"}` when every instance's `health` answers, else 503
/// `{"status": "unavailable"}`: what a load balancer needs, nothing about what is inside
/// (`/internal/ready` on the admin listener names the failing instances).
pub(super) async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let ok = state.app.registry().health().await.iter().all(|(_, r)| r.is_ok());
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "status": if ok { "ready" } else { "unavailable" } })))
}

/// 200 when every instance's `health` answers, else 503 naming the failing ones.
pub(super) async fn ready_detail(State(state): State<AppState>) -> impl IntoResponse {
    let registry = state.app.registry();
    let results = registry.health().await;
    let ok = results.iter().all(|(_, r)| r.is_ok());
    let plugins: Vec<Value> = results
        .iter()
        .map(|(m, r)| match r {
            Ok(detail) => {
                json!({ "extension": m.key, "implementation": m.implementation, "ok": true, "detail": detail })
            }
            Err(e) => json!({ "extension": m.key, "implementation": m.implementation, "ok": false, "error": e }),
        })
        .collect();
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "status": if ok { "ready" } else { "unavailable" }, "plugins": plugins })))
}

fn stats(m: &Meta) -> Value {
    let s = &m.stats;
    let calls = s.calls.load(Ordering::Relaxed);
    let total = s.latency_us_total.load(Ordering::Relaxed);
    json!({
        "calls": calls,
        "probes": s.probes.load(Ordering::Relaxed),
        "errors": s.errors.load(Ordering::Relaxed),
        "panics": s.panics.load(Ordering::Relaxed),
        "timeouts": s.timeouts.load(Ordering::Relaxed),
        "latency_us_mean": total.checked_div(calls).unwrap_or(0),
        "latency_us_max": s.latency_us_max.load(Ordering::Relaxed),
    })
}

/// What is loaded: libraries (file, hash, versions) and instances (health, counters).
pub(super) async fn plugins(State(state): State<AppState>) -> Json<Value> {
    let r = &state.app.registry();
    // A library's hash is computed when first asked: milliseconds per megabyte, off the
    // request workers.
    let sums: Vec<_> = r.libraries().iter().map(|l| l.sha256.clone()).collect();
    let _ = tokio::task::spawn_blocking(move || {
        for sum in &sums {
            sum.get();
        }
    })
    .await;
    let health = r.health().await;
    let libraries: Vec<Value> = r
        .libraries()
        .iter()
        .map(|l| {
            json!({
                "name": l.name, "file": l.path, "sha256": l.sha256.get(), "version": l.version,
                "api_version": l.api_version(), "rustc": l.api.rustc.as_str(),
                "implementations": l.implementations.iter().map(|i| json!({
                    "extension_point": i.point.key(), "name": i.name, "description": i.description,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let instances: Vec<Value> = health
        .iter()
        .map(|(m, h)| {
            json!({
                "extension": m.key, "extension_point": m.point.key(), "library": m.library,
                "implementation": m.implementation, "timeout_ms": m.timeout.as_millis() as u64,
                "healthy": h.is_ok(), "health": match h { Ok(d) => d.clone(), Err(e) => e.clone() },
                "stats": stats(m),
                "isolation": match &m.runner {
                    Some(r) => json!({ "process": true, "pid": r.pid(), "restarts": r.restarts() }),
                    None => json!({ "process": false }),
                },
            })
        })
        .collect();
    let reloads = match &state.reloader {
        Some(reloader) => json!(reloader.status().await),
        None => Value::Null,
    };
    Json(json!({
        "app_mode": r.app_mode().as_str(), "libraries": libraries, "instances": instances,
        "reloads": reloads, "libraries_resident": crate::loader::resident(),
    }))
}

/// `POST /internal/reload`: re-reads the profile and switches to it, or answers 422 with every
/// reason not to (the active plugins go on serving).
pub(super) async fn reload(State(state): State<AppState>) -> axum::response::Response {
    let Some(reloader) = &state.reloader else {
        let body = json!({ "error": "this server was not started from a profile file; nothing to reload" });
        return (axum::http::StatusCode::CONFLICT, Json(body)).into_response();
    };
    match reloader.reload(&state.app).await {
        Ok(changes) => Json(json!(changes)).into_response(),
        Err(problems) => {
            let body = json!({ "error": "reload refused; the active plugins go on serving", "problems": problems });
            (axum::http::StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
        }
    }
}

/// Prometheus text: per-instance counters and what plugins reported through `HostApi::metric`.
pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut out = String::new();
    type Family = (&'static str, &'static str, fn(&Meta) -> u64);
    let families: [Family; 5] = [
        ("oh_plugin_calls_total", "Calls into a plugin instance.", |m| m.stats.calls.load(Ordering::Relaxed)),
        ("oh_plugin_errors_total", "Calls that returned an error.", |m| m.stats.errors.load(Ordering::Relaxed)),
        ("oh_plugin_panics_total", "Calls that panicked.", |m| m.stats.panics.load(Ordering::Relaxed)),
        ("oh_plugin_timeouts_total", "Calls that hit their deadline.", |m| m.stats.timeouts.load(Ordering::Relaxed)),
        ("oh_plugin_latency_microseconds_total", "Time spent in calls.", |m| {
            m.stats.latency_us_total.load(Ordering::Relaxed)
        }),
    ];
    if let Some(reloader) = &state.reloader {
        let status = reloader.status().await;
        let _ = writeln!(
            out,
            "# HELP oh_plugin_generation The active generation of plugins (1 at start, one more per reload).\n# TYPE oh_plugin_generation gauge\noh_plugin_generation {}\n\
             # HELP oh_reloads_total Reloads of the profile switched in.\n# TYPE oh_reloads_total counter\noh_reloads_total {}\n\
             # HELP oh_reloads_refused_total Reloads refused (the active plugins went on serving).\n# TYPE oh_reloads_refused_total counter\noh_reloads_refused_total {}",
            status.generation, status.reloads, status.refused
        );
    }
    for (name, help, get) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for m in state.app.registry().metas() {
            let _ = writeln!(
                out,
                "{name}{{extension_point=\"{}\",library=\"{}\",implementation=\"{}\"}} {}",
                m.point.key(),
                m.library,
                m.implementation,
                get(m)
            );
        }
    }
    crate::metrics::global().render(&mut out);
    crate::metrics::render_process(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// `GET /internal/cluster`: the conversation manager's view of the cluster (nodes, leases,
/// relay lag); 404 with a reason when the manager is not a clustered one.
pub(super) async fn cluster(State(state): State<AppState>) -> impl IntoResponse {
    let ctx = plugin_api::CallContext::new("internal-cluster", None, 0);
    match state.app.registry().cluster_report(ctx).await {
        Some(Ok(report)) => (StatusCode::OK, Json(report)),
        Some(Err(e)) if e.error.code == plugin_api::ErrorCode::UNIMPLEMENTED => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "the conversation manager is not clustered (it has no cluster to describe)" })),
        ),
        Some(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": e.to_string() }))),
        None => (StatusCode::NOT_FOUND, Json(json!({ "error": "no conversation_manager is configured" }))),
    }
}
