//! oh-host: an OpenHands-compatible server whose every replaceable part is a plugin library.
//!
//! `main` is thin: [`cli::main`] parses arguments, then [`serve`] does the work, so tests and
//! embedders can drive the server in-process too.

pub mod cli;
pub mod config;
pub mod env;
pub mod http;
pub mod loader;
pub mod registry;

use config::Config;
use registry::Registry;
use std::{future::Future, net::SocketAddr, sync::Arc};
use tokio::net::TcpListener;

/// Serves `registry` on `listener` until `shutdown` resolves; then stops accepting, waits for
/// in-flight requests (at most `shutdown_timeout`), and calls every plugin's `shutdown`.
pub async fn serve(
    config: &Config,
    registry: Arc<Registry>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = http::AppState::new(registry.clone(), config.server.clone());
    let app = http::router(state).into_make_service_with_connect_info::<SocketAddr>();
    let stopping = Arc::new(tokio::sync::Notify::new());
    let signal = {
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections, finishing requests in flight");
            stopping.notify_waiters();
        }
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(signal);
    let deadline = config.server.shutdown_timeout;
    let drained = async {
        stopping.notified().await;
        tokio::time::sleep(deadline).await;
    };
    tokio::select! {
        result = server => result?,
        () = drained => tracing::warn!("requests still in flight after {} ms; closing them", deadline.as_millis()),
    }
    registry.shutdown(deadline).await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
