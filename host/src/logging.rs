//! Where the log's lines go: stderr, written by the thread that logs until the server
//! serves, then by a thread of their own.
//!
//! A write to stderr blocks while nobody reads it (a terminal paused with Ctrl-S, a log
//! shipper that stalls): written from the runtime's workers, one such write would stop every
//! request and every agent. While the server serves, a line is queued instead (bounded), and
//! a line that finds the queue full is dropped and counted; the count is written before the
//! next line that gets through. Before serving, lines are written at once, in order with the
//! messages the commands print themselves.

use std::{
    io::{self, Write as _},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, OnceLock,
    },
    time::{Duration, Instant},
};

/// Lines waiting for the writer thread (a few hundred KiB): a burst's worth; a log that
/// stays behind longer than that loses lines rather than stopping the server.
const QUEUE_LINES: usize = 1024;

/// Whether lines go through the queue (set while the server serves).
static QUEUED: AtomicBool = AtomicBool::new(false);
static QUEUE: OnceLock<mpsc::SyncSender<Vec<u8>>> = OnceLock::new();
/// Lines queued and not yet written.
static PENDING: AtomicU64 = AtomicU64::new(0);
/// Lines dropped since the last count was written.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The writer each log line is written with (`tracing_subscriber::fmt().with_writer(line)`).
pub fn line() -> Line {
    Line
}

/// One log line (the subscriber formats a whole line, then writes it with one `write_all`).
pub struct Line;

impl io::Write for Line {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if QUEUED.load(Ordering::Acquire) {
            let queue = QUEUE.get_or_init(start_writer);
            PENDING.fetch_add(1, Ordering::AcqRel);
            match queue.try_send(buf.to_vec()) {
                Ok(()) => return Ok(buf.len()),
                Err(mpsc::TrySendError::Full(_)) => {
                    PENDING.fetch_sub(1, Ordering::AcqRel);
                    DROPPED.fetch_add(1, Ordering::Relaxed);
                    return Ok(buf.len());
                }
                // No writer thread (it could not start; it never ends): written here.
                Err(mpsc::TrySendError::Disconnected(_)) => {
                    PENDING.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
        io::stderr().write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// From now on, lines are queued and written by their own thread.
pub fn serving() {
    QUEUED.store(true, Ordering::Release);
}

/// The queue and its thread, started by the first line logged while serving (a server that
/// logs nothing has no such thread). A thread that cannot start leaves the queue
/// disconnected: lines are then written at once, as before serving.
fn start_writer() -> mpsc::SyncSender<Vec<u8>> {
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE_LINES);
    if let Err(e) = std::thread::Builder::new().name("oh-host-log".into()).spawn(move || write_lines(rx)) {
        // Not through `tracing`: this runs inside a log call.
        let _ = writeln!(
            io::stderr(),
            "oh-host: no thread for the log ({e}): lines are written by the threads that log them"
        );
    }
    tx
}

/// Waits until what is queued is written, at most `within` (stderr may not be read at all):
/// at the end of serving, before the command's last message. Lines stay queued from then on,
/// so that a stderr nobody reads cannot hold the process at its exit either.
pub fn flush(within: Duration) {
    let deadline = Instant::now() + within;
    while PENDING.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn write_lines(rx: mpsc::Receiver<Vec<u8>>) {
    for line in rx {
        let mut stderr = io::stderr().lock();
        let dropped = DROPPED.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let _ = writeln!(stderr, "oh-host: {dropped} log line(s) dropped: stderr was not read fast enough");
        }
        // A write that fails (stderr closed) loses the line, never the server.
        let _ = stderr.write_all(&line);
        PENDING.fetch_sub(1, Ordering::AcqRel);
    }
}
