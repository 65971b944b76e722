//! Feature flags and cohorts, evaluated per user.
//!
//! A flag has a `default` variant and `rules`, tried in order; the first rule whose
//! conditions all hold gives the user its `variant` (or a weighted `split` of variants). The
//! conditions: `users` (explicit user ids), `email_domains`, `signed_up_after` /
//! `signed_up_before` (RFC 3339; the user's sign-up is the first time this deployment saw
//! them), `percentage` (of users, 0 to 100) and `cohort` (a named set of the same conditions,
//! in `cohorts`, shared by flags).
//!
//! Sticky without a table of assignments: a user's bucket is a pure function of the flag's
//! name and their id (SHA-256), the same on every host and every day, and a percentage
//! admits the buckets below it, so raising it only adds users. The sign-up time is stored
//! once per user (`flag_subjects`) and never moves.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// A rule of a flag, or a cohort (conditions only, no variant).
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rule {
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    email_domains: Vec<String>,
    #[serde(default)]
    signed_up_after: Option<DateTime<Utc>>,
    #[serde(default)]
    signed_up_before: Option<DateTime<Utc>>,
    #[serde(default)]
    percentage: Option<f64>,
    #[serde(default)]
    cohort: Option<String>,
    #[serde(default)]
    variant: Option<String>,
    /// Variants by weight, for the users the rule matches.
    #[serde(default)]
    split: BTreeMap<String, u32>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct Flag {
    name: String,
    #[serde(default = "off")]
    default: String,
    #[serde(default)]
    rules: Vec<Rule>,
}

fn off() -> String {
    "false".to_owned()
}

/// Who is asking: what the rules look at.
pub(crate) struct Subject<'a> {
    pub(crate) user: &'a str,
    pub(crate) email: Option<&'a str>,
    pub(crate) signed_up: Option<DateTime<Utc>>,
}

/// Every flag of the deployment, with the cohorts they name.
#[derive(Debug, Default)]
pub(crate) struct Flags {
    flags: Vec<Flag>,
    cohorts: BTreeMap<String, Rule>,
}

/// A number in [0, 10000) for `salt` and `user`: the user's place among all users.
fn bucket(salt: &str, user: &str) -> u64 {
    let digest = Sha256::digest(format!("{salt}:{user}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) % 10_000
}

impl Flags {
    /// Checks the flags against the cohorts; the error names the flag and what is wrong.
    pub(crate) fn new(flags: Vec<Flag>, cohorts: BTreeMap<String, Rule>) -> Result<Flags, String> {
        let mut seen = std::collections::BTreeSet::new();
        for (name, c) in &cohorts {
            if c.cohort.is_some() || c.variant.is_some() || !c.split.is_empty() {
                return Err(format!("cohorts.{name}: a cohort is conditions only (no cohort, variant or split)"));
            }
            check(c).map_err(|e| format!("cohorts.{name}: {e}"))?;
        }
        for f in &flags {
            let at = format!("feature_flags `{}`", f.name);
            if f.name.is_empty() || !seen.insert(f.name.clone()) {
                return Err(format!("{at}: every flag needs a name of its own"));
            }
            for (i, r) in f.rules.iter().enumerate() {
                let at = format!("{at}, rule {}", i + 1);
                check(r).map_err(|e| format!("{at}: {e}"))?;
                if let Some(c) = r.cohort.as_deref().filter(|c| !cohorts.contains_key(*c)) {
                    return Err(format!("{at}: no cohort `{c}` (cohorts defines {:?})", cohorts.keys()));
                }
                match (&r.variant, r.split.is_empty()) {
                    (Some(_), true) => {}
                    (None, false) if r.split.values().any(|w| *w > 0) => {}
                    _ => return Err(format!("{at}: give either `variant` or a `split` with a weight above 0")),
                }
            }
        }
        Ok(Flags { flags, cohorts })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.flags.len()
    }

    /// The subject's variant of each flag in `wanted` (all when empty).
    pub(crate) fn evaluate(&self, subject: &Subject<'_>, wanted: &[String]) -> Vec<(String, String)> {
        self.flags
            .iter()
            .filter(|f| wanted.is_empty() || wanted.contains(&f.name))
            .map(|f| (f.name.clone(), self.variant(f, subject)))
            .collect()
    }

    fn variant(&self, flag: &Flag, subject: &Subject<'_>) -> String {
        for rule in &flag.rules {
            if !self.holds(rule, &flag.name, subject) {
                continue;
            }
            if let Some(v) = &rule.variant {
                return v.clone();
            }
            // Another salt than the percentage's: who is in and which variant they get are
            // independent.
            let total: u64 = rule.split.values().map(|w| u64::from(*w)).sum();
            let mut at = bucket(&format!("{}#split", flag.name), subject.user) * total / 10_000;
            for (variant, weight) in &rule.split {
                if at < u64::from(*weight) {
                    return variant.clone();
                }
                at -= u64::from(*weight);
            }
        }
        flag.default.clone()
    }

    fn holds(&self, c: &Rule, flag: &str, s: &Subject<'_>) -> bool {
        if let Some(cohort) = c.cohort.as_deref() {
            match self.cohorts.get(cohort) {
                Some(members) if self.holds(members, flag, s) => {}
                _ => return false,
            }
        }
        if !c.users.is_empty() && !c.users.iter().any(|u| u == s.user) {
            return false;
        }
        if !c.email_domains.is_empty() {
            let domain = s.email.and_then(|e| e.rsplit_once('@')).map(|(_, d)| d.to_ascii_lowercase());
            if !domain.is_some_and(|d| c.email_domains.iter().any(|want| want.eq_ignore_ascii_case(&d))) {
                return false;
            }
        }
        if c.signed_up_after.is_some() || c.signed_up_before.is_some() {
            let Some(at) = s.signed_up else { return false };
            if c.signed_up_after.is_some_and(|after| at < after) || c.signed_up_before.is_some_and(|b| at >= b) {
                return false;
            }
        }
        if let Some(p) = c.percentage {
            if bucket(flag, s.user) as f64 >= p * 100.0 {
                return false;
            }
        }
        true
    }

    /// Whether a rule looks at the user's email or sign-up (then the subject is stored).
    pub(crate) fn needs_subjects(&self) -> bool {
        let uses =
            |c: &Rule| !c.email_domains.is_empty() || c.signed_up_after.is_some() || c.signed_up_before.is_some();
        self.cohorts.values().any(uses) || self.flags.iter().flat_map(|f| &f.rules).any(uses)
    }
}

fn check(c: &Rule) -> Result<(), String> {
    if c.percentage.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
        return Err("percentage must be 0 to 100".to_owned());
    }
    if let (Some(a), Some(b)) = (c.signed_up_after, c.signed_up_before) {
        if a >= b {
            return Err("signed_up_after must come before signed_up_before".to_owned());
        }
    }
    if c.email_domains.iter().any(|d| d.is_empty() || d.contains('@')) {
        return Err("email_domains are domains (`acme.com`), not addresses".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
