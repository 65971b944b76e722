//! What the doors read and do that is one plugin call: conversations, their events, the
//! running loops, sign-in. Each is the registry's typed call with its error as `AppError`.

use super::{App, AppResult};
use crate::{
    config::AppMode,
    registry::{AuthInput, Authenticated},
};
use plugin_api::{
    models::{AgentLoopInfo, ConversationMetadata, ConversationMetadataResultSet, EventPage, Settings},
    CallContext, EventQuery,
};
use serde_json::Value;
use std::path::PathBuf;

impl App {
    pub fn app_mode(&self) -> AppMode {
        self.registry().app_mode()
    }

    /// Who the request's credentials name (the user-auth plugin).
    pub async fn authenticate(&self, ctx: CallContext, input: AuthInput<'_>) -> AppResult<Authenticated> {
        Ok(self.registry().authenticate(ctx, input).await?)
    }

    /// The caller's Settings, as stored.
    /// A provider's repositories as a `routes` plugin that keeps them answers: one that declares
    /// `GET /api/user/repositories/{provider}` (authenticated) serves that provider's picker
    /// and search (the same query string) instead of the provider's API. `None` when no
    /// plugin does; else the plugin's status and JSON body.
    pub async fn plugin_repositories(
        &self,
        ctx: &CallContext,
        provider: &str,
        query: &str,
    ) -> Option<AppResult<(u16, serde_json::Value)>> {
        let path = format!("/api/user/repositories/{provider}");
        let registry = self.registry();
        let (instance, ..) = registry
            .declared_routes()
            .find(|(_, _, r)| r.path == path && r.authenticated && r.method.eq_ignore_ascii_case("GET"))?;
        let uri: axum::http::Uri = format!("{path}?{query}").parse().ok()?;
        let answer = registry
            .handle_route(
                instance,
                ctx.clone(),
                &axum::http::Method::GET,
                &uri,
                &Default::default(),
                Default::default(),
            )
            .await;
        Some(match answer {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = axum::body::to_bytes(response.into_body(), 64 << 20).await.unwrap_or_default();
                Ok((status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)))
            }
            Err(e) => Err(e.into()),
        })
    }

    /// The user's feature flags (`flag -> variant`); none for an anonymous caller.
    pub async fn feature_flags(
        &self,
        ctx: &CallContext,
        subject: &plugin_api::models::FlagSubject,
    ) -> std::collections::BTreeMap<String, String> {
        self.registry().feature_flags(ctx, subject).await
    }

    pub async fn load_settings(&self, ctx: &CallContext) -> AppResult<Option<Settings>> {
        Ok(self.registry().load_settings(ctx.clone()).await?)
    }

    /// The caller's conversation `id` (another user's does not exist for them).
    pub async fn conversation(&self, ctx: &CallContext, id: &str) -> AppResult<Option<ConversationMetadata>> {
        Ok(self.registry().get_metadata(ctx.clone(), id).await?)
    }

    pub async fn save_conversation(&self, ctx: &CallContext, m: &ConversationMetadata) -> AppResult<()> {
        Ok(self.registry().save_metadata(ctx.clone(), m).await?)
    }

    /// Stops the conversation's loop (its last event stored), then deletes it.
    /// Stops the conversation, deletes it and its events, then its workspace (the caller's
    /// conversation only: the store scopes the delete by user).
    pub async fn delete_conversation(&self, ctx: &CallContext, id: &str) -> AppResult<bool> {
        self.registry().close_conversation(ctx.clone(), id).await?;
        let deleted = self.registry().delete_metadata(ctx.clone(), id).await?;
        if deleted {
            if let Err(e) = self.registry().workspace_destroy(ctx.clone(), id).await {
                tracing::warn!(conversation_id = id, error = %e, "the conversation's workspace was not removed");
            }
        }
        Ok(deleted)
    }

    pub async fn search_conversations(
        &self,
        ctx: &CallContext,
        page_id: Option<&str>,
        limit: u32,
    ) -> AppResult<ConversationMetadataResultSet> {
        Ok(self.registry().search_conversations(ctx.clone(), page_id, limit).await?)
    }

    /// The loops of `ids` that run.
    pub async fn running(&self, ctx: &CallContext, ids: &[String]) -> AppResult<Vec<AgentLoopInfo>> {
        Ok(self.registry().running(ctx.clone(), ids).await?)
    }

    pub async fn events(&self, ctx: &CallContext, id: &str, query: EventQuery) -> AppResult<EventPage> {
        Ok(self.registry().get_events(ctx.clone(), id, query).await?)
    }

    /// Stops the conversation's loop; whether it was running.
    pub async fn stop_conversation(&self, ctx: &CallContext, id: &str) -> AppResult<bool> {
        Ok(self.registry().close_conversation(ctx.clone(), id).await?)
    }

    /// A user event into the running loop (stored before this answers).
    pub async fn send_event(&self, ctx: CallContext, id: &str, event: &Value) -> AppResult<()> {
        Ok(self.registry().send_event(ctx, id, event).await?)
    }

    /// Live events of a conversation into `events`, until `unsubscribe`.
    pub async fn subscribe(
        &self,
        ctx: &CallContext,
        id: &str,
        events: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> AppResult<u64> {
        Ok(self.registry().subscribe(ctx.clone(), id, events).await?)
    }

    pub async fn unsubscribe(&self, ctx: &CallContext, subscription: u64) -> AppResult<()> {
        Ok(self.registry().unsubscribe(ctx.clone(), subscription).await?)
    }

    /// Where the conversation's tools act, when its manager gives it a workspace.
    pub async fn workspace_of(&self, ctx: &CallContext, id: &str) -> Option<PathBuf> {
        match self.registry().workspace(ctx.clone(), id).await {
            Ok(path) => path.map(PathBuf::from),
            Err(e) => {
                tracing::warn!(conversation_id = id, error = %e, "the manager did not say where the workspace is");
                None
            }
        }
    }
}
