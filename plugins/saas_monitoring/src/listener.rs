//! The listener: PostHog capture from a bounded queue, A/B experiments applied to the start request, feature flags per user, OpenHands' SaaS metrics.

use crate::config::Config;
use crate::experiments::{Experiment, EXPERIMENTS};
use crate::flags::{Flags, Subject};
use crate::posthog::{Event, PostHog};
use pg_common::Database;
use plugin_sdk::{
    models::{ExperimentAssignment, ExperimentQuery, FlagSubject},
    CallContext, PluginError, Services,
};
use serde_json::{json, Value};
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub struct SaaSMonitoringListener {
    services: Services,
    posthog: Option<Arc<PostHog>>,
    experiments: Vec<(String, Experiment)>,
    flags: Flags,
    /// `(user, flag, variant)` already reported as `$feature_flag_called` by this process
    /// (the web client asks on every page load); cleared when full.
    reported: Mutex<std::collections::HashSet<(String, String, String)>>,
    override_user_model: bool,
    default_model: Option<String>,
    db: Option<Arc<Database>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn env(name: &str) -> Option<String> {
    plugin_sdk::env(name).filter(|v| !v.trim().is_empty())
}

impl SaaSMonitoringListener {
    pub(crate) fn new(services: Services, config_json: &str) -> Result<Self, PluginError> {
        let c: Config = plugin_sdk::parse_config(config_json)?;
        let key = c.posthog_key.clone().filter(|k| !k.is_empty()).or_else(|| env("POSTHOG_CLIENT_KEY"));
        let host = c
            .posthog_host
            .clone()
            .or_else(|| env("POSTHOG_HOST"))
            .unwrap_or_else(|| "https://us.i.posthog.com".to_owned());
        let posthog = key.map(|key| {
            Arc::new(PostHog::new(
                key,
                host,
                c.queue_size.unwrap_or(10_000),
                c.batch_size.unwrap_or(100),
                c.max_retries.unwrap_or(3),
            ))
        });
        let enabled = match c.enable_experiments {
            Some(on) => on,
            None => seed_env::flag(&env("ENABLE_EXPERIMENT_MANAGER").unwrap_or_default())
                .map_err(|e| PluginError::invalid_config(format!("ENABLE_EXPERIMENT_MANAGER: {e}")))?,
        };
        let mut experiments = Vec::new();
        if enabled {
            for (name, var) in EXPERIMENTS {
                if let Some(json) = env(var) {
                    experiments
                        .push((name.to_owned(), Experiment::parse(var, &json).map_err(PluginError::invalid_config)?));
                }
            }
        }
        let flags = Flags::new(c.feature_flags, c.cohorts).map_err(PluginError::invalid_config)?;
        let db = if experiments.is_empty() && !flags.needs_subjects() {
            None
        } else {
            Some(
                pg_common::Pool {
                    database_url: c.database_url.as_deref(),
                    max_connections: None,
                    acquire_timeout_ms: pg_common::default_acquire_timeout_ms(),
                }
                .open(true)?,
            )
        };
        let listener = SaaSMonitoringListener {
            services: services.clone(),
            posthog,
            experiments,
            flags,
            reported: Mutex::default(),
            override_user_model: c.experiments_override_user_model,
            default_model: c.default_model.clone().or_else(|| env("LITELLM_DEFAULT_MODEL")),
            db,
            tasks: Mutex::default(),
        };
        if let Some(ph) = &listener.posthog {
            let interval = Duration::from_millis(c.flush_interval_ms.unwrap_or(1000).max(10));
            let task = plugin_sdk::enter_runtime(|| {
                tokio::runtime::Handle::try_current().ok().map(|_| ph.start(services.clone(), interval))
            });
            listener.tasks.lock().unwrap_or_else(|e| e.into_inner()).extend(task);
        }
        Ok(listener)
    }

    fn capture(&self, ctx: &CallContext, name: &str, properties: Value) {
        if let Some(ph) = &self.posthog {
            ph.capture(Event {
                name: name.to_owned(),
                user: ctx.user_id().map(str::to_owned),
                properties,
                timestamp: now(),
            });
        }
    }

    /// The user's stored email (`email` when given, which replaces it) and sign-up time (the
    /// first time a flag was evaluated for them, stored once). `None` without a database.
    async fn subject(
        &self,
        user: &str,
        email: Option<&str>,
    ) -> Result<Option<(Option<String>, chrono::DateTime<chrono::Utc>)>, PluginError> {
        let Some(db) = self.db.as_ref().filter(|_| self.flags.needs_subjects()) else { return Ok(None) };
        let pool = db.ready().await?;
        let (email, first_seen_ms): (Option<String>, i64) = sqlx::query_as(
            "INSERT INTO flag_subjects (user_id, email) VALUES ($1, $2)
             ON CONFLICT (user_id) DO UPDATE SET email = COALESCE(EXCLUDED.email, flag_subjects.email),
                 updated_at = CASE WHEN EXCLUDED.email IS DISTINCT FROM flag_subjects.email THEN now() ELSE flag_subjects.updated_at END
             RETURNING email, (extract(epoch FROM first_seen) * 1000)::bigint",
        )
        .bind(user)
        .bind(email)
        .fetch_one(pool)
        .await
        .map_err(pg_common::db_error)?;
        let first_seen = chrono::DateTime::from_timestamp_millis(first_seen_ms).unwrap_or_default();
        Ok(Some((email, first_seen)))
    }

    /// The user's feature flags, as assignments (`experiment` = flag); each variant reported
    /// to PostHog as `$feature_flag_called` once per process.
    async fn feature_flags(&self, ctx: &CallContext, asked: &FlagSubject) -> Result<Option<String>, PluginError> {
        let Some(user) = ctx.user_id().filter(|_| !self.flags.is_empty()) else { return Ok(None) };
        let stored = self.subject(user, asked.email.as_deref()).await?;
        let (email, signed_up) = match &stored {
            Some((email, first_seen)) => (email.as_deref(), Some(*first_seen)),
            None => (asked.email.as_deref(), None),
        };
        let evaluated = self.flags.evaluate(&Subject { user, email, signed_up }, &asked.flags);
        let mut answers = Vec::new();
        for (flag, variant) in evaluated {
            let first = {
                let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
                if reported.len() >= 100_000 {
                    reported.clear();
                }
                reported.insert((user.to_owned(), flag.clone(), variant.clone()))
            };
            if first {
                self.capture(
                    ctx,
                    "$feature_flag_called",
                    json!({ "$feature_flag": flag, "$feature_flag_response": variant }),
                );
            }
            answers.push(ExperimentAssignment { experiment: flag, variant, ..Default::default() });
        }
        Ok(Some(serde_json::to_string(&answers).map_err(|e| PluginError::internal(e.to_string()))?))
    }

    /// Records a conversation's assignment (once; a conversation restarted keeps its row).
    async fn record(&self, conversation: &str, user: Option<&str>, experiment: &str, variant: &str) {
        let Some(db) = &self.db else { return };
        let recorded = async {
            let pool = db.ready().await?;
            sqlx::query(
                "INSERT INTO experiment_assignments (conversation_id, experiment, variant, user_id) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (conversation_id, experiment) DO NOTHING",
            )
            .bind(conversation)
            .bind(experiment)
            .bind(variant)
            .bind(user.unwrap_or(""))
            .execute(pool)
            .await
            .map_err(pg_common::db_error)?;
            Ok::<(), PluginError>(())
        };
        if let Err(e) = recorded.await {
            tracing::warn!(conversation_id = conversation, experiment, error = %e.message, "cannot record an experiment assignment");
        }
    }
}

impl plugin_sdk::MonitoringListener for SaaSMonitoringListener {
    fn on_session_event(&self, ctx: &CallContext, event: &Value) {
        if event["observation"] != "agent_state_changed" {
            return;
        }
        match event["extras"]["agent_state"].as_str() {
            Some("error") => {
                let reason = event["extras"]["reason"].as_str().unwrap_or("");
                plugin_sdk::metric("saas_agent_status_errors", 1.0, &json!({}));
                self.capture(ctx, "agent status error", json!({ "reason": reason }));
            }
            Some("stopped") => plugin_sdk::gauge("saas_running_agent_loops", -1.0, true, &json!({})),
            _ => {}
        }
    }

    fn on_agent_session_start(&self, ctx: &CallContext, success: bool, duration_secs: f64) {
        let buckets = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
        plugin_sdk::observe(
            "saas_agent_session_start",
            duration_secs,
            &buckets,
            &json!({ "success": success.to_string() }),
        );
        if success {
            plugin_sdk::gauge("saas_running_agent_loops", 1.0, true, &json!({}));
        }
        self.capture(ctx, "agent session started", json!({ "success": success, "duration_secs": duration_secs }));
    }

    fn on_create_conversation(&self, ctx: &CallContext) {
        plugin_sdk::metric("saas_create_conversation", 1.0, &json!({}));
        self.capture(ctx, "conversation created", json!({}));
    }

    fn capture(&self, ctx: &CallContext, event: &str, properties: &Value) {
        SaaSMonitoringListener::capture(self, ctx, event, properties.clone());
    }

    /// The experiments a starting conversation takes part in, and what they change.
    /// Or, asked with `feature_flags`, the user's feature flags.
    async fn experiment_variant(&self, ctx: CallContext, query: String) -> Result<Option<String>, PluginError> {
        let query: ExperimentQuery = serde_json::from_str(&query)
            .map_err(|e| PluginError::invalid_argument(format!("experiment query: {e}")))?;
        if let Some(subject) = &query.feature_flags {
            return self.feature_flags(&ctx, subject).await;
        }
        if self.experiments.is_empty() {
            return Ok(None);
        }
        let user = ctx.user_id();
        let chose_model =
            query.llm_model.as_deref().is_some_and(|m| !m.is_empty() && self.default_model.as_deref() != Some(m));
        let mut answers = Vec::new();
        for (name, experiment) in &self.experiments {
            let (variant, v) = experiment.assign(name, user.unwrap_or("oh-host-single-user"));
            let llm_model = v.model.clone().filter(|_| self.override_user_model || !chose_model);
            answers.push(ExperimentAssignment {
                experiment: name.clone(),
                variant: variant.to_owned(),
                llm_model,
                system_prompt: v.system_prompt.clone(),
            });
            self.record(&query.conversation_id, user, name, variant).await;
            self.capture(
                &ctx,
                "$feature_flag_called",
                json!({ "$feature_flag": name, "$feature_flag_response": variant, "conversation_id": query.conversation_id }),
            );
        }
        Ok(Some(serde_json::to_string(&answers).map_err(|e| PluginError::internal(e.to_string()))?))
    }

    async fn health(&self) -> Result<String, PluginError> {
        let queued = self.posthog.as_ref().map_or(0, |p| p.queued());
        Ok(format!(
            "PostHog {}, {queued} events queued, {} experiments, {} feature flags",
            if self.posthog.is_some() { "on" } else { "off (no POSTHOG_CLIENT_KEY)" },
            self.experiments.len(),
            self.flags.len()
        ))
    }

    /// Sends what is queued, within the host's shutdown deadline (what is left is counted).
    async fn shutdown(&self) {
        for task in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            task.abort();
        }
        if let Some(ph) = &self.posthog {
            ph.flush(&self.services, Some(Instant::now() + Duration::from_secs(3))).await;
        }
    }
}
