//! The host's routers in this process, without a second one: the profile is parsed, the
//! libraries are loaded and the routers built as `oh-host serve` does, and each request goes
//! through `tower::ServiceExt::oneshot`. For tests of one route's shape, which need no socket
//! and no process of their own (the rest start the real binary: [`crate::TestHost`]).

use crate::Deployment;
use axum::{body::Body, http::Request, Router};
use oh_host::{app::App, http::AppState, registry::Registry};
use std::{net::SocketAddr, sync::Arc};
use tower::ServiceExt as _;

/// A deployment whose routers run here.
pub struct InProcess {
    pub deployment: Deployment,
    registry: Arc<Registry>,
    public: Router,
    admin: Router,
    /// The public address the routers believe they are bound to (its port is what an
    /// `Origin` or `Host` of this server names).
    pub addr: SocketAddr,
}

/// An answer: status, headers, body.
pub struct Answer {
    pub status: u16,
    pub headers: axum::http::HeaderMap,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

impl InProcess {
    /// The bundled plugins, a profile with `server_extra` and `extra` (as
    /// [`Deployment::write_profile`]) and `env` as the process environment the host reads.
    pub fn start(server_extra: &str, extra: &str, env: &[(&str, &str)]) -> InProcess {
        let deployment = Deployment::new();
        deployment.install_bundled();
        deployment.write_profile(server_extra, extra);
        let path = deployment.profile_path();
        let text = std::fs::read_to_string(&path).unwrap();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let lookup = move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let config = oh_host::config::parse(&path, &text, &lookup).unwrap_or_else(|e| panic!("{e}"));
        let registry = Registry::build(&config, tokio::runtime::Handle::current()).unwrap_or_else(|e| panic!("{e}"));
        let addr: SocketAddr = "127.0.0.1:3000".parse().unwrap();
        let app = App::new(registry.clone(), Arc::new(config.server.clone()));
        let state = AppState::new(app, addr);
        let public = oh_host::http::router(state.clone());
        let admin = oh_host::http::admin_router(state);
        InProcess { deployment, registry, public, admin, addr }
    }

    /// Sends `request` to the public router (with this server's `Host`, as a client would).
    pub async fn send(&self, request: Request<Body>) -> Answer {
        answer(self.public.clone(), request, self.addr).await
    }

    /// Sends `request` to the operators' router.
    pub async fn send_admin(&self, request: Request<Body>) -> Answer {
        answer(self.admin.clone(), request, self.addr).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(Request::get(path).body(Body::empty()).unwrap()).await
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> Answer {
        let request =
            Request::post(path).header("content-type", "application/json").body(Body::from(body.to_string())).unwrap();
        self.send(request).await
    }
}

async fn answer(router: Router, mut request: Request<Body>, addr: SocketAddr) -> Answer {
    if !request.headers().contains_key("host") {
        request.headers_mut().insert("host", addr.to_string().parse().unwrap());
    }
    let response = router.oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    Answer { status, headers, text: String::from_utf8_lossy(&bytes).into_owned() }
}

impl Drop for InProcess {
    /// Plugins stop as at a server's end (their runtimes, their files).
    fn drop(&mut self) {
        let registry = self.registry.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(registry.shutdown(std::time::Duration::from_secs(2)));
        })
        .join();
    }
}
