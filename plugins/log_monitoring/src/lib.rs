//! `LogMonitoringListener`: one structured log line per monitoring hook, at a configurable
//! level. The OSS default: it makes the hooks visible without any external system.

use plugin_sdk::{CallContext, PluginError, Registry};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// `debug` (default) or `info`: the level of the per-event lines (one per stored
    /// conversation event). The other hooks log at `info`.
    #[serde(default = "default_level")]
    level: String,
}

fn default_level() -> String {
    "debug".to_owned()
}

pub struct LogMonitoringListener {
    debug: bool,
}

fn user(ctx: &CallContext) -> &str {
    ctx.user_id().unwrap_or("-")
}

impl plugin_sdk::MonitoringListener for LogMonitoringListener {
    fn on_session_event(&self, ctx: &CallContext, event: &serde_json::Value) {
        let kind = event.get("action").or_else(|| event.get("observation")).and_then(|v| v.as_str()).unwrap_or("other");
        let id = event.get("id").and_then(|v| v.as_i64()).unwrap_or(-1);
        if self.debug {
            tracing::debug!(hook = "on_session_event", user = user(ctx), request_id = %ctx.request_id, kind, id, "session event");
        } else {
            tracing::info!(hook = "on_session_event", user = user(ctx), request_id = %ctx.request_id, kind, id, "session event");
        }
    }

    fn on_agent_session_start(&self, ctx: &CallContext, success: bool, duration_secs: f64) {
        tracing::info!(
            hook = "on_agent_session_start",
            user = user(ctx),
            success,
            duration_secs,
            "agent session started"
        );
    }

    fn on_create_conversation(&self, ctx: &CallContext) {
        tracing::info!(hook = "on_create_conversation", user = user(ctx), request_id = %ctx.request_id, "conversation created");
    }

    fn capture(&self, ctx: &CallContext, event: &str, properties: &serde_json::Value) {
        tracing::info!(hook = "capture", user = user(ctx), event, properties = %properties, "analytics event");
    }
}

pub fn register(r: &mut Registry) {
    r.monitoring("LogMonitoringListener", "structured log lines for each monitoring hook", |config, _| {
        let config: Config = plugin_sdk::parse_config(config)?;
        let debug = match config.level.as_str() {
            "info" => false,
            "debug" => true,
            other => return Err(PluginError::invalid_config(format!("level `{other}`: use \"info\" or \"debug\""))),
        };
        Ok(LogMonitoringListener { debug })
    });
}

plugin_sdk::export_plugin!(register);
