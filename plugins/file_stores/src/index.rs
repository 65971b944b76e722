//! The conversation index: what makes a page of `search` cost O(page) and no file reads.
//!
//! Each base directory (`sessions/`, or `users/<id>/conversations/`) has a journal,
//! `<base>/.index`: one JSON line per metadata write (`put`, with the metadata and the stamp of
//! the `metadata.json` it describes) or delete (`del`). A process folds it into an ordered
//! in-memory index and, on every search, stats it and folds in what was appended since
//! (by itself or by another process sharing the state directory).
//!
//! - **Writers** hold `<base>/.index.lock` shared and the conversation's own lock while they
//!   write `metadata.json` and append its line (one `write` on an `O_APPEND` file), so the
//!   journal's order for a conversation is the order of its files, across processes.
//! - **Compaction** (when the journal holds far more lines than conversations) rewrites it
//!   under the lock held exclusively: temp file, fsync, rename. Readers see a new inode and
//!   reload it.
//! - **Repair**: a crash between a file and its line leaves the journal behind the files. The
//!   first search of a base in a process compares the journal with the directories (names,
//!   and each `metadata.json`'s inode, size and mtime) and, when they differ, rebuilds the
//!   journal from the files under the exclusive lock.
//!
//! The journal is derived data: the files stay the truth, so it needs no fsync per line.
//! Search pages come from it, so they carry no `feedback` (see [`listed`]).

use crate::fsutil::{self, Stamp};
use plugin_sdk::{models::ConversationMetadata, PluginError};
use serde::{Deserialize, Serialize};
use std::{
    collections::{BTreeSet, HashMap},
    fs::{self, File, OpenOptions},
    io::{BufRead, BufReader, Read, Seek, SeekFrom, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

const JOURNAL: &str = ".index";
const LOCK: &str = ".index.lock";
/// Compaction when the journal has this many lines more than twice the conversations.
const SLACK_LINES: u64 = 1_000;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Put { meta: Box<ConversationMetadata>, stamp: Stamp },
    Del { id: String },
}

/// One conversation as the index keeps it: its metadata as compact JSON (null fields left
/// out: a third of the memory of the parsed document), parsed again only for a page.
struct Entry {
    created_at: Box<str>,
    json: Box<str>,
    stamp: Stamp,
}

/// One base directory's index as this process knows it.
#[derive(Default)]
struct BaseIndex {
    /// Checked against the directories (and repaired) in this process.
    checked: bool,
    /// The journal file folded so far: (device, inode) and the bytes consumed.
    file: Option<(u64, u64)>,
    offset: u64,
    lines: u64,
    entries: HashMap<Box<str>, Entry>,
    /// Newest first when iterated in reverse: (created_at, conversation id).
    order: BTreeSet<(Box<str>, Box<str>)>,
}

impl BaseIndex {
    fn clear(&mut self) {
        self.file = None;
        self.offset = 0;
        self.lines = 0;
        self.entries.clear();
        self.order.clear();
    }

    fn put(&mut self, meta: ConversationMetadata, stamp: Stamp) -> Result<(), PluginError> {
        let id: Box<str> = meta.conversation_id.as_str().into();
        let created_at: Box<str> = meta.created_at.as_str().into();
        let json = compact(&meta)?.into_boxed_str();
        if let Some(old) = self.entries.get(&id) {
            self.order.remove(&(old.created_at.clone(), id.clone()));
        }
        self.order.insert((created_at.clone(), id.clone()));
        self.entries.insert(id, Entry { created_at, json, stamp });
        Ok(())
    }

    fn del(&mut self, id: &str) {
        if let Some(old) = self.entries.remove(id) {
            self.order.remove(&(old.created_at, id.into()));
        }
    }

    /// Folds in what the journal gained since the last call; reloads it when it was replaced.
    fn refresh(&mut self, base: &Path) -> Result<(), PluginError> {
        let path = base.join(JOURNAL);
        // The common case, nothing new: one stat, no open.
        let meta = match fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.clear();
                return Ok(());
            }
            Err(e) => return Err(fsutil::io_error("stat the conversation index", &path, e)),
        };
        if self.file == Some((meta.dev(), meta.ino())) && meta.len() <= self.offset {
            return Ok(());
        }
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.clear();
                return Ok(());
            }
            Err(e) => return Err(fsutil::io_error("open the conversation index", &path, e)),
        };
        // The file opened may be a newer one than the one stat'ed (a compaction between).
        let meta = file.metadata().map_err(|e| fsutil::io_error("stat the conversation index", &path, e))?;
        let identity = (meta.dev(), meta.ino());
        if self.file != Some(identity) {
            self.clear();
            self.file = Some(identity);
        }
        if meta.len() <= self.offset {
            return Ok(());
        }
        file.seek(SeekFrom::Start(self.offset))
            .map_err(|e| fsutil::io_error("read the conversation index", &path, e))?;
        // Line by line (a journal of 10,000 conversations is megabytes). Only whole lines: a
        // line is written by one `write`, but a reader may see a file mid-way through a power
        // loss's garbage. Lines start with a newline too, so a torn line never swallows the
        // next one.
        let mut reader = BufReader::new(file.take(meta.len() - self.offset));
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| fsutil::io_error("read the conversation index", &path, e))?;
            if n == 0 || line.last() != Some(&b'\n') {
                return Ok(()); // the end, or a line still being written: next time
            }
            self.offset += n as u64;
            if line.len() == 1 {
                continue;
            }
            self.lines += 1;
            match serde_json::from_slice::<Line>(&line) {
                Ok(Line::Put { meta, stamp }) => self.put(*meta, stamp)?,
                Ok(Line::Del { id }) => self.del(&id),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping a torn line of the conversation index");
                    // Whatever it said, the files know: check them again.
                    self.checked = false;
                }
            }
        }
    }

    /// Rewrites the journal with one line per conversation. Under the exclusive lock.
    fn rewrite(&mut self, base: &Path) -> Result<(), PluginError> {
        let mut text = Vec::new();
        for entry in self.entries.values() {
            let stamp = serde_json::to_string(&entry.stamp).map_err(|e| PluginError::internal(e.to_string()))?;
            text.extend_from_slice(format!("\n{{\"put\":{{\"meta\":{},\"stamp\":{stamp}}}}}", entry.json).as_bytes());
        }
        text.push(b'\n');
        let path = base.join(JOURNAL);
        fsutil::write_atomic(&path, &text, 0o600)
            .map_err(|e| fsutil::io_error("write the conversation index", &path, e))?;
        let meta = fs::metadata(&path).map_err(|e| fsutil::io_error("stat the conversation index", &path, e))?;
        self.file = Some((meta.dev(), meta.ino()));
        self.offset = meta.len();
        self.lines = self.entries.len() as u64;
        Ok(())
    }

    /// Compares the index with the directories; rebuilds it from the files where they differ.
    fn repair(&mut self, base: &Path) -> Result<(), PluginError> {
        if !self.matches_files(base)? {
            with_lock(base, Mode::Exclusive, || {
                // Writers are held off now: what the files say is final until the lock goes.
                self.refresh(base)?;
                let dirs = list_dirs(base)?;
                let mut seen = std::collections::HashSet::new();
                for (id, stamp) in dirs {
                    seen.insert(id.clone());
                    match stamp {
                        Some(stamp) if self.entries.get(id.as_str()).is_some_and(|e| e.stamp == stamp) => {}
                        Some(stamp) => match read_metadata(&base.join(&id).join("metadata.json")) {
                            Some(meta) if meta.conversation_id == id => self.put(listed(meta), stamp)?,
                            _ => self.del(&id),
                        },
                        None => self.del(&id),
                    }
                }
                let gone: Vec<Box<str>> = self.entries.keys().filter(|id| !seen.contains(&***id)).cloned().collect();
                for id in gone {
                    self.del(&id);
                }
                tracing::info!(base = %base.display(), conversations = self.entries.len(), "rebuilt the conversation index from the files");
                self.rewrite(base)
            })?;
        }
        self.checked = true;
        Ok(())
    }

    fn matches_files(&self, base: &Path) -> Result<bool, PluginError> {
        let dirs = list_dirs(base)?;
        let mut listed = 0;
        for (id, stamp) in &dirs {
            match (stamp, self.entries.get(id.as_str())) {
                (Some(stamp), Some(entry)) if entry.stamp == *stamp => listed += 1,
                (None, None) => {}
                _ => return Ok(false),
            }
        }
        Ok(listed == self.entries.len())
    }
}

/// The conversation directories of a base and the stamp of each one's `metadata.json`.
fn list_dirs(base: &Path) -> Result<Vec<(String, Option<Stamp>)>, PluginError> {
    let entries = match fs::read_dir(base) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(fsutil::io_error("list conversations", base, e)),
    };
    let mut dirs = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path().join("metadata.json");
        let stamp = Stamp::of(&path).map_err(|e| fsutil::io_error("stat metadata", &path, e))?;
        dirs.push((name.to_owned(), stamp));
    }
    Ok(dirs)
}

/// As OpenHands: a conversation whose metadata cannot be read is logged and left out.
fn read_metadata(path: &Path) -> Option<ConversationMetadata> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "skipping a conversation in search");
            return None;
        }
    };
    serde_json::from_slice(&bytes)
        .inspect_err(|e| tracing::warn!(path = %path.display(), error = %e, "skipping a conversation in search"))
        .ok()
}

#[derive(Clone, Copy)]
pub(crate) enum Mode {
    /// Writers: many at once, each also holding its conversation's lock.
    Shared,
    /// Compaction and repair: alone.
    Exclusive,
}

/// Runs `f` holding `<base>/.index.lock`. Blocking.
pub(crate) fn with_lock<T>(
    base: &Path,
    mode: Mode,
    f: impl FnOnce() -> Result<T, PluginError>,
) -> Result<T, PluginError> {
    fsutil::with_lock_file(base, LOCK, matches!(mode, Mode::Exclusive), f)
}

/// Appends a metadata write to the journal. The caller holds the lock shared and the
/// conversation's lock, and has just written the file whose stamp this is.
pub(crate) fn record_put(base: &Path, meta: &ConversationMetadata, stamp: Stamp) -> Result<(), PluginError> {
    append(base, &Line::Put { meta: Box::new(listed(meta.clone())), stamp })
}

/// Metadata as the index keeps it: without the user's feedback (what they wrote stays in
/// one file, `metadata.json`; `get_metadata` has it, a search page needs none of it).
fn listed(mut meta: ConversationMetadata) -> ConversationMetadata {
    meta.feedback.clear();
    meta
}

/// Appends a delete to the journal (caller as for [`record_put`]).
pub(crate) fn record_del(base: &Path, id: &str) -> Result<(), PluginError> {
    append(base, &Line::Del { id: id.to_owned() })
}

/// Metadata without its null and empty fields (they read back as their defaults): half the
/// size of the whole document, in the journal and in memory.
fn compact(meta: &ConversationMetadata) -> Result<String, PluginError> {
    let mut value = serde_json::to_value(meta).map_err(|e| PluginError::internal(e.to_string()))?;
    if let Some(fields) = value.as_object_mut() {
        fields.retain(|_, v| !(v.is_null() || v.as_array().is_some_and(|a| a.is_empty())));
    }
    Ok(value.to_string())
}

fn write_line(out: &mut Vec<u8>, line: &Line) -> Result<(), PluginError> {
    match line {
        Line::Put { meta, stamp } => {
            let stamp = serde_json::to_string(stamp).map_err(|e| PluginError::internal(e.to_string()))?;
            out.extend_from_slice(format!("{{\"put\":{{\"meta\":{},\"stamp\":{stamp}}}}}", compact(meta)?).as_bytes());
            Ok(())
        }
        Line::Del { .. } => serde_json::to_writer(out, line).map_err(|e| PluginError::internal(e.to_string())),
    }
}

fn append(base: &Path, line: &Line) -> Result<(), PluginError> {
    let mut bytes = vec![b'\n'];
    write_line(&mut bytes, line)?;
    bytes.push(b'\n');
    let path = base.join(JOURNAL);
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| fsutil::io_error("open the conversation index", &path, e))?;
    // One `write` on an O_APPEND file: lines of concurrent writers never interleave.
    let written = file.write(&bytes).map_err(|e| fsutil::io_error("append to the conversation index", &path, e))?;
    if written != bytes.len() {
        // A short write (disk full): the line is torn; the next reader repairs from the files.
        return Err(PluginError::internal("cannot append to the conversation index: short write"));
    }
    Ok(())
}

/// The indexes of the base directories this process has searched.
#[derive(Default)]
pub(crate) struct Indexes {
    bases: Mutex<HashMap<PathBuf, Arc<Mutex<BaseIndex>>>>,
}

impl Indexes {
    /// Conversations `offset..offset + limit`, newest first, and the total. Blocking.
    pub(crate) fn page(
        &self,
        base: &Path,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<ConversationMetadata>, usize), PluginError> {
        let index = {
            let mut bases = self.bases.lock().unwrap_or_else(|e| e.into_inner());
            bases.entry(base.to_path_buf()).or_default().clone()
        };
        let mut index = index.lock().unwrap_or_else(|e| e.into_inner());
        index.refresh(base)?;
        if !index.checked {
            index.repair(base)?;
        }
        if index.lines > 2 * index.entries.len() as u64 + SLACK_LINES {
            with_lock(base, Mode::Exclusive, || {
                index.refresh(base)?;
                index.rewrite(base)
            })?;
        }
        let page = index
            .order
            .iter()
            .rev()
            .skip(offset)
            .take(limit)
            .filter_map(|(_, id)| index.entries.get(id))
            .map(|e| serde_json::from_str(&e.json).map_err(|e| PluginError::internal(format!("index entry: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((page, index.entries.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str, created_at: &str) -> ConversationMetadata {
        ConversationMetadata { conversation_id: id.into(), created_at: created_at.into(), ..Default::default() }
    }

    fn write(base: &Path, m: &ConversationMetadata, journal: bool) {
        let path = base.join(&m.conversation_id).join("metadata.json");
        fsutil::write_atomic(&path, &serde_json::to_vec(m).unwrap(), 0o600).unwrap();
        if journal {
            record_put(base, m, Stamp::of(&path).unwrap().unwrap()).unwrap();
        }
    }

    fn ids(page: &[ConversationMetadata]) -> Vec<&str> {
        page.iter().map(|m| m.conversation_id.as_str()).collect()
    }

    #[test]
    fn pages_newest_first_and_follows_another_writer() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        let reader = Indexes::default();
        for (id, at) in [("a", "2025-01-01"), ("b", "2025-01-03"), ("c", "2025-01-02")] {
            write(base, &meta(id, at), true);
        }
        let (page, total) = reader.page(base, 0, 2).unwrap();
        assert_eq!((ids(&page), total), (vec!["b", "c"], 3));
        assert_eq!(ids(&reader.page(base, 2, 2).unwrap().0), ["a"]);
        // Another process appends: a title change and a delete, seen on the next page.
        let mut renamed = meta("c", "2025-01-02");
        renamed.title = Some("renamed".into());
        write(base, &renamed, true);
        fs::remove_dir_all(base.join("b")).unwrap();
        record_del(base, "b").unwrap();
        let (page, total) = reader.page(base, 0, 10).unwrap();
        assert_eq!((ids(&page), total), (vec!["c", "a"], 2));
        assert_eq!(page[0].title.as_deref(), Some("renamed"));
    }

    #[test]
    fn a_journal_behind_the_files_is_repaired_and_a_torn_line_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        write(base, &meta("a", "2025-01-01"), true);
        // A crash after the file and before its line; then garbage from a power loss.
        write(base, &meta("b", "2025-01-02"), false);
        fs::OpenOptions::new().append(true).open(base.join(JOURNAL)).unwrap().write_all(b"{\"put\":{\"me").unwrap();
        write(base, &meta("c", "2025-01-03"), true);
        let (page, total) = Indexes::default().page(base, 0, 10).unwrap();
        assert_eq!((ids(&page), total), (vec!["c", "b", "a"], 3));
        // The journal was rewritten: a new reader needs no repair to agree.
        let mut fresh = BaseIndex::default();
        fresh.refresh(base).unwrap();
        assert!(fresh.matches_files(base).unwrap());
    }

    #[test]
    fn compaction_keeps_the_last_version_of_each() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        let reader = Indexes::default();
        for round in 0..(SLACK_LINES + 10) {
            let mut m = meta("a", "2025-01-01");
            m.title = Some(format!("title {round}"));
            write(base, &m, true);
        }
        write(base, &meta("b", "2025-01-02"), true);
        let (page, _) = reader.page(base, 0, 10).unwrap();
        assert_eq!(page[1].title.as_deref(), Some(&*format!("title {}", SLACK_LINES + 9)));
        let lines = fs::read(base.join(JOURNAL)).unwrap().split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
        assert_eq!(lines, 2);
        assert_eq!(ids(&reader.page(base, 0, 10).unwrap().0), ["b", "a"]);
    }
}
