//! oh-host: an OpenHands-compatible server whose every replaceable part is a plugin library.
//!
//! `main` is thin: [`cli::main`] parses arguments, then [`serve`] does the work, so tests and
//! embedders can drive the server in-process too.

/// `plugin_api::v1_0::HostServices` for a type that implements the current `HostServices`: a
/// library built against plugin-api 1.0 gets the same services, without `runtime`.
macro_rules! host_services_for_v1_0 {
    ($services:ty) => {
        impl plugin_api::v1_0::HostServices for $services {
            fn call(
                &self,
                ctx: plugin_api::CallContext,
                point: plugin_api::ExtensionPoint,
                method: abi_stable::std_types::RString,
                args_json: abi_stable::std_types::RString,
            ) -> async_ffi::FfiFuture<plugin_api::PResult<abi_stable::std_types::RString>> {
                plugin_api::HostServices::call(self, ctx, point, method, args_json)
            }
            fn app_mode(&self) -> plugin_api::AppMode {
                plugin_api::HostServices::app_mode(self)
            }
            fn state_dir(&self) -> abi_stable::std_types::RString {
                plugin_api::HostServices::state_dir(self)
            }
        }
    };
}

pub mod app;
pub mod cli;
pub mod config;
pub mod env;
pub mod git;
pub mod http;
pub mod isolation;
pub mod loader;
pub mod logging;
pub mod metrics;
pub mod registry;
pub mod reload;
pub mod server;
pub mod telemetry;

use config::Config;
use registry::Registry;
use std::{future::Future, sync::Arc};
use tokio::net::TcpListener;

/// Where the server listens: the public address, and the operators' one for `/internal/*`.
pub struct Listeners {
    pub public: TcpListener,
    pub admin: Option<TcpListener>,
}

/// Serves `registry` until `shutdown` resolves; then stops accepting, lets requests in flight
/// finish (at most `shutdown_timeout`), and calls every plugin's `shutdown`.
pub async fn serve(
    config: &Config,
    registry: Arc<Registry>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let public_addr = listeners.public.local_addr()?;
    // Plugins' host calls reach the application through a weak link: it must outlive the
    // routers, until the plugins have shut down (a manager stores its final events then).
    let app = app::App::new(registry, Arc::new(config.server.clone()));
    let reloader = Arc::new(reload::Reloader::new(config));
    let state = http::AppState::new(app.clone(), public_addr).with_reloader(reloader.clone());
    // SIGHUP reloads the profile, as `oh-host reload` does.
    let hangups = match reload::hangups() {
        Some(mut signal) => {
            let (app, reloader) = (app.clone(), reloader.clone());
            Some(tokio::spawn(async move {
                while signal.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading the profile");
                    let _ = reloader.reload(&app).await;
                }
            }))
        }
        None => None,
    };
    let limits = server::Limits {
        header_read_timeout: config.server.header_read_timeout,
        max_connections: config.server.max_connections,
        max_header_bytes: config.server.max_header_bytes * 4,
        max_per_client: config.server.max_connections_per_client,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut servers =
        vec![tokio::spawn(server::run(listeners.public, http::router(state.clone()), limits.clone(), stopped.clone()))];
    if let Some(admin) = listeners.admin {
        servers.push(tokio::spawn(server::run(admin, http::admin_router(state), limits, stopped)));
    }
    shutdown.await;
    tracing::info!("shutting down: no new connections, finishing requests in flight");
    let _ = stop.send(true);
    let deadline = config.server.shutdown_timeout;
    let drained = futures_util::future::join_all(servers);
    if tokio::time::timeout(deadline, drained).await.is_err() {
        tracing::warn!("requests still in flight after {} ms; closing them", deadline.as_millis());
    }
    if let Some(hangups) = hangups {
        hangups.abort();
    }
    app.registry().shutdown(deadline).await;
    drop(app);
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
