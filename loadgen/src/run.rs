//! The load engine: closed loop (connections as fast as they go) and open
//! loop (a fixed rate, latency measured from intended send times).
//!
//! Connections are spread over `threads` OS threads, each running a
//! single-threaded tokio runtime (as wrk's threads run their own event loop).
//! Every connection is one task that owns one keep-alive HTTP/1.1 connection
//! (the minimal client in [`crate::h1`]: requests serialized once, responses
//! parsed in place) or one HTTP/2 connection (hyper), and keeps at most one
//! request in flight on it. Each thread records into its own
//! HdrHistogram; the histograms are merged at the end.
//!
//! In the open loop, connection `c` of `C` sends the requests numbered
//! `c, c + C, c + 2C, ...`, request `i` being intended for `start + i / rate`.
//! Latency runs from the intended time, so a request held up behind a slow
//! one carries the wait (wrk2's answer to coordinated omission). tokio's timer
//! has 1 ms granularity, so a request may leave up to ~1 ms after its
//! intended time; that delay is counted (the error is on the pessimistic side).

use std::cell::RefCell;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::h1::H1Conn;
use crate::report::{ErrorKind, Report, ReportMeta, Stats, new_histogram};
use crate::scenario::{Picker, Prepared, RequestSpec, Scenario, prepare};
use crate::util::Rng;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// `http://host:port/path` or `https://...`. Without a scenario every
    /// request is a GET of this URL's path.
    pub target: String,
    pub connections: usize,
    /// HTTP/2 only: requests in flight on each connection (default 1).
    pub streams: usize,
    pub threads: usize,
    /// Stop after this long (default 10 s when `requests` is not set).
    pub duration: Option<Duration>,
    /// Stop after exactly this many requests.
    pub requests: Option<u64>,
    /// Open loop at this many requests per second (all connections together).
    pub rate: Option<f64>,
    /// HTTP/2 (h2c prior knowledge on http, ALPN h2 on https).
    pub http2: bool,
    /// Trust anchors for https (PEM); default the system bundle.
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate.
    pub insecure: bool,
    /// The request mix; `None` = GET the target URL.
    pub scenario: Option<Scenario>,
    /// Statuses accepted when there is no scenario (empty = any).
    pub expect: Vec<u16>,
    /// Per-request timeout (connect, send and the whole response).
    pub timeout: Duration,
    /// Print a live line every second on stderr.
    pub live: bool,
    /// Seed of the per-connection request pickers.
    pub seed: u64,
    /// Set to stop early (Ctrl-C); the report covers what ran.
    pub stop: Arc<AtomicBool>,
}

impl RunConfig {
    pub fn new(target: &str) -> Self {
        Self {
            target: target.to_string(),
            connections: 10,
            streams: 1,
            threads: 2,
            duration: None,
            requests: None,
            rate: None,
            http2: false,
            ca_file: None,
            insecure: false,
            scenario: None,
            expect: Vec::new(),
            timeout: Duration::from_secs(5),
            live: false,
            seed: 1,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// The parsed target URL.
#[derive(Debug, Clone)]
pub struct Target {
    pub https: bool,
    pub host: String,
    pub port: u16,
    pub authority: String,
    pub path_and_query: String,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("invalid target URL {url:?}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => bail!("unsupported scheme {other:?} in {url:?} (use http or https)"),
            None => bail!("the target {url:?} needs a scheme (http:// or https://)"),
        };
        let auth = uri
            .authority()
            .with_context(|| format!("no host in {url:?}"))?;
        let port = auth.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let path_and_query = if path_and_query.is_empty() {
            "/".to_string()
        } else {
            path_and_query
        };
        Ok(Self {
            https,
            host: auth.host().to_string(),
            port,
            authority: auth.as_str().to_string(),
            path_and_query,
        })
    }

    /// Resolves the host once. With several addresses (`localhost` as ::1
    /// and 127.0.0.1), the first that accepts a connection is used.
    fn resolve(&self) -> anyhow::Result<SocketAddr> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = (host, self.port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {}", self.host))?
            .collect();
        let first = *addrs
            .first()
            .with_context(|| format!("{} has no address", self.host))?;
        if addrs.len() == 1 {
            return Ok(first);
        }
        Ok(addrs
            .iter()
            .copied()
            .find(|a| std::net::TcpStream::connect_timeout(a, Duration::from_secs(1)).is_ok())
            .unwrap_or(first))
    }
}

struct OpenLoop {
    /// Nanoseconds between two consecutive requests (all connections).
    interval_ns: f64,
}

struct Shared {
    addr: SocketAddr,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    http2: bool,
    prepared: Vec<Prepared>,
    picker: Picker,
    timeout: Duration,
    start: Instant,
    deadline: Option<Instant>,
    requests: Option<u64>,
    tickets: AtomicU64,
    open: Option<OpenLoop>,
    /// Request loops in all: connections times streams.
    loops: u64,
    streams: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
    live: Option<Arc<Live>>,
}

/// Per-thread snapshots for the live line, refreshed twice a second.
struct Live {
    slots: Mutex<Vec<LiveSlot>>,
}

struct LiveSlot {
    latency: Histogram<u64>,
    responses: u64,
    errors: u64,
}

/// Runs the load and returns the report.
pub fn run(cfg: &RunConfig) -> anyhow::Result<Report> {
    let target = Target::parse(&cfg.target)?;
    if cfg.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if let Some(r) = cfg.rate
        && !(r.is_finite() && r > 0.0)
    {
        bail!("--rate must be a positive number");
    }
    let streams = cfg.streams.max(1);
    if streams > 1 && !cfg.http2 {
        bail!("--streams needs --http2 (HTTP/1.1 has one request in flight per connection)");
    }
    if cfg.requests == Some(0) {
        bail!("--requests must be at least 1");
    }
    let threads = cfg.threads.clamp(1, cfg.connections);
    let addr = target.resolve()?;
    let scheme = if target.https { "https" } else { "http" };
    let scenario = match &cfg.scenario {
        Some(s) => {
            s.validate()?;
            s.clone()
        }
        None => Scenario {
            expect: cfg.expect.clone(),
            ..Scenario::single(RequestSpec {
                name: None,
                weight: 1,
                method: "GET".into(),
                host: None,
                path: target.path_and_query.clone(),
                headers: Default::default(),
                body_size: 0,
                expect: Vec::new(),
            })
        },
    };
    let prepared = prepare(&scenario, scheme, &target.authority, cfg.http2)?;
    let tls = if target.https {
        let config = crate::tls::client_config(cfg.ca_file.as_deref(), cfg.insecure, cfg.http2)?;
        let name = crate::tls::server_name(&target.host)?;
        Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
    } else {
        None
    };
    let live = if cfg.live {
        let mut slots = Vec::with_capacity(threads);
        for _ in 0..threads {
            slots.push(LiveSlot {
                latency: new_histogram()?,
                responses: 0,
                errors: 0,
            });
        }
        Some(Arc::new(Live {
            slots: Mutex::new(slots),
        }))
    } else {
        None
    };
    // In the open loop, give the connections a moment to be established
    // before the first intended send time.
    let lead = if cfg.rate.is_some() {
        Duration::from_millis(20)
    } else {
        Duration::ZERO
    };
    let start = Instant::now() + lead;
    let duration = match (cfg.duration, cfg.requests) {
        (None, None) => Some(Duration::from_secs(10)),
        (d, _) => d,
    };
    let shared = Arc::new(Shared {
        addr,
        tls,
        http2: cfg.http2,
        prepared,
        picker: scenario.picker(),
        timeout: cfg.timeout,
        start,
        deadline: duration.map(|d| start + d),
        requests: cfg.requests,
        tickets: AtomicU64::new(0),
        open: cfg.rate.map(|r| OpenLoop {
            interval_ns: 1e9 / r,
        }),
        loops: (cfg.connections * streams) as u64,
        streams,
        seed: cfg.seed,
        stop: cfg.stop.clone(),
        live: live.clone(),
    });

    let (done_tx, done_rx) = mpsc::channel::<()>();
    let printer = match &live {
        Some(live) => {
            let live = live.clone();
            Some(
                std::thread::Builder::new()
                    .name("live".into())
                    .spawn(move || live_printer(&live, start, &done_rx))
                    .context("spawning the live printer")?,
            )
        }
        None => None,
    };

    let mut workers = Vec::with_capacity(threads);
    for t in 0..threads {
        let conns: Vec<usize> = (t..cfg.connections).step_by(threads).collect();
        let shared = shared.clone();
        workers.push(
            std::thread::Builder::new()
                .name(format!("loadgen-{t}"))
                .spawn(move || worker(shared, t, conns))
                .context("spawning a worker thread")?,
        );
    }
    let mut total = Stats::new().context("creating the histogram")?;
    let mut failure = None;
    for w in workers {
        match w.join() {
            Ok(Ok(stats)) => total.merge(&stats),
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some(anyhow::anyhow!("a worker thread panicked")),
        }
    }
    let elapsed = Instant::now()
        .saturating_duration_since(start)
        .as_secs_f64();
    drop(done_tx);
    if let Some(p) = printer {
        let _ = p.join();
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let meta = ReportMeta {
        target: cfg.target.clone(),
        mode: if cfg.rate.is_some() { "open" } else { "closed" }.to_string(),
        protocol: if cfg.http2 { "http2" } else { "http1" }.to_string(),
        connections: cfg.connections,
        streams,
        threads,
        rate: cfg.rate,
    };
    Ok(Report::from_stats(&total, elapsed, meta))
}

fn live_printer(live: &Live, start: Instant, done: &mpsc::Receiver<()>) {
    let Ok(mut merged) = new_histogram() else {
        return;
    };
    let mut last_responses = 0u64;
    let mut last_at = Instant::now();
    while let Err(mpsc::RecvTimeoutError::Timeout) = done.recv_timeout(Duration::from_secs(1)) {
        merged.reset();
        let (mut responses, mut errors) = (0u64, 0u64);
        if let Ok(slots) = live.slots.lock() {
            for s in slots.iter() {
                let _ = merged.add(&s.latency);
                responses += s.responses;
                errors += s.errors;
            }
        }
        let now = Instant::now();
        let dt = now
            .saturating_duration_since(last_at)
            .as_secs_f64()
            .max(1e-3);
        let rps = responses.saturating_sub(last_responses) as f64 / dt;
        last_responses = responses;
        last_at = now;
        let p99 = merged.value_at_quantile(0.99) as f64 / 1000.0;
        eprintln!(
            "[{:>5.1}s] {:>10.0} req/s  {:>10} responses  {:>6} errors  p99 {:.2} ms",
            now.saturating_duration_since(start).as_secs_f64(),
            rps,
            responses,
            errors,
            p99
        );
    }
}

fn worker(shared: Arc<Shared>, index: usize, conns: Vec<usize>) -> anyhow::Result<Stats> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a worker runtime")?;
    let stats = Rc::new(RefCell::new(Stats::new().context("creating a histogram")?));
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let mut tasks = Vec::with_capacity(conns.len());
        for c in conns {
            // With several HTTP/2 streams per connection, the connection's
            // request loops share it through a slot.
            let slot = (shared.streams > 1).then(|| Rc::new(H2Slot::default()));
            for st in 0..shared.streams {
                let lp = c * shared.streams + st;
                tasks.push(tokio::task::spawn_local(connection(
                    shared.clone(),
                    stats.clone(),
                    lp,
                    slot.clone(),
                )));
            }
        }
        let ticker = shared.live.clone().map(|live| {
            let stats = stats.clone();
            tokio::task::spawn_local(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    publish(&live, index, &stats.borrow());
                }
            })
        });
        for t in tasks {
            let _ = t.await;
        }
        if let Some(t) = ticker {
            t.abort();
        }
    });
    if let Some(live) = &shared.live {
        publish(live, index, &stats.borrow());
    }
    let stats = stats.borrow().clone();
    Ok(stats)
}

fn publish(live: &Live, index: usize, stats: &Stats) {
    if let Ok(mut slots) = live.slots.lock()
        && let Some(slot) = slots.get_mut(index)
    {
        let _ = slot.latency.set_to(&stats.latency);
        slot.responses = stats.responses;
        slot.errors = stats.error_total();
    }
}

/// An HTTP/2 connection shared by several request loops.
#[derive(Default)]
struct H2Slot {
    inner: RefCell<H2SlotInner>,
    connected: tokio::sync::Notify,
}

#[derive(Default)]
struct H2SlotInner {
    sender: Option<hyper::client::conn::http2::SendRequest<Full<Bytes>>>,
    generation: u64,
    connecting: bool,
}

/// A connection for a request loop: its own, or a handle on the shared
/// HTTP/2 connection (opened by whichever loop needs it first).
async fn acquire(
    shared: &Shared,
    slot: Option<&H2Slot>,
    generation: &mut u64,
) -> Result<Conn, ErrorKind> {
    let Some(slot) = slot else {
        return connect(shared).await;
    };
    loop {
        let notified = slot.connected.notified();
        let busy = {
            let inner = slot.inner.borrow();
            if let Some(sender) = &inner.sender {
                *generation = inner.generation;
                return Ok(Conn::H2(sender.clone()));
            }
            inner.connecting
        };
        if busy {
            // Another loop is connecting: wait for it, then look again.
            notified.await;
            continue;
        }
        slot.inner.borrow_mut().connecting = true;
        let result = connect(shared).await;
        let mut inner = slot.inner.borrow_mut();
        inner.connecting = false;
        if let Ok(Conn::H2(sender)) = &result {
            inner.generation += 1;
            inner.sender = Some(sender.clone());
            *generation = inner.generation;
        }
        slot.connected.notify_waiters();
        return result;
    }
}

/// Drops the shared connection if it is still the one that failed.
fn invalidate(slot: Option<&H2Slot>, generation: u64) {
    if let Some(slot) = slot {
        let mut inner = slot.inner.borrow_mut();
        if inner.generation == generation {
            inner.sender = None;
        }
    }
}

/// One request loop: a connection, or one stream of an HTTP/2 connection.
async fn connection(
    shared: Arc<Shared>,
    stats: Rc<RefCell<Stats>>,
    c: usize,
    slot: Option<Rc<H2Slot>>,
) {
    let slot = slot.as_deref();
    let mut generation = 0u64;
    let mut rng = Rng::new(shared.seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let open = shared.open.as_ref();
    let past_deadline = |t: Instant| shared.deadline.is_some_and(|d| t >= d);
    // Connect up front so the first request does not pay for it (a failure
    // is retried, and counted, at the first request).
    let mut conn: Option<Conn> = if past_deadline(Instant::now()) {
        None
    } else {
        acquire(&shared, slot, &mut generation).await.ok()
    };
    let mut k: u64 = 0;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let intended = match open {
            Some(o) => {
                let i = c as u64 + k * shared.loops;
                if shared.requests.is_some_and(|n| i >= n) {
                    break;
                }
                let t = shared.start + Duration::from_nanos((i as f64 * o.interval_ns) as u64);
                if past_deadline(t) {
                    break;
                }
                Some(t)
            }
            None => {
                if let Some(n) = shared.requests
                    && shared.tickets.fetch_add(1, Ordering::Relaxed) >= n
                {
                    break;
                }
                if past_deadline(Instant::now()) {
                    break;
                }
                None
            }
        };
        k += 1;
        if let Some(t) = intended
            && t > Instant::now()
        {
            tokio::time::sleep_until(t.into()).await;
        }
        if let Some(cn) = conn.as_mut()
            && cn.ready().await.is_err()
        {
            conn = None;
            invalidate(slot, generation);
        }
        let cn = match conn.as_mut() {
            Some(cn) => cn,
            None => match acquire(&shared, slot, &mut generation).await {
                Ok(cn) => conn.insert(cn),
                Err(kind) => {
                    stats.borrow_mut().record_error(kind);
                    if intended.is_none() {
                        // Do not spin against a dead target.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    continue;
                }
            },
        };
        let Some(p) = shared.prepared.get(shared.picker.pick(&mut rng)) else {
            continue;
        };
        let begin = intended.unwrap_or_else(Instant::now);
        let result = tokio::time::timeout(shared.timeout, cn.send(p)).await;
        let end = Instant::now();
        match result {
            Ok(Ok((status, bytes))) => {
                let us = u64::try_from(end.saturating_duration_since(begin).as_micros())
                    .unwrap_or(u64::MAX);
                let mut s = stats.borrow_mut();
                s.record_response(status, us, bytes);
                if !p.expect.allows(status) {
                    s.record_error(ErrorKind::UnexpectedStatus);
                }
            }
            Ok(Err(kind)) => {
                stats.borrow_mut().record_error(kind);
                // A shared HTTP/2 connection stays in its slot: a stream
                // error leaves it usable, and a connection error shows up in
                // `ready` on the next request, which then replaces it.
                conn = None;
            }
            Err(_) => {
                stats.borrow_mut().record_error(ErrorKind::Timeout);
                conn = None;
            }
        }
    }
}

enum Conn {
    Tcp(H1Conn<TcpStream>),
    Tls(Box<H1Conn<tokio_rustls::client::TlsStream<TcpStream>>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    async fn ready(&mut self) -> Result<(), ErrorKind> {
        match self {
            Conn::Tcp(c) if c.is_reusable() => Ok(()),
            Conn::Tls(c) if c.is_reusable() => Ok(()),
            Conn::Tcp(_) | Conn::Tls(_) => Err(ErrorKind::Reset),
            Conn::H2(s) => s.ready().await.map_err(|e| classify_hyper(&e)),
        }
    }

    async fn send(&mut self, p: &Prepared) -> Result<(u16, u64), ErrorKind> {
        match self {
            Conn::Tcp(c) => c.round_trip(&p.wire, p.head).await,
            Conn::Tls(c) => c.round_trip(&p.wire, p.head).await,
            Conn::H2(s) => {
                let mut req = Request::new(Full::new(p.body.clone()));
                *req.method_mut() = p.method.clone();
                *req.uri_mut() = p.uri.clone();
                *req.headers_mut() = p.headers.clone();
                *req.version_mut() = Version::HTTP_2;
                let resp = s.send_request(req).await.map_err(|e| classify_hyper(&e))?;
                let status = resp.status().as_u16();
                let mut body = resp.into_body();
                let mut bytes = 0u64;
                while let Some(frame) = body.frame().await {
                    let frame = frame.map_err(|e| classify_hyper(&e))?;
                    if let Some(d) = frame.data_ref() {
                        bytes += d.len() as u64;
                    }
                }
                Ok((status, bytes))
            }
        }
    }
}

async fn connect(shared: &Shared) -> Result<Conn, ErrorKind> {
    let fut = async {
        let tcp = TcpStream::connect(shared.addr)
            .await
            .map_err(|e| classify_io(&e, ErrorKind::Connect))?;
        let _ = tcp.set_nodelay(true);
        match (&shared.tls, shared.http2) {
            (None, false) => Ok(Conn::Tcp(H1Conn::new(tcp))),
            (None, true) => handshake_h2(TokioIo::new(tcp)).await,
            (Some((connector, name)), h2) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| classify_io(&e, ErrorKind::Tls))?;
                if h2 {
                    handshake_h2(TokioIo::new(tls)).await
                } else {
                    Ok(Conn::Tls(Box::new(H1Conn::new(tls))))
                }
            }
        }
    };
    tokio::time::timeout(shared.timeout, fut)
        .await
        .unwrap_or(Err(ErrorKind::Timeout))
}

async fn handshake_h2<T>(io: T) -> Result<Conn, ErrorKind>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(io)
        .await
        .map_err(|e| classify_hyper(&e))?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    Ok(Conn::H2(sender))
}

fn classify_io(e: &std::io::Error, default: ErrorKind) -> ErrorKind {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => ErrorKind::Refused,
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
            ErrorKind::Reset
        }
        K::TimedOut => ErrorKind::Timeout,
        _ => default,
    }
}

fn classify_hyper(e: &hyper::Error) -> ErrorKind {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return classify_io(io, ErrorKind::Other);
        }
        source = s.source();
    }
    if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        ErrorKind::Reset
    } else if e.is_parse() {
        ErrorKind::Protocol
    } else {
        // HTTP/2 stream resets and GOAWAYs end up here.
        let text = e.to_string().to_ascii_lowercase();
        if text.contains("reset") || text.contains("go away") || text.contains("goaway") {
            ErrorKind::Reset
        } else {
            ErrorKind::Protocol
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t = Target::parse("http://127.0.0.1:8080/x?y=1").unwrap();
        assert!(!t.https);
        assert_eq!(t.port, 8080);
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path_and_query, "/x?y=1");
        let t = Target::parse("https://example.com").unwrap();
        assert!(t.https);
        assert_eq!(t.port, 443);
        assert_eq!(t.path_and_query, "/");
        assert!(Target::parse("ftp://x").is_err());
        assert!(Target::parse("localhost:80").is_err());
    }
}
