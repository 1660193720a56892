//! The traffic sample a serving process keeps: a bounded, uniformly sampled
//! reservoir (Algorithm R) of recent request heads, secrets redacted, flushed
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

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use aegis_engine::sample::{SampledRequest, TrafficSample};

use super::store::atomic_write;
use crate::pipeline::RequestOutcome;

/// Largest sample file written; requests past it are left out.
pub const MAX_SAMPLE_FILE: usize = 32 << 20;

struct Inner {
    items: Vec<SampledRequest>,
    seen: u64,
}

/// A reservoir of request heads.
pub struct Reservoir {
    capacity: usize,
    secret_headers: Vec<String>,
    inner: Mutex<Inner>,
    rng: AtomicU64,
}

/// A slot reserved for a request that was chosen, filled once its response
/// is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Push,
    Replace(usize),
}

impl Reservoir {
    pub fn new(capacity: usize, secret_headers: Vec<String>) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15)
            | 1;
        Self {
            capacity,
            secret_headers,
            inner: Mutex::new(Inner {
                items: Vec::new(),
                seen: 0,
            }),
            rng: AtomicU64::new(seed),
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

    /// Decides whether the next request is kept (Algorithm R).
    pub fn choose(&self) -> Option<Slot> {
        if self.capacity == 0 {
            return None;
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.seen = g.seen.saturating_add(1);
        if g.items.len() < self.capacity {
            return Some(Slot::Push);
        }
        let j = self.next_random() % g.seen.max(1);
        usize::try_from(j)
            .ok()
            .filter(|j| *j < self.capacity)
            .map(Slot::Replace)
    }

    /// Records a chosen request with its outcome.
    pub fn fill(&self, slot: Slot, mut req: SampledRequest) {
        req.redact(&self.secret_headers);
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match slot {
            Slot::Push if g.items.len() < self.capacity => g.items.push(req),
            Slot::Push => {}
            Slot::Replace(i) => {
                if let Some(s) = g.items.get_mut(i) {
                    *s = req;
                }
            }
        }
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
            self.fill(slot, head(parts, client, outcome, status));
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

    /// Writes the reservoir to `path` (atomically, at most
    /// [`MAX_SAMPLE_FILE`] bytes) and restarts the recency window.
    pub fn flush(&self, path: &Path) -> std::io::Result<usize> {
        let items = {
            let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            g.seen = u64::try_from(g.items.len()).unwrap_or(u64::MAX);
            g.items.clone()
        };
        let mut buf = Vec::new();
        let mut written = 0usize;
        for r in &items {
            let Ok(line) = serde_json::to_vec(r) else {
                continue;
            };
            if buf.len().saturating_add(line.len()).saturating_add(1) > MAX_SAMPLE_FILE {
                break;
            }
            buf.extend_from_slice(&line);
            buf.push(b'\n');
            written = written.saturating_add(1);
        }
        atomic_write(path, &buf)?;
        Ok(written)
    }

    /// The current contents (tests, `aegis check`).
    pub fn snapshot(&self) -> TrafficSample {
        TrafficSample {
            requests: self
                .inner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .items
                .clone(),
        }
    }
}

/// A request head as the sample records it (unredacted: [`Reservoir::fill`]
/// redacts).
pub fn head(
    parts: &http::request::Parts,
    client: std::net::IpAddr,
    outcome: Option<&RequestOutcome>,
    status: u16,
) -> SampledRequest {
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()));
    SampledRequest {
        method: parts.method.to_string(),
        scheme: parts.uri.scheme_str().unwrap_or("http").to_string(),
        host,
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts
            .headers
            .iter()
            .filter(|(n, _)| *n != http::header::HOST)
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        client_ip: client,
        body_len: 0,
        status: Some(status),
        route: outcome.and_then(|o| o.route.clone()),
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

    fn parts(path: &str) -> http::request::Parts {
        let (p, ()) = http::Request::builder()
            .uri(path)
            .header("host", "example.com")
            .header("authorization", "Bearer secret")
            .header("x-api-key", "k")
            .header("accept", "*/*")
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
                if n == "authorization" || n == "x-api-key" {
                    assert_eq!(v, aegis_engine::sample::REDACTED);
                }
            }
            assert_eq!(q.host.as_deref(), Some("example.com"));
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sample.jsonl");
        assert_eq!(r.flush(&p).unwrap(), 100);
        let (back, rep) = TrafficSample::read_file(&p).unwrap();
        assert_eq!(back.requests.len(), 100);
        assert_eq!(rep.invalid_lines, 0);
    }
}
