//! The traffic sample a serving process keeps: a bounded, uniformly sampled
//! reservoir (Algorithm R) of recent request heads, secrets masked, flushed
//! atomically to a size-bounded JSON Lines file in the state directory.
//!
//! "Recent": after each flush the reservoir's count restarts from its size,
//! so requests since the last flush replace older ones with a probability
//! that grows with their number; a reservoir of `capacity` heads tracks the
//! last few flush intervals rather than the process's whole life.
//!
//! The decision to keep a request is made before its head is copied, so a
//! request that is not sampled costs one counter increment and one random
//! number.
//!
//! Bounded in bytes, not only in heads: the sample is filled from
//! unauthenticated traffic, so 10 000 heads of 60 KB each must not become
//! 600 MB of attacker padding in a worker. Each head is cut to
//! `sample.max_head_bytes` (header lines past it are counted in the head,
//! not stored) and the reservoir as a whole holds at most
//! `sample.max_bytes`; a head that would not fit is dropped. Both are
//! counted (`aegis_sample_heads_truncated_total`,
//! `aegis_sample_heads_dropped_total`). Items are shared (`Arc`) so a flush
//! copies pointers, and the file is streamed, so a flush does not double
//! the memory either.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aegis_engine::config::settings::SampleSettings;
use aegis_engine::sample::{DEFAULT_MAX_SAMPLE_BYTES, Redactor, SampledRequest, TrafficSample};

use crate::pipeline::RequestOutcome;

/// Largest sample file written by default; see [`SampleSettings::max_bytes`].
pub const MAX_SAMPLE_FILE: usize = 32 << 20;

struct Inner {
    /// Each head with the bytes it was counted for.
    items: Vec<(Arc<SampledRequest>, usize)>,
    bytes: usize,
    seen: u64,
}

/// What the reservoir left out, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReservoirStats {
    /// Heads kept without some of their header lines (over `max_head_bytes`).
    pub truncated: u64,
    /// Heads chosen but not kept: path and query alone over
    /// `max_head_bytes`, or no room under `max_bytes`.
    pub dropped: u64,
}

/// A reservoir of request heads.
pub struct Reservoir {
    capacity: usize,
    max_head_bytes: usize,
    max_bytes: usize,
    redactor: Redactor,
    inner: Mutex<Inner>,
    rng: AtomicU64,
    truncated: AtomicU64,
    dropped: AtomicU64,
}

/// Whether a chosen request is appended or replaces a kept one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    Push,
    Replace(usize),
}

/// A slot reserved for a request that was chosen, filled once its response
/// is known; it carries the time the request arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub kind: SlotKind,
    /// Milliseconds since the Unix epoch when the slot was chosen (the
    /// request's arrival): [`SampledRequest::at_ms`].
    pub at_ms: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// How [`cap_head`] left a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capped {
    Whole,
    Truncated,
    TooLarge,
}

/// One header line's bytes on the wire: `name: value\r\n`.
fn line_bytes(name: &str, value: &str) -> usize {
    name.len().saturating_add(value.len()).saturating_add(4)
}

/// Keeps the header lines of `req` that fit in `max` bytes with its method,
/// host, path and query (in order; a line that does not fit is counted in
/// `omitted_*` and a later, smaller one may still fit).
fn cap_head(req: &mut SampledRequest, max: usize) -> Capped {
    let base = req
        .method
        .len()
        .saturating_add(req.host.as_ref().map_or(0, String::len))
        .saturating_add(req.path.len())
        .saturating_add(req.query.as_ref().map_or(0, String::len));
    let Some(mut budget) = max.checked_sub(base) else {
        return Capped::TooLarge;
    };
    let total: usize = req
        .headers
        .iter()
        .fold(0usize, |n, (k, v)| n.saturating_add(line_bytes(k, v)));
    if total <= budget {
        return Capped::Whole;
    }
    let mut omitted: u32 = 0;
    let mut omitted_bytes: u64 = 0;
    req.headers.retain(|(k, v)| {
        let n = line_bytes(k, v);
        match budget.checked_sub(n) {
            Some(left) => {
                budget = left;
                true
            }
            None => {
                omitted = omitted.saturating_add(1);
                omitted_bytes = omitted_bytes.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
                false
            }
        }
    });
    req.headers.shrink_to_fit();
    req.omitted_headers = req.omitted_headers.saturating_add(omitted);
    req.omitted_header_bytes = req.omitted_header_bytes.saturating_add(omitted_bytes);
    Capped::Truncated
}

impl Reservoir {
    /// A reservoir of `capacity` heads with the default byte bounds and the
    /// built-in secrets plus `secret_headers`.
    pub fn new(capacity: usize, secret_headers: Vec<String>) -> Self {
        Self::from_settings(&SampleSettings {
            capacity,
            secret_headers,
            ..SampleSettings::default()
        })
    }

    /// A reservoir as `aegis.yaml`'s `sample` section describes it.
    pub fn from_settings(s: &SampleSettings) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15)
            | 1;
        Self {
            capacity: s.capacity,
            max_head_bytes: usize::try_from(s.max_head_bytes.0).unwrap_or(usize::MAX),
            max_bytes: usize::try_from(s.max_bytes.0).unwrap_or(usize::MAX),
            redactor: Redactor::new(
                &s.secret_headers,
                &s.secret_query_params,
                s.redact_path_secrets,
            ),
            inner: Mutex::new(Inner {
                items: Vec::new(),
                bytes: 0,
                seen: 0,
            }),
            rng: AtomicU64::new(seed),
            truncated: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    fn next_random(&self) -> u64 {
        // splitmix64 over an atomic counter: good enough to sample with.
        let mut z = self
            .rng
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Decides whether the next request is kept (Algorithm R). The
    /// reservoir counts as full at `capacity` heads or when one more head
    /// of `max_head_bytes` might not fit under `max_bytes`.
    pub fn choose(&self) -> Option<Slot> {
        if self.capacity == 0 || self.max_bytes == 0 {
            return None;
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.seen = g.seen.saturating_add(1);
        let at_ms = now_ms();
        let room = g.bytes.saturating_add(self.max_head_bytes) <= self.max_bytes;
        if g.items.len() < self.capacity && (room || g.items.is_empty()) {
            return Some(Slot {
                kind: SlotKind::Push,
                at_ms,
            });
        }
        let kept = g.items.len();
        let j = self.next_random() % g.seen.max(1);
        usize::try_from(j).ok().filter(|j| *j < kept).map(|j| Slot {
            kind: SlotKind::Replace(j),
            at_ms,
        })
    }

    /// Records a chosen request with its outcome: cut to `max_head_bytes`,
    /// secrets masked, kept if it fits under `max_bytes`.
    pub fn fill(&self, slot: Slot, mut req: SampledRequest) {
        // Heads from [`Reservoir::head`] arrive cut already (`omitted_*`);
        // others are cut here.
        if cap_head(&mut req, self.max_head_bytes) == Capped::TooLarge {
            return self.drop_one();
        }
        if req.omitted_headers > 0 {
            self.truncated.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("aegis_sample_heads_truncated_total").increment(1);
        }
        self.redactor.apply(&mut req);
        if req.at_ms == 0 {
            req.at_ms = slot.at_ms;
        }
        let size = req.approx_bytes();
        let req = Arc::new(req);
        let kept = {
            let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            match slot.kind {
                SlotKind::Push => {
                    let fits = g.bytes.saturating_add(size) <= self.max_bytes;
                    if g.items.len() < self.capacity && fits {
                        g.items.push((req, size));
                        g.bytes = g.bytes.saturating_add(size);
                        true
                    } else {
                        false
                    }
                }
                SlotKind::Replace(i) => {
                    let bytes = g.bytes;
                    match g.items.get_mut(i) {
                        Some(item)
                            if bytes.saturating_sub(item.1).saturating_add(size)
                                <= self.max_bytes =>
                        {
                            let old = std::mem::replace(item, (req, size));
                            g.bytes = bytes.saturating_sub(old.1).saturating_add(size);
                            true
                        }
                        _ => false,
                    }
                }
            }
        };
        if !kept {
            self.drop_one();
        }
    }

    fn drop_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("aegis_sample_heads_dropped_total").increment(1);
    }

    /// A request head as [`head`] records it, but copying only the header
    /// lines that fit in `max_head_bytes` (the rest are counted in
    /// `omitted_*`), so a 60 KB head costs no 60 KB copy.
    pub fn head(
        &self,
        parts: HeadRef<'_>,
        client: std::net::IpAddr,
        outcome: Option<&RequestOutcome>,
        status: u16,
    ) -> SampledRequest {
        let mut req = head_with(parts, client, outcome, status, false);
        let base = req
            .method
            .len()
            .saturating_add(req.host.as_ref().map_or(0, String::len))
            .saturating_add(req.path.len())
            .saturating_add(req.query.as_ref().map_or(0, String::len));
        let mut budget = self.max_head_bytes.saturating_sub(base);
        for (n, v) in parts.headers {
            if n == http::header::HOST {
                continue;
            }
            let line = line_bytes(n.as_str(), "").saturating_add(v.len());
            match budget.checked_sub(line) {
                Some(left) => {
                    budget = left;
                    req.headers.push((
                        n.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    ));
                }
                None => {
                    req.omitted_headers = req.omitted_headers.saturating_add(1);
                    req.omitted_header_bytes = req
                        .omitted_header_bytes
                        .saturating_add(u64::try_from(line).unwrap_or(u64::MAX));
                }
            }
        }
        req
    }

    /// Chooses and records in one step (when the head is at hand anyway).
    pub fn offer(
        &self,
        parts: &http::request::Parts,
        client: std::net::IpAddr,
        outcome: Option<&RequestOutcome>,
        status: u16,
    ) {
        if let Some(slot) = self.choose() {
            self.fill(slot, self.head(HeadRef::of(parts), client, outcome, status));
        }
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .items
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held now, as the memory bound counts them.
    pub fn bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }

    /// Heads truncated and dropped so far.
    pub fn stats(&self) -> ReservoirStats {
        ReservoirStats {
            truncated: self.truncated.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }

    /// The largest file [`Reservoir::flush`] writes: `max_bytes`, and never
    /// more than a reader reads by default.
    fn file_cap(&self) -> usize {
        let reader = usize::try_from(DEFAULT_MAX_SAMPLE_BYTES).unwrap_or(usize::MAX);
        self.max_bytes.min(reader)
    }

    /// Writes the reservoir to `path` (atomically: a 0600 temporary file in
    /// the same directory, renamed; at most `max_bytes`) and restarts the
    /// recency window. A missing directory is created 0700.
    pub fn flush(&self, path: &Path) -> std::io::Result<usize> {
        let items: Vec<Arc<SampledRequest>> = {
            let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            g.seen = u64::try_from(g.items.len()).unwrap_or(u64::MAX);
            g.items.iter().map(|(r, _)| r.clone()).collect()
        };
        let cap = self.file_cap();
        write_private(path, |out| {
            let mut written = 0usize;
            let mut size = 0usize;
            let mut line = Vec::new();
            for r in &items {
                line.clear();
                if serde_json::to_writer(&mut line, r.as_ref()).is_err() {
                    continue;
                }
                line.push(b'\n');
                if size.saturating_add(line.len()) > cap {
                    break;
                }
                out.write_all(&line)?;
                size = size.saturating_add(line.len());
                written = written.saturating_add(1);
            }
            Ok(written)
        })
    }

    /// The current contents (tests, `aegis check`).
    pub fn snapshot(&self) -> TrafficSample {
        TrafficSample {
            requests: self
                .inner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .items
                .iter()
                .map(|(r, _)| r.as_ref().clone())
                .collect(),
        }
    }
}

/// Streams `fill`'s output into a fresh 0600 file next to `path` and renames
/// it over `path` (so a reader sees the old sample or the new one, and the
/// sample's contents are never readable by other users, not even while it
/// is written).
fn write_private<T>(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<T>,
) -> std::io::Result<T> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.as_os_str().is_empty() && !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    // A leftover of a crashed flush may have other permissions: start anew.
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The umask can only take bits away; make sure it left no more.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        let mut out = std::io::BufWriter::with_capacity(64 << 10, f);
        let v = fill(&mut out)?;
        let f = out.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        Ok(v)
    })();
    match written {
        Ok(v) => {
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(dir)?.sync_all()?;
            Ok(v)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// A request head as the sample records it (unmasked and uncut:
/// [`Reservoir::fill`] does both).
pub fn head(
    parts: &http::request::Parts,
    client: std::net::IpAddr,
    outcome: Option<&RequestOutcome>,
    status: u16,
) -> SampledRequest {
    head_with(HeadRef::of(parts), client, outcome, status, true)
}

/// A request head as it is borrowed from a request or its parts: what the
/// sample copies, and only once the request is chosen.
#[derive(Clone, Copy)]
pub struct HeadRef<'a> {
    pub method: &'a http::Method,
    pub uri: &'a http::Uri,
    pub headers: &'a http::HeaderMap,
}

impl<'a> HeadRef<'a> {
    pub fn of(parts: &'a http::request::Parts) -> Self {
        Self {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
        }
    }

    pub fn of_request<B>(req: &'a http::Request<B>) -> Self {
        Self {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
        }
    }
}

/// [`head`], with or without its header lines.
fn head_with(
    parts: HeadRef<'_>,
    client: std::net::IpAddr,
    outcome: Option<&RequestOutcome>,
    status: u16,
    with_headers: bool,
) -> SampledRequest {
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()));
    // What the client declared; a body cut short is still sent at this
    // length by the replay, which is what a body limit judges.
    let body_len = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let chunked = parts
        .headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .any(|v| {
            v.as_bytes()
                .to_ascii_lowercase()
                .windows(7)
                .any(|w| w == b"chunked")
        });
    SampledRequest {
        method: parts.method.to_string(),
        scheme: parts.uri.scheme_str().unwrap_or("http").to_string(),
        host,
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts
            .headers
            .iter()
            .filter(|_| with_headers)
            .filter(|(n, _)| *n != http::header::HOST)
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        client_ip: client,
        body_len,
        chunked,
        status: Some(status),
        route: outcome.and_then(|o| o.route.as_deref().map(str::to_string)),
        // Spelled out rather than `..Default::default()`, whose strings would
        // be made only to be dropped.
        port: None,
        at_ms: 0,
        omitted_headers: 0,
        omitted_header_bytes: 0,
        redacted: Vec::new(),
        synthetic: false,
    }
}

/// Flushes `reservoir` to `path` every `interval` until `shutdown`, and once
/// more at the end.
pub fn spawn_flusher(
    reservoir: std::sync::Arc<Reservoir>,
    path: PathBuf,
    interval: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let interval = interval.max(std::time::Duration::from_millis(100));
        loop {
            let stop = tokio::select! {
                _ = shutdown.cancelled() => true,
                _ = tokio::time::sleep(interval) => false,
            };
            if !reservoir.is_empty() {
                let r = reservoir.clone();
                let p = path.clone();
                match tokio::task::spawn_blocking(move || r.flush(&p)).await {
                    Ok(Ok(n)) => tracing::debug!(requests = n, "traffic sample flushed"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "traffic sample flush failed"),
                    Err(e) => tracing::warn!(error = %e, "traffic sample flush task failed"),
                }
            }
            if stop {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aegis_engine::config::units::Size;

    fn parts(path: &str) -> http::request::Parts {
        let (p, ()) = http::Request::builder()
            .uri(path)
            .header("host", "example.com")
            .header("authorization", "Bearer secret")
            .header("x-api-key", "k")
            .header("accept", "*/*")
            .header("content-length", "1234")
            .body(())
            .unwrap()
            .into_parts();
        p
    }

    #[test]
    fn bounded_uniform_and_redacted() {
        let r = Reservoir::new(100, vec!["X-Api-Key".into()]);
        let ip = "10.0.0.1".parse().unwrap();
        for i in 0..10_000 {
            r.offer(&parts(&format!("/p/{i}")), ip, None, 200);
        }
        assert_eq!(r.len(), 100);
        let s = r.snapshot();
        // Uniform: the kept requests are spread over the whole stream.
        let late = s
            .requests
            .iter()
            .filter(|q| q.path["/p/".len()..].parse::<u32>().unwrap() >= 5000)
            .count();
        assert!((25..=75).contains(&late), "{late}");
        for q in &s.requests {
            for (n, v) in &q.headers {
                match n.as_str() {
                    "authorization" => assert_eq!(v, "Bearer aaaaaa"),
                    "x-api-key" => assert_eq!(v, "a"),
                    _ => {}
                }
            }
            assert_eq!(q.host.as_deref(), Some("example.com"));
            assert_eq!(q.body_len, 1234);
            assert!(q.at_ms > 0);
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sample.jsonl");
        assert_eq!(r.flush(&p).unwrap(), 100);
        let (back, rep) = TrafficSample::read_file(&p).unwrap();
        assert_eq!(back.requests.len(), 100);
        assert_eq!(rep.invalid_lines, 0);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn heads_are_cut_and_memory_is_bounded() {
        let r = Reservoir::from_settings(&SampleSettings {
            capacity: 1000,
            max_head_bytes: Size(1024),
            max_bytes: Size(64 << 10),
            ..SampleSettings::default()
        });
        let ip = "10.0.0.1".parse().unwrap();
        for i in 0..5000 {
            let (p, ()) = http::Request::builder()
                .uri(format!("/p/{i}"))
                .header("x-small", "1")
                .header("x-pad", "p".repeat(4000))
                .header("x-after", "2")
                .body(())
                .unwrap()
                .into_parts();
            r.offer(&p, ip, None, 200);
        }
        assert!(r.bytes() <= 64 << 10, "{}", r.bytes());
        assert!(r.len() > 50, "{}", r.len());
        let stats = r.stats();
        assert!(stats.truncated >= r.len() as u64, "{stats:?}");
        for q in r.snapshot().requests {
            let names: Vec<&str> = q.headers.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["x-small", "x-after"]);
            assert_eq!((q.omitted_headers, q.omitted_header_bytes), (1, 4009));
        }
        // A path alone over the cap is dropped, not stored.
        let (p, ()) = http::Request::builder()
            .uri(format!("/{}", "a".repeat(2000)))
            .body(())
            .unwrap()
            .into_parts();
        let before = r.stats().dropped;
        if let Some(slot) = r.choose() {
            r.fill(slot, head(&p, ip, None, 200));
            assert_eq!(r.stats().dropped, before + 1);
        }
    }
}
