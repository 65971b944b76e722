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

tokio::task_local! {
    /// The generation of plugins a request started on.
    static GENERATION: Arc<Registry>;
}

/// The application: the plugins (through the registry), the server's configuration, and
/// this process's per-user write turns.
pub struct App {
    /// The active generation of plugins: swapped whole by a reload.
    registry: std::sync::RwLock<Arc<Registry>>,
    server: Arc<ServerConfig>,
    locks: documents::UserLocks,
    /// Bumped when a reload replaces the conversation manager: live sockets subscribe again,
    /// to the new one.
    manager_epoch: tokio::sync::watch::Sender<u64>,
}

impl App {
    /// The application over `registry`; it serves the plugins' host calls from now on.
    pub fn new(registry: Arc<Registry>, server: Arc<ServerConfig>) -> Arc<App> {
        let handler: std::sync::Weak<dyn crate::registry::HostCallHandler>;
        let app = Arc::new(App {
            registry: std::sync::RwLock::new(registry),
            server,
            locks: documents::UserLocks::default(),
            manager_epoch: tokio::sync::watch::channel(0).0,
        });
        handler = Arc::downgrade(&app) as _;
        app.registry().serve_host_calls(handler);
        app
    }

    /// The generation of plugins this request runs on (see [`App::pinned`]), else the active
    /// one.
    pub fn registry(&self) -> Arc<Registry> {
        GENERATION.try_with(Arc::clone).unwrap_or_else(|_| self.active())
    }

    /// The active generation of plugins.
    pub fn active(&self) -> Arc<Registry> {
        self.registry.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs `work` (a request) entirely on the generation active now, whatever a reload
    /// switches in meanwhile.
    pub async fn pinned<F: std::future::Future>(&self, work: F) -> F::Output {
        GENERATION.scope(self.active(), work).await
    }

    /// Changes when a reload replaces the conversation manager (see `http::socket`).
    pub fn manager_epochs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.manager_epoch.subscribe()
    }

    /// Tells the live sockets that the conversation manager was replaced.
    pub fn manager_replaced(&self) {
        self.manager_epoch.send_modify(|n| *n += 1);
    }

    /// Makes `next` the active generation (a reload); answers the previous one. Requests that
    /// hold the previous one finish on it.
    pub fn switch(&self, next: Arc<Registry>) -> Arc<Registry> {
        next.activate();
        std::mem::replace(&mut *self.registry.write().unwrap_or_else(|e| e.into_inner()), next)
    }

    pub fn server(&self) -> &ServerConfig {
        &self.server
    }

    pub fn server_arc(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }
}
