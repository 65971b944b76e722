//! Which nodes are alive, as their Redis connections tell: each node keeps one connection
//! named `oh-node-<id>` (`CLIENT SETNAME`) open. A node that dies (kill -9, a crash, its
//! machine gone) loses that connection at once, its kernel closing its sockets; a paused
//! process (SIGSTOP, a stall) keeps it. A peer that sees a node's connection gone for a
//! reaper tick takes that node's leases at once instead of waiting for them to expire. A
//! paused node is left to its leases' expiry, and fencing stops its writes after its
//! successor's, as before; a false alarm (the connection dropped by a network blip) is
//! safe for the same reason: the node finds its lease taken and abandons the conversation.

use crate::node::{lock, Node};
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// The connection name of node `id`.
pub(crate) fn name(id: &str) -> String {
    format!("oh-node-{id}")
}

/// Keeps this node's named connection open (reconnecting as needed) while the node lives.
pub(crate) fn start(node: &Arc<Node>) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(node);
    tokio::spawn(async move {
        let mut connection: Option<redis::aio::MultiplexedConnection> = None;
        loop {
            let Some(node) = weak.upgrade() else { break };
            let period = Duration::from_millis(node.cluster.heartbeat_ms);
            if connection.is_none() {
                let name = name(&node.id);
                let connect = async {
                    let mut c = node.kv.client.get_multiplexed_async_connection().await.ok()?;
                    redis::cmd("CLIENT").arg("SETNAME").arg(&name).query_async::<()>(&mut c).await.ok()?;
                    Some(c)
                };
                connection = tokio::time::timeout(Duration::from_secs(2), connect).await.ok().flatten();
                if connection.is_some() {
                    *lock(&node.presence.up_since) = Some(Instant::now());
                }
            }
            if let Some(c) = connection.as_mut() {
                let ping = tokio::time::timeout(Duration::from_secs(2), redis::cmd("PING").query_async::<()>(c)).await;
                if !matches!(ping, Ok(Ok(()))) {
                    connection = None;
                    *lock(&node.presence.up_since) = None;
                }
            }
            drop(node);
            tokio::time::sleep(if connection.is_some() { period } else { Duration::from_millis(100) }).await;
        }
    })
}

/// What this node has seen of the others' connections.
#[derive(Default)]
pub(crate) struct Watch {
    /// Nodes whose connection was missing, since when.
    absent: Mutex<HashMap<String, Instant>>,
    /// Since when this node's own presence connection is up.
    up_since: Mutex<Option<Instant>>,
}

impl Watch {
    /// The nodes whose connection has been gone for `confirm` or longer. Only nodes that
    /// announce a presence connection (their heartbeat says so) are judged: an older node in
    /// a rolling upgrade is left to its leases' expiry.
    ///
    /// A node judges nobody while Redis may have just restarted: every connection is new
    /// then, and the others' take a moment to come back. Its own connection up for two
    /// heartbeats says Redis did not restart since; a node that just started asks Redis how
    /// long it has been up instead (else a node restarted a moment ago, the only survivor
    /// old enough to judge being none, left a dead peer's conversations to lease expiry).
    pub(crate) async fn dead(&self, node: &Node, confirm: Duration) -> Vec<String> {
        let settled = Duration::from_millis(node.cluster.heartbeat_ms * 2);
        let up_since = *lock(&self.up_since);
        let judging = match up_since {
            None => false,
            Some(t) if t.elapsed() >= settled => true,
            // Others notice a restart within a heartbeat and a ping's timeout (2 s).
            Some(_) => redis_uptime(node).await.is_some_and(|up| up >= settled + Duration::from_secs(2)),
        };
        if !judging {
            lock(&self.absent).clear();
            return Vec::new();
        }
        // Without it (an ACL may forbid it) a dead node is left to its leases' expiry.
        let list: Option<(String,)> =
            node.kv.run_quiet(redis::pipe().cmd("CLIENT").arg("LIST").arg("TYPE").arg("normal")).await;
        let Some((list,)) = list else { return Vec::new() };
        let live: HashSet<&str> =
            list.lines().filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("name="))).collect();
        let members: Result<(Vec<String>,), _> = node.kv.run(redis::pipe().smembers(node.keys.nodes())).await;
        let Ok((members,)) = members else { return Vec::new() };
        let mut dead = Vec::new();
        for other in members.into_iter().filter(|m| *m != node.id) {
            let report: Result<(Option<String>,), _> = node.kv.run(redis::pipe().get(node.keys.node(&other))).await;
            let announced =
                report.ok().and_then(|(r,)| r).is_some_and(|r| r.contains(&format!("\"{}\"", name(&other))));
            let mut absent = lock(&self.absent);
            if !announced || live.contains(name(&other).as_str()) {
                absent.remove(&other);
                continue;
            }
            let since = *absent.entry(other.clone()).or_insert_with(Instant::now);
            if since.elapsed() >= confirm {
                absent.remove(&other);
                dead.push(other);
            }
        }
        dead
    }
}

/// How long Redis has been up (`INFO server`'s `uptime_in_seconds`); None when it cannot say.
async fn redis_uptime(node: &Node) -> Option<Duration> {
    let (info,): (String,) = node.kv.run_quiet(redis::pipe().cmd("INFO").arg("server")).await?;
    let seconds = info.lines().find_map(|l| l.strip_prefix("uptime_in_seconds:"))?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds))
}
