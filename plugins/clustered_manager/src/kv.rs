//! The cluster's state in Redis: key names, the connection, and the scripts that make each
//! ownership change atomic.
//!
//! Keys (all under the configured prefix `P`):
//! - `P lease:{c}`: the owner of conversation `c`, `"{node}:{fence}"`, with a TTL.
//! - `P fence:{c}`: the last fencing token given for `c`; tokens only grow, even across a
//!   Redis that lost its data (a token is at least the server's time in microseconds).
//! - `P leases`: sorted set of conversations by lease expiry (ms): what the reapers scan.
//! - `P active`: hash conversation → `{"user": …}`: conversations that should be running.
//! - `P user:{u}`: sorted set of a user's running conversations by start time (the limit).
//! - `P closed:{c}`: a short-lived tombstone: `c` was closed by the cluster (the limit, a
//!   close from another node); its owner stops instead of restoring its lease.
//! - `P ev:{c}`: stream of `c`'s live events (stored ones with their id, and deltas).
//! - `P cmd:{c}`: stream of commands for `c`'s owner (a stored message to answer, stop, close).
//! - `P pending:{c}`: user messages waiting for `c`'s owner (the queue bound).
//! - `P subs:{c}`: hash node → live sockets on that node (idle rule).
//! - `P node:{id}`: a node's heartbeat (its report, with a TTL); `P nodes`: their ids.

use plugin_sdk::{ErrorCode, PluginError};
use redis::{aio::ConnectionManager, Script};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

/// The deadline of one Redis command (and of connecting).
pub(crate) const TIMEOUT: Duration = Duration::from_millis(1000);

pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.to_owned() }
    }
    pub(crate) fn lease(&self, c: &str) -> String {
        format!("{}lease:{c}", self.prefix)
    }
    pub(crate) fn fence(&self, c: &str) -> String {
        format!("{}fence:{c}", self.prefix)
    }
    pub(crate) fn leases(&self) -> String {
        format!("{}leases", self.prefix)
    }
    pub(crate) fn active(&self) -> String {
        format!("{}active", self.prefix)
    }
    pub(crate) fn user(&self, u: &str) -> String {
        format!("{}user:{u}", self.prefix)
    }
    pub(crate) fn closed(&self, c: &str) -> String {
        format!("{}closed:{c}", self.prefix)
    }
    pub(crate) fn events(&self, c: &str) -> String {
        format!("{}ev:{c}", self.prefix)
    }
    pub(crate) fn commands(&self, c: &str) -> String {
        format!("{}cmd:{c}", self.prefix)
    }
    pub(crate) fn pending(&self, c: &str) -> String {
        format!("{}pending:{c}", self.prefix)
    }
    pub(crate) fn subs(&self, c: &str) -> String {
        format!("{}subs:{c}", self.prefix)
    }
    pub(crate) fn node(&self, id: &str) -> String {
        format!("{}node:{id}", self.prefix)
    }
    pub(crate) fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }
    /// The conversation id in an event channel (`P ev:{c}`) or command stream (`P cmd:{c}`)
    /// of ours, and whether it is the event channel.
    pub(crate) fn conversation_of<'a>(&self, stream: &'a str) -> Option<(&'a str, bool)> {
        let rest = stream.strip_prefix(self.prefix.as_str())?;
        if let Some(c) = rest.strip_prefix("ev:") {
            return Some((c, true));
        }
        rest.strip_prefix("cmd:").map(|c| (c, false))
    }
}

/// `now_ms` and `now_us` from the server's clock, in a script.
const NOW: &str = "local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
";

/// Takes the lease of a conversation nobody holds. KEYS: lease, fence, leases, active,
/// closed. ARGV: node, ttl_ms, conversation, active entry (`""` when resuming: then the
/// conversation must still be active). Answers `{fence, now_ms}`, or nil when someone holds
/// it (or it is no longer active).
pub(crate) fn acquire_script() -> Script {
    Script::new(&format!(
        "{NOW}
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
if ARGV[4] == '' then
  if redis.call('HEXISTS', KEYS[4], ARGV[3]) == 0 or redis.call('EXISTS', KEYS[5]) == 1 then
    redis.call('ZREM', KEYS[3], ARGV[3])
    return false
  end
else
  redis.call('HSET', KEYS[4], ARGV[3], ARGV[4])
  redis.call('DEL', KEYS[5])
end
local f = redis.call('INCR', KEYS[2])
if f < now_us then f = now_us end
local token = string.format('%.0f', f)
redis.call('SET', KEYS[2], token)
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
redis.call('ZADD', KEYS[3], now_ms + tonumber(ARGV[2]), ARGV[3])
return {{token, now_ms}}"
    ))
}

/// Renews a held lease. KEYS: lease, leases, active, closed. ARGV: lease value, ttl_ms,
/// conversation, active entry. Answers 1 renewed, 3 restored (Redis had lost it: put back
/// with the same token), 2 closed by the cluster (stop), 0 another node holds it (lost).
pub(crate) fn renew_script() -> Script {
    Script::new(&format!(
        "{NOW}
if redis.call('EXISTS', KEYS[4]) == 1 then return 2 end
local v = redis.call('GET', KEYS[1])
local code = 1
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
  code = 3
elseif v ~= ARGV[1] then
  return 0
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[2]), ARGV[3])
return code"
    ))
}

/// Gives a lease up. KEYS: lease, leases, active, user set, closed. ARGV: lease value,
/// conversation, `handover` (another node takes it over at once) or `close` (it stops).
pub(crate) fn release_script() -> Script {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if ARGV[3] == 'close' then
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], ARGV[2])
  redis.call('ZREM', KEYS[4], ARGV[2])
else
  redis.call('ZADD', KEYS[2], 0, ARGV[2])
end
return 1",
    )
}

/// Marks a conversation closed by the cluster (its owner, wherever, stops). KEYS: active,
/// user set, closed. ARGV: conversation.
pub(crate) fn close_script() -> Script {
    Script::new(
        "redis.call('SET', KEYS[3], '1', 'PX', 60000)
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1",
    )
}

/// Counts a start against the user's limit, atomically across nodes. KEYS: user set,
/// active. ARGV: conversation, max, closed-key prefix. Conversations no longer active leave
/// the set; beyond `max`, the oldest others are closed (tombstoned, no longer active) and
/// returned for their owners to stop.
pub(crate) fn limit_script() -> Script {
    Script::new(&format!(
        "{NOW}
redis.call('ZADD', KEYS[1], now_ms, ARGV[1])
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('HEXISTS', KEYS[2], m) == 0 then redis.call('ZREM', KEYS[1], m) end
end
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[2])
local victims = {{}}
if over <= 0 then return victims end
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if over <= 0 then break end
  if m ~= ARGV[1] then
    table.insert(victims, m)
    redis.call('ZREM', KEYS[1], m)
    redis.call('HDEL', KEYS[2], m)
    redis.call('SET', ARGV[3] .. m, '1', 'PX', 60000)
    over = over - 1
  end
end
return victims"
    ))
}

/// A dead node's leases given up at once (`presence`): each conversation whose lease names the
/// node is due now. KEYS: leases, nodes, the node's key. ARGV: the lease keys' prefix, the
/// node. Answers how many.
pub(crate) fn expire_node_script() -> Script {
    Script::new(
        "local n = 0
local mine = ARGV[2] .. ':'
for _, sid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = ARGV[1] .. sid
  local v = redis.call('GET', key)
  if v and string.sub(v, 1, string.len(mine)) == mine then
    redis.call('DEL', key)
    redis.call('ZADD', KEYS[1], 0, sid)
    n = n + 1
  end
end
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[3])
return n",
    )
}

/// Conversations whose lease expired (or was handed over). KEYS: leases. ARGV: how many.
pub(crate) fn due_script() -> Script {
    Script::new(&format!(
        "{NOW}
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))"
    ))
}

/// The command connection: created on first use, then kept (it reconnects by itself); a
/// caller never waits longer than [`TIMEOUT`] for Redis.
pub(crate) struct Kv {
    pub(crate) client: redis::Client,
    connection: tokio::sync::Mutex<Option<ConnectionManager>>,
    last_error: Arc<Mutex<Option<String>>>,
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> PluginError {
    PluginError::new(
        ErrorCode::UNAVAILABLE,
        format!("Redis is unreachable ({e}): conversations cannot start or move between hosts until it is back"),
    )
}

impl Kv {
    pub(crate) fn new(url: &str) -> Result<Kv, PluginError> {
        let client = redis::Client::open(url).map_err(|e| PluginError::invalid_config(format!("redis_url: {e}")))?;
        Ok(Kv { client, connection: tokio::sync::Mutex::new(None), last_error: Arc::default() })
    }

    pub(crate) async fn conn(&self) -> Result<ConnectionManager, PluginError> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1);
        let made = tokio::time::timeout(TIMEOUT * 2, ConnectionManager::new_with_config(self.client.clone(), config))
            .await
            .map_err(|_| unavailable("no answer to the connection"))?
            .map_err(unavailable)?;
        *slot = Some(made.clone());
        Ok(made)
    }

    /// Runs one command or pipeline within the deadline.
    pub(crate) async fn run<T: redis::FromRedisValue>(&self, what: &redis::Pipeline) -> Result<T, PluginError> {
        let mut c = self.conn().await?;
        let answer = tokio::time::timeout(TIMEOUT, what.query_async::<T>(&mut c)).await;
        self.note(answer.map_err(|_| unavailable("timed out")).and_then(|r| r.map_err(unavailable)))
    }

    /// [`Kv::run`] for an optional check whose failure is not Redis being away (a
    /// `CLIENT LIST` an ACL forbids): not logged, not reported as the connection's error.
    pub(crate) async fn run_quiet<T: redis::FromRedisValue>(&self, what: &redis::Pipeline) -> Option<T> {
        let mut c = self.conn().await.ok()?;
        tokio::time::timeout(TIMEOUT, what.query_async::<T>(&mut c)).await.ok()?.ok()
    }

    pub(crate) async fn script<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<T, PluginError> {
        let mut c = self.conn().await?;
        let mut invocation = script.prepare_invoke();
        for k in keys {
            invocation.key(*k);
        }
        for a in args {
            invocation.arg(*a);
        }
        let answer = tokio::time::timeout(TIMEOUT, invocation.invoke_async::<T>(&mut c)).await;
        self.note(answer.map_err(|_| unavailable("timed out")).and_then(|r| r.map_err(unavailable)))
    }

    /// Runs `script` once per `(keys, args)` in `calls`, all in one round trip (the script
    /// loaded first in the same pipeline, so none finds it missing); the answers in order.
    /// Each run is atomic on its own, as with [`Kv::script`].
    pub(crate) async fn script_each<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        calls: &[(Vec<String>, Vec<String>)],
    ) -> Result<Vec<T>, PluginError> {
        let mut pipe = redis::pipe();
        pipe.load_script(script).ignore();
        for (keys, args) in calls {
            let mut invocation = script.prepare_invoke();
            for k in keys {
                invocation.key(k.as_str());
            }
            for a in args {
                invocation.arg(a.as_str());
            }
            pipe.invoke_script(&invocation);
        }
        self.run(&pipe).await
    }

    fn note<T>(&self, r: Result<T, PluginError>) -> Result<T, PluginError> {
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        match &r {
            Ok(_) => *last = None,
            Err(e) => {
                if last.is_none() {
                    tracing::warn!(error = %e.message, "cluster: Redis call failed");
                }
                *last = Some(e.message.to_string());
            }
        }
        r
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
