//! Decrypted documents by user, each with the row version it was read at. A load sends the
//! cached version with its query; the database answers "unchanged" without the document, so
//! a hit costs one round trip and no decryption. Versions grow with every write on any host,
//! so a hit is never stale.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// Beyond this many users the cache starts again empty: a bound on memory, not an LRU.
const MAX_ENTRIES: usize = 10_000;

pub(crate) struct VersionCache<T> {
    entries: Mutex<HashMap<String, (i64, Arc<T>)>>,
}

impl<T> Default for VersionCache<T> {
    fn default() -> Self {
        Self { entries: Mutex::new(HashMap::new()) }
    }
}

impl<T> VersionCache<T> {
    /// The version of `user`'s cached document; -1 (which no stored row has) when none is.
    pub(crate) fn version(&self, user: &str) -> i64 {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).get(user).map_or(-1, |(v, _)| *v)
    }

    /// The document cached at `version`, if that is still the one cached.
    pub(crate) fn get(&self, user: &str, version: i64) -> Option<Arc<T>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(user).filter(|(v, _)| *v == version).map(|(_, doc)| doc.clone())
    }

    pub(crate) fn put(&self, user: &str, version: i64, doc: Arc<T>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(user) {
            entries.clear();
        }
        // Never replace a newer document with an older one read concurrently.
        if entries.get(user).is_none_or(|(v, _)| *v < version) {
            entries.insert(user.to_owned(), (version, doc));
        }
    }
}
