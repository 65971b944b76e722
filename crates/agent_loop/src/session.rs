//! One running conversation: a task that owns the history and answers one user message at a
//! time. User messages reach it already stored (the manager stores them before it answers the
//! sender), through a bounded queue; a stop interrupts the answer in progress at once.
//!
//! The same session runs in every manager: an [`Env`] is where it stores and publishes
//! (in process for the standalone manager; with a fencing token and a relay for a clustered
//! one). When the store refuses an append because a newer owner holds the conversation
//! (`CONFLICT` from a fenced append), the session ends at once without writing more.

use crate::{
    events::{self, Totals},
    llm::{self, ChatMessage, LlmConfig, LlmError, Progress},
    tools::{self, ToolCall},
};
use plugin_sdk::{
    host_calls::{Admit, AgentSessionStart, GetEvents, GetMetadata, HostCall, ReportLlmUsage, SaveMetadata},
    models::{Admission, ConversationMetadata, LlmUsage, StartRequest},
    CallContext, ErrorCode, PluginError, Services,
};
use serde_json::{json, Value};
use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};
use tokio::sync::{mpsc, watch};

/// Where a session stores and publishes: its manager.
pub trait Env: Send + Sync + 'static {
    fn services(&self) -> &Services;
    /// The system message that starts every history.
    fn system_prompt(&self) -> &str;
    /// The HTTP clients for the LLM.
    fn clients(&self) -> &crate::clients::Clients;
    /// Stores an event (the store gives it its id; with `fence`, only while this session
    /// still owns the conversation), then publishes it to subscribers and monitoring.
    fn persist(
        &self,
        ctx: &CallContext,
        sid: &str,
        fence: Option<u64>,
        event: Value,
    ) -> impl Future<Output = Result<Value, PluginError>> + Send;
    /// Pushes a live-only event (streaming deltas, status updates).
    fn broadcast(&self, sid: &str, event: &Value);
    /// The agent's tools, when the manager has a runtime. Default: none (a chat).
    fn tools(&self) -> Option<&crate::tools::ToolSetup> {
        None
    }
}

/// A user event a manager takes (`send_event`, a socket's `oh_user_action`): a message, or
/// a stop of the agent.
#[derive(Debug, PartialEq)]
pub enum UserAction {
    Message { content: String, image_urls: Vec<String> },
    Stop,
}

impl UserAction {
    /// OpenHands' `{"action": "message", "args": {"content", "image_urls"}}` or
    /// `{"action": "change_agent_state", "args": {"agent_state": "stopped"}}`.
    pub fn parse(event: &serde_json::Value) -> Result<UserAction, plugin_sdk::PluginError> {
        match event["action"].as_str() {
            Some("message") => Ok(UserAction::Message {
                content: event["args"]["content"].as_str().unwrap_or_default().to_owned(),
                image_urls: event["args"]["image_urls"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default(),
            }),
            Some("change_agent_state") if event["args"]["agent_state"] == "stopped" => Ok(UserAction::Stop),
            other => Err(plugin_sdk::PluginError::invalid_argument(format!(
                "unsupported action `{}`: send a `message`, or `change_agent_state` to `stopped`",
                other.unwrap_or("(none)")
            ))),
        }
    }
}

/// What the manager asks of a session's task.
pub enum Command {
    /// Answer this user message (already stored). `traceparent`: the trace of the request
    /// that sent it (the LLM call joins it), or empty.
    /// `event_id`: the stored message's id; a message already in the history the session
    /// loaded at its start was answered there, and is not answered twice.
    Answer { content: String, traceparent: String, event_id: Option<u64> },
    /// The user stopped the agent (`change_agent_state: stopped`): the answer in progress was
    /// interrupted; store the state.
    Stopped,
}

/// How many user messages may wait for an answer in one conversation; beyond that a sender
/// is told to retry later (429).
pub const QUEUE: usize = 64;

/// What the manager reads of a session without talking to its task.
pub struct Shared {
    last_active: Mutex<Instant>,
    running: AtomicBool,
    /// Set when the store refused an append: another node owns the conversation now.
    fenced: AtomicBool,
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

impl Shared {
    pub fn new() -> Self {
        Shared {
            last_active: Mutex::new(Instant::now()),
            running: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
        }
    }
    /// Whether the session ended because a newer owner took the conversation.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Relaxed)
    }
    pub fn touch(&self) {
        *self.last_active.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
    pub fn last_active(&self) -> Instant {
        *self.last_active.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn idle_for(&self) -> Duration {
        self.last_active().elapsed()
    }
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }
}

/// A running session, as its manager holds it.
pub struct Session {
    pub user_id: Option<String>,
    pub shared: Arc<Shared>,
    pub inbox: mpsc::Sender<Command>,
    /// Interrupts the answer in progress (a user's stop), not the session.
    pub interrupt: Arc<tokio::sync::Notify>,
    stop: watch::Sender<bool>,
    /// Becomes true once the session has stored its opening events.
    opened: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// The longest a start waits for the session's opening events to be stored.
const OPENING_WAIT: Duration = Duration::from_secs(10);

impl Session {
    /// Starts the session's task; `fence` is the owner's fencing token (clustered managers).
    pub fn spawn<E: Env>(
        env: Arc<E>,
        ctx: CallContext,
        request: StartRequest,
        llm: LlmConfig,
        shared: Arc<Shared>,
        fence: Option<u64>,
    ) -> Session {
        let (inbox, rx) = mpsc::channel(QUEUE);
        let (stop, stop_rx) = watch::channel(false);
        let (opened_tx, opened) = watch::channel(false);
        let interrupt = Arc::new(tokio::sync::Notify::new());
        let user_id = ctx.user_id().map(str::to_owned);
        let runner = Runner {
            sid: request.conversation_id.clone(),
            env,
            fence,
            trace: ctx.traceparent.to_string(),
            ctx,
            llm,
            shared: shared.clone(),
            messages: Vec::new(),
            totals: Totals::default(),
            stop: stop_rx,
            opened: opened_tx,
            interrupt: interrupt.clone(),
            workspace: None,
            max_iterations: request.settings.max_iterations.filter(|n| *n > 0).map(|n| n as usize),
        };
        let task = tokio::spawn(runner.run(request, rx));
        Session { user_id, shared, inbox, interrupt, stop, opened, task }
    }

    /// Resolves once the session has stored its opening events (its `loading` state and the
    /// initial message), or after [`OPENING_WAIT`]: a start that waits for it answers only
    /// when a message sent next is sure to be stored after the initial one.
    pub fn opening(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut opened = self.opened.clone();
        async move {
            let _ = tokio::time::timeout(OPENING_WAIT, opened.wait_for(|o| *o)).await;
        }
    }

    /// Asks the task to stop (it stores `stopped`, then ends); aborts it if it has not ended
    /// in 5 s. The handle resolves once the task is over, so a caller can wait for its last
    /// event to be stored.
    pub fn stop(self) -> tokio::task::JoinHandle<()> {
        let _ = self.stop.send(true);
        let task = self.task;
        tokio::spawn(async move {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
                abort.abort();
            }
        })
    }

    /// Ends the task at once, storing nothing more (the lease was lost: another node owns
    /// the conversation now).
    pub fn abandon(self) {
        self.task.abort();
    }

    /// Whether the task has ended (stopped, or fenced off).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// After one LLM call: call again (tools answered), or the turn is over.
enum Step {
    Again,
    Over,
}

struct Runner<E: Env> {
    sid: String,
    env: Arc<E>,
    fence: Option<u64>,
    ctx: CallContext,
    /// The trace the next LLM call joins (`traceparent`; empty: none).
    trace: String,
    llm: LlmConfig,
    shared: Arc<Shared>,
    messages: Vec<ChatMessage>,
    totals: Totals,
    stop: watch::Receiver<bool>,
    /// Told once the opening events are stored (see [`Session::opening`]).
    opened: watch::Sender<bool>,
    interrupt: Arc<tokio::sync::Notify>,
    /// Where the tools act, when the deployment has a runtime.
    workspace: Option<tools::Workspace>,
    /// The user's `max_iterations`, when their settings have one.
    max_iterations: Option<usize>,
}

/// A task aborted (its lease lost, or it would not stop): what runs in its workspace ends (its
/// files stay), in a task of its own since `drop` cannot wait.
impl<E: Env> Drop for Runner<E> {
    fn drop(&mut self) {
        let Some(ws) = self.workspace.take() else { return };
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        handle.spawn(async move {
            if let Err(e) = ws.runtime.close(ws.ctx.clone(), &ws.conversation_id).await {
                tracing::warn!(conversation_id = %ws.conversation_id, error = %e, "the runtime did not close the workspace");
            }
        });
    }
}

impl<E: Env> Runner<E> {
    async fn run(mut self, request: StartRequest, inbox: mpsc::Receiver<Command>) {
        self.serve(request, inbox).await;
        // Over: what runs in the workspace ends before the task does (a restart of the
        // conversation waits for the task). An aborted task closes it from `Drop`.
        if let Some(ws) = self.workspace.take() {
            if let Err(e) = ws.runtime.close(ws.ctx.clone(), &ws.conversation_id).await {
                tracing::warn!(conversation_id = %self.sid, error = %e, "the runtime did not close the workspace");
            }
        }
    }

    async fn serve(&mut self, request: StartRequest, mut inbox: mpsc::Receiver<Command>) {
        let started = Instant::now();
        // The opening events first, then the start may answer: a message a socket sends
        // next is stored after the initial one (else it could come first, be folded into the
        // history the initial message is answered with, and never be answered itself).
        self.persist(events::agent_state_changed("loading", "")).await;
        let initial = request.initial_user_msg.clone().filter(|m| !m.trim().is_empty());
        if let Some(message) = &initial {
            self.persist(events::user_message(message, &request.image_urls)).await;
        }
        let _ = self.opened.send(true);
        if let Some(setup) = self.env.tools() {
            let runtime = setup.runtime.clone();
            self.workspace = self.prepare(runtime, &request).await;
        }
        let history = self.load_history().await;
        let ok = history.is_ok();
        // The last stored event the history holds: messages up to it are answered below.
        let history_through = history.as_ref().ok().and_then(|h| h.iter().filter_map(|e| e["id"].as_u64()).max());
        let system_prompt = request.system_prompt.clone().unwrap_or_else(|| self.env.system_prompt().to_owned());
        self.messages = events::history(&system_prompt, history.as_deref().unwrap_or_default());
        if let Ok(Some(m)) = self.metadata().await {
            self.totals = Totals {
                cost: m.accumulated_cost,
                prompt_tokens: m.prompt_tokens,
                completion_tokens: m.completion_tokens,
                total_tokens: m.total_tokens,
            };
        }
        self.monitor(AgentSessionStart { success: ok, duration_secs: started.elapsed().as_secs_f64() }).await;
        if let Err(e) = history {
            tracing::error!(conversation_id = %self.sid, error = %e, "cannot load the conversation's history");
        }
        match initial {
            // The history ends with it, or with a message stored since: the reply answers
            // them (one stored after the history was read is answered in the loop below).
            Some(message) if ok && self.messages.last().is_some_and(|m| m.role == "user") => {
                self.maybe_title(&message).await;
                self.respond().await;
            }
            // Not in the history (it could not be read): answered alone.
            Some(message) => self.answer(&message).await,
            // A message stored but never answered (the host stopped, or died, in between) is
            // answered now: acknowledged means it will be.
            None if self.messages.last().is_some_and(|m| m.role == "user") => self.respond().await,
            None => self.set_state("awaiting_user_input").await,
        }
        loop {
            if self.shared.is_fenced() {
                return; // another node owns the conversation: nothing more is ours to store
            }
            let command = tokio::select! {
                c = inbox.recv() => c,
                _ = self.stop.changed() => None,
            };
            if *self.stop.borrow() {
                break;
            }
            match command {
                Some(Command::Answer { event_id: Some(id), .. }) if history_through.is_some_and(|last| id <= last) => {
                    // Stored while the session started: the loaded history had it already.
                    tracing::debug!(conversation_id = %self.sid, event_id = id, "a message in the loaded history is not answered again");
                }
                Some(Command::Answer { content, traceparent, .. }) => {
                    self.trace = traceparent;
                    self.answer(&content).await
                }
                Some(Command::Stopped) => {
                    if let Some(ws) = &self.workspace {
                        let _ = ws.runtime.interrupt(ws.ctx.clone(), &ws.conversation_id).await;
                    }
                    self.set_state("stopped").await
                }
                None => break,
            }
        }
        self.set_state("stopped").await;
    }

    /// Answers a user message (stored already): it joins the history, then the agent replies.
    async fn answer(&mut self, content: &str) {
        self.messages.push(ChatMessage::new("user", content));
        self.maybe_title(content).await;
        self.respond().await;
    }

    /// The agent's reply to the history: streamed live, stored when complete. A stop of the
    /// session or of the agent interrupts it at once.
    async fn respond(&mut self) {
        self.set_state("running").await;
        // One LLM call, or with tools as many as the calls need (each tool's result goes back
        // to the model), up to the iteration limit.
        let limit = match (&self.workspace, self.env.tools()) {
            (Some(_), Some(setup)) => self.max_iterations.unwrap_or(setup.max_iterations),
            _ => 1,
        };
        for _ in 0..limit {
            match self.step().await {
                Step::Again => continue,
                Step::Over => return,
            }
        }
        let text = format!(
            "The agent reached its limit of {limit} steps for one message (max_iterations) and stopped; send a message to go on."
        );
        self.fail("STATUS$ERROR", &text).await;
    }

    /// One LLM call and what it asked for.
    async fn step(&mut self) -> Step {
        if self.shared.is_fenced() {
            return Step::Over;
        }
        if let Some(refusal) = self.refused().await {
            self.fail("STATUS$ERROR_LLM_OUT_OF_CREDITS", &refusal).await;
            return Step::Over;
        }
        let env = self.env.clone();
        let sid = self.sid.clone();
        let mut seq = 0u64;
        let mut progress = move |p: Progress<'_>| match p {
            Progress::Delta(delta) => {
                env.broadcast(&sid, &events::streaming_delta(delta, seq));
                seq += 1;
            }
            Progress::Retry { attempt, wait, reason } => {
                let message = format!("LLM call failed ({reason}); retry {attempt} in {} ms", wait.as_millis());
                env.broadcast(&sid, &events::status_update("info", "STATUS$LLM_RETRY", &message));
            }
        };
        let mut stop = self.stop.clone();
        let interrupt = self.interrupt.clone();
        let trace = std::mem::take(&mut self.trace);
        let outcome = match self.env.clients().for_endpoint(self.llm.user_endpoint) {
            Ok(client) => tokio::select! {
                r = llm::complete(client, &self.llm, &self.messages, &trace, &mut progress) => Some(r),
                _ = stop.changed() => None,
                () = interrupt.notified() => None,
            },
            Err(why) => Some(Err(LlmError::Fatal(why))),
        };
        let completion = match outcome {
            None => return Step::Over, // stopped mid-answer: `run` stores `stopped` (a Stopped command follows)
            Some(Err(err)) => {
                let (id, text) = match &err {
                    LlmError::Auth(_) => ("STATUS$ERROR_LLM_AUTHENTICATION", err.to_string()),
                    LlmError::Retryable(_) => ("STATUS$ERROR_LLM_SERVICE_UNAVAILABLE", err.to_string()),
                    LlmError::Fatal(_) => ("STATUS$ERROR", err.to_string()),
                };
                self.fail(id, &text).await;
                return Step::Over;
            }
            Some(Ok(completion)) => completion,
        };
        self.totals.add(&completion);
        let calls: Vec<ToolCall> = completion.tool_calls.iter().filter(|c| !c.name.is_empty()).cloned().collect();
        let Some(workspace) = self.workspace.clone().filter(|_| !calls.is_empty()) else {
            self.messages.push(ChatMessage::new("assistant", &completion.content));
            let stored = self
                .persist(events::agent_message(
                    &completion,
                    &self.llm.display_model,
                    self.llm.context_window,
                    &self.totals,
                ))
                .await;
            self.report_usage(&completion, stored).await;
            self.update_metadata(|_| {}).await;
            self.set_state("awaiting_user_input").await;
            return Step::Over;
        };
        // The model's calls join the history as one assistant message; each call's result
        // follows as a `tool` message.
        let listed: Vec<Value> = calls
            .iter()
            .map(
                |c| json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": c.arguments } }),
            )
            .collect();
        self.messages.push(ChatMessage {
            tool_calls: Some(Value::Array(listed)),
            ..ChatMessage::new("assistant", &completion.content)
        });
        let limits = self.env.tools().map(|t| t.limits.clone()).expect("a workspace means tools");
        let mut finished = false;
        let mut first_stored = None;
        for (i, call) in calls.iter().enumerate() {
            let mut stop = self.stop.clone();
            let interrupt = self.interrupt.clone();
            let stopped = async move {
                tokio::select! {
                    _ = stop.changed() => {}
                    () = interrupt.notified() => {}
                }
            };
            let mut planned = tools::plan(call, calls.len());
            if i == 0 && !completion.content.is_empty() {
                planned.action["args"]["thought"] = Value::String(completion.content.clone());
            }
            if i == 0 {
                planned.action["llm_metrics"] =
                    events::llm_metrics(&completion, &self.llm.display_model, self.llm.context_window, &self.totals);
            }
            // Stored (and shown) before it runs; its observation follows.
            let action_id = self.persist(planned.action.clone()).await;
            first_stored = first_stored.or(action_id);
            let done = tools::perform(planned, &workspace, &limits, stopped).await;
            if let Some(mut observation) = done.observation {
                if let Some(id) = action_id {
                    observation["cause"] = id.into();
                }
                self.persist(observation).await;
            }
            self.messages
                .push(ChatMessage { tool_call_id: Some(call.id.clone()), ..ChatMessage::new("tool", &done.result) });
            finished |= done.finished;
            if *self.stop.borrow() || self.shared.is_fenced() {
                return Step::Over;
            }
        }
        self.report_usage(&completion, first_stored).await;
        self.update_metadata(|_| {}).await;
        if finished {
            self.set_state("finished").await;
            return Step::Over;
        }
        Step::Again
    }

    /// An LLM call's cost, to the monitoring listeners (billing debits it), keyed by the first
    /// event it produced.
    async fn report_usage(&self, completion: &llm::Completion, stored: Option<u64>) {
        let Some(event_id) = stored else { return };
        let usage = LlmUsage {
            conversation_id: self.sid.clone(),
            event_id,
            model: self.llm.display_model.clone(),
            cost: completion.cost,
            prompt_tokens: completion.usage.prompt_tokens,
            completion_tokens: completion.usage.completion_tokens,
        };
        self.monitor(ReportLlmUsage { usage }).await;
    }

    /// The conversation's workspace from the runtime: a new one holds the selected
    /// repository (cloned with the user's token for its provider) or an empty repository. A
    /// failed clone is told to the client; the agent works in an empty workspace then.
    async fn prepare(
        &mut self,
        runtime: plugin_sdk::RuntimeClient,
        request: &StartRequest,
    ) -> Option<tools::Workspace> {
        let metadata = self.metadata().await.ok().flatten();
        let repository = metadata.as_ref().and_then(|m| m.selected_repository.clone()).filter(|r| !r.is_empty());
        let repository = repository.map(|repository| {
            let m = metadata.as_ref().expect("a repository comes with its metadata");
            let provider = m.git_provider.clone().unwrap_or_else(|| "github".to_owned());
            let token = request.provider_tokens.get(&provider);
            plugin_sdk::models::RepositoryClone {
                repository,
                token: token.and_then(|t| t.token.clone()),
                host: token.and_then(|t| t.host.clone()),
                branch: m.selected_branch.clone(),
                provider,
            }
        });
        let open = plugin_sdk::models::WorkspaceRequest { conversation_id: self.sid.clone(), repository };
        match runtime.open(self.ctx.clone(), &open).await {
            Ok(info) => {
                if let Some(text) = &info.clone_error {
                    tracing::warn!(conversation_id = %self.sid, error = %text, "workspace not prepared");
                    self.env.broadcast(&self.sid, &events::status_update("error", "STATUS$ERROR", text));
                }
                Some(tools::Workspace {
                    runtime,
                    conversation_id: self.sid.clone(),
                    root: info.root,
                    ctx: self.ctx.clone(),
                })
            }
            Err(e) => {
                // The user is told (a sandbox that did not start is theirs to know about);
                // the conversation goes on, its agent without tools.
                tracing::error!(conversation_id = %self.sid, error = %e, "no workspace: the agent works without tools");
                let text = format!("The agent's sandbox did not start, so it works without tools: {}", e.message);
                self.env.broadcast(&self.sid, &events::status_update("error", "STATUS$ERROR", &text));
                self.persist(events::error_observation(&text, "STATUS$ERROR")).await;
                None
            }
        }
    }

    /// Ends the turn in `error`, with the status the web client shows for `id`.
    async fn fail(&mut self, id: &str, text: &str) {
        tracing::warn!(conversation_id = %self.sid, error = %text, "agent turn failed");
        self.env.broadcast(&self.sid, &events::status_update("error", id, text));
        self.persist(events::error_observation(text, id)).await;
        self.set_state_because("error", id).await;
    }

    /// Why the next LLM call may not be made (billing: no credits left), if it may not. A
    /// listener that cannot answer does not stop the conversation.
    async fn refused(&self) -> Option<String> {
        let admission = Admission { action: Admission::LLM_CALL.to_owned(), conversation_id: Some(self.sid.clone()) };
        match self.env.services().call(self.ctx.clone(), Admit { admission }).await {
            Ok(()) => None,
            Err(e) if e.code == ErrorCode::PAYMENT_REQUIRED => {
                Some("You're out of OpenHands Credits: add funds to continue.".to_owned())
            }
            Err(e) => {
                tracing::warn!(conversation_id = %self.sid, error = %e, "admission not checked; the call goes ahead");
                None
            }
        }
    }

    async fn set_state(&mut self, state: &str) {
        self.set_state_because(state, "").await;
    }

    /// A state change with its reason (for `error`, the status id the web client shows).
    async fn set_state_because(&mut self, state: &str, reason: &str) {
        self.shared.running.store(state == "running", Ordering::Relaxed);
        self.persist(events::agent_state_changed(state, reason)).await;
    }

    /// Stores an event (it gets its id), then pushes it live and to monitoring. A refused
    /// fenced append ends the session: the conversation is another node's now.
    async fn persist(&mut self, event: Value) -> Option<u64> {
        if self.shared.is_fenced() {
            return None;
        }
        self.shared.touch();
        match self.env.persist(&self.ctx, &self.sid, self.fence, event).await {
            Ok(stored) => return stored["id"].as_u64(),
            Err(e) if e.code == ErrorCode::CONFLICT && self.fence.is_some() => {
                tracing::warn!(conversation_id = %self.sid, error = %e, "fenced off: another node owns the conversation now");
                self.shared.fenced.store(true, Ordering::Relaxed);
            }
            Err(e) => tracing::error!(conversation_id = %self.sid, error = %e, "cannot store an event"),
        }
        None
    }

    async fn monitor<C: HostCall<Answer = ()>>(&self, hook: C) {
        if let Err(e) = self.env.services().call(self.ctx.clone(), hook).await {
            tracing::debug!(hook = C::METHOD, error = %e, "monitoring hook not delivered");
        }
    }

    async fn load_history(&self) -> Result<Vec<Value>, PluginError> {
        let mut all = Vec::new();
        loop {
            let request = GetEvents {
                conversation_id: self.sid.clone(),
                start_id: all.len() as u64,
                end_id: None,
                reverse: false,
                limit: 500,
            };
            let page = self.env.services().call(self.ctx.clone(), request).await?;
            let more = page.has_more && !page.events.is_empty();
            all.extend(page.events);
            if !more {
                return Ok(all);
            }
        }
    }

    async fn metadata(&self) -> Result<Option<ConversationMetadata>, PluginError> {
        self.env.services().call(self.ctx.clone(), GetMetadata { conversation_id: self.sid.clone() }).await
    }

    /// Keeps the metadata current: last update, token and cost totals, plus `change`.
    async fn update_metadata(&self, change: impl FnOnce(&mut ConversationMetadata)) {
        let mut m = match self.metadata().await {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(conversation_id = %self.sid, error = %e, "cannot read metadata to update it");
                return;
            }
        };
        m.last_updated_at = Some(events::now());
        m.accumulated_cost = self.totals.cost;
        m.prompt_tokens = self.totals.prompt_tokens;
        m.completion_tokens = self.totals.completion_tokens;
        m.total_tokens = self.totals.total_tokens;
        m.llm_model = Some(self.llm.display_model.clone());
        change(&mut m);
        if let Err(e) = self.env.services().call(self.ctx.clone(), SaveMetadata { metadata: m }).await {
            tracing::warn!(conversation_id = %self.sid, error = %e, "cannot update metadata");
        }
    }

    /// Names an untitled conversation after its first user message.
    async fn maybe_title(&self, content: &str) {
        let Ok(Some(m)) = self.metadata().await else { return };
        if m.title.is_some() {
            return;
        }
        let title = events::title_from(content);
        let t = title.clone();
        self.update_metadata(move |m| m.title = Some(t)).await;
        self.env.broadcast(&self.sid, &events::title_update(&self.sid, &title));
    }
}
