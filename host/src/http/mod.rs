//! The HTTP surface: routers (public and operators'), shared state, middleware.
//!
//! Middleware order, outermost first: CORS → origin guard (Host, Origin) → header size →
//! cache control → request id → body deadline → body limit → (socket.io) → auth gate → route.
//! Handlers parse, call the application layer (`app::App`) and render its answer.

mod auth;
pub mod error;
pub mod extract;
mod guard;
pub mod plugin_routes;
mod routes;
pub mod socket;

use crate::{app::App, config::ServerConfig};
use axum::{
    extract::{DefaultBodyLimit, Request},
    http::{header, HeaderName, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::Response,
    Router,
};
use error::ApiError;
use plugin_api::{AuthType, CallContext};
use std::{net::SocketAddr, sync::Arc};
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};
use tracing::Instrument;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub app: Arc<App>,
    pub server: Arc<ServerConfig>,
    origins: Arc<guard::Origins>,
    /// Reloads of the profile (`POST /internal/reload`); `None` for a server driven without
    /// a profile file.
    pub reloader: Option<Arc<crate::reload::Reloader>>,
}

impl AppState {
    /// `public` is the address the public listener is bound to (its port is what a browser's
    /// `Origin` and `Host` name).
    pub fn new(app: Arc<App>, public: SocketAddr) -> Self {
        let origins = Arc::new(guard::Origins::new(app.server(), public));
        Self { server: app.server_arc(), app, origins, reloader: None }
    }

    /// The same state, with reloads.
    pub fn with_reloader(mut self, reloader: Arc<crate::reload::Reloader>) -> Self {
        self.reloader = Some(reloader);
        self
    }
}

/// The authenticated caller, set by the auth gate.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user_id: Option<String>,
    pub email: Option<String>,
    pub auth_type: AuthType,
}

impl Principal {
    /// Before authentication: nobody.
    pub fn anonymous() -> Principal {
        Principal { user_id: None, email: None, auth_type: AuthType::NONE }
    }
}

/// The request id, set by the request-id middleware.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// Builds the context of a plugin call for this request.
pub fn call_context(principal: &Principal, request_id: &RequestId, server: &ServerConfig) -> CallContext {
    let deadline = chrono::Utc::now().timestamp_millis() as u64 + server.call_timeout.as_millis() as u64;
    CallContext::new(&request_id.0, principal.user_id.as_deref(), deadline)
}

/// The operators' routes, for the admin listener: what is loaded, counters, details of health.
pub fn admin_router(state: AppState) -> Router {
    // Plugins' operators' routes (`/internal/...`), checked with the others before binding.
    let mounted = plugin_routes::collect_for(&state.app).unwrap_or_default();
    plugin_routes::mount_operators(&mounted, routes::admin())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), pin_generation))
        .with_state(state)
}

/// The public application.
pub fn router(state: AppState) -> Router {
    let max_body = state.server.max_body_bytes;
    let mounted = plugin_routes::collect_for(&state.app).unwrap_or_else(|problems| {
        // `oh-host` checks these before binding; an embedder calling `router` directly
        // gets the host's routes without the plugin's.
        tracing::error!(?problems, "plugin routes not mounted");
        Vec::new()
    });
    let mounted: Vec<_> = mounted.into_iter().filter(|m| !plugin_routes::is_operators(&m.path)).collect();
    let (public, api) = plugin_routes::mount(&mounted, routes::public(), routes::api());
    let api = api.layer(middleware::from_fn_with_state(state.clone(), auth::gate));
    let router = Router::new().merge(public).merge(api);
    // FRONTEND_DIRECTORY: the web client's files; unknown non-API paths get its index.html
    // (a single-page app routes them itself). API paths keep their JSON 404.
    let router = match &state.server.env.frontend_directory {
        Some(dir) => {
            let index = dir.join("index.html");
            let spa = tower_http::services::ServeDir::new(dir).fallback(tower_http::services::ServeFile::new(index));
            // A missing asset is a 404, never the app's HTML (which a browser or a CDN would
            // then keep for 30 days as the script it asked for).
            let assets = tower_http::services::ServeDir::new(dir.join("assets"));
            router
                .route("/api/{*rest}", axum::routing::any(not_found))
                .nest_service("/assets", assets)
                .fallback_service(spa)
        }
        None => router.fallback(not_found),
    };
    let cors = cors(state.origins.clone());
    router
        .method_not_allowed_fallback(method_not_allowed)
        .layer(socket::layer(state.clone()))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(state.clone(), guard::body_deadline))
        .layer(middleware::from_fn_with_state(state.clone(), pin_generation))
        .layer(middleware::from_fn(request_id))
        .layer(middleware::from_fn(cache_control))
        .layer(middleware::from_fn_with_state(state.clone(), guard::header_size))
        .layer(middleware::from_fn_with_state(state.clone(), guard::origin))
        .layer(cors)
        .with_state(state)
}

/// Every request runs on the generation of plugins active when it arrived (a reload switches
/// new requests only).
async fn pin_generation(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    state.app.pinned(next.run(request)).await
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this route")
}

/// CORS for the origins the guard allows (`PERMITTED_CORS_ORIGINS`, `WEB_HOST`, and in OSS
/// mode this server's own loopback origins).
fn cors(origins: Arc<guard::Origins>) -> CorsLayer {
    let allow = AllowOrigin::predicate(move |origin: &HeaderValue, _| {
        origin.to_str().is_ok_and(|origin| origins.allows(origin))
    });
    CorsLayer::new()
        .allow_origin(allow)
        .allow_credentials(true)
        .allow_methods(AllowMethods::mirror_request())
        .allow_headers(AllowHeaders::mirror_request())
}

/// No caching, except `/assets` (30 days, immutable), as OpenHands' `CacheControlMiddleware`.
async fn cache_control(req: Request, next: Next) -> Response {
    let asset = req.uri().path().starts_with("/assets/");
    let mut response = next.run(req).await;
    // Only an asset that was found is immutable (its name carries its hash); anything else,
    // the app's index.html above all, is never cached.
    let assets = asset && response.status().is_success();
    let value =
        if assets { "public, max-age=2592000, immutable" } else { "no-cache, no-store, must-revalidate, max-age=0" };
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(value));
    response
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's trace span as a W3C `traceparent` (when traces are exported).
#[derive(Clone, Debug)]
pub struct Traceparent(pub String);

/// Takes a sane `x-request-id` from the client or makes one; echoes it; opens the span.
async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= 64 && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::debug_span!("request", id = %id, method = %req.method(), path = %req.uri().path());
    let method = req.method().clone();
    // The route's template, not the path (ids would make a series per conversation), with
    // `:id` for `{id}`: some scrapers mishandle braces in label values.
    let route = match req.extensions().get::<axum::extract::MatchedPath>() {
        Some(m) => m.as_str().replace("{*", "*").replace('{', ":").replace('}', ""),
        None if req.uri().path().starts_with("/socket.io") => "/socket.io".to_owned(),
        None => "unmatched".to_owned(),
    };
    let started = std::time::Instant::now();
    // The request's trace span (when traces are exported): plugins' calls are its children.
    let mut trace = crate::telemetry::enabled()
        .then(|| {
            let incoming = req.headers().get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let mut t = crate::telemetry::start(
                "HTTP",
                opentelemetry::trace::SpanKind::Server,
                incoming.as_deref(),
                Vec::new(),
            )?;
            // Named and described only when sampled: most requests of a sampled deployment
            // are not, and pay for no text.
            if t.is_recording() {
                t.rename(format!("{} {route}", method.as_str()));
                t.set("http.request.method", method.as_str().to_owned());
                t.set("http.route", route.clone());
                t.set("url.path", req.uri().path().to_owned());
                t.set("oh.request_id", id.clone());
            }
            Some(t)
        })
        .flatten();
    if let Some(t) = &trace {
        req.extensions_mut().insert(Traceparent(t.traceparent().to_owned()));
    }
    let mut response = next.run(req).instrument(span.clone()).await;
    if let Some(t) = trace.as_mut() {
        t.set("http.response.status_code", i64::from(response.status().as_u16()));
        if response.status().is_server_error() {
            t.error(response.status().as_str());
        }
    }
    drop(trace);
    span.in_scope(|| tracing::debug!(status = response.status().as_u16(), "answered"));
    crate::metrics::global().observe(
        "oh_http_request_duration_seconds",
        "HTTP requests by method, route template and status.",
        crate::metrics::SECONDS,
        &[("method", method.as_str()), ("route", &route), ("status", response.status().as_str())],
        started.elapsed().as_secs_f64(),
    );
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    response
}

fn new_request_id() -> String {
    let mut bytes = [0u8; 12];
    let _ = getrandom::getrandom(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
