//! The application layer: the host's flows, whichever door a request came through (HTTP,
//! socket.io, a plugin's host call). `http/` parses a request, calls `App` and renders the
//! answer (`AppError` becomes a status and OpenHands' body once, in `http::error`); plugins'
//! host calls are served here (`host_calls`), with `AppError::into_plugin_error`.
//!
//! - `conversations`: creating and starting conversations, the start request;
//! - `documents`: writes of Settings and Secrets safe with several hosts, and the provider
//!   tokens that count;
//! - `host_calls`: what plugins ask of the host.

mod conversations;
mod documents;
mod error;
mod host_calls;
mod stores;
mod workspace;

/// The registry's types the doors handle (a sign-in's input and answer, a plugin call's
/// failure), so that they need not reach into the registry.
pub use crate::registry::{AuthInput, Authenticated, CallError};
pub use conversations::{check_conversation_id, NewConversation, Started};
pub use error::{AppError, AppResult};
pub use workspace::{WorkspaceError, WorkspaceResult};

use crate::{config::ServerConfig, registry::Registry};
use std::sync::Arc;

/// The application: the plugins (through the registry), the server's configuration, and
/// this process's per-user write turns.
pub struct App {
    registry: Arc<Registry>,
    server: Arc<ServerConfig>,
    locks: documents::UserLocks,
}

impl App {
    /// The application over `registry`; it serves the plugins' host calls from now on.
    pub fn new(registry: Arc<Registry>, server: Arc<ServerConfig>) -> Arc<App> {
        let app = Arc::new(App { registry, server, locks: documents::UserLocks::default() });
        let handler: std::sync::Weak<dyn crate::registry::HostCallHandler> = Arc::downgrade(&app) as _;
        app.registry.serve_host_calls(handler);
        app
    }

    /// The plugins, for what is not a flow of its own (a store read, a health probe).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn server(&self) -> &ServerConfig {
        &self.server
    }

    pub fn server_arc(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }
}
