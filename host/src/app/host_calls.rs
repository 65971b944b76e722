//! What plugins ask of the host (`plugin_api::host_calls`), served by the application layer:
//! each request type is a variant of `HostCall`, decoded from its `(point, method)` pair and
//! served by one exhaustive `match`, so a variant without its flow does not compile.

use super::{conversations::NewConversation, App};
use crate::registry::HostCallHandler;
use futures_util::future::BoxFuture;
use plugin_api::{
    host_calls::{
        self, Admit, AgentSessionStart, AppendEvents, Capture, CreateConversation, FeatureFlags, GetEvents,
        GetMetadata, GetProviderTokens, LoadSecrets, LoadSettings, ReportLlmUsage, SaveMetadata, SessionEvent,
        StartConversation,
    },
    models, CallContext, ErrorCode, EventQuery, PluginError,
};
use serde::Serialize;

/// Declares `HostCall` with one variant per request type and its decoder.
macro_rules! host_calls {
    ($($t:ident),* $(,)?) => {
        /// A decoded host call.
        enum HostCall {
            $($t($t),)*
        }

        impl HostCall {
            fn decode(point: &str, method: &str, args: &str) -> Result<HostCall, PluginError> {
                $(
                    if point == <$t as host_calls::HostCall>::POINT.key() && method == <$t as host_calls::HostCall>::METHOD {
                        return serde_json::from_str(args).map(HostCall::$t).map_err(|e| {
                            PluginError::invalid_argument(format!("{point}.{method}: {e}"))
                        });
                    }
                )*
                Err(PluginError::new(ErrorCode::UNIMPLEMENTED, format!("the host offers no `{point}.{method}` to plugins")))
            }
        }
    };
}

host_calls!(
    LoadSettings,
    LoadSecrets,
    GetMetadata,
    SaveMetadata,
    AppendEvents,
    GetEvents,
    SessionEvent,
    AgentSessionStart,
    Capture,
    ReportLlmUsage,
    Admit,
    StartConversation,
    GetProviderTokens,
    CreateConversation,
    FeatureFlags,
);

fn encode<T: Serialize>(answer: T) -> Result<String, PluginError> {
    serde_json::to_string(&answer).map_err(|e| PluginError::internal(format!("cannot encode an answer: {e}")))
}

impl App {
    async fn serve(&self, ctx: CallContext, call: HostCall) -> Result<String, PluginError> {
        let r = &self.registry();
        let plugin = |e: crate::registry::CallError| e.into_plugin_error();
        match call {
            HostCall::LoadSettings(_) => encode(r.load_settings(ctx).await.map_err(plugin)?),
            HostCall::LoadSecrets(_) => encode(r.load_secrets(ctx).await.map_err(plugin)?),
            HostCall::GetMetadata(c) => encode(r.get_metadata(ctx, &c.conversation_id).await.map_err(plugin)?),
            HostCall::SaveMetadata(c) => encode(r.save_metadata(ctx, &c.metadata).await.map_err(plugin)?),
            HostCall::AppendEvents(c) => {
                encode(r.append_events(ctx, &c.conversation_id, &c.events, c.fence).await.map_err(plugin)?)
            }
            HostCall::GetEvents(c) => {
                let query = EventQuery::new(c.start_id, c.end_id, c.reverse, c.limit.min(GetEvents::MAX_LIMIT));
                encode(r.get_events(ctx, &c.conversation_id, query).await.map_err(plugin)?)
            }
            HostCall::SessionEvent(c) => {
                r.on_session_event(&ctx, &c.event);
                encode(())
            }
            HostCall::AgentSessionStart(c) => {
                r.on_agent_session_start(&ctx, c.success, c.duration_secs);
                encode(())
            }
            HostCall::Capture(c) => {
                r.capture(&ctx, &c.event, &c.properties);
                encode(())
            }
            HostCall::ReportLlmUsage(c) => {
                r.on_llm_usage(&ctx, &c.usage);
                encode(())
            }
            HostCall::Admit(c) => encode(r.admit(&ctx, &c.admission).await.map_err(plugin)?),
            HostCall::StartConversation(c) => {
                let new = NewConversation {
                    id: c.conversation_id,
                    repository: c.repository,
                    git_provider: c.git_provider,
                    selected_branch: c.selected_branch,
                    initial_user_msg: Some(c.initial_user_msg),
                    title: c.title,
                    trigger: c.trigger,
                    ..Default::default()
                };
                if let Some(id) = &new.id {
                    super::check_conversation_id(id).map_err(|e| e.into_plugin_error())?;
                }
                encode(self.launch(&ctx, new).await.map_err(|e| e.into_plugin_error())?)
            }
            HostCall::GetProviderTokens(_) => {
                encode(self.effective_tokens(&ctx).await.map_err(|e| e.into_plugin_error())?)
            }
            HostCall::CreateConversation(_) => {
                r.on_create_conversation(&ctx);
                encode(())
            }
            HostCall::FeatureFlags(c) => {
                encode(r.feature_flags(&ctx, &models::FlagSubject { email: None, flags: c.flags }).await)
            }
        }
    }
}

impl HostCallHandler for App {
    fn serve<'a>(
        &'a self,
        ctx: CallContext,
        point: &'a str,
        method: &'a str,
        args: &'a str,
    ) -> BoxFuture<'a, Result<String, PluginError>> {
        Box::pin(async move {
            let call = HostCall::decode(point, method, args)?;
            App::serve(self, ctx, call).await
        })
    }
}
