//! Authentication, written once: the auth gate in front of the API routes and the socket.io
//! handshake both call [`authenticate`], which asks `user_auth` through the application layer.

use super::{call_context, error::ApiError, AppState, Principal, RequestId};
use crate::app::{AppError, AuthInput};
use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, Method, Uri},
    middleware::Next,
    response::{IntoResponse, Response},
};
use std::net::SocketAddr;

/// The caller of a request: its principal, and the headers `user_auth` wants on the response
/// (a refreshed cookie, rate-limit headers). Auth error kinds become 401/403/429.
pub(crate) async fn authenticate(
    state: &AppState,
    request_id: &RequestId,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    remote: Option<SocketAddr>,
) -> Result<(Principal, HeaderMap), AppError> {
    let ctx = call_context(&Principal::anonymous(), request_id, &state.server);
    let input = AuthInput { method, uri, headers, remote };
    let outcome = state.app.authenticate(ctx, input).await?;
    let principal = Principal { user_id: outcome.user_id, email: outcome.email, auth_type: outcome.auth_type };
    Ok((principal, outcome.response_headers))
}

/// How a refused sign-in reads on a socket: `KIND: message` for the auth kinds (as the HTTP
/// body's `error` and `message`), the message otherwise; and the status it would have had.
pub(crate) fn refusal(e: &AppError) -> (String, u16) {
    let status = ApiError::from_status_of(e);
    let text = match e {
        AppError::Plugin(c) if c.error.code.is_auth() => format!("{}: {}", c.error.code.name(), c.error.message),
        // A panic's message stays in the log.
        AppError::Plugin(c) if c.error.code == plugin_api::ErrorCode::PANICKED => {
            "the user_auth plugin failed unexpectedly (see the server log)".to_owned()
        }
        AppError::Plugin(c) => c.error.message.to_string(),
        other => other.to_string(),
    };
    (text, status)
}

/// The auth gate: sets the [`Principal`] for the route, adds `user_auth`'s headers to the
/// response. Preflight requests pass (CORS answers them).
pub(super) async fn gate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if req.method() == Method::OPTIONS {
        return next.run(req).await;
    }
    let request_id = req.extensions().get::<RequestId>().cloned().unwrap_or_else(|| RequestId(String::new()));
    let remote = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    match authenticate(&state, &request_id, req.method(), req.uri(), req.headers(), remote).await {
        Ok((principal, headers)) => {
            req.extensions_mut().insert(principal);
            let mut response = next.run(req).await;
            for (k, v) in &headers {
                response.headers_mut().append(k.clone(), v.clone());
            }
            response
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}
