//! The decoded documents of recently read files (settings, secrets), valid while the file is
//! the one they were read from. A hit costs one `stat`, no read and no decryption; a write
//! by any process renames a new file in, which changes its [`Stamp`] and misses.

use crate::fsutil::Stamp;
use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

/// Beyond this many files the cache starts again empty: a bound on memory, not an LRU.
const MAX_ENTRIES: usize = 10_000;

pub(crate) enum Lookup<T> {
    /// The file is what was cached.
    Hit(Arc<T>),
    /// There is no file.
    Absent,
    /// Not cached, or the file changed: read it.
    Miss,
}

pub(crate) struct FileCache<T> {
    entries: Mutex<HashMap<PathBuf, (Stamp, Arc<T>)>>,
}

impl<T> Default for FileCache<T> {
    fn default() -> Self {
        Self { entries: Mutex::new(HashMap::new()) }
    }
}

impl<T> FileCache<T> {
    /// One `stat` of `path`: cheap enough to run on an async worker.
    pub(crate) fn lookup(&self, path: &Path) -> io::Result<Lookup<T>> {
        let Some(stamp) = Stamp::of(path)? else {
            self.forget(path);
            return Ok(Lookup::Absent);
        };
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        Ok(match entries.get(path) {
            Some((cached, value)) if *cached == stamp => Lookup::Hit(value.clone()),
            _ => Lookup::Miss,
        })
    }

    /// Remembers what the file with `stamp` holds (just read, or just written under its lock).
    pub(crate) fn put(&self, path: &Path, stamp: Stamp, value: Arc<T>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(path) {
            entries.clear();
        }
        entries.insert(path.to_path_buf(), (stamp, value));
    }

    pub(crate) fn forget(&self, path: &Path) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).remove(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::write_atomic;

    #[test]
    fn a_rewrite_misses_even_with_the_same_size_and_mtime_tick() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doc.json");
        let cache = FileCache::<String>::default();
        assert!(matches!(cache.lookup(&path).unwrap(), Lookup::Absent));
        write_atomic(&path, b"one", 0o600).unwrap();
        assert!(matches!(cache.lookup(&path).unwrap(), Lookup::Miss));
        cache.put(&path, Stamp::of(&path).unwrap().unwrap(), Arc::new("one".into()));
        assert!(matches!(cache.lookup(&path).unwrap(), Lookup::Hit(v) if *v == "one"));
        // Another process rewrites it at once: same length, likely the same mtime tick.
        write_atomic(&path, b"two", 0o600).unwrap();
        assert!(matches!(cache.lookup(&path).unwrap(), Lookup::Miss));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(cache.lookup(&path).unwrap(), Lookup::Absent));
    }
}
