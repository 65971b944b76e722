//! Requests the server refuses before any route sees them:
//! - a state-changing request (not GET, HEAD or OPTIONS) whose `Origin` is not allowed (403):
//!   a page on another site must not make the browser act for its user (cross-site request
//!   forgery), e.g. point the user's LLM key at the attacker's server; every socket.io
//!   request counts as one, GETs included (a WebSocket handshake is a GET, and the socket
//!   both reads a conversation and sends messages as the user: cross-site WebSocket
//!   hijacking);
//! - when bound to loopback, a `Host` that is not this server's (403): a page on another site
//!   whose name it re-pointed at 127.0.0.1 (DNS rebinding) must not read the API;
//! - request heads over `[server] max_header_bytes` (431, with a JSON body);
//! - a body still arriving `[server] body_read_timeout_ms` after the request began (408,
//!   and the connection is closed): a client that sends its headers and then stalls would
//!   otherwise hold a connection, and whatever a handler reserved, for ever.
//!
//! Allowed origins: `PERMITTED_CORS_ORIGINS`, `WEB_HOST`, and in OSS mode this server's own
//! loopback origins (`http://localhost:<port>`, `http://127.0.0.1:<port>`, `http://[::1]:<port>`).
//! CORS allows the same ones.

use super::{error::ApiError, AppState};
use crate::config::{AppMode, ServerConfig};
use axum::{
    extract::{Request, State},
    http::{header, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use std::net::SocketAddr;

/// Which origins and hosts the server answers to.
pub(super) struct Origins {
    /// Exact origins (`scheme://host[:port]`), from the environment.
    listed: Vec<String>,
    /// This server's loopback origins are allowed (OSS mode).
    loopback: bool,
    /// The public listener's port.
    port: u16,
    /// Bound to a loopback address: `Host` must name this server.
    check_host: bool,
}

fn loopback_host(host: &str) -> bool {
    host == "localhost" || host == "127.0.0.1" || host == "[::1]"
}

/// `host[:port]` split; `None` for text that is not one.
fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.contains(']') => (h, Some(p.parse().ok()?)),
        _ => (authority, None),
    };
    (!host.is_empty()).then_some((host, port))
}

impl Origins {
    pub(super) fn new(server: &ServerConfig, public: SocketAddr) -> Origins {
        let mut listed: Vec<String> = server.env.permitted_cors_origins.clone().unwrap_or_default();
        // The document's default: `https://{WEB_HOST}` (and the sign-in host's origin).
        listed.extend(server.env.web_host.clone());
        listed.extend(server.env.auth_web_host.clone());
        Origins {
            listed,
            loopback: server.app_mode == AppMode::Oss,
            port: public.port(),
            check_host: public.ip().is_loopback(),
        }
    }

    /// Whether a browser `Origin` may call the API.
    pub(super) fn allows(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/');
        if self.listed.iter().any(|o| o == origin) {
            return true;
        }
        let Some(authority) = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) else {
            return false;
        };
        self.loopback && self.is_this_server(authority)
    }

    /// `host:port` names this server on loopback.
    fn is_this_server(&self, authority: &str) -> bool {
        let default_port = if self.port == 80 { None } else { Some(self.port) };
        split_authority(authority)
            .is_some_and(|(host, port)| loopback_host(host) && (port == Some(self.port) || port == default_port))
    }

    /// Whether a `Host` header names this server (only checked when bound to loopback).
    fn allows_host(&self, host: &str) -> bool {
        if !self.check_host || self.is_this_server(host) {
            return true;
        }
        self.listed.iter().any(|o| {
            o.strip_prefix("http://").or_else(|| o.strip_prefix("https://")).is_some_and(|authority| authority == host)
        })
    }
}

fn forbidden(message: String) -> Response {
    ApiError::error(StatusCode::FORBIDDEN, message).into_response()
}

pub(super) async fn origin(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let origins = &state.origins;
    let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !origins.allows_host(host) {
        return forbidden(format!(
            "Host `{host}` does not name this server; reach it as http://127.0.0.1:{}, or list your origin in PERMITTED_CORS_ORIGINS",
            origins.port
        ));
    }
    let changes_state = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        || (req.uri().path().starts_with("/socket.io") && *req.method() != Method::OPTIONS);
    if changes_state {
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("(not text)");
            if !origins.allows(origin) {
                return forbidden(format!(
                    "cross-site request refused: origin `{origin}` may not change anything here (allowed: PERMITTED_CORS_ORIGINS, WEB_HOST)"
                ));
            }
        }
    }
    next.run(req).await
}

pub(super) async fn header_size(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = state.server.max_header_bytes;
    let size: usize =
        req.uri().to_string().len() + req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum::<usize>();
    if size > limit {
        return ApiError::error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("request headers too large: {size} bytes, at most {limit}"),
        )
        .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(listed: &[&str], loopback: bool, check_host: bool) -> Origins {
        Origins { listed: listed.iter().map(|s| s.to_string()).collect(), loopback, port: 3000, check_host }
    }

    #[test]
    fn only_listed_origins_and_this_servers_loopback_ones_are_allowed() {
        let oss = origins(&["https://app.example.com"], true, true);
        for ok in ["http://localhost:3000", "http://127.0.0.1:3000", "http://[::1]:3000", "https://app.example.com"] {
            assert!(oss.allows(ok), "{ok}");
        }
        for bad in [
            "http://evil.com",
            "http://localhost:3001",
            "null",
            "http://127.0.0.1",
            "file://",
            "http://localhost.evil.com:3000",
        ] {
            assert!(!oss.allows(bad), "{bad}");
        }
        let saas = origins(&["https://app.example.com"], false, false);
        assert!(!saas.allows("http://localhost:3000"));
        assert!(saas.allows("https://app.example.com"));
    }

    #[test]
    fn on_loopback_the_host_must_name_this_server() {
        let o = origins(&["https://app.example.com"], true, true);
        for ok in ["127.0.0.1:3000", "localhost:3000", "[::1]:3000", "app.example.com"] {
            assert!(o.allows_host(ok), "{ok}");
        }
        for bad in ["evil.com:3000", "evil.com", "127.0.0.1:3001", ""] {
            assert!(!o.allows_host(bad), "{bad}");
        }
        assert!(origins(&[], true, false).allows_host("evil.com"), "not checked off loopback");
    }
}

/// The body read past its deadline (see `body_deadline`).
#[derive(Debug)]
struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive in time")
    }
}

impl std::error::Error for BodyTimedOut {}

/// Gives the request body one deadline from the request's start: a read after it fails, and
/// the answer is a 408 that closes the connection, whatever the handler made of the failure.
pub(super) async fn body_deadline(State(state): State<AppState>, req: Request, next: Next) -> Response {
    use axum::body::HttpBody as _;
    use futures_util::StreamExt as _;
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let limit = state.server.body_read_timeout;
    let deadline = tokio::time::Instant::now() + limit;
    let timed_out = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = timed_out.clone();
    let (parts, body) = req.into_parts();
    let stream = futures_util::stream::unfold(Some(body.into_data_stream()), move |state| {
        let flag = flag.clone();
        async move {
            let mut stream = state?;
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(stream))),
                Ok(Some(Err(e))) => Some((Err(e), None)),
                Ok(None) => None,
                Err(_) => {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                    Some((Err(axum::Error::new(BodyTimedOut)), None))
                }
            }
        }
    });
    let response = next.run(Request::from_parts(parts, axum::body::Body::from_stream(stream))).await;
    if timed_out.load(std::sync::atomic::Ordering::SeqCst) {
        let mut refused = ApiError::error(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {} ms", limit.as_millis()),
        )
        .into_response();
        refused.headers_mut().insert(header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        return refused;
    }
    response
}
