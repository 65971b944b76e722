//! The host's side of the plugin → host direction: `HostServices` (plugins reach the other
//! extension points through it, with the operations of `plugin_api::host_calls`) and the
//! `EventSink` a socket subscribes with.

use super::Registry;
use crate::config::AppMode;
use abi_stable::std_types::RString;
use async_ffi::{FfiFuture, FutureExt as _};
use plugin_api::{
    host_calls::{
        Admit, AgentSessionStart, AppendEvents, Capture, CreateConversation, GetEvents, GetMetadata, GetProviderTokens,
        HostCall, LoadSecrets, LoadSettings, ReportLlmUsage, SaveMetadata, SessionEvent, StartConversation,
    },
    CallContext, ErrorCode, EventQuery, HostServices, PResult, PluginError,
};
use std::{
    future::Future,
    path::PathBuf,
    sync::{Arc, OnceLock, Weak},
};

/// Handed to every instance. It reaches the registry through a weak link, filled once the
/// registry exists (instances are built before it).
pub(super) struct Services {
    pub(super) registry: Arc<OnceLock<Weak<Registry>>>,
    pub(super) app_mode: AppMode,
    pub(super) state_dir: PathBuf,
    pub(super) runtime: tokio::runtime::Handle,
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl HostServices for Services {
    fn call(
        &self,
        ctx: CallContext,
        point: RString,
        method: RString,
        args_json: RString,
    ) -> FfiFuture<PResult<RString>> {
        // Polled on a plugin thread, which has no host runtime: run the work on ours.
        let registry = self.registry.get().and_then(Weak::upgrade);
        let task = AbortOnDrop(self.runtime.spawn(async move {
            let Some(registry) = registry else {
                return Err(PluginError::unavailable("the host is starting or stopping"));
            };
            registry.dispatch(ctx, &point, &method, &args_json).await.map(RString::from)
        }));
        async move {
            let mut task = task;
            match (&mut task.0).await {
                Ok(r) => r.into(),
                Err(e) => PResult::RErr(PluginError::internal(format!("host task failed: {e}"))),
            }
        }
        .into_ffi()
    }

    fn app_mode(&self) -> RString {
        self.app_mode.as_str().into()
    }

    fn state_dir(&self) -> RString {
        self.state_dir.display().to_string().into()
    }
}

/// Decodes the arguments of `C`, runs `serve`, encodes its answer.
async fn serve<C, F, Fut>(args_json: &str, serve: F) -> Result<String, PluginError>
where
    C: HostCall,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = Result<C::Answer, PluginError>>,
{
    let request: C = serde_json::from_str(args_json)
        .map_err(|e| PluginError::invalid_argument(format!("{}.{}: {e}", C::POINT, C::METHOD)))?;
    let answer = serve(request).await?;
    serde_json::to_string(&answer).map_err(|e| PluginError::internal(format!("cannot encode an answer: {e}")))
}

fn is<C: HostCall>(point: &str, method: &str) -> bool {
    point == C::POINT.key() && method == C::METHOD
}

impl Registry {
    /// `HostServices::call`: the operations of `plugin_api::host_calls`.
    async fn dispatch(&self, ctx: CallContext, point: &str, method: &str, args: &str) -> Result<String, PluginError> {
        let ctx2 = ctx.clone();
        if is::<LoadSettings>(point, method) {
            serve(args, |_: LoadSettings| async { self.load_settings(ctx).await.map_err(|e| e.into_plugin_error()) })
                .await
        } else if is::<LoadSecrets>(point, method) {
            serve(args, |_: LoadSecrets| async { self.load_secrets(ctx).await.map_err(|e| e.into_plugin_error()) })
                .await
        } else if is::<GetMetadata>(point, method) {
            serve(args, |r: GetMetadata| async move {
                self.get_metadata(ctx, &r.conversation_id).await.map_err(|e| e.into_plugin_error())
            })
            .await
        } else if is::<SaveMetadata>(point, method) {
            serve(args, |r: SaveMetadata| async move {
                self.save_metadata(ctx, &r.metadata).await.map_err(|e| e.into_plugin_error())
            })
            .await
        } else if is::<AppendEvents>(point, method) {
            serve(args, |r: AppendEvents| async move {
                self.append_events(ctx, &r.conversation_id, &r.events, r.fence).await.map_err(|e| e.into_plugin_error())
            })
            .await
        } else if is::<GetEvents>(point, method) {
            serve(args, |r: GetEvents| async move {
                let query = EventQuery::new(r.start_id, r.end_id, r.reverse, r.limit.min(GetEvents::MAX_LIMIT));
                self.get_events(ctx, &r.conversation_id, query).await.map_err(|e| e.into_plugin_error())
            })
            .await
        } else if is::<SessionEvent>(point, method) {
            serve(args, |r: SessionEvent| async move {
                self.on_session_event(&ctx2, &r.event);
                Ok(())
            })
            .await
        } else if is::<AgentSessionStart>(point, method) {
            serve(args, |r: AgentSessionStart| async move {
                self.on_agent_session_start(&ctx2, r.success, r.duration_secs);
                Ok(())
            })
            .await
        } else if is::<Capture>(point, method) {
            serve(args, |r: Capture| async move {
                self.capture(&ctx2, &r.event, &r.properties);
                Ok(())
            })
            .await
        } else if is::<ReportLlmUsage>(point, method) {
            serve(args, |r: ReportLlmUsage| async move {
                self.on_llm_usage(&ctx2, &r.usage);
                Ok(())
            })
            .await
        } else if is::<Admit>(point, method) {
            serve(
                args,
                |r: Admit| async move { self.admit(&ctx, &r.admission).await.map_err(|e| e.into_plugin_error()) },
            )
            .await
        } else if is::<StartConversation>(point, method) {
            serve(args, |r: StartConversation| async move { self.launch(ctx, r).await }).await
        } else if is::<GetProviderTokens>(point, method) {
            serve(args, |_: GetProviderTokens| async move {
                // As a conversation gets them: brokered tokens win over stored ones.
                let brokered = self.provider_tokens(ctx.clone()).await.map_err(|e| e.into_plugin_error())?;
                match brokered {
                    Some(tokens) => Ok(tokens),
                    None => Ok(self
                        .load_secrets(ctx)
                        .await
                        .map_err(|e| e.into_plugin_error())?
                        .unwrap_or_default()
                        .provider_tokens),
                }
            })
            .await
        } else if is::<CreateConversation>(point, method) {
            serve(args, |_: CreateConversation| async move {
                self.on_create_conversation(&ctx2);
                Ok(())
            })
            .await
        } else {
            Err(PluginError::new(ErrorCode::UNIMPLEMENTED, format!("the host offers no `{point}.{method}` to plugins")))
        }
    }
}

/// The host's `EventSink`: a channel to the socket that subscribed. Called from plugin
/// threads; an unbounded send needs no runtime and never blocks.
pub(super) struct ChannelSink(pub(super) tokio::sync::mpsc::UnboundedSender<String>);

impl plugin_api::EventSink for ChannelSink {
    fn send(&self, event_json: RString) -> bool {
        self.0.send(event_json.into_string()).is_ok()
    }
}
