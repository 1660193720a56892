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
/// is written into the buffer at once, so nothing is copied for it.
///
/// The line is JSON written by hand ([`AccessRecord::write_json`]), the
/// same object `serde_json` makes of it (a test holds the two equal) at
/// about a third of the instructions: the log must cost no more of a
/// request than nginx's does (docs/BENCHMARKS.md).
#[derive(Debug, Clone, Serialize)]
pub struct AccessRecord<'a> {
    /// When the request started; logged as RFC 3339 UTC with milliseconds.
    #[serde(serialize_with = "serialize_time")]
    pub time: std::time::SystemTime,
    pub client: std::net::IpAddr,
    pub method: &'a str,
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Logged to the microsecond.
    #[serde(rename = "duration_ms", serialize_with = "serialize_duration_ms")]
    pub duration: std::time::Duration,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    pub config_version: &'a str,
    pub score: Option<f64>,
    /// Set when the response body did not complete (client or upstream gone).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub aborted: bool,
}

fn serialize_time<S: serde::Serializer>(
    t: &std::time::SystemTime,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

fn serialize_duration_ms<S: serde::Serializer>(
    d: &std::time::Duration,
    s: S,
) -> Result<S::Ok, S::Error> {
    // Whole microseconds, as the hand-written line has them (a u128 of
    // microseconds is exact in an f64 for 285 years).
    s.serialize_f64(d.as_micros() as f64 / 1000.0)
}

/// The second a line's time was last formatted in, and its text up to the
/// seconds (`2026-12-06T01:02:03`): a busy log formats the date once a
/// second, not once a line.
#[derive(Debug, Default)]
struct TimeCache {
    secs: Option<u64>,
    prefix: [u8; 19],
}

impl TimeCache {
    /// Appends `t` as RFC 3339 UTC with milliseconds.
    fn write(&mut self, out: &mut Vec<u8>, t: std::time::SystemTime) {
        let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        if self.secs != Some(secs) {
            let days = i64::try_from(secs / 86_400).unwrap_or(0);
            let rem = secs % 86_400;
            let (year, month, day) = aegis_engine::civil::civil_from_days(days);
            let mut p = Vec::with_capacity(19);
            for (n, width, sep) in [
                (u64::try_from(year).unwrap_or(0), 4, b'-'),
                (u64::try_from(month).unwrap_or(0), 2, b'-'),
                (u64::try_from(day).unwrap_or(0), 2, b'T'),
                (rem / 3600, 2, b':'),
                ((rem % 3600) / 60, 2, b':'),
                (rem % 60, 2, 0),
            ] {
                push_padded(&mut p, n, width);
                if sep != 0 {
                    p.push(sep);
                }
            }
            if let Ok(prefix) = <[u8; 19]>::try_from(p.as_slice()) {
                self.prefix = prefix;
                self.secs = Some(secs);
            }
        }
        out.extend_from_slice(&self.prefix);
        out.push(b'.');
        push_padded(out, u64::from(d.subsec_millis()), 3);
        out.push(b'Z');
    }
}

/// `n` in decimal, zero-padded to `width` digits (wider numbers in full).
fn push_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    while let Some(j) = i.checked_sub(1)
        && let Some(slot) = digits.get_mut(j)
    {
        *slot = b'0' + (n % 10) as u8;
        i = j;
        n /= 10;
        if n == 0 && digits.len() - i >= width {
            break;
        }
    }
    out.extend_from_slice(digits.get(i..).unwrap_or_default());
}

/// `s` as a JSON string, quotes included. Printable ASCII other than `"`
/// and `\` is copied as it is (the whole line at once when nothing needs
/// escaping); UTF-8 passes through, control characters are `\u00XX`.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(bytes.get(from..i).unwrap_or_default());
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            for nibble in [b >> 4, b & 0xf] {
                out.push(HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'));
            }
        } else {
            out.extend_from_slice(escape);
        }
        from = i + 1;
    }
    out.extend_from_slice(bytes.get(from..).unwrap_or_default());
    out.push(b'"');
}

fn push_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => push_json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

impl AccessRecord<'_> {
    /// Appends the record as one JSON object (no newline).
    fn write_json(&self, out: &mut Vec<u8>, time: &mut TimeCache) {
        use std::io::Write as _;
        out.extend_from_slice(b"{\"time\":\"");
        time.write(out, self.time);
        out.extend_from_slice(b"\",\"client\":\"");
        match self.client {
            std::net::IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push(b'.');
                    }
                    push_padded(out, u64::from(octet), 1);
                }
            }
            // Writing to a Vec cannot fail.
            std::net::IpAddr::V6(v6) => {
                let _ = write!(out, "{v6}");
            }
        }
        // Field by field rather than in loops over (key, value): the loops
        // cost about 150 instructions per line (bench/callgrind.sh `aegis-log`),
        // a twentieth of what the log may cost.
        out.extend_from_slice(b"\",\"method\":");
        push_json_str(out, self.method);
        out.extend_from_slice(b",\"host\":");
        push_opt_str(out, self.host);
        out.extend_from_slice(b",\"path\":");
        push_json_str(out, self.path);
        out.extend_from_slice(b",\"status\":");
        push_padded(out, u64::from(self.status), 1);
        out.extend_from_slice(b",\"bytes_in\":");
        push_padded(out, self.bytes_in, 1);
        out.extend_from_slice(b",\"bytes_out\":");
        push_padded(out, self.bytes_out, 1);
        out.extend_from_slice(b",\"duration_ms\":");
        let micros = u64::try_from(self.duration.as_micros()).unwrap_or(u64::MAX);
        push_padded(out, micros / 1000, 1);
        out.push(b'.');
        push_padded(out, micros % 1000, 3);
        out.extend_from_slice(b",\"route\":");
        push_opt_str(out, self.route);
        out.extend_from_slice(b",\"upstream\":");
        push_opt_str(out, self.upstream);
        out.extend_from_slice(b",\"endpoint\":");
        push_opt_str(out, self.endpoint);
        out.extend_from_slice(b",\"config_version\":");
        push_json_str(out, self.config_version);
        out.extend_from_slice(b",\"score\":");
        match self.score {
            // JSON has no NaN or infinity: serde_json writes those as null.
            Some(score) if score.is_finite() => {
                let _ = write!(out, "{score:?}");
            }
            _ => out.extend_from_slice(b"null"),
        }
        if self.aborted {
            out.extend_from_slice(b",\"aborted\":true");
        }
        out.push(b'}');
    }
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
    buf: Mutex<Filling>,
    tx: SyncSender<Batch>,
}

/// Serialized lines and how many there are (for the dropped count).
#[derive(Debug, Default)]
struct Batch {
    bytes: Vec<u8>,
    lines: u64,
}

/// What the requests share under the lock: the batch being filled and
/// the date text of the current second.
#[derive(Debug, Default)]
struct Filling {
    batch: Batch,
    time: TimeCache,
}

impl Filling {
    /// Takes the batch, leaving an empty one of the same capacity.
    fn take(&mut self) -> Batch {
        std::mem::replace(
            &mut self.batch,
            Batch {
                bytes: Vec::with_capacity(BUFFER),
                lines: 0,
            },
        )
    }
}

impl Shared {
    /// Takes what is buffered, leaving an empty buffer of the same capacity.
    fn take(&self) -> Batch {
        self.buf.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Drop for Shared {
    /// The last handle gone: what is still buffered goes to the writer, and
    /// dropping `tx` then ends it.
    fn drop(&mut self) {
        let batch = std::mem::take(&mut self.buf.lock().unwrap_or_else(|p| p.into_inner()).batch);
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
            buf: Mutex::new(Filling {
                batch: Batch {
                    bytes: Vec::with_capacity(BUFFER),
                    lines: 0,
                },
                time: TimeCache::default(),
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
            let mut guard = shared.buf.lock().unwrap_or_else(|p| p.into_inner());
            let filling = &mut *guard;
            rec.write_json(&mut filling.batch.bytes, &mut filling.time);
            filling.batch.bytes.push(b'\n');
            filling.batch.lines = filling.batch.lines.saturating_add(1);
            (filling.batch.bytes.len() >= BUFFER).then(|| filling.take())
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
    let mut out = Vec::with_capacity(24);
    TimeCache::default().write(&mut out, t);
    String::from_utf8(out).unwrap_or_default()
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
            time: std::time::UNIX_EPOCH,
            client: std::net::Ipv4Addr::LOCALHOST.into(),
            method: "GET",
            host: None,
            path,
            status: 200,
            bytes_in: 0,
            bytes_out: 0,
            duration: Duration::ZERO,
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
        assert_eq!(rfc3339(std::time::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // The cached second is reused within it and replaced after it.
        let mut cache = TimeCache::default();
        let mut out = Vec::new();
        for ms in [
            1_700_000_000_123,
            1_700_000_000_999,
            1_700_000_001_004,
            1_799_999_999_000,
        ] {
            out.clear();
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
            cache.write(&mut out, t);
            assert_eq!(String::from_utf8(out.clone()).unwrap(), rfc3339(t));
        }
        assert_eq!(
            rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(1_799_999_999)),
            "2027-01-15T07:59:59.000Z"
        );
    }

    /// The hand-written line is the object serde_json makes of the record,
    /// escapes, IPv6, absent fields and all.
    #[test]
    fn the_hand_written_line_is_serde_jsons_object() {
        let odd = "/a \"q\" \\ \u{1}\u{1f}\n\t\r\u{8}\u{c} é ☃ \u{7f}";
        let mut records = vec![record("/"), record(odd)];
        let mut full = record("/x?y=1");
        full.time = std::time::UNIX_EPOCH + Duration::from_millis(1_764_979_200_042);
        full.client = "2001:db8::1".parse().unwrap();
        full.host = Some("example.com:8443");
        full.status = 503;
        full.bytes_in = u64::MAX;
        full.bytes_out = 1234567;
        full.duration = Duration::from_micros(12_345_678);
        full.route = Some("r\"oute");
        full.upstream = Some("up");
        full.endpoint = Some("10.0.0.1:80");
        full.score = Some(0.25);
        full.aborted = true;
        records.push(full.clone());
        full.client = "203.0.113.255".parse().unwrap();
        full.score = Some(f64::NAN);
        full.duration = Duration::from_micros(7);
        records.push(full.clone());
        // Past u32 microseconds (71 minutes): a long-lived stream.
        full.duration = Duration::from_secs(5 * 3600) + Duration::from_micros(1);
        records.push(full);
        for rec in &records {
            let mut line = Vec::new();
            rec.write_json(&mut line, &mut TimeCache::default());
            let ours: serde_json::Value = serde_json::from_slice(&line)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&line)));
            let theirs = serde_json::to_value(rec).unwrap();
            assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(&line));
        }
    }
}
