//! Rate limits in Redis: per user, fixed one-second and one-minute windows (OpenHands:
//! `10/second; 100/minute`); and per client address, failed sign-ins per minute (so keys
//! cannot be guessed at database speed).
//!
//! A limiter must not become an outage: when Redis refuses, hangs or is slow, requests are
//! served and the failure is logged and counted (`oh_rate_limit_redis_errors_total`). No lock
//! is held across a Redis call; every call has a short deadline; a lost connection is
//! re-established by one background task while requests go on without it.

use crate::redis_conn::Redis;
use plugin_sdk::{ErrorCode, PluginError};
use serde_json::json;

pub(crate) struct RateLimiter {
    redis: Redis,
    per_second: u64,
    per_minute: u64,
    failed_per_minute: u64,
    prefix: String,
}

/// Headers for the response.
pub(crate) type Headers = Vec<(String, String)>;

fn now() -> u64 {
    chrono::Utc::now().timestamp().max(0) as u64
}

impl RateLimiter {
    pub(crate) fn new(
        redis: Redis,
        per_second: u64,
        per_minute: u64,
        failed_per_minute: u64,
        prefix: String,
    ) -> RateLimiter {
        RateLimiter { redis, per_second, per_minute, failed_per_minute, prefix }
    }

    /// Runs a pipeline; `None` (logged, counted) when Redis is not there: served unlimited.
    async fn query<T: redis::FromRedisValue>(&self, pipe: redis::Pipeline) -> Option<T> {
        match self.redis.query(pipe).await {
            Ok(v) => Some(v),
            Err(reason) => {
                tracing::warn!(error = %reason, "rate limiter: Redis unavailable; serving without a limit");
                plugin_sdk::metric("oh_rate_limit_redis_errors_total", 1.0, &json!({}));
                None
            }
        }
    }

    /// Counts one request of `user`: headers to add, or `RateLimitError` (429) with
    /// `Retry-After` and `X-RateLimit-*`.
    pub(crate) async fn check(&self, user: &str) -> Result<Headers, PluginError> {
        if self.per_second == 0 && self.per_minute == 0 {
            return Ok(Vec::new());
        }
        let now = now();
        let sec_key = format!("{}rl:{user}:s:{now}", self.prefix);
        let min_key = format!("{}rl:{user}:m:{}", self.prefix, now / 60);
        let pipe = redis::pipe()
            .incr(&sec_key, 1)
            .expire(&sec_key, 2)
            .ignore()
            .incr(&min_key, 1)
            .expire(&min_key, 120)
            .ignore()
            .to_owned();
        let Some((second, minute)) = self.query::<(u64, u64)>(pipe).await else {
            return Ok(Vec::new());
        };
        let minute_reset = (now / 60 + 1) * 60;
        if self.per_second > 0 && second > self.per_second {
            return Err(limited(self.per_second, now + 1, 1, "Too many requests"));
        }
        if self.per_minute > 0 && minute > self.per_minute {
            return Err(limited(self.per_minute, minute_reset, minute_reset - now, "Too many requests"));
        }
        let (limit, used) = if self.per_minute > 0 { (self.per_minute, minute) } else { (self.per_second, second) };
        Ok(vec![
            ("X-RateLimit-Limit".to_owned(), limit.to_string()),
            ("X-RateLimit-Remaining".to_owned(), limit.saturating_sub(used).to_string()),
            ("X-RateLimit-Reset".to_owned(), minute_reset.to_string()),
        ])
    }

    fn failures_key(&self, address: &str) -> String {
        format!("{}authfail:{address}:{}", self.prefix, now() / 60)
    }

    /// Refuses (429) a client address that failed to sign in too often this minute, before its
    /// credentials cost a database query.
    pub(crate) async fn check_failures(&self, address: &str) -> Result<(), PluginError> {
        if self.failed_per_minute == 0 || address.is_empty() {
            return Ok(());
        }
        let pipe = redis::pipe().get(self.failures_key(address)).to_owned();
        let Some((failures,)) = self.query::<(Option<u64>,)>(pipe).await else { return Ok(()) };
        if failures.unwrap_or(0) >= self.failed_per_minute {
            let now = now();
            let reset = (now / 60 + 1) * 60;
            return Err(limited(
                self.failed_per_minute,
                reset,
                reset - now,
                "Too many failed sign-ins from this address; wait and retry",
            ));
        }
        Ok(())
    }

    /// Counts a failed sign-in of a client address.
    pub(crate) async fn count_failure(&self, address: &str) {
        if self.failed_per_minute == 0 || address.is_empty() {
            return;
        }
        let key = self.failures_key(address);
        let pipe = redis::pipe().incr(&key, 1).ignore().expire(&key, 120).ignore().to_owned();
        let _: Option<()> = self.query(pipe).await;
    }
}

fn limited(limit: u64, reset: u64, retry_after: u64, message: &str) -> PluginError {
    PluginError::new(ErrorCode::AUTH_RATE_LIMITED, message).with_details(&json!({
        "headers": {
            "Retry-After": retry_after.max(1).to_string(),
            "X-RateLimit-Limit": limit.to_string(),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": reset.to_string(),
        }
    }))
}
