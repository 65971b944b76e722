//! Reloading the profile in a running server (`oh-host reload`, `POST /internal/reload`,
//! `SIGHUP`): the next generation of plugins is built beside the active one, keeping every
//! instance whose entry did not change (its conversations, sockets and caches go on), checked,
//! and only then switched in; requests that hold the previous generation finish on it, and
//! what it alone held is shut down once they have. Anything wrong refuses the reload with
//! every problem named, and the active generation goes on untouched.
//!
//! A replaced conversation manager hands its conversations over: it stops their loops (they
//! store their state), the new one resumes them, and live sockets subscribe to it without
//! reconnecting (`http::socket`). What this version cannot swap in a running process is
//! refused with the reason: `[server]` keys (listeners, limits and paths are set up at start)
//! and a `routes` entry that would declare other routes (the router is built at start; a new
//! config or build of the same routes is reloaded).

use crate::{
    app::App,
    config::{self, Config},
    registry::Registry,
};
use serde::Serialize;
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

/// How the reloads went so far (`/internal/plugins`, `/internal/metrics`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// 1 at start; one more per reload switched in.
    pub generation: u64,
    pub reloads: u64,
    pub refused: u64,
    /// RFC 3339 time of the last attempt, and its problems when refused.
    pub last_at: Option<String>,
    pub last_error: Option<String>,
}

/// What a reload changed, by entry (`extensions.user_auth`, `extensions.monitoring[1]`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Changes {
    pub generation: u64,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub replaced: Vec<String>,
    pub unchanged: Vec<String>,
}

/// The server's reloads: one at a time.
pub struct Reloader {
    path: PathBuf,
    /// The `[server]` table the process started with.
    server_table: toml::Table,
    status: tokio::sync::Mutex<Status>,
    shutdown_timeout: Duration,
}

/// The `[server]` table of a profile's text.
fn server_table(path: &Path) -> Result<toml::Table, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc: toml::Table = text.parse().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(doc.get("server").and_then(|v| v.as_table()).cloned().unwrap_or_default())
}

impl Reloader {
    pub fn new(config: &Config) -> Reloader {
        Reloader {
            path: config.path.clone(),
            server_table: server_table(&config.path).unwrap_or_default(),
            status: tokio::sync::Mutex::new(Status { generation: 1, ..Status::default() }),
            shutdown_timeout: config.server.shutdown_timeout,
        }
    }

    pub async fn status(&self) -> Status {
        self.status.lock().await.clone()
    }

    /// Re-reads the profile and switches to its generation, or says every reason not to.
    pub async fn reload(&self, app: &App) -> Result<Changes, Vec<String>> {
        let mut status = self.status.lock().await;
        status.last_at = Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        let result = self.attempt(app, status.generation + 1).await;
        match &result {
            Ok(changes) => {
                status.generation = changes.generation;
                status.reloads += 1;
                status.last_error = None;
                tracing::info!(generation = changes.generation, added = ?changes.added, removed = ?changes.removed, replaced = ?changes.replaced, "reloaded the profile");
            }
            Err(problems) => {
                status.refused += 1;
                status.last_error = Some(problems.join("; "));
                tracing::warn!(?problems, "reload refused; the active plugins go on serving");
            }
        }
        result
    }

    async fn attempt(&self, app: &App, generation: u64) -> Result<Changes, Vec<String>> {
        let config = config::load(&self.path).map_err(|e| e.problems)?;
        let problems = self.fixed_server_keys()?;
        let previous = app.active();
        if !problems.is_empty() {
            return Err(problems);
        }
        let handle = tokio::runtime::Handle::current();
        let (built, prev) = (config.clone(), previous.clone());
        // What changed is read here too: comparing instances hashes the libraries not hashed
        // yet (milliseconds each, `loader::LibrarySum`), which belongs off the async workers.
        let (next, changes) = tokio::task::spawn_blocking(move || {
            let next = Registry::build_next(&built, handle, Some(&prev))?;
            let changes = diff(&prev, &next, generation);
            Ok((next, changes))
        })
        .await
        .map_err(|e| vec![format!("building the plugins failed: {e}")])?
        .map_err(|e: crate::registry::LoadErrors| e.problems)?;
        // The router is built at start: `routes` entries may change (their config, a rebuilt
        // library) as long as they declare the same routes.
        if let Some(problem) = routes_changed(&previous, &next) {
            next.retire_beside(&previous, self.shutdown_timeout).await;
            return Err(vec![problem]);
        }
        // Every instance of the next generation answers its health check before it serves.
        let unhealthy: Vec<String> = next
            .health()
            .await
            .into_iter()
            .filter_map(|(m, r)| r.err().map(|e| format!("{}: {} is not healthy: {e}", m.key, m.implementation)))
            .collect();
        if !unhealthy.is_empty() {
            next.retire_beside(&previous, self.shutdown_timeout).await;
            return Err(unhealthy);
        }
        // A replaced conversation manager: the previous one stops its loops first (they store
        // their state), then the new one serves, and the live sockets subscribe to it (they
        // start the conversation again there: it resumes from the stores, a message left
        // unanswered included).
        let manager_replaced = previous.manager_fingerprint() != next.manager_fingerprint();
        if manager_replaced {
            previous.shutdown_manager(self.shutdown_timeout).await;
        }
        let retired = app.switch(next.clone());
        if manager_replaced {
            app.manager_replaced();
        }
        let deadline = self.shutdown_timeout;
        tokio::spawn(async move {
            // Requests that hold the retired generation finish on it; then what only it held
            // is shut down (its libraries stay loaded: they are never unloaded).
            let waited = tokio::time::Instant::now();
            while Arc::strong_count(&retired) > 1 && waited.elapsed() < Duration::from_secs(300) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            retired.retire_beside(&next, deadline).await;
        });
        Ok(changes)
    }

    /// `[server]` keys that differ from those the process started with.
    fn fixed_server_keys(&self) -> Result<Vec<String>, Vec<String>> {
        let now = server_table(&self.path).map_err(|e| vec![e])?;
        let mut keys: Vec<&String> = now.keys().chain(self.server_table.keys()).collect();
        keys.sort();
        keys.dedup();
        let changed: Vec<&str> =
            keys.into_iter().filter(|k| now.get(*k) != self.server_table.get(*k)).map(String::as_str).collect();
        if changed.is_empty() {
            return Ok(Vec::new());
        }
        Ok(vec![format!(
            "[server] {} changed: the server's keys are set at start (listeners, paths, limits); restart the server for them, or put them back to reload the rest",
            changed.join(", ")
        )])
    }
}

/// Why the next generation's routes cannot be served by the router built at start, if so.
fn routes_changed(previous: &Registry, next: &Registry) -> Option<String> {
    let shape = |r: &Registry| -> Result<Vec<String>, Vec<String>> {
        let mounted = crate::http::plugin_routes::collect(r)?;
        Ok(mounted
            .iter()
            .map(|m| format!("{} {:?} {} (authenticated: {})", m.instance, m.method, m.path, m.authenticated))
            .collect())
    };
    match (shape(previous), shape(next)) {
        (_, Err(problems)) => Some(problems.join("; ")),
        (Ok(before), Ok(after)) if before != after => Some(format!(
            "routes changed (the routes plugins now declare {after:?}, the server was started with {before:?}): the router is built at start; restart the server for new routes"
        )),
        _ => None,
    }
}

fn diff(previous: &Registry, next: &Registry, generation: u64) -> Changes {
    let entry = |m: &crate::registry::Meta| (m.key.trim_end_matches(" (bundled default)").to_owned(), m.fingerprint());
    let before: Vec<(String, String)> = previous.metas().into_iter().map(entry).collect();
    let after: Vec<(String, String)> = next.metas().into_iter().map(entry).collect();
    let mut changes = Changes { generation, ..Changes::default() };
    for (key, print) in &after {
        match before.iter().find(|(k, _)| k == key) {
            None => changes.added.push(key.clone()),
            Some((_, p)) if p == print => changes.unchanged.push(key.clone()),
            Some(_) => changes.replaced.push(key.clone()),
        }
    }
    changes.removed =
        before.iter().filter(|(k, _)| !after.iter().any(|(a, _)| a == k)).map(|(k, _)| k.clone()).collect();
    changes
}

/// The `SIGHUP` stream, made early (before the server says it listens) so that a hangup is
/// never the default action, which would end the process.
static HANGUPS: std::sync::Mutex<Option<tokio::signal::unix::Signal>> = std::sync::Mutex::new(None);

/// Starts catching `SIGHUP` (in a tokio runtime); [`hangups`] hands the stream over.
pub fn catch_hangups() {
    let mut slot = HANGUPS.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_none() {
        *slot = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    }
}

/// The `SIGHUP` stream, caught from now on if it was not yet.
pub fn hangups() -> Option<tokio::signal::unix::Signal> {
    catch_hangups();
    HANGUPS.lock().unwrap_or_else(|e| e.into_inner()).take()
}
