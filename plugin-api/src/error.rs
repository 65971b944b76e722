//! The one error type that crosses the boundary.

use abi_stable::{
    std_types::{RResult, RString},
    StableAbi,
};
use std::fmt;

/// An open error code. A `u32` rather than an enum, because an enum could never gain a
/// variant without breaking every library built before it. The host maps codes to HTTP
/// statuses; a code it does not know is treated as [`ErrorCode::INTERNAL`].
#[repr(transparent)]
#[derive(StableAbi, Copy, Clone, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// A bug or an unexpected condition in the plugin (HTTP 500).
    pub const INTERNAL: ErrorCode = ErrorCode(1);
    /// The caller sent something the plugin cannot accept (HTTP 400).
    pub const INVALID_ARGUMENT: ErrorCode = ErrorCode(2);
    /// The thing asked for does not exist (HTTP 404).
    pub const NOT_FOUND: ErrorCode = ErrorCode(3);
    /// The thing to create exists already (HTTP 409).
    pub const ALREADY_EXISTS: ErrorCode = ErrorCode(4);
    /// A concurrent change won (HTTP 409).
    pub const CONFLICT: ErrorCode = ErrorCode(5);
    /// Credentials are missing or not valid, no finer kind known (HTTP 401).
    pub const UNAUTHENTICATED: ErrorCode = ErrorCode(6);
    /// The user is known but may not do this (HTTP 403).
    pub const PERMISSION_DENIED: ErrorCode = ErrorCode(7);
    /// A backing service is down; retrying later may work (HTTP 503).
    pub const UNAVAILABLE: ErrorCode = ErrorCode(8);
    /// The call's deadline passed (HTTP 504).
    pub const DEADLINE_EXCEEDED: ErrorCode = ErrorCode(9);
    /// A quota or rate limit was hit (HTTP 429).
    pub const RESOURCE_EXHAUSTED: ErrorCode = ErrorCode(10);
    /// The implementation does not offer this operation (HTTP 501).
    pub const UNIMPLEMENTED: ErrorCode = ErrorCode(11);
    /// The plugin rejected its configuration (a start-up error).
    pub const INVALID_CONFIG: ErrorCode = ErrorCode(12);
    /// The plugin panicked; the instance is marked unhealthy (HTTP 500).
    pub const PANICKED: ErrorCode = ErrorCode(13);
    /// The user must pay first: no credits left (HTTP 402).
    pub const PAYMENT_REQUIRED: ErrorCode = ErrorCode(14);
    /// The thing is larger than the caller's bound (HTTP 413). Added in plugin-api 1.1.
    pub const TOO_LARGE: ErrorCode = ErrorCode(15);
    /// The path names something that is not a regular file (HTTP 415). Added in 1.1.
    pub const NOT_A_FILE: ErrorCode = ErrorCode(16);

    /// Auth sub-kind: no credentials at all (OpenHands `NoCredentialsError`, HTTP 401).
    pub const AUTH_NO_CREDENTIALS: ErrorCode = ErrorCode(100);
    /// Auth sub-kind: credentials expired and could not be refreshed (`ExpiredError`, 401).
    pub const AUTH_EXPIRED: ErrorCode = ErrorCode(101);
    /// Auth sub-kind: credentials are malformed, tampered or revoked (`AuthError`, 401).
    pub const AUTH_INVALID: ErrorCode = ErrorCode(102);
    /// Auth sub-kind: the user's email is not verified (`EmailNotVerifiedError`, 403).
    pub const AUTH_EMAIL_NOT_VERIFIED: ErrorCode = ErrorCode(103);
    /// Auth sub-kind: terms of service not accepted (`TosNotAcceptedError`, 401).
    pub const AUTH_TOS_NOT_ACCEPTED: ErrorCode = ErrorCode(104);
    /// Auth sub-kind: the user's rate limit was hit (`RateLimitError`, 429).
    pub const AUTH_RATE_LIMITED: ErrorCode = ErrorCode(105);

    /// A short stable name for logs and JSON bodies.
    pub fn name(self) -> &'static str {
        match self {
            Self::INTERNAL => "INTERNAL",
            Self::INVALID_ARGUMENT => "INVALID_ARGUMENT",
            Self::NOT_FOUND => "NOT_FOUND",
            Self::ALREADY_EXISTS => "ALREADY_EXISTS",
            Self::CONFLICT => "CONFLICT",
            Self::UNAUTHENTICATED => "UNAUTHENTICATED",
            Self::PERMISSION_DENIED => "PERMISSION_DENIED",
            Self::UNAVAILABLE => "UNAVAILABLE",
            Self::DEADLINE_EXCEEDED => "DEADLINE_EXCEEDED",
            Self::RESOURCE_EXHAUSTED => "RESOURCE_EXHAUSTED",
            Self::UNIMPLEMENTED => "UNIMPLEMENTED",
            Self::PAYMENT_REQUIRED => "PAYMENT_REQUIRED",
            Self::TOO_LARGE => "TOO_LARGE",
            Self::NOT_A_FILE => "NOT_A_FILE",
            Self::INVALID_CONFIG => "INVALID_CONFIG",
            Self::PANICKED => "PANICKED",
            Self::AUTH_NO_CREDENTIALS => "NoCredentialsError",
            Self::AUTH_EXPIRED => "ExpiredError",
            Self::AUTH_INVALID => "AuthError",
            Self::AUTH_EMAIL_NOT_VERIFIED => "EmailNotVerifiedError",
            Self::AUTH_TOS_NOT_ACCEPTED => "TosNotAcceptedError",
            Self::AUTH_RATE_LIMITED => "RateLimitError",
            _ => "UNKNOWN",
        }
    }

    /// Whether this is one of the authentication kinds (the auth gate's business).
    pub fn is_auth(self) -> bool {
        self == Self::UNAUTHENTICATED || (100..200).contains(&self.0)
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

/// An error returned by a plugin (or made by the host about a plugin call).
///
/// `message` is shown to operators and may be shown to clients: it must never contain a
/// secret. `details_json` is either empty or a JSON object; the key `"headers"` (an object of
/// header name to value) asks the host to add those headers to the HTTP response, e.g.
/// `Retry-After` or a `Set-Cookie` that clears a bad cookie.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq)]
pub struct PluginError {
    pub code: ErrorCode,
    pub message: RString,
    pub retryable: bool,
    pub details_json: RString,
}

impl PluginError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let message: String = message.into();
        Self { code, message: message.into(), retryable: false, details_json: RString::new() }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::INTERNAL, message)
    }
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::INVALID_ARGUMENT, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NOT_FOUND, message)
    }
    pub fn invalid_config(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::INVALID_CONFIG, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { retryable: true, ..Self::new(ErrorCode::UNAVAILABLE, message) }
    }
    /// Attaches a details object (see the type's documentation).
    pub fn with_details(mut self, details: &serde_json::Value) -> Self {
        self.details_json = details.to_string().into();
        self
    }
}

impl fmt::Debug for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.name(), self.message)
    }
}

impl std::error::Error for PluginError {}

/// The result type of every fallible call across the boundary.
pub type PResult<T> = RResult<T, PluginError>;
