//! Atomic file writes, a lock shared with other processes, safe path components, stale
//! temp files, and running blocking I/O off the async workers.

use plugin_sdk::{ErrorCode, PluginError};
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

/// What identifies one version of a file: atomic writes rename a new inode in, so a rewrite
/// changes the stamp even within one mtime tick.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Stamp(u64, u64, i64, i64);

impl Stamp {
    pub(crate) fn of(path: &Path) -> io::Result<Option<Stamp>> {
        match fs::metadata(path) {
            Ok(m) => Ok(Some(Stamp::from(&m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl From<&fs::Metadata> for Stamp {
    fn from(m: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Stamp(m.ino(), m.size(), m.mtime(), m.mtime_nsec())
    }
}

/// Reads a file and the stamp of what was read (from the open file, so they agree);
/// `Ok(None)` when it does not exist.
pub(crate) fn read_stamped(path: &Path) -> io::Result<Option<(Stamp, Vec<u8>)>> {
    use std::io::Read;
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let stamp = Stamp::from(&file.metadata()?);
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(Some((stamp, bytes)))
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one, never
/// a torn one: temp file in the same directory, fsync, rename, fsync the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().ok_or_else(|| io::Error::other("path has no parent"))?;
    fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Runs `f` holding an exclusive OS lock (`flock`) on `<dir>/.lock`: every process sharing
/// the state directory serialises its read-modify-writes of `dir` on it. Blocking: call it
/// from [`blocking`].
pub(crate) fn with_dir_lock<T>(dir: &Path, f: impl FnOnce() -> Result<T, PluginError>) -> Result<T, PluginError> {
    with_lock_file(dir, ".lock", true, f)
}

/// Runs `f` holding `flock` on `<dir>/<name>`, exclusive or shared. Blocking.
pub(crate) fn with_lock_file<T>(
    dir: &Path,
    name: &str,
    exclusive: bool,
    f: impl FnOnce() -> Result<T, PluginError>,
) -> Result<T, PluginError> {
    fs::create_dir_all(dir).map_err(|e| io_error("create a directory", dir, e))?;
    let path = dir.join(name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io_error("open a lock file", &path, e))?;
    if exclusive { file.lock() } else { file.lock_shared() }.map_err(|e| io_error("lock", &path, e))?;
    let result = f();
    let _ = file.unlock();
    result
}

/// Removes the temp files of atomic writes that a crashed process left under `root`: those
/// of processes that are gone (a live process's may be mid-write). A file named with this
/// process's own pid is an earlier process's when it was last written before `since` (a
/// container's host is pid 1 every time), and this process's own write in flight otherwise:
/// the walk runs beside the stores' first writes. Returns how many.
pub(crate) fn remove_stale_temp_files(root: &Path, since: std::time::SystemTime) -> usize {
    let mut removed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else { continue };
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if kind.is_dir() {
                stack.push(entry.path());
                continue;
            }
            // `.<name>.tmp-<pid>-<n>`, as `write_atomic` names them.
            let Some(pid) = name.rsplit_once(".tmp-").and_then(|(_, rest)| rest.split('-').next()) else { continue };
            let Ok(pid) = pid.parse::<u32>() else { continue };
            let alive = if pid == std::process::id() {
                entry.metadata().and_then(|m| m.modified()).map_or(true, |written| written >= since)
            } else {
                Path::new(&format!("/proc/{pid}")).exists()
            };
            if name.starts_with('.') && !alive && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// Reads a file; `Ok(None)` when it does not exist.
pub(crate) fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Checks that an id (user or conversation) is one safe path component.
pub(crate) fn safe_component<'a>(what: &str, id: &'a str) -> Result<&'a str, PluginError> {
    let bad = id.is_empty()
        || id.len() > 255
        || id == "."
        || id == ".."
        || id.contains("..")
        || id.chars().any(|c| c == '/' || c == '\\' || c.is_control());
    if bad {
        return Err(PluginError::invalid_argument(format!("invalid {what} id")));
    }
    Ok(id)
}

/// The directory holding one user's files: the root in single-user mode, `users/<id>` else.
pub(crate) fn user_dir(root: &Path, user_id: Option<&str>) -> Result<PathBuf, PluginError> {
    Ok(match user_id {
        None => root.to_path_buf(),
        Some(id) => root.join("users").join(safe_component("user", id)?),
    })
}

/// An I/O error as a plugin error, logged with its path (the path is not sent to clients).
pub(crate) fn io_error(action: &str, path: &Path, err: io::Error) -> PluginError {
    tracing::error!(path = %path.display(), error = %err, "cannot {action}");
    PluginError::new(ErrorCode::INTERNAL, format!("cannot {action}: {}", err.kind()))
}

/// A stored file that does not parse: logged with its path; that one request fails.
pub(crate) fn corrupt(path: &Path, err: impl std::fmt::Display) -> PluginError {
    tracing::error!(path = %path.display(), error = %err, "corrupt file in the state dir");
    PluginError::internal(format!(
        "stored file `{}` is corrupt ({err}); fix or remove it",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("?")
    ))
}

/// Runs blocking file I/O on the runtime's blocking pool, whose threads run at a lower CPU
/// priority ([`BACKGROUND_NICE`] steps below the process).
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PluginError> + Send + 'static,
) -> Result<T, PluginError> {
    tokio::task::spawn_blocking(move || {
        background_priority();
        f()
    })
    .await
    .map_err(|e| {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic())
        }
        PluginError::unavailable("file task cancelled")
    })?
}

/// How much nicer than the process the threads that write and fsync the stores' files run
/// (10 at the default priority; 19 is the kernel's floor). The kernel work of
/// a burst of fsyncs (200 conversations storing their turn's events at once) is done on the
/// calling thread; at the default priority it took the CPU from the threads that forward
/// live events, and a streamed delta waited behind it (p99 LLM chunk -> client 7.3 ms with
/// 200 streaming on 2 cores; 2.4 ms with these threads at nice 10). Nice is a weight, not a
/// queue: under a full CPU the writes still get about a tenth of it, so they slow down but
/// never stall. Relative, so an operator who runs the host at another priority keeps the
/// gap. The kernel lets a thread raise its own nice value but not lower it again, so the
/// pool's threads keep it; every blocking task of this library is file I/O.
const BACKGROUND_NICE: i32 = 10;

/// Moves the calling thread [`BACKGROUND_NICE`] steps nicer, once. Best effort: a refusal (a
/// seccomp policy, say) leaves it where it was.
fn background_priority() {
    thread_local!(static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    if DONE.replace(true) {
        return;
    }
    // SAFETY: plain syscalls on this thread's own id; no memory is passed.
    #[allow(unsafe_code)]
    let result = unsafe {
        let tid = libc::gettid();
        // On an error getpriority answers -1: the thread then goes to 9, still nicer than 0.
        let current = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, (current + BACKGROUND_NICE).min(19))
    };
    if result != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "file I/O threads stay at the process's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn this_threads_nice() -> i32 {
        // SAFETY: reads this thread's own priority.
        #[allow(unsafe_code)]
        unsafe {
            libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
        }
    }

    #[test]
    fn file_io_runs_at_the_background_priority_and_its_caller_does_not() {
        let before = this_threads_nice();
        let (io, caller) = plugin_sdk::block_on_runtime(async {
            let io = blocking(|| Ok(this_threads_nice())).await.unwrap();
            (io, this_threads_nice())
        });
        assert_eq!(io, (before + BACKGROUND_NICE).min(19), "a file I/O thread's nice (the process's: {before})");
        assert_eq!(caller, before, "the awaiting thread was moved");
        assert_eq!(this_threads_nice(), before);
    }

    #[test]
    fn rejects_unsafe_ids() {
        for id in ["", "..", "a/b", "a\\b", "a\0b", "x..y", &"a".repeat(256)] {
            assert!(safe_component("conversation", id).is_err(), "{id:?}");
        }
        assert_eq!(safe_component("conversation", "abc123").unwrap(), "abc123");
    }

    #[test]
    fn stale_temp_files_of_dead_processes_go_and_others_stay() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("users/u1");
        fs::create_dir_all(&sub).unwrap();
        // pid 1 is alive on every Linux; an absurd pid is not.
        for name in [".settings.json.tmp-4000000-0", ".secrets.json.tmp-1-3", "settings.json", ".lock"] {
            fs::write(sub.join(name), b"x").unwrap();
        }
        assert_eq!(remove_stale_temp_files(dir.path(), std::time::SystemTime::now()), 1);
        let mut left: Vec<_> =
            fs::read_dir(&sub).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, [".lock", ".secrets.json.tmp-1-3", "settings.json"]);
    }

    /// The cleaner runs beside the stores' first writes: a temp file with this process's pid
    /// is a write in flight when written since the process started (it stays), and an
    /// earlier process's with the same pid otherwise (it goes).
    #[test]
    fn this_processs_writes_in_flight_stay_and_an_earlier_same_pid_process_leftovers_go() {
        let dir = tempfile::tempdir().unwrap();
        let pid = std::process::id();
        let old = dir.path().join(format!(".metadata.json.tmp-{pid}-0"));
        fs::write(&old, b"x").unwrap();
        let written = fs::metadata(&old).unwrap().modified().unwrap();
        let since = written + std::time::Duration::from_secs(1);
        let in_flight = dir.path().join(format!(".metadata.json.tmp-{pid}-1"));
        let file = fs::File::create(&in_flight).unwrap();
        file.set_modified(since + std::time::Duration::from_secs(1)).unwrap();
        assert_eq!(remove_stale_temp_files(dir.path(), since), 1);
        assert!(!old.exists() && in_flight.exists());
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/x.json");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x.json")]);
    }
}
