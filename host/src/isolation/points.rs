//! The methods of each extension point on the wire, both ends in one place: [`Proxy`] is the
//! host's stand-in for an isolated instance (it implements the extension point's trait, so
//! the registry calls it as it calls a library's object), and [`Object::dispatch`] is the
//! runner's side, calling the library's object. Documents cross as JSON values (not JSON
//! text in a string); binary fields as base64. `docs/plugin-protocol.md` lists them.

use super::supervisor::Supervisor;
use abi_stable::std_types::{ROption, RString, RVec, Tuple2};
use async_ffi::{FfiFuture, FutureExt as _};
use plugin_api::{
    AuthOutcome, AuthRequest, AuthType, CallContext, ConversationStoreObject, EventQuery, ExtensionPoint, Headers,
    Health, PResult, PluginError, SecretsStoreObject, SettingsStoreObject, UserAuthObject,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::sync::Arc;

/// The extension points that can run isolated.
pub const SUPPORTED: [ExtensionPoint; 4] = [
    ExtensionPoint::SETTINGS_STORE,
    ExtensionPoint::SECRETS_STORE,
    ExtensionPoint::CONVERSATION_STORE,
    ExtensionPoint::USER_AUTH,
];

fn bad(what: impl std::fmt::Display) -> PluginError {
    PluginError::internal(format!("the plugin's runner answered {what}"))
}

/// A document the host holds as JSON text, as a value for the wire.
fn doc(text: &str) -> Result<Value, PluginError> {
    serde_json::from_str(text).map_err(|e| PluginError::invalid_argument(format!("not a JSON document: {e}")))
}

/// A document or `null` from the wire, as the ABI's optional JSON text.
fn opt_doc(v: Value) -> ROption<RString> {
    match v {
        Value::Null => ROption::RNone,
        v => ROption::RSome(v.to_string().into()),
    }
}

fn typed<T: DeserializeOwned>(v: Value) -> Result<T, PluginError> {
    serde_json::from_value(v).map_err(|e| bad(format!("an answer of the wrong shape: {e}")))
}

fn headers_to_wire(h: &Headers) -> Value {
    Value::Array(h.iter().map(|t| json!([t.0.as_str(), t.1.as_str()])).collect())
}

fn headers_from_wire(v: Value) -> Result<Headers, PluginError> {
    let pairs: Vec<(String, String)> =
        serde_json::from_value(v).map_err(|e| PluginError::invalid_argument(e.to_string()))?;
    Ok(pairs.into_iter().map(|(k, v)| Tuple2(k.into(), v.into())).collect())
}

/// The host's stand-in for an isolated instance.
#[derive(Clone)]
pub struct Proxy {
    pub(super) runner: Arc<Supervisor>,
}

impl Proxy {
    fn call<T: Send + 'static>(
        &self,
        method: &'static str,
        ctx: CallContext,
        args: Result<Value, PluginError>,
        answer: impl FnOnce(Value) -> Result<T, PluginError> + Send + 'static,
    ) -> FfiFuture<PResult<T>> {
        let runner = self.runner.clone();
        async move {
            let answered = async { answer(runner.call(method, &ctx, args?).await?) }.await;
            PResult::from(answered)
        }
        .into_ffi()
    }

    fn health_(&self, ctx: CallContext) -> FfiFuture<PResult<Health>> {
        let runner = self.runner.clone();
        async move {
            let v = match runner.call("health", &ctx, json!({})).await {
                Ok(v) => v,
                Err(e) => return PResult::RErr(e),
            };
            let detail = v.get("detail").and_then(Value::as_str).unwrap_or("ok").to_owned();
            PResult::ROk(Health { detail: format!("{detail} (isolated, {})", runner.describe()).into() })
        }
        .into_ffi()
    }

    fn shutdown_(&self, deadline_ms: u64) -> FfiFuture<()> {
        let runner = self.runner.clone();
        async move { runner.shutdown(deadline_ms).await }.into_ffi()
    }

    fn report(&self, method: &'static str, ctx: CallContext) -> FfiFuture<PResult<RString>> {
        self.call(method, ctx, Ok(json!({})), |v| Ok(v.to_string().into()))
    }

    fn optional(&self, method: &'static str, ctx: CallContext) -> FfiFuture<PResult<ROption<RString>>> {
        self.call(method, ctx, Ok(json!({})), |v| Ok(opt_doc(v)))
    }
}

fn unit(_: Value) -> Result<(), PluginError> {
    Ok(())
}

impl plugin_api::SettingsStore for Proxy {
    fn load(&self, ctx: CallContext) -> FfiFuture<PResult<ROption<RString>>> {
        self.optional("load", ctx)
    }
    fn store(&self, ctx: CallContext, settings_json: RString) -> FfiFuture<PResult<()>> {
        self.call("store", ctx, doc(&settings_json).map(|s| json!({ "settings": s })), unit)
    }
    fn health(&self, ctx: CallContext) -> FfiFuture<PResult<Health>> {
        self.health_(ctx)
    }
    fn shutdown(&self, deadline_ms: u64) -> FfiFuture<()> {
        self.shutdown_(deadline_ms)
    }
    fn migrate(&self, ctx: CallContext) -> FfiFuture<PResult<RString>> {
        self.report("migrate", ctx)
    }
    fn rotate_keys(&self, ctx: CallContext) -> FfiFuture<PResult<RString>> {
        self.report("rotate_keys", ctx)
    }
    fn load_versioned(&self, ctx: CallContext) -> FfiFuture<PResult<ROption<RString>>> {
        self.optional("load_versioned", ctx)
    }
    fn store_versioned(
        &self,
        ctx: CallContext,
        settings_json: RString,
        expected_version: u64,
    ) -> FfiFuture<PResult<u64>> {
        let args = doc(&settings_json).map(|s| json!({ "settings": s, "expected_version": expected_version }));
        self.call("store_versioned", ctx, args, typed)
    }
}

impl plugin_api::SecretsStore for Proxy {
    fn load(&self, ctx: CallContext) -> FfiFuture<PResult<ROption<RString>>> {
        self.optional("load", ctx)
    }
    fn store(&self, ctx: CallContext, secrets_json: RString) -> FfiFuture<PResult<()>> {
        self.call("store", ctx, doc(&secrets_json).map(|s| json!({ "secrets": s })), unit)
    }
    fn health(&self, ctx: CallContext) -> FfiFuture<PResult<Health>> {
        self.health_(ctx)
    }
    fn shutdown(&self, deadline_ms: u64) -> FfiFuture<()> {
        self.shutdown_(deadline_ms)
    }
    fn migrate(&self, ctx: CallContext) -> FfiFuture<PResult<RString>> {
        self.report("migrate", ctx)
    }
    fn rotate_keys(&self, ctx: CallContext) -> FfiFuture<PResult<RString>> {
        self.report("rotate_keys", ctx)
    }
    fn update(&self, ctx: CallContext, change_json: RString) -> FfiFuture<PResult<()>> {
        self.call("update", ctx, doc(&change_json).map(|c| json!({ "change": c })), unit)
    }
}

impl plugin_api::ConversationStore for Proxy {
    fn save_metadata(&self, ctx: CallContext, metadata_json: RString) -> FfiFuture<PResult<()>> {
        self.call("save_metadata", ctx, doc(&metadata_json).map(|m| json!({ "metadata": m })), unit)
    }
    fn get_metadata(&self, ctx: CallContext, conversation_id: RString) -> FfiFuture<PResult<ROption<RString>>> {
        self.call("get_metadata", ctx, Ok(json!({ "conversation_id": conversation_id.as_str() })), |v| Ok(opt_doc(v)))
    }
    fn delete_metadata(&self, ctx: CallContext, conversation_id: RString) -> FfiFuture<PResult<bool>> {
        self.call("delete_metadata", ctx, Ok(json!({ "conversation_id": conversation_id.as_str() })), typed)
    }
    fn validate_metadata(
        &self,
        ctx: CallContext,
        conversation_id: RString,
        user_id: RString,
    ) -> FfiFuture<PResult<bool>> {
        let args = json!({ "conversation_id": conversation_id.as_str(), "user_id": user_id.as_str() });
        self.call("validate_metadata", ctx, Ok(args), typed)
    }
    fn search(&self, ctx: CallContext, page_id: ROption<RString>, limit: u32) -> FfiFuture<PResult<RString>> {
        let page_id = page_id.as_ref().map(|p| p.as_str()).into_option();
        self.call("search", ctx, Ok(json!({ "page_id": page_id, "limit": limit })), |v| Ok(v.to_string().into()))
    }
    fn append_events(
        &self,
        ctx: CallContext,
        conversation_id: RString,
        events_json: RVec<RString>,
    ) -> FfiFuture<PResult<u64>> {
        let args = events(&events_json).map(|e| json!({ "conversation_id": conversation_id.as_str(), "events": e }));
        self.call("append_events", ctx, args, typed)
    }
    fn get_events(&self, ctx: CallContext, conversation_id: RString, query: EventQuery) -> FfiFuture<PResult<RString>> {
        let args = json!({
            "conversation_id": conversation_id.as_str(),
            "query": {
                "start_id": query.start_id,
                "end_id": query.end_id.into_option(),
                "reverse": query.reverse,
                "limit": query.limit,
            },
        });
        self.call("get_events", ctx, Ok(args), |v| Ok(v.to_string().into()))
    }
    fn health(&self, ctx: CallContext) -> FfiFuture<PResult<Health>> {
        self.health_(ctx)
    }
    fn shutdown(&self, deadline_ms: u64) -> FfiFuture<()> {
        self.shutdown_(deadline_ms)
    }
    fn migrate(&self, ctx: CallContext) -> FfiFuture<PResult<RString>> {
        self.report("migrate", ctx)
    }
    fn rotate_keys(&self, ctx: CallContext) -> FfiFuture<PResult<RString>> {
        self.report("rotate_keys", ctx)
    }
    fn append_events_fenced(
        &self,
        ctx: CallContext,
        conversation_id: RString,
        events_json: RVec<RString>,
        fence: u64,
    ) -> FfiFuture<PResult<u64>> {
        let args = events(&events_json)
            .map(|e| json!({ "conversation_id": conversation_id.as_str(), "events": e, "fence": fence }));
        self.call("append_events_fenced", ctx, args, typed)
    }
}

fn events(list: &RVec<RString>) -> Result<Value, PluginError> {
    list.iter().map(|e| doc(e)).collect::<Result<Vec<_>, _>>().map(Value::Array)
}

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

/// The runner's instance.
pub(super) enum Object {
    Settings(SettingsStoreObject),
    Secrets(SecretsStoreObject),
    Conversations(ConversationStoreObject),
    Auth(UserAuthObject),
}

fn arg<T: DeserializeOwned>(args: &Value, name: &str) -> Result<T, PluginError> {
    let v = args.get(name).cloned().unwrap_or(Value::Null);
    serde_json::from_value(v).map_err(|e| PluginError::invalid_argument(format!("argument `{name}`: {e}")))
}

fn text_arg(args: &Value, name: &str) -> Result<RString, PluginError> {
    match args.get(name) {
        Some(Value::String(s)) => Ok(s.as_str().into()),
        _ => Err(PluginError::invalid_argument(format!("argument `{name}` must be a string"))),
    }
}

/// A document argument, as the ABI's JSON text.
fn doc_arg(args: &Value, name: &str) -> Result<RString, PluginError> {
    match args.get(name) {
        Some(v) if !v.is_null() => Ok(v.to_string().into()),
        _ => Err(PluginError::invalid_argument(format!("argument `{name}` is missing"))),
    }
}

/// The ABI's optional JSON text, as a document or `null`.
fn from_opt(v: ROption<RString>) -> Result<Value, PluginError> {
    match v.into_option() {
        None => Ok(Value::Null),
        Some(text) => from_text(text),
    }
}

fn from_text(text: RString) -> Result<Value, PluginError> {
    serde_json::from_str(&text)
        .map_err(|e| PluginError::internal(format!("the plugin answered a non-JSON document: {e}")))
}

fn health_value(h: Health) -> Value {
    json!({ "detail": h.detail.as_str() })
}

impl Object {
    pub(super) async fn shutdown(&self, deadline_ms: u64) {
        match self {
            Object::Settings(o) => o.shutdown(deadline_ms).await,
            Object::Secrets(o) => o.shutdown(deadline_ms).await,
            Object::Conversations(o) => o.shutdown(deadline_ms).await,
            Object::Auth(o) => o.shutdown(deadline_ms).await,
        }
    }

    /// Calls `method` with the wire's arguments; the answer as the wire carries it.
    pub(super) async fn dispatch(&self, method: &str, ctx: CallContext, a: Value) -> Result<Value, PluginError> {
        let unknown = || PluginError::new(plugin_api::ErrorCode::UNIMPLEMENTED, format!("no method `{method}`"));
        match self {
            Object::Settings(o) => match method {
                "load" => from_opt(o.load(ctx).await.into_result()?),
                "store" => o.store(ctx, doc_arg(&a, "settings")?).await.into_result().map(|()| Value::Null),
                "health" => o.health(ctx).await.into_result().map(health_value),
                "migrate" => from_text(o.migrate(ctx).await.into_result()?),
                "rotate_keys" => from_text(o.rotate_keys(ctx).await.into_result()?),
                "load_versioned" => from_opt(o.load_versioned(ctx).await.into_result()?),
                "store_versioned" => {
                    let (s, v) = (doc_arg(&a, "settings")?, arg::<u64>(&a, "expected_version")?);
                    o.store_versioned(ctx, s, v).await.into_result().map(Value::from)
                }
                _ => Err(unknown()),
            },
            Object::Secrets(o) => match method {
                "load" => from_opt(o.load(ctx).await.into_result()?),
                "store" => o.store(ctx, doc_arg(&a, "secrets")?).await.into_result().map(|()| Value::Null),
                "health" => o.health(ctx).await.into_result().map(health_value),
                "migrate" => from_text(o.migrate(ctx).await.into_result()?),
                "rotate_keys" => from_text(o.rotate_keys(ctx).await.into_result()?),
                "update" => o.update(ctx, doc_arg(&a, "change")?).await.into_result().map(|()| Value::Null),
                _ => Err(unknown()),
            },
            Object::Conversations(o) => {
                let id = || text_arg(&a, "conversation_id");
                let events = || -> Result<RVec<RString>, PluginError> {
                    let list: Vec<Value> = arg(&a, "events")?;
                    Ok(list.into_iter().map(|e| RString::from(e.to_string())).collect())
                };
                match method {
                    "save_metadata" => {
                        o.save_metadata(ctx, doc_arg(&a, "metadata")?).await.into_result().map(|()| Value::Null)
                    }
                    "get_metadata" => from_opt(o.get_metadata(ctx, id()?).await.into_result()?),
                    "delete_metadata" => o.delete_metadata(ctx, id()?).await.into_result().map(Value::from),
                    "validate_metadata" => {
                        o.validate_metadata(ctx, id()?, text_arg(&a, "user_id")?).await.into_result().map(Value::from)
                    }
                    "search" => {
                        let page: Option<String> = arg(&a, "page_id")?;
                        let limit: u32 = arg(&a, "limit")?;
                        from_text(o.search(ctx, page.map(RString::from).into(), limit).await.into_result()?)
                    }
                    "append_events" => o.append_events(ctx, id()?, events()?).await.into_result().map(Value::from),
                    "append_events_fenced" => {
                        let fence: u64 = arg(&a, "fence")?;
                        o.append_events_fenced(ctx, id()?, events()?, fence).await.into_result().map(Value::from)
                    }
                    "get_events" => {
                        #[derive(serde::Deserialize)]
                        struct Q {
                            start_id: u64,
                            end_id: Option<u64>,
                            reverse: bool,
                            limit: u32,
                        }
                        let q: Q = arg(&a, "query")?;
                        let query = EventQuery::new(q.start_id, q.end_id, q.reverse, q.limit);
                        from_text(o.get_events(ctx, id()?, query).await.into_result()?)
                    }
                    "health" => o.health(ctx).await.into_result().map(health_value),
                    "migrate" => from_text(o.migrate(ctx).await.into_result()?),
                    "rotate_keys" => from_text(o.rotate_keys(ctx).await.into_result()?),
                    _ => Err(unknown()),
                }
            }
            Object::Auth(o) => match method {
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
                _ => Err(unknown()),
            },
        }
    }
}
