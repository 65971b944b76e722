//! `oh-plugin-runner`: one isolated instance in a process of its own. The host starts it with
//! `OH_PLUGIN_SOCKET` naming where to connect, sends `start` (which library, implementation
//! and config), and calls the instance over the connection (`docs/plugin-protocol.md`). The
//! library is loaded with the host's own checks (`loader`). Logs, metrics and spans go to the
//! host; host calls the plugin makes go to the host and back. The runner exits when the host
//! says so, or when the connection ends (the host is gone).

use super::{
    link::Link,
    points::{Object, Route, Via},
    wire::{self, Message, Ready, Start},
};
use crate::loader::{self, Root};
use abi_stable::{
    prefix_type::PrefixTypeTrait as _,
    sabi_trait::TD_Opaque,
    std_types::{ROption, RSlice, RStr, RString},
};
use async_ffi::{FfiFuture, FutureExt as _};
use plugin_api::{
    CallContext, ErrorCode, EventSink_TO, ExtensionPoint, HostApi, HostApi_Ref, HostServices, HostServices_TO, Label,
    LogLevel, PResult, PluginError, RuntimeObject, Runtime_TO,
};
use serde_json::Value;
use std::{
    path::Path,
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, AtomicU8, Ordering},
        Arc, OnceLock,
    },
};

static LINK: OnceLock<Arc<Link>> = OnceLock::new();
static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);
static TRACING: AtomicBool = AtomicBool::new(false);
static READ_ONLY: AtomicBool = AtomicBool::new(false);

/// The runner's `main`.
pub fn main() -> ExitCode {
    let Some(socket) = std::env::var_os(wire::SOCKET_VAR) else {
        eprintln!(
            "oh-plugin-runner: {} is not set. The host starts this program for an entry with isolation = \"process\" in plugins.toml; it is not run by hand.",
            wire::SOCKET_VAR
        );
        return ExitCode::from(2);
    };
    let mut stream = match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("oh-plugin-runner: cannot connect to {}: {e}", Path::new(&socket).display());
            return ExitCode::from(2);
        }
    };
    let start = match wire::read_blocking(&mut stream) {
        Ok(Message::Start(start)) => start,
        Ok(other) => {
            eprintln!("oh-plugin-runner: expected `start`, got {other:?}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("oh-plugin-runner: reading `start`: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("oh-plugin-runner: cannot start a runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let built = runtime.block_on(async { build(&start) });
    let (object, ready) = match built {
        Ok(b) => b,
        Err(error) => {
            let _ = wire::write_blocking(&mut stream, &Message::Failed { error: (&error).into() });
            return ExitCode::from(1);
        }
    };
    if let Err(e) = wire::write_blocking(&mut stream, &Message::Ready(ready)) {
        eprintln!("oh-plugin-runner: answering `start`: {e}");
        return ExitCode::from(1);
    }
    let code = runtime.block_on(serve(stream, Arc::new(object)));
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// Loads the library and builds the instance `start` names.
fn build(start: &Start) -> Result<(Object, Ready), PluginError> {
    let level = match start.log_level.as_str() {
        "error" => LogLevel::Error,
        "warn" => LogLevel::Warn,
        "debug" => LogLevel::Debug,
        "trace" => LogLevel::Trace,
        _ => LogLevel::Info,
    };
    LEVEL.store(level as u8, Ordering::Relaxed);
    TRACING.store(start.tracing, Ordering::Relaxed);
    READ_ONLY.store(start.read_only, Ordering::Relaxed);
    let config_error = |m: String| PluginError::new(ErrorCode::INVALID_CONFIG, m);
    if start.protocol != wire::PROTOCOL {
        return Err(config_error(format!(
            "this runner speaks protocol {}, the host {}",
            wire::PROTOCOL,
            start.protocol
        )));
    }
    let Some(spec) = &start.library else {
        return Err(config_error("`start` names no library".to_owned()));
    };
    let point = ExtensionPoint::from_key(&start.point)
        .filter(|p| super::supports(*p))
        .ok_or_else(|| config_error(format!("extension point `{}` cannot run isolated", start.point)))?;
    let lib = loader::load(Path::new(&spec.plugins_dir), &spec.name, spec.sha256.as_deref()).map_err(config_error)?;
    let library_config = if spec.config.is_null() { "{}".to_owned() } else { spec.config.to_string() };
    loader::init_with(&lib, &library_config, host_api()).map_err(config_error)?;
    if !lib.offers(point, &start.implementation) {
        return Err(config_error(format!(
            "library `{}` has no {point} implementation named `{}`",
            lib.name, start.implementation
        )));
    }
    let services =
        RunnerServices { app_mode: start.app_mode.clone(), state_dir: start.state_dir.clone(), runtime: start.runtime };
    let (i, c) = (RStr::from_str(&start.implementation), start.config.to_string());
    let c = RStr::from_str(&c);
    macro_rules! make {
        ($new:ident, $variant:ident) => {
            match lib.module {
                Root::V1_0(m) => (m.$new())(i, c, plugin_api::v1_0::HostServices_TO::from_value(services, TD_Opaque)),
                Root::Current(m) => (m.$new())(i, c, HostServices_TO::from_value(services, TD_Opaque)),
            }
            .into_result()
            .map(Object::$variant)
        };
    }
    let object = match point {
        ExtensionPoint::SETTINGS_STORE => make!(new_settings_store, Settings),
        ExtensionPoint::SECRETS_STORE => make!(new_secrets_store, Secrets),
        ExtensionPoint::CONVERSATION_STORE => make!(new_conversation_store, Conversations),
        ExtensionPoint::USER_AUTH => make!(new_user_auth, Auth),
        ExtensionPoint::ROUTES => make!(new_routes, Routes),
        ExtensionPoint::MONITORING => make!(new_monitoring, Monitoring),
        ExtensionPoint::CONVERSATION_MANAGER => make!(new_conversation_manager, Manager),
        _ => match lib.module.runtime_factory() {
            Some(new_runtime) => {
                new_runtime(i, c, HostServices_TO::from_value(services, TD_Opaque)).into_result().map(Object::Runtime)
            }
            None => Err(config_error(format!(
                "library `{}` was built against plugin-api {}, which has no runtime extension point",
                lib.name,
                lib.api_version()
            ))),
        },
    }?;
    let ready = Ready {
        routes: object.routes(),
        protocol: wire::PROTOCOL,
        name: lib.name.clone(),
        version: lib.version.clone(),
        sha256: lib.sha256.get().to_owned(),
        api: lib.api_version(),
    };
    Ok((object, ready))
}

/// Serves the host's calls until it says to stop or goes away.
async fn serve(stream: std::os::unix::net::UnixStream, object: Arc<Object>) -> ExitCode {
    let stream = match stream.set_nonblocking(true).and_then(|()| tokio::net::UnixStream::from_std(stream)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("oh-plugin-runner: {e}");
            return ExitCode::from(1);
        }
    };
    let (read, write) = stream.into_split();
    let mut read = tokio::io::BufReader::with_capacity(64 << 10, read);
    let link = Link::new(write, "the host".to_owned());
    connected(link.clone());
    loop {
        match wire::read(&mut read).await {
            Ok(Some(Message::Call { id, method, ctx, args })) => {
                let (object, link) = (object.clone(), link.clone());
                tokio::spawn(async move {
                    let sink = |sink: u64| EventSink_TO::from_value(RunnerSink { sink }, TD_Opaque);
                    let answer = object.dispatch(&method, ctx.into(), args, &sink).await;
                    link.send(&wire::result(id, answer)).await;
                });
            }
            Ok(Some(Message::SinkClosed { sink })) => {
                CLOSED_SINKS.lock().unwrap_or_else(|e| e.into_inner()).insert(sink);
            }
            Ok(Some(Message::Notify { method, ctx, args })) => {
                if let Err(e) = object.notify(&method, ctx.into(), &args) {
                    eprintln!("oh-plugin-runner: {method}: {e}");
                }
            }
            Ok(Some(Message::Result { id, ok, error })) => {
                link.answer(id, error.map_or_else(|| Ok(ok.unwrap_or(Value::Null)), |e| Err(e.into())))
            }
            Ok(Some(Message::Shutdown { deadline_ms })) => {
                object.shutdown(deadline_ms).await;
                return ExitCode::SUCCESS;
            }
            Ok(Some(other)) => eprintln!("oh-plugin-runner: unexpected message {other:?}"),
            // The host is gone: nothing is left to serve.
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("oh-plugin-runner: {e}");
                return ExitCode::from(1);
            }
        }
    }
}

/// The host's sinks that are gone (`sink_closed`).
static CLOSED_SINKS: std::sync::Mutex<std::collections::BTreeSet<u64>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// What a manager's `subscribe` gets: events cross to the host's sink `sink`.
struct RunnerSink {
    sink: u64,
}

impl plugin_api::EventSink for RunnerSink {
    fn send(&self, event_json: RString) -> bool {
        if CLOSED_SINKS.lock().unwrap_or_else(|e| e.into_inner()).contains(&self.sink) {
            return false;
        }
        let (Some(link), Ok(event)) = (LINK.get(), serde_json::from_str::<Value>(&event_json)) else {
            return false;
        };
        link.try_send(&Message::Event { sink: self.sink, event })
    }
}

/// The host's services as the runner offers them: host calls cross to the host.
struct RunnerServices {
    app_mode: String,
    state_dir: String,
    /// Whether the deployment has a runtime for a manager's handle to reach.
    runtime: bool,
}

/// An isolated manager's runtime handle: each call is a host call to the host's runtime.
struct HostRuntime;

impl Route for HostRuntime {
    fn request(
        &self,
        method: &'static str,
        ctx: CallContext,
        args: Value,
    ) -> futures_util::future::BoxFuture<'static, Result<Value, PluginError>> {
        Box::pin(async move {
            let Some(link) = LINK.get() else {
                return Err(PluginError::unavailable("the runtime is not reachable while the instance is being built"));
            };
            let (ctx, point, method) =
                (wire::Ctx::from(&ctx), ExtensionPoint::RUNTIME.key().to_owned(), method.to_owned());
            link.request(|id| Message::HostCall { id, ctx, point, method, args }).await
        })
    }
    fn health(&self, ctx: CallContext) -> FfiFuture<PResult<plugin_api::Health>> {
        let answer = self.request("health", ctx, serde_json::json!({}));
        async move {
            match answer.await {
                Ok(v) => PResult::ROk(plugin_api::Health {
                    detail: v.get("detail").and_then(Value::as_str).unwrap_or("ok").into(),
                }),
                Err(e) => PResult::RErr(e),
            }
        }
        .into_ffi()
    }
    /// The host owns the runtime: a manager's handle shuts nothing down.
    fn shutdown(&self, _deadline_ms: u64) -> FfiFuture<()> {
        async {}.into_ffi()
    }
}

impl HostServices for RunnerServices {
    fn call(
        &self,
        ctx: CallContext,
        point: ExtensionPoint,
        method: RString,
        args_json: RString,
    ) -> FfiFuture<PResult<RString>> {
        async move {
            let answered = async {
                let Some(link) = LINK.get() else {
                    return Err(PluginError::unavailable(
                        "host calls are not available while the instance is being built",
                    ));
                };
                let args: Value = serde_json::from_str(&args_json)
                    .map_err(|e| PluginError::invalid_argument(format!("host call arguments: {e}")))?;
                let (ctx, point, method) = (wire::Ctx::from(&ctx), point.key().to_owned(), method.into_string());
                let answer = link.request(|id| Message::HostCall { id, ctx, point, method, args }).await?;
                Ok(RString::from(answer.to_string()))
            }
            .await;
            PResult::from(answered)
        }
        .into_ffi()
    }
    fn app_mode(&self) -> plugin_api::AppMode {
        if self.app_mode == "saas" {
            plugin_api::AppMode::SAAS
        } else {
            plugin_api::AppMode::OSS
        }
    }
    fn state_dir(&self) -> RString {
        self.state_dir.as_str().into()
    }
    fn runtime(&self) -> ROption<RuntimeObject> {
        match self.runtime {
            true => ROption::RSome(Runtime_TO::from_value(Via(HostRuntime), TD_Opaque)),
            false => ROption::RNone,
        }
    }
}

host_services_for_v1_0!(RunnerServices);

// ---- The host API the library gets: everything goes to the host over the connection. ----

/// What the library reported before the connection was ready (while it was built), sent
/// once it is.
static EARLY: std::sync::Mutex<Vec<Message>> = std::sync::Mutex::new(Vec::new());
const EARLY_MAX: usize = 256;

fn send(message: Message) {
    match LINK.get() {
        Some(link) => {
            link.try_send(&message);
        }
        None => {
            let mut early = EARLY.lock().unwrap_or_else(|e| e.into_inner());
            if early.len() < EARLY_MAX {
                early.push(message);
            }
        }
    }
}

fn connected(link: Arc<Link>) {
    let _ = LINK.set(link.clone());
    for message in std::mem::take(&mut *EARLY.lock().unwrap_or_else(|e| e.into_inner())) {
        link.try_send(&message);
    }
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    }
}

extern "C" fn log_enabled(level: LogLevel, _target: RStr<'_>) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

extern "C" fn log(level: LogLevel, _library: RStr<'_>, target: RStr<'_>, message: RStr<'_>, fields: RStr<'_>) {
    send(Message::Log {
        level: level_name(level).to_owned(),
        target: target.to_string(),
        message: message.to_string(),
        fields: fields.to_string(),
    });
}

fn labels(labels: RSlice<'_, Label<'_>>) -> Vec<(String, String)> {
    labels.iter().map(|l| (l.0.to_string(), l.1.to_string())).collect()
}

extern "C" fn metric(name: RStr<'_>, value: f64, l: RSlice<'_, Label<'_>>) {
    let (kind, name, labels) = ("counter".to_owned(), name.to_string(), labels(l));
    send(Message::Metric { kind, name, value, labels, delta: false, buckets: Vec::new() });
}

extern "C" fn gauge(name: RStr<'_>, value: f64, delta: bool, l: RSlice<'_, Label<'_>>) {
    let (kind, name, labels) = ("gauge".to_owned(), name.to_string(), labels(l));
    send(Message::Metric { kind, name, value, labels, delta, buckets: Vec::new() });
}

extern "C" fn observe(name: RStr<'_>, value: f64, buckets: RSlice<'_, f64>, l: RSlice<'_, Label<'_>>) {
    let (kind, name, labels) = ("histogram".to_owned(), name.to_string(), labels(l));
    send(Message::Metric { kind, name, value, labels, delta: false, buckets: buckets.to_vec() });
}

extern "C" fn span(span_json: RStr<'_>) {
    if let Ok(span) = serde_json::from_str(span_json.as_str()) {
        send(Message::Span { span });
    }
}

extern "C" fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

extern "C" fn read_only() -> bool {
    READ_ONLY.load(Ordering::Relaxed)
}

fn host_api() -> HostApi_Ref {
    static API: OnceLock<HostApi_Ref> = OnceLock::new();
    *API.get_or_init(|| {
        HostApi { log_enabled, log, metric, gauge, observe, span, tracing_enabled, read_only }.leak_into_prefix()
    })
}
