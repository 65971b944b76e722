//! PostHog capture: events queue in memory (bounded: when full the oldest goes, counted) and
//! a background task sends them in batches to PostHog's `/batch/` endpoint, retrying with
//! backoff before giving a batch up (counted). A hook only queues: it never waits on PostHog.
//! Events of users whose settings say `user_consents_to_analytics: false` are dropped before
//! sending (the consent is read through the host, cached for a minute).

use plugin_sdk::{host_calls::LoadSettings, CallContext, Services};
use serde_json::{json, Value};
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// One captured event.
pub(crate) struct Event {
    pub(crate) name: String,
    /// The user (PostHog's distinct id); `None` in single-user mode.
    pub(crate) user: Option<String>,
    pub(crate) properties: Value,
    pub(crate) timestamp: String,
}

pub(crate) struct PostHog {
    pub(crate) key: String,
    pub(crate) host: String,
    queue: Mutex<VecDeque<Event>>,
    capacity: usize,
    batch: usize,
    retries: u32,
    wake: tokio::sync::Notify,
    http: reqwest::Client,
    consent: Mutex<HashMap<String, (bool, Instant)>>,
}

fn dropped(reason: &str, n: usize) {
    plugin_sdk::metric("saas_posthog_events_dropped_total", n as f64, &json!({ "reason": reason }));
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PostHog {
    pub(crate) fn new(key: String, host: String, capacity: usize, batch: usize, retries: u32) -> PostHog {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .expect("HTTP client");
        PostHog {
            key,
            host: host.trim_end_matches('/').to_owned(),
            queue: Mutex::default(),
            capacity: capacity.max(1),
            batch: batch.max(1),
            retries,
            wake: tokio::sync::Notify::new(),
            http,
            consent: Mutex::default(),
        }
    }

    /// Queues an event; never blocks.
    pub(crate) fn capture(&self, event: Event) {
        let full = {
            let mut queue = lock(&self.queue);
            let full = queue.len() >= self.capacity;
            if full {
                queue.pop_front();
            }
            queue.push_back(event);
            queue.len() >= self.batch
        };
        if full {
            self.wake.notify_one();
        }
    }

    pub(crate) fn queued(&self) -> usize {
        lock(&self.queue).len()
    }

    /// Whether the user agreed to analytics (unknown or unset: yes, as OpenHands; single-user
    /// mode: the settings' answer too).
    async fn consents(&self, services: &Services, user: Option<&str>) -> bool {
        let key = user.unwrap_or("-").to_owned();
        if let Some((yes, at)) = lock(&self.consent).get(&key) {
            if at.elapsed() < Duration::from_secs(60) {
                return *yes;
            }
        }
        let ctx = CallContext::new("posthog-consent", user, 0);
        let yes = match services.call(ctx, LoadSettings {}).await {
            Ok(Some(s)) => s.user_consents_to_analytics != Some(false),
            Ok(None) => true,
            Err(_) => return false, // cannot tell: send nothing rather than too much
        };
        lock(&self.consent).insert(key, (yes, Instant::now()));
        yes
    }

    /// Sends what is queued, in batches, until the queue is empty (or `deadline` passes).
    pub(crate) async fn flush(&self, services: &Services, deadline: Option<Instant>) {
        loop {
            let taken: Vec<Event> = {
                let mut queue = lock(&self.queue);
                let n = queue.len().min(self.batch);
                queue.drain(..n).collect()
            };
            if taken.is_empty() {
                return;
            }
            let mut batch = Vec::with_capacity(taken.len());
            for e in taken {
                if !self.consents(services, e.user.as_deref()).await {
                    continue;
                }
                let distinct = e.user.clone().unwrap_or_else(|| "oh-host-single-user".to_owned());
                batch.push(json!({
                    "event": e.name, "distinct_id": distinct, "properties": e.properties, "timestamp": e.timestamp,
                }));
            }
            if batch.is_empty() {
                continue;
            }
            self.send(&batch, deadline).await;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                dropped("shutdown", self.queued());
                return;
            }
        }
    }

    async fn send(&self, batch: &[Value], deadline: Option<Instant>) {
        let body = json!({ "api_key": self.key, "batch": batch });
        let url = format!("{}/batch/", self.host);
        let mut wait = Duration::from_millis(250);
        for attempt in 0..=self.retries {
            match self.http.post(&url).json(&body).send().await {
                Ok(r) if r.status().is_success() => {
                    plugin_sdk::metric("saas_posthog_events_sent_total", batch.len() as f64, &json!({}));
                    return;
                }
                Ok(r) => tracing::debug!(status = %r.status(), attempt, "PostHog refused a batch"),
                Err(e) => tracing::debug!(error = %e, attempt, "PostHog unreachable"),
            }
            if attempt == self.retries || deadline.is_some_and(|d| Instant::now() + wait >= d) {
                break;
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
        tracing::warn!(events = batch.len(), "PostHog: a batch could not be sent; dropped");
        dropped("send_failed", batch.len());
    }

    /// The sender: every `interval`, or as soon as a batch is full.
    pub(crate) fn start(self: &Arc<Self>, services: Services, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(this) = weak.upgrade() else { break };
                tokio::select! {
                    () = this.wake.notified() => {}
                    () = tokio::time::sleep(interval) => {}
                }
                this.flush(&services, None).await;
            }
        })
    }
}
