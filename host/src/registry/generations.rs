//! Generations: a reload builds the next registry from the previous one, keeping every
//! instance whose entry did not change, and activates it.

use super::{build::Instance, Registry};
use plugin_api::{
    ConversationManagerObject, ConversationStoreObject, ExtensionPoint, MonitoringObject, RoutesObject, RuntimeObject,
    SecretsStoreObject, SettingsStoreObject, UserAuthObject,
};
use std::sync::Arc;

/// The instances a new generation keeps from the previous one.
pub(crate) struct Kept<'a> {
    pub(crate) settings: &'a mut Option<Arc<Instance<SettingsStoreObject>>>,
    pub(crate) secrets: &'a mut Option<Arc<Instance<SecretsStoreObject>>>,
    pub(crate) conversations: &'a mut Option<Arc<Instance<ConversationStoreObject>>>,
    pub(crate) manager: &'a mut Option<Arc<Instance<ConversationManagerObject>>>,
    pub(crate) runtime: &'a mut Option<Arc<Instance<RuntimeObject>>>,
    pub(crate) auth: &'a mut Option<Arc<Instance<UserAuthObject>>>,
    pub(crate) monitoring: &'a mut Vec<Arc<Instance<MonitoringObject>>>,
    pub(crate) routes: &'a mut Vec<Arc<Instance<RoutesObject>>>,
}

impl Registry {
    /// Makes this generation the one the runtime handles reach.
    pub fn activate(&self) {
        *self.runtime_slot.write().unwrap_or_else(|e| e.into_inner()) = self.runtime.clone();
    }

    /// Puts this generation's instance built from `fingerprint` into `kept`; whether there
    /// was one.
    pub(super) fn reuse(&self, point: ExtensionPoint, fingerprint: &str, kept: &mut Kept<'_>) -> bool {
        fn find<T>(all: &[&Arc<Instance<T>>], fingerprint: &str) -> Option<Arc<Instance<T>>> {
            all.iter().find(|i| i.meta.fingerprint() == fingerprint).map(|i| Arc::clone(i))
        }
        let found = match point {
            ExtensionPoint::SETTINGS_STORE => find(&[&self.settings], fingerprint).map(|i| *kept.settings = Some(i)),
            ExtensionPoint::SECRETS_STORE => find(&[&self.secrets], fingerprint).map(|i| *kept.secrets = Some(i)),
            ExtensionPoint::CONVERSATION_STORE => {
                find(&[&self.conversations], fingerprint).map(|i| *kept.conversations = Some(i))
            }
            ExtensionPoint::CONVERSATION_MANAGER => {
                find(&self.manager.iter().collect::<Vec<_>>(), fingerprint).map(|i| *kept.manager = Some(i))
            }
            ExtensionPoint::RUNTIME => {
                find(&self.runtime.iter().collect::<Vec<_>>(), fingerprint).map(|i| *kept.runtime = Some(i))
            }
            ExtensionPoint::USER_AUTH => find(&[&self.auth], fingerprint).map(|i| *kept.auth = Some(i)),
            ExtensionPoint::MONITORING => {
                find(&self.monitoring.iter().collect::<Vec<_>>(), fingerprint).map(|i| kept.monitoring.push(i))
            }
            ExtensionPoint::ROUTES => {
                find(&self.routes.iter().collect::<Vec<_>>(), fingerprint).map(|i| kept.routes.push(i))
            }
            _ => None,
        };
        found.is_some()
    }

    /// What the conversation manager was built from (`None`: none configured).
    pub fn manager_fingerprint(&self) -> Option<String> {
        self.manager.as_ref().map(|m| m.meta.fingerprint())
    }

    /// Shuts the conversation manager down now (a reload replaces it): its loops store their
    /// state, and the new manager resumes them from the stores.
    pub async fn shutdown_manager(&self, deadline: std::time::Duration) {
        let Some(m) = &self.manager else { return };
        let stopping = m.obj.shutdown(deadline.as_millis() as u64);
        let done = async move {
            stopping.await;
            abi_stable::std_types::ROk::<(), plugin_api::PluginError>(())
        };
        let fut = async_ffi::FutureExt::into_ffi(done);
        if m.meta.call_with("shutdown", fut, Some(deadline), super::call::Kind::Probe).await.is_err() {
            tracing::warn!(extension = %m.meta.key, "the replaced manager did not stop within its deadline");
        }
    }

    /// Shuts down what this generation holds and `other` does not: its instances, then the
    /// libraries' runtimes (libraries stay loaded).
    pub async fn retire_beside(&self, other: &Registry, deadline: std::time::Duration) {
        let ms = deadline.as_millis() as u64;
        let kept = other.instances();
        for i in self.instances() {
            if kept.iter().any(|k| std::ptr::eq(k.meta(), i.meta())) {
                continue;
            }
            let meta = i.meta();
            let fut = i.shutdown(ms);
            if tokio::time::timeout(deadline, fut).await.is_err() {
                tracing::warn!(extension = %meta.key, "shutdown did not finish within {ms} ms");
            }
        }
        for lib in &self.libraries {
            if other.libraries.iter().any(|l| l.loaded_from == lib.loaded_from) {
                continue;
            }
            let fut = (lib.module.shutdown())(ms);
            if tokio::time::timeout(deadline, fut).await.is_err() {
                tracing::warn!(library = %lib.name, "library runtime did not stop within {ms} ms");
            }
        }
    }
}
