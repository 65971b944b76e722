//! The accept loop, written out (rather than `axum::serve`) for what a server facing the
//! internet needs and `axum::serve` does not set:
//! - a deadline for a request's headers, which also closes idle keep-alive connections
//!   (slowloris, and sockets opened and never used);
//! - a cap on open connections, kept below the process's file-descriptor limit so the stores,
//!   the database pool and the plugins always have descriptors left, and a cap per client
//!   address, so one client cannot take them all (a connection past it is closed at once);
//! - a pause after a failed `accept` (out of descriptors), instead of a busy loop;
//! - a graceful stop: no new connections, each open one finishes its request in flight.

use axum::{extract::ConnectInfo, Router};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{
    net::TcpListener,
    sync::{watch, Semaphore},
};
use tower_http::add_extension::AddExtension;

/// The limits of one listener.
#[derive(Clone, Debug)]
pub struct Limits {
    /// How long a client may take to send a request's headers, and how long a keep-alive
    /// connection may sit idle.
    pub header_read_timeout: Duration,
    /// Open connections at most; beyond, new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// The largest request head hyper reads (the 431 with a JSON body comes from the
    /// router's own, smaller limit).
    pub max_header_bytes: usize,
    /// Open connections at most from one client address (0: no bound).
    pub max_per_client: usize,
}

/// Open connections per client address.
#[derive(Default)]
struct PerClient(Mutex<HashMap<IpAddr, usize>>);

/// One open connection of a client's, counted until dropped.
struct ClientSlot {
    clients: Arc<PerClient>,
    ip: IpAddr,
}

impl PerClient {
    /// A slot for a new connection from `ip`, unless it has `max` open already.
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot { clients: self.clone(), ip })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.clients.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The soft limit on open files of this process (`/proc/self/limits`), if it can be read.
pub fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The default connection cap: three quarters of the descriptor limit (the rest stays for
/// files, database and Redis connections), at most 10,000.
pub fn default_max_connections() -> usize {
    open_files_limit().map_or(1024, |n| (n * 3 / 4).clamp(16, 10_000))
}

/// Serves `app` on `listener` until `stop` turns true, then lets open connections finish
/// their request in flight; returns when the last one closes (the caller bounds the wait).
pub async fn run(listener: TcpListener, app: Router, limits: Limits, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let clients = Arc::new(PerClient::default());
    let mut backoff = Duration::from_millis(5);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = stopped(&mut stop) => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    backoff = Duration::from_millis(5);
                    a
                }
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of descriptors (or memory): wait for some to be freed.
                    tracing::warn!(error = %e, "accept failed; pausing {} ms", backoff.as_millis());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        let Some(client_slot) = clients.take(remote.ip(), limits.max_per_client) else {
            tracing::debug!(%remote, "connection closed: the client has max_connections_per_client open already");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(AddExtension::new(app.clone(), ConnectInfo(remote)));
        let mut stop = stop.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let _slot = (slot, client_slot);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_bytes.max(8192))
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => log_end(result, remote),
                () = stopped(&mut stop) => {
                    connection.as_mut().graceful_shutdown();
                    log_end(connection.await, remote);
                }
            }
        });
    }
    // Stopped accepting; wait until every connection has ended.
    let _ = slots.acquire_many(limits.max_connections as u32).await;
}

/// Resolves once `stop` is true (its guard dropped, so the future stays `Send`).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn log_end(result: Result<(), hyper::Error>, remote: SocketAddr) {
    if let Err(e) = result {
        if e.is_timeout() {
            tracing::debug!(%remote, "connection closed: no complete request within the header deadline");
        } else {
            tracing::debug!(%remote, error = %e, "connection ended with an error");
        }
    }
}

/// Errors of one connection that `accept` reports; the listener itself is fine.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
