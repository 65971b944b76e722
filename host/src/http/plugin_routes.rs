//! Routes served by `routes` plugins: each instance declares its routes once (`routes()`);
//! the host mounts them, behind the auth gate when a route asks for it, reads the body within
//! the body limit, and forwards the request through `RouteHandler::handle`. A route under
//! `/internal/` is an operators' route: served on the admin listener only (never the public
//! one), without user authentication, like the host's own `/internal/*`.

use super::{call_context, error::ApiError, AppState, Principal, RequestId};
use crate::{
    app::App,
    registry::{DeclaredRoute, Registry},
};
use axum::{
    body::to_bytes,
    extract::{Request, State},
    http::{Method, StatusCode},
    response::{IntoResponse, Response},
    routing::{any, on, MethodFilter},
    Router,
};
use std::collections::HashSet;

/// One route a plugin asked for, validated.
#[derive(Clone, Debug)]
pub struct Mounted {
    pub instance: usize,
    pub method: Option<Method>,
    pub path: String,
    pub authenticated: bool,
    pub extension: String,
}

/// Paths the host serves itself; a plugin may not take them.
const HOST_PREFIXES: &[&str] = &[
    "/alive",
    "/health",
    "/ready",
    "/internal/ready",
    "/internal/plugins",
    "/internal/metrics",
    "/internal/cluster",
    "/socket.io",
    "/api/settings",
    "/api/secrets",
    "/api/conversations",
    "/api/options/",
    "/api/add-git-providers",
    "/api/unset-provider-tokens",
    "/api/reset-settings",
];

/// `collect` for the application's plugins.
pub(super) fn collect_for(app: &App) -> Result<Vec<Mounted>, Vec<String>> {
    collect(&app.registry())
}

/// Checks every plugin's declared routes: all problems at once, before binding.
pub fn collect(registry: &Registry) -> Result<Vec<Mounted>, Vec<String>> {
    collect_declared(registry.declared_routes().map(|(i, meta, spec)| (i, meta.origin(), spec)))
}

/// `collect` over declared routes: (instance, its origin for messages, the route).
pub fn collect_declared<'a>(
    declared: impl Iterator<Item = (usize, String, &'a DeclaredRoute)>,
) -> Result<Vec<Mounted>, Vec<String>> {
    let mut problems = Vec::new();
    let mut mounted = Vec::new();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let clashes = |seen: &HashSet<(String, String)>, method: &str, path: &str| {
        let path = path.to_owned();
        seen.contains(&(method.to_owned(), path.clone()))
            || seen.contains(&("*".to_owned(), path.clone()))
            || (method == "*" && seen.iter().any(|(_, p)| *p == path))
    };
    for (instance, origin, spec) in declared {
        let path = spec.path.clone();
        let method = spec.method.to_ascii_uppercase();
        if !path.starts_with('/') || path.contains("//") {
            problems.push(format!("{origin}: route path `{path}` must be absolute, like /api/keys"));
            continue;
        }
        if let Some(p) = HOST_PREFIXES.iter().find(|p| path == p.trim_end_matches('/') || path.starts_with(*p)) {
            problems.push(format!("{origin}: route `{path}` overlaps the host's own `{p}`"));
            continue;
        }
        if is_operators(&path) && spec.authenticated {
            problems.push(format!(
                "{origin}: route `{path}` is an operators' route (served on admin_bind, which has no user sign-in): declare it with authenticated = false"
            ));
            continue;
        }
        let method = if method == "*" {
            None
        } else {
            match Method::from_bytes(method.as_bytes()) {
                Ok(m) => Some(m),
                Err(_) => {
                    problems.push(format!("{origin}: `{method}` is not an HTTP method"));
                    continue;
                }
            }
        };
        let key = (method.as_ref().map_or("*".to_owned(), |m| m.to_string()), path.clone());
        if clashes(&seen, &key.0, &path) {
            problems.push(format!("{origin}: route {} {path} is declared twice", key.0));
            continue;
        }
        seen.insert(key);
        mounted.push(Mounted { instance, method, path, authenticated: spec.authenticated, extension: origin });
    }
    if problems.is_empty() {
        Ok(mounted)
    } else {
        Err(problems)
    }
}

/// Whether a plugin route is for operators (the admin listener).
pub fn is_operators(path: &str) -> bool {
    path.starts_with("/internal/")
}

fn filter(method: &Method) -> Option<MethodFilter> {
    MethodFilter::try_from(method.clone()).ok()
}

/// Adds the operators' routes (`/internal/...`) to the admin router.
pub fn mount_operators(mounted: &[Mounted], admin: Router<AppState>) -> Router<AppState> {
    let operators: Vec<Mounted> = mounted.iter().filter(|m| is_operators(&m.path)).cloned().collect();
    mount(&operators, admin, Router::new()).0
}

/// Adds the mounted routes to `public` and `authenticated` routers (operators' routes go to
/// the admin router instead: [`mount_operators`]).
pub fn mount(
    mounted: &[Mounted],
    mut public: Router<AppState>,
    mut authed: Router<AppState>,
) -> (Router<AppState>, Router<AppState>) {
    // Group by path: axum takes one `route` call per path.
    let mut paths: Vec<(&str, bool)> = mounted.iter().map(|m| (m.path.as_str(), m.authenticated)).collect();
    paths.sort();
    paths.dedup();
    for (path, auth) in paths {
        let mut method_router = None::<axum::routing::MethodRouter<AppState>>;
        for m in mounted.iter().filter(|m| m.path == path && m.authenticated == auth) {
            let instance = m.instance;
            let handler = move |state: State<AppState>, req: Request| forward(state, instance, req);
            let next = match m.method.as_ref().and_then(filter) {
                Some(f) => on(f, handler),
                None => any(handler),
            };
            method_router = Some(match method_router {
                Some(existing) => existing.merge(next),
                None => next,
            });
        }
        if let Some(mr) = method_router {
            if auth {
                authed = authed.route(path, mr);
            } else {
                public = public.route(path, mr);
            }
        }
    }
    (public, authed)
}

async fn forward(State(state): State<AppState>, instance: usize, req: Request) -> Response {
    let principal = req.extensions().get::<Principal>().cloned().unwrap_or_else(Principal::anonymous);
    let request_id = req.extensions().get::<RequestId>().cloned().unwrap_or_else(|| RequestId(String::new()));
    let (parts, body) = req.into_parts();
    let body = match to_bytes(body, state.server.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => return ApiError::error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response(),
    };
    let ctx = call_context(&principal, &request_id, &state.server);
    match state.app.registry().handle_route(instance, ctx, &parts.method, &parts.uri, &parts.headers, body).await {
        Ok(response) => response,
        Err(e) => ApiError::from(e).into_response(),
    }
}
