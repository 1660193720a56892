//! The access log: one JSON line per request, buffered like nginx's
//! `access_log ... buffer=64k flush=1s`. A request serializes its line into
//! a shared in-memory buffer (no channel message, no wake-up); a full buffer
//! is handed to a writer thread of its own, which also takes whatever is
//! buffered every [`FLUSH`], so that a slow disk or a blocked stdout never
//! stalls a worker and a quiet proxy's lines still appear within a second.
//! Lines are dropped (and counted in `aegis_access_log_dropped_total`) when
//! the writer falls behind by more than [`QUEUE`] full buffers.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;

/// Bytes buffered before the buffer goes to the writer (nginx `buffer=`).
pub const BUFFER: usize = 64 * 1024;

/// Longest time a line waits in the buffer (nginx `flush=`).
pub const FLUSH: Duration = Duration::from_secs(1);

/// Full buffers queued for the writer before new ones are dropped.
pub const QUEUE: usize = 64;

/// One request, as logged. It borrows from the request's context: the line
/// is serialized into the buffer at once, so nothing is copied for it.
#[derive(Debug, Clone, Serialize)]
pub struct AccessRecord<'a> {
    /// RFC 3339 UTC with milliseconds.
    pub time: &'a str,
    pub client: std::net::IpAddr,
    pub method: &'a str,
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: f64,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    pub config_version: &'a str,
    pub score: Option<f64>,
    /// Set when the response body did not complete (client or upstream gone).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub aborted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error("cannot open access log {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start the access log writer: {0}")]
    Spawn(std::io::Error),
}

/// Where access log lines go; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct AccessLog {
    shared: Option<Arc<Shared>>,
}

/// The buffer the requests write into and the queue to the writer.
#[derive(Debug)]
struct Shared {
    buf: Mutex<Batch>,
    tx: SyncSender<Batch>,
}

/// Serialized lines and how many there are (for the dropped count).
#[derive(Debug, Default)]
struct Batch {
    bytes: Vec<u8>,
    lines: u64,
}

impl Shared {
    /// Takes what is buffered, leaving an empty buffer of the same capacity.
    fn take(&self) -> Batch {
        let mut buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(
            &mut *buf,
            Batch {
                bytes: Vec::with_capacity(BUFFER),
                lines: 0,
            },
        )
    }
}

impl Drop for Shared {
    /// The last handle gone: what is still buffered goes to the writer, and
    /// dropping `tx` then ends it.
    fn drop(&mut self) {
        let batch = std::mem::take(&mut *self.buf.lock().unwrap_or_else(|p| p.into_inner()));
        if !batch.bytes.is_empty() {
            let _ = self.tx.send(batch);
        }
    }
}

impl AccessLog {
    /// No access log.
    pub fn off() -> Self {
        Self { shared: None }
    }

    /// From the `access_log` setting: `stdout`, `off`, or a file path
    /// (appended to).
    pub fn from_setting(setting: &str) -> Result<Self, AccessLogError> {
        match setting {
            "off" | "" => Ok(Self::off()),
            "stdout" => Self::spawn(Box::new(std::io::stdout())),
            path => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(Path::new(path))
                    .map_err(|source| AccessLogError::Open {
                        path: path.to_string(),
                        source,
                    })?;
                Self::spawn(Box::new(file))
            }
        }
    }

    fn spawn(out: Box<dyn Write + Send>) -> Result<Self, AccessLogError> {
        let (tx, rx) = sync_channel::<Batch>(QUEUE);
        let shared = Arc::new(Shared {
            buf: Mutex::new(Batch {
                bytes: Vec::with_capacity(BUFFER),
                lines: 0,
            }),
            tx,
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("aegis-access-log".into())
            .spawn(move || write_loop(out, &rx, &weak))
            .map_err(AccessLogError::Spawn)?;
        Ok(Self {
            shared: Some(shared),
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.shared.is_some()
    }

    pub fn log(&self, rec: &AccessRecord<'_>) {
        let Some(shared) = &self.shared else {
            return;
        };
        let full = {
            let mut buf = shared.buf.lock().unwrap_or_else(|p| p.into_inner());
            if serde_json::to_writer(&mut buf.bytes, rec).is_err() {
                return;
            }
            buf.bytes.push(b'\n');
            buf.lines = buf.lines.saturating_add(1);
            (buf.bytes.len() >= BUFFER).then(|| {
                std::mem::replace(
                    &mut *buf,
                    Batch {
                        bytes: Vec::with_capacity(BUFFER),
                        lines: 0,
                    },
                )
            })
        };
        if let Some(batch) = full
            && let Err(TrySendError::Full(batch)) = shared.tx.try_send(batch)
        {
            metrics::counter!("aegis_access_log_dropped_total").increment(batch.lines);
        }
    }
}

/// The writer thread: full buffers as they come, the partial one every
/// [`FLUSH`]; ends when every [`AccessLog`] handle is gone.
fn write_loop(mut out: Box<dyn Write + Send>, rx: &Receiver<Batch>, shared: &Weak<Shared>) {
    loop {
        match rx.recv_timeout(FLUSH) {
            Ok(batch) => {
                let _ = out.write_all(&batch.bytes);
                // More full buffers waiting are written before the flush.
                while let Ok(batch) = rx.try_recv() {
                    let _ = out.write_all(&batch.bytes);
                }
            }
            Err(RecvTimeoutError::Timeout) => match shared.upgrade() {
                Some(s) => {
                    let batch = s.take();
                    drop(s);
                    let _ = out.write_all(&batch.bytes);
                }
                // The last handle is being dropped: its batch is on the way.
                None => continue,
            },
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

/// Formats a `SystemTime` as RFC 3339 UTC with milliseconds, without a date
/// library (`aegis_engine::civil`).
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let (year, month, day) = aegis_engine::civil::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn record(path: &str) -> AccessRecord<'_> {
        AccessRecord {
            time: "t",
            client: std::net::Ipv4Addr::LOCALHOST.into(),
            method: "GET",
            host: None,
            path,
            status: 200,
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: 0.0,
            route: None,
            upstream: None,
            endpoint: None,
            config_version: "v",
            score: None,
            aborted: false,
        }
    }

    fn lines(sink: &Sink) -> usize {
        sink.0
            .lock()
            .unwrap()
            .iter()
            .filter(|b| **b == b'\n')
            .count()
    }

    #[test]
    fn lines_wait_for_the_flush_interval_or_a_full_buffer() {
        let sink = Sink::default();
        let log = AccessLog::spawn(Box::new(sink.clone())).unwrap();
        log.log(&record("/1"));
        // Buffered, not written per record.
        assert_eq!(lines(&sink), 0);
        let mut waited = Duration::ZERO;
        while lines(&sink) < 1 && waited < FLUSH * 5 {
            std::thread::sleep(Duration::from_millis(20));
            waited += Duration::from_millis(20);
        }
        assert_eq!(lines(&sink), 1);
        // A full buffer goes out at once, whole lines only.
        let n = BUFFER / 100;
        for i in 0..n {
            log.log(&record(&format!("/{i}")));
        }
        let mut waited = Duration::ZERO;
        while lines(&sink) < 2 && waited < FLUSH / 2 {
            std::thread::sleep(Duration::from_millis(5));
            waited += Duration::from_millis(5);
        }
        assert!(lines(&sink) > 1);
        // Dropping the last handle writes the rest.
        drop(log);
        let mut waited = Duration::ZERO;
        while lines(&sink) < n + 1 && waited < FLUSH * 5 {
            std::thread::sleep(Duration::from_millis(20));
            waited += Duration::from_millis(20);
        }
        assert_eq!(lines(&sink), n + 1);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        for line in text.lines() {
            let _: serde_json::Value = serde_json::from_str(line).unwrap();
        }
    }

    #[test]
    fn formats_time() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
    }
}
