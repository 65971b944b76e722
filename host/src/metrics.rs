//! The host's Prometheus metrics: counters, gauges and histograms by name and labels, kept in
//! one process-wide registry, and their text exposition (`/internal/metrics` on the admin
//! address). Plugins report theirs through `HostApi` (`metric`, `gauge`, `observe`).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Mutex, OnceLock},
};

/// Latency buckets, in seconds: 1 ms to 1 min.
pub const SECONDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// LLM call buckets, in seconds: 50 ms to 5 min.
pub const LLM_SECONDS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Gauge,
    Histogram(&'static [f64]),
}

enum Series {
    Value(f64),
    Histogram { buckets: Vec<u64>, sum: f64, count: u64 },
}

struct Family {
    help: String,
    kind: Kind,
    /// Series by their rendered label set (`a="1",b="2"`, sorted by label name).
    series: BTreeMap<String, Series>,
}

#[derive(Default)]
pub struct Metrics {
    families: Mutex<BTreeMap<String, Family>>,
}

/// The process's registry.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

/// A metric name as Prometheus allows it (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
pub fn sanitize_name(name: &str) -> String {
    let mut out: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == ':' { c } else { '_' }).collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `a="1",b="2"`, sorted by name, names sanitized, values escaped.
pub fn render_labels<'a>(labels: impl IntoIterator<Item = (&'a str, String)>) -> String {
    let sorted: BTreeMap<String, String> = labels.into_iter().map(|(k, v)| (sanitize_name(k), v)).collect();
    sorted.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect::<Vec<_>>().join(",")
}

fn labels_of(labels: &[(&str, &str)]) -> String {
    render_labels(labels.iter().map(|(k, v)| (*k, (*v).to_owned())))
}

impl Metrics {
    fn with(&self, name: &str, help: &str, kind: Kind, labels: String, update: impl FnOnce(&mut Series)) {
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let family = families.entry(sanitize_name(name)).or_insert_with(|| Family {
            help: help.to_owned(),
            kind,
            series: BTreeMap::new(),
        });
        if family.kind != kind {
            return; // one name, one type: a second type is ignored rather than corrupting output
        }
        let series = family.series.entry(labels).or_insert_with(|| match kind {
            Kind::Histogram(bounds) => Series::Histogram { buckets: vec![0; bounds.len()], sum: 0.0, count: 0 },
            _ => Series::Value(0.0),
        });
        update(series);
    }

    /// Adds `by` to a counter.
    pub fn inc(&self, name: &str, help: &str, labels: &[(&str, &str)], by: f64) {
        self.inc_rendered(name, help, labels_of(labels), by);
    }

    pub fn inc_rendered(&self, name: &str, help: &str, labels: String, by: f64) {
        self.with(name, help, Kind::Counter, labels, |s| {
            if let Series::Value(v) = s {
                *v += by.max(0.0);
            }
        });
    }

    /// Sets a gauge (`delta`: adds to it instead).
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)], value: f64, delta: bool) {
        self.gauge_rendered(name, help, labels_of(labels), value, delta);
    }

    pub fn gauge_rendered(&self, name: &str, help: &str, labels: String, value: f64, delta: bool) {
        self.with(name, help, Kind::Gauge, labels, |s| {
            if let Series::Value(v) = s {
                *v = if delta { *v + value } else { value };
            }
        });
    }

    /// Records one observation in a histogram with these bucket bounds.
    pub fn observe(&self, name: &str, help: &str, bounds: &'static [f64], labels: &[(&str, &str)], value: f64) {
        self.observe_rendered(name, help, bounds, labels_of(labels), value);
    }

    pub fn observe_rendered(&self, name: &str, help: &str, bounds: &'static [f64], labels: String, value: f64) {
        self.with(name, help, Kind::Histogram(bounds), labels, |s| {
            if let Series::Histogram { buckets, sum, count } = s {
                for (i, bound) in bounds.iter().enumerate() {
                    if value <= *bound {
                        buckets[i] += 1;
                    }
                }
                *sum += value;
                *count += 1;
            }
        });
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self, out: &mut String) {
        let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        for (name, family) in families.iter() {
            let kind = match family.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram(_) => "histogram",
            };
            let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {kind}", escape(&family.help));
            for (labels, series) in &family.series {
                match (series, family.kind) {
                    (Series::Value(v), _) => {
                        let _ = writeln!(out, "{name}{} {}", braces(labels), number(*v));
                    }
                    (Series::Histogram { buckets, sum, count }, Kind::Histogram(bounds)) => {
                        let sep = if labels.is_empty() { "" } else { "," };
                        for (bound, n) in bounds.iter().zip(buckets) {
                            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{}\"}} {n}", number(*bound));
                        }
                        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
                        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), number(*sum));
                        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
                    }
                    _ => {}
                }
            }
        }
    }
}

fn braces(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

fn number(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The process's own metrics (Prometheus' `process_*` conventions), from `/proc/self`.
pub fn render_process(out: &mut String) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v * 1024.0)
    };
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces): utime is the 14th field,
    // stime the 15th, starttime the 22nd (clock ticks).
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let uptime_boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse::<f64>().ok()));
    let fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as f64).ok();
    let mut put = |name: &str, help: &str, kind: &str, value: Option<f64>| {
        if let Some(v) = value {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}", number(v));
        }
    };
    put("process_resident_memory_bytes", "Resident memory size in bytes.", "gauge", kb("VmRSS:"));
    put("process_virtual_memory_bytes", "Virtual memory size in bytes.", "gauge", kb("VmSize:"));
    put(
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        "counter",
        tick(11).zip(tick(12)).map(|(u, s)| (u + s) / ticks_per_second),
    );
    put("process_open_fds", "Number of open file descriptors.", "gauge", fds);
    put(
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        "gauge",
        uptime_boot.zip(tick(19)).map(|(boot, start)| boot + start / ticks_per_second),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_in_the_exposition_format() {
        let m = Metrics::default();
        m.inc("oh_requests_total", "Requests.", &[("route", "/api/x"), ("method", "GET")], 1.0);
        m.inc("oh_requests_total", "Requests.", &[("method", "GET"), ("route", "/api/x")], 2.0);
        m.gauge("oh_sockets", "Sockets.", &[], 3.0, false);
        m.gauge("oh_sockets", "Sockets.", &[], -1.0, true);
        m.observe("oh_latency_seconds", "Latency.", &[0.1, 1.0], &[("q", "a\"b")], 0.5);
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("# TYPE oh_requests_total counter\noh_requests_total{method=\"GET\",route=\"/api/x\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("oh_sockets 2\n"), "{out}");
        assert!(out.contains("oh_latency_seconds_bucket{q=\"a\\\"b\",le=\"0.1\"} 0\n"), "{out}");
        assert!(out.contains("oh_latency_seconds_bucket{q=\"a\\\"b\",le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("oh_latency_seconds_bucket{q=\"a\\\"b\",le=\"+Inf\"} 1\n"), "{out}");
        assert!(
            out.contains("oh_latency_seconds_sum{q=\"a\\\"b\"} 0.5\noh_latency_seconds_count{q=\"a\\\"b\"} 1\n"),
            "{out}"
        );
        assert_eq!(sanitize_name("9 bad-name"), "_9_bad_name");
    }
}
