//! Extractors whose rejections are JSON errors, and the checks on ids from the path.

use super::{call_context, error::ApiError, AppState, Principal, RequestId};
use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Query, Request},
    http::{request::Parts, StatusCode},
};
use plugin_api::CallContext;
use serde::de::DeserializeOwned;

/// A JSON body: 415 unless the request says it is JSON (`Content-Type: application/json`: a
/// browser sends other types cross-site without asking the server first), 413 when too large,
/// 400 when not UTF-8 or not JSON, 422 when it is not an object or does not fit the type.
pub struct JsonBody<T>(pub T);

/// `application/json` or `application/<anything>+json`, with parameters or not.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = req.headers().get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        if !content_type.is_some_and(is_json) {
            return Err(ApiError::error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "the body must be JSON with `Content-Type: application/json` (got {})",
                    content_type.map_or("none".to_owned(), |c| format!("`{c}`"))
                ),
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
            } else {
                ApiError::bad_request(format!("cannot read the request body: {e}"))
            }
        })?;
        let text = std::str::from_utf8(&bytes).map_err(|_| ApiError::bad_request("request body is not UTF-8"))?;
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
        // Every JSON route takes an object (serde would also take an array for a struct).
        if !value.is_object() {
            return Err(ApiError::unprocessable("the body must be a JSON object"));
        }
        let parsed = serde_json::from_value(value).map_err(ApiError::unprocessable)?;
        Ok(JsonBody(parsed))
    }
}

/// Query parameters with a JSON 400 on rejection.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| QueryParams(q))
            .map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))
    }
}

/// The authenticated caller (set by the auth gate) and the context for its plugin calls.
pub struct Caller {
    pub principal: Principal,
    pub ctx: CallContext,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal =
            parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
                ApiError::error(StatusCode::INTERNAL_SERVER_ERROR, "route is not behind the auth gate")
            })?;
        let request_id = parts.extensions.get::<RequestId>().cloned().unwrap_or_else(|| RequestId(String::new()));
        let mut ctx = call_context(&principal, &request_id, &state.server);
        // W3C trace context: this request's span when traces are exported, else the caller's
        // (passed through so plugin logs can join its trace).
        if let Some(tp) = parts.extensions.get::<super::Traceparent>() {
            ctx = ctx.with_traceparent(&tp.0);
        } else if let Some(tp) = parts.headers.get("traceparent").and_then(|v| v.to_str().ok()) {
            if tp.len() <= 128 && tp.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                ctx = ctx.with_traceparent(tp);
            }
        }
        Ok(Caller { principal, ctx })
    }
}

/// One path parameter, decoded: a JSON 400 naming `what` when it is not UTF-8.
async fn path_param(parts: &mut Parts, what: &str) -> Result<String, ApiError> {
    Path::<String>::from_request_parts(parts, &())
        .await
        .map(|Path(id)| id)
        .map_err(|_| ApiError::bad_request(format!("invalid {what}: not UTF-8")))
}

/// A conversation id from the path, checked as OpenHands' `validate_conversation_id`.
pub struct ConversationId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ConversationId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let id = path_param(parts, "conversation ID").await?;
        validate_conversation_id(&id)?;
        Ok(ConversationId(id))
    }
}

/// 400 for ids longer than 100 characters, with NUL, `..`, `/`, `\` or control characters
/// (`app::check_conversation_id`).
pub fn validate_conversation_id(id: &str) -> Result<(), ApiError> {
    crate::app::check_conversation_id(id).map_err(|e| e.into())
}

/// A secret name/id from the path.
pub struct SecretId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for SecretId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let id = path_param(parts, "secret ID").await?;
        validate_secret_name(&id)?;
        Ok(SecretId(id))
    }
}

/// Secret names end up as environment variable names in the agent's sandbox.
pub fn validate_secret_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request("invalid secret name: 1 to 256 characters, no control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_ids_are_checked_like_openhands() {
        for bad in ["", "..", "a/b", "a\\b", "a\0b", "a\nb", &"x".repeat(101)] {
            assert!(validate_conversation_id(bad).is_err(), "{bad:?}");
        }
        assert!(validate_conversation_id(&"x".repeat(100)).is_ok());
        assert!(validate_conversation_id("0123abcd").is_ok());
    }
}
