//! `SaasSecretsStore`: a row per custom secret (`user_custom_secrets`) and per provider token
//! (`user_provider_tokens`), each value sealed and bound to its user and name, so a change
//! touches only its row and hosts sharing the database never lose each other's writes.
//!
//! Rows of the older one-document table (`user_secrets`) are split into these inside the first
//! change that finds them (under that row's lock), or by `oh-host migrate`.

use crate::{
    admin::{corrupt, health_with_keys, rotate_columns, user, SealedColumn},
    cache::VersionCache,
    db::{db_error, Db},
};
use pg_common::crypto::Binding;
use plugin_sdk::{
    models::{CustomSecret, ProviderToken, Secrets, SecretsChange},
    CallContext, ErrorCode, PluginError,
};
use serde_json::{json, Value};
use sqlx::{PgConnection, Row as _};
use std::{collections::BTreeSet, sync::Arc};

pub struct SaasSecretsStore {
    pub(crate) db: Arc<Db>,
    /// Decrypted secrets by user, checked against `user_secrets_versions` on every load.
    pub(crate) cache: VersionCache<Option<Secrets>>,
}

const SEALED: [SealedColumn; 3] = [
    SealedColumn { table: "user_secrets", column: "sealed", keys: &["user_id"], field: |_| "sealed".to_owned() },
    SealedColumn {
        table: "user_custom_secrets",
        column: "sealed",
        keys: &["user_id", "name"],
        field: |k| custom_field(&k[1]),
    },
    SealedColumn {
        table: "user_provider_tokens",
        column: "sealed_token",
        keys: &["user_id", "provider"],
        field: |k| token_field(&k[1]),
    },
];

fn custom_field(name: &str) -> String {
    format!("secret:{name}")
}

fn token_field(provider: &str) -> String {
    format!("token:{provider}")
}

fn already_exists(name: &str) -> PluginError {
    PluginError::new(ErrorCode::ALREADY_EXISTS, format!("Secret {name} already exists"))
}

fn not_found(name: &str) -> PluginError {
    PluginError::not_found(format!("Secret with ID {name} not found"))
}

impl SaasSecretsStore {
    /// The secrets of the rows of `load` (`None`: the user has none).
    fn open_rows(&self, user: &str, rows: &[sqlx::postgres::PgRow]) -> Result<Option<Secrets>, PluginError> {
        let row = |kind: &'static str| rows.iter().filter(move |r| r.get::<&str, _>(0) == kind);
        if row("l").chain(row("c")).chain(row("t")).next().is_none() {
            return Ok(None);
        }
        let mut secrets = match row("l").next() {
            Some(r) => self.open_legacy(user, r.get(2))?,
            None => Secrets::default(),
        };
        for r in row("c") {
            let name: String = r.get(1);
            let value = self.open(user, &custom_field(&name), "user_custom_secrets", r.get(2))?;
            secrets.custom_secrets.insert(name, CustomSecret { secret: value, description: r.get(3) });
        }
        for r in row("t") {
            let provider: String = r.get(1);
            let sealed: Option<String> = r.get(2);
            let token =
                sealed.map(|s| self.open(user, &token_field(&provider), "user_provider_tokens", &s)).transpose()?;
            secrets.provider_tokens.insert(provider, ProviderToken { token, host: r.get(3), user_id: r.get(4) });
        }
        // OpenHands drops provider tokens without a token on load.
        secrets.provider_tokens.retain(|_, t| t.token.as_deref().is_some_and(|t| !t.is_empty()) || t.user_id.is_some());
        Ok(Some(secrets))
    }

    /// Bumps the user's secrets version: first in every change's transaction, so changes of
    /// one user also queue on this row, always before any other lock they take.
    async fn bump_version(conn: &mut PgConnection, user: &str) -> Result<(), PluginError> {
        sqlx::query(
            "INSERT INTO user_secrets_versions (user_id, version) VALUES ($1, 1) \
             ON CONFLICT (user_id) DO UPDATE SET version = user_secrets_versions.version + 1",
        )
        .bind(user)
        .execute(conn)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    fn seal(&self, user: &str, field: &str, table: &str, value: &str) -> Result<String, PluginError> {
        self.db.keys.seal(value.as_bytes(), &Binding { table, field, user_id: user })
    }

    fn open(&self, user: &str, field: &str, table: &str, sealed: &str) -> Result<String, PluginError> {
        let plain = self.db.keys.open(sealed, &Binding { table, field, user_id: user })?;
        String::from_utf8(plain).map_err(|e| corrupt("secret", e))
    }

    fn open_legacy(&self, user: &str, sealed: &str) -> Result<Secrets, PluginError> {
        let plain = self.db.keys.open(sealed, &Binding { table: "user_secrets", field: "sealed", user_id: user })?;
        serde_json::from_slice(&plain).map_err(|e| corrupt("secrets", e))
    }

    async fn insert_custom(
        &self,
        conn: &mut PgConnection,
        user: &str,
        name: &str,
        secret: &CustomSecret,
    ) -> Result<bool, PluginError> {
        let sealed = self.seal(user, &custom_field(name), "user_custom_secrets", &secret.secret)?;
        let done = sqlx::query(
            "INSERT INTO user_custom_secrets (user_id, name, sealed, description) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id, name) DO NOTHING",
        )
        .bind(user)
        .bind(name)
        .bind(sealed)
        .bind(&secret.description)
        .execute(conn)
        .await
        .map_err(db_error)?;
        Ok(done.rows_affected() == 1)
    }

    async fn upsert_token(
        &self,
        conn: &mut PgConnection,
        user: &str,
        provider: &str,
        token: &ProviderToken,
        replace: bool,
    ) -> Result<(), PluginError> {
        let sealed = token
            .token
            .as_deref()
            .map(|t| self.seal(user, &token_field(provider), "user_provider_tokens", t))
            .transpose()?;
        let on_conflict = if replace {
            "DO UPDATE SET sealed_token = EXCLUDED.sealed_token, host = EXCLUDED.host, \
             provider_user_id = EXCLUDED.provider_user_id, updated_at = now()"
        } else {
            "DO NOTHING"
        };
        sqlx::query(&format!(
            "INSERT INTO user_provider_tokens (user_id, provider, sealed_token, host, provider_user_id) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, provider) {on_conflict}"
        ))
        .bind(user)
        .bind(provider)
        .bind(sealed)
        .bind(&token.host)
        .bind(&token.user_id)
        .execute(conn)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    /// Splits the user's one-document row, if there is one, into per-row secrets (rows already
    /// there win), under the old row's lock. Every change calls this first, so a change made
    /// while an old row exists waits for the split and sees its secrets.
    async fn split_legacy(&self, conn: &mut PgConnection, user: &str) -> Result<bool, PluginError> {
        let sealed: Option<String> =
            sqlx::query_scalar("SELECT sealed FROM user_secrets WHERE user_id = $1 FOR UPDATE")
                .bind(user)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db_error)?;
        let Some(sealed) = sealed else { return Ok(false) };
        let legacy = self.open_legacy(user, &sealed)?;
        for (name, secret) in &legacy.custom_secrets {
            self.insert_custom(conn, user, name, secret).await?;
        }
        for (provider, token) in &legacy.provider_tokens {
            self.upsert_token(conn, user, provider, token, false).await?;
        }
        sqlx::query("DELETE FROM user_secrets WHERE user_id = $1")
            .bind(user)
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
        Ok(true)
    }

    /// The user's stored tokens, decrypted, locked for this transaction.
    async fn tokens_for_update(
        &self,
        conn: &mut PgConnection,
        user: &str,
    ) -> Result<Vec<(String, ProviderToken)>, PluginError> {
        let rows = sqlx::query(
            "SELECT provider, sealed_token, host, provider_user_id FROM user_provider_tokens \
             WHERE user_id = $1 FOR UPDATE",
        )
        .bind(user)
        .fetch_all(conn)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|r| {
                let provider: String = r.get(0);
                let sealed: Option<String> = r.get(1);
                let token =
                    sealed.map(|s| self.open(user, &token_field(&provider), "user_provider_tokens", &s)).transpose()?;
                Ok((provider, ProviderToken { token, host: r.get(2), user_id: r.get(3) }))
            })
            .collect()
    }

    async fn apply(&self, conn: &mut PgConnection, user: &str, change: &SecretsChange) -> Result<(), PluginError> {
        match change {
            SecretsChange::CreateCustomSecret { name, secret, description } => {
                let value = CustomSecret { secret: secret.clone(), description: description.clone() };
                if !self.insert_custom(conn, user, name, &value).await? {
                    return Err(already_exists(name));
                }
            }
            SecretsChange::UpdateCustomSecret { name, new_name, description } if name == new_name => {
                let done = sqlx::query(
                    "UPDATE user_custom_secrets SET description = $3, updated_at = now() WHERE user_id = $1 AND name = $2",
                )
                .bind(user)
                .bind(name)
                .bind(description)
                .execute(conn)
                .await
                .map_err(db_error)?;
                if done.rows_affected() == 0 {
                    return Err(not_found(name));
                }
            }
            SecretsChange::UpdateCustomSecret { name, new_name, description } => {
                let sealed: Option<String> = sqlx::query_scalar(
                    "SELECT sealed FROM user_custom_secrets WHERE user_id = $1 AND name = $2 FOR UPDATE",
                )
                .bind(user)
                .bind(name)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db_error)?;
                let Some(sealed) = sealed else { return Err(not_found(name)) };
                // The value is bound to its name: renaming re-seals it.
                let value = self.open(user, &custom_field(name), "user_custom_secrets", &sealed)?;
                let renamed = CustomSecret { secret: value, description: description.clone() };
                if !self.insert_custom(conn, user, new_name, &renamed).await? {
                    return Err(already_exists(new_name));
                }
                sqlx::query("DELETE FROM user_custom_secrets WHERE user_id = $1 AND name = $2")
                    .bind(user)
                    .bind(name)
                    .execute(conn)
                    .await
                    .map_err(db_error)?;
            }
            SecretsChange::DeleteCustomSecret { name } => {
                let done = sqlx::query("DELETE FROM user_custom_secrets WHERE user_id = $1 AND name = $2")
                    .bind(user)
                    .bind(name)
                    .execute(conn)
                    .await
                    .map_err(db_error)?;
                if done.rows_affected() == 0 {
                    return Err(not_found(name));
                }
            }
            SecretsChange::SetProviderTokens { provider_tokens } => {
                // One writer of a user's provider set at a time (the set is replaced whole).
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext('oh-provider-tokens:' || $1))")
                    .bind(user)
                    .execute(&mut *conn)
                    .await
                    .map_err(db_error)?;
                let stored = self.tokens_for_update(conn, user).await?;
                let mut kept = BTreeSet::new();
                for (provider, incoming) in provider_tokens {
                    let before = stored.iter().find(|(p, _)| p == provider).map(|(_, t)| t);
                    if let Some(token) = SecretsChange::provider_token(incoming, before) {
                        self.upsert_token(conn, user, provider, &token, true).await?;
                        kept.insert(provider.clone());
                    }
                }
                for (provider, _) in stored.iter().filter(|(p, _)| !kept.contains(p)) {
                    sqlx::query("DELETE FROM user_provider_tokens WHERE user_id = $1 AND provider = $2")
                        .bind(user)
                        .bind(provider)
                        .execute(&mut *conn)
                        .await
                        .map_err(db_error)?;
                }
            }
            SecretsChange::UnsetProviderTokens => {
                sqlx::query("DELETE FROM user_provider_tokens WHERE user_id = $1")
                    .bind(user)
                    .execute(conn)
                    .await
                    .map_err(db_error)?;
            }
        }
        Ok(())
    }

    /// `oh-host migrate`: the SQL migrations, then every old one-document row split.
    async fn split_and_migrate(&self) -> Result<Value, PluginError> {
        let applied = self.db.migrate().await?;
        let pool = self.db.ready().await?;
        let mut split = 0u64;
        loop {
            let users: Vec<String> = sqlx::query_scalar("SELECT user_id FROM user_secrets LIMIT 100")
                .fetch_all(pool)
                .await
                .map_err(db_error)?;
            if users.is_empty() {
                break;
            }
            for user in users {
                let mut tx = pool.begin().await.map_err(db_error)?;
                if self.split_legacy(&mut tx, &user).await? {
                    split += 1;
                }
                tx.commit().await.map_err(db_error)?;
            }
        }
        Ok(json!({ "database": self.db.label(), "applied": applied, "split_secret_documents": split }))
    }
}

impl plugin_sdk::SecretsStore for SaasSecretsStore {
    /// With a cached copy, one round trip for the version (a primary-key lookup); when it
    /// changed, or nothing is cached, one statement for the version and the rows together
    /// (one snapshot: the rows are those of that version).
    async fn load(&self, ctx: CallContext) -> Result<Option<Secrets>, PluginError> {
        let mut conn = self.db.kept().await?;
        let user = user(&ctx);
        let known = self.cache.version(user);
        if known >= 0 {
            let version: i64 = sqlx::query_scalar(
                "SELECT coalesce((SELECT version FROM user_secrets_versions WHERE user_id = $1), 0)",
            )
            .bind(user)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_error)?;
            if let Some(secrets) = self.cache.get(user, version) {
                conn.keep();
                return Ok((*secrets).clone());
            }
        }
        let rows = sqlx::query(
            "WITH v AS (SELECT coalesce(max(version), 0)::int8 AS version FROM user_secrets_versions \
                        WHERE user_id = $1) \
             SELECT 'v' AS kind, NULL::text AS name, NULL::text AS sealed, NULL::text AS extra, \
                    NULL::text AS puid, version FROM v \
             UNION ALL SELECT 'l', NULL, sealed, NULL, NULL, NULL FROM user_secrets WHERE user_id = $1 \
             UNION ALL SELECT 'c', name, sealed, description, NULL, NULL FROM user_custom_secrets WHERE user_id = $1 \
             UNION ALL SELECT 't', provider, sealed_token, host, provider_user_id, NULL \
                       FROM user_provider_tokens WHERE user_id = $1",
        )
        .bind(user)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
        let version: i64 = rows.iter().find(|r| r.get::<&str, _>(0) == "v").map_or(0, |r| r.get(5));
        let secrets = self.open_rows(user, &rows)?;
        self.cache.put(user, version, Arc::new(secrets.clone()));
        conn.keep();
        Ok(secrets)
    }

    /// Replaces every secret of the user (the whole-document write of older callers).
    async fn store(&self, ctx: CallContext, secrets: Secrets) -> Result<(), PluginError> {
        let pool = self.db.ready().await?;
        let user = user(&ctx);
        let mut tx = pool.begin().await.map_err(db_error)?;
        Self::bump_version(&mut tx, user).await?;
        self.split_legacy(&mut tx, user).await?;
        for table in ["user_custom_secrets", "user_provider_tokens"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1"))
                .bind(user)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        for (name, secret) in &secrets.custom_secrets {
            self.insert_custom(&mut tx, user, name, secret).await?;
        }
        for (provider, token) in &secrets.provider_tokens {
            self.upsert_token(&mut tx, user, provider, token, true).await?;
        }
        tx.commit().await.map_err(db_error)
    }

    async fn update(&self, ctx: CallContext, change: SecretsChange) -> Result<(), PluginError> {
        let pool = self.db.ready().await?;
        let user = user(&ctx);
        let mut tx = pool.begin().await.map_err(db_error)?;
        Self::bump_version(&mut tx, user).await?;
        self.split_legacy(&mut tx, user).await?;
        self.apply(&mut tx, user, &change).await?;
        tx.commit().await.map_err(db_error)
    }

    async fn health(&self) -> Result<String, PluginError> {
        health_with_keys(&self.db, &SEALED).await
    }

    async fn migrate(&self, _ctx: CallContext) -> Result<Value, PluginError> {
        self.split_and_migrate().await
    }

    async fn rotate_keys(&self, _ctx: CallContext) -> Result<Value, PluginError> {
        rotate_columns(&self.db, &SEALED).await
    }
}
