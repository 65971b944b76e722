//! Git provider tokens (GitHub, GitLab, Bitbucket) brokered through Keycloak: fetched from
//! the broker endpoint at sign-in, stored sealed in `auth_tokens`, refreshed with the
//! provider's token endpoint under a row lock when they expire within 4 hours (OpenHands
//! §10.3), and handed to conversations through `UserAuth::provider_tokens`.

use crate::keycloak::Keycloak;
use pg_common::{
    crypto::{Binding, Keyring},
    db_error,
};
use plugin_sdk::{
    models::{ProviderToken, ProviderTokens},
    PluginError,
};
use serde::Deserialize;
use serde_json::Value;
use sqlx::{PgPool, Row as _};
use std::time::Duration;

/// Refresh when the access token expires within this many seconds.
const REFRESH_WITHIN: i64 = 4 * 3600;

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProviderConfig {
    /// Keycloak identity-provider alias and OpenHands provider name: github, gitlab, bitbucket.
    pub(crate) idp: String,
    /// The OAuth app of the provider (GITHUB_APP_CLIENT_ID, ...); an empty one disables it.
    #[serde(default)]
    pub(crate) client_id: String,
    #[serde(default)]
    pub(crate) client_secret: String,
    /// The provider's token endpoint; default the public one.
    #[serde(default)]
    pub(crate) token_url: Option<String>,
    /// The host reported with the token; default the public one.
    #[serde(default)]
    pub(crate) host: Option<String>,
}

impl ProviderConfig {
    fn token_url(&self) -> String {
        self.token_url.clone().unwrap_or_else(|| match self.idp.as_str() {
            "gitlab" => "https://gitlab.com/oauth/token".to_owned(),
            "bitbucket" => "https://bitbucket.org/site/oauth2/access_token".to_owned(),
            _ => "https://github.com/login/oauth/access_token".to_owned(),
        })
    }

    fn host(&self) -> String {
        self.host.clone().unwrap_or_else(|| match self.idp.as_str() {
            "gitlab" => "gitlab.com".to_owned(),
            "bitbucket" => "bitbucket.org".to_owned(),
            _ => "github.com".to_owned(),
        })
    }
}

pub(crate) struct Providers {
    list: Vec<ProviderConfig>,
    keys: Keyring,
    http: reqwest::Client,
}

/// A token answer, JSON or form-encoded (GitHub's broker tokens are the latter).
struct Grant {
    access: String,
    refresh: Option<String>,
    expires_in: Option<i64>,
    refresh_expires_in: Option<i64>,
}

fn parse_grant(body: &str) -> Option<Grant> {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| {
        Value::Object(
            body.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
                .collect(),
        )
    });
    let num = |k: &str| v[k].as_i64().or_else(|| v[k].as_str().and_then(|s| s.parse().ok()));
    Some(Grant {
        access: v["access_token"].as_str().filter(|s| !s.is_empty())?.to_owned(),
        refresh: v["refresh_token"].as_str().filter(|s| !s.is_empty()).map(str::to_owned),
        expires_in: num("expires_in"),
        refresh_expires_in: num("refresh_token_expires_in"),
    })
}

impl Providers {
    pub(crate) fn new(list: Vec<ProviderConfig>, keys: Keyring) -> Providers {
        let list = list.into_iter().filter(|p| !p.client_id.is_empty()).collect();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("HTTP client");
        Providers { list, keys, http }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn seal(&self, user: &str, field: &str, text: &str) -> Result<String, PluginError> {
        self.keys.seal(text.as_bytes(), &Binding { table: "auth_tokens", field, user_id: user })
    }

    fn open(&self, user: &str, field: &str, sealed: &str) -> Result<String, PluginError> {
        let plain = self.keys.open(sealed, &Binding { table: "auth_tokens", field, user_id: user })?;
        String::from_utf8(plain).map_err(|_| PluginError::internal("stored token is not text"))
    }

    async fn save(&self, pool: &PgPool, user: &str, idp: &str, g: &Grant) -> Result<(), PluginError> {
        let refresh = g.refresh.as_deref().map(|r| self.seal(user, "refresh_sealed", r)).transpose()?;
        sqlx::query(
            "INSERT INTO auth_tokens (user_id, idp, access_sealed, refresh_sealed, access_expires_at, refresh_expires_at, updated_at) \
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5), now() + make_interval(secs => $6), now()) \
             ON CONFLICT (user_id, idp) DO UPDATE SET access_sealed = EXCLUDED.access_sealed, \
             refresh_sealed = COALESCE(EXCLUDED.refresh_sealed, auth_tokens.refresh_sealed), \
             access_expires_at = EXCLUDED.access_expires_at, refresh_expires_at = EXCLUDED.refresh_expires_at, updated_at = now()",
        )
        .bind(user)
        .bind(idp)
        .bind(self.seal(user, "access_sealed", &g.access)?)
        .bind(refresh)
        .bind(g.expires_in.map(|s| s as f64))
        .bind(g.refresh_expires_in.map(|s| s as f64))
        .execute(pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    /// At sign-in: each configured provider's tokens from Keycloak's broker, stored sealed.
    /// A provider the user has not linked is skipped.
    pub(crate) async fn fetch_from_broker(&self, kc: &Keycloak, pool: &PgPool, user: &str, kc_access: &str) {
        for p in &self.list {
            match kc.broker_token(&p.idp, kc_access).await {
                Ok(body) => match parse_grant(&body) {
                    Some(g) => {
                        if let Err(e) = self.save(pool, user, &p.idp, &g).await {
                            tracing::warn!(idp = %p.idp, error = %e, "cannot store a provider token");
                        }
                    }
                    None => tracing::warn!(idp = %p.idp, "Keycloak's broker answered without an access token"),
                },
                Err(e) => tracing::info!(idp = %p.idp, error = %e, "no brokered token for this provider"),
            }
        }
    }

    /// At sign-in: the user's GitHub and GitLab identities (Keycloak's federated identities)
    /// are theirs at the integrations too (`integration_links`), so mentioning the agent on
    /// GitHub or GitLab works for them without another step. Best effort: without the admin
    /// API (the client's service account needs `view-users`), nothing is linked here.
    pub(crate) async fn link_identities(&self, kc: &Keycloak, pool: &PgPool, user: &str) {
        let identities = match kc.federated_identities(user).await {
            Ok(list) => list,
            Err(e) => {
                tracing::info!(error = %e, "identities not linked for the integrations (Keycloak admin API)");
                return;
            }
        };
        for (idp, name) in identities.into_iter().filter(|(idp, _)| idp == "github" || idp == "gitlab") {
            let linked = sqlx::query(
                "INSERT INTO integration_links (provider, external_id, user_id) VALUES ($1, $2, $3)
                 ON CONFLICT (provider, external_id) DO UPDATE SET user_id = EXCLUDED.user_id",
            )
            .bind(&idp)
            .bind(name.to_lowercase())
            .bind(user)
            .execute(pool)
            .await;
            if let Err(e) = linked {
                tracing::warn!(idp, error = %e, "cannot link an identity for the integrations");
            }
        }
    }

    /// The user's provider tokens, refreshed first when they expire within 4 hours. A token
    /// that cannot be refreshed is deleted (the user signs in again) and left out.
    pub(crate) async fn tokens(&self, pool: &PgPool, user: &str) -> Result<ProviderTokens, PluginError> {
        let mut out = ProviderTokens::new();
        for p in &self.list {
            let mut tx = pool.begin().await.map_err(db_error)?;
            // The row lock makes concurrent requests (and hosts) refresh once.
            let row = sqlx::query(
                "SELECT access_sealed, refresh_sealed, \
                 access_expires_at IS NOT NULL AND access_expires_at < now() + make_interval(secs => $3) \
                 FROM auth_tokens WHERE user_id = $1 AND idp = $2 FOR UPDATE",
            )
            .bind(user)
            .bind(&p.idp)
            .bind(REFRESH_WITHIN as f64)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
            let Some(row) = row else { continue };
            let (access, refresh, expiring): (String, Option<String>, bool) = (row.get(0), row.get(1), row.get(2));
            let token = if expiring {
                match self.refresh(p, user, refresh.as_deref()).await {
                    Ok(g) => {
                        tx.commit().await.map_err(db_error)?;
                        self.save(pool, user, &p.idp, &g).await?;
                        g.access
                    }
                    Err(e) => {
                        tracing::warn!(idp = %p.idp, error = %e, "provider token refresh failed; the user must sign in again");
                        sqlx::query("DELETE FROM auth_tokens WHERE user_id = $1 AND idp = $2")
                            .bind(user)
                            .bind(&p.idp)
                            .execute(&mut *tx)
                            .await
                            .map_err(db_error)?;
                        tx.commit().await.map_err(db_error)?;
                        continue;
                    }
                }
            } else {
                tx.commit().await.map_err(db_error)?;
                self.open(user, "access_sealed", &access)?
            };
            out.insert(p.idp.clone(), ProviderToken { token: Some(token), host: Some(p.host()), user_id: None });
        }
        Ok(out)
    }

    async fn refresh(&self, p: &ProviderConfig, user: &str, refresh_sealed: Option<&str>) -> Result<Grant, String> {
        let sealed = refresh_sealed.ok_or("no refresh token")?;
        let refresh = self.open(user, "refresh_sealed", sealed).map_err(|e| e.message.to_string())?;
        let token_url = p.token_url();
        let app = oauth_client::Provider {
            label: &p.idp,
            client_id: &p.client_id,
            client_secret: &p.client_secret,
            authorize_url: "",
            token_url: &token_url,
        };
        let tokens = app.refresh(&self.http, &refresh).await.map_err(|e| e.to_string())?;
        // GitHub says how long its refresh token lasts.
        let num = |k: &str| tokens.field(k).as_i64().or_else(|| tokens.field(k).as_str().and_then(|s| s.parse().ok()));
        Ok(Grant {
            access: tokens.access().to_owned(),
            refresh: tokens.refresh().map(str::to_owned),
            expires_in: tokens.expires_in().map(|d| d.as_secs() as i64),
            refresh_expires_in: num("refresh_token_expires_in"),
        })
    }
}
