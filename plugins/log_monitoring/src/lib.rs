//! `LogMonitoringListener`: one structured log line per monitoring hook, at a configurable
//! level. The OSS default: it makes the hooks visible without any external system.

mod config;
mod listener;

pub use listener::LogMonitoringListener;
use plugin_sdk::Registry;

pub fn register(r: &mut Registry) {
    r.monitoring("LogMonitoringListener", "structured log lines for each monitoring hook", |config, _| {
        Ok(LogMonitoringListener { debug: config::parse(config)?.debug()? })
    });
}

plugin_sdk::export_plugin!(register);
