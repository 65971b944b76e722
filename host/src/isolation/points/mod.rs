//! The methods of each extension point on the wire, both ends in one place: [`Proxy`] is the
//! host's stand-in for an isolated instance (it implements the extension point's trait, so
//! the registry calls it as it calls a library's object), and [`Object::dispatch`] is the
//! runner's side, calling the library's object. Documents cross as JSON values (not JSON
//! text in a string); bytes as base64. `docs/plugin-protocol.md` lists them.
//!
//! - `stores.rs`: `settings_store`, `secrets_store`, `conversation_store`;
//! - `edges.rs`: `user_auth`, `routes`, `monitoring`;
//! - `manager.rs`: `conversation_manager`, its live events and its restarts;
//! - `runtime.rs`: `runtime`.

mod edges;
mod manager;
mod runtime;
mod stores;

use super::supervisor::Supervisor;
use abi_stable::std_types::{ROption, RString, RVec, Tuple2};
use async_ffi::{FfiFuture, FutureExt as _};
use base64::Engine as _;
use plugin_api::{
    CallContext, ConversationManagerObject, ConversationStoreObject, ErrorCode, EventSinkObject, ExtensionPoint,
    Headers, Health, MonitoringObject, PResult, PluginError, RoutesObject, RuntimeObject, SecretsStoreObject,
    SettingsStoreObject, UserAuthObject,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::sync::Arc;

pub(super) use edges::declared_routes;
pub(super) use manager::ManagerState;
pub(crate) use runtime::Via;
pub(super) use runtime::{runtime as call_runtime, Route};

/// The extension points that can run isolated: all of them.
pub const SUPPORTED: [ExtensionPoint; 8] = [
    ExtensionPoint::SETTINGS_STORE,
    ExtensionPoint::SECRETS_STORE,
    ExtensionPoint::CONVERSATION_STORE,
    ExtensionPoint::USER_AUTH,
    ExtensionPoint::ROUTES,
    ExtensionPoint::MONITORING,
    ExtensionPoint::RUNTIME,
    ExtensionPoint::CONVERSATION_MANAGER,
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

fn unit(_: Value) -> Result<(), PluginError> {
    Ok(())
}

fn text(v: Value) -> Result<RString, PluginError> {
    Ok(v.to_string().into())
}

fn headers_to_wire(h: &Headers) -> Value {
    Value::Array(h.iter().map(|t| json!([t.0.as_str(), t.1.as_str()])).collect())
}

fn headers_from_wire(v: Value) -> Result<Headers, PluginError> {
    if v.is_null() {
        return Ok(Headers::new());
    }
    let pairs: Vec<(String, String)> =
        serde_json::from_value(v).map_err(|e| PluginError::invalid_argument(e.to_string()))?;
    Ok(pairs.into_iter().map(|(k, v)| Tuple2(k.into(), v.into())).collect())
}

fn b64(bytes: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn unb64(v: &Value, name: &str) -> Result<RVec<u8>, PluginError> {
    let text = v.as_str().ok_or_else(|| PluginError::invalid_argument(format!("`{name}` must be base64 text")))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| PluginError::invalid_argument(format!("`{name}` is not base64: {e}")))?;
    Ok(bytes.into())
}

/// The shape of every stand-in method: the request sent (or the arguments' error), its answer
/// turned into the ABI's type.
fn forward<T: Send + 'static>(
    sent: Result<futures_util::future::BoxFuture<'static, Result<Value, PluginError>>, PluginError>,
    answer: impl FnOnce(Value) -> Result<T, PluginError> + Send + 'static,
) -> FfiFuture<PResult<T>> {
    async move { PResult::from(async { answer(sent?.await?) }.await) }.into_ffi()
}

/// The host's stand-in for an isolated instance.
#[derive(Clone)]
pub struct Proxy {
    pub(super) runner: Arc<Supervisor>,
    /// What a `routes` instance declared when its runner started.
    pub(super) routes: Arc<Vec<plugin_api::RouteSpec>>,
    /// A manager's starts and subscriptions, for its runner's restarts.
    pub(super) manager: Arc<ManagerState>,
}

impl Proxy {
    fn call<T: Send + 'static>(
        &self,
        method: &'static str,
        ctx: CallContext,
        args: Result<Value, PluginError>,
        answer: impl FnOnce(Value) -> Result<T, PluginError> + Send + 'static,
    ) -> FfiFuture<PResult<T>> {
        forward(args.map(|args| Route::request(self, method, ctx, args)), answer)
    }

    /// A method whose answer nobody waits for (the monitoring hooks): dropped while the
    /// runner is down or its queue is full, as a hook's event may be.
    fn notify(&self, method: &'static str, ctx: &CallContext, args: Value) {
        self.runner.notify(method, ctx, args);
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
        self.call(method, ctx, Ok(json!({})), text)
    }

    fn optional(&self, method: &'static str, ctx: CallContext) -> FfiFuture<PResult<ROption<RString>>> {
        self.call(method, ctx, Ok(json!({})), |v| Ok(opt_doc(v)))
    }
}

/// The runner's instance.
pub(super) enum Object {
    Settings(SettingsStoreObject),
    Secrets(SecretsStoreObject),
    Conversations(ConversationStoreObject),
    Auth(UserAuthObject),
    Routes(RoutesObject),
    Monitoring(MonitoringObject),
    Runtime(RuntimeObject),
    Manager(ConversationManagerObject),
}

fn unknown(method: &str) -> PluginError {
    PluginError::new(ErrorCode::UNIMPLEMENTED, format!("no method `{method}`"))
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
            Object::Routes(o) => o.shutdown(deadline_ms).await,
            Object::Monitoring(o) => o.shutdown(deadline_ms).await,
            Object::Runtime(o) => o.shutdown(deadline_ms).await,
            Object::Manager(o) => o.shutdown(deadline_ms).await,
        }
    }

    /// Calls `method` with the wire's arguments; the answer as the wire carries it. `sink(id)`
    /// makes the sink a manager's `subscribe` gets for the host's sink `id`.
    pub(super) async fn dispatch(
        &self,
        method: &str,
        ctx: CallContext,
        args: Value,
        sink: &(dyn Fn(u64) -> EventSinkObject + Sync),
    ) -> Result<Value, PluginError> {
        match self {
            Object::Settings(o) => stores::settings(o, method, ctx, args).await,
            Object::Secrets(o) => stores::secrets(o, method, ctx, args).await,
            Object::Conversations(o) => stores::conversations(o, method, ctx, args).await,
            Object::Auth(o) => edges::auth(o, method, ctx, args).await,
            Object::Routes(o) => edges::routes(o, method, ctx, args).await,
            Object::Monitoring(o) => edges::monitoring(o, method, ctx, args).await,
            Object::Runtime(o) => runtime::runtime(o, method, ctx, args).await,
            Object::Manager(o) => manager::manager(o, method, ctx, args, sink).await,
        }
    }

    /// A `notify` (a monitoring hook): called inline, as the hooks must not block.
    pub(super) fn notify(&self, method: &str, ctx: CallContext, args: &Value) -> Result<(), PluginError> {
        match self {
            Object::Monitoring(o) => edges::monitoring_hook(o, method, ctx, args),
            _ => Err(unknown(method)),
        }
    }

    /// What a `routes` instance serves, for `ready`.
    pub(super) fn routes(&self) -> Vec<Value> {
        match self {
            Object::Routes(o) => o
                .routes()
                .iter()
                .map(|r| json!({ "method": r.method.as_str(), "path": r.path.as_str(), "authenticated": r.authenticated }))
                .collect(),
            _ => Vec::new(),
        }
    }
}
