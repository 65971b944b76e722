//! `conversation_manager` on the wire. Live events are a stream: the host names each sink
//! with an id, the runner's manager gets a sink that sends `event` messages with that id, and
//! the host delivers them (`Supervisor::sinks`). When a runner dies, its conversations' loops
//! die with it; the proxy remembers what it started and who listens, and after the restart
//! starts those conversations again (the manager resumes each from the stores) and
//! resubscribes every sink under the same id, so a connected client goes on receiving.

use super::*;
use plugin_api::{ConversationManagerObject, EventSinkObject};
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

/// What the host's proxy of a manager remembers across runner restarts.
#[derive(Default)]
pub(crate) struct ManagerState {
    /// The last start request of each conversation started through this proxy, with the
    /// context it came with; forgotten when it is closed.
    starts: Mutex<HashMap<String, (CallContext, Value)>>,
    /// Live subscriptions by the id the host got: (context, conversation, the runner's id).
    subscriptions: Mutex<HashMap<u64, (CallContext, String, u64)>>,
    next_sink: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Proxy {
    /// After a restart: the conversations started again, the sinks subscribed again.
    /// The hook holds its supervisor weakly (the supervisor holds the hook).
    pub(in crate::isolation) fn restart_hook(&self) -> super::super::supervisor::RestartHook {
        let (runner, routes, manager) = (Arc::downgrade(&self.runner), self.routes.clone(), self.manager.clone());
        Arc::new(move || {
            let proxy =
                runner.upgrade().map(|runner| Proxy { runner, routes: routes.clone(), manager: manager.clone() });
            Box::pin(async move {
                if let Some(proxy) = proxy {
                    proxy.resume().await
                }
            })
        })
    }

    /// Subscriptions first (a manager takes them for a conversation not yet running), so
    /// that once a conversation runs again its events already reach the host's sinks.
    async fn resume(&self) {
        let subscriptions: Vec<_> =
            lock(&self.manager.subscriptions).iter().map(|(id, (ctx, c, _))| (*id, ctx.clone(), c.clone())).collect();
        for (sink, ctx, conversation_id) in subscriptions {
            let args = json!({ "conversation_id": conversation_id, "sink": sink });
            match self.runner.call("subscribe", &ctx, args).await.and_then(typed::<u64>) {
                Ok(runner_id) => {
                    if let Some(entry) = lock(&self.manager.subscriptions).get_mut(&sink) {
                        entry.2 = runner_id;
                    }
                }
                Err(e) => tracing::warn!(%conversation_id, "could not subscribe again after a runner restart: {e}"),
            }
        }
        let starts: Vec<_> = lock(&self.manager.starts).iter().map(|(id, s)| (id.clone(), s.clone())).collect();
        for (id, (ctx, request)) in starts {
            if let Err(e) = self.runner.call("maybe_start", &ctx, json!({ "request": request })).await {
                tracing::warn!(conversation_id = %id, "could not start the conversation again after a runner restart: {e}");
            }
        }
    }
}

impl plugin_api::ConversationManager for Proxy {
    fn maybe_start(&self, ctx: CallContext, request_json: RString) -> FfiFuture<PResult<RString>> {
        let request = doc(&request_json);
        if let Ok(r) = &request {
            if let Some(id) = r.get("conversation_id").and_then(Value::as_str) {
                lock(&self.manager.starts).insert(id.to_owned(), (ctx.clone(), r.clone()));
            }
        }
        self.call("maybe_start", ctx, request.map(|r| json!({ "request": r })), text)
    }
    fn send_event(&self, ctx: CallContext, conversation_id: RString, event_json: RString) -> FfiFuture<PResult<()>> {
        let args = doc(&event_json).map(|e| json!({ "conversation_id": conversation_id.as_str(), "event": e }));
        self.call("send_event", ctx, args, unit)
    }
    fn close(&self, ctx: CallContext, conversation_id: RString) -> FfiFuture<PResult<bool>> {
        lock(&self.manager.starts).remove(conversation_id.as_str());
        self.call("close", ctx, Ok(json!({ "conversation_id": conversation_id.as_str() })), typed)
    }
    fn running(&self, ctx: CallContext, filter_ids: RVec<RString>) -> FfiFuture<PResult<RString>> {
        let ids: Vec<&str> = filter_ids.iter().map(|i| i.as_str()).collect();
        self.call("running", ctx, Ok(json!({ "filter_ids": ids })), text)
    }
    fn subscribe(&self, ctx: CallContext, conversation_id: RString, sink: EventSinkObject) -> FfiFuture<PResult<u64>> {
        let id = self.manager.next_sink.fetch_add(1, Ordering::Relaxed) + 1;
        self.runner.sinks().insert(id, sink);
        let proxy = self.clone();
        async move {
            let args = json!({ "conversation_id": conversation_id.as_str(), "sink": id });
            match proxy.runner.call("subscribe", &ctx, args).await.and_then(typed::<u64>) {
                Ok(runner_id) => {
                    lock(&proxy.manager.subscriptions).insert(id, (ctx, conversation_id.into_string(), runner_id));
                    PResult::ROk(id)
                }
                Err(e) => {
                    proxy.runner.sinks().remove(id);
                    PResult::RErr(e)
                }
            }
        }
        .into_ffi()
    }
    fn unsubscribe(&self, ctx: CallContext, subscription_id: u64) -> FfiFuture<PResult<()>> {
        self.runner.sinks().remove(subscription_id);
        let Some((_, _, runner_id)) = lock(&self.manager.subscriptions).remove(&subscription_id) else {
            return async { PResult::ROk(()) }.into_ffi();
        };
        self.call("unsubscribe", ctx, Ok(json!({ "subscription_id": runner_id })), unit)
    }
    fn health(&self, ctx: CallContext) -> FfiFuture<PResult<Health>> {
        self.health_(ctx)
    }
    fn shutdown(&self, deadline_ms: u64) -> FfiFuture<()> {
        self.shutdown_(deadline_ms)
    }
    fn cluster(&self, ctx: CallContext) -> FfiFuture<PResult<RString>> {
        self.report("cluster", ctx)
    }
    fn workspace(&self, ctx: CallContext, conversation_id: RString) -> FfiFuture<PResult<ROption<RString>>> {
        self.call("workspace", ctx, Ok(json!({ "conversation_id": conversation_id.as_str() })), |v| match v {
            Value::String(path) => Ok(ROption::RSome(path.into())),
            _ => Ok(ROption::RNone),
        })
    }
}

/// `conversation_manager`: calls the library's object; `sink(id)` is the runner's sink that
/// sends events for the host's sink `id`.
pub(super) async fn manager(
    o: &ConversationManagerObject,
    method: &str,
    ctx: CallContext,
    a: Value,
    sink: &(dyn Fn(u64) -> EventSinkObject + Sync),
) -> Result<Value, PluginError> {
    let id = || text_arg(&a, "conversation_id");
    match method {
        "maybe_start" => from_text(o.maybe_start(ctx, doc_arg(&a, "request")?).await.into_result()?),
        "send_event" => o.send_event(ctx, id()?, doc_arg(&a, "event")?).await.into_result().map(|()| Value::Null),
        "close" => o.close(ctx, id()?).await.into_result().map(Value::from),
        "running" => {
            let ids: Vec<String> = arg(&a, "filter_ids")?;
            from_text(o.running(ctx, ids.into_iter().map(RString::from).collect()).await.into_result()?)
        }
        "subscribe" => {
            let target = sink(arg(&a, "sink")?);
            o.subscribe(ctx, id()?, target).await.into_result().map(Value::from)
        }
        "unsubscribe" => o.unsubscribe(ctx, arg(&a, "subscription_id")?).await.into_result().map(|()| Value::Null),
        "cluster" => from_text(o.cluster(ctx).await.into_result()?),
        "workspace" => {
            Ok(o.workspace(ctx, id()?).await.into_result()?.into_option().map_or(Value::Null, |p| json!(p.as_str())))
        }
        "health" => o.health(ctx).await.into_result().map(health_value),
        _ => Err(unknown(method)),
    }
}
