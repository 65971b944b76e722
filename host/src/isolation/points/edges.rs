//! `user_auth`, `routes` and `monitoring` on the wire: the host's proxies and the runner's
//! dispatch.

use super::*;
use plugin_api::{AuthOutcome, AuthRequest, AuthType, HttpRequest, HttpResponse, RouteSpec, UserAuthObject};

impl plugin_api::UserAuth for Proxy {
    fn authenticate(&self, ctx: CallContext, request: AuthRequest) -> FfiFuture<PResult<AuthOutcome>> {
        let args = json!({ "request": {
            "method": request.method.as_str(),
            "path": request.path.as_str(),
            "query": request.query.as_str(),
            "headers": headers_to_wire(&request.headers),
            "remote_addr": request.remote_addr.as_str(),
        }});
        self.call("authenticate", ctx, Ok(args), |v| {
            #[derive(serde::Deserialize)]
            struct Outcome {
                user_id: Option<String>,
                email: Option<String>,
                auth_type: u32,
                #[serde(default)]
                response_headers: Value,
            }
            let o: Outcome = typed(v)?;
            let headers =
                if o.response_headers.is_null() { Headers::new() } else { headers_from_wire(o.response_headers)? };
            Ok(AuthOutcome {
                user_id: o.user_id.map(RString::from).into(),
                email: o.email.map(RString::from).into(),
                auth_type: AuthType(o.auth_type),
                response_headers: headers,
            })
        })
    }
    fn provider_tokens(&self, ctx: CallContext) -> FfiFuture<PResult<ROption<RString>>> {
        self.optional("provider_tokens", ctx)
    }
    fn health(&self, ctx: CallContext) -> FfiFuture<PResult<Health>> {
        self.health_(ctx)
    }
    fn shutdown(&self, deadline_ms: u64) -> FfiFuture<()> {
        self.shutdown_(deadline_ms)
    }
}

/// `auth`: calls the library's object.
pub(super) async fn auth(o: &UserAuthObject, method: &str, ctx: CallContext, a: Value) -> Result<Value, PluginError> {
    match method {
        "authenticate" => {
            let r = a.get("request").cloned().unwrap_or(Value::Null);
            let request = AuthRequest {
                method: text_arg(&r, "method")?,
                path: text_arg(&r, "path")?,
                query: text_arg(&r, "query")?,
                headers: headers_from_wire(r.get("headers").cloned().unwrap_or(json!([])))?,
                remote_addr: text_arg(&r, "remote_addr")?,
            };
            let out = o.authenticate(ctx, request).await.into_result()?;
            Ok(json!({
                "user_id": out.user_id.as_ref().map(|s| s.as_str()).into_option(),
                "email": out.email.as_ref().map(|s| s.as_str()).into_option(),
                "auth_type": out.auth_type.0,
                "response_headers": headers_to_wire(&out.response_headers),
            }))
        }
        "provider_tokens" => from_opt(o.provider_tokens(ctx).await.into_result()?),
        "health" => o.health(ctx).await.into_result().map(health_value),
        _ => Err(unknown(method)),
    }
}

/// What `ready` says a `routes` instance serves, as the host declares it.
pub(in crate::isolation) fn declared_routes(ready: &[Value]) -> Vec<RouteSpec> {
    ready
        .iter()
        .filter_map(|r| {
            Some(RouteSpec {
                method: r.get("method")?.as_str()?.into(),
                path: r.get("path")?.as_str()?.into(),
                authenticated: r.get("authenticated").and_then(Value::as_bool).unwrap_or(true),
            })
        })
        .collect()
}

impl plugin_api::RouteHandler for Proxy {
    fn routes(&self) -> RVec<RouteSpec> {
        self.routes.iter().cloned().collect()
    }
    fn handle(&self, ctx: CallContext, request: HttpRequest) -> FfiFuture<PResult<HttpResponse>> {
        let args = json!({ "request": {
            "method": request.method.as_str(),
            "path": request.path.as_str(),
            "query": request.query.as_str(),
            "headers": headers_to_wire(&request.headers),
            "body": b64(&request.body),
        }});
        self.call("handle", ctx, Ok(args), |v| {
            let status = v.get("status").and_then(Value::as_u64).ok_or_else(|| bad("a response without a status"))?;
            Ok(HttpResponse {
                status: u16::try_from(status).map_err(|_| bad(format!("status {status}")))?,
                headers: headers_from_wire(v.get("headers").cloned().unwrap_or(Value::Null))?,
                body: unb64(v.get("body").unwrap_or(&json!("")), "body").map_err(|e| bad(e.message))?,
            })
        })
    }
    fn health(&self, ctx: CallContext) -> FfiFuture<PResult<Health>> {
        self.health_(ctx)
    }
    fn shutdown(&self, deadline_ms: u64) -> FfiFuture<()> {
        self.shutdown_(deadline_ms)
    }
}

/// `routes`: calls the library's object.
pub(super) async fn routes(o: &RoutesObject, method: &str, ctx: CallContext, a: Value) -> Result<Value, PluginError> {
    match method {
        "handle" => {
            let r = a.get("request").cloned().unwrap_or(Value::Null);
            let request = HttpRequest {
                method: text_arg(&r, "method")?,
                path: text_arg(&r, "path")?,
                query: text_arg(&r, "query")?,
                headers: headers_from_wire(r.get("headers").cloned().unwrap_or(Value::Null))?,
                body: unb64(r.get("body").unwrap_or(&json!("")), "body")?,
            };
            let out = o.handle(ctx, request).await.into_result()?;
            Ok(json!({ "status": out.status, "headers": headers_to_wire(&out.headers), "body": b64(&out.body) }))
        }
        "health" => o.health(ctx).await.into_result().map(health_value),
        _ => Err(unknown(method)),
    }
}

impl plugin_api::MonitoringListener for Proxy {
    fn on_session_event(&self, ctx: CallContext, event_json: RString) {
        if let Ok(event) = doc(&event_json) {
            self.notify("on_session_event", &ctx, json!({ "event": event }));
        }
    }
    fn on_agent_session_start(&self, ctx: CallContext, success: bool, duration_secs: f64) {
        self.notify("on_agent_session_start", &ctx, json!({ "success": success, "duration_secs": duration_secs }));
    }
    fn on_create_conversation(&self, ctx: CallContext) {
        self.notify("on_create_conversation", &ctx, json!({}));
    }
    fn experiment_variant(&self, ctx: CallContext, experiment: RString) -> FfiFuture<PResult<ROption<RString>>> {
        self.call("experiment_variant", ctx, doc(&experiment).map(|e| json!({ "experiment": e })), |v| Ok(opt_doc(v)))
    }
    fn health(&self, ctx: CallContext) -> FfiFuture<PResult<Health>> {
        self.health_(ctx)
    }
    fn shutdown(&self, deadline_ms: u64) -> FfiFuture<()> {
        self.shutdown_(deadline_ms)
    }
    fn capture(&self, ctx: CallContext, event: RString, properties_json: RString) {
        if let Ok(properties) = doc(&properties_json) {
            self.notify("capture", &ctx, json!({ "event": event.as_str(), "properties": properties }));
        }
    }
    fn admit(&self, ctx: CallContext, admission_json: RString) -> FfiFuture<PResult<()>> {
        self.call("admit", ctx, doc(&admission_json).map(|a| json!({ "admission": a })), unit)
    }
    fn on_llm_usage(&self, ctx: CallContext, usage_json: RString) {
        if let Ok(usage) = doc(&usage_json) {
            self.notify("on_llm_usage", &ctx, json!({ "usage": usage }));
        }
    }
}

/// `monitoring`'s calls: calls the library's object.
pub(super) async fn monitoring(
    o: &MonitoringObject,
    method: &str,
    ctx: CallContext,
    a: Value,
) -> Result<Value, PluginError> {
    match method {
        "experiment_variant" => from_opt(o.experiment_variant(ctx, doc_arg(&a, "experiment")?).await.into_result()?),
        "admit" => o.admit(ctx, doc_arg(&a, "admission")?).await.into_result().map(|()| Value::Null),
        "health" => o.health(ctx).await.into_result().map(health_value),
        _ => Err(unknown(method)),
    }
}

/// `monitoring`'s hooks (`notify`): sync, quick, no answer.
pub(super) fn monitoring_hook(
    o: &MonitoringObject,
    method: &str,
    ctx: CallContext,
    a: &Value,
) -> Result<(), PluginError> {
    match method {
        "on_session_event" => o.on_session_event(ctx, doc_arg(a, "event")?),
        "on_agent_session_start" => o.on_agent_session_start(ctx, arg(a, "success")?, arg(a, "duration_secs")?),
        "on_create_conversation" => o.on_create_conversation(ctx),
        "capture" => o.capture(ctx, text_arg(a, "event")?, doc_arg(a, "properties")?),
        "on_llm_usage" => o.on_llm_usage(ctx, doc_arg(a, "usage")?),
        _ => return Err(unknown(method)),
    }
    Ok(())
}
