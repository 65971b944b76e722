//! `ClusteredConversationManager`: agent loops spread over any number of hosts sharing one
//! conversation store and one Redis (OpenHands' enterprise `ClusteredConversationManager`,
//! with ownership made safe).
//!
//! - **Ownership**: one node runs a conversation's loop, holding a lease in Redis with a
//!   fencing token; every event it stores carries the token, and the store refuses a lower
//!   one, so a node paused past its lease cannot write after its successor did.
//! - **Any node serves any conversation**: the owner publishes each event (stored ones with
//!   their id, and streaming deltas) to a Redis stream per conversation; other nodes relay it
//!   to their sockets, filling any gap from the store. A user message sent on another node is
//!   stored there (acknowledged means stored), then the owner is told through the
//!   conversation's command stream.
//! - **Failover**: every node's reaper takes over conversations whose lease expired (owner
//!   dead) or was handed over (owner shutting down), resuming them from the stored history.
//! - **Limits and idle** hold cluster-wide (Redis scripts; sockets counted per node).
//! - **Redis down**: running loops go on storing their events; starting a conversation
//!   answers 503; all resumes when Redis is back, including a Redis that lost its data.
//!
//! The agent itself is `agent_loop::session`, the same code the standalone manager runs.

mod config;
mod kv;
mod relay;

use agent_loop::{
    config::ManagerConfig,
    events,
    llm::LlmConfig,
    session::{self, Command, Env, Session, Shared},
};
use config::ClusterConfig;
use kv::{Keys, Kv};
use plugin_sdk::{
    host_calls::{AppendEvents, HostCall, LoadSettings, SessionEvent},
    models::{AgentLoopInfo, StartRequest},
    CallContext, ErrorCode, EventSink, PluginError, Registry, Services,
};
use redis::Script;
use serde_json::{json, Value};
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

pub struct ClusteredConversationManager {
    node: Arc<Node>,
}

/// A conversation this node owns.
struct Owned {
    session: Session,
    user: Option<String>,
    /// The lease's value, `"{node}:{fence}"`.
    lease: String,
    fence: u64,
    /// The conversation's entry in the `active` hash.
    active: String,
}

/// A socket on this node.
struct Sub {
    sink: EventSink,
}

struct Scripts {
    acquire: Script,
    renew: Script,
    release: Script,
    close: Script,
    limit: Script,
    due: Script,
}

pub(crate) struct Node {
    pub(crate) id: String,
    services: Services,
    config: ManagerConfig,
    cluster: ClusterConfig,
    clients: agent_loop::clients::Clients,
    /// The agent's tools, when a runtime is configured (workspaces under `workspace_root`,
    /// which every node should share).
    tools: Option<agent_loop::tools::ToolSetup>,
    pub(crate) kv: Kv,
    pub(crate) keys: Keys,
    scripts: Scripts,
    owned: Mutex<HashMap<String, Owned>>,
    subscribers: Mutex<HashMap<String, HashMap<u64, Sub>>>,
    subscription_of: Mutex<HashMap<u64, String>>,
    next_subscription: AtomicU64,
    pub(crate) relay: relay::Relay,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    started_at: String,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn random_id() -> String {
    let mut bytes = [0u8; 6];
    let _ = getrandom::getrandom(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key of a user (single-user mode has none).
fn user_key(user: Option<&str>) -> &str {
    user.unwrap_or("-")
}

fn info(sid: &str) -> AgentLoopInfo {
    AgentLoopInfo {
        conversation_id: sid.to_owned(),
        url: Some(format!("/api/conversations/{sid}")),
        session_api_key: None,
        status: "RUNNING".to_owned(),
        runtime_status: Some("STATUS$READY".to_owned()),
    }
}

fn denied() -> PluginError {
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
    async fn store_and_publish(
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

    fn local_subscribers(&self, sid: &str) -> usize {
        lock(&self.subscribers).get(sid).map_or(0, HashMap::len)
    }

    /// The conversation's `active` entry: who it belongs to.
    async fn active_user(&self, sid: &str) -> Result<Option<Option<String>>, PluginError> {
        let entry: Option<String> =
            self.kv.run(redis::pipe().hget(self.keys.active(), sid)).await.map(|(v,): (Option<String>,)| v)?;
        Ok(entry.map(|e| serde_json::from_str::<Value>(&e).ok().and_then(|v| v["user"].as_str().map(str::to_owned))))
    }

    fn active_entry(user: Option<&str>) -> String {
        json!({ "user": user }).to_string()
    }

    /// Starts a session this node just acquired.
    fn run_session(
        self: &Arc<Self>,
        ctx: CallContext,
        request: StartRequest,
        llm: LlmConfig,
        fence: u64,
        since_ms: u64,
    ) {
        let sid = request.conversation_id.clone();
        let user = ctx.user_id().map(str::to_owned);
        let session = Session::spawn(self.clone(), ctx, request, llm, Arc::new(Shared::new()), Some(fence));
        let owned = Owned {
            session,
            lease: format!("{}:{fence}", self.id),
            active: Self::active_entry(user.as_deref()),
            user,
            fence,
        };
        lock(&self.owned).insert(sid.clone(), owned);
        self.relay.watch_commands(&sid, since_ms);
    }

    fn llm_config(&self, request: &StartRequest) -> Result<LlmConfig, PluginError> {
        let mut llm = LlmConfig::from_settings(&request.settings, &self.config.limits(), &|k| plugin_sdk::env(k))
            .map_err(PluginError::invalid_argument)?;
        llm.tools = self.tools.is_some();
        self.clients.check(&llm)?;
        Ok(llm)
    }

    /// Takes the lease; `Some((fence, server time ms))` when this node got it.
    async fn acquire(&self, sid: &str, active: &str) -> Result<Option<(u64, u64)>, PluginError> {
        let ttl = self.cluster.lease_ttl_ms.to_string();
        let keys =
            [self.keys.lease(sid), self.keys.fence(sid), self.keys.leases(), self.keys.active(), self.keys.closed(sid)];
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let got: Option<(String, u64)> =
            self.kv.script(&self.scripts.acquire, &keys, &[&self.id, &ttl, sid, active]).await?;
        Ok(got.and_then(|(token, now)| token.parse::<u64>().ok().map(|t| (t, now))))
    }

    async fn release(&self, sid: &str, lease: &str, user: Option<&str>, mode: &str) {
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
    async fn stop_owned(&self, sid: &str, mode: &str) -> bool {
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
    async fn command(&self, sid: &str, fields: &[(&str, &str)]) -> Result<(), PluginError> {
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
    async fn renew(self: &Arc<Self>) {
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
        let ttl = self.cluster.lease_ttl_ms.to_string();
        for (sid, lease, active) in owned {
            let keys = [self.keys.lease(&sid), self.keys.leases(), self.keys.active(), self.keys.closed(&sid)];
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            match self.kv.script::<i64>(&self.scripts.renew, &keys, &[&lease, &ttl, &sid, &active]).await {
                Ok(1) => {}
                Ok(3) => tracing::info!(conversation_id = %sid, "cluster: Redis had lost this lease; restored"),
                Ok(2) => {
                    let node = self.clone();
                    tokio::spawn(async move { node.stop_owned(&sid, "close").await });
                }
                Ok(_) => {
                    tracing::warn!(conversation_id = %sid, "cluster: lease lost to another node; abandoning the session");
                    if let Some(o) = lock(&self.owned).remove(&sid) {
                        o.session.abandon();
                    }
                    self.relay.unwatch_commands(&sid);
                }
                // Redis is away: the loop goes on (nobody else can take the lease meanwhile).
                Err(_) => {}
            }
        }
    }

    /// Takes over conversations whose lease expired or was handed over.
    async fn reap(self: &Arc<Self>) {
        let due: Vec<String> = match self.kv.script(&self.scripts.due, &[&self.keys.leases()], &["16"]).await {
            Ok(d) => d,
            Err(_) => return,
        };
        for sid in due {
            if lock(&self.owned).contains_key(&sid) {
                continue;
            }
            if let Err(e) = self.resume(&sid).await {
                tracing::warn!(conversation_id = %sid, error = %e.message, "cluster: cannot resume a conversation");
            }
        }
    }

    /// Resumes a conversation from its stored history, if this node wins its lease.
    async fn resume(self: &Arc<Self>, sid: &str) -> Result<(), PluginError> {
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
                self.run_session(ctx, request, llm, fence, since);
            }
            Err(e) => {
                tracing::warn!(conversation_id = sid, error = %e.message, "cluster: settings cannot run the agent; closing");
                self.release(sid, &lease, user.as_deref(), "close").await;
            }
        }
        Ok(())
    }

    /// Closes conversations nobody watches (on any node) whose agent is quiet.
    async fn close_idle(self: &Arc<Self>) {
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
    async fn watched_anywhere(&self, sid: &str) -> bool {
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

    fn report(&self) -> Value {
        let leases: Vec<Value> = lock(&self.owned)
            .iter()
            .map(|(sid, o)| json!({ "conversation_id": sid, "fence": o.fence, "running": o.session.shared.is_running() }))
            .collect();
        json!({
            "id": self.id,
            "started_at": self.started_at,
            "leases": leases,
            "subscriptions": lock(&self.subscription_of).len(),
            "relay_lag_ms": self.relay.lag_report(),
            "redis_error": self.kv.last_error(),
        })
    }

    async fn heartbeat(&self) {
        let ttl = self.cluster.heartbeat_ms * 3;
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(self.keys.node(&self.id)).arg(self.report().to_string()).arg("PX").arg(ttl).ignore();
        pipe.sadd(self.keys.nodes(), &self.id).ignore();
        let _ = self.kv.run::<()>(&pipe).await;
    }

    fn start_tasks(self: &Arc<Self>) {
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
        ];
        lock(&self.tasks).extend(tasks);
    }
}

mod futures_pin {
    /// One round of a node's periodic work.
    pub(crate) type Work = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
}

impl ClusteredConversationManager {
    fn new(services: Services, config_json: &str) -> Result<Self, PluginError> {
        let (cluster, config) = config::parse(config_json)?;
        let clients =
            agent_loop::clients::Clients::new(services.app_mode() == "saas", config.llm_private_hosts_allowed.clone())?;
        let kv = Kv::new(&cluster.redis_url())?;
        let keys = Keys::new(&cluster.redis_key_prefix);
        let state_dir = services.state_dir().unwrap_or_else(|| std::path::PathBuf::from("."));
        let tools = config.tools(&services.app_mode(), &state_dir.display().to_string())?;
        let node = Arc::new(Node {
            id: random_id(),
            relay: relay::Relay::new(),
            services,
            config,
            cluster,
            clients,
            tools,
            kv,
            keys,
            scripts: Scripts {
                acquire: kv::acquire_script(),
                renew: kv::renew_script(),
                release: kv::release_script(),
                close: kv::close_script(),
                limit: kv::limit_script(),
                due: kv::due_script(),
            },
            owned: Mutex::default(),
            subscribers: Mutex::default(),
            subscription_of: Mutex::default(),
            next_subscription: AtomicU64::new(1),
            tasks: Mutex::default(),
            started_at: events::now(),
        });
        // The node works from the start: a quiet node must still take over a dead one's
        // conversations.
        plugin_sdk::enter_runtime(|| {
            if tokio::runtime::Handle::try_current().is_ok() {
                node.start_tasks();
            }
        });
        tracing::info!(node = %node.id, "cluster: node started");
        Ok(Self { node })
    }

    fn ensure_started(&self) {
        if lock(&self.node.tasks).is_empty() {
            self.node.start_tasks();
        }
    }
}

impl plugin_sdk::ConversationManager for ClusteredConversationManager {
    async fn maybe_start(&self, ctx: CallContext, request: StartRequest) -> Result<AgentLoopInfo, PluginError> {
        self.ensure_started();
        let node = &self.node;
        let sid = request.conversation_id.clone();
        let user = ctx.user_id().map(str::to_owned);
        if let Some(o) = lock(&node.owned).get(&sid) {
            return if o.user == user { Ok(info(&sid)) } else { Err(denied()) };
        }
        let llm = node.llm_config(&request)?;
        // Running elsewhere: that is the conversation's loop.
        if let Some(owner) = node.active_user(&sid).await? {
            let held: (bool,) = node.kv.run(redis::pipe().exists(node.keys.lease(&sid))).await?;
            if owner != user {
                return Err(denied());
            }
            if held.0 {
                return Ok(info(&sid));
            }
        }
        let Some((fence, since)) = node.acquire(&sid, &Node::active_entry(user.as_deref())).await? else {
            return Ok(info(&sid)); // another node won the race
        };
        let limit_keys = [node.keys.user(user_key(user.as_deref())), node.keys.active()];
        let limit_keys: Vec<&str> = limit_keys.iter().map(String::as_str).collect();
        let max = node.config.max_concurrent_conversations.to_string();
        let closed_prefix = node.keys.closed("");
        let victims: Vec<String> =
            node.kv.script(&node.scripts.limit, &limit_keys, &[&sid, &max, &closed_prefix]).await.unwrap_or_default();
        for victim in victims {
            tracing::info!(conversation_id = %victim, "closing the oldest conversation: too many at once");
            if lock(&node.owned).contains_key(&victim) {
                node.broadcast(&victim, &agent_loop::events::too_many_conversations());
                let n = node.clone();
                tokio::spawn(async move { n.stop_owned(&victim, "close").await });
            } else if let Err(e) = node.command(&victim, &[("t", "close"), ("reason", "too_many")]).await {
                tracing::warn!(conversation_id = %victim, error = %e.message, "cluster: cannot ask the owner to close");
            }
        }
        node.run_session(ctx, request, llm, fence, since);
        Ok(info(&sid))
    }

    /// A user message is stored before this answers (acknowledged means stored), by the
    /// owner when it runs here, else here and then handed to the owner.
    async fn send_event(&self, ctx: CallContext, conversation_id: String, event: Value) -> Result<(), PluginError> {
        self.ensure_started();
        let node = &self.node;
        let sid = conversation_id;
        let user = ctx.user_id().map(str::to_owned);
        let local = lock(&node.owned).get(&sid).map(|o| {
            o.session.shared.touch();
            (o.user.clone(), o.session.inbox.clone(), o.session.interrupt.clone(), o.fence)
        });
        let content = event["args"]["content"].as_str().unwrap_or_default().to_owned();
        let images: Vec<String> = event["args"]["image_urls"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let action = event["action"].as_str().map(str::to_owned);
        let stop = action.as_deref() == Some("change_agent_state") && event["args"]["agent_state"] == "stopped";
        if action.as_deref() != Some("message") && !stop {
            return Err(PluginError::invalid_argument(format!(
                "unsupported action `{}`: send a `message`, or `change_agent_state` to `stopped`",
                action.as_deref().unwrap_or("(none)")
            )));
        }
        if let Some((owner, inbox, interrupt, fence)) = local {
            if owner != user {
                return Err(denied());
            }
            let permit = inbox.try_reserve_owned().map_err(|_| queue_full())?;
            if stop {
                interrupt.notify_waiters();
                permit.send(Command::Stopped);
            } else {
                let stored =
                    node.store_and_publish(&ctx, &sid, Some(fence), events::user_message(&content, &images)).await?;
                let event_id = stored["id"].as_u64();
                permit.send(Command::Answer { content, traceparent: ctx.traceparent.to_string(), event_id });
            }
            return Ok(());
        }
        match node.active_user(&sid).await? {
            None => {
                return Err(PluginError::not_found(format!("no_conversation:{sid}: the conversation is not running")))
            }
            Some(owner) if owner != user => return Err(denied()),
            Some(_) => {}
        }
        if stop {
            return node.command(&sid, &[("t", "stop")]).await;
        }
        let pending: (i64,) = node
            .kv
            .run(redis::pipe().incr(node.keys.pending(&sid), 1).pexpire(node.keys.pending(&sid), 60_000).ignore())
            .await?;
        if pending.0 > session::QUEUE as i64 {
            let _ = node.kv.run::<()>(redis::pipe().decr(node.keys.pending(&sid), 1).ignore()).await;
            return Err(queue_full());
        }
        let stored = node.store_and_publish(&ctx, &sid, None, events::user_message(&content, &images)).await?;
        let id = stored["id"].as_u64().map(|id| id.to_string()).unwrap_or_default();
        node.command(&sid, &[("t", "message"), ("content", &content), ("tp", ctx.traceparent.as_str()), ("id", &id)])
            .await
    }

    async fn close(&self, ctx: CallContext, conversation_id: String) -> Result<bool, PluginError> {
        self.ensure_started();
        let node = &self.node;
        let sid = conversation_id;
        let user = ctx.user_id().map(str::to_owned);
        let local_owner = lock(&node.owned).get(&sid).map(|o| o.user.clone());
        if let Some(owner) = local_owner {
            if owner != user {
                return Err(denied());
            }
            // Its last event is stored when this returns: a caller may delete it next.
            return Ok(node.stop_owned(&sid, "close").await);
        }
        match node.active_user(&sid).await? {
            None => return Ok(false),
            Some(owner) if owner != user => return Err(denied()),
            Some(_) => {}
        }
        let keys = [node.keys.active(), node.keys.user(user_key(user.as_deref())), node.keys.closed(&sid)];
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        node.kv.script::<i64>(&node.scripts.close, &keys, &[&sid]).await?;
        node.command(&sid, &[("t", "close")]).await?;
        // The owner stores its last event, then drops the lease (a dead owner's expires).
        let deadline = Instant::now() + node.cluster.lease_ttl() + Duration::from_secs(2);
        while Instant::now() < deadline {
            let (held,): (bool,) = node.kv.run(redis::pipe().exists(node.keys.lease(&sid))).await?;
            if !held {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(true)
    }

    async fn running(&self, ctx: CallContext, filter_ids: Vec<String>) -> Result<Vec<AgentLoopInfo>, PluginError> {
        let node = &self.node;
        let user = ctx.user_id();
        let ids: Vec<String> = if filter_ids.is_empty() {
            match node.kv.run::<(Vec<String>,)>(redis::pipe().zrange(node.keys.user(user_key(user)), 0, -1)).await {
                Ok((ids,)) => ids,
                Err(_) => lock(&node.owned).keys().cloned().collect(),
            }
        } else {
            filter_ids
        };
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let entries: Vec<Option<String>> = match node
            .kv
            .run::<(Vec<Option<String>>,)>(redis::pipe().cmd("HMGET").arg(node.keys.active()).arg(&ids))
            .await
        {
            Ok((entries,)) => entries,
            // Redis is away: what this node runs.
            Err(_) => {
                let owned = lock(&node.owned);
                return Ok(ids
                    .iter()
                    .filter(|id| owned.get(*id).is_some_and(|o| o.user.as_deref() == user))
                    .map(|id| info(id))
                    .collect());
            }
        };
        Ok(ids
            .iter()
            .zip(entries)
            .filter_map(|(id, entry)| {
                let entry: Value = serde_json::from_str(&entry?).ok()?;
                (entry["user"].as_str() == user).then(|| info(id))
            })
            .collect())
    }

    async fn subscribe(&self, ctx: CallContext, conversation_id: String, sink: EventSink) -> Result<u64, PluginError> {
        self.ensure_started();
        let node = &self.node;
        let id = node.next_subscription.fetch_add(1, Ordering::Relaxed);
        lock(&node.subscribers).entry(conversation_id.clone()).or_default().insert(id, Sub { sink });
        lock(&node.subscription_of).insert(id, conversation_id.clone());
        node.relay.watch_events(node, &conversation_id, ctx).await;
        let _ = node.kv.run::<()>(redis::pipe().hincr(node.keys.subs(&conversation_id), &node.id, 1).ignore()).await;
        Ok(id)
    }

    async fn unsubscribe(&self, _ctx: CallContext, subscription_id: u64) -> Result<(), PluginError> {
        let node = &self.node;
        let Some(sid) = lock(&node.subscription_of).remove(&subscription_id) else { return Ok(()) };
        let last = {
            let mut subscribers = lock(&node.subscribers);
            let subs = subscribers.entry(sid.clone()).or_default();
            subs.remove(&subscription_id);
            let last = subs.is_empty();
            if last {
                subscribers.remove(&sid);
            }
            last
        };
        if last {
            node.relay.unwatch_events(&sid);
        }
        let _ = node.kv.run::<()>(redis::pipe().hincr(node.keys.subs(&sid), &node.id, -1).ignore()).await;
        Ok(())
    }

    async fn health(&self) -> Result<String, PluginError> {
        let node = &self.node;
        let (pong,): (String,) = node.kv.run(redis::pipe().cmd("PING")).await?;
        Ok(format!("node {}: {} conversations owned, Redis {pong}", node.id, lock(&node.owned).len()))
    }

    /// Hands every conversation over (each stores `stopped`, then another node resumes it at
    /// once), then leaves the cluster.
    async fn shutdown(&self) {
        let node = &self.node;
        let sids: Vec<String> = lock(&node.owned).keys().cloned().collect();
        let handovers: Vec<_> = sids.iter().map(|sid| node.stop_owned(sid, "handover")).collect();
        for h in handovers {
            h.await;
        }
        for task in lock(&node.tasks).drain(..) {
            task.abort();
        }
        let mut pipe = redis::pipe();
        pipe.del(node.keys.node(&node.id)).ignore().srem(node.keys.nodes(), &node.id).ignore();
        let _ = node.kv.run::<()>(&pipe).await;
    }

    /// `cluster` (`/internal/cluster`: the nodes), `workspace` (`{"conversation_id"}`: where
    /// its tools act, for the host's workspace routes; found on any node when the nodes share
    /// `workspace_root`).
    async fn admin(&self, _ctx: CallContext, command: String, args: Value) -> Result<Value, PluginError> {
        if command == "workspace" {
            return agent_loop::tools::ToolSetup::workspace_of(self.node.tools.as_ref(), &args);
        }
        if command != "cluster" {
            return Err(PluginError::new(ErrorCode::UNIMPLEMENTED, format!("no `{command}` command in this manager")));
        }
        let node = &self.node;
        let (ids,): (Vec<String>,) = node.kv.run(redis::pipe().smembers(node.keys.nodes())).await?;
        let mut nodes = Vec::new();
        for id in ids {
            let (report,): (Option<String>,) = node.kv.run(redis::pipe().get(node.keys.node(&id))).await?;
            match report.and_then(|r| serde_json::from_str::<Value>(&r).ok()) {
                Some(r) => nodes.push(r),
                None => {
                    let _ = node.kv.run::<()>(redis::pipe().srem(node.keys.nodes(), &id).ignore()).await;
                }
            }
        }
        nodes.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        Ok(json!({ "node": node.id, "lease_ttl_ms": node.cluster.lease_ttl_ms, "nodes": nodes }))
    }
}

fn queue_full() -> PluginError {
    PluginError::new(
        ErrorCode::RESOURCE_EXHAUSTED,
        format!("{} messages are waiting for the agent already; retry shortly", session::QUEUE),
    )
    .with_details(&json!({ "headers": { "Retry-After": "1" } }))
}

pub fn register(r: &mut Registry) {
    r.conversation_manager(
        "ClusteredConversationManager",
        "agent loops over several hosts: Redis leases with fencing, a gap-free relay, failover",
        |config, services| ClusteredConversationManager::new(services, config),
    );
}

plugin_sdk::export_plugin!(register);
