//! The HTTP surface: router, shared state, middleware (DESIGN §6).
//!
//! Middleware order, outermost first: CORS → cache control → request id → body limit →
//! auth gate → route.

pub mod error;
pub mod extract;
pub mod plugin_routes;
mod routes;
pub mod socket;

use crate::{config::ServerConfig, env, registry::Registry};
use abi_stable::std_types::{RString, Tuple2};
use axum::{
    extract::{DefaultBodyLimit, Request, State},
    http::{header, HeaderName, HeaderValue, Method, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    Router,
};
use error::ApiError;
use plugin_api::{AuthRequest, AuthType, CallContext};
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};
use tracing::Instrument;

type UserLock = Arc<tokio::sync::Mutex<()>>;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub server: Arc<ServerConfig>,
    /// Serialises read-modify-write of one user's secrets in this process.
    locks: Arc<Mutex<HashMap<Option<String>, UserLock>>>,
}

impl AppState {
    pub fn new(registry: Arc<Registry>, server: ServerConfig) -> Self {
        Self { registry, server: Arc::new(server), locks: Arc::default() }
    }

    /// The per-user lock for read-modify-write of that user's documents.
    pub fn user_lock(&self, user: &Option<String>) -> UserLock {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(user.clone()).or_default().clone()
    }
}

/// The authenticated caller, set by the auth gate.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user_id: Option<String>,
    pub email: Option<String>,
    pub auth_type: AuthType,
}

/// The request id, set by the request-id middleware.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// Builds the context of a plugin call for this request.
pub fn call_context(principal: &Principal, request_id: &RequestId, server: &ServerConfig) -> CallContext {
    let deadline = chrono::Utc::now().timestamp_millis() as u64 + server.call_timeout.as_millis() as u64;
    CallContext {
        request_id: request_id.0.as_str().into(),
        traceparent: RString::new(),
        user_id: principal.user_id.as_deref().map(RString::from).into(),
        deadline_unix_ms: deadline,
    }
}

/// The whole application.
pub fn router(state: AppState) -> Router {
    let max_body = state.server.max_body_bytes;
    let mounted = plugin_routes::collect(&state.registry).unwrap_or_else(|problems| {
        // `oh-host` checks these before binding; an embedder calling `router` directly
        // gets the host's routes without the plugin's.
        tracing::error!(?problems, "plugin routes not mounted");
        Vec::new()
    });
    let (public, api) = plugin_routes::mount(&mounted, routes::public(), routes::api());
    let api = api.layer(middleware::from_fn_with_state(state.clone(), auth_gate));
    let router = Router::new().merge(public).merge(api);
    // FRONTEND_DIRECTORY: the web client's files; unknown non-API paths get its index.html
    // (a single-page app routes them itself). API paths keep their JSON 404.
    let router = match env::get(env::FRONTEND_DIRECTORY) {
        Some(dir) => {
            let index = std::path::Path::new(&dir).join("index.html");
            let spa = tower_http::services::ServeDir::new(&dir).fallback(tower_http::services::ServeFile::new(index));
            router.route("/api/{*rest}", axum::routing::any(not_found)).fallback_service(spa)
        }
        None => router.fallback(not_found),
    };
    router
        .method_not_allowed_fallback(method_not_allowed)
        .layer(socket::layer(state.clone()))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(request_id))
        .layer(middleware::from_fn(cache_control))
        .layer(cors())
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this route")
}

/// `PERMITTED_CORS_ORIGINS` (comma-separated), else any localhost / 127.0.0.1 origin, as
/// OpenHands' `LocalhostCORSMiddleware`.
fn cors() -> CorsLayer {
    let permitted: Option<Vec<String>> = env::get(env::PERMITTED_CORS_ORIGINS)
        .map(|v| v.split(',').map(|s| s.trim().trim_end_matches('/').to_owned()).filter(|s| !s.is_empty()).collect());
    let allow = AllowOrigin::predicate(move |origin: &HeaderValue, _| {
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        match &permitted {
            Some(list) => list.iter().any(|o| o == origin),
            None => is_localhost_origin(origin),
        }
    });
    CorsLayer::new()
        .allow_origin(allow)
        .allow_credentials(true)
        .allow_methods(AllowMethods::mirror_request())
        .allow_headers(AllowHeaders::mirror_request())
}

fn is_localhost_origin(origin: &str) -> bool {
    let Some(rest) = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) else {
        return false;
    };
    let host = rest.split(':').next().unwrap_or("");
    host == "localhost" || host == "127.0.0.1" || rest.starts_with("[::1]")
}

/// No caching, except `/assets` (30 days, immutable), as OpenHands' `CacheControlMiddleware`.
async fn cache_control(req: Request, next: Next) -> Response {
    let assets = req.uri().path().starts_with("/assets");
    let mut response = next.run(req).await;
    let value =
        if assets { "public, max-age=2592000, immutable" } else { "no-cache, no-store, must-revalidate, max-age=0" };
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(value));
    response
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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
    let mut response = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| tracing::debug!(status = response.status().as_u16(), "answered"));
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

/// Calls `user_auth` and maps its error kinds to 401/403/429; adds the headers it asks for
/// (a refreshed cookie) to the response.
async fn auth_gate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if req.method() == Method::OPTIONS {
        return next.run(req).await;
    }
    let request_id = req.extensions().get::<RequestId>().cloned().unwrap_or_else(|| RequestId(new_request_id()));
    let remote =
        req.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0.to_string()).unwrap_or_default();
    let auth_request = AuthRequest {
        method: req.method().as_str().into(),
        path: req.uri().path().into(),
        query: req.uri().query().unwrap_or("").into(),
        headers: req
            .headers()
            .iter()
            .filter_map(|(k, v)| v.to_str().ok().map(|v| Tuple2(RString::from(k.as_str()), RString::from(v))))
            .collect(),
        remote_addr: remote.into(),
    };
    let anonymous = Principal { user_id: None, email: None, auth_type: AuthType::NONE };
    let ctx = call_context(&anonymous, &request_id, &state.server);
    let auth = &state.registry.auth;
    match auth.meta.call("authenticate", auth.obj.authenticate(ctx, auth_request)).await {
        Ok(outcome) => {
            req.extensions_mut().insert(Principal {
                user_id: outcome.user_id.into_option().map(RString::into_string),
                email: outcome.email.into_option().map(RString::into_string),
                auth_type: outcome.auth_type,
            });
            let mut response = next.run(req).await;
            for Tuple2(k, v) in outcome.response_headers {
                if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v.as_str())) {
                    response.headers_mut().append(k, v);
                }
            }
            response
        }
        Err(err) => ApiError::from(err).into_response(),
    }
}
