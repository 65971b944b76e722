//! Per-user rate limits in Redis: fixed one-second and one-minute windows (OpenHands:
//! `10/second; 100/minute`). When Redis is down, requests are served and the failure is
//! logged and counted (`oh_rate_limit_redis_errors_total`): a limiter must not become an
//! outage.

use plugin_sdk::{ErrorCode, PluginError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde_json::json;
use std::time::Duration;
use tokio::sync::Mutex;

pub(crate) struct RateLimiter {
    client: Option<redis::Client>,
    connection: Mutex<Option<ConnectionManager>>,
    per_second: u64,
    per_minute: u64,
    prefix: String,
}

/// Headers for the response.
pub(crate) type Headers = Vec<(String, String)>;

const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

impl RateLimiter {
    pub(crate) fn new(url: &str, per_second: u64, per_minute: u64, prefix: String) -> Result<RateLimiter, PluginError> {
        let client = redis::Client::open(url).map_err(|e| PluginError::invalid_config(format!("redis URL: {e}")))?;
        Ok(RateLimiter { client: Some(client), connection: Mutex::new(None), per_second, per_minute, prefix })
    }

    async fn connection(&self) -> Result<ConnectionManager, String> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let client = self.client.clone().ok_or("no redis client")?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let c = tokio::time::timeout(REDIS_TIMEOUT * 2, ConnectionManager::new_with_config(client, config))
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Counts one request of `user`: headers to add, or `RateLimitError` (429) with
    /// `Retry-After` and `X-RateLimit-*`.
    pub(crate) async fn check(&self, user: &str) -> Result<Headers, PluginError> {
        if self.per_second == 0 && self.per_minute == 0 {
            return Ok(Vec::new());
        }
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let sec_key = format!("{}rl:{user}:s:{now}", self.prefix);
        let min_key = format!("{}rl:{user}:m:{}", self.prefix, now / 60);
        let counts: Result<(u64, u64), String> = async {
            let mut c = self.connection().await?;
            let q = redis::pipe()
                .incr(&sec_key, 1)
                .expire(&sec_key, 2)
                .ignore()
                .incr(&min_key, 1)
                .expire(&min_key, 120)
                .ignore()
                .to_owned();
            tokio::time::timeout(REDIS_TIMEOUT, q.query_async::<(u64, u64)>(&mut c))
                .await
                .map_err(|_| "timed out".to_owned())?
                .map_err(|e| e.to_string())
        }
        .await;
        let (second, minute) = match counts {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "rate limiter: Redis unavailable; serving without a limit");
                plugin_sdk::metric("oh_rate_limit_redis_errors_total", 1.0, &json!({}));
                *self.connection.lock().await = None;
                return Ok(Vec::new());
            }
        };
        let minute_reset = (now / 60 + 1) * 60;
        if self.per_second > 0 && second > self.per_second {
            return Err(limited(self.per_second, now + 1, 1));
        }
        if self.per_minute > 0 && minute > self.per_minute {
            return Err(limited(self.per_minute, minute_reset, minute_reset - now));
        }
        let (limit, used) = if self.per_minute > 0 { (self.per_minute, minute) } else { (self.per_second, second) };
        Ok(vec![
            ("X-RateLimit-Limit".to_owned(), limit.to_string()),
            ("X-RateLimit-Remaining".to_owned(), limit.saturating_sub(used).to_string()),
            ("X-RateLimit-Reset".to_owned(), minute_reset.to_string()),
        ])
    }
}

fn limited(limit: u64, reset: u64, retry_after: u64) -> PluginError {
    PluginError::new(ErrorCode::AUTH_RATE_LIMITED, "Too many requests").with_details(&json!({
        "headers": {
            "Retry-After": retry_after.max(1).to_string(),
            "X-RateLimit-Limit": limit.to_string(),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": reset.to_string(),
        }
    }))
}
