//! Counters kept while running and the final report.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histograms hold, in microseconds (one hour); larger
/// values saturate.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A fresh latency histogram (microseconds, 3 significant figures).
pub fn new_histogram() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Nothing listens on the target (ECONNREFUSED).
    Refused,
    /// The connection was reset or closed mid-request.
    Reset,
    /// No complete response within `--timeout`.
    Timeout,
    /// A response whose status the scenario does not expect.
    UnexpectedStatus,
    /// Other failures to connect (unreachable, DNS, ...).
    Connect,
    /// TLS handshake failures.
    Tls,
    /// Malformed responses and other HTTP protocol errors.
    Protocol,
    /// Anything else.
    Other,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::Refused,
        ErrorKind::Reset,
        ErrorKind::Timeout,
        ErrorKind::UnexpectedStatus,
        ErrorKind::Connect,
        ErrorKind::Tls,
        ErrorKind::Protocol,
        ErrorKind::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Refused => "refused",
            ErrorKind::Reset => "reset",
            ErrorKind::Timeout => "timeout",
            ErrorKind::UnexpectedStatus => "unexpected_status",
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Error counts by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    pub refused: u64,
    pub reset: u64,
    pub timeout: u64,
    pub unexpected_status: u64,
    pub connect: u64,
    pub tls: u64,
    pub protocol: u64,
    pub other: u64,
    pub total: u64,
}

/// What one worker thread counted.
#[derive(Debug, Clone)]
pub struct Stats {
    pub latency: Histogram<u64>,
    /// Count per status code (index = status).
    pub statuses: Vec<u64>,
    pub errors: [u64; 8],
    /// Responses received (any status).
    pub responses: u64,
    pub body_bytes: u64,
}

impl Stats {
    pub fn new() -> Result<Self, hdrhistogram::CreationError> {
        Ok(Self {
            latency: new_histogram()?,
            statuses: vec![0; 1000],
            errors: [0; 8],
            responses: 0,
            body_bytes: 0,
        })
    }

    #[inline]
    pub fn record_response(&mut self, status: u16, latency_us: u64, body_bytes: u64) {
        self.latency.saturating_record(latency_us.max(1));
        if let Some(c) = self.statuses.get_mut(usize::from(status)) {
            *c += 1;
        }
        self.responses += 1;
        self.body_bytes += body_bytes;
    }

    #[inline]
    pub fn record_error(&mut self, kind: ErrorKind) {
        if let Some(c) = self.errors.get_mut(kind.index()) {
            *c += 1;
        }
    }

    pub fn error_total(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// Adds another worker's counts.
    pub fn merge(&mut self, other: &Stats) {
        // Same bounds on both sides, so `add` cannot fail; saturate otherwise.
        if self.latency.add(&other.latency).is_err() {
            for v in other.latency.iter_recorded() {
                self.latency
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
        for (a, b) in self.statuses.iter_mut().zip(&other.statuses) {
            *a += b;
        }
        for (a, b) in self.errors.iter_mut().zip(&other.errors) {
            *a += b;
        }
        self.responses += other.responses;
        self.body_bytes += other.body_bytes;
    }

    pub fn error_counts(&self) -> ErrorCounts {
        let get = |k: ErrorKind| self.errors.get(k.index()).copied().unwrap_or(0);
        ErrorCounts {
            refused: get(ErrorKind::Refused),
            reset: get(ErrorKind::Reset),
            timeout: get(ErrorKind::Timeout),
            unexpected_status: get(ErrorKind::UnexpectedStatus),
            connect: get(ErrorKind::Connect),
            tls: get(ErrorKind::Tls),
            protocol: get(ErrorKind::Protocol),
            other: get(ErrorKind::Other),
            total: self.error_total(),
        }
    }
}

/// Latency figures in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    pub min: f64,
    pub mean: f64,
    pub stdev: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            min: ms(h.min()),
            mean: h.mean() / 1000.0,
            stdev: h.stdev() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// The final report (also the `--json` document).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    /// `closed` (as fast as the connections go) or `open` (fixed rate).
    pub mode: String,
    /// `http1` or `http2`.
    pub protocol: String,
    pub connections: usize,
    /// HTTP/2 streams in flight per connection.
    pub streams: usize,
    pub threads: usize,
    /// Requested rate for the open loop.
    pub rate: Option<f64>,
    /// Wall time of the run, seconds.
    pub elapsed_s: f64,
    /// Requests attempted: responses plus transport errors.
    pub requests: u64,
    /// Responses received, whatever their status.
    pub responses: u64,
    /// Responses per second.
    pub throughput_rps: f64,
    /// Response body bytes received.
    pub body_bytes: u64,
    /// Latency of responses in milliseconds; in the open loop measured from
    /// each request's intended send time.
    pub latency_ms: Latency,
    /// Responses by status code.
    pub statuses: BTreeMap<u16, u64>,
    pub errors: ErrorCounts,
}

impl Report {
    pub fn from_stats(stats: &Stats, elapsed_s: f64, meta: ReportMeta) -> Self {
        let errors = stats.error_counts();
        let transport_errors = errors.total - errors.unexpected_status;
        let statuses = stats
            .statuses
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .filter_map(|(s, c)| u16::try_from(s).ok().map(|s| (s, *c)))
            .collect();
        let throughput_rps = if elapsed_s > 0.0 {
            stats.responses as f64 / elapsed_s
        } else {
            0.0
        };
        Self {
            target: meta.target,
            mode: meta.mode,
            protocol: meta.protocol,
            connections: meta.connections,
            streams: meta.streams,
            threads: meta.threads,
            rate: meta.rate,
            elapsed_s,
            requests: stats.responses + transport_errors,
            responses: stats.responses,
            throughput_rps,
            body_bytes: stats.body_bytes,
            latency_ms: Latency::from_histogram(&stats.latency),
            statuses,
            errors,
        }
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let rate = match self.rate {
            Some(r) => format!(", rate {r} req/s"),
            None => String::new(),
        };
        let streams = if self.streams > 1 {
            format!(" x {} streams", self.streams)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "target {} ({}, {} loop{}), {} connections{} on {} threads",
            self.target, self.protocol, self.mode, rate, self.connections, streams, self.threads
        );
        let _ = writeln!(
            s,
            "  {} requests in {:.2}s, {} responses, {:.1} KiB received",
            self.requests,
            self.elapsed_s,
            self.responses,
            self.body_bytes as f64 / 1024.0
        );
        let _ = writeln!(s, "  throughput  {:.1} req/s", self.throughput_rps);
        let l = &self.latency_ms;
        if self.responses == 0 {
            let _ = writeln!(s, "  latency ms  - (no responses)");
        } else {
            let _ = writeln!(
                s,
                "  latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (mean {:.3}, stdev {:.3})",
                l.p50, l.p90, l.p99, l.p999, l.max, l.mean, l.stdev
            );
        }
        if self.mode == "open" {
            let _ = writeln!(
                s,
                "              (measured from each request's intended send time)"
            );
        }
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(
            s,
            "  statuses    {}",
            if statuses.is_empty() {
                "-".to_string()
            } else {
                statuses.join(", ")
            }
        );
        let e = &self.errors;
        let _ = writeln!(
            s,
            "  errors      {} (refused {}, reset {}, timeout {}, unexpected status {}, connect {}, tls {}, protocol {}, other {})",
            e.total,
            e.refused,
            e.reset,
            e.timeout,
            e.unexpected_status,
            e.connect,
            e.tls,
            e.protocol,
            e.other
        );
        s
    }
}

/// Run parameters echoed in the report.
#[derive(Debug, Clone)]
pub struct ReportMeta {
    pub target: String,
    pub mode: String,
    pub protocol: String,
    pub connections: usize,
    pub streams: usize,
    pub threads: usize,
    pub rate: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_reports() {
        let mut a = Stats::new().unwrap();
        let mut b = Stats::new().unwrap();
        for i in 1..=100u64 {
            a.record_response(200, i * 1000, 10);
        }
        b.record_response(503, 500_000, 0);
        b.record_error(ErrorKind::UnexpectedStatus);
        b.record_error(ErrorKind::Refused);
        a.merge(&b);
        let meta = ReportMeta {
            target: "http://x".into(),
            mode: "closed".into(),
            protocol: "http1".into(),
            connections: 1,
            streams: 1,
            threads: 1,
            rate: None,
        };
        let r = Report::from_stats(&a, 1.0, meta);
        assert_eq!(r.responses, 101);
        assert_eq!(r.requests, 102);
        assert_eq!(r.errors.total, 2);
        assert_eq!(r.statuses[&200], 100);
        assert_eq!(r.statuses[&503], 1);
        assert!(
            (49.0..=52.0).contains(&r.latency_ms.p50),
            "{:?}",
            r.latency_ms
        );
        assert!((499.0..=501.0).contains(&r.latency_ms.max));
        assert!(r.render().contains("unexpected status 1"));
    }
}
