//! `SaaSMonitoringListener`'s `config` table.

use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Config {
    /// PostHog's project key; default POSTHOG_CLIENT_KEY. Without one nothing is sent.
    pub(crate) posthog_key: Option<String>,
    /// Default POSTHOG_HOST, else `https://us.i.posthog.com`.
    pub(crate) posthog_host: Option<String>,
    /// Events kept waiting at most (then the oldest go, counted). Default 10000.
    pub(crate) queue_size: Option<usize>,
    /// Events per request to PostHog. Default 100.
    pub(crate) batch_size: Option<usize>,
    /// How often queued events are sent, in ms. Default 1000.
    pub(crate) flush_interval_ms: Option<u64>,
    /// Retries of a batch PostHog did not take (250 ms, doubling). Default 3.
    pub(crate) max_retries: Option<u32>,
    /// Experiments run only with ENABLE_EXPERIMENT_MANAGER set (or this true).
    pub(crate) enable_experiments: Option<bool>,
    /// A model experiment overrides a model the user chose themselves (default: it does
    /// not; users without a choice of their own get the variant).
    pub(crate) experiments_override_user_model: bool,
    /// The deployment's default model (LITELLM_DEFAULT_MODEL): a user whose model is this
    /// one made no choice of their own.
    pub(crate) default_model: Option<String>,
    /// Where assignments and flag subjects are recorded; default the DB_* variables.
    pub(crate) database_url: Option<String>,
    /// Feature flags, evaluated per user (`flags.rs`).
    pub(crate) feature_flags: Vec<crate::flags::Flag>,
    /// Named sets of users the flags' rules name (`cohort = "staff"`).
    pub(crate) cohorts: std::collections::BTreeMap<String, crate::flags::Rule>,
}
