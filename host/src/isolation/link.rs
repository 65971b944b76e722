//! One side's end of a runner connection: a writer task, the requests in flight and their
//! answers. The host and the runner both use it; what each does with the messages it reads
//! is theirs.

use super::wire::{self, Message};
use plugin_api::PluginError;
use serde_json::Value;
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};
use tokio::{
    io::AsyncWriteExt as _,
    net::unix::OwnedWriteHalf,
    sync::{mpsc, oneshot},
};

type Answer = Result<Value, PluginError>;

/// Frames waiting for the writer; bounded: a peer that stops reading stalls requests (which
/// time out) instead of growing the queue.
const QUEUE: usize = 1024;

/// At most this many bytes go out in one write (frames are never split between writes' turns).
const BATCH: usize = 256 << 10;

pub(super) struct Link {
    /// Who is at the other end, for errors (`extensions.settings_store (lib::Impl)'s runner`).
    peer: String,
    tx: mpsc::Sender<Vec<u8>>,
    pending: Mutex<Pending>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Answer>>,
    /// Set when the connection is gone: why, for every later request.
    closed: Option<String>,
}

/// Removes a request from the pending map when its caller stops waiting (a deadline).
struct Forget<'a>(&'a Link, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.lock().waiting.remove(&self.1);
    }
}

impl Link {
    /// Starts the writer task on the current runtime.
    pub(super) fn new(mut write: OwnedWriteHalf, peer: String) -> Arc<Link> {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        tokio::spawn(async move {
            // What queued while the last write ran goes out in one write.
            let mut batch = Vec::new();
            while let Some(frame) = rx.recv().await {
                batch.clear();
                batch.extend_from_slice(&frame);
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(frame) => batch.extend_from_slice(&frame),
                        Err(_) => break,
                    }
                }
                if write.write_all(&batch).await.is_err() {
                    break;
                }
            }
        });
        Arc::new(Link { peer, tx, pending: Mutex::new(Pending::default()), next_id: AtomicU64::new(1) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends the request `make(id)` builds and waits for its answer.
    pub(super) async fn request(&self, make: impl FnOnce(u64) -> Message) -> Answer {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.lock();
            if let Some(why) = &pending.closed {
                return Err(PluginError::unavailable(why.clone()));
            }
            pending.waiting.insert(id, tx);
        }
        let _forget = Forget(self, id);
        let Some(frame) = wire::encode(&make(id)) else {
            let why = format!("the call's arguments are more than the plugin protocol's {} bytes", wire::MAX_FRAME);
            return Err(PluginError::new(plugin_api::ErrorCode::TOO_LARGE, why));
        };
        if self.tx.send(frame).await.is_err() {
            return Err(PluginError::unavailable(self.why()));
        }
        match rx.await {
            Ok(answer) => answer,
            Err(_) => Err(PluginError::unavailable(self.why())),
        }
    }

    /// Delivers an answer the peer sent (one nobody waits for any more is dropped).
    pub(super) fn answer(&self, id: u64, answer: Answer) {
        if let Some(tx) = self.lock().waiting.remove(&id) {
            let _ = tx.send(answer);
        }
    }

    /// Queues a message; `false` once the connection is gone, or when it is too large to send
    /// (a `result` never is: it becomes a `TOO_LARGE` error).
    pub(super) async fn send(&self, message: &Message) -> bool {
        match wire::encode(message) {
            Some(frame) => self.tx.send(frame).await.is_ok(),
            None => false,
        }
    }

    /// Queues a message without waiting (logs, metrics: dropped when the queue is full).
    pub(super) fn try_send(&self, message: &Message) -> bool {
        wire::encode(message).is_some_and(|frame| self.tx.try_send(frame).is_ok())
    }

    /// The connection is gone: every request in flight, and every later one, fails with `why`.
    pub(super) fn close(&self, why: String) {
        let waiting = {
            let mut pending = self.lock();
            pending.closed.get_or_insert(why.clone());
            std::mem::take(&mut pending.waiting)
        };
        for (_, tx) in waiting {
            let _ = tx.send(Err(PluginError::unavailable(why.clone())));
        }
    }

    fn why(&self) -> String {
        self.lock().closed.clone().unwrap_or_else(|| format!("the connection to {} closed", self.peer))
    }
}
