//! `SaasSettingsStore`: `user_settings`, one row per user, the sealed fields (API keys and
//! `mcp_config`) encrypted together, and a `version` checked on every versioned write.

use crate::{
    admin::{corrupt, health_with_keys, migrate, rotate_columns, user, SealedColumn},
    cache::VersionCache,
    db::{db_error, Db},
};
use pg_common::crypto::Binding;
use plugin_sdk::{
    models::{Settings, VersionedSettings},
    CallContext, ErrorCode, PluginError,
};
use serde_json::{Map, Value};
use sqlx::Row as _;
use std::sync::Arc;

pub struct SaasSettingsStore {
    pub(crate) db: Arc<Db>,
    /// Decrypted settings by user, checked against `user_settings.version` on every load.
    pub(crate) cache: VersionCache<Settings>,
}

const SEALED: SealedColumn = SealedColumn {
    table: "user_settings",
    column: "sealed_secrets",
    keys: &["user_id"],
    field: |_| "sealed_secrets".to_owned(),
};

fn binding(user_id: &str) -> Binding<'_> {
    Binding { table: "user_settings", field: "sealed_secrets", user_id }
}

impl SaasSettingsStore {
    /// The row's document without the sealed fields, and those fields sealed.
    fn split(&self, ctx: &CallContext, settings: &Settings) -> Result<(Value, Option<String>), PluginError> {
        let mut doc = serde_json::to_value(settings).map_err(|e| PluginError::internal(e.to_string()))?;
        let obj = doc.as_object_mut().ok_or_else(|| PluginError::internal("settings is not an object"))?;
        let mut secret = Map::new();
        for field in Settings::SEALED_FIELDS {
            if let Some(v) = obj.remove(field).filter(|v| !v.is_null()) {
                secret.insert(field.to_owned(), v);
            }
        }
        let sealed = if secret.is_empty() {
            None
        } else {
            Some(self.db.keys.seal(Value::Object(secret).to_string().as_bytes(), &binding(user(ctx)))?)
        };
        Ok((doc, sealed))
    }
}

impl plugin_sdk::SettingsStore for SaasSettingsStore {
    async fn load(&self, ctx: CallContext) -> Result<Option<Settings>, PluginError> {
        Ok(self.load_versioned(ctx).await?.map(|v| v.settings))
    }

    async fn store(&self, ctx: CallContext, settings: Settings) -> Result<(), PluginError> {
        let pool = self.db.ready().await?;
        let (doc, sealed) = self.split(&ctx, &settings)?;
        sqlx::query(
            "INSERT INTO user_settings (user_id, settings, sealed_secrets, updated_at) VALUES ($1, $2, $3, now()) \
             ON CONFLICT (user_id) DO UPDATE SET settings = EXCLUDED.settings, \
             sealed_secrets = EXCLUDED.sealed_secrets, version = user_settings.version + 1, updated_at = now()",
        )
        .bind(user(&ctx))
        .bind(&doc)
        .bind(sealed)
        .execute(pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    /// One round trip: the row's version, and the document only when it is not the cached one.
    async fn load_versioned(&self, ctx: CallContext) -> Result<Option<VersionedSettings>, PluginError> {
        let mut conn = self.db.kept().await?;
        let user = user(&ctx);
        let mut known = self.cache.version(user);
        loop {
            let row = sqlx::query(
                "SELECT version, CASE WHEN version = $2 THEN NULL ELSE settings END, \
                 CASE WHEN version = $2 THEN NULL ELSE sealed_secrets END FROM user_settings WHERE user_id = $1",
            )
            .bind(user)
            .bind(known)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_error)?;
            let Some(row) = row else {
                conn.keep();
                return Ok(None);
            };
            let version: i64 = row.get(0);
            let versioned = |settings| VersionedSettings { version: version.max(1) as u64, settings };
            if version == known {
                match self.cache.get(user, version) {
                    Some(settings) => {
                        conn.keep();
                        return Ok(Some(versioned((*settings).clone())));
                    }
                    // Evicted since we looked: ask for the document (no row has version -1).
                    None => {
                        known = -1;
                        continue;
                    }
                }
            }
            let mut doc: Value = row.get(1);
            let sealed: Option<String> = row.get(2);
            if let (Some(sealed), Some(obj)) = (sealed, doc.as_object_mut()) {
                let plain = self.db.keys.open(&sealed, &binding(user))?;
                let secret: Map<String, Value> = serde_json::from_slice(&plain).map_err(|e| corrupt("settings", e))?;
                obj.extend(secret);
            }
            let settings: Settings = serde_json::from_value(doc).map_err(|e| corrupt("settings", e))?;
            self.cache.put(user, version, Arc::new(settings.clone()));
            conn.keep();
            return Ok(Some(versioned(settings)));
        }
    }

    async fn store_versioned(&self, ctx: CallContext, settings: Settings, expected: u64) -> Result<u64, PluginError> {
        let pool = self.db.ready().await?;
        let (doc, sealed) = self.split(&ctx, &settings)?;
        let stored: Option<i64> = if expected == 0 {
            sqlx::query_scalar(
                "INSERT INTO user_settings (user_id, settings, sealed_secrets, version, updated_at) \
                 VALUES ($1, $2, $3, 1, now()) ON CONFLICT (user_id) DO NOTHING RETURNING version",
            )
            .bind(user(&ctx))
            .bind(&doc)
            .bind(sealed)
            .fetch_optional(pool)
            .await
        } else {
            sqlx::query_scalar(
                "UPDATE user_settings SET settings = $2, sealed_secrets = $3, version = version + 1, updated_at = now() \
                 WHERE user_id = $1 AND version = $4 RETURNING version",
            )
            .bind(user(&ctx))
            .bind(&doc)
            .bind(sealed)
            .bind(expected as i64)
            .fetch_optional(pool)
            .await
        }
        .map_err(db_error)?;
        stored
            .map(|v| v as u64)
            .ok_or_else(|| PluginError::new(ErrorCode::CONFLICT, "the settings changed since they were read"))
    }

    async fn health(&self) -> Result<String, PluginError> {
        health_with_keys(&self.db, &[SEALED]).await
    }

    async fn migrate(&self, _ctx: CallContext) -> Result<Value, PluginError> {
        migrate(&self.db).await
    }

    async fn rotate_keys(&self, _ctx: CallContext) -> Result<Value, PluginError> {
        rotate_columns(&self.db, &[SEALED]).await
    }
}
