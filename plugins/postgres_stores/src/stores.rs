//! `SaasSettingsStore`, `SaasSecretsStore`, `SaasConversationStore`: every query is scoped by
//! the caller's user id (`''` in single-user mode).

use crate::db::{db_error, Db};
use pg_common::crypto::Binding;
use plugin_sdk::{
    models::{paging, ConversationMetadata, ConversationMetadataResultSet, EventPage, Secrets, Settings},
    CallContext, ErrorCode, EventQuery, PluginError,
};
use serde_json::{json, Map, Value};
use sqlx::Row as _;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

fn user(ctx: &CallContext) -> &str {
    ctx.user_id().unwrap_or("")
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> PluginError {
    tracing::error!(error = %e, "stored {what} does not parse");
    PluginError::internal(format!("stored {what} is corrupt ({e})"))
}

/// Common admin commands; `rotate` re-seals one table's column.
async fn admin(db: &Db, command: &str, rotate: Option<(&str, &str)>) -> Result<Value, PluginError> {
    match (command, rotate) {
        ("migrate", _) => Ok(json!({ "database": db.label(), "applied": db.migrate().await? })),
        ("rotate_keys", Some((table, column))) => rotate_keys(db, table, column).await,
        _ => Err(PluginError::new(ErrorCode::UNIMPLEMENTED, format!("no `{command}` command in this store"))),
    }
}

/// Re-seals, with the current master key, every value of `table.column` sealed with another
/// one: in batches, each its own transaction with `FOR UPDATE SKIP LOCKED`, so it is safe
/// while serving and resumable (a stop leaves a consistent table; the next run continues).
/// Works for at most 5 s per call and reports what remains.
async fn rotate_keys(db: &Db, table: &str, column: &str) -> Result<Value, PluginError> {
    let pool = db.ready().await?;
    let current = format!("v1.{}.%", db.keys.current_id());
    let started = Instant::now();
    let mut rotated = 0u64;
    while started.elapsed() < Duration::from_secs(5) {
        let mut tx = pool.begin().await.map_err(db_error)?;
        let rows = sqlx::query(&format!(
            "SELECT user_id, {column} FROM {table} WHERE {column} IS NOT NULL AND {column} NOT LIKE $1 \
             LIMIT 200 FOR UPDATE SKIP LOCKED"
        ))
        .bind(&current)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let user_id: String = row.get(0);
            let sealed: String = row.get(1);
            let at = Binding { table, field: column, user_id: &user_id };
            let plain = db.keys.open(&sealed, &at)?;
            let resealed = db.keys.seal(&plain, &at)?;
            sqlx::query(&format!("UPDATE {table} SET {column} = $1 WHERE user_id = $2"))
                .bind(resealed)
                .bind(&user_id)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        rotated += rows.len() as u64;
    }
    let remaining: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {table} WHERE {column} IS NOT NULL AND {column} NOT LIKE $1"
    ))
    .bind(&current)
    .fetch_one(pool)
    .await
    .map_err(db_error)?;
    Ok(json!({ "table": table, "key_id": db.keys.current_id(), "rotated": rotated, "remaining": remaining }))
}

async fn health(db: &Db) -> Result<String, PluginError> {
    let pool = db.ping().await?;
    Ok(format!("PostgreSQL {} ({} connections)", db.label(), pool.size()))
}

pub struct SaasSettingsStore {
    pub(crate) db: Arc<Db>,
}

impl plugin_sdk::SettingsStore for SaasSettingsStore {
    async fn load(&self, ctx: CallContext) -> Result<Option<Settings>, PluginError> {
        let pool = self.db.ready().await?;
        let row = sqlx::query("SELECT settings, sealed_secrets FROM user_settings WHERE user_id = $1")
            .bind(user(&ctx))
            .fetch_optional(pool)
            .await
            .map_err(db_error)?;
        let Some(row) = row else { return Ok(None) };
        let mut doc: Value = row.get(0);
        let sealed: Option<String> = row.get(1);
        if let (Some(sealed), Some(obj)) = (sealed, doc.as_object_mut()) {
            let at = Binding { table: "user_settings", field: "sealed_secrets", user_id: user(&ctx) };
            let plain = self.db.keys.open(&sealed, &at)?;
            let secret: Map<String, Value> = serde_json::from_slice(&plain).map_err(|e| corrupt("settings", e))?;
            obj.extend(secret);
        }
        serde_json::from_value(doc).map(Some).map_err(|e| corrupt("settings", e))
    }

    async fn store(&self, ctx: CallContext, settings: Settings) -> Result<(), PluginError> {
        let pool = self.db.ready().await?;
        let mut doc = serde_json::to_value(&settings).map_err(|e| PluginError::internal(e.to_string()))?;
        let obj = doc.as_object_mut().ok_or_else(|| PluginError::internal("settings is not an object"))?;
        let mut secret = Map::new();
        for field in Settings::SECRET_FIELDS {
            if let Some(v) = obj.remove(field).filter(|v| !v.is_null()) {
                secret.insert(field.to_owned(), v);
            }
        }
        let sealed = if secret.is_empty() {
            None
        } else {
            let at = Binding { table: "user_settings", field: "sealed_secrets", user_id: user(&ctx) };
            Some(self.db.keys.seal(Value::Object(secret).to_string().as_bytes(), &at)?)
        };
        sqlx::query(
            "INSERT INTO user_settings (user_id, settings, sealed_secrets, updated_at) VALUES ($1, $2, $3, now()) \
             ON CONFLICT (user_id) DO UPDATE SET settings = EXCLUDED.settings, \
             sealed_secrets = EXCLUDED.sealed_secrets, updated_at = now()",
        )
        .bind(user(&ctx))
        .bind(&doc)
        .bind(sealed)
        .execute(pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn health(&self) -> Result<String, PluginError> {
        health(&self.db).await
    }

    async fn admin(&self, _ctx: CallContext, command: String, _args: Value) -> Result<Value, PluginError> {
        admin(&self.db, &command, Some(("user_settings", "sealed_secrets"))).await
    }
}

pub struct SaasSecretsStore {
    pub(crate) db: Arc<Db>,
}

impl plugin_sdk::SecretsStore for SaasSecretsStore {
    async fn load(&self, ctx: CallContext) -> Result<Option<Secrets>, PluginError> {
        let pool = self.db.ready().await?;
        let sealed: Option<String> = sqlx::query_scalar("SELECT sealed FROM user_secrets WHERE user_id = $1")
            .bind(user(&ctx))
            .fetch_optional(pool)
            .await
            .map_err(db_error)?;
        let Some(sealed) = sealed else { return Ok(None) };
        let at = Binding { table: "user_secrets", field: "sealed", user_id: user(&ctx) };
        let plain = self.db.keys.open(&sealed, &at)?;
        serde_json::from_slice(&plain).map(Some).map_err(|e| corrupt("secrets", e))
    }

    async fn store(&self, ctx: CallContext, secrets: Secrets) -> Result<(), PluginError> {
        let pool = self.db.ready().await?;
        let plain = serde_json::to_vec(&secrets).map_err(|e| PluginError::internal(e.to_string()))?;
        let at = Binding { table: "user_secrets", field: "sealed", user_id: user(&ctx) };
        let sealed = self.db.keys.seal(&plain, &at)?;
        sqlx::query(
            "INSERT INTO user_secrets (user_id, sealed, updated_at) VALUES ($1, $2, now()) \
             ON CONFLICT (user_id) DO UPDATE SET sealed = EXCLUDED.sealed, updated_at = now()",
        )
        .bind(user(&ctx))
        .bind(sealed)
        .execute(pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn health(&self) -> Result<String, PluginError> {
        health(&self.db).await
    }

    async fn admin(&self, _ctx: CallContext, command: String, _args: Value) -> Result<Value, PluginError> {
        admin(&self.db, &command, Some(("user_secrets", "sealed"))).await
    }
}

pub struct SaasConversationStore {
    pub(crate) db: Arc<Db>,
}

fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, PluginError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| PluginError::invalid_argument(format!("created_at `{text}` is not an RFC 3339 time: {e}")))
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
        let docs: Vec<Value> = sqlx::query_scalar(
            "SELECT metadata FROM conversation_metadata WHERE user_id = $1 \
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
        for doc in docs.into_iter().take(limit as usize) {
            match serde_json::from_value(doc) {
                Ok(m) => results.push(m),
                Err(e) => tracing::warn!(error = %e, "skipping unreadable conversation metadata in search"),
            }
        }
        let end = offset + results.len();
        Ok(ConversationMetadataResultSet { results, next_page_id: paging::offset_to_page_id(end, has_next) })
    }

    async fn append_events(&self, ctx: CallContext, id: String, events: Vec<Value>) -> Result<u64, PluginError> {
        let pool = self.db.ready().await?;
        let mut tx = pool.begin().await.map_err(db_error)?;
        // The row lock on the conversation serialises appends across hosts: ids stay dense.
        let owned: Option<String> = sqlx::query_scalar(
            "SELECT conversation_id FROM conversation_metadata WHERE conversation_id = $1 AND user_id = $2 FOR UPDATE",
        )
        .bind(&id)
        .bind(user(&ctx))
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        if owned.is_none() {
            return Err(PluginError::not_found("conversation not found"));
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

    async fn admin(&self, _ctx: CallContext, command: String, _args: Value) -> Result<Value, PluginError> {
        admin(&self.db, &command, None).await
    }
}
