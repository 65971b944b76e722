//! HTTP vocabulary to and from the ABI's types, in one place: the auth request, the route
//! request and response, and header lists. Nothing outside `registry` builds an `R*` value.

use abi_stable::std_types::{RString, Tuple2};
use axum::{
    body::{Body, Bytes},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri},
    response::Response,
};
use plugin_api::{AuthRequest, Headers, HttpRequest, HttpResponse};
use std::net::SocketAddr;

/// What the auth gate (and the socket.io handshake) hand to `user_auth`.
pub struct AuthInput<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub remote: Option<SocketAddr>,
}

/// Request headers as the ABI carries them. Values that are not text are left out.
pub(crate) fn to_abi_headers(headers: &HeaderMap) -> Headers {
    headers
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| Tuple2(RString::from(k.as_str()), RString::from(v))))
        .collect()
}

/// Headers a plugin asked for, as a map; names or values that are not valid HTTP are dropped.
pub(crate) fn from_abi_headers(headers: Headers) -> HeaderMap {
    let mut out = HeaderMap::new();
    for Tuple2(k, v) in headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v.as_str())) {
            out.append(k, v);
        }
    }
    out
}

pub(crate) fn auth_request(input: &AuthInput<'_>) -> AuthRequest {
    AuthRequest {
        method: input.method.as_str().into(),
        path: input.uri.path().into(),
        query: input.uri.query().unwrap_or("").into(),
        headers: to_abi_headers(input.headers),
        remote_addr: input.remote.map(|a| a.to_string()).unwrap_or_default().into(),
    }
}

pub(crate) fn http_request(method: &Method, uri: &Uri, headers: &HeaderMap, body: Bytes) -> HttpRequest {
    HttpRequest {
        method: method.as_str().into(),
        path: uri.path().into(),
        query: uri.query().unwrap_or("").into(),
        headers: to_abi_headers(headers),
        body: body.to_vec().into(),
    }
}

/// A route handler's answer as a response; a status that is not one becomes 500.
pub(crate) fn http_response(answer: HttpResponse) -> Response {
    let mut response = Response::new(Body::from(answer.body.into_vec()));
    *response.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    *response.headers_mut() = from_abi_headers(answer.headers);
    response
}
