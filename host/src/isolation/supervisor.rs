//! The host's side of an isolated instance: it starts the runner, hands it the instance's
//! configuration, forwards calls, serves the runner's host calls, relays its logs and
//! metrics, and restarts it with backoff when it dies. While it is down, calls fail at once
//! with `UNAVAILABLE` (503) naming the plugin; what a store acknowledged before is on disk.

use super::{
    link::Link,
    wire::{self, Ctx, Message, Ready, Start},
};
use abi_stable::std_types::RString;
use plugin_api::{CallContext, EventSinkObject, ExtensionPoint, HostServicesObject, PluginError};
use serde_json::Value;
use std::{
    os::unix::{fs::DirBuilderExt as _, net::UnixListener},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};
use tokio::{net::unix::OwnedReadHalf, sync::watch};

/// What to start and how.
pub struct Spec {
    /// `extensions.settings_store (file_stores::FileSettingsStore)`, for messages.
    pub who: String,
    /// The entry's key, for metrics.
    pub key: String,
    /// The library's name (or the program's), as its log lines carry it.
    pub library: String,
    /// The program and its arguments (`prlimit` first when the entry bounds the runner).
    pub argv: Vec<String>,
    pub start: Start,
    /// How long a runner may take to connect and build its instance.
    pub start_timeout: Duration,
}

/// One isolated instance's runner, across its restarts.
pub struct Supervisor {
    spec: Spec,
    services: Arc<HostServicesObject>,
    runtime: tokio::runtime::Handle,
    state: Mutex<State>,
    restarts: AtomicU64,
    stopping: AtomicBool,
    /// The host's live-event sinks, by the id the runner's events name.
    sinks: Arc<Sinks>,
    /// Run after each restart (a manager's proxy starts its conversations again and
    /// resubscribes its sinks).
    on_restart: Mutex<Option<RestartHook>>,
}

/// What [`Supervisor::on_restart`] runs.
pub(super) type RestartHook = Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>;

/// The host's sinks a runner's `event`s go to.
#[derive(Default)]
pub struct Sinks(Mutex<std::collections::HashMap<u64, Arc<EventSinkObject>>>);

impl Sinks {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Arc<EventSinkObject>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn insert(&self, id: u64, sink: EventSinkObject) {
        self.lock().insert(id, Arc::new(sink));
    }
    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }
    /// Delivers an event; `false` when the sink is gone (it is then forgotten).
    fn deliver(&self, id: u64, event: &Value) -> bool {
        let sink = self.lock().get(&id).cloned();
        let delivered = sink.is_some_and(|s| s.send(event.to_string().into()));
        if !delivered {
            self.remove(id);
        }
        delivered
    }
}

struct State {
    link: Option<Arc<Link>>,
    pid: Option<u32>,
    /// Why it is down (when `link` is `None`).
    why: String,
    /// Whether (and how) the current runner has exited.
    exit: Option<watch::Receiver<Option<String>>>,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
}

/// A runner that answered `ready`.
struct Launched {
    link: Arc<Link>,
    pid: Option<u32>,
    ready: Ready,
    reader: tokio::task::JoinHandle<String>,
    exit: watch::Receiver<Option<String>>,
    kill: tokio::sync::oneshot::Sender<()>,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A runner that stayed up this long restarts from the first backoff again.
const STABLE: Duration = Duration::from_secs(10);

impl Supervisor {
    /// Starts the runner and waits for its instance; an error names the entry and says why.
    pub fn start(
        spec: Spec,
        services: HostServicesObject,
        runtime: tokio::runtime::Handle,
    ) -> Result<(Arc<Supervisor>, Ready), String> {
        let supervisor = Arc::new(Supervisor {
            spec,
            services: Arc::new(services),
            runtime: runtime.clone(),
            state: Mutex::new(State { link: None, pid: None, why: "starting".to_owned(), exit: None, kill: None }),
            restarts: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            sinks: Arc::default(),
            on_restart: Mutex::new(None),
        });
        let launched = supervisor.launch()?;
        let ready = launched.ready.clone();
        let reader = supervisor.up(launched);
        runtime.spawn(Supervisor::supervise(Arc::downgrade(&supervisor), reader));
        Ok((supervisor, ready))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `pid 4242, 1 restart`.
    pub fn describe(&self) -> String {
        let restarts = self.restarts.load(Ordering::Relaxed);
        let plural = if restarts == 1 { "" } else { "s" };
        match self.lock().pid {
            Some(pid) => format!("runner pid {pid}, {restarts} restart{plural}"),
            None => format!("runner down, {restarts} restart{plural}"),
        }
    }

    /// The live-event sinks of this runner's instance.
    pub fn sinks(&self) -> &Arc<Sinks> {
        &self.sinks
    }

    /// Runs `hook` after every restart from now on.
    pub fn on_restart(&self, hook: RestartHook) {
        *self.on_restart.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    /// How often the runner was restarted.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// The runner's process id while it is up.
    pub fn pid(&self) -> Option<u32> {
        self.lock().pid
    }

    /// Calls `method` on the isolated instance.
    pub async fn call(&self, method: &str, ctx: &CallContext, args: Value) -> Result<Value, PluginError> {
        let link = {
            let state = self.lock();
            match &state.link {
                Some(link) => link.clone(),
                None => {
                    return Err(PluginError::unavailable(format!(
                        "{} is down ({}); the host is restarting its runner",
                        self.spec.who, state.why
                    )))
                }
            }
        };
        let ctx = Ctx::from(ctx);
        link.request(|id| Message::Call { id, method: method.to_owned(), ctx, args }).await
    }

    /// Calls a method without waiting for (or getting) an answer; dropped while the runner
    /// is down.
    pub fn notify(&self, method: &str, ctx: &CallContext, args: Value) {
        let link = self.lock().link.clone();
        if let Some(link) = link {
            link.try_send(&Message::Notify { method: method.to_owned(), ctx: Ctx::from(ctx), args });
        }
    }

    /// Asks the runner to shut its instance down and exit (killed at the deadline); no
    /// restart after this.
    pub async fn shutdown(&self, deadline_ms: u64) {
        self.stopping.store(true, Ordering::SeqCst);
        let (link, exit, kill) = {
            let mut state = self.lock();
            (state.link.clone(), state.exit.clone(), state.kill.take())
        };
        if let Some(link) = link {
            link.send(&Message::Shutdown { deadline_ms }).await;
        }
        if let Some(mut exit) = exit {
            let wait = exit.wait_for(Option::is_some);
            if tokio::time::timeout(Duration::from_millis(deadline_ms.max(100)), wait).await.is_err() {
                if let Some(kill) = kill {
                    let _ = kill.send(());
                }
            }
        }
    }

    fn up(&self, launched: Launched) -> tokio::task::JoinHandle<String> {
        let mut state = self.lock();
        state.link = Some(launched.link);
        state.pid = launched.pid;
        state.exit = Some(launched.exit);
        state.kill = Some(launched.kill);
        crate::metrics::global().gauge("oh_plugin_runner_up", UP_HELP, &[("key", &self.spec.key)], 1.0, false);
        launched.reader
    }

    /// Watches the runner; when it dies, fails what was in flight and starts another.
    /// Holds the supervisor weakly: when the registry drops it (a reload that did not keep
    /// it, a build that failed), its state drops, which kills the runner, and this ends.
    async fn supervise(weak: std::sync::Weak<Self>, mut reader: tokio::task::JoinHandle<String>) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let since = Instant::now();
            let why = (&mut reader).await.unwrap_or_else(|e| format!("its reader failed: {e}"));
            let Some(this) = weak.upgrade() else { return };
            if !this.ended(why).await {
                return;
            }
            if since.elapsed() > STABLE {
                backoff = FIRST_BACKOFF;
            }
            drop(this);
            loop {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                let Some(this) = weak.upgrade() else { return };
                if this.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let me = this.clone();
                match tokio::task::spawn_blocking(move || me.launch()).await {
                    Ok(Ok(launched)) => {
                        this.restarts.fetch_add(1, Ordering::Relaxed);
                        let labels = [("key", this.spec.key.as_str())];
                        crate::metrics::global().inc("oh_plugin_runner_restarts_total", RESTARTS_HELP, &labels, 1.0);
                        tracing::info!(plugin = %this.spec.who, pid = ?launched.pid, "runner restarted");
                        reader = this.up(launched);
                        let hook = this.on_restart.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        if let Some(hook) = hook {
                            tokio::spawn(hook());
                        }
                        break;
                    }
                    Ok(Err(e)) => {
                        tracing::error!(plugin = %this.spec.who, "cannot restart the runner: {e}");
                        this.lock().why = e;
                    }
                    Err(e) => tracing::error!(plugin = %this.spec.who, "cannot restart the runner: {e}"),
                }
            }
        }
    }

    /// The runner's connection ended (`why`): fails what was in flight, reaps the process
    /// (killing one that only hung up). `false` when it was asked to stop: no restart.
    async fn ended(&self, why: String) -> bool {
        let (link, exit) = {
            let mut state = self.lock();
            state.pid = None;
            (state.link.take(), state.exit.take())
        };
        let stopping = self.stopping.load(Ordering::SeqCst);
        let died = format!("{}: its runner {why}", self.spec.who);
        if let Some(link) = link {
            link.close(if stopping { format!("{} is shutting down", self.spec.who) } else { died.clone() });
        }
        let status = match exit {
            Some(mut exit) => {
                if tokio::time::timeout(Duration::from_secs(2), exit.wait_for(Option::is_some)).await.is_err() {
                    if let Some(kill) = self.lock().kill.take() {
                        let _ = kill.send(());
                    }
                    let _ = tokio::time::timeout(Duration::from_secs(2), exit.wait_for(Option::is_some)).await;
                }
                let status = exit.borrow().clone();
                status.unwrap_or_else(|| "did not exit".to_owned())
            }
            None => "unknown".to_owned(),
        };
        crate::metrics::global().gauge("oh_plugin_runner_up", UP_HELP, &[("key", &self.spec.key)], 0.0, false);
        if stopping {
            return false;
        }
        tracing::error!(plugin = %self.spec.who, %status, "{died}; restarting it");
        self.lock().why = format!("its runner {why}: {status}");
        true
    }

    /// Starts one runner: a private socket, the process, the `start` handshake. Blocking.
    fn launch(&self) -> Result<Launched, String> {
        let who = &self.spec.who;
        let dir = private_dir().map_err(|e| format!("{who}: cannot make a socket directory: {e}"))?;
        let socket = dir.join("s");
        let cleanup = || {
            let _ = std::fs::remove_file(&socket);
            let _ = std::fs::remove_dir(&dir);
        };
        let listener =
            UnixListener::bind(&socket).map_err(|e| format!("{who}: cannot listen on {}: {e}", socket.display()));
        let listener = match listener {
            Ok(l) => l,
            Err(e) => {
                cleanup();
                return Err(e);
            }
        };
        let _ = listener.set_nonblocking(true);
        let _enter = self.runtime.enter();
        let mut command = tokio::process::Command::new(&self.spec.argv[0]);
        command
            .args(&self.spec.argv[1..])
            .env(wire::SOCKET_VAR, &socket)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                cleanup();
                return Err(format!("{who}: cannot start `{}`: {e}", self.spec.argv.join(" ")));
            }
        };
        let deadline = Instant::now() + self.spec.start_timeout;
        let accepted = loop {
            match listener.accept() {
                Ok((stream, _)) => break Ok(stream),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => break Err(format!("{who}: accepting its runner failed: {e}")),
            }
            if let Ok(Some(status)) = child.try_wait() {
                break Err(format!(
                    "{who}: its runner `{}` exited before connecting ({status})",
                    self.spec.argv.join(" ")
                ));
            }
            if Instant::now() > deadline {
                break Err(format!("{who}: its runner did not connect within {:?}", self.spec.start_timeout));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        cleanup();
        let mut stream = accepted?;
        let handshake = (|| {
            stream.set_nonblocking(false)?;
            stream.set_read_timeout(Some(
                deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)),
            ))?;
            wire::write_blocking(&mut stream, &Message::Start(self.spec.start.clone()))?;
            let answer = wire::read_blocking(&mut stream)?;
            stream.set_read_timeout(None)?;
            stream.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(answer)
        })();
        let ready = match handshake {
            Ok(Message::Ready(ready)) if ready.protocol == wire::PROTOCOL => ready,
            Ok(Message::Ready(ready)) => {
                return Err(format!(
                    "{who}: its runner speaks protocol {}, this host {}",
                    ready.protocol,
                    wire::PROTOCOL
                ))
            }
            Ok(Message::Failed { error }) => return Err(format!("{who}: {}", PluginError::from(error))),
            Ok(other) => return Err(format!("{who}: its runner answered `start` with {other:?}")),
            Err(e) => {
                let status = child.try_wait().ok().flatten().map(|s| format!(" ({s})")).unwrap_or_default();
                return Err(format!("{who}: its runner failed during start{status}: {e}"));
            }
        };
        let stream = tokio::net::UnixStream::from_std(stream).map_err(|e| format!("{who}: {e}"))?;
        let (read, write) = stream.into_split();
        let link = Link::new(write, format!("the runner of {who}"));
        let pid = child.id();
        let (exit_tx, exit) = watch::channel(None);
        let (kill, kill_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                _ = kill_rx => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            let _ = exit_tx.send(Some(match status {
                Ok(s) => describe_exit(s),
                Err(e) => format!("unknown exit: {e}"),
            }));
        });
        let relay = Relay { link: link.clone(), services: self.services.clone(), sinks: self.sinks.clone() };
        let reader = tokio::spawn(read_loop(read, relay, self.spec.library.clone()));
        Ok(Launched { link, pid, ready, reader, exit, kill })
    }
}

/// `signal: 24 (SIGXCPU): it used up its cpu_seconds`.
fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    let why = match status.signal() {
        Some(24) => ": it used up its cpu_seconds",
        Some(6) => ": it aborted (out of memory under memory_mb, or a failed assertion)",
        Some(11) | Some(7) => ": it crashed (a memory error in the plugin)",
        Some(9) => ": killed (by an operator, or by the kernel out of memory)",
        _ => "",
    };
    format!("{status}{why}")
}

const UP_HELP: &str = "1 while an isolated plugin's runner is up, 0 while it is down.";
const RESTARTS_HELP: &str = "Restarts of isolated plugins' runners after they died.";

fn random_hex() -> String {
    let mut bytes = [0u8; 8];
    let _ = getrandom::getrandom(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `$TMPDIR/oh-plugins-<pid>-<random>`, mode 0700, made new once per process: where every
/// runner's socket directory is (a sandboxed runner sees this directory and nothing else of
/// the host's temporary directories).
pub(super) fn socket_parent() -> std::io::Result<&'static std::path::Path> {
    static PARENT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(p) = PARENT.get() {
        return Ok(p);
    }
    let dir = std::env::temp_dir().join(format!("oh-plugins-{}-{}", std::process::id(), random_hex()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(PARENT.get_or_init(|| dir))
}

/// A new directory of mode 0700 under [`socket_parent`] for one runner's socket.
fn private_dir() -> std::io::Result<PathBuf> {
    let dir = socket_parent()?.join(random_hex());
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// What the runner sends: answers, host calls, logs, metrics, spans. Ends with why the
/// connection did.
/// What the reader hands the runner's messages to.
struct Relay {
    link: Arc<Link>,
    services: Arc<HostServicesObject>,
    sinks: Arc<Sinks>,
}

async fn read_loop(read: OwnedReadHalf, relay: Relay, library: String) -> String {
    // Buffered: frames that arrive together are read with one system call.
    let mut read = tokio::io::BufReader::with_capacity(64 << 10, read);
    let Relay { link, services, sinks } = relay;
    loop {
        match wire::read(&mut read).await {
            Ok(Some(Message::Result { id, ok, error })) => {
                link.answer(id, error.map_or_else(|| Ok(ok.unwrap_or(Value::Null)), |e| Err(e.into())))
            }
            Ok(Some(Message::HostCall { id, ctx, point, method, args })) => {
                let (link, services) = (link.clone(), services.clone());
                tokio::spawn(async move {
                    // An isolated manager's runtime handle: the host's handle serves it.
                    if point == ExtensionPoint::RUNTIME.key() {
                        let answer = match services.runtime().into_option() {
                            Some(runtime) => super::points::call_runtime(&runtime, &method, ctx.into(), args).await,
                            None => Err(PluginError::unavailable("this deployment has no runtime")),
                        };
                        link.send(&wire::result(id, answer)).await;
                        return;
                    }
                    let point = ExtensionPoint::from_key(&point).unwrap_or(ExtensionPoint(0));
                    let answer = services
                        .call(ctx.into(), point, method.into(), args.to_string().into())
                        .await
                        .into_result()
                        .and_then(|text: RString| {
                            serde_json::from_str::<Value>(&text).map_err(|e| PluginError::internal(e.to_string()))
                        });
                    link.send(&wire::result(id, answer)).await;
                });
            }
            Ok(Some(Message::Log { level, target, message, fields })) => {
                crate::loader::relay_log(&level, &library, &target, &message, &fields)
            }
            Ok(Some(Message::Metric { kind, name, value, labels, delta, buckets })) => {
                crate::loader::relay_metric(&kind, &name, value, &labels, delta, &buckets)
            }
            Ok(Some(Message::Span { span })) => crate::telemetry::record(&span.to_string()),
            Ok(Some(Message::Event { sink, event })) => {
                if !sinks.deliver(sink, &event) {
                    link.try_send(&Message::SinkClosed { sink });
                }
            }
            Ok(Some(other)) => tracing::warn!(plugin = %library, "unexpected message from the runner: {other:?}"),
            Ok(None) => return "closed its connection (it exited or crashed)".to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return format!("broke the protocol ({e})"),
            Err(e) => return format!("lost its connection ({e}: it exited or crashed)"),
        }
    }
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").field("who", &self.spec.who).field("state", &self.describe()).finish()
    }
}
