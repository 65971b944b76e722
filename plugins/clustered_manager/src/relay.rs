//! Events and commands between nodes: events on one Redis pub/sub channel per conversation,
//! commands on one Redis stream per conversation.
//!
//! The owner publishes every event after storing it (stored ones carry their id) and every
//! live-only one (deltas, status), in order, from one publisher task. Each node holds one
//! pub/sub connection subscribed to the channels of the conversations its sockets follow
//! (a message reaches it as soon as Redis has it: no read to re-issue, no cursor per
//! conversation), and reads the command streams of conversations it owns with one blocking
//! `XREAD` (commands must not be lost while a node is away: a stream keeps them).
//!
//! A node hands stored events to its sockets strictly by id, each once: from the store's
//! last id when the first socket subscribed, an event that comes early (a user message
//! stored on this node while the owner's previous event is still on its way) waits, and a
//! missing one is read from the store. After Redis was away, every followed conversation
//! catches up from the store. The store is the truth; the stream is for speed.

use crate::node::{lock, Node};
use plugin_sdk::{host_calls::GetEvents, CallContext};
use redis::{streams::StreamReadReply, AsyncConnectionConfig};
use serde_json::{json, Value};
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::sync::mpsc;

/// How long one `XREAD` waits for commands; a newly owned conversation's stream joins the
/// read within this.
const BLOCK_MS: u64 = 100;
/// Relay delays kept for the report.
const LAG_SAMPLES: usize = 2048;

/// A followed conversation: its delivery order.
struct Follow {
    order: Arc<tokio::sync::Mutex<Order>>,
}

/// The stored events of a conversation as this node's sockets get them.
struct Order {
    /// The id the sockets get next.
    next: u64,
    /// Events that came before their turn.
    early: BTreeMap<u64, Value>,
    /// Whose conversation it is (the store is read as them).
    ctx: CallContext,
}

struct Outgoing {
    sid: String,
    event: String,
    sent_ms: u64,
}

pub(crate) struct Relay {
    outbox: mpsc::UnboundedSender<Outgoing>,
    inbox: Mutex<Option<mpsc::UnboundedReceiver<Outgoing>>>,
    events: Mutex<HashMap<String, Follow>>,
    commands: Mutex<HashMap<String, String>>,
    lag: Mutex<VecDeque<u64>>,
    /// Subscribes and unsubscribes on the event connection, while it is up.
    sink: Mutex<Option<redis::aio::PubSubSink>>,
    /// Held while the followed set and the channels subscribed change together, so that a
    /// conversation unfollowed and followed again at once stays subscribed.
    membership: tokio::sync::Mutex<()>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Relay {
    pub(crate) fn new() -> Relay {
        let (outbox, inbox) = mpsc::unbounded_channel();
        Relay {
            outbox,
            inbox: Mutex::new(Some(inbox)),
            events: Mutex::default(),
            commands: Mutex::default(),
            lag: Mutex::default(),
            sink: Mutex::default(),
            membership: tokio::sync::Mutex::new(()),
        }
    }

    /// Queues an event for the other nodes (in order with everything else published here).
    pub(crate) fn publish(&self, sid: &str, event: &Value) {
        let _ = self.outbox.send(Outgoing { sid: sid.to_owned(), event: event.to_string(), sent_ms: now_ms() });
    }

    /// Follows a conversation's events from now on (a socket on this node wants them): the
    /// sockets get stored events after the store's last one now (their replay has the rest).
    /// The channel is subscribed before the store is read, and what arrives meanwhile waits
    /// for the read (the order is held), so nothing stored after it is missed.
    pub(crate) async fn watch_events(&self, node: &Node, sid: &str, ctx: CallContext) {
        let order = Arc::new(tokio::sync::Mutex::new(Order { next: 0, early: BTreeMap::new(), ctx: ctx.clone() }));
        let mut setup = order.clone().lock_owned().await;
        {
            let _turn = self.membership.lock().await;
            if lock(&self.events).contains_key(sid) {
                return;
            }
            lock(&self.events).insert(sid.to_owned(), Follow { order });
            // Without a connection now, the subscriber subscribes every followed channel
            // when it connects, then catches each up from the store.
            if let Some(mut sink) = self.sink() {
                if let Err(e) = sink.subscribe(node.keys.events(sid)).await {
                    tracing::debug!(conversation_id = sid, error = %e, "cluster relay: subscribe failed");
                }
            }
        }
        let last = GetEvents { conversation_id: sid.to_owned(), start_id: 0, end_id: None, reverse: true, limit: 1 };
        setup.next = match node.services().call(ctx, last).await {
            Ok(page) => page.events.first().and_then(|e| e["id"].as_u64()).map_or(0, |id| id + 1),
            Err(_) => 0,
        };
    }

    pub(crate) async fn unwatch_events(&self, node: &Node, sid: &str) {
        let _turn = self.membership.lock().await;
        if lock(&self.events).remove(sid).is_none() {
            return;
        }
        if let Some(mut sink) = self.sink() {
            let _ = sink.unsubscribe(node.keys.events(sid)).await;
        }
    }

    fn sink(&self) -> Option<redis::aio::PubSubSink> {
        lock(&self.sink).clone()
    }

    /// Reads the conversation's commands sent since `since_ms` (server time): this node owns
    /// it from then.
    pub(crate) fn watch_commands(&self, sid: &str, since_ms: u64) {
        lock(&self.commands).insert(sid.to_owned(), format!("{since_ms}-0"));
    }

    pub(crate) fn unwatch_commands(&self, sid: &str) {
        lock(&self.commands).remove(sid);
    }

    /// `{samples, last, p50, p99, max}` of the delay from publish to relay, in ms.
    pub(crate) fn lag_report(&self) -> Value {
        let mut samples: Vec<u64> = lock(&self.lag).iter().copied().collect();
        if samples.is_empty() {
            return json!({ "samples": 0 });
        }
        let last = *samples.last().unwrap_or(&0);
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        json!({ "samples": samples.len(), "last": last, "p50": at(0.5), "p99": at(0.99), "max": at(1.0) })
    }

    /// The publisher: whatever is queued goes out in one pipeline, in order.
    pub(crate) fn start_publisher(&self, node: &Arc<Node>) -> tokio::task::JoinHandle<()> {
        let inbox = lock(&self.inbox).take();
        let weak = Arc::downgrade(node);
        tokio::spawn(async move {
            let Some(mut inbox) = inbox else { return };
            while let Some(first) = inbox.recv().await {
                let Some(node) = weak.upgrade() else { break };
                let mut batch = vec![first];
                while batch.len() < 256 {
                    match inbox.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let mut pipe = redis::pipe();
                for out in &batch {
                    // `node \t sent_ms \t event` (JSON text has no raw tab).
                    let message = format!("{}\t{}\t{}", node.id, out.sent_ms, out.event);
                    pipe.cmd("PUBLISH").arg(node.keys.events(&out.sid)).arg(message).ignore();
                }
                // Lost on a Redis outage: followers catch up from the store.
                let _ = node.kv.run::<()>(&pipe).await;
            }
        })
    }

    /// The event subscriber: one pub/sub connection, subscribed to every followed
    /// conversation's channel; on each (re)connection every followed conversation catches up
    /// from the store.
    pub(crate) fn start_subscriber(&self, node: &Arc<Node>) -> tokio::task::JoinHandle<()> {
        use futures_util::StreamExt as _;
        let weak = Arc::downgrade(node);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let Some(node) = weak.upgrade() else { break };
                let (mut sink, mut stream) = match node.kv.client.get_async_pubsub().await {
                    Ok(pubsub) => pubsub.split(),
                    Err(e) => {
                        tracing::debug!(error = %e, "cluster relay: no event connection");
                        drop(node);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                };
                let subscribed = {
                    let _turn = node.relay.membership.lock().await;
                    let channels: Vec<String> =
                        lock(&node.relay.events).keys().map(|sid| node.keys.events(sid)).collect();
                    let done = channels.is_empty() || sink.subscribe(channels).await.is_ok();
                    if done {
                        *lock(&node.relay.sink) = Some(sink);
                    }
                    done
                };
                if !subscribed {
                    drop(node);
                    tokio::time::sleep(backoff).await;
                    continue;
                }
                backoff = Duration::from_millis(100);
                node.relay.catch_up(&node).await;
                drop(node);
                while let Some(message) = stream.next().await {
                    let Some(node) = weak.upgrade() else { return };
                    node.relay.on_message(&node, &message).await;
                }
                // The connection is gone: subscribe again on a new one, and catch up.
                let Some(node) = weak.upgrade() else { break };
                *lock(&node.relay.sink) = None;
                drop(node);
                tokio::time::sleep(backoff).await;
            }
        })
    }

    async fn on_message(&self, node: &Arc<Node>, message: &redis::Msg) {
        let channel = message.get_channel_name();
        let Some((sid, true)) = node.keys.conversation_of(channel) else { return };
        let Ok(payload) = message.get_payload::<String>() else { return };
        let mut parts = payload.splitn(3, '\t');
        let (Some(from), Some(sent), Some(text)) = (parts.next(), parts.next(), parts.next()) else { return };
        if from == node.id {
            return; // published here: this node's sockets have it
        }
        if let Ok(sent) = sent.parse::<u64>() {
            let mut lag = lock(&self.lag);
            if lag.len() == LAG_SAMPLES {
                lag.pop_front();
            }
            lag.push_back(now_ms().saturating_sub(sent));
        }
        let Ok(event) = serde_json::from_str::<Value>(text) else { return };
        let sid = sid.to_owned();
        self.deliver(node, &sid, event).await;
    }

    /// The command reader: one blocking `XREAD` over the command streams of the
    /// conversations this node owns.
    pub(crate) fn start_reader(&self, node: &Arc<Node>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(node);
        tokio::spawn(async move {
            let mut connection: Option<redis::aio::MultiplexedConnection> = None;
            let mut catch_up = false;
            let mut backoff = Duration::from_millis(100);
            loop {
                let Some(node) = weak.upgrade() else { break };
                let (keys, ids) = node.relay.streams(&node);
                if keys.is_empty() {
                    drop(node);
                    tokio::time::sleep(Duration::from_millis(BLOCK_MS)).await;
                    continue;
                }
                if connection.is_none() {
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(Duration::from_secs(1)))
                        .set_response_timeout(Some(Duration::from_millis(BLOCK_MS) + Duration::from_secs(2)));
                    match node.kv.client.get_multiplexed_async_connection_with_config(&config).await {
                        Ok(c) => connection = Some(c),
                        Err(_) => {
                            catch_up = true;
                            drop(node);
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(1));
                            continue;
                        }
                    }
                }
                if catch_up {
                    node.relay.catch_up(&node).await;
                    catch_up = false;
                }
                let mut read = redis::cmd("XREAD");
                read.arg("COUNT").arg(500).arg("BLOCK").arg(BLOCK_MS).arg("STREAMS").arg(&keys).arg(&ids);
                let conn = connection.as_mut().expect("connected above");
                match read.query_async::<Option<StreamReadReply>>(conn).await {
                    Ok(reply) => {
                        backoff = Duration::from_millis(100);
                        if let Some(reply) = reply {
                            node.relay.dispatch(&node, reply).await;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cluster relay: read failed");
                        connection = None;
                        catch_up = true;
                        drop(node);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                }
            }
        })
    }

    /// The command streams to read and where each was left.
    fn streams(&self, node: &Node) -> (Vec<String>, Vec<String>) {
        let mut keys = Vec::new();
        let mut ids = Vec::new();
        for (sid, entry) in lock(&self.commands).iter() {
            keys.push(node.keys.commands(sid));
            ids.push(entry.clone());
        }
        (keys, ids)
    }

    async fn dispatch(&self, node: &Arc<Node>, reply: StreamReadReply) {
        for stream in reply.keys {
            let Some((sid, false)) = node.keys.conversation_of(&stream.key) else { continue };
            let sid = sid.to_owned();
            for entry in stream.ids {
                if let Some(cursor) = lock(&self.commands).get_mut(&sid) {
                    cursor.clone_from(&entry.id);
                } else {
                    continue; // no longer ours
                }
                let fields: HashMap<String, String> =
                    entry.map.keys().filter_map(|k| entry.get::<String>(k).map(|v| (k.clone(), v))).collect();
                node.on_command(&sid, &fields).await;
            }
        }
    }

    /// Hands an event to this node's sockets: a live-only one at once, a stored one in id
    /// order (see the module's documentation).
    pub(crate) async fn deliver(&self, node: &Node, sid: &str, event: Value) {
        let Some(id) = event["id"].as_u64() else {
            node.deliver_local(sid, &event);
            return;
        };
        let Some(order) = lock(&self.events).get(sid).map(|f| f.order.clone()) else { return };
        let mut order = order.lock().await;
        if id < order.next {
            return; // delivered already
        }
        order.early.insert(id, event);
        if order.early.contains_key(&order.next) {
            Self::flush(node, sid, &mut order);
            return;
        }
        // Something before it is missing: the store has it.
        let (from, to) = (order.next, id - 1);
        Self::fill(node, sid, &mut order, from, Some(to)).await;
        Self::flush(node, sid, &mut order);
    }

    /// Delivers the early events that are next in line.
    fn flush(node: &Node, sid: &str, order: &mut Order) {
        while let Some(event) = order.early.remove(&order.next) {
            node.deliver_local(sid, &event);
            order.next += 1;
        }
    }

    /// Delivers stored events `start..=end` (to the log's end when `None`) from the store.
    async fn fill(node: &Node, sid: &str, order: &mut Order, start: u64, end: Option<u64>) {
        let mut next = start;
        loop {
            let request =
                GetEvents { conversation_id: sid.to_owned(), start_id: next, end_id: end, reverse: false, limit: 500 };
            let page = match node.services().call(order.ctx.clone(), request).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(conversation_id = sid, error = %e, "cluster relay: cannot read missed events");
                    return;
                }
            };
            for event in page.events {
                let Some(id) = event["id"].as_u64() else { continue };
                next = id + 1;
                if id >= order.next {
                    order.early.insert(id, event);
                }
                Self::flush(node, sid, order);
            }
            if !page.has_more {
                return;
            }
        }
    }

    /// After Redis was away: every followed conversation, from the store.
    async fn catch_up(&self, node: &Node) {
        let followed: Vec<(String, Arc<tokio::sync::Mutex<Order>>)> =
            lock(&self.events).iter().map(|(sid, f)| (sid.clone(), f.order.clone())).collect();
        for (sid, order) in followed {
            let mut order = order.lock().await;
            let from = order.next;
            Self::fill(node, &sid, &mut order, from, None).await;
        }
    }
}

use agent_loop::session::Env as _;
