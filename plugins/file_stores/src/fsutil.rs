//! Atomic file writes, safe path components, and running blocking I/O off the async workers.

use plugin_sdk::{ErrorCode, PluginError};
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

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

/// Runs blocking file I/O on the runtime's blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PluginError> + Send + 'static,
) -> Result<T, PluginError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic())
        }
        PluginError::unavailable("file task cancelled")
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unsafe_ids() {
        for id in ["", "..", "a/b", "a\\b", "a\0b", "x..y", &"a".repeat(256)] {
            assert!(safe_component("conversation", id).is_err(), "{id:?}");
        }
        assert_eq!(safe_component("conversation", "abc123").unwrap(), "abc123");
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
