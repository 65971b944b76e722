//! Each user's own key at the deployment's LLM proxy (LiteLLM), for running agents on their
//! own machines ("bring your own runtime"): `GET /api/keys/llm/byor` answers the stored key or
//! has the proxy generate one (`POST /key/generate`, the proxy's master key), and
//! `POST /api/keys/llm/byor/refresh` deletes it at the proxy and makes a new one. Keys are
//! stored sealed in `llm_keys`.

use pg_common::{
    crypto::{Binding, Keyring},
    db_error,
};
use plugin_sdk::PluginError;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;

/// The deployment's LiteLLM proxy.
pub(crate) struct Proxy {
    url: String,
    master_key: String,
    /// The proxy team generated keys join, when the deployment has one.
    team_id: Option<String>,
    keys: Keyring,
    http: reqwest::Client,
}

impl Proxy {
    /// `None` unless both the proxy's URL and its master key are configured.
    pub(crate) fn new(
        url: Option<&str>,
        master_key: Option<&str>,
        team_id: Option<&str>,
        keys: Keyring,
    ) -> Option<Proxy> {
        let url = url.map(str::trim).filter(|u| !u.is_empty())?.trim_end_matches('/').to_owned();
        let master_key = master_key.map(str::trim).filter(|k| !k.is_empty())?.to_owned();
        let team_id = team_id.map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned);
        let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().expect("HTTP client");
        Some(Proxy { url, master_key, team_id, keys, http })
    }

    fn binding(user: &str) -> Binding<'_> {
        Binding { table: "llm_keys", field: "key_sealed", user_id: user }
    }

    async fn stored(&self, pool: &PgPool, user: &str) -> Result<Option<String>, PluginError> {
        let sealed: Option<String> = sqlx::query_scalar("SELECT key_sealed FROM llm_keys WHERE user_id = $1")
            .bind(user)
            .fetch_optional(pool)
            .await
            .map_err(db_error)?;
        let Some(sealed) = sealed else { return Ok(None) };
        let plain = self.keys.open(&sealed, &Self::binding(user))?;
        String::from_utf8(plain).map(Some).map_err(|_| PluginError::internal("stored LLM key is not text"))
    }

    async fn call(&self, path: &str, body: Value) -> Result<Value, PluginError> {
        let url = format!("{}/{path}", self.url);
        let failed = |e: String| PluginError::unavailable(format!("the LLM proxy at {} failed: {e}", self.url));
        let response = self
            .http
            .post(&url)
            .bearer_auth(&self.master_key)
            .json(&body)
            .send()
            .await
            .map_err(|e| failed(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(failed(format!("{path} answered {status}")));
        }
        response.json().await.map_err(|e| failed(format!("{path} answered something other than JSON: {e}")))
    }

    async fn generate(&self, user: &str) -> Result<String, PluginError> {
        let mut body =
            json!({ "user_id": user, "metadata": { "type": "byor" }, "key_alias": format!("BYOR Key - user {user}") });
        if let Some(team) = &self.team_id {
            body["team_id"] = json!(team);
        }
        let answer = self.call("key/generate", body).await?;
        answer["key"]
            .as_str()
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| PluginError::unavailable("the LLM proxy generated no key"))
    }

    /// Best effort: a key left at the proxy is a leak, not an error for the user.
    async fn delete(&self, key: &str) {
        if let Err(e) = self.call("key/delete", json!({ "keys": [key] })).await {
            tracing::warn!(error = %e, "could not delete an LLM key at the proxy");
        }
    }

    /// The user's key, generated and stored on first use. Two hosts generating at once keep
    /// the first stored; the other key is deleted at the proxy.
    pub(crate) async fn key(&self, pool: &PgPool, user: &str) -> Result<String, PluginError> {
        if let Some(key) = self.stored(pool, user).await? {
            return Ok(key);
        }
        let key = self.generate(user).await?;
        let sealed = self.keys.seal(key.as_bytes(), &Self::binding(user))?;
        let inserted = sqlx::query("INSERT INTO llm_keys (user_id, key_sealed) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(user)
            .bind(sealed)
            .execute(pool)
            .await
            .map_err(db_error)?
            .rows_affected();
        if inserted == 1 {
            return Ok(key);
        }
        self.delete(&key).await;
        self.stored(pool, user).await?.ok_or_else(|| PluginError::internal("the stored LLM key vanished"))
    }

    /// A new key in place of the old one, which the proxy forgets.
    pub(crate) async fn refresh(&self, pool: &PgPool, user: &str) -> Result<String, PluginError> {
        let old = self.stored(pool, user).await?;
        let key = self.generate(user).await?;
        let sealed = self.keys.seal(key.as_bytes(), &Self::binding(user))?;
        sqlx::query(
            "INSERT INTO llm_keys (user_id, key_sealed) VALUES ($1, $2) \
             ON CONFLICT (user_id) DO UPDATE SET key_sealed = EXCLUDED.key_sealed, created_at = now()",
        )
        .bind(user)
        .bind(sealed)
        .execute(pool)
        .await
        .map_err(db_error)?;
        if let Some(old) = old {
            self.delete(&old).await;
        }
        Ok(key)
    }
}
