//! The one HTTP error type: a status, a JSON body, and headers a plugin asked for.
//!
//! Error handling in the host: the application layer fails with an `app::AppError` (a plugin
//! call's `CallError`: which plugin, which method, the plugin's `PluginError`; or a refusal of
//! its own); handlers return [`ApiResult`] and `?` renders it once, here: a plugin error with
//! the status of its code, a refusal as OpenHands answers it. Where OpenHands clients read
//! a route's error body, the body has OpenHands' shape, built by a named constructor below;
//! internal causes (paths, panics) are logged where they happen, never sent. Start-up and CLI
//! errors are plain messages that name the file, the key and the fix.

use crate::app::{AppError, CallError};
use axum::{
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use plugin_api::{ErrorCode, PluginError};
use serde_json::{json, Value};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Value,
    pub headers: HeaderMap,
}

impl ApiError {
    pub fn new(status: StatusCode, body: Value) -> Self {
        Self { status, body, headers: HeaderMap::new() }
    }

    /// `{"error": message}`, the most common OpenHands shape.
    pub fn error(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, json!({ "error": message.into() }))
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::error(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::error(StatusCode::NOT_FOUND, message)
    }

    /// 422 `{"error": "invalid request body: …"}`: the JSON parsed but does not fit.
    pub fn unprocessable(message: impl std::fmt::Display) -> Self {
        Self::error(StatusCode::UNPROCESSABLE_ENTITY, format!("invalid request body: {message}"))
    }

    /// OpenHands' `{"status": "error", "message": …, "msg_id": …}`, which the web client shows
    /// by `msg_id`.
    pub fn with_msg_id(status: StatusCode, message: &str, msg_id: &str) -> Self {
        Self::new(status, json!({ "status": "error", "message": message, "msg_id": msg_id }))
    }

    /// 404 of the conversation routes that answer with a message id (rename, events, message).
    pub fn conversation_not_found() -> Self {
        Self::with_msg_id(StatusCode::NOT_FOUND, "Conversation not found", "CONVERSATION$NOT_FOUND")
    }

    /// 404 of `start` and `stop`: `{"status": "error", "conversation_id": …}`.
    pub fn conversation_missing(id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, json!({ "status": "error", "conversation_id": id }))
    }

    /// 400 `{"message": "Secret NAME already exists"}`.
    pub fn secret_exists(name: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, json!({ "message": format!("Secret {name} already exists") }))
    }

    /// 404 `{"error": "Secret with ID NAME not found"}`.
    pub fn secret_not_found(name: &str) -> Self {
        Self::not_found(format!("Secret with ID {name} not found"))
    }

    /// From a plugin error: the status from its code, and any headers from its details.
    pub fn from_plugin(err: &PluginError, origin: &str) -> Self {
        let status = status_of(err.code);
        let message = if err.code == ErrorCode::PANICKED {
            format!("{origin} failed unexpectedly (it panicked; see the server log)")
        } else {
            err.message.to_string()
        };
        let body = if err.code.is_auth() {
            json!({ "error": err.code.name(), "message": message })
        } else if err.code == ErrorCode::INTERNAL {
            // An internal cause (a key id, a path, a query) stays in the log; the client gets
            // an id that finds it there.
            let mut bytes = [0u8; 6];
            let _ = getrandom::getrandom(&mut bytes);
            let correlation: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            tracing::error!(correlation_id = %correlation, plugin = origin, error = %err.message, "internal error answered with 500");
            json!({
                "error": format!("{origin} failed (internal error {correlation}; the server log has its cause)"),
                "code": err.code.name(),
                "correlation_id": correlation,
            })
        } else {
            json!({ "error": message, "code": err.code.name() })
        };
        let mut e = Self::new(status, body);
        e.headers = detail_headers(&err.details_json);
        e
    }
}

/// How plugin error codes become HTTP statuses (docs/decisions.md §5, OpenHands' auth error kinds).
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::INVALID_ARGUMENT => StatusCode::BAD_REQUEST,
        ErrorCode::NOT_FOUND => StatusCode::NOT_FOUND,
        ErrorCode::ALREADY_EXISTS | ErrorCode::CONFLICT => StatusCode::CONFLICT,
        ErrorCode::UNAUTHENTICATED
        | ErrorCode::AUTH_NO_CREDENTIALS
        | ErrorCode::AUTH_EXPIRED
        | ErrorCode::AUTH_INVALID
        | ErrorCode::AUTH_TOS_NOT_ACCEPTED => StatusCode::UNAUTHORIZED,
        ErrorCode::PERMISSION_DENIED | ErrorCode::AUTH_EMAIL_NOT_VERIFIED => StatusCode::FORBIDDEN,
        ErrorCode::RESOURCE_EXHAUSTED | ErrorCode::AUTH_RATE_LIMITED => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::UNAVAILABLE => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::PAYMENT_REQUIRED => StatusCode::PAYMENT_REQUIRED,
        ErrorCode::DEADLINE_EXCEEDED => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::UNIMPLEMENTED => StatusCode::NOT_IMPLEMENTED,
        ErrorCode::TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::NOT_A_FILE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `{"headers": {"Retry-After": "1"}}` in a plugin error's details.
pub fn detail_headers(details_json: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if details_json.is_empty() {
        return headers;
    }
    let Ok(details) = serde_json::from_str::<Value>(details_json) else {
        return headers;
    };
    if let Some(map) = details.get("headers").and_then(Value::as_object) {
        for (k, v) in map {
            let values: Vec<&str> = match v {
                Value::String(s) => vec![s.as_str()],
                Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
                _ => continue,
            };
            let Ok(name) = HeaderName::try_from(k.as_str()) else {
                continue;
            };
            for value in values {
                if let Ok(value) = HeaderValue::try_from(value) {
                    headers.append(name.clone(), value);
                }
            }
        }
    }
    headers
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        let origin = format!("the {} plugin ({}::{})", e.point, e.library, e.implementation);
        Self::from_plugin(&e.error, &origin)
    }
}

impl ApiError {
    /// The status `e` is answered with over HTTP.
    pub fn from_status_of(e: &AppError) -> u16 {
        match e {
            AppError::Plugin(c) | AppError::StartFailed(c) => status_of(c.error.code).as_u16(),
            AppError::SettingsNotFound | AppError::NoLlmKey | AppError::Invalid(_) => 400,
            AppError::PaymentRequired(_) => 402,
            AppError::TooManyStored { .. } | AppError::Forbidden(_) => 403,
            AppError::SecretNotFound(_) => 404,
            AppError::SecretExists(_) => 400,
            AppError::ConversationExists(_) | AppError::SettingsContended => 409,
            AppError::NoManager => 501,
            AppError::Maintenance { .. } => 503,
        }
    }
}

/// OpenHands' message id of a refusal, which its web client shows by id.
pub fn msg_id(e: &AppError) -> Option<&'static str> {
    match e {
        AppError::SettingsNotFound => Some("CONFIGURATION$SETTINGS_NOT_FOUND"),
        AppError::NoLlmKey => Some("STATUS$ERROR_LLM_AUTHENTICATION"),
        AppError::PaymentRequired(_) => Some("STATUS$ERROR_LLM_OUT_OF_CREDITS"),
        AppError::Maintenance { .. } => Some("MAINTENANCE$IN_PROGRESS"),
        AppError::TooManyStored { .. } => Some("CONVERSATION$TOO_MANY_STORED"),
        _ => None,
    }
}

/// Each refusal of the application layer as OpenHands answers it.
impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        let message = e.to_string();
        let id = msg_id(&e).unwrap_or_default();
        match e {
            AppError::Plugin(e) | AppError::StartFailed(e) => e.into(),
            AppError::SettingsNotFound | AppError::NoLlmKey => {
                ApiError::with_msg_id(StatusCode::BAD_REQUEST, &message, id)
            }
            AppError::PaymentRequired(_) => ApiError::with_msg_id(StatusCode::PAYMENT_REQUIRED, &message, id),
            AppError::TooManyStored { .. } => ApiError::with_msg_id(StatusCode::FORBIDDEN, &message, id),
            AppError::Maintenance { retry_after_secs, .. } => {
                let mut refusal = ApiError::with_msg_id(StatusCode::SERVICE_UNAVAILABLE, &message, id);
                refusal.headers.insert(axum::http::header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
                refusal
            }
            AppError::NoManager => ApiError::error(StatusCode::NOT_IMPLEMENTED, message),
            AppError::ConversationExists(_) | AppError::SettingsContended => {
                ApiError::error(StatusCode::CONFLICT, message)
            }
            AppError::SecretNotFound(name) => ApiError::secret_not_found(&name),
            AppError::SecretExists(name) => ApiError::secret_exists(&name),
            AppError::Forbidden(_) => ApiError::error(StatusCode::FORBIDDEN, message),
            AppError::Invalid(_) => ApiError::bad_request(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        response.headers_mut().extend(self.headers);
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
