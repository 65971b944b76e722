//! `FileConversationStore`: `metadata.json` and an append-only `events/<id>.json` log per
//! conversation, under `sessions/` (single user) or `users/<id>/conversations/`; `search`
//! pages through the index of `index.rs`.

use crate::{
    fsutil::{self, Stamp},
    index::{self, Indexes, Mode},
};
use plugin_sdk::{
    models::{paging, ConversationMetadata, ConversationMetadataResultSet, EventPage},
    CallContext, ErrorCode, EventQuery, PluginError,
};
use serde_json::Value;
use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

pub struct FileConversationStore {
    root: PathBuf,
    /// Next event id per conversation directory, guarded so appends are serialised.
    logs: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<Option<u64>>>>>,
    indexes: Arc<Indexes>,
}

impl FileConversationStore {
    /// Appends under the conversation's OS lock; with a fence, first checks it against the
    /// highest one seen (the `fence` file) and records it, in the same critical section.
    async fn append(
        &self,
        ctx: CallContext,
        id: String,
        events: Vec<Value>,
        fence: Option<u64>,
    ) -> Result<u64, PluginError> {
        let dir = self.dir(&ctx, &id)?;
        let lock = self.log_lock(&dir);
        let mut next = lock.lock().await;
        let known = *next;
        let (first, new_next) = fsutil::blocking(move || {
            if !dir.join("metadata.json").exists() {
                return Err(PluginError::not_found("conversation not found"));
            }
            // Other processes sharing the state directory append too: under the OS lock, the
            // next id this process remembers is checked against the files before it is used.
            fsutil::with_dir_lock(&dir, || {
                if let Some(fence) = fence {
                    check_fence(&dir, fence)?;
                }
                let events_dir = dir.join("events");
                let first = match known {
                    Some(n) if next_id_still_valid(&events_dir, n) => n,
                    _ => count_events(&events_dir)?,
                };
                let mut id = first;
                for mut event in events {
                    let obj = event
                        .as_object_mut()
                        .ok_or_else(|| PluginError::invalid_argument("an event must be a JSON object"))?;
                    obj.insert("id".to_owned(), Value::from(id));
                    let path = events_dir.join(format!("{id}.json"));
                    let bytes = serde_json::to_vec(&event).map_err(|e| PluginError::internal(e.to_string()))?;
                    fsutil::write_atomic(&path, &bytes, 0o600)
                        .map_err(|e| fsutil::io_error("write an event", &path, e))?;
                    id += 1;
                }
                Ok((first, id))
            })
        })
        .await?;
        *next = Some(new_next);
        Ok(first)
    }

    pub(crate) fn new(root: PathBuf) -> Self {
        Self { root, logs: Mutex::new(HashMap::new()), indexes: Arc::default() }
    }

    fn base(&self, ctx: &CallContext) -> Result<PathBuf, PluginError> {
        Ok(match ctx.user_id() {
            None => self.root.join("sessions"),
            Some(_) => fsutil::user_dir(&self.root, ctx.user_id())?.join("conversations"),
        })
    }

    fn dir(&self, ctx: &CallContext, id: &str) -> Result<PathBuf, PluginError> {
        Ok(self.base(ctx)?.join(fsutil::safe_component("conversation", id)?))
    }

    fn log_lock(&self, dir: &Path) -> Arc<tokio::sync::Mutex<Option<u64>>> {
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        logs.entry(dir.to_path_buf()).or_default().clone()
    }
}

fn read_metadata(path: &Path) -> Result<Option<ConversationMetadata>, PluginError> {
    let Some(bytes) = fsutil::read_optional(path).map_err(|e| fsutil::io_error("read metadata", path, e))? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| fsutil::corrupt(path, e))
}

/// Number of events in a log: ids are dense from 0, so it is the first missing id.
/// Refuses a fencing token lower than the highest seen for the conversation (its `fence`
/// file); records a higher one. Runs under the conversation's OS lock.
fn check_fence(dir: &std::path::Path, fence: u64) -> Result<(), PluginError> {
    let path = dir.join("fence");
    let seen = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|_| {
            PluginError::internal(format!("{} is not a fencing token; remove it to reset", path.display()))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(fsutil::io_error("read the fencing token", &path, e)),
    };
    if fence < seen {
        return Err(PluginError::new(
            ErrorCode::CONFLICT,
            format!("fenced: the conversation's owner now holds token {seen}, this append has {fence}"),
        ));
    }
    if fence > seen {
        fsutil::write_atomic(&path, fence.to_string().as_bytes(), 0o600)
            .map_err(|e| fsutil::io_error("record the fencing token", &path, e))?;
    }
    Ok(())
}

fn count_events(events: &Path) -> Result<u64, PluginError> {
    let entries = match fs::read_dir(events) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(fsutil::io_error("list events", events, e)),
    };
    let mut max: Option<u64> = None;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")).and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        max = Some(max.map_or(id, |m| m.max(id)));
    }
    Ok(max.map_or(0, |m| m + 1))
}

/// Whether `n` is still the next id: no event `n` yet, and event `n - 1` there.
fn next_id_still_valid(events: &Path, n: u64) -> bool {
    !events.join(format!("{n}.json")).exists() && (n == 0 || events.join(format!("{}.json", n - 1)).exists())
}

fn read_event(events: &Path, id: u64) -> Result<Value, PluginError> {
    let path = events.join(format!("{id}.json"));
    let bytes = fs::read(&path).map_err(|e| fsutil::io_error("read an event", &path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| fsutil::corrupt(&path, e))
}

impl plugin_sdk::ConversationStore for FileConversationStore {
    async fn save_metadata(&self, ctx: CallContext, mut metadata: ConversationMetadata) -> Result<(), PluginError> {
        let dir = self.dir(&ctx, &metadata.conversation_id)?;
        if let Some(user) = ctx.user_id() {
            match metadata.user_id.as_deref() {
                None => metadata.user_id = Some(user.to_owned()),
                Some(owner) if owner != user => {
                    return Err(PluginError::new(ErrorCode::PERMISSION_DENIED, "metadata names another user"));
                }
                Some(_) => {}
            }
        }
        let base = self.base(&ctx)?;
        fsutil::blocking(move || {
            let path = dir.join("metadata.json");
            let bytes = serde_json::to_vec_pretty(&metadata).map_err(|e| PluginError::internal(e.to_string()))?;
            // The file, then its line in the index, in one critical section per conversation.
            index::with_lock(&base, Mode::Shared, || {
                fsutil::with_dir_lock(&dir, || {
                    fsutil::write_atomic(&path, &bytes, 0o600)
                        .map_err(|e| fsutil::io_error("write metadata", &path, e))?;
                    let stamp = Stamp::of(&path)
                        .map_err(|e| fsutil::io_error("stat metadata", &path, e))?
                        .ok_or_else(|| PluginError::internal("metadata vanished as it was written"))?;
                    index::record_put(&base, &metadata, stamp)
                })
            })
        })
        .await
    }

    async fn get_metadata(&self, ctx: CallContext, id: String) -> Result<Option<ConversationMetadata>, PluginError> {
        let path = self.dir(&ctx, &id)?.join("metadata.json");
        fsutil::blocking(move || read_metadata(&path)).await
    }

    async fn delete_metadata(&self, ctx: CallContext, id: String) -> Result<bool, PluginError> {
        let base = self.base(&ctx)?;
        let dir = self.dir(&ctx, &id)?;
        let lock = self.log_lock(&dir);
        let mut next = lock.lock().await;
        let deleted = fsutil::blocking(move || {
            index::with_lock(&base, Mode::Shared, || {
                if !dir.exists() {
                    return Ok(false);
                }
                fsutil::with_dir_lock(&dir, || match fs::remove_dir_all(&dir) {
                    Ok(()) => index::record_del(&base, &id).map(|()| true),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                    Err(e) => Err(fsutil::io_error("delete a conversation", &dir, e)),
                })
            })
        })
        .await?;
        *next = None;
        Ok(deleted)
    }

    async fn search(
        &self,
        ctx: CallContext,
        page_id: Option<String>,
        limit: u32,
    ) -> Result<ConversationMetadataResultSet, PluginError> {
        let base = self.base(&ctx)?;
        let offset = paging::page_id_to_offset(page_id.as_deref())
            .ok_or_else(|| PluginError::invalid_argument("invalid page_id"))?;
        let indexes = self.indexes.clone();
        fsutil::blocking(move || {
            let (results, total) = indexes.page(&base, offset, limit as usize)?;
            let end = offset.saturating_add(results.len()).min(total);
            Ok(ConversationMetadataResultSet { results, next_page_id: paging::offset_to_page_id(end, end < total) })
        })
        .await
    }

    async fn append_events(&self, ctx: CallContext, id: String, events: Vec<Value>) -> Result<u64, PluginError> {
        self.append(ctx, id, events, None).await
    }

    async fn append_events_fenced(
        &self,
        ctx: CallContext,
        id: String,
        events: Vec<Value>,
        fence: u64,
    ) -> Result<u64, PluginError> {
        self.append(ctx, id, events, Some(fence)).await
    }

    async fn get_events(&self, ctx: CallContext, id: String, query: EventQuery) -> Result<EventPage, PluginError> {
        let dir = self.dir(&ctx, &id)?;
        fsutil::blocking(move || {
            if !dir.join("metadata.json").exists() {
                return Err(PluginError::not_found("conversation not found"));
            }
            let events_dir = dir.join("events");
            let count = count_events(&events_dir)?;
            if count == 0 || query.start_id >= count {
                return Ok(EventPage::default());
            }
            let last = query.end_id.into_option().map_or(count - 1, |e| e.min(count - 1));
            if last < query.start_id {
                return Ok(EventPage::default());
            }
            let ids: Box<dyn Iterator<Item = u64>> =
                if query.reverse { Box::new((query.start_id..=last).rev()) } else { Box::new(query.start_id..=last) };
            let mut events = Vec::new();
            let mut has_more = false;
            for id in ids {
                if events.len() == query.limit as usize {
                    has_more = true;
                    break;
                }
                events.push(read_event(&events_dir, id)?);
            }
            Ok(EventPage { events, has_more })
        })
        .await
    }
}
