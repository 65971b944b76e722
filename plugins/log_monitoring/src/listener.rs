//! One log line per hook: `info` for the rare ones, the per-event one at the configured level.

use plugin_sdk::CallContext;

pub struct LogMonitoringListener {
    pub(crate) debug: bool,
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
