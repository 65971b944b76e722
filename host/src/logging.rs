//! Where the log's lines go: stderr, written by the thread that logs until the server
//! serves, then by a thread of their own.
//!
//! A write to stderr blocks while nobody reads it (a terminal paused with Ctrl-S, a log
//! shipper that stalls): written from the runtime's workers, one such write would stop every
//! request and every agent. While the server serves, a line is queued instead (bounded), and
//! a line that finds the queue full is dropped and counted; the count is written before the
//! next line that gets through. Before serving, lines are written at once, in order with the
//! messages the commands print themselves.
//!
//! One event is one line: a line break inside one (an error that quotes a workspace's file
//! name, a plugin's message, a remote server's answer) is written as `\n`, so that nothing a
//! user or a workspace controls can forge a line of its own in the operators' log.
//!
//! `LOG_JSON` (as OpenHands reads it) makes each line a JSON object, for log shippers:
//! [`Json`].

use std::{
    borrow::Cow,
    io::{self, Write as _},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, OnceLock,
    },
    time::{Duration, Instant},
};
use tracing::{
    field::{Field, Visit},
    Event, Subscriber,
};
use tracing_subscriber::{
    fmt::{
        format::Writer,
        time::{FormatTime as _, SystemTime},
        FmtContext, FormatEvent, FormatFields, FormattedFields,
    },
    registry::LookupSpan,
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
        let line = one_line(buf);
        if QUEUED.load(Ordering::Acquire) {
            let queue = QUEUE.get_or_init(start_writer);
            PENDING.fetch_add(1, Ordering::AcqRel);
            match queue.try_send(line.into_owned()) {
                Ok(()) => {}
                Err(mpsc::TrySendError::Full(_)) => {
                    PENDING.fetch_sub(1, Ordering::AcqRel);
                    DROPPED.fetch_add(1, Ordering::Relaxed);
                }
                // No writer thread (it could not start; it never ends): written here.
                Err(mpsc::TrySendError::Disconnected(line)) => {
                    PENDING.fetch_sub(1, Ordering::AcqRel);
                    io::stderr().write_all(&line)?;
                }
            }
        } else {
            io::stderr().write_all(&line)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `event` with every line break but its last written as `\n` (and `\r`): one line.
fn one_line(event: &[u8]) -> Cow<'_, [u8]> {
    let body = event.strip_suffix(b"\n").unwrap_or(event);
    if !body.iter().any(|&b| b == b'\n' || b == b'\r') {
        return Cow::Borrowed(event);
    }
    let mut line = Vec::with_capacity(event.len() + 16);
    for &b in body {
        match b {
            b'\n' => line.extend_from_slice(b"\\n"),
            b'\r' => line.extend_from_slice(b"\\r"),
            _ => line.push(b),
        }
    }
    if body.len() < event.len() {
        line.push(b'\n');
    }
    Cow::Owned(line)
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

/// Each event as one JSON object, with the keys OpenHands' JSON logs have (`message`,
/// `levelname`, `name`: the target, `asctime`), the event's fields beside them and the spans
/// it is in (`request{id=… method=GET path=/…}`) as `span`.
pub struct Json;

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let mut fields = JsonFields::default();
        event.record(&mut fields);
        let mut object = fields.0;
        let meta = event.metadata();
        let mut asctime = String::new();
        SystemTime.format_time(&mut Writer::new(&mut asctime))?;
        object.insert("levelname".into(), meta.level().as_str().into());
        object.insert("name".into(), meta.target().into());
        object.insert("asctime".into(), asctime.into());
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<String> = scope
                .from_root()
                .map(|span| {
                    let extensions = span.extensions();
                    match extensions.get::<FormattedFields<N>>().filter(|f| !f.is_empty()) {
                        Some(fields) => format!("{}{{{fields}}}", span.name()),
                        None => span.name().to_owned(),
                    }
                })
                .collect();
            object.insert("span".into(), spans.join(":").into());
        }
        writeln!(writer, "{}", serde_json::Value::Object(object))
    }
}

/// An event's fields as JSON values (`message` included).
#[derive(Default)]
struct JsonFields(serde_json::Map<String, serde_json::Value>);

impl Visit for JsonFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_line_whatever_its_fields_hold() {
        let forged =
            b"WARN agent turn failed error=no such file: a\n2026-12-07T00:00:00Z  INFO oh_host: admin signed in\r\n";
        assert_eq!(
            &*one_line(forged),
            &b"WARN agent turn failed error=no such file: a\\n2026-12-07T00:00:00Z  INFO oh_host: admin signed in\\r\n"
                [..]
        );
        assert_eq!(one_line(forged).iter().filter(|&&b| b == b'\n').count(), 1);
        // An ordinary line is written as it is, without a copy.
        assert!(matches!(one_line(b"INFO listening\n"), Cow::Borrowed(b"INFO listening\n")));
        // Without its final line break (a writer given part of a line), none is added.
        assert_eq!(&*one_line(b"a\nb"), &b"a\\nb"[..]);
    }
}
