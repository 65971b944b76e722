//! A user's documents: writes of Settings and Secrets, in one place, safe with several hosts on one
//! store: settings by optimistic concurrency (load a version, store if it is still that
//! version, else load again), secrets by one change at a time that the store applies
//! atomically. A store without versions or changes gets a read-modify-write under a lock of
//! this process only (logged once: such a store is not safe with several hosts). And the
//! git provider tokens that count (`effective_tokens`), decided here once.

use super::{App, AppError, AppResult};
use plugin_api::{
    models::{ProviderTokens, Secrets, SecretsChange, Settings},
    CallContext, ErrorCode,
};
use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

/// How long a settings write keeps retrying when another host stored first.
const SETTINGS_RETRY_FOR: Duration = Duration::from_secs(3);

/// Striped locks for the fallback path: one of a fixed set per user, so memory does not grow
/// with the users seen.
pub(crate) struct UserLocks([tokio::sync::Mutex<()>; 64]);

impl Default for UserLocks {
    fn default() -> Self {
        UserLocks(std::array::from_fn(|_| tokio::sync::Mutex::new(())))
    }
}

impl UserLocks {
    fn of(&self, user: Option<&str>) -> &tokio::sync::Mutex<()> {
        let mut h = DefaultHasher::new();
        user.hash(&mut h);
        &self.0[(h.finish() % self.0.len() as u64) as usize]
    }
}

fn unimplemented<T>(r: &Result<T, crate::registry::CallError>) -> bool {
    matches!(r, Err(e) if e.error.code == ErrorCode::UNIMPLEMENTED)
}

fn warn_once(flag: &AtomicBool, what: &str) {
    if !flag.swap(true, Ordering::Relaxed) {
        tracing::warn!("the {what} store cannot version its writes: several hosts on it may lose changes");
    }
}

/// A short random pause before retrying, so writers that collided do not collide again.
async fn backoff(attempt: u32) {
    let mut byte = [0u8; 1];
    let _ = getrandom::getrandom(&mut byte);
    let ms = u64::from(byte[0] % 8) + u64::from(attempt.min(10)) * 2;
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// OpenHands SaaS' default model when `LITELLM_DEFAULT_MODEL` is unset.
const SAAS_DEFAULT_MODEL: &str = "litellm_proxy/claude-sonnet-4-20250514";

impl App {
    /// The user's Settings. As OpenHands SaaS: in SaaS mode with the deployment's LLM proxy
    /// (`LITE_LLM_API_URL`), a signed-in user who has none gets default settings (the proxy
    /// and its default model), stored unless another request stored some first.
    pub async fn settings_or_saas_default(&self, ctx: &CallContext) -> AppResult<Option<Settings>> {
        if let Some(settings) = self.registry().load_settings(ctx.clone()).await? {
            return Ok(Some(settings));
        }
        let env = &self.server.env;
        let (Some(proxy), Some(_)) = (env.lite_llm_api_url.as_ref(), ctx.user_id()) else { return Ok(None) };
        if self.registry().app_mode() != crate::config::AppMode::Saas {
            return Ok(None);
        }
        let defaults = Settings {
            language: Some("en".to_owned()),
            llm_model: Some(env.litellm_default_model.clone().unwrap_or_else(|| SAAS_DEFAULT_MODEL.to_owned())),
            llm_base_url: Some(proxy.clone()),
            enable_proactive_conversation_starters: true,
            ..Settings::default()
        };
        let created = self.registry().store_settings_versioned(ctx.clone(), &defaults, 0).await;
        match created {
            Ok(_) => Ok(Some(defaults)),
            // Another request created them first: theirs.
            Err(e) if e.error.code == ErrorCode::CONFLICT => Ok(self.registry().load_settings(ctx.clone()).await?),
            Err(e) if e.error.code == ErrorCode::UNIMPLEMENTED => {
                self.registry().store_settings(ctx.clone(), &defaults).await?;
                Ok(Some(defaults))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces the caller's Settings with what `change` makes of the stored ones (`None` when
    /// there are none yet). `change` may run more than once: when another writer stored in
    /// between, it runs again on what that writer stored.
    pub async fn update_settings(
        &self,
        ctx: &CallContext,
        mut change: impl FnMut(Option<Settings>) -> AppResult<Settings>,
    ) -> AppResult<()> {
        static WARNED: AtomicBool = AtomicBool::new(false);
        // Writers in this process take turns (no conflict among them); the version check
        // settles races with other hosts.
        let _turn = self.locks.of(ctx.user_id()).lock().await;
        let started = std::time::Instant::now();
        let mut attempt = 0;
        while started.elapsed() < SETTINGS_RETRY_FOR {
            let loaded = self.registry().load_settings_versioned(ctx.clone()).await;
            if unimplemented(&loaded) {
                warn_once(&WARNED, "settings");
                return self.update_settings_unversioned(ctx, change).await;
            }
            let loaded = loaded?;
            let expected = loaded.as_ref().map_or(0, |v| v.version);
            let settings = change(loaded.map(|v| v.settings))?;
            match self.registry().store_settings_versioned(ctx.clone(), &settings, expected).await {
                Ok(_) => return Ok(()),
                Err(e) if e.error.code == ErrorCode::CONFLICT => {
                    attempt += 1;
                    backoff(attempt).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::SettingsContended)
    }

    /// For a store without versions: this process's writers take turns (the caller holds
    /// the user's lock); other hosts on the same store may still overwrite each other.
    async fn update_settings_unversioned(
        &self,
        ctx: &CallContext,
        mut change: impl FnMut(Option<Settings>) -> AppResult<Settings>,
    ) -> AppResult<()> {
        let stored = self.registry().load_settings(ctx.clone()).await?;
        let settings = change(stored)?;
        self.registry().store_settings(ctx.clone(), &settings).await?;
        Ok(())
    }

    /// Applies one change to the caller's secrets. `NOT_FOUND` and `ALREADY_EXISTS` from the
    /// store become `SecretNotFound` and `SecretExists` for the named secret.
    pub async fn change_secrets(&self, ctx: &CallContext, change: SecretsChange) -> AppResult<()> {
        static WARNED: AtomicBool = AtomicBool::new(false);
        let result = self.registry().update_secrets(ctx.clone(), &change).await;
        let result = if unimplemented(&result) {
            warn_once(&WARNED, "secrets");
            let _guard = self.locks.of(ctx.user_id()).lock().await;
            let mut secrets: Secrets = self.registry().load_secrets(ctx.clone()).await?.unwrap_or_default();
            match change.apply(&mut secrets) {
                Ok(()) => self.registry().store_secrets(ctx.clone(), &secrets).await.map_err(AppError::from),
                Err(e) => Err(secret_error(&change, e.code)),
            }
        } else {
            result.map_err(|e| match e.error.code {
                ErrorCode::NOT_FOUND | ErrorCode::ALREADY_EXISTS => secret_error(&change, e.error.code),
                _ => e.into(),
            })
        };
        result
    }
}

impl App {
    /// The caller's Secrets, and the git provider tokens as everything uses them: those the
    /// auth system brokers (Keycloak in SaaS) win over the ones in the secrets store, as in
    /// OpenHands. Both plugins are asked at once.
    pub async fn secrets_and_tokens(&self, ctx: &CallContext) -> AppResult<(Option<Secrets>, ProviderTokens)> {
        let (secrets, brokered) = {
            let r = self.registry();
            tokio::join!(r.load_secrets(ctx.clone()), r.provider_tokens(ctx.clone()))
        };
        let secrets = secrets?;
        let tokens = counted(brokered?, secrets.as_ref());
        Ok((secrets, tokens))
    }

    /// The git provider tokens that count; the secrets store is read only when the auth
    /// system brokers none.
    pub async fn effective_tokens(&self, ctx: &CallContext) -> AppResult<ProviderTokens> {
        match self.registry().provider_tokens(ctx.clone()).await? {
            Some(brokered) => Ok(counted(Some(brokered), None)),
            None => Ok(counted(None, self.registry().load_secrets(ctx.clone()).await?.as_ref())),
        }
    }
}

/// The rule, written once: tokens the auth system brokers win over stored ones.
fn counted(brokered: Option<ProviderTokens>, secrets: Option<&Secrets>) -> ProviderTokens {
    brokered.unwrap_or_else(|| secrets.map(|s| s.provider_tokens.clone()).unwrap_or_default())
}

/// The named secret is missing, or already there.
fn secret_error(change: &SecretsChange, code: ErrorCode) -> AppError {
    let (name, new_name) = match change {
        SecretsChange::CreateCustomSecret { name, .. } | SecretsChange::DeleteCustomSecret { name } => {
            (name.as_str(), name.as_str())
        }
        SecretsChange::UpdateCustomSecret { name, new_name, .. } => (name.as_str(), new_name.as_str()),
        _ => ("", ""),
    };
    if code == ErrorCode::ALREADY_EXISTS {
        AppError::SecretExists(new_name.to_owned())
    } else {
        AppError::SecretNotFound(name.to_owned())
    }
}

impl App {
    /// The caller's Secrets, as stored.
    pub async fn load_secrets(&self, ctx: &CallContext) -> AppResult<Option<Secrets>> {
        Ok(self.registry().load_secrets(ctx.clone()).await?)
    }
}
