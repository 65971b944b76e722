//! Server-side sessions in Redis, as the enterprise document says: the `keycloak_auth` cookie
//! names a session (`sid`), and a cookie is honoured only while its session is in Redis. So a
//! sign-out, "sign out everywhere" and an operator's revoke (`oh-host sessions revoke USER`)
//! take effect on every host at the next request.
//!
//! Keys: `{prefix}session:{sid}` holds the user id (expires with the session);
//! `{prefix}user_sessions:{user}` the set of that user's session ids.
//!
//! While Redis is unreachable, cookie sessions fail closed: 503 (the cookie is kept, the
//! browser retries), never a revoked session honoured. API keys do not depend on Redis.

use crate::redis_conn::Redis;
use plugin_sdk::PluginError;

pub(crate) struct Sessions {
    redis: Redis,
    prefix: String,
    ttl_secs: u64,
}

fn unavailable(reason: String) -> PluginError {
    PluginError::unavailable(format!(
        "sign-in sessions are kept in Redis, which did not answer ({reason}); nothing was changed: try again shortly"
    ))
}

impl Sessions {
    pub(crate) fn new(redis: Redis, prefix: String, ttl_secs: u64) -> Sessions {
        Sessions { redis, prefix, ttl_secs }
    }

    fn session_key(&self, sid: &str) -> String {
        format!("{}session:{sid}", self.prefix)
    }

    fn user_key(&self, user: &str) -> String {
        format!("{}user_sessions:{user}", self.prefix)
    }

    /// A new session of `user`: its id (for the cookie).
    pub(crate) async fn start(&self, user: &str) -> Result<String, PluginError> {
        let mut bytes = [0u8; 24];
        getrandom::getrandom(&mut bytes).map_err(|e| PluginError::internal(format!("no randomness: {e}")))?;
        let sid: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let pipe = redis::pipe()
            .set_ex(self.session_key(&sid), user, self.ttl_secs)
            .ignore()
            .sadd(self.user_key(user), &sid)
            .ignore()
            .expire(self.user_key(user), self.ttl_secs as i64)
            .ignore()
            .to_owned();
        self.redis.query_waiting::<()>(pipe).await.map_err(unavailable)?;
        Ok(sid)
    }

    /// The user whose live session `sid` is; `None` once it was signed out or revoked.
    pub(crate) async fn user_of(&self, sid: &str) -> Result<Option<String>, PluginError> {
        let pipe = redis::pipe().get(self.session_key(sid)).to_owned();
        let (user,): (Option<String>,) = self.redis.query_waiting(pipe).await.map_err(unavailable)?;
        Ok(user)
    }

    /// Ends one session (a sign-out).
    pub(crate) async fn end(&self, sid: &str) -> Result<(), PluginError> {
        if let Some(user) = self.user_of(sid).await? {
            let pipe =
                redis::pipe().del(self.session_key(sid)).ignore().srem(self.user_key(&user), sid).ignore().to_owned();
            self.redis.query::<()>(pipe).await.map_err(unavailable)?;
        }
        Ok(())
    }

    /// Ends every session of `user` ("sign out everywhere", an operator's revoke): how many.
    pub(crate) async fn end_all(&self, user: &str) -> Result<usize, PluginError> {
        let pipe = redis::pipe().smembers(self.user_key(user)).to_owned();
        let (sids,): (Vec<String>,) = self.redis.query_waiting(pipe).await.map_err(unavailable)?;
        let mut pipe = redis::pipe();
        for sid in &sids {
            pipe.del(self.session_key(sid));
        }
        pipe.del(self.user_key(user)).ignore();
        // Each DEL says whether that session was still live (an expired one is not counted).
        let ended: Vec<u64> = self.redis.query(pipe).await.map_err(unavailable)?;
        Ok(ended.iter().sum::<u64>() as usize)
    }
}
