//! Loading plugin libraries: the checks before `dlopen`, the ABI handshake after it, and the
//! host API handed to each library.
//!
//! Order (docs/decisions.md §5, §8): the file must exist in the plugins directory (no search path, no
//! symlink out of it), neither it nor its directory may be writable by other users, its
//! sha256 must match the pin when there is one; the bytes hashed are the ones run, a sealed
//! private copy (so the file may be replaced under a running server; `copy.rs`); then
//! abi_stable checks the layout of every type, and we check our own API version and the panic
//! strategy. Libraries are never unloaded.
// The loader is one of the two places allowed unsafe code: dlopen runs the library's
// initialisers, and geteuid is a libc call.
#![allow(unsafe_code)]

mod copy;

pub use copy::{file_sha256, resident, LibrarySum};

use abi_stable::{
    library::{lib_header_from_path, LibraryError},
    prefix_type::PrefixTypeTrait,
    sabi_types::VersionNumber,
    std_types::{RSlice, RStr},
};
use plugin_api::{
    async_ffi::FfiFuture, v1_0, ApiInfo, ExtensionPoint, HostApi, HostApi_Ref, ImplementationInfo, Label, LogLevel,
    PResult, PluginLib_Ref,
};
use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
};

/// A library that passed every check and whose root module is loaded.
#[derive(Clone)]
pub struct Library {
    /// The name used in `plugins.toml` (`lib<name>.so`).
    pub name: String,
    pub path: PathBuf,
    /// What was opened: its private copy (`/proc/self/fd/N`), or `path` when none could be
    /// made. Each load is a library instance of its own, initialised once.
    pub loaded_from: PathBuf,
    /// From the private copy, when first asked (a pinned library's at load).
    pub sha256: LibrarySum,
    pub module: Root,
    pub api: ApiInfo,
    /// The library's own name and version (its crate's).
    pub declared_name: String,
    pub version: String,
    pub implementations: Vec<Implementation>,
}

#[derive(Clone, Debug)]
pub struct Implementation {
    pub point: ExtensionPoint,
    pub name: String,
    pub description: String,
}

impl Library {
    pub fn offers(&self, point: ExtensionPoint, name: &str) -> bool {
        self.implementations.iter().any(|i| i.point == point && i.name == name)
    }
    pub fn api_version(&self) -> String {
        format!("{}.{}", self.api.major, self.api.minor)
    }
}

/// `<plugins_dir>/lib<name>.so`.
pub fn library_path(plugins_dir: &Path, name: &str) -> PathBuf {
    plugins_dir.join(format!("lib{name}.so"))
}

/// Loads one library by name from `plugins_dir`, with every check. The message of the error
/// names the file and the fix; the caller adds the extension point.
pub fn load(plugins_dir: &Path, name: &str, pin: Option<&str>) -> Result<Library, String> {
    open_prepared(prepare(plugins_dir, name, pin)?)
}

/// A library's file checked, copied and, when pinned, hashed: what comes before `dlopen`.
struct Prepared {
    name: String,
    real: PathBuf,
    shown: String,
    sha256: LibrarySum,
    loaded_from: PathBuf,
}

/// [`load`] for each `(name, pin)`, in parallel, by name: copying the files and abi_stable's
/// layout checks are most of a start, and no library's depend on another's (`dlopen` itself
/// runs one at a time, under the dynamic loader's lock). The libraries are not initialised
/// ([`init`]): the caller does that, in the profile's order.
pub fn load_all(plugins_dir: &Path, wanted: &[(String, Option<String>)]) -> BTreeMap<String, Result<Library, String>> {
    std::thread::scope(|scope| {
        let running: Vec<_> = wanted
            .iter()
            .map(|(name, pin)| (name, scope.spawn(move || load(plugins_dir, name, pin.as_deref()))))
            .collect();
        running
            .into_iter()
            .map(|(name, t)| (name.clone(), t.join().unwrap_or_else(|_| Err(format!("loading `{name}` panicked")))))
            .collect()
    })
}

/// The checks on a library's file, then its private copy (hashed now when pinned).
fn prepare(plugins_dir: &Path, name: &str, pin: Option<&str>) -> Result<Prepared, String> {
    let path = library_path(plugins_dir, name);
    let shown = path.display().to_string();
    if fs::symlink_metadata(&path).is_err() {
        return Err(format!("library `{name}` not found: no {shown} (run `make plugins`, or copy lib{name}.so there)"));
    }
    let dir = fs::canonicalize(plugins_dir).map_err(|e| format!("plugins_dir {}: {e}", plugins_dir.display()))?;
    let real = fs::canonicalize(&path).map_err(|e| format!("{shown}: {e}"))?;
    if real.parent() != Some(dir.as_path()) {
        return Err(format!(
            "{shown} resolves to {}, outside the plugins directory {}; copy the library into the directory instead of linking to it",
            real.display(),
            dir.display()
        ));
    }
    check_ancestors(&dir)?;
    check_permissions(&dir)?;
    check_permissions(&real)?;
    // One copy, sealed: the bytes hashed (and pinned) are the bytes that run.
    let source = fs::File::open(&real).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let (loaded_from, sha256) = match copy::private_copy(&source, name) {
        Ok(copy) => copy,
        Err(e) => {
            tracing::warn!(library = %shown, error = %e, "no private copy of the library could be made; it is run from its file, which must then not be replaced while the server runs");
            let sum = file_sha256(&real).map_err(|e| format!("cannot read {shown}: {e}"))?;
            (real.clone(), LibrarySum::known(sum))
        }
    };
    if let Some(pin) = pin {
        let sum = sha256.get();
        if !pin.eq_ignore_ascii_case(sum) {
            return Err(format!(
                "{shown}: sha256 is {sum} but the profile pins {pin}; refusing to load it (if the new build is intended, update the pin)"
            ));
        }
    }
    Ok(Prepared { name: name.to_owned(), real, shown, sha256, loaded_from })
}

/// `dlopen`s a prepared library and checks what it declares.
fn open_prepared(prepared: Prepared) -> Result<Library, String> {
    let Prepared { name, real, shown, sha256, loaded_from } = prepared;
    let module = open(&loaded_from, &shown)?;
    let api = module.api();
    if api.magic != plugin_api::API_MAGIC {
        return Err(format!("{shown} is an abi_stable library but not an oh-host plugin (wrong magic number)"));
    }
    compatible(&shown, api.major, api.minor)?;
    if !api.panic_unwind {
        return Err(format!(
            "{shown} was built with panic = \"abort\": its first panic would end the whole server; rebuild it with panic = \"unwind\""
        ));
    }
    let implementations = (module.implementations())()
        .into_iter()
        .map(|i| Implementation {
            point: i.point,
            name: i.name.into_string(),
            description: i.description.into_string(),
        })
        .collect();
    Ok(Library {
        name,
        path: real,
        loaded_from,
        sha256,
        module,
        api,
        declared_name: module.name().to_string(),
        version: module.version().to_string(),
        implementations,
    })
}

/// `dlopen` + abi_stable's checks (`shown`: the library as the operator knows it). Never
/// `RootModule::load_from_*`: those cache one module per type, so a second library would
/// silently return the first.
fn open(path: &Path, shown: &str) -> Result<Root, String> {
    let header = lib_header_from_path(path).map_err(|e| describe(shown, e))?;
    // The contract's version first, so that a library newer than this host is refused with
    // the rule and the fix rather than with whatever layout difference it has; then its
    // layouts are checked against the definitions of the minor it was built for (abi_stable
    // refuses a library whose prefix types have fewer fields than the host's).
    let version = VersionNumber::new(header.version_strings()).map_err(|e| format!("{shown}: {e}"))?;
    compatible(shown, version.major, version.minor)?;
    match version.minor {
        0 => header.init_root_module::<v1_0::PluginLib_Ref>().map(Root::V1_0),
        _ => header.init_root_module::<PluginLib_Ref>().map(Root::Current),
    }
    .map_err(|e| describe(shown, e))
}

/// A library's root module, as the contract's minor it was built against defines it.
#[derive(Clone, Copy)]
pub enum Root {
    /// Built against plugin-api 1.0: no `runtime` factory; its factories take 1.0's
    /// `HostServices`.
    V1_0(v1_0::PluginLib_Ref),
    /// Built against this host's minor (or one between 1.1 and it).
    Current(PluginLib_Ref),
}

impl Root {
    pub fn api(self) -> ApiInfo {
        match self {
            Root::V1_0(m) => m.api(),
            Root::Current(m) => m.api(),
        }
    }
    pub fn name(self) -> RStr<'static> {
        match self {
            Root::V1_0(m) => m.name(),
            Root::Current(m) => m.name(),
        }
    }
    pub fn version(self) -> RStr<'static> {
        match self {
            Root::V1_0(m) => m.version(),
            Root::Current(m) => m.version(),
        }
    }
    pub fn init(self) -> extern "C" fn(HostApi_Ref, RStr<'_>) -> PResult<()> {
        match self {
            Root::V1_0(m) => m.init(),
            Root::Current(m) => m.init(),
        }
    }
    pub fn implementations(self) -> extern "C" fn() -> abi_stable::std_types::RVec<ImplementationInfo> {
        match self {
            Root::V1_0(m) => m.implementations(),
            Root::Current(m) => m.implementations(),
        }
    }
    /// The `runtime` factory: `None` from a library built before plugin-api 1.1.
    pub fn runtime_factory(
        self,
    ) -> Option<extern "C" fn(RStr<'_>, RStr<'_>, plugin_api::HostServicesObject) -> PResult<plugin_api::RuntimeObject>>
    {
        match self {
            Root::V1_0(_) => None,
            Root::Current(m) => m.new_runtime(),
        }
    }

    pub fn shutdown(self) -> extern "C" fn(u64) -> FfiFuture<()> {
        match self {
            Root::V1_0(m) => m.shutdown(),
            Root::Current(m) => m.shutdown(),
        }
    }
}

/// The compatibility rule: the host's major, and a minor not above the host's (a library
/// built against 1.k loads in every host 1.m with m >= k).
fn compatible(shown: &str, major: u32, minor: u32) -> Result<(), String> {
    let (host_major, host_minor) = (plugin_api::API_MAJOR, plugin_api::API_MINOR);
    if major == host_major && minor <= host_minor {
        return Ok(());
    }
    let fix = if major == host_major {
        format!(
            "upgrade the host to one that speaks plugin-api {major}.{minor} or later, or rebuild the plugin against plugin-api {host_major}.{host_minor} (or any {host_major}.x up to it)"
        )
    } else if major < host_major {
        format!("rebuild the plugin against plugin-api {host_major}.x (see docs/plugin-api.md: what changed in {host_major}.0)")
    } else {
        format!("use a host that speaks plugin-api {major}.x, or rebuild the plugin against {host_major}.{host_minor}")
    };
    Err(format!(
        "{shown} was built for plugin-api {major}.{minor}, but this host speaks plugin-api {host_major}.{host_minor} and loads libraries built for {host_major}.0 to {host_major}.{host_minor}; {fix}"
    ))
}

fn describe(shown: &str, err: LibraryError) -> String {
    match err {
        LibraryError::OpenError { err, .. } => format!("{shown} cannot be opened as a shared library: {err}"),
        LibraryError::GetSymbolError { .. } => format!(
            "{shown} is not an oh-host plugin: it exports no abi_stable root module (build it with plugin_sdk::export_plugin!)"
        ),
        LibraryError::IncompatibleVersionNumber { expected_version, actual_version, .. } => format!(
            "{shown} was built against plugin-api {actual_version}, this host uses {expected_version}; rebuild the plugin with this host's plugin-api"
        ),
        LibraryError::AbiInstability(e) => {
            let full = e.to_string();
            tracing::debug!(library = shown, layout = %full, "abi_stable layout check failed");
            format!(
                "{shown} does not match this host's plugin-api layout (rebuild it against this host's plugin-api):\n{}",
                summarize_layout_error(&full)
            )
        }
        LibraryError::RootModule { err, .. } => format!("{shown}: its root module failed to load: {err}"),
        other => format!("{shown}: {other}"),
    }
}

/// abi_stable's layout errors are dumps of hundreds of lines; the operator needs the
/// `Error:` / `Expected` / `Found` lines.
pub fn summarize_layout_error(full: &str) -> String {
    let mut keep: Vec<String> = Vec::new();
    for line in full.lines() {
        let t = line.trim();
        if (t.starts_with("Error:") || t.starts_with("Expected") || t.starts_with("Found"))
            && !keep.iter().any(|k| k == t)
        {
            keep.push(t.to_owned());
        }
        if keep.len() >= 12 {
            break;
        }
    }
    if keep.is_empty() {
        full.lines().take(5).collect::<Vec<_>>().join("\n")
    } else {
        keep.iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
    }
}

/// The library file and its directory: writable by nobody but their owner (and root's group),
/// owned by root or by this server's user. As sshd's StrictModes: whoever can write there can
/// choose the code the server runs.
fn check_permissions(path: &Path) -> Result<(), String> {
    let meta = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.mode() & 0o7777;
    let what = if meta.is_dir() { "directory" } else { "library" };
    let shown = path.display();
    if mode & 0o002 != 0 {
        return Err(format!(
            "{what} {shown} is writable by every user (mode {mode:o}); anyone could replace the code the server runs. Run `chmod o-w {shown}`"
        ));
    }
    if mode & 0o020 != 0 && meta.gid() != 0 {
        return Err(format!(
            "{what} {shown} is writable by its group (gid {}, mode {mode:o}); its members could replace the code the server runs. Run `chmod g-w {shown}`",
            meta.gid()
        ));
    }
    check_owner(path, &meta, what)
}

fn check_owner(path: &Path, meta: &fs::Metadata, what: &str) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(format!(
            "{what} {} is owned by uid {}, neither root nor this server's user (uid {euid}); `chown` it",
            path.display(),
            meta.uid()
        ));
    }
    Ok(())
}

/// Every directory above the plugins directory, up to `/`: one that others may write could be
/// used to swap the plugins directory itself. A root-owned sticky directory (`/tmp`) is fine:
/// nobody else may rename what is in it.
fn check_ancestors(dir: &Path) -> Result<(), String> {
    for ancestor in dir.ancestors().skip(1) {
        let meta = fs::metadata(ancestor).map_err(|e| format!("{}: {e}", ancestor.display()))?;
        let mode = meta.mode() & 0o7777;
        let sticky_root = mode & 0o1000 != 0 && meta.uid() == 0;
        let shown = ancestor.display();
        if mode & 0o002 != 0 && !sticky_root {
            return Err(format!(
                "directory {shown}, above the plugins directory, is writable by every user (mode {mode:o}); anyone could swap the plugins directory. Run `chmod o-w {shown}` or move the plugins"
            ));
        }
        if mode & 0o020 != 0 && meta.gid() != 0 && !sticky_root {
            return Err(format!(
                "directory {shown}, above the plugins directory, is writable by its group (gid {}, mode {mode:o}); run `chmod g-w {shown}` or move the plugins",
                meta.gid()
            ));
        }
        check_owner(ancestor, &meta, "directory")?;
    }
    Ok(())
}

/// A library found by [`scan`]: its name, and what loading it gave.
pub type Scanned = (String, Result<Library, String>);

/// Every `*.so` in the plugins directory, loaded with the same checks (for `oh-host plugins`).
pub fn scan(plugins_dir: &Path) -> Result<Vec<Scanned>, String> {
    let entries = fs::read_dir(plugins_dir)
        .map_err(|e| format!("cannot list plugins_dir {}: {e} (run `make plugins`)", plugins_dir.display()))?;
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter_map(|n| n.strip_prefix("lib").and_then(|n| n.strip_suffix(".so")).map(str::to_owned))
        .collect();
    names.sort();
    Ok(names.into_iter().map(|n| (n.clone(), load(plugins_dir, &n, None))).collect())
}

// ---- The host API given to each library at init. ----

extern "C" fn host_log_enabled(level: LogLevel, _target: RStr<'_>) -> bool {
    tracing::level_filters::LevelFilter::current() >= to_level(level)
}

fn to_level(level: LogLevel) -> tracing::Level {
    match level {
        LogLevel::Error => tracing::Level::ERROR,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Trace => tracing::Level::TRACE,
    }
}

extern "C" fn host_log(level: LogLevel, library: RStr<'_>, target: RStr<'_>, message: RStr<'_>, fields: RStr<'_>) {
    let (library, target, message, fields) = (library.as_str(), target.as_str(), message.as_str(), fields.as_str());
    macro_rules! emit {
        ($lvl:ident) => {
            if fields.is_empty() {
                tracing::$lvl!(target: "plugin", plugin = library, source = target, "{message}")
            } else {
                tracing::$lvl!(target: "plugin", plugin = library, source = target, "{message} {fields}")
            }
        };
    }
    match level {
        LogLevel::Error => emit!(error),
        LogLevel::Warn => emit!(warn),
        LogLevel::Info => emit!(info),
        LogLevel::Debug => emit!(debug),
        LogLevel::Trace => emit!(trace),
    }
}

/// A plugin's labels as the registry renders them.
fn plugin_labels(labels: RSlice<'_, Label<'_>>) -> String {
    crate::metrics::render_labels(labels.iter().map(|l| (l.0.as_str(), l.1.as_str().to_owned())))
}

const REPORTED: &str = "Reported by a plugin.";

extern "C" fn host_metric(name: RStr<'_>, value: f64, labels: RSlice<'_, Label<'_>>) {
    crate::metrics::global().inc_rendered(name.as_str(), REPORTED, plugin_labels(labels), value);
}

extern "C" fn host_span(span_json: RStr<'_>) {
    crate::telemetry::record(span_json.as_str());
}

extern "C" fn host_tracing_enabled() -> bool {
    crate::telemetry::enabled()
}

extern "C" fn host_gauge(name: RStr<'_>, value: f64, delta: bool, labels: RSlice<'_, Label<'_>>) {
    crate::metrics::global().gauge_rendered(name.as_str(), REPORTED, plugin_labels(labels), value, delta);
}

extern "C" fn host_observe(name: RStr<'_>, value: f64, buckets: RSlice<'_, f64>, labels: RSlice<'_, Label<'_>>) {
    // Bucket sets live as long as the process; each distinct one is kept once.
    static BOUNDS: OnceLock<Mutex<BTreeMap<Vec<u64>, &'static [f64]>>> = OnceLock::new();
    let bounds = {
        let mut known = BOUNDS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        let key: Vec<u64> = buckets.iter().map(|b| b.to_bits()).collect();
        *known.entry(key).or_insert_with(|| {
            let mut parsed: Vec<f64> = buckets.iter().copied().filter(|b| b.is_finite()).collect();
            parsed.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            parsed.dedup();
            if parsed.is_empty() {
                parsed = crate::metrics::SECONDS.to_vec();
            }
            Vec::leak(parsed)
        })
    };
    crate::metrics::global().observe_rendered(name.as_str(), REPORTED, bounds, plugin_labels(labels), value);
}

/// The one `HostApi` all libraries share.
pub fn host_api() -> HostApi_Ref {
    static API: OnceLock<HostApi_Ref> = OnceLock::new();
    *API.get_or_init(|| {
        HostApi {
            log_enabled: host_log_enabled,
            log: host_log,
            metric: host_metric,
            gauge: host_gauge,
            observe: host_observe,
            span: host_span,
            tracing_enabled: host_tracing_enabled,
            read_only: host_read_only,
        }
        .leak_into_prefix()
    })
}

/// Set by `oh-host check` before it loads anything: plugins then write nothing.
static READ_ONLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes every library loaded from now on check-only (`HostApi::read_only`).
pub fn set_read_only() {
    READ_ONLY.store(true, std::sync::atomic::Ordering::SeqCst);
}

extern "C" fn host_read_only() -> bool {
    is_read_only()
}

/// Whether this process only checks (`oh-host check`).
pub fn is_read_only() -> bool {
    READ_ONLY.load(std::sync::atomic::Ordering::SeqCst)
}

/// A log event an isolated plugin's runner sent (`isolation::supervisor`), recorded as an
/// in-process plugin's would be.
pub(crate) fn relay_log(level: &str, library: &str, target: &str, message: &str, fields: &str) {
    let level = match level {
        "error" => LogLevel::Error,
        "warn" => LogLevel::Warn,
        "debug" => LogLevel::Debug,
        "trace" => LogLevel::Trace,
        _ => LogLevel::Info,
    };
    if host_log_enabled(level, RStr::from_str(target)) {
        let s = RStr::from_str;
        host_log(level, s(library), s(target), s(message), s(fields));
    }
}

/// A metric an isolated plugin's runner sent: `counter`, `gauge` or `histogram`.
pub(crate) fn relay_metric(
    kind: &str,
    name: &str,
    value: f64,
    labels: &[(String, String)],
    delta: bool,
    buckets: &[f64],
) {
    let labels: Vec<Label<'_>> =
        labels.iter().map(|(k, v)| abi_stable::std_types::Tuple2(RStr::from_str(k), RStr::from_str(v))).collect();
    let (name, labels) = (RStr::from_str(name), RSlice::from_slice(&labels));
    match kind {
        "gauge" => host_gauge(name, value, delta, labels),
        "histogram" => host_observe(name, value, RSlice::from_slice(buckets), labels),
        _ => host_metric(name, value, labels),
    }
}

/// Calls the library's `init` once per process.
pub fn init(lib: &Library, library_config_json: &str) -> Result<(), String> {
    init_with(lib, library_config_json, host_api())
}

/// [`init`] with another host API (an isolated plugin's runner forwards to the host).
pub fn init_with(lib: &Library, library_config_json: &str, api: HostApi_Ref) -> Result<(), String> {
    static DONE: OnceLock<Mutex<BTreeMap<PathBuf, Result<(), String>>>> = OnceLock::new();
    let mut done = DONE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    done.entry(lib.loaded_from.clone())
        .or_insert_with(|| {
            (lib.module.init())(api, RStr::from_str(library_config_json))
                .into_result()
                .map_err(|e| format!("library `{}` ({}) failed to start: {e}", lib.name, lib.path.display()))
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_dumps_are_summarised() {
        let dump = "lots\n  of\nError:too many fields\n   Expected: 11\n   Found: 10\nError:too many fields\n more";
        assert_eq!(summarize_layout_error(dump), "    Error:too many fields\n    Expected: 11\n    Found: 10");
    }

    #[test]
    fn missing_library_names_the_file_and_the_fix() {
        let dir = std::env::temp_dir();
        let err = load(&dir, "no_such_plugin_xyz", None).err().unwrap();
        assert!(err.contains("libno_such_plugin_xyz.so"), "{err}");
        assert!(err.contains("make plugins"), "{err}");
    }
}
