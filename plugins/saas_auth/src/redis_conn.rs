//! One Redis connection per instance, shared by the rate limiter and the sessions, that never
//! holds a request up: every call has a short deadline, and a lost connection is re-made by one
//! background task while calls fail fast. What a failure means is the caller's choice (the
//! limiter serves without a limit; sessions refuse).

use plugin_sdk::PluginError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

/// The deadline of one Redis call (and of connecting).
const REDIS_TIMEOUT: Duration = Duration::from_millis(300);

#[derive(Clone)]
pub(crate) struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    connection: Mutex<Option<ConnectionManager>>,
    connecting: AtomicBool,
    /// Whether a connection was ever made (after that, a lost one fails calls at once).
    connected_once: AtomicBool,
}

impl Redis {
    pub(crate) fn open(url: &str) -> Result<Redis, PluginError> {
        let client = redis::Client::open(url).map_err(|e| PluginError::invalid_config(format!("redis URL: {e}")))?;
        Ok(Redis {
            inner: Arc::new(Inner {
                client,
                connection: Mutex::new(None),
                connecting: AtomicBool::new(false),
                connected_once: AtomicBool::new(false),
            }),
        })
    }

    /// The current connection, without waiting: `None` starts (once) a background connect.
    fn connection(&self) -> Option<ConnectionManager> {
        let current = self.inner.connection.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if current.is_none() && !self.inner.connecting.swap(true, Ordering::AcqRel) {
            let inner = self.inner.clone();
            tokio::spawn(async move {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(REDIS_TIMEOUT))
                    .set_response_timeout(Some(REDIS_TIMEOUT))
                    .set_number_of_retries(1);
                let made = tokio::time::timeout(
                    REDIS_TIMEOUT * 3,
                    ConnectionManager::new_with_config(inner.client.clone(), config),
                )
                .await;
                match made {
                    Ok(Ok(c)) => {
                        *inner.connection.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
                        inner.connected_once.store(true, Ordering::Release);
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot connect to Redis"),
                    Err(_) => tracing::warn!("Redis did not answer the connection in time"),
                }
                // Let the next failure wait a little before trying again.
                tokio::time::sleep(Duration::from_millis(200)).await;
                inner.connecting.store(false, Ordering::Release);
            });
        }
        current
    }

    fn forget(&self) {
        *self.inner.connection.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Runs a pipeline within the deadline; why not, when Redis is not there.
    pub(crate) async fn query<T: redis::FromRedisValue>(&self, pipe: redis::Pipeline) -> Result<T, String> {
        let Some(mut c) = self.connection() else {
            return Err("not connected".to_owned());
        };
        match tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async::<T>(&mut c)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.forget();
                Err(e.to_string())
            }
            Err(_) => {
                self.forget();
                Err("timed out".to_owned())
            }
        }
    }

    /// Like [`Redis::query`], but waits (up to the deadline) for the first connection: for calls
    /// that must not fail just because nobody asked Redis anything yet. Once one was made, a
    /// lost connection fails at once (while a background task makes a new one).
    pub(crate) async fn query_waiting<T: redis::FromRedisValue>(&self, pipe: redis::Pipeline) -> Result<T, String> {
        let deadline = tokio::time::Instant::now() + REDIS_TIMEOUT * 3;
        while self.connection().is_none()
            && !self.inner.connected_once.load(Ordering::Acquire)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.query(pipe).await
    }
}
