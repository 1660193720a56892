//! The access log: one JSON line per request, written by a thread of its own
//! so that a slow disk or a blocked stdout never stalls a worker. Lines are
//! dropped (and counted in `aegis_access_log_dropped_total`) when the writer
//! falls behind by more than [`QUEUE`] lines.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

use serde::Serialize;

/// Lines queued for the writer before new ones are dropped.
pub const QUEUE: usize = 65_536;

/// One request, as logged.
#[derive(Debug, Clone, Serialize)]
pub struct AccessRecord {
    /// RFC 3339 UTC with milliseconds.
    pub time: String,
    pub client: String,
    pub method: String,
    pub host: Option<String>,
    pub path: String,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: f64,
    pub route: Option<String>,
    pub upstream: Option<String>,
    pub endpoint: Option<String>,
    pub config_version: String,
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
    tx: Option<SyncSender<AccessRecord>>,
}

impl AccessLog {
    /// No access log.
    pub fn off() -> Self {
        Self { tx: None }
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
        let (tx, rx) = sync_channel::<AccessRecord>(QUEUE);
        std::thread::Builder::new()
            .name("aegis-access-log".into())
            .spawn(move || {
                let mut w = BufWriter::new(out);
                while let Ok(rec) = rx.recv() {
                    let _ = serde_json::to_writer(&mut w, &rec);
                    let _ = w.write_all(b"\n");
                    // Flush when the queue is drained, so lines appear promptly
                    // at low rates and in batches at high ones.
                    let mut drained = true;
                    while let Ok(rec) = rx.try_recv() {
                        let _ = serde_json::to_writer(&mut w, &rec);
                        let _ = w.write_all(b"\n");
                        drained = false;
                    }
                    if drained || rx.try_recv().is_err() {
                        let _ = w.flush();
                    }
                }
                let _ = w.flush();
            })
            .map_err(AccessLogError::Spawn)?;
        Ok(Self { tx: Some(tx) })
    }

    pub fn is_enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn log(&self, rec: AccessRecord) {
        if let Some(tx) = &self.tx
            && let Err(TrySendError::Full(_)) = tx.try_send(rec)
        {
            metrics::counter!("aegis_access_log_dropped_total").increment(1);
        }
    }
}

/// Formats a `SystemTime` as RFC 3339 UTC with milliseconds, without a date
/// library (civil-from-days, Howard Hinnant's algorithm).
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_time() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
    }
}
