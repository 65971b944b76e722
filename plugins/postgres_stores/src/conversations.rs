//! `SaasConversationStore`: `conversation_metadata` and `conversation_events`, dense event ids
//! under a row lock so several hosts can append to one conversation. Every query is scoped by
//! the caller's user id (`''` in single-user mode).

use crate::{
    admin::{corrupt, health, migrate, user},
    db::{db_error, Db},
};
use plugin_sdk::{
    models::{paging, ConversationMetadata, ConversationMetadataResultSet, EventPage},
    CallContext, ErrorCode, EventQuery, PluginError,
};
use serde_json::Value;
use std::sync::Arc;

pub struct SaasConversationStore {
    pub(crate) db: Arc<Db>,
}

fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, PluginError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| PluginError::invalid_argument(format!("created_at `{text}` is not an RFC 3339 time: {e}")))
}

impl SaasConversationStore {
    /// Appends in one transaction under the conversation row's lock (ids stay dense across
    /// hosts); with a fence, checks and records it in the same transaction.
    async fn append(
        &self,
        ctx: CallContext,
        id: String,
        events: Vec<Value>,
        fence: Option<u64>,
    ) -> Result<u64, PluginError> {
        let pool = self.db.ready().await?;
        let mut tx = pool.begin().await.map_err(db_error)?;
        // The row lock on the conversation serialises appends across hosts: ids stay dense.
        let seen: Option<i64> = sqlx::query_scalar(
            "SELECT fence FROM conversation_metadata WHERE conversation_id = $1 AND user_id = $2 FOR UPDATE",
        )
        .bind(&id)
        .bind(user(&ctx))
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        let Some(seen) = seen else {
            return Err(PluginError::not_found("conversation not found"));
        };
        if let Some(fence) = fence {
            let fence =
                i64::try_from(fence).map_err(|_| PluginError::invalid_argument("fencing token out of range"))?;
            if fence < seen {
                return Err(PluginError::new(
                    ErrorCode::CONFLICT,
                    format!("fenced: the conversation's owner now holds token {seen}, this append has {fence}"),
                ));
            }
            if fence > seen {
                sqlx::query("UPDATE conversation_metadata SET fence = $2 WHERE conversation_id = $1")
                    .bind(&id)
                    .bind(fence)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
            }
        }
        let first: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(id) + 1, 0) FROM conversation_events WHERE conversation_id = $1")
                .bind(&id)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
        for (i, mut event) in events.into_iter().enumerate() {
            let n = first + i as i64;
            let obj =
                event.as_object_mut().ok_or_else(|| PluginError::invalid_argument("an event must be a JSON object"))?;
            obj.insert("id".to_owned(), Value::from(n));
            sqlx::query("INSERT INTO conversation_events (conversation_id, id, event) VALUES ($1, $2, $3)")
                .bind(&id)
                .bind(n)
                .bind(&event)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        Ok(first as u64)
    }
}

impl plugin_sdk::ConversationStore for SaasConversationStore {
    async fn save_metadata(&self, ctx: CallContext, mut metadata: ConversationMetadata) -> Result<(), PluginError> {
        let pool = self.db.ready().await?;
        let owner = user(&ctx).to_owned();
        match metadata.user_id.as_deref() {
            Some(u) if u != owner && ctx.user_id().is_some() => {
                return Err(PluginError::new(ErrorCode::PERMISSION_DENIED, "metadata names another user"));
            }
            _ => {}
        }
        if ctx.user_id().is_some() {
            metadata.user_id = Some(owner.clone());
        }
        // Checked here for a clear 400; PostgreSQL parses the same text.
        parse_time(&metadata.created_at)?;
        let created_at = metadata.created_at.clone();
        let doc = serde_json::to_value(&metadata).map_err(|e| PluginError::internal(e.to_string()))?;
        // The WHERE on the conflict branch keeps one user from overwriting another's row.
        let result = sqlx::query(
            "INSERT INTO conversation_metadata (conversation_id, user_id, created_at, metadata) VALUES ($1, $2, $3::timestamptz, $4) \
             ON CONFLICT (conversation_id) DO UPDATE SET metadata = EXCLUDED.metadata, created_at = EXCLUDED.created_at \
             WHERE conversation_metadata.user_id = EXCLUDED.user_id",
        )
        .bind(&metadata.conversation_id)
        .bind(&owner)
        .bind(created_at)
        .bind(&doc)
        .execute(pool)
        .await
        .map_err(db_error)?;
        if result.rows_affected() == 0 {
            return Err(PluginError::new(ErrorCode::ALREADY_EXISTS, "a conversation with this id exists already"));
        }
        Ok(())
    }

    async fn get_metadata(&self, ctx: CallContext, id: String) -> Result<Option<ConversationMetadata>, PluginError> {
        let pool = self.db.ready().await?;
        let doc: Option<Value> = sqlx::query_scalar(
            "SELECT metadata FROM conversation_metadata WHERE conversation_id = $1 AND user_id = $2",
        )
        .bind(&id)
        .bind(user(&ctx))
        .fetch_optional(pool)
        .await
        .map_err(db_error)?;
        doc.map(|d| serde_json::from_value(d).map_err(|e| corrupt("conversation metadata", e))).transpose()
    }

    async fn delete_metadata(&self, ctx: CallContext, id: String) -> Result<bool, PluginError> {
        let pool = self.db.ready().await?;
        let result = sqlx::query("DELETE FROM conversation_metadata WHERE conversation_id = $1 AND user_id = $2")
            .bind(&id)
            .bind(user(&ctx))
            .execute(pool)
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected() > 0)
    }

    async fn search(
        &self,
        ctx: CallContext,
        page_id: Option<String>,
        limit: u32,
    ) -> Result<ConversationMetadataResultSet, PluginError> {
        let pool = self.db.ready().await?;
        let offset = paging::page_id_to_offset(page_id.as_deref())
            .ok_or_else(|| PluginError::invalid_argument("invalid page_id"))?;
        // As text, parsed straight into the metadata (no JSON tree in between): a page is
        // 21 documents on every conversation list.
        let docs: Vec<String> = sqlx::query_scalar(
            "SELECT metadata::text FROM conversation_metadata WHERE user_id = $1 \
             ORDER BY created_at DESC, conversation_id DESC OFFSET $2 LIMIT $3",
        )
        .bind(user(&ctx))
        .bind(offset as i64)
        .bind(i64::from(limit) + 1)
        .fetch_all(pool)
        .await
        .map_err(db_error)?;
        let has_next = docs.len() > limit as usize;
        let mut results = Vec::with_capacity(limit as usize);
        for doc in docs.iter().take(limit as usize) {
            match serde_json::from_str(doc) {
                Ok(m) => results.push(m),
                Err(e) => tracing::warn!(error = %e, "skipping unreadable conversation metadata in search"),
            }
        }
        let end = offset + results.len();
        Ok(ConversationMetadataResultSet { results, next_page_id: paging::offset_to_page_id(end, has_next) })
    }

    async fn append_events(&self, ctx: CallContext, id: String, events: Vec<Value>) -> Result<u64, PluginError> {
        self.append(ctx, id, events, None).await
    }

    async fn append_events_fenced(
        &self,
        ctx: CallContext,
        id: String,
        events: Vec<Value>,
        fence: u64,
    ) -> Result<u64, PluginError> {
        self.append(ctx, id, events, Some(fence)).await
    }

    async fn get_events(&self, ctx: CallContext, id: String, query: EventQuery) -> Result<EventPage, PluginError> {
        let pool = self.db.ready().await?;
        let exists: Option<String> = sqlx::query_scalar(
            "SELECT conversation_id FROM conversation_metadata WHERE conversation_id = $1 AND user_id = $2",
        )
        .bind(&id)
        .bind(user(&ctx))
        .fetch_optional(pool)
        .await
        .map_err(db_error)?;
        if exists.is_none() {
            return Err(PluginError::not_found("conversation not found"));
        }
        let order = if query.reverse { "DESC" } else { "ASC" };
        let end = query.end_id.into_option().map_or(i64::MAX, |e| e.min(i64::MAX as u64) as i64);
        let events: Vec<Value> = sqlx::query_scalar(&format!(
            "SELECT event FROM conversation_events WHERE conversation_id = $1 AND id >= $2 AND id <= $3 \
             ORDER BY id {order} LIMIT $4"
        ))
        .bind(&id)
        .bind(query.start_id.min(i64::MAX as u64) as i64)
        .bind(end)
        .bind(i64::from(query.limit) + 1)
        .fetch_all(pool)
        .await
        .map_err(db_error)?;
        let has_more = events.len() > query.limit as usize;
        Ok(EventPage { events: events.into_iter().take(query.limit as usize).collect(), has_more })
    }

    async fn health(&self) -> Result<String, PluginError> {
        health(&self.db).await
    }

    async fn migrate(&self, _ctx: CallContext) -> Result<Value, PluginError> {
        migrate(&self.db).await
    }
}
