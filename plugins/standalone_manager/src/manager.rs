//! The manager: one task per running conversation in this process, the per-user limit, idle close, and the live events' subscribers.

use crate::config::Config;
use agent_loop::session::{self, Command, Env, Session, Shared};
use plugin_sdk::{
    host_calls::{AppendEvents, HostCall, SessionEvent},
    models::{AgentLoopInfo, StartRequest},
    CallContext, ErrorCode, EventSink, PluginError, Services,
};
use serde_json::{json, Value};
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::Instant,
};
use tokio::sync::mpsc;

pub struct StandaloneConversationManager {
    inner: Arc<Inner>,
}

struct Inner {
    services: Services,
    config: Config,
    /// The LLM clients: the deployment's endpoint, and users' own (public only in SaaS mode).
    clients: agent_loop::clients::Clients,
    /// The agent's tools, when a runtime is configured.
    tools: Option<agent_loop::tools::ToolSetup>,
    sessions: Mutex<HashMap<String, Session>>,
    /// Sessions told to stop whose final `stopped` state is not stored yet (by conversation:
    /// its user). They are still reported running: a status must never run ahead of what
    /// is stored. Left when that state is stored, or when the task ends without storing it.
    closing: Arc<Mutex<HashMap<String, Option<String>>>>,
    /// Subscribers by conversation, independent of whether its loop runs: a client may
    /// subscribe first and start the loop after.
    subscribers: Mutex<HashMap<String, HashMap<u64, EventSink>>>,
    subscription_owner: Mutex<HashMap<u64, String>>,
    next_subscription: AtomicU64,
    cleanup: OnceLock<tokio::task::JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    /// Stores an event (the store gives it its id), then pushes it to the subscribers and the
    /// monitoring listeners; answers the stored event.
    async fn store_and_push(&self, ctx: &CallContext, sid: &str, mut event: Value) -> Result<Value, PluginError> {
        let request = AppendEvents { conversation_id: sid.to_owned(), events: vec![event.clone()], fence: None };
        let id = self.services.call(ctx.clone(), request).await?;
        event["id"] = id.into();
        // A closing conversation's final state is stored: from now on it is not running,
        // before anyone is told it stopped.
        if event["observation"] == "agent_state_changed" && event["extras"]["agent_state"] == "stopped" {
            lock(&self.closing).remove(sid);
        }
        self.broadcast(sid, &event);
        self.monitor(ctx, SessionEvent { event: event.clone() }).await;
        Ok(event)
    }

    async fn monitor<C: HostCall<Answer = ()>>(&self, ctx: &CallContext, hook: C) {
        if let Err(e) = self.services.call(ctx.clone(), hook).await {
            tracing::debug!(hook = C::METHOD, error = %e, "monitoring hook not delivered");
        }
    }

    /// Pushes a payload to every subscriber of a conversation, forgetting the gone ones.
    fn broadcast(&self, sid: &str, event: &Value) {
        let mut subscribers = lock(&self.subscribers);
        if let Some(subs) = subscribers.get_mut(sid) {
            subs.retain(|_, sink| sink.send(event));
        }
    }

    fn has_subscribers(&self, sid: &str) -> bool {
        lock(&self.subscribers).get(sid).is_some_and(|s| !s.is_empty())
    }

    /// Stops a session: its task stores `stopped` and ends (aborted if it does not in time).
    /// The handle resolves when it is over; `None` when it was not running.
    fn stop(&self, sid: &str) -> Option<tokio::task::JoinHandle<()>> {
        let session = lock(&self.sessions).remove(sid)?;
        Some(self.closed(sid, session))
    }

    /// Stops `session` (already out of `sessions`), reporting it running until its task has
    /// stored its final event.
    fn closed(&self, sid: &str, session: Session) -> tokio::task::JoinHandle<()> {
        lock(&self.closing).insert(sid.to_owned(), session.user_id.clone());
        let ended = session.stop();
        let (closing, sid) = (self.closing.clone(), sid.to_owned());
        tokio::spawn(async move {
            let _ = ended.await;
            lock(&closing).remove(&sid);
        })
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

    /// Closes idle conversations: nobody connected, agent not running, quiet for `close_delay`.
    fn close_idle(&self) {
        let delay = self.config.close_delay();
        let idle: Vec<String> = lock(&self.sessions)
            .iter()
            .filter(|(sid, s)| s.shared.idle_for() >= delay && !s.shared.is_running() && !self.has_subscribers(sid))
            .map(|(sid, _)| sid.clone())
            .collect();
        for sid in idle {
            tracing::info!(conversation_id = %sid, "closing idle conversation");
            drop(self.stop(&sid));
        }
    }
}

impl StandaloneConversationManager {
    pub(crate) fn new(services: Services, config: Config) -> Result<Self, PluginError> {
        let clients = agent_loop::clients::Clients::new(
            services.app_mode() == plugin_sdk::AppMode::SAAS,
            config.llm_private_hosts_allowed.clone(),
        )?;
        let tools = config.tools(services.runtime());
        Ok(Self {
            inner: Arc::new(Inner {
                services,
                config,
                clients,
                tools,
                sessions: Mutex::new(HashMap::new()),
                closing: Arc::default(),
                subscribers: Mutex::new(HashMap::new()),
                subscription_owner: Mutex::new(HashMap::new()),
                next_subscription: AtomicU64::new(1),
                cleanup: OnceLock::new(),
            }),
        })
    }

    /// Starts the idle sweeper on first use (the plugin runtime is running by then).
    fn ensure_cleanup(&self) {
        let weak = Arc::downgrade(&self.inner);
        let interval = self.inner.config.cleanup_interval();
        self.inner.cleanup.get_or_init(|| {
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(interval).await;
                    match weak.upgrade() {
                        Some(inner) => inner.close_idle(),
                        None => break,
                    }
                }
            })
        });
    }
}

impl Env for Inner {
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
        _fence: Option<u64>,
        event: Value,
    ) -> Result<Value, PluginError> {
        self.store_and_push(ctx, sid, event).await
    }
    fn broadcast(&self, sid: &str, event: &Value) {
        Inner::broadcast(self, sid, event);
    }
    fn tools(&self) -> Option<&agent_loop::tools::ToolSetup> {
        self.tools.as_ref()
    }
}

fn same_user(a: &Option<String>, ctx: &CallContext) -> bool {
    a.as_deref() == ctx.user_id()
}

impl plugin_sdk::ConversationManager for StandaloneConversationManager {
    async fn maybe_start(&self, ctx: CallContext, request: StartRequest) -> Result<AgentLoopInfo, PluginError> {
        self.ensure_cleanup();
        let sid = request.conversation_id.clone();
        let user = ctx.user_id().map(str::to_owned);
        let mut llm = agent_loop::llm::LlmConfig::from_settings(&request.settings, &self.inner.config.limits(), &|k| {
            self.inner.clients.env(k)
        })
        .map_err(PluginError::invalid_argument)?;
        llm.tools = self.inner.tools.is_some();
        self.inner.clients.check(&llm)?;
        let opening = {
            let mut sessions = lock(&self.inner.sessions);
            if let Some(s) = sessions.get(&sid) {
                if s.user_id != user {
                    return Err(PluginError::new(ErrorCode::PERMISSION_DENIED, "conversation belongs to another user"));
                }
                return Ok(Inner::info(&sid));
            }
            // Per-user limit: close the least recently active until there is room.
            loop {
                let mine: Vec<(String, Instant)> = sessions
                    .iter()
                    .filter(|(_, s)| s.user_id == user)
                    .map(|(id, s)| (id.clone(), s.shared.last_active()))
                    .collect();
                if mine.len() < self.inner.config.max_concurrent_conversations {
                    break;
                }
                let Some((oldest, _)) = mine.into_iter().min_by_key(|(_, t)| *t) else { break };
                tracing::info!(conversation_id = %oldest, "closing the oldest conversation: too many at once");
                self.inner.broadcast(&oldest, &agent_loop::events::too_many_conversations());
                if let Some(session) = sessions.remove(&oldest) {
                    drop(self.inner.closed(&oldest, session));
                }
            }
            let shared = Arc::new(Shared::new());
            let session = Session::spawn(self.inner.clone(), ctx, request, llm, shared, None);
            let opening = session.opening();
            sessions.insert(sid.clone(), session);
            opening
        };
        // Answer once the initial message is stored: what the caller sends next comes after it.
        opening.await;
        Ok(Inner::info(&sid))
    }

    /// A user message is stored before this answers (acknowledged means stored), then queued
    /// for the agent; with [`session::QUEUE`] messages already waiting, the sender is told to
    /// retry (429). A stop interrupts the answer in progress at once.
    async fn send_event(&self, ctx: CallContext, conversation_id: String, event: Value) -> Result<(), PluginError> {
        let (inbox, interrupt, shared) = {
            let sessions = lock(&self.inner.sessions);
            let Some(session) = sessions.get(&conversation_id) else {
                return Err(PluginError::not_found(format!(
                    "no_conversation:{conversation_id}: the conversation is not running"
                )));
            };
            if !same_user(&session.user_id, &ctx) {
                return Err(PluginError::new(ErrorCode::PERMISSION_DENIED, "conversation belongs to another user"));
            }
            (session.inbox.clone(), session.interrupt.clone(), session.shared.clone())
        };
        shared.touch();
        let reserve = |inbox: mpsc::Sender<Command>| match inbox.try_reserve_owned() {
            Ok(permit) => Ok(permit),
            Err(mpsc::error::TrySendError::Full(_)) => Err(PluginError::new(
                ErrorCode::RESOURCE_EXHAUSTED,
                format!("{} messages are waiting for the agent already; retry shortly", session::QUEUE),
            )
            .with_details(&json!({ "headers": { "Retry-After": "1" } }))),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PluginError::not_found("the conversation has stopped")),
        };
        match session::UserAction::parse(&event)? {
            session::UserAction::Message { content, image_urls: images } => {
                let permit = reserve(inbox)?;
                let stored = self
                    .inner
                    .store_and_push(&ctx, &conversation_id, agent_loop::events::user_message(&content, &images))
                    .await?;
                let event_id = stored["id"].as_u64();
                permit.send(Command::Answer { content, traceparent: ctx.traceparent.to_string(), event_id });
                Ok(())
            }
            session::UserAction::Stop => {
                let permit = reserve(inbox)?;
                interrupt.notify_waiters();
                permit.send(Command::Stopped);
                Ok(())
            }
        }
    }

    async fn close(&self, ctx: CallContext, conversation_id: String) -> Result<bool, PluginError> {
        {
            let sessions = lock(&self.inner.sessions);
            match sessions.get(&conversation_id) {
                None => return Ok(false),
                Some(s) if !same_user(&s.user_id, &ctx) => {
                    return Err(PluginError::new(ErrorCode::PERMISSION_DENIED, "conversation belongs to another user"));
                }
                Some(_) => {}
            }
        }
        // Wait until its last event is stored: a caller may delete the conversation next.
        match self.inner.stop(&conversation_id) {
            Some(stopped) => {
                let _ = stopped.await;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn running(&self, ctx: CallContext, filter_ids: Vec<String>) -> Result<Vec<AgentLoopInfo>, PluginError> {
        let wanted = |id: &String, user: &Option<String>| {
            same_user(user, &ctx) && (filter_ids.is_empty() || filter_ids.contains(id))
        };
        let mut running: Vec<AgentLoopInfo> = lock(&self.inner.sessions)
            .iter()
            .filter(|(id, s)| wanted(id, &s.user_id))
            .map(|(id, _)| Inner::info(id))
            .collect();
        // Still storing their final event: running until that is stored.
        for (id, user) in lock(&self.inner.closing).iter() {
            if wanted(id, user) && !running.iter().any(|r| &r.conversation_id == id) {
                running.push(Inner::info(id));
            }
        }
        Ok(running)
    }

    async fn subscribe(&self, _ctx: CallContext, conversation_id: String, sink: EventSink) -> Result<u64, PluginError> {
        let id = self.inner.next_subscription.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.subscribers).entry(conversation_id.clone()).or_default().insert(id, sink);
        lock(&self.inner.subscription_owner).insert(id, conversation_id);
        Ok(id)
    }

    async fn unsubscribe(&self, _ctx: CallContext, subscription_id: u64) -> Result<(), PluginError> {
        if let Some(sid) = lock(&self.inner.subscription_owner).remove(&subscription_id) {
            let mut subscribers = lock(&self.inner.subscribers);
            if let Some(subs) = subscribers.get_mut(&sid) {
                subs.remove(&subscription_id);
                if subs.is_empty() {
                    subscribers.remove(&sid);
                }
            }
        }
        Ok(())
    }

    async fn health(&self) -> Result<String, PluginError> {
        let running = format!("{} conversations running", lock(&self.inner.sessions).len());
        Ok(match self.inner.clients.probe_deployment().await? {
            Some(llm) => format!("{running}; {llm}"),
            None => running,
        })
    }

    /// Stops every loop and waits until each has stored its `stopped` event (the host bounds
    /// the wait with its shutdown deadline).
    async fn shutdown(&self) {
        if let Some(cleanup) = self.inner.cleanup.get() {
            cleanup.abort();
        }
        let sids: Vec<String> = lock(&self.inner.sessions).keys().cloned().collect();
        let stopping: Vec<_> = sids.iter().filter_map(|sid| self.inner.stop(sid)).collect();
        for stopped in stopping {
            let _ = stopped.await;
        }
    }
}
