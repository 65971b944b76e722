//! `/internal/metrics` as a test reads it: parsed by a real Prometheus parser.

use prometheus_parse::{Sample, Scrape, Value as Metric};

pub fn scrape(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("not the exposition format: {e}\n{text}"))
}

/// The first series of `name` with these labels (others may be on it too).
pub fn find<'a>(s: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    s.samples.iter().find(|m| m.metric == name && labels.iter().all(|(k, v)| m.labels.get(k) == Some(*v)))
}

/// A counter's or gauge's value (0 when the series is not there yet).
pub fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    match find(s, name, labels).map(|m| &m.value) {
        Some(Metric::Counter(n) | Metric::Gauge(n) | Metric::Untyped(n)) => *n,
        None => 0.0,
        other => panic!("{name} {labels:?}: not a counter or gauge: {other:?}"),
    }
}

/// How many observations a histogram series holds.
pub fn histogram_count(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> u64 {
    match find(s, name, labels).map(|m| &m.value) {
        Some(Metric::Histogram(buckets)) => buckets.iter().map(|b| b.count).fold(0.0, f64::max) as u64,
        other => {
            let seen: Vec<_> =
                s.samples.iter().filter(|m| m.metric == name).map(|m| format!("{:?}", m.labels)).collect();
            panic!("{name} {labels:?}: not a histogram: {other:?}; series: {seen:#?}")
        }
    }
}
