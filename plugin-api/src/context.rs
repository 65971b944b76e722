//! Identifiers and the per-call context.

use abi_stable::{
    std_types::{ROption, RString},
    StableAbi,
};
use std::fmt;

/// Which extension point an implementation serves. Open `u32` codes, like [`crate::ErrorCode`].
#[repr(transparent)]
#[derive(StableAbi, Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExtensionPoint(pub u32);

impl ExtensionPoint {
    pub const SETTINGS_STORE: ExtensionPoint = ExtensionPoint(1);
    pub const SECRETS_STORE: ExtensionPoint = ExtensionPoint(2);
    pub const CONVERSATION_STORE: ExtensionPoint = ExtensionPoint(3);
    pub const CONVERSATION_MANAGER: ExtensionPoint = ExtensionPoint(4);
    pub const USER_AUTH: ExtensionPoint = ExtensionPoint(5);
    pub const MONITORING: ExtensionPoint = ExtensionPoint(6);
    pub const ROUTES: ExtensionPoint = ExtensionPoint(7);
    /// Where the agent's tools act. Added in plugin-api 1.1.
    pub const RUNTIME: ExtensionPoint = ExtensionPoint(8);

    /// Every extension point this version of the contract declares.
    pub const ALL: [ExtensionPoint; 8] = [
        Self::SETTINGS_STORE,
        Self::SECRETS_STORE,
        Self::CONVERSATION_STORE,
        Self::CONVERSATION_MANAGER,
        Self::USER_AUTH,
        Self::MONITORING,
        Self::ROUTES,
        Self::RUNTIME,
    ];

    /// The key used in `plugins.toml` (`[extensions.<key>]`).
    pub fn key(self) -> &'static str {
        match self {
            Self::SETTINGS_STORE => "settings_store",
            Self::SECRETS_STORE => "secrets_store",
            Self::CONVERSATION_STORE => "conversation_store",
            Self::CONVERSATION_MANAGER => "conversation_manager",
            Self::USER_AUTH => "user_auth",
            Self::MONITORING => "monitoring",
            Self::ROUTES => "routes",
            Self::RUNTIME => "runtime",
            _ => "unknown",
        }
    }

    pub fn from_key(key: &str) -> Option<ExtensionPoint> {
        Self::ALL.into_iter().find(|p| p.key() == key)
    }
}

impl fmt::Debug for ExtensionPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

impl fmt::Display for ExtensionPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// How the deployment runs (`[server] app_mode`): an open code, like [`ExtensionPoint`].
#[repr(transparent)]
#[derive(StableAbi, Copy, Clone, PartialEq, Eq, Hash)]
pub struct AppMode(pub u32);

impl AppMode {
    /// One operator, one user or a few trusted ones (OpenHands' open-source server).
    pub const OSS: AppMode = AppMode(1);
    /// Many tenants: per-user stores, real authentication, billing.
    pub const SAAS: AppMode = AppMode(2);

    /// `"oss"`, `"saas"`, or `"unknown"` for a code this contract does not declare.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OSS => "oss",
            Self::SAAS => "saas",
            _ => "unknown",
        }
    }
}

impl fmt::Debug for AppMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One implementation a library offers.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct ImplementationInfo {
    pub point: ExtensionPoint,
    pub name: RString,
    pub description: RString,
}

/// Carried by every call: who is asking, for which request, and until when.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, Default)]
pub struct CallContext {
    /// The host's request id (also in the `x-request-id` response header).
    pub request_id: RString,
    /// W3C `traceparent` of the request, empty when there is none.
    pub traceparent: RString,
    /// The authenticated user; `None` in single-user mode. Stores scope every read and
    /// write by it.
    pub user_id: ROption<RString>,
    /// Milliseconds since the Unix epoch after which the host stops waiting; 0 = none.
    pub deadline_unix_ms: u64,
}

impl CallContext {
    /// A context for `request_id`, acting for `user_id` (`None`: single-user mode), with a
    /// deadline in milliseconds since the Unix epoch (0: none).
    pub fn new(request_id: &str, user_id: Option<&str>, deadline_unix_ms: u64) -> Self {
        CallContext {
            request_id: request_id.into(),
            traceparent: RString::new(),
            user_id: user_id.map(RString::from).into(),
            deadline_unix_ms,
        }
    }

    /// The same context with a W3C `traceparent`.
    pub fn with_traceparent(mut self, traceparent: &str) -> Self {
        self.traceparent = traceparent.into();
        self
    }

    pub fn user_id(&self) -> Option<&str> {
        self.user_id.as_ref().map(|s| s.as_str()).into_option()
    }
}
