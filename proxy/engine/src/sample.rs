//! The traffic sample: recorded request heads that the gate replays through a
//! candidate config.
//!
//! The on-disk format is JSON Lines, one [`SampledRequest`] per line, so that
//! the workers can append cheaply, a person can read it with `jq`, and a
//! truncated or corrupted line costs exactly that line. The reader never
//! trusts the file: it is bounded in bytes, lines and line length, and every
//! line it cannot use is counted in [`SampleReadReport`] instead of failing the
//! whole sample.

use std::io::{BufRead, Write};
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

/// Header values replaced by [`REDACTED`] before a request head is recorded.
pub const ALWAYS_REDACTED: [&str; 4] = [
    "authorization",
    "cookie",
    "set-cookie",
    "proxy-authorization",
];

/// What a redacted header value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Default limits of [`TrafficSample::read`].
pub const DEFAULT_MAX_SAMPLE_BYTES: u64 = 64 * 1024 * 1024;
pub const DEFAULT_MAX_SAMPLE_REQUESTS: usize = 100_000;
pub const DEFAULT_MAX_LINE_BYTES: usize = 64 * 1024;

/// One recorded request head and what live traffic got for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampledRequest {
    pub method: String,
    #[serde(default = "default_scheme")]
    pub scheme: String,
    /// The Host header (or `:authority`) as the client sent it.
    #[serde(default)]
    pub host: Option<String>,
    pub path: String,
    #[serde(default)]
    pub query: Option<String>,
    /// Header names and values in the order received, values redacted.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default = "default_client_ip")]
    pub client_ip: IpAddr,
    #[serde(default)]
    pub body_len: u64,
    /// The status live traffic got; absent for synthesized requests.
    #[serde(default)]
    pub status: Option<u16>,
    /// The route live traffic took (`None` when no route matched).
    #[serde(default)]
    pub route: Option<String>,
    /// True when the gate made this request up from the baseline's routes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub synthetic: bool,
}

fn default_scheme() -> String {
    "http".to_string()
}

fn default_client_ip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

impl SampledRequest {
    /// Replaces the values of secret headers (the fixed list plus `extra`,
    /// compared case-insensitively) with [`REDACTED`].
    pub fn redact(&mut self, extra: &[String]) {
        for (name, value) in &mut self.headers {
            let secret = ALWAYS_REDACTED.iter().any(|s| name.eq_ignore_ascii_case(s))
                || extra.iter().any(|s| name.eq_ignore_ascii_case(s));
            if secret {
                *value = REDACTED.to_string();
            }
        }
    }
}

/// Limits applied while reading a sample file.
#[derive(Debug, Clone, Copy)]
pub struct SampleLimits {
    pub max_bytes: u64,
    pub max_requests: usize,
    pub max_line_bytes: usize,
}

impl Default for SampleLimits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_SAMPLE_BYTES,
            max_requests: DEFAULT_MAX_SAMPLE_REQUESTS,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
        }
    }
}

/// What reading a sample skipped, so the report can say so.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleReadReport {
    pub read: usize,
    pub invalid_lines: usize,
    pub oversized_lines: usize,
    /// True when the byte or request limit stopped the read early.
    pub truncated: bool,
    /// The first few reasons a line was skipped, `line N: why`.
    pub examples: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("reading the traffic sample: {0}")]
    Io(#[from] std::io::Error),
    #[error("encoding a sampled request: {0}")]
    Encode(#[from] serde_json::Error),
}

/// A traffic sample in memory.
#[derive(Debug, Clone, Default)]
pub struct TrafficSample {
    pub requests: Vec<SampledRequest>,
}

impl TrafficSample {
    /// Reads a JSON Lines sample, skipping (and counting) lines that are not
    /// valid requests. Only an I/O error fails the read.
    pub fn read<R: BufRead>(
        reader: R,
        limits: SampleLimits,
    ) -> Result<(Self, SampleReadReport), SampleError> {
        let mut report = SampleReadReport::default();
        let mut requests = Vec::new();
        let mut consumed: u64 = 0;
        let mut reader = reader;
        let mut line = Vec::new();
        let mut line_no: usize = 0;
        loop {
            line.clear();
            // Read at most one byte past the line limit so a huge line cannot
            // exhaust memory; the rest of it is skipped below.
            let cap = u64::try_from(limits.max_line_bytes)
                .unwrap_or(u64::MAX)
                .saturating_add(1);
            let n =
                <&mut R as std::io::Read>::take(&mut reader, cap).read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            line_no = line_no.saturating_add(1);
            consumed = consumed.saturating_add(n as u64);
            if line.len() > limits.max_line_bytes && line.last() != Some(&b'\n') {
                consumed = consumed.saturating_add(skip_rest_of_line(&mut reader)?);
                report.oversized_lines = report.oversized_lines.saturating_add(1);
                note(&mut report, line_no, "line longer than the limit");
            } else {
                let text = trim_line(&line);
                if !text.is_empty() {
                    match serde_json::from_slice::<SampledRequest>(text) {
                        Ok(req) => requests.push(req),
                        Err(e) => {
                            report.invalid_lines = report.invalid_lines.saturating_add(1);
                            note(&mut report, line_no, &e.to_string());
                        }
                    }
                }
            }
            if consumed >= limits.max_bytes || requests.len() >= limits.max_requests {
                report.truncated = true;
                break;
            }
        }
        report.read = requests.len();
        Ok((Self { requests }, report))
    }

    /// Reads a sample file with the default limits.
    pub fn read_file(path: &std::path::Path) -> Result<(Self, SampleReadReport), SampleError> {
        let file = std::fs::File::open(path)?;
        Self::read(std::io::BufReader::new(file), SampleLimits::default())
    }

    /// Writes the sample as JSON Lines.
    pub fn write<W: Write>(&self, mut out: W) -> Result<(), SampleError> {
        for req in &self.requests {
            serde_json::to_writer(&mut out, req)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        Ok(())
    }
}

fn skip_rest_of_line<R: BufRead>(reader: &mut R) -> std::io::Result<u64> {
    let mut skipped: u64 = 0;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(skipped);
        }
        match buf.iter().position(|b| *b == b'\n') {
            Some(i) => {
                let used = i.saturating_add(1);
                reader.consume(used);
                return Ok(skipped.saturating_add(used as u64));
            }
            None => {
                let used = buf.len();
                reader.consume(used);
                skipped = skipped.saturating_add(used as u64);
            }
        }
    }
}

fn trim_line(line: &[u8]) -> &[u8] {
    let mut s = line;
    while let Some((last, rest)) = s.split_last() {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

fn note(report: &mut SampleReadReport, line_no: usize, why: &str) {
    if report.examples.len() < 5 {
        report.examples.push(format!("line {line_no}: {why}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str) -> SampledRequest {
        SampledRequest {
            method: "GET".into(),
            scheme: "http".into(),
            host: Some("example.com".into()),
            path: path.into(),
            query: None,
            headers: vec![
                ("authorization".into(), "Bearer x".into()),
                ("x-a".into(), "1".into()),
            ],
            client_ip: "10.0.0.1".parse().unwrap(),
            body_len: 0,
            status: Some(200),
            route: Some("app".into()),
            synthetic: false,
        }
    }

    #[test]
    fn round_trips_and_redacts() {
        let mut r = req("/a");
        r.redact(&["X-A".to_string()]);
        assert_eq!(r.headers[0].1, REDACTED);
        assert_eq!(r.headers[1].1, REDACTED);
        let sample = TrafficSample {
            requests: vec![r.clone(), req("/b")],
        };
        let mut buf = Vec::new();
        sample.write(&mut buf).unwrap();
        let (back, report) = TrafficSample::read(&buf[..], SampleLimits::default()).unwrap();
        assert_eq!(back.requests.len(), 2);
        assert_eq!(back.requests[0], r);
        assert_eq!(report.invalid_lines, 0);
    }

    #[test]
    fn bad_lines_are_counted_not_fatal() {
        let mut text = String::new();
        text.push_str("{\"method\":\"GET\",\"path\":\"/ok\"}\n");
        text.push_str("not json\n");
        text.push_str(&"x".repeat(200));
        text.push('\n');
        text.push_str("{\"method\":\"GET\",\"path\":\"/ok2\",\"bogus\":1}\n");
        text.push_str("{\"method\":\"GET\",\"path\":\"/last\"}");
        let limits = SampleLimits {
            max_line_bytes: 100,
            ..SampleLimits::default()
        };
        let (s, report) = TrafficSample::read(text.as_bytes(), limits).unwrap();
        assert_eq!(s.requests.len(), 2);
        assert_eq!(s.requests[1].path, "/last");
        assert_eq!(report.invalid_lines, 2);
        assert_eq!(report.oversized_lines, 1);
        assert!(!report.truncated);
    }

    #[test]
    fn request_limit_truncates() {
        let text = "{\"method\":\"GET\",\"path\":\"/\"}\n".repeat(10);
        let limits = SampleLimits {
            max_requests: 3,
            ..SampleLimits::default()
        };
        let (s, report) = TrafficSample::read(text.as_bytes(), limits).unwrap();
        assert_eq!(s.requests.len(), 3);
        assert!(report.truncated);
    }
}
