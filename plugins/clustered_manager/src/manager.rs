//! The `conversation_manager` entry points of a node: starts, user events, closes, what runs,
//! subscriptions, health, shutdown and the operators' `cluster` view.

use crate::{
    kv::{self, Keys, Kv},
    node::*,
    relay,
};
use agent_loop::{
    events,
    session::{self, Command, Env},
};

use plugin_sdk::{
    models::{AgentLoopInfo, StartRequest},
    CallContext, ErrorCode, EventSink, PluginError, Services,
};
use serde_json::{json, Value};
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

pub struct ClusteredConversationManager {
    pub(crate) node: Arc<Node>,
}

impl ClusteredConversationManager {
    pub(crate) fn new(services: Services, config_json: &str) -> Result<Self, PluginError> {
        let (cluster, config) = crate::config::parse(config_json)?;
        let clients = agent_loop::clients::Clients::new(
            services.app_mode() == plugin_sdk::AppMode::SAAS,
            config.llm_private_hosts_allowed.clone(),
        )?;
        let kv = Kv::new(&cluster.redis_url())?;
        let keys = Keys::new(&cluster.redis_key_prefix);
        let tools = config.tools(services.runtime());
        let node = Arc::new(Node {
            id: random_id(),
            relay: relay::Relay::new(),
            presence: Default::default(),
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
                expire_node: kv::expire_node_script(),
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
        // A host that only checks registers no node and takes over nothing.
        if plugin_sdk::read_only() {
            return;
        }
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
        node.run_session(ctx, request, llm, fence, since).await;
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
        let (content, images, stop) = match session::UserAction::parse(&event)? {
            session::UserAction::Message { content, image_urls } => (content, image_urls, false),
            session::UserAction::Stop => (String::new(), Vec::new(), true),
        };
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
            node.relay.unwatch_events(node, &sid).await;
        }
        let _ = node.kv.run::<()>(redis::pipe().hincr(node.keys.subs(&sid), &node.id, -1).ignore()).await;
        Ok(())
    }

    async fn health(&self) -> Result<String, PluginError> {
        let node = &self.node;
        let (pong,): (String,) = node.kv.run(redis::pipe().cmd("PING")).await?;
        let status = format!("node {}: {} conversations owned, Redis {pong}", node.id, lock(&node.owned).len());
        Ok(match node.clients.probe_deployment().await? {
            Some(llm) => format!("{status}; {llm}"),
            None => status,
        })
    }

    /// Hands every conversation over (each stores `stopped`, then another node resumes it at
    /// once), then leaves the cluster.
    async fn shutdown(&self) {
        if plugin_sdk::read_only() {
            return;
        }
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

    /// `/internal/cluster`: the nodes.
    async fn cluster(&self, _ctx: CallContext) -> Result<Value, PluginError> {
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
