//! `BillingUsage`: each LLM call's cost debited from a queue; new work refused without
//! credits.

use crate::ledger::{Kind, Ledger};
use crate::{config::Config, ledger};
use plugin_sdk::{
    models::{Admission, LlmUsage},
    CallContext, ErrorCode, PluginError,
};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::mpsc;

/// One usage to debit, for a user.
type Debit = (String, LlmUsage);

pub struct BillingUsage {
    services: plugin_sdk::Services,
    new_user_credits: Option<String>,
    ledger: Arc<Ledger>,
    queue: Mutex<Option<mpsc::UnboundedSender<Debit>>>,
    worker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// How many times a debit is tried (with backoff) before it is logged as lost.
const DEBIT_ATTEMPTS: u32 = 6;

impl BillingUsage {
    pub(crate) fn new(c: &Config, services: plugin_sdk::Services) -> Result<BillingUsage, PluginError> {
        let ledger = Arc::new(c.ledger()?);
        let (tx, mut rx) = mpsc::unbounded_channel::<Debit>();
        let worker_ledger = ledger.clone();
        let worker = plugin_sdk::enter_runtime(|| {
            tokio::spawn(async move {
                while let Some((user, usage)) = rx.recv().await {
                    debit(&worker_ledger, &user, &usage).await;
                }
            })
        });
        Ok(BillingUsage {
            services,
            new_user_credits: c.new_user_credits(),
            ledger,
            queue: Mutex::new(Some(tx)),
            worker: Mutex::new(Some(worker)),
        })
    }
}

/// Debits one usage, retrying while the database is away. Idempotent: the reference is the
/// conversation and the event, so a usage reported twice is debited once.
async fn debit(ledger: &Ledger, user: &str, usage: &LlmUsage) {
    let Some(amount) = ledger::debit_of(usage.cost) else { return };
    let reference = format!("usage:{}:{}", usage.conversation_id, usage.event_id);
    let mut wait = Duration::from_millis(250);
    for attempt in 1..=DEBIT_ATTEMPTS {
        match ledger.append(user, Kind::Usage, &amount, &reference).await {
            Ok(new) => {
                if new {
                    crate::metrics::counter("oh_billing_credits_spent_usd_total", usage.cost, serde_json::json!({}));
                }
                return;
            }
            Err(e) if attempt < DEBIT_ATTEMPTS => {
                tracing::warn!(user, reference, error = %e, attempt, "usage not debited yet; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => tracing::error!(user, reference, amount, error = %e, "usage not debited: gave up"),
        }
    }
}

impl plugin_sdk::MonitoringListener for BillingUsage {
    fn on_llm_usage(&self, ctx: &CallContext, usage: &LlmUsage) {
        let Some(user) = ctx.user_id() else {
            tracing::warn!(conversation_id = %usage.conversation_id, "LLM usage without a user: nothing to debit");
            return;
        };
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        match queue.as_ref() {
            Some(q) if q.send((user.to_owned(), usage.clone())).is_ok() => {}
            _ => tracing::error!(user, conversation_id = %usage.conversation_id, "usage after shutdown: not debited"),
        }
    }

    async fn admit(&self, ctx: CallContext, admission: Admission) -> Result<(), PluginError> {
        let Some(user) = ctx.user_id() else {
            return Err(PluginError::new(ErrorCode::PAYMENT_REQUIRED, "billing needs a signed-in user"));
        };
        if self.ledger.has_credits(user).await? {
            return Ok(());
        }
        // A user billing has never seen gets the configured welcome credits first.
        if self.new_user_credits.is_some() {
            crate::metrics::welcome(&self.ledger, &self.services, user, self.new_user_credits.as_deref()).await?;
            if self.ledger.has_credits(user).await? {
                return Ok(());
            }
        }
        tracing::info!(user, action = %admission.action, "refused: no credits left");
        let action = admission.action.as_str();
        crate::metrics::counter("oh_billing_refusals_total", 1.0, serde_json::json!({ "action": action }));
        crate::metrics::capture(&self.services, user, "out of credits", serde_json::json!({ "action": action })).await;
        Err(PluginError::new(ErrorCode::PAYMENT_REQUIRED, "You're out of OpenHands Credits. Add funds to continue."))
    }

    async fn health(&self) -> Result<String, PluginError> {
        self.ledger.health().await
    }

    /// Debits still queued are written before the library goes (within 5 s).
    async fn shutdown(&self) {
        drop(self.queue.lock().unwrap_or_else(|e| e.into_inner()).take());
        let worker = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(worker) = worker {
            if tokio::time::timeout(Duration::from_secs(5), worker).await.is_err() {
                tracing::error!("usage debits still queued at shutdown were not written");
            }
        }
    }
}
