//! A/B experiments on the model and the system prompt (OpenHands' experiment manager).
//!
//! Each experiment is an environment variable holding its variants with weights as JSON:
//!
//! ```json
//! {"variants": {"control": {"weight": 50},
//!               "gpt5":    {"weight": 50, "model": "openai/gpt-5"}}}
//! ```
//!
//! A variant may set `model` (the conversation's LLM) or `system_prompt` (the agent's first
//! message), or nothing (the control). A user's variant is a pure function of their id and
//! the experiment's name (SHA-256, then the weights), so it is the same in every conversation
//! and on every host. Each assignment is recorded per conversation in PostgreSQL
//! (`experiment_assignments`) and reported to PostHog as `$feature_flag_called`.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The environment variables that hold experiments, by experiment name.
pub(crate) const EXPERIMENTS: [(&str, &str); 3] = [
    ("litellm_default_model", "EXPERIMENT_LITELLM_DEFAULT_MODEL_EXPERIMENT"),
    ("system_prompt", "EXPERIMENT_SYSTEM_PROMPT_EXPERIMENT"),
    ("claude4_vs_gpt5", "EXPERIMENT_CLAUDE4_VS_GPT5"),
];

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Variant {
    pub(crate) weight: u32,
    #[serde(default)]
    pub(crate) model: Option<String>,
    #[serde(default)]
    pub(crate) system_prompt: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct Experiment {
    /// By name; assignment walks them in name order.
    pub(crate) variants: BTreeMap<String, Variant>,
}

impl Experiment {
    /// Parses an experiment's JSON; the error names what is wrong.
    pub(crate) fn parse(var: &str, json: &str) -> Result<Experiment, String> {
        let e: Experiment = serde_json::from_str(json).map_err(|e| {
            format!("{var}: {e} (expected {{\"variants\": {{\"control\": {{\"weight\": 50}}, \"b\": {{\"weight\": 50, \"model\": \"...\"}}}}}})")
        })?;
        if e.variants.is_empty() || e.variants.values().all(|v| v.weight == 0) {
            return Err(format!("{var}: needs at least one variant with a weight above 0"));
        }
        Ok(e)
    }

    /// The user's variant: deterministic and sticky.
    pub(crate) fn assign(&self, experiment: &str, user: &str) -> (&str, &Variant) {
        let total: u64 = self.variants.values().map(|v| u64::from(v.weight)).sum();
        let digest = Sha256::digest(format!("{experiment}:{user}").as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        let mut point = u64::from_be_bytes(first) % total;
        for (name, variant) in &self.variants {
            let w = u64::from(variant.weight);
            if point < w {
                return (name, variant);
            }
            point -= w;
        }
        let (name, variant) = self.variants.iter().next_back().expect("variants are not empty");
        (name, variant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thousand_users_split_by_the_weights_and_each_keeps_their_variant() {
        let e = Experiment::parse(
            "X",
            r#"{"variants": {"control": {"weight": 70}, "b": {"weight": 20, "model": "openai/gpt-5"}, "c": {"weight": 10, "system_prompt": "Be brief."}}}"#,
        )
        .unwrap();
        let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
        for u in 0..1000 {
            let user = format!("user-{u}");
            let (name, _) = e.assign("exp", &user);
            *counts.entry(name).or_default() += 1;
            assert_eq!(e.assign("exp", &user).0, name, "sticky");
        }
        for (name, expected) in [("control", 700.0_f64), ("b", 200.0), ("c", 100.0)] {
            let got = f64::from(counts[name]);
            // Binomial: within four standard deviations.
            let sd = (1000.0 * (expected / 1000.0) * (1.0 - expected / 1000.0)).sqrt();
            assert!((got - expected).abs() <= 4.0 * sd, "{name}: {got} for {expected} ({counts:?})");
        }
        // Another experiment splits the same users independently.
        let other: u32 = (0..1000).filter(|u| e.assign("other", &format!("user-{u}")).0 == "b").count() as u32;
        assert!((120..=280).contains(&other), "{other}");
    }

    #[test]
    fn bad_experiments_are_named() {
        assert!(Experiment::parse("EXPERIMENT_X", "{}").unwrap_err().starts_with("EXPERIMENT_X"));
        assert!(Experiment::parse("E", r#"{"variants": {"a": {"weight": 0}}}"#).is_err());
        assert!(Experiment::parse("E", r#"{"variants": {"a": {"weight": 1, "modle": "x"}}}"#)
            .unwrap_err()
            .contains("modle"));
    }
}
