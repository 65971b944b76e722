//! Verified deliveries per source per minute (refused requests are counted apart, in the
//! audit log, so a flood of forged ones cannot crowd real ones out), counted in Redis (one
//! counter per source and minute, shared by every host). Fail-open: without Redis, deliveries
//! are taken (and the failure logged), since refusing them would lose nothing less than
//! taking them would.

use plugin_sdk::PluginError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::{sync::Arc, time::Duration};
use tokio::sync::Mutex;

/// The deadline of one Redis call (and of connecting).
const REDIS_TIMEOUT: Duration = Duration::from_millis(300);

pub(crate) struct Limiter {
    client: redis::Client,
    connection: Arc<Mutex<Option<ConnectionManager>>>,
    prefix: String,
    per_minute: u64,
}

impl Limiter {
    pub(crate) fn new(url: &str, prefix: String, per_minute: u64) -> Result<Limiter, PluginError> {
        let client = redis::Client::open(url).map_err(|e| PluginError::invalid_config(format!("redis URL: {e}")))?;
        Ok(Limiter { client, connection: Arc::default(), prefix, per_minute })
    }

    async fn connection(&self) -> Option<ConnectionManager> {
        let mut slot = self.connection.lock().await;
        if slot.is_none() {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(REDIS_TIMEOUT))
                .set_response_timeout(Some(REDIS_TIMEOUT))
                .set_number_of_retries(1);
            match tokio::time::timeout(
                REDIS_TIMEOUT * 3,
                ConnectionManager::new_with_config(self.client.clone(), config),
            )
            .await
            {
                Ok(Ok(c)) => *slot = Some(c),
                Ok(Err(e)) => tracing::warn!(error = %e, "webhook rate limit: cannot connect to Redis; not limiting"),
                Err(_) => tracing::warn!("webhook rate limit: Redis did not answer in time; not limiting"),
            }
        }
        slot.clone()
    }

    /// `Some(seconds to wait)` when `source` is over its limit this minute.
    pub(crate) async fn over(&self, source: &str) -> Option<u64> {
        if self.per_minute == 0 {
            return None;
        }
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let key = format!("{}webhooks:{source}:{}", self.prefix, now / 60);
        let mut c = self.connection().await?;
        let pipe = redis::pipe().incr(&key, 1u64).expire(&key, 120).ignore().to_owned();
        match tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async::<(u64,)>(&mut c)).await {
            Ok(Ok((count,))) if count > self.per_minute => Some(60 - now % 60),
            Ok(Ok(_)) => None,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "webhook rate limit: Redis failed; not limiting");
                *self.connection.lock().await = None;
                None
            }
            Err(_) => {
                tracing::warn!("webhook rate limit: Redis timed out; not limiting");
                *self.connection.lock().await = None;
                None
            }
        }
    }
}
