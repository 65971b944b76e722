//! A node of the cluster: the conversations it owns (leases, fencing, its sessions), its
//! sockets, and its periodic work (renewing, reaping, resuming, idle close, heartbeats).

use crate::kv::{Keys, Kv};
use crate::{config::ClusterConfig, relay};
use agent_loop::{
    config::ManagerConfig,
    llm::LlmConfig,
    session::{Command, Env, Session, Shared},
};
use plugin_sdk::{
    host_calls::{AppendEvents, HostCall, LoadSettings, SessionEvent},
    models::{AgentLoopInfo, StartRequest},
    CallContext, ErrorCode, EventSink, PluginError, Services,
};
use redis::Script;
use serde_json::{json, Value};
use std::{
    collections::HashMap,
    sync::{atomic::AtomicU64, Arc, Mutex},
    time::Duration,
};

/// How many leases one renewal round trip carries: each is a short script, so Redis stays
/// free for other clients between batches; 1,000 conversations are four round trips.
const RENEW_BATCH: usize = 256;

/// A conversation this node owns.
pub(crate) struct Owned {
    pub(crate) session: Session,
    pub(crate) user: Option<String>,
    /// The lease's value, `"{node}:{fence}"`.
    pub(crate) lease: String,
    pub(crate) fence: u64,
    /// The conversation's entry in the `active` hash.
    pub(crate) active: String,
}

/// A socket on this node.
pub(crate) struct Sub {
    pub(crate) sink: EventSink,
}

pub(crate) struct Scripts {
    pub(crate) acquire: Script,
    pub(crate) renew: Script,
    pub(crate) release: Script,
    pub(crate) close: Script,
    pub(crate) limit: Script,
    pub(crate) due: Script,
    pub(crate) expire_node: Script,
}

pub(crate) struct Node {
    pub(crate) id: String,
    pub(crate) services: Services,
    pub(crate) config: ManagerConfig,
    pub(crate) cluster: ClusterConfig,
    pub(crate) clients: agent_loop::clients::Clients,
    /// The agent's tools, when a runtime is configured (workspaces under `workspace_root`,
    /// which every node should share).
    pub(crate) tools: Option<agent_loop::tools::ToolSetup>,
    pub(crate) kv: Kv,
    pub(crate) keys: Keys,
    pub(crate) scripts: Scripts,
    pub(crate) owned: Mutex<HashMap<String, Owned>>,
    pub(crate) subscribers: Mutex<HashMap<String, HashMap<u64, Sub>>>,
    pub(crate) subscription_of: Mutex<HashMap<u64, String>>,
    pub(crate) next_subscription: AtomicU64,
    pub(crate) relay: relay::Relay,
    /// The other nodes' presence connections, as this node last saw them.
    pub(crate) presence: crate::presence::Watch,
    pub(crate) tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    pub(crate) started_at: String,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn random_id() -> String {
    let mut bytes = [0u8; 6];
    let _ = getrandom::getrandom(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key of a user (single-user mode has none).
pub(crate) fn user_key(user: Option<&str>) -> &str {
    user.unwrap_or("-")
}

pub(crate) fn info(sid: &str) -> AgentLoopInfo {
    AgentLoopInfo {
        conversation_id: sid.to_owned(),
        url: Some(format!("/api/conversations/{sid}")),
        session_api_key: None,
        status: "RUNNING".to_owned(),
        runtime_status: Some("STATUS$READY".to_owned()),
    }
}

pub(crate) fn denied() -> PluginError {
    PluginError::new(ErrorCode::PERMISSION_DENIED, "conversation belongs to another user")
}

impl Env for Node {
    fn services(&self) -> &Services {
        &self.services
    }
    fn system_prompt(&self) -> &str {
        &self.config.system_prompt
    }
    fn clients(&self) -> &agent_loop::clients::Clients {
        &self.clients
    }
    async fn persist(
        &self,
        ctx: &CallContext,
        sid: &str,
        fence: Option<u64>,
        event: Value,
    ) -> Result<Value, PluginError> {
        self.store_and_publish(ctx, sid, fence, event).await
    }
    fn broadcast(&self, sid: &str, event: &Value) {
        self.deliver_local(sid, event);
        self.relay.publish(sid, event);
    }
    fn tools(&self) -> Option<&agent_loop::tools::ToolSetup> {
        self.tools.as_ref()
    }
}

impl Node {
    /// Stores an event (fenced when the owner stores it), then hands it to this node's
    /// sockets, the relay and the monitoring listeners.
    pub(crate) async fn store_and_publish(
        &self,
        ctx: &CallContext,
        sid: &str,
        fence: Option<u64>,
        mut event: Value,
    ) -> Result<Value, PluginError> {
        let request = AppendEvents { conversation_id: sid.to_owned(), events: vec![event.clone()], fence };
        let id = self.services.call(ctx.clone(), request).await?;
        event["id"] = id.into();
        self.relay.deliver(self, sid, event.clone()).await;
        self.relay.publish(sid, &event);
        if let Err(e) = self.services.call(ctx.clone(), SessionEvent { event: event.clone() }).await {
            tracing::debug!(hook = SessionEvent::METHOD, error = %e, "monitoring hook not delivered");
        }
        Ok(event)
    }

    /// Pushes an event to this node's sockets of the conversation, as it is (stored events
    /// come through the relay's ordering, `Relay::deliver`).
    pub(crate) fn deliver_local(&self, sid: &str, event: &Value) {
        let mut subscribers = lock(&self.subscribers);
        if let Some(subs) = subscribers.get_mut(sid) {
            subs.retain(|_, sub| sub.sink.send(event));
        }
    }

    pub(crate) fn local_subscribers(&self, sid: &str) -> usize {
        lock(&self.subscribers).get(sid).map_or(0, HashMap::len)
    }

    /// The conversation's `active` entry: who it belongs to.
    pub(crate) async fn active_user(&self, sid: &str) -> Result<Option<Option<String>>, PluginError> {
        let entry: Option<String> =
            self.kv.run(redis::pipe().hget(self.keys.active(), sid)).await.map(|(v,): (Option<String>,)| v)?;
        Ok(entry.map(|e| serde_json::from_str::<Value>(&e).ok().and_then(|v| v["user"].as_str().map(str::to_owned))))
    }

    pub(crate) fn active_entry(user: Option<&str>) -> String {
        json!({ "user": user }).to_string()
    }

    /// Starts a session this node just acquired; the future resolves once the session has
    /// stored its opening events ([`Session::opening`]).
    pub(crate) fn run_session(
        self: &Arc<Self>,
        ctx: CallContext,
        request: StartRequest,
        llm: LlmConfig,
        fence: u64,
        since_ms: u64,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let sid = request.conversation_id.clone();
        let user = ctx.user_id().map(str::to_owned);
        let session = Session::spawn(self.clone(), ctx, request, llm, Arc::new(Shared::new()), Some(fence));
        let opening = session.opening();
        let owned = Owned {
            session,
            lease: format!("{}:{fence}", self.id),
            active: Self::active_entry(user.as_deref()),
            user,
            fence,
        };
        lock(&self.owned).insert(sid.clone(), owned);
        self.relay.watch_commands(&sid, since_ms);
        opening
    }

    pub(crate) fn llm_config(&self, request: &StartRequest) -> Result<LlmConfig, PluginError> {
        let mut llm = LlmConfig::from_settings(&request.settings, &self.config.limits(), &|k| self.clients.env(k))
            .map_err(PluginError::invalid_argument)?;
        llm.tools = self.tools.is_some();
        self.clients.check(&llm)?;
        Ok(llm)
    }

    /// Takes the lease; `Some((fence, server time ms))` when this node got it.
    pub(crate) async fn acquire(&self, sid: &str, active: &str) -> Result<Option<(u64, u64)>, PluginError> {
        let ttl = self.cluster.lease_ttl_ms.to_string();
        let keys =
            [self.keys.lease(sid), self.keys.fence(sid), self.keys.leases(), self.keys.active(), self.keys.closed(sid)];
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let got: Option<(String, u64)> =
            self.kv.script(&self.scripts.acquire, &keys, &[&self.id, &ttl, sid, active]).await?;
        Ok(got.and_then(|(token, now)| token.parse::<u64>().ok().map(|t| (t, now))))
    }

    pub(crate) async fn release(&self, sid: &str, lease: &str, user: Option<&str>, mode: &str) {
        let keys = [
            self.keys.lease(sid),
            self.keys.leases(),
            self.keys.active(),
            self.keys.user(user_key(user)),
            self.keys.closed(sid),
        ];
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        if let Err(e) = self.kv.script::<i64>(&self.scripts.release, &keys, &[lease, sid, mode]).await {
            tracing::warn!(conversation_id = sid, error = %e.message, "cluster: cannot release a lease (it will expire)");
        }
    }

    /// Stops a conversation this node owns and gives it up (`close`: it ends; `handover`:
    /// another node resumes it at once).
    pub(crate) async fn stop_owned(&self, sid: &str, mode: &str) -> bool {
        let Some(owned) = lock(&self.owned).remove(sid) else { return false };
        self.relay.unwatch_commands(sid);
        let _ = owned.session.stop().await;
        self.release(sid, &owned.lease, owned.user.as_deref(), mode).await;
        if mode == "close" {
            let _ = self.kv.run::<()>(redis::pipe().del(self.keys.pending(sid)).ignore()).await;
        }
        true
    }

    /// A command from the conversation's command stream (this node owns it).
    pub(crate) async fn on_command(self: &Arc<Self>, sid: &str, fields: &HashMap<String, String>) {
        match fields.get("t").map(String::as_str) {
            Some("message") => {
                let _ = self.kv.run::<()>(redis::pipe().decr(self.keys.pending(sid), 1).ignore()).await;
                let content = fields.get("content").cloned().unwrap_or_default();
                let traceparent = fields.get("tp").cloned().unwrap_or_default();
                let event_id = fields.get("id").and_then(|id| id.parse().ok());
                let inbox = lock(&self.owned).get(sid).map(|o| {
                    o.session.shared.touch();
                    o.session.inbox.clone()
                });
                if let Some(inbox) = inbox {
                    let _ = inbox.send(Command::Answer { content, traceparent, event_id }).await;
                }
            }
            Some("stop") => {
                let handles =
                    lock(&self.owned).get(sid).map(|o| (o.session.inbox.clone(), o.session.interrupt.clone()));
                if let Some((inbox, interrupt)) = handles {
                    interrupt.notify_waiters();
                    let _ = inbox.send(Command::Stopped).await;
                }
            }
            Some("close") => {
                if fields.get("reason").is_some_and(|r| r == "too_many") {
                    self.broadcast(sid, &agent_loop::events::too_many_conversations());
                }
                self.stop_owned(sid, "close").await;
            }
            other => tracing::warn!(conversation_id = sid, command = ?other, "cluster: unknown command ignored"),
        }
    }

    /// Sends a command to the conversation's owner, wherever it runs.
    pub(crate) async fn command(&self, sid: &str, fields: &[(&str, &str)]) -> Result<(), PluginError> {
        let mut pipe = redis::pipe();
        pipe.cmd("XADD").arg(self.keys.commands(sid)).arg("MAXLEN").arg("~").arg(256).arg("*");
        for (k, v) in fields {
            pipe.arg(*k).arg(*v);
        }
        pipe.ignore().pexpire(self.keys.commands(sid), 3_600_000).ignore();
        self.kv.run::<()>(&pipe).await
    }

    // The background work of a node.

    /// Renews this node's leases; stops sessions the cluster closed, abandons those another
    /// node took (the store refuses their writes anyway).
    pub(crate) async fn renew(self: &Arc<Self>) {
        let owned: Vec<(String, String, String)> = {
            let mut owned = lock(&self.owned);
            owned.retain(|sid, o| {
                let over = o.session.is_finished();
                if over {
                    tracing::info!(conversation_id = %sid, fenced = o.session.shared.is_fenced(), "cluster: session over");
                }
                !over
            });
            owned.iter().map(|(sid, o)| (sid.clone(), o.lease.clone(), o.active.clone())).collect()
        };
        // A round trip per batch, not per conversation: renewing one at a time, a node with
        // hundreds of conversations on a loaded machine (or a Redis a millisecond away) took
        // longer than the lease, and its peers took over conversations it was running.
        let (ttl, leases, active_key) = (self.cluster.lease_ttl_ms.to_string(), self.keys.leases(), self.keys.active());
        for batch in owned.chunks(RENEW_BATCH) {
            let calls: Vec<(Vec<String>, Vec<String>)> = batch
                .iter()
                .map(|(sid, lease, active)| {
                    let keys = vec![self.keys.lease(sid), leases.clone(), active_key.clone(), self.keys.closed(sid)];
                    (keys, vec![lease.clone(), ttl.clone(), sid.clone(), active.clone()])
                })
                .collect();
            // Redis is away: the loops go on (nobody else can take the leases meanwhile).
            let Ok(answers) = self.kv.script_each::<i64>(&self.scripts.renew, &calls).await else { continue };
            for ((sid, _, _), answer) in batch.iter().zip(answers) {
                self.renewed(sid, answer);
            }
        }
    }

    /// Acts on the renewal script's answer for `sid`.
    fn renewed(self: &Arc<Self>, sid: &str, answer: i64) {
        match answer {
            1 => {}
            3 => tracing::info!(conversation_id = %sid, "cluster: Redis had lost this lease; restored"),
            2 => {
                let (node, sid) = (self.clone(), sid.to_owned());
                tokio::spawn(async move { node.stop_owned(&sid, "close").await });
            }
            _ => {
                tracing::warn!(conversation_id = %sid, "cluster: lease lost to another node; abandoning the session");
                if let Some(o) = lock(&self.owned).remove(sid) {
                    o.session.abandon();
                }
                self.relay.unwatch_commands(sid);
            }
        }
    }

    /// Takes over conversations whose lease expired or was handed over, and those of nodes
    /// whose presence connection is gone (`presence`).
    pub(crate) async fn reap(self: &Arc<Self>) {
        let confirm = Duration::from_millis(self.cluster.reaper_interval_ms);
        for dead in self.presence.dead(self, confirm).await {
            let keys = [self.keys.leases(), self.keys.nodes(), self.keys.node(&dead)];
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let prefix = self.keys.lease("");
            match self.kv.script::<i64>(&self.scripts.expire_node, &keys, &[&prefix, &dead]).await {
                Ok(n) => {
                    tracing::warn!(node = %dead, leases = n, "cluster: a node's Redis connection is gone; taking over its conversations")
                }
                Err(e) => {
                    tracing::warn!(node = %dead, error = %e.message, "cluster: cannot take over a dead node's leases")
                }
            }
        }
        let due: Vec<String> = match self.kv.script(&self.scripts.due, &[&self.keys.leases()], &["64"]).await {
            Ok(d) => d,
            Err(_) => return,
        };
        // At once, not one after another: a dead node's conversations are all due together,
        // and each resume waits on Redis and the stores (one after another, the last of 16
        // waited for the 15 before it: the failover bench's worst case).
        let mut resuming = tokio::task::JoinSet::new();
        for sid in due {
            if lock(&self.owned).contains_key(&sid) {
                continue;
            }
            let node = self.clone();
            resuming.spawn(async move {
                if let Err(e) = node.resume(&sid).await {
                    tracing::warn!(conversation_id = %sid, error = %e.message, "cluster: cannot resume a conversation");
                }
            });
        }
        while resuming.join_next().await.is_some() {}
    }

    /// Resumes a conversation from its stored history, if this node wins its lease.
    pub(crate) async fn resume(self: &Arc<Self>, sid: &str) -> Result<(), PluginError> {
        let Some((fence, since)) = self.acquire(sid, "").await? else { return Ok(()) };
        let user = self.active_user(sid).await?.flatten();
        let ctx = CallContext::new(&format!("resume-{sid}"), user.as_deref(), 0);
        let lease = format!("{}:{fence}", self.id);
        let settings = match self.services.call(ctx.clone(), LoadSettings {}).await {
            Ok(Some(s)) => s,
            other => {
                tracing::warn!(conversation_id = sid, answer = ?other.err(), "cluster: no settings to resume with; closing");
                self.release(sid, &lease, user.as_deref(), "close").await;
                return Ok(());
            }
        };
        let request = StartRequest { conversation_id: sid.to_owned(), settings, ..Default::default() };
        match self.llm_config(&request) {
            Ok(llm) => {
                tracing::info!(conversation_id = sid, fence, "cluster: resuming a conversation");
                drop(self.run_session(ctx, request, llm, fence, since));
            }
            Err(e) => {
                tracing::warn!(conversation_id = sid, error = %e.message, "cluster: settings cannot run the agent; closing");
                self.release(sid, &lease, user.as_deref(), "close").await;
            }
        }
        Ok(())
    }

    /// Closes conversations nobody watches (on any node) whose agent is quiet.
    pub(crate) async fn close_idle(self: &Arc<Self>) {
        let delay = self.config.close_delay();
        let idle: Vec<String> = lock(&self.owned)
            .iter()
            .filter(|(_, o)| o.session.shared.idle_for() >= delay && !o.session.shared.is_running())
            .map(|(sid, _)| sid.clone())
            .collect();
        for sid in idle {
            if self.watched_anywhere(&sid).await {
                continue;
            }
            tracing::info!(conversation_id = %sid, "closing idle conversation");
            self.stop_owned(&sid, "close").await;
        }
    }

    /// Whether a live socket on any living node follows the conversation (unknown: yes).
    pub(crate) async fn watched_anywhere(&self, sid: &str) -> bool {
        if self.local_subscribers(sid) > 0 {
            return true;
        }
        let Ok((counts,)): Result<(HashMap<String, i64>,), _> =
            self.kv.run(redis::pipe().hgetall(self.keys.subs(sid))).await
        else {
            return true;
        };
        for (node, count) in counts {
            if count <= 0 || node == self.id {
                continue;
            }
            let alive: Result<(bool,), _> = self.kv.run(redis::pipe().exists(self.keys.node(&node))).await;
            if alive.map_or(true, |(a,)| a) {
                return true;
            }
        }
        false
    }

    pub(crate) fn report(&self) -> Value {
        let leases: Vec<Value> = lock(&self.owned)
            .iter()
            .map(|(sid, o)| json!({ "conversation_id": sid, "fence": o.fence, "running": o.session.shared.is_running() }))
            .collect();
        json!({
            "id": self.id,
            "presence": crate::presence::name(&self.id),
            "started_at": self.started_at,
            "leases": leases,
            "subscriptions": lock(&self.subscription_of).len(),
            "relay_lag_ms": self.relay.lag_report(),
            "redis_error": self.kv.last_error(),
        })
    }

    pub(crate) async fn heartbeat(&self) {
        let ttl = self.cluster.heartbeat_ms * 3;
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(self.keys.node(&self.id)).arg(self.report().to_string()).arg("PX").arg(ttl).ignore();
        pipe.sadd(self.keys.nodes(), &self.id).ignore();
        let _ = self.kv.run::<()>(&pipe).await;
    }

    pub(crate) fn start_tasks(self: &Arc<Self>) {
        let every = |period: Duration, node: &Arc<Node>, work: fn(Arc<Node>) -> futures_pin::Work| {
            let weak = Arc::downgrade(node);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(node) = weak.upgrade() else { break };
                    work(node).await;
                }
            })
        };
        let ttl = self.cluster.lease_ttl();
        let tasks = vec![
            every(Duration::from_millis(self.cluster.heartbeat_ms), self, |n| {
                Box::pin(async move { n.heartbeat().await })
            }),
            every(ttl / 3, self, |n| Box::pin(async move { n.renew().await })),
            every(Duration::from_millis(self.cluster.reaper_interval_ms), self, |n| {
                Box::pin(async move { n.reap().await })
            }),
            every(self.config.cleanup_interval(), self, |n| Box::pin(async move { n.close_idle().await })),
            self.relay.start_publisher(self),
            self.relay.start_reader(self),
            self.relay.start_subscriber(self),
            crate::presence::start(self),
        ];
        lock(&self.tasks).extend(tasks);
    }
}

mod futures_pin {
    /// One round of a node's periodic work.
    pub(crate) type Work = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
}
