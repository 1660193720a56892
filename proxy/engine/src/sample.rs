//! The traffic sample: recorded request heads that the gate replays through a
//! candidate config.
//!
//! The on-disk format is JSON Lines, one [`SampledRequest`] per line, so that
//! the workers can append cheaply, a person can read it with `jq`, and a
//! truncated or corrupted line costs exactly that line. The reader never
//! trusts the file: it is bounded in bytes, lines and line length, and every
//! line it cannot use is counted in [`SampleReadReport`] instead of failing the
//! whole sample.
//!
//! Secrets never reach the file, but their sizes do: [`Redactor`] replaces
//! each secret value with a same-length placeholder of the same shape
//! (digits become `0`, letters `a`/`A`, punctuation stays), so that header
//! limits, features and the replay's latency see heads of the real size
//! while the value itself is gone. See docs/GATE.md, "What the sample keeps".

use std::io::{BufRead, Write};
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

/// Header values always masked before a request head is recorded (besides
/// every name matching [`SECRET_HEADER_WORDS`]).
pub const ALWAYS_REDACTED: [&str; 5] = [
    "authorization",
    "cookie",
    "set-cookie",
    "proxy-authorization",
    "x-amz-security-token",
];

/// A header whose lower-cased name contains one of these words is masked:
/// `x-auth-token`, `x-csrf-token`, `x-client-secret`, `x-api-key`,
/// `x-session-id`, `x-amz-signature`, `x-goog-credential`, `x-user-password`.
pub const SECRET_HEADER_WORDS: [&str; 10] = [
    "token",
    "secret",
    "passw",
    "api-key",
    "api_key",
    "apikey",
    "session",
    "signature",
    "credential",
    "auth",
];

/// Query parameters masked by exact (case-insensitive) name, besides every
/// name matching [`SECRET_PARAM_WORDS`]. `key`, `sig` and `code` are here
/// because signed URLs (`?key=…&sig=…`) and OAuth redirects (`?code=…`)
/// carry credentials under them.
pub const SECRET_PARAMS: [&str; 14] = [
    "code",
    "key",
    "sig",
    "pwd",
    "pass",
    "auth",
    "jwt",
    "otp",
    "nonce",
    "hmac",
    "x-amz-credential",
    "x-goog-credential",
    "sessionid",
    "sid",
];

/// A query parameter whose lower-cased name contains one of these is masked:
/// `token`, `access_token`, `id_token`, `refresh_token`, `password`,
/// `passwd`, `secret`, `client_secret`, `api_key`, `apikey`, `signature`,
/// `X-Amz-Signature`, `X-Amz-Security-Token`, `session_id`.
pub const SECRET_PARAM_WORDS: [&str; 8] = [
    "token",
    "passw",
    "secret",
    "api_key",
    "apikey",
    "api-key",
    "signature",
    "session",
];

/// Path segments after one of these (`/reset-password/<x>`, `/token/<x>`,
/// `/invite/<x>`) are masked when they are at least
/// [`SECRET_AFTER_KEYWORD_LEN`] bytes long.
pub const SECRET_PATH_KEYWORDS: [&str; 9] = [
    "password", "passwd", "token", "secret", "reset", "verify", "confirm", "invite", "magic",
];
/// See [`SECRET_PATH_KEYWORDS`].
pub const SECRET_AFTER_KEYWORD_LEN: usize = 8;
/// A path segment this long or longer, of base64url or hex characters only,
/// that mixes letters and digits (and, unless it is hex, both letter cases)
/// is taken for a secret wherever it is (a reset link, a signed download, a
/// capability URL).
pub const SECRET_SEGMENT_LEN: usize = 24;

/// What the legacy [`SampledRequest::redact`] replaces values with (the
/// load generator's synthetic samples; the recorder uses [`Redactor`]).
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
    /// The client's address as the proxy saw it (kept as is: `client_ip`
    /// features, allow-lists and per-client rate limits key on it). Replay:
    /// send each request as coming from this address, so a rate limit counts
    /// per recorded client, not all requests as one.
    #[serde(default = "default_client_ip")]
    pub client_ip: IpAddr,
    /// The local port the request arrived on (absent in older samples and
    /// in requests made up from a config). Replay: match it against the
    /// routes of that port (`match.ports`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Request body length: the Content-Length the client sent (0 without
    /// one; a chunked body's length is not known when the head is recorded:
    /// see `chunked`). Replay: send a body of this many bytes, so body-size
    /// limits judge it.
    #[serde(default)]
    pub body_len: u64,
    /// The body was sent chunked (no Content-Length): `body_len` is 0 and
    /// the real length unknown. Replay: send a chunked body (of at least one
    /// byte) rather than none. Absent (false) in older samples.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub chunked: bool,
    /// When the head arrived, milliseconds since the Unix epoch (0 in older
    /// samples and synthetic requests). Replay: order by it and keep the
    /// recorded gaps between requests of the same `client_ip` (compressed
    /// if the sample spans more than the replay's time budget), so a rate
    /// limit sees the real pace instead of a burst.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub at_ms: u64,
    /// Header lines the recorder left out to keep the head within
    /// `sample.max_head_bytes` (0: the head is complete). Replay: add this
    /// many filler header lines totalling `omitted_header_bytes`, so header
    /// count and size limits see the real head.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub omitted_headers: u32,
    /// Bytes (`name: value\r\n` each) of the header lines left out; see
    /// `omitted_headers`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted_header_bytes: u64,
    /// Where the recorder put a placeholder instead of a secret:
    /// `header:<name>`, `cookie:<name>`, `query:<name>` or `path:<segment
    /// index>`. Each placeholder has the original's length and shape.
    /// Replay: nothing to do; a route or feature that compares such a value
    /// literally will not match in the replay (report it as unjudgeable
    /// rather than as a change, if it matters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redacted: Vec<String>,
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

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

impl Default for SampledRequest {
    fn default() -> Self {
        Self {
            method: "GET".to_string(),
            scheme: default_scheme(),
            host: None,
            path: "/".to_string(),
            query: None,
            headers: Vec::new(),
            client_ip: default_client_ip(),
            port: None,
            body_len: 0,
            chunked: false,
            at_ms: 0,
            omitted_headers: 0,
            omitted_header_bytes: 0,
            redacted: Vec::new(),
            status: None,
            route: None,
            synthetic: false,
        }
    }
}

fn default_client_ip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

impl SampledRequest {
    /// About how many bytes this request holds in memory (strings and their
    /// bookkeeping): what the reservoir's memory bound counts.
    pub fn approx_bytes(&self) -> usize {
        const PER_STRING: usize = 24;
        let headers = self.headers.iter().fold(0usize, |n, (k, v)| {
            n.saturating_add(k.len())
                .saturating_add(v.len())
                .saturating_add(3 * PER_STRING)
        });
        let redacted = self.redacted.iter().fold(0usize, |n, r| {
            n.saturating_add(r.len()).saturating_add(PER_STRING)
        });
        std::mem::size_of::<Self>()
            .saturating_add(self.method.len())
            .saturating_add(self.scheme.len())
            .saturating_add(self.host.as_ref().map_or(0, String::len))
            .saturating_add(self.path.len())
            .saturating_add(self.query.as_ref().map_or(0, String::len))
            .saturating_add(self.route.as_ref().map_or(0, String::len))
            .saturating_add(headers)
            .saturating_add(redacted)
    }

    /// Replaces the values of secret headers (the fixed list plus `extra`,
    /// compared case-insensitively) with [`REDACTED`]. The legacy, lossy
    /// form kept for synthetic samples; recorded traffic goes through
    /// [`Redactor::apply`], which keeps lengths.
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

/// Masks the secrets of a recorded head, keeping their sizes: secret header
/// values ([`ALWAYS_REDACTED`], [`SECRET_HEADER_WORDS`] and the configured
/// names), cookie values (names kept), the scheme of Authorization kept and
/// its credentials masked, secret query parameter values
/// ([`SECRET_PARAMS`], [`SECRET_PARAM_WORDS`] and the configured names) and
/// path segments that look like secrets ([`looks_like_secret_segment`],
/// [`SECRET_PATH_KEYWORDS`]).
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    headers: Vec<String>,
    params: Vec<String>,
    path_secrets: bool,
}

impl Redactor {
    /// `headers` and `params`: names masked besides the built-in ones
    /// (compared case-insensitively); `path_secrets`: mask path segments
    /// that look like secrets.
    pub fn new(headers: &[String], params: &[String], path_secrets: bool) -> Self {
        Self {
            headers: headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            params: params.iter().map(|p| p.to_ascii_lowercase()).collect(),
            path_secrets,
        }
    }

    /// Whether a header's value is masked.
    pub fn is_secret_header(&self, name: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        ALWAYS_REDACTED.contains(&lower.as_str())
            || SECRET_HEADER_WORDS.iter().any(|w| lower.contains(w))
            || self.headers.contains(&lower)
    }

    /// Whether a query parameter's value is masked.
    pub fn is_secret_param(&self, name: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        SECRET_PARAMS.contains(&lower.as_str())
            || SECRET_PARAM_WORDS.iter().any(|w| lower.contains(w))
            || self.params.contains(&lower)
    }

    /// Masks `req` in place and notes where in `req.redacted`.
    pub fn apply(&self, req: &mut SampledRequest) {
        let mut notes = Vec::new();
        for (name, value) in &mut req.headers {
            let lower = name.to_ascii_lowercase();
            if lower == "cookie" || lower == "set-cookie" {
                let (masked, names) = mask_cookie(value, lower == "cookie");
                *value = masked;
                notes.extend(names.into_iter().map(|n| format!("cookie:{n}")));
            } else if lower == "authorization" || lower == "proxy-authorization" {
                *value = mask_credentials(value);
                notes.push(format!("header:{lower}"));
            } else if self.is_secret_header(&lower) {
                *value = mask(value);
                notes.push(format!("header:{lower}"));
            }
        }
        if let Some(q) = req.query.as_mut() {
            let (masked, names) = self.mask_query(q);
            *q = masked;
            notes.extend(names.into_iter().map(|n| format!("query:{n}")));
        }
        if self.path_secrets {
            let (masked, segments) = mask_path(&req.path);
            req.path = masked;
            notes.extend(segments.into_iter().map(|i| format!("path:{i}")));
        }
        req.redacted.extend(notes);
    }

    /// `a=1&token=xyz` → `a=1&token=aaa`, and the names masked.
    fn mask_query(&self, query: &str) -> (String, Vec<String>) {
        let mut out = String::with_capacity(query.len());
        let mut names = Vec::new();
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, value)) if self.is_secret_param(&percent_decoded(name)) => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(&mask(value));
                    names.push(name.to_string());
                }
                _ => out.push_str(pair),
            }
        }
        (out, names)
    }
}

/// A placeholder of the same byte length and shape: ASCII digits become `0`,
/// lower-case letters `a`, upper-case `A`, other ASCII stays (so `%2F` stays
/// a valid escape, a JWT keeps its dots, a UUID its dashes), and each
/// non-ASCII character becomes as many `a` as it has bytes.
pub fn mask(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '0'..='9' => out.push('0'),
            'a'..='z' => out.push('a'),
            'A'..='Z' => out.push('A'),
            c if c.is_ascii() => out.push(c),
            c => out.extend(std::iter::repeat_n('a', c.len_utf8())),
        }
    }
    out
}

/// `Bearer abc.def` → `Bearer aaa.aaa`: the scheme (which features and
/// routes may match) kept, the credentials masked.
fn mask_credentials(value: &str) -> String {
    match value.split_once(' ') {
        Some((scheme, rest)) => format!("{scheme} {}", mask(rest)),
        None => mask(value),
    }
}

/// `a=1; b=xyz` → `a=0; b=aaa` and the cookie names. For Set-Cookie
/// (`request` false) only the first pair is the cookie; the attributes after
/// it are kept.
fn mask_cookie(value: &str, request: bool) -> (String, Vec<String>) {
    let mut out = String::with_capacity(value.len());
    let mut names = Vec::new();
    for (i, pair) in value.split(';').enumerate() {
        if i > 0 {
            out.push(';');
        }
        if i > 0 && !request {
            out.push_str(pair);
            continue;
        }
        match pair.split_once('=') {
            Some((name, v)) => {
                out.push_str(name);
                out.push('=');
                out.push_str(&mask(v));
                names.push(name.trim().to_string());
            }
            None => out.push_str(&mask(pair)),
        }
    }
    (out, names)
}

/// Masks path segments that look like secrets; returns the new path and the
/// indexes (0 for the segment after the first `/`) of the masked segments.
fn mask_path(path: &str) -> (String, Vec<usize>) {
    let mut out = String::with_capacity(path.len());
    let mut masked = Vec::new();
    let mut after_keyword = false;
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let secret = looks_like_secret_segment(seg)
            || (after_keyword && seg.len() >= SECRET_AFTER_KEYWORD_LEN);
        if secret {
            out.push_str(&mask(seg));
            masked.push(i.saturating_sub(1));
        } else {
            out.push_str(seg);
        }
        let lower = seg.to_ascii_lowercase();
        after_keyword = SECRET_PATH_KEYWORDS.iter().any(|k| lower.contains(k));
    }
    (out, masked)
}

/// A path segment that is most likely a secret: at least
/// [`SECRET_SEGMENT_LEN`] bytes, every byte base64url (`A-Z a-z 0-9 - _`,
/// `=` padding) or hex with dashes (a UUID), with letters and digits mixed,
/// and either hex only or both letter cases (so `2024-annual-report-final`
/// is a slug, not a secret).
pub fn looks_like_secret_segment(seg: &str) -> bool {
    if seg.len() < SECRET_SEGMENT_LEN {
        return false;
    }
    let b = seg.as_bytes();
    if !b
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'='))
    {
        return false;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    let lower = b.iter().filter(|c| c.is_ascii_lowercase()).count();
    let upper = b.iter().filter(|c| c.is_ascii_uppercase()).count();
    if digits == 0 || lower.saturating_add(upper) == 0 {
        return false;
    }
    let hex = b.iter().all(|c| c.is_ascii_hexdigit() || *c == b'-');
    hex || (lower > 0 && upper > 0)
}

/// `%5F` and friends decoded for comparing a parameter name (invalid
/// escapes kept as they are).
fn percent_decoded(name: &str) -> String {
    if !name.contains('%') {
        return name.to_string();
    }
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0usize;
    while let Some(&c) = b.get(i) {
        let hex = |j: usize| b.get(j).and_then(|h| (*h as char).to_digit(16));
        match (c, hex(i.saturating_add(1)), hex(i.saturating_add(2))) {
            (b'%', Some(h), Some(l)) => {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i = i.saturating_add(3);
            }
            _ => {
                out.push(c);
                i = i.saturating_add(1);
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
            ..SampledRequest::default()
        }
    }

    #[test]
    fn redactor_keeps_lengths_names_and_shapes() {
        let r = Redactor::new(&["X-Internal".into()], &["ticket".into()], true);
        let mut q = SampledRequest {
            path: "/reset-password/s3cr3tV4lue9/x/aB3dE5fG7hJ9kL1mN3pQ5rS7tU9".into(),
            query: Some(
                "page=2&access_token=abc.DEF-123&X-Amz-Signature=0f9a&ticket=t1&q=token".into(),
            ),
            headers: vec![
                ("cookie".into(), "session=abc123; csrf=Zz9".into()),
                ("authorization".into(), "Bearer eyJ.x1".into()),
                ("X-Auth-Token".into(), "tok-9".into()),
                ("x-amz-security-token".into(), "FwoGZ".into()),
                ("x-internal".into(), "v".into()),
                ("user-agent".into(), "curl/8.0".into()),
            ],
            ..SampledRequest::default()
        };
        let before = q.clone();
        r.apply(&mut q);
        assert_eq!(
            q.path,
            "/reset-password/a0aa0aA0aaa0/x/aA0aA0aA0aA0aA0aA0aA0aA0aA0"
        );
        assert_eq!(
            q.query.as_deref(),
            Some("page=2&access_token=aaa.AAA-000&X-Amz-Signature=0a0a&ticket=a0&q=token")
        );
        let h: Vec<&str> = q.headers.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(
            h,
            [
                "session=aaa000; csrf=Aa0",
                "Bearer aaA.a0",
                "aaa-0",
                "AaaAA",
                "a",
                "curl/8.0"
            ]
        );
        for ((_, a), (_, b)) in q.headers.iter().zip(&before.headers) {
            assert_eq!(a.len(), b.len());
        }
        assert_eq!(q.path.len(), before.path.len());
        assert!(q.redacted.contains(&"cookie:session".to_string()));
        assert!(q.redacted.contains(&"query:access_token".to_string()));
        assert!(q.redacted.contains(&"path:1".to_string()));
        assert!(q.redacted.contains(&"path:3".to_string()));
    }

    #[test]
    fn slugs_and_short_segments_are_not_secrets() {
        for s in [
            "2024-annual-report-for-investors",
            "index.html",
            "v1",
            "abcdefghijklmnopqrstuvwxyz",
        ] {
            assert!(!looks_like_secret_segment(s), "{s}");
        }
        for s in [
            "9f86d081884c7d659a2feaa0c55ad015",
            "123e4567-e89b-12d3-a456-426614174000",
            "Xy7_kPq2-Lm9RtZ0wVb4Nc8Ds",
        ] {
            assert!(looks_like_secret_segment(s), "{s}");
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
