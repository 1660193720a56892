//! Scenario files: a weighted mix of requests.
//!
//! ```yaml
//! # Statuses every request may answer with (optional; absent = any status).
//! expect: [200]
//! # Headers added to every request (optional).
//! headers:
//!   user-agent: aegis-loadgen
//! # Host header for every request (optional; default: the target's authority).
//! host: app.example.com
//! # Client addresses used by `aegis-loadgen sample` (optional).
//! client_ips: [10.0.0.1, 10.0.0.2]
//! requests:
//!   - weight: 8
//!     path: /api/items?page=1
//!   - weight: 1
//!     method: POST
//!     path: /api/items
//!     headers: { content-type: application/json }
//!     body_size: 512
//!     expect: [200, 201]
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::header::{HOST, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri};
use serde::Deserialize;

use crate::util::Rng;

/// A scenario file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Statuses expected for every request unless a request says otherwise.
    #[serde(default)]
    pub expect: Vec<u16>,
    /// Headers added to every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Host header for every request unless a request says otherwise.
    #[serde(default)]
    pub host: Option<String>,
    /// Client addresses drawn by `sample` (default: 10.0.0.0/16, seeded).
    #[serde(default)]
    pub client_ips: Vec<IpAddr>,
    /// The weighted mix.
    pub requests: Vec<RequestSpec>,
}

/// One entry of the mix.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// Optional label, only for people reading the file.
    #[serde(default)]
    pub name: Option<String>,
    /// Relative weight in the mix (default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default = "default_method")]
    pub method: String,
    /// Host header (overrides the scenario's).
    #[serde(default)]
    pub host: Option<String>,
    /// Path with optional query string.
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Size of the request body in bytes (filled with `x`).
    #[serde(default)]
    pub body_size: u64,
    /// Expected statuses (overrides the scenario's).
    #[serde(default)]
    pub expect: Vec<u16>,
}

fn default_weight() -> u32 {
    1
}
fn default_method() -> String {
    "GET".to_string()
}
fn default_path() -> String {
    "/".to_string()
}

impl Scenario {
    /// Reads and validates a YAML scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading scenario {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in scenario {}", path.display()))
    }

    /// Parses and validates YAML text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let s: Scenario = serde_saphyr::from_str(text).context("invalid scenario YAML")?;
        s.validate()?;
        Ok(s)
    }

    /// A scenario of one request.
    pub fn single(spec: RequestSpec) -> Self {
        Self {
            requests: vec![spec],
            ..Self::default()
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.requests.is_empty() {
            bail!("the scenario has no requests");
        }
        if self.requests.iter().all(|r| r.weight == 0) {
            bail!("every request of the scenario has weight 0");
        }
        for (i, r) in self.requests.iter().enumerate() {
            if !r.path.starts_with('/') {
                bail!("request {i}: path {:?} must start with '/'", r.path);
            }
            Method::from_bytes(r.method.as_bytes())
                .with_context(|| format!("request {i}: invalid method {:?}", r.method))?;
            for s in r.expect.iter().chain(&self.expect) {
                if !(100..=999).contains(s) {
                    bail!("request {i}: invalid expected status {s}");
                }
            }
        }
        Ok(())
    }

    /// The cumulative weight table used by [`Picker`].
    pub fn picker(&self) -> Picker {
        let mut acc: u64 = 0;
        let cumulative = self
            .requests
            .iter()
            .map(|r| {
                acc = acc.saturating_add(u64::from(r.weight));
                acc
            })
            .collect();
        Picker {
            cumulative,
            total: acc,
        }
    }

    /// Expected statuses of request `i` (empty = any).
    pub fn expected(&self, i: usize) -> &[u16] {
        match self.requests.get(i) {
            Some(r) if !r.expect.is_empty() => &r.expect,
            _ => &self.expect,
        }
    }
}

/// Picks a request index according to the weights.
#[derive(Debug, Clone)]
pub struct Picker {
    cumulative: Vec<u64>,
    total: u64,
}

impl Picker {
    pub fn pick(&self, rng: &mut Rng) -> usize {
        if self.cumulative.len() <= 1 {
            return 0;
        }
        let x = rng.below(self.total);
        self.cumulative.partition_point(|&c| c <= x)
    }
}

/// A request ready to be cloned onto the wire.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The whole HTTP/1.1 request as sent (head and body); empty for HTTP/2.
    pub wire: Bytes,
    /// True for HEAD requests (no response body).
    pub head: bool,
    /// Bit set of expected statuses (empty = any status is fine).
    pub expect: StatusSet,
}

/// A set of HTTP statuses (100..=999) as a bit set.
#[derive(Debug, Clone)]
pub struct StatusSet {
    bits: Option<Box<[u64; 16]>>,
}

impl StatusSet {
    pub fn new(statuses: &[u16]) -> Self {
        if statuses.is_empty() {
            return Self { bits: None };
        }
        let mut bits = Box::new([0u64; 16]);
        for &s in statuses {
            let s = usize::from(s.min(1023));
            if let Some(w) = bits.get_mut(s / 64) {
                *w |= 1 << (s % 64);
            }
        }
        Self { bits: Some(bits) }
    }

    /// True when `status` is acceptable.
    pub fn allows(&self, status: u16) -> bool {
        match &self.bits {
            None => true,
            Some(bits) => {
                let s = usize::from(status.min(1023));
                bits.get(s / 64).is_some_and(|w| w & (1 << (s % 64)) != 0)
            }
        }
    }
}

/// Builds the wire form of every request of the scenario.
///
/// `scheme` and `authority` describe the target; with `absolute` (HTTP/2) the
/// URI carries them (they become `:scheme` and `:authority`), otherwise the
/// URI is in origin form and a Host header is set.
pub fn prepare(
    scenario: &Scenario,
    scheme: &str,
    authority: &str,
    absolute: bool,
) -> anyhow::Result<Vec<Prepared>> {
    let mut out = Vec::with_capacity(scenario.requests.len());
    for (i, r) in scenario.requests.iter().enumerate() {
        let method = Method::from_bytes(r.method.as_bytes())
            .with_context(|| format!("request {i}: invalid method {:?}", r.method))?;
        let host = r
            .host
            .as_deref()
            .or(scenario.host.as_deref())
            .unwrap_or(authority);
        let uri: Uri = if absolute {
            format!("{scheme}://{host}{}", r.path).parse()
        } else {
            r.path.parse()
        }
        .with_context(|| format!("request {i}: invalid path {:?}", r.path))?;
        let mut headers = HeaderMap::new();
        if !absolute {
            headers.insert(
                HOST,
                HeaderValue::from_str(host)
                    .with_context(|| format!("request {i}: invalid host {host:?}"))?,
            );
        }
        for (name, value) in scenario.headers.iter().chain(&r.headers) {
            let name = HeaderName::from_bytes(name.as_bytes())
                .with_context(|| format!("request {i}: invalid header name {name:?}"))?;
            if absolute && name == HOST {
                continue;
            }
            let value = HeaderValue::from_str(value)
                .with_context(|| format!("request {i}: invalid value of header {name}"))?;
            headers.insert(name, value);
        }
        let size = usize::try_from(r.body_size).context("body too large")?;
        let body = Bytes::from(vec![b'x'; size]);
        let wire = if absolute {
            Bytes::new()
        } else {
            serialize(&method, &uri, &headers, &body)
        };
        out.push(Prepared {
            head: method == Method::HEAD,
            method,
            uri,
            headers,
            body,
            wire,
            expect: StatusSet::new(scenario.expected(i)),
        });
    }
    Ok(out)
}

/// The HTTP/1.1 wire form of a request.
fn serialize(method: &Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Bytes {
    let mut w = Vec::with_capacity(128 + body.len());
    w.extend_from_slice(method.as_str().as_bytes());
    w.push(b' ');
    w.extend_from_slice(uri.to_string().as_bytes());
    w.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        w.extend_from_slice(name.as_str().as_bytes());
        w.extend_from_slice(b": ");
        w.extend_from_slice(value.as_bytes());
        w.extend_from_slice(b"\r\n");
    }
    let needs_length =
        !body.is_empty() || matches!(*method, Method::POST | Method::PUT | Method::PATCH);
    if needs_length && !headers.contains_key(http::header::CONTENT_LENGTH) {
        w.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    w.extend_from_slice(b"\r\n");
    w.extend_from_slice(body);
    Bytes::from(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
expect: [200]
headers:
  user-agent: test
requests:
  - weight: 3
    path: /a?x=1
  - weight: 1
    method: POST
    path: /b
    host: b.example
    body_size: 10
    expect: [201]
"#;

    #[test]
    fn parses_and_prepares() {
        let s = Scenario::parse(YAML).unwrap();
        assert_eq!(s.requests.len(), 2);
        assert_eq!(s.expected(0), &[200]);
        assert_eq!(s.expected(1), &[201]);
        let p = prepare(&s, "http", "127.0.0.1:8080", false).unwrap();
        assert_eq!(p[0].uri, "/a?x=1");
        assert_eq!(p[0].headers[HOST], "127.0.0.1:8080");
        assert_eq!(p[1].headers[HOST], "b.example");
        assert_eq!(p[1].body.len(), 10);
        assert_eq!(
            &p[1].wire[..],
            b"POST /b HTTP/1.1\r\nhost: b.example\r\nuser-agent: test\r\ncontent-length: 10\r\n\r\nxxxxxxxxxx"
        );
        assert_eq!(
            &p[0].wire[..],
            b"GET /a?x=1 HTTP/1.1\r\nhost: 127.0.0.1:8080\r\nuser-agent: test\r\n\r\n"
        );
        assert!(p[0].expect.allows(200) && !p[0].expect.allows(500));
        let p2 = prepare(&s, "http", "127.0.0.1:8080", true).unwrap();
        assert_eq!(p2[1].uri, "http://b.example/b");
        assert!(p2[1].headers.get(HOST).is_none());
    }

    #[test]
    fn weights_are_respected() {
        let s = Scenario::parse(YAML).unwrap();
        let picker = s.picker();
        let mut rng = Rng::new(1);
        let mut counts = [0u32; 2];
        for _ in 0..40_000 {
            counts[picker.pick(&mut rng)] += 1;
        }
        let share = f64::from(counts[0]) / 40_000.0;
        assert!((0.72..0.78).contains(&share), "share {share}");
    }

    #[test]
    fn rejects_bad_scenarios() {
        assert!(Scenario::parse("requests: []").is_err());
        assert!(Scenario::parse("requests:\n  - path: nope").is_err());
        assert!(Scenario::parse("requests:\n  - path: /\n    bogus: 1").is_err());
        assert!(Scenario::parse("requests:\n  - path: /\n    weight: 0").is_err());
    }

    #[test]
    fn any_status_when_no_expectation() {
        let set = StatusSet::new(&[]);
        assert!(set.allows(500));
    }
}
