//! Read-modify-write of a user's Settings and Secrets documents, in one place: the per-user
//! lock is taken here, so a route cannot forget it.

use super::{error::ApiResult, extract::Caller, AppState};
use plugin_api::models::{Secrets, Settings};
use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
};

/// Striped locks: one of a fixed set per user, so memory does not grow with the users seen.
pub(super) struct UserLocks([tokio::sync::Mutex<()>; 64]);

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

impl AppState {
    /// Replaces the caller's Settings with what `change` makes of the stored ones (`None` when
    /// there are none yet), under the caller's lock.
    pub(super) async fn update_settings(
        &self,
        caller: &Caller,
        change: impl FnOnce(Option<Settings>) -> ApiResult<Settings>,
    ) -> ApiResult<()> {
        let _guard = self.locks.of(caller.principal.user_id.as_deref()).lock().await;
        let stored = self.registry.load_settings(caller.ctx.clone()).await?;
        let settings = change(stored)?;
        self.registry.store_settings(caller.ctx.clone(), &settings).await?;
        Ok(())
    }

    /// Changes the caller's Secrets (empty when none are stored) with `change`, under the
    /// caller's lock, and stores them unless `change` fails.
    pub(super) async fn update_secrets<T>(
        &self,
        caller: &Caller,
        change: impl FnOnce(&mut Secrets) -> ApiResult<T>,
    ) -> ApiResult<T> {
        let _guard = self.locks.of(caller.principal.user_id.as_deref()).lock().await;
        let mut secrets = self.registry.load_secrets(caller.ctx.clone()).await?.unwrap_or_default();
        let answer = change(&mut secrets)?;
        self.registry.store_secrets(caller.ctx.clone(), &secrets).await?;
        Ok(answer)
    }
}
