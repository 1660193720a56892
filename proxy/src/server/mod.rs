//! Listeners: plain HTTP/1.1 with h2c prior knowledge, and TLS (rustls, ALPN
//! h2 and http/1.1) with certificates chosen by SNI from the active config,
//! so they swap with it. Each connection's copy of the pipeline knows its
//! [`ClientInfo`]; nothing about a request is decided here. HTTP/1.1 is
//! served by Aegis's own loop ([`h1`]) until a connection sends something
//! only hyper serves (HTTP/1.0, chunked or still-arriving bodies, upgrades,
//! malformed heads); HTTP/2 and the rest of such a connection are hyper's.
//! Graceful drain: when the shutdown token fires, listeners stop accepting
//! and connections finish their requests in flight.
//!
//! Connection-level limits live here too: the per-process connection cap
//! (accepting pauses at it, and backs off when the process runs out of
//! descriptors, instead of spinning on `accept failed`), the `overloaded`
//! state that reports either, the header timeout with its 408, and the send
//! timeout for clients that stop reading. On TLS the negotiated ALPN
//! protocol is the protocol spoken.

pub mod framing;
mod h1;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::pipeline::{AmbiguousFraming, ClientInfo, Connector, Pipeline};

/// Connection-level options of a listener.
#[derive(Debug, Clone)]
pub struct ConnOptions {
    /// Bound on a request head (HTTP/1 read buffer, HTTP/2 header list);
    /// from `limits.max_header_bytes`. Heads a little over the limit reach the
    /// pipeline (431 there); far over it, hyper answers 431 itself. It also
    /// sets the HTTP/1 header-field count ([`max_header_fields`]).
    pub max_header_bytes: usize,
    /// Time to read a request head (`limits.client_header_timeout`): an
    /// incomplete head then gets 408, an idle connection is closed.
    pub header_read_timeout: Duration,
    /// Time for a TLS handshake.
    pub handshake_timeout: Duration,
    /// Longest a write to the client may block (`limits.send_timeout`).
    pub send_timeout: Duration,
    /// Client connections this process serves at once
    /// (`limits.max_connections`, resolved: never 0).
    pub max_connections: usize,
    /// On stop, first take the connections already queued on the socket.
    /// Off for another worker slot's socket taken over for a while: its own
    /// worker (or the supervisor, which keeps the socket) takes them.
    pub take_queued_on_stop: bool,
}

impl Default for ConnOptions {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 << 10,
            header_read_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(60),
            max_connections: auto_max_connections(),
            take_queued_on_stop: true,
        }
    }
}

/// `limits.max_connections: 0`: half the descriptors the soft
/// `RLIMIT_NOFILE` allows (each client connection may need an upstream
/// one), less 64 for listeners, logs and health checks; at least 16.
pub fn auto_max_connections() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    (soft.saturating_sub(64) / 2).clamp(16, 1 << 20)
}

/// The HTTP/1 header-field count for a `max_header_bytes`: a field counts
/// at least 32 bytes (2 048 fields at the default 64 KiB), and never fewer
/// than hyper's own fixed default of 100.
pub fn max_header_fields(max_header_bytes: usize) -> usize {
    (max_header_bytes / 32).clamp(100, 8192)
}

/// hyper's HTTP/1 read buffer, which bounds the head: room above the
/// pipeline's own limit, so the pipeline answers the near misses with its
/// 431.
fn head_buf(opts: &ConnOptions) -> usize {
    opts.max_header_bytes.saturating_add(16 << 10).max(8192)
}

/// hyper's HTTP/1-only server, for connections that may not turn HTTP/2
/// (ALPN `http/1.1`, or after an HTTP/1 request): the auto builder's
/// `serve_connection_with_upgrades` looks for the HTTP/2 preface even when
/// told `http1_only`.
fn http1_builder(opts: &ConnOptions) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .max_headers(max_header_fields(opts.max_header_bytes))
        .max_buf_size(head_buf(opts));
    b
}

fn builder(opts: &ConnOptions) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    let buf = head_buf(opts);
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .max_headers(max_header_fields(opts.max_header_bytes))
        .max_buf_size(buf);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(buf).unwrap_or(u32::MAX))
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW);
    b
}

/// HTTP/2 streams one client connection may have open at once: nginx's
/// `http2_max_concurrent_streams` default, and the most upstream requests
/// one client connection can have in flight (hyper's default is 200).
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// How much request body one stream may send ahead of what the upstream has
/// taken: a quarter of the connection's window, so four uploads on one
/// connection each get a full window (hyper's default gives the first
/// stream all of it).
pub const H2_STREAM_WINDOW: u32 = 256 << 10;
/// How much request body one client connection may make this process hold
/// (1 MiB, hyper's default, kept: it is the per-connection memory bound).
pub const H2_CONNECTION_WINDOW: u32 = 1 << 20;

/// Load of this process's listeners: what `overloaded` reports.
struct Load {
    active: AtomicUsize,
    /// When accepting last paused at the cap or failed for want of
    /// resources (ms since `epoch`, at least 1; 0: never).
    overloaded_at_ms: AtomicU64,
    epoch: Instant,
    freed: tokio::sync::Notify,
}

fn load() -> &'static Load {
    static LOAD: std::sync::OnceLock<Load> = std::sync::OnceLock::new();
    LOAD.get_or_init(|| Load {
        active: AtomicUsize::new(0),
        overloaded_at_ms: AtomicU64::new(0),
        epoch: Instant::now(),
        freed: tokio::sync::Notify::new(),
    })
}

/// How long `overloaded` stays set after the last pause or resource
/// failure, so that a probe once a second does not miss a state that
/// flickers.
const OVERLOAD_HOLD: Duration = Duration::from_secs(5);

fn mark_overloaded() {
    let l = load();
    let now = u64::try_from(l.epoch.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    l.overloaded_at_ms.store(now, Ordering::Relaxed);
    metrics::gauge!("aegis_overloaded").set(1.0);
}

/// True while this process is at its connection cap, or was within the
/// last few seconds, or accepting failed for want of descriptors or
/// memory. A worker reports it in its health answer; the metric is
/// `aegis_overloaded`.
pub fn overloaded() -> bool {
    let l = load();
    let at = l.overloaded_at_ms.load(Ordering::Relaxed);
    let now = u64::try_from(l.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
    let hold = u64::try_from(OVERLOAD_HOLD.as_millis()).unwrap_or(u64::MAX);
    let on = at != 0 && now.saturating_sub(at) < hold;
    if !on && at != 0 {
        metrics::gauge!("aegis_overloaded").set(0.0);
    }
    on
}

/// Client connections open in this process.
pub fn active_connections() -> usize {
    load().active.load(Ordering::Relaxed)
}

/// Held by a served connection; frees its place under the cap.
pub struct ConnSlot(());

impl ConnSlot {
    fn take() -> Self {
        let n = load()
            .active
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        metrics::gauge!("aegis_connections_active").set(n as f64);
        ConnSlot(())
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let l = load();
        let n = l.active.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        metrics::gauge!("aegis_connections_active").set(n as f64);
        l.freed.notify_waiters();
    }
}

/// What hyper's HTTP/1 header timeout does not send: a 408 to a client
/// whose head was still coming (an idle connection is closed silently, as
/// nginx does: a 408 there races the client's next request).
const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 20\r\n\r\n408 Request Timeout\n";

/// Counts a header timeout and answers it with [`REQUEST_TIMEOUT`], within a
/// second, then closes: both HTTP/1 paths end a head that stopped coming
/// this way.
async fn answer_request_timeout<S: tokio::io::AsyncWrite + Unpin>(s: &mut S) {
    metrics::counter!("aegis_request_header_timeouts_total").increment(1);
    let answer = async {
        s.write_all(REQUEST_TIMEOUT).await?;
        s.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

/// True when `e` (from a connection future) is hyper's header timeout.
fn is_header_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>()
            && h.is_timeout()
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alpn {
    /// Plain listener, or TLS without ALPN: detected from the first bytes.
    Detect,
    /// ALPN `h2`: HTTP/2 only (RFC 9113 §3.3; h2spec http2/3.5/2).
    H2,
    /// ALPN `http/1.1`: HTTP/1 only.
    Http1,
}

/// A running listener: wait on it to know its connections have drained.
pub struct ListenerTask {
    pub local_addr: SocketAddr,
    pub handle: tokio::task::JoinHandle<()>,
}

/// Set when a listener starts draining: from then on every HTTP/1 response
/// carries `Connection: close`, so a keep-alive client learns from the
/// answer to its next request that the connection ends, instead of finding
/// it closed under a request it has just sent (the graceful close that
/// follows [`LAME_DUCK`] then finds these connections already gone).
#[derive(Clone, Default)]
struct Closing(Arc<std::sync::atomic::AtomicBool>);

impl Closing {
    fn start(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A connection's listener-side context.
struct Listening<'a> {
    opts: &'a ConnOptions,
    graceful: &'a GracefulShutdown,
    closing: &'a Closing,
    stop: &'a CancellationToken,
}

/// Serves one connection in its own task: HTTP/1.1 by Aegis's own loop
/// ([`h1`]) until it meets something only hyper serves, HTTP/2 and the
/// rest by hyper.
fn serve_conn<C, I>(
    io: I,
    info: ClientInfo,
    pipeline: Pipeline<C>,
    at: &Listening<'_>,
    alpn: Alpn,
    slot: ConnSlot,
) where
    C: Connector,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The client travels with the connection's copy of the pipeline, not
    // as an extension of each request.
    let mut pipeline = pipeline.for_connection(info);
    // Counted by the drain from now on, whichever server serves it.
    let watcher = at.graceful.watcher();
    let opts = at.opts.clone();
    let closing = at.closing.clone();
    let stop = at.stop.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let served = match alpn {
            Alpn::H2 => h1::Served::HandOff(io, bytes::Bytes::new(), true),
            Alpn::Http1 | Alpn::Detect => {
                let ctx = h1::ConnCtx {
                    header_read_timeout: opts.header_read_timeout,
                    send_timeout: opts.send_timeout,
                    detect_h2: alpn == Alpn::Detect,
                    closing: &closing,
                    stop: &stop,
                };
                h1::serve(io, &mut pipeline, &ctx).await
            }
        };
        if let h1::Served::HandOff(io, read, first) = served {
            // After an HTTP/1 request, the connection stays HTTP/1: an
            // HTTP/2 preface there is a malformed request, not a switch.
            let alpn = if first { alpn } else { Alpn::Http1 };
            let io = h1::Rewind::new(io, read);
            serve_hyper(io, pipeline, &opts, watcher, &closing, &stop, alpn).await;
        }
    });
}

/// hyper serves the rest of a connection: HTTP/2, and HTTP/1 from the
/// first request Aegis's own loop does not serve.
async fn serve_hyper<C, I>(
    io: I,
    pipeline: Pipeline<C>,
    opts: &ConnOptions,
    watcher: hyper_util::server::graceful::Watcher,
    closing: &Closing,
    stop: &CancellationToken,
    alpn: Alpn,
) where
    C: Connector,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (io, stream) = framing::HandBack::new(io);
    let (io, verdicts, head) =
        framing::FramingProbe::with_timeouts(io, opts.header_read_timeout, opts.send_timeout);
    let closing = closing.clone();
    let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        let http1 = req.version() < http::Version::HTTP_2;
        if http1 && verdicts.next_is_ambiguous() {
            req.extensions_mut().insert(AmbiguousFraming);
        }
        let answer = pipeline.clone().oneshot(req);
        let closing = closing.clone();
        async move {
            let Ok(mut resp) = answer.await;
            // `respond: {status: 444}`: an error makes hyper drop the
            // connection (HTTP/1) or reset the stream (HTTP/2) unanswered.
            if resp
                .extensions()
                .get::<crate::pipeline::CloseWithoutAnswer>()
                .is_some()
            {
                return Err(CloseWithoutAnswer);
            }
            if http1 && closing.is_set() && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, CloseWithoutAnswer>(resp)
        }
    });
    let builder = builder(opts);
    let io = TokioIo::new(io);
    let conn: ConnFuture = match alpn {
        Alpn::H2 => {
            Box::pin(watcher.watch(builder.http2_only().serve_connection(io, svc).into_owned()))
        }
        Alpn::Http1 => {
            // hyper-util's watcher cannot watch this connection type: the
            // listener's stop token starts its graceful close instead, and
            // the watcher is held so the drain waits for it all the same.
            let conn = http1_builder(opts)
                .serve_connection(io, svc)
                .with_upgrades();
            let stop = stop.clone();
            Box::pin(async move {
                let _counted = watcher;
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => return r.map_err(Into::into),
                    () = stop.cancelled() => {}
                }
                conn.as_mut().graceful_shutdown();
                conn.await.map_err(Into::into)
            })
        }
        Alpn::Detect => {
            Box::pin(watcher.watch(builder.serve_connection_with_upgrades(io, svc).into_owned()))
        }
    };
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "connection ended with an error");
        let taken = stream.lock().unwrap_or_else(|p| p.into_inner()).take();
        if is_header_timeout(e.as_ref())
            && head.pending()
            && let Some(mut s) = taken
        {
            answer_request_timeout(&mut s).await;
        }
    }
}

type ConnFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>
            + Send,
    >,
>;

/// Serves plain HTTP on `listener` until `shutdown`, then drains.
pub fn serve_plain<C: Connector>(
    listener: TcpListener,
    pipeline: Pipeline<C>,
    opts: ConnOptions,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) -> std::io::Result<ListenerTask> {
    let local_addr = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        let closing = Closing::default();
        let stop = CancellationToken::new();
        let mut stopping = false;
        while let Some((stream, peer, slot)) =
            next_conn(&listener, &shutdown, &mut stopping, &opts).await
        {
            let _ = stream.set_nodelay(true);
            let info = ClientInfo {
                addr: peer,
                tls: false,
                local_port: local_addr.port(),
            };
            let at = Listening {
                opts: &opts,
                graceful: &graceful,
                closing: &closing,
                stop: &stop,
            };
            serve_conn(stream, info, pipeline.clone(), &at, Alpn::Detect, slot);
        }
        drop(listener);
        drain(graceful, &closing, &stop, drain_timeout).await;
    });
    Ok(ListenerTask { local_addr, handle })
}

/// Serves TLS on `listener` until `shutdown`, then drains.
pub fn serve_tls<C: Connector>(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    pipeline: Pipeline<C>,
    opts: ConnOptions,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) -> std::io::Result<ListenerTask> {
    let local_addr = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        let graceful = Arc::new(GracefulShutdown::new());
        let closing = Closing::default();
        let stop = CancellationToken::new();
        let mut stopping = false;
        while let Some((stream, peer, slot)) =
            next_conn(&listener, &shutdown, &mut stopping, &opts).await
        {
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let pipeline = pipeline.clone();
            let opts = opts.clone();
            let graceful = graceful.clone();
            let closing = closing.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let tls =
                    match tokio::time::timeout(opts.handshake_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            metrics::counter!("aegis_tls_handshake_failures_total").increment(1);
                            return;
                        }
                        Err(_) => return,
                    };
                let info = ClientInfo {
                    addr: peer,
                    tls: true,
                    local_port: local_addr.port(),
                };
                let alpn = match tls.get_ref().1.alpn_protocol() {
                    Some(b"h2") => Alpn::H2,
                    Some(_) => Alpn::Http1,
                    None => Alpn::Detect,
                };
                let at = Listening {
                    opts: &opts,
                    graceful: &graceful,
                    closing: &closing,
                    stop: &stop,
                };
                serve_conn(tls, info, pipeline, &at, alpn, slot);
            });
        }
        drop(listener);
        closing.start();
        match Arc::try_unwrap(graceful) {
            Ok(g) => drain(g, &closing, &stop, drain_timeout).await,
            Err(g) => {
                // Handshakes still running hold a reference; give them the
                // same drain time.
                let deadline = tokio::time::Instant::now() + drain_timeout;
                let mut g = g;
                loop {
                    match Arc::try_unwrap(g) {
                        Ok(inner) => {
                            let left =
                                deadline.saturating_duration_since(tokio::time::Instant::now());
                            drain(inner, &closing, &stop, left).await;
                            break;
                        }
                        Err(again) => {
                            if tokio::time::Instant::now() >= deadline {
                                break;
                            }
                            g = again;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }
        }
    });
    Ok(ListenerTask { local_addr, handle })
}

/// The next connection to serve, with its place under the cap. After
/// `shutdown`, the connections the kernel already queued are still taken
/// (until the queue stays empty for a moment), so stopping a worker resets
/// none that completed their handshake; other workers sharing the socket
/// keep accepting new ones.
///
/// At `max` open connections accepting pauses until one closes: the kernel
/// queues new ones, and other workers sharing the socket take them. When
/// `accept` fails for want of descriptors or memory (EMFILE, ENFILE,
/// ENOBUFS, ENOMEM) it backs off, doubling from 10 ms to 1 s, and logs once
/// a second at most: retrying at once only spins. Both set `overloaded`.
async fn next_conn(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    stopping: &mut bool,
    opts: &ConnOptions,
) -> Option<(tokio::net::TcpStream, SocketAddr, ConnSlot)> {
    let max = opts.max_connections;
    let mut backoff = Duration::from_millis(10);
    let mut last_warn: Option<Instant> = None;
    let mut failed: u64 = 0;
    loop {
        if *stopping {
            if !opts.take_queued_on_stop {
                return None;
            }
            return match tokio::time::timeout(Duration::from_millis(2), listener.accept()).await {
                Ok(Ok((s, a))) => Some((s, a, ConnSlot::take())),
                _ => None,
            };
        }
        let l = load();
        if l.active.load(Ordering::Relaxed) >= max.max(1) {
            mark_overloaded();
            metrics::counter!("aegis_accept_paused_total").increment(1);
            if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                tracing::warn!(max, "connection limit reached: accepting paused");
                last_warn = Some(Instant::now());
            }
            let freed = l.freed.notified();
            tokio::select! {
                _ = shutdown.cancelled() => *stopping = true,
                _ = freed => {}
                // A wake-up may race the count: look again soon anyway.
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => *stopping = true,
            r = listener.accept() => match r {
                Ok((s, a)) => return Some((s, a, ConnSlot::take())),
                Err(e) => {
                    use nix::errno::Errno;
                    let resource = e.raw_os_error().is_some_and(|n| {
                        [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM]
                            .contains(&Errno::from_raw(n))
                    });
                    metrics::counter!("aegis_accept_errors_total").increment(1);
                    failed = failed.saturating_add(1);
                    if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(error = %e, failed, "accept failed");
                        last_warn = Some(Instant::now());
                        failed = 0;
                    }
                    if resource {
                        mark_overloaded();
                        tokio::time::sleep(backoff).await;
                        backoff = backoff.saturating_mul(2).min(Duration::from_secs(1));
                    } else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            },
        }
    }
}

/// How long connections keep going after accepting stopped, before the
/// graceful close. Meanwhile every HTTP/1 response says `Connection: close`
/// ([`Closing`]), so a keep-alive client that sends another request in this
/// window gets its answer and a clean close rather than a reset; a client
/// that connected just before the stop has its request head read and
/// served. Only connections idle for the whole window are closed under a
/// client that might be about to send (nginx closes idle keep-alive
/// connections at once on a graceful stop). HTTP/2 clients get a GOAWAY at
/// the graceful close and finish their streams.
const LAME_DUCK: Duration = Duration::from_secs(1);

async fn drain(
    graceful: GracefulShutdown,
    closing: &Closing,
    stop: &CancellationToken,
    timeout: Duration,
) {
    closing.start();
    // The lame-duck window ends early once every connection is gone (a
    // process with no clients stops at once).
    let until = tokio::time::Instant::now() + LAME_DUCK.min(timeout);
    while graceful.count() > 0 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Aegis's own HTTP/1 loop closes idle connections and ends the others
    // after their response; hyper's get its graceful close.
    stop.cancel();
    if tokio::time::timeout(timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?timeout,
            "drain timeout: closing connections with requests in flight"
        );
    }
}

/// The service error that closes a connection without an answer.
#[derive(Debug)]
struct CloseWithoutAnswer;

impl std::fmt::Display for CloseWithoutAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("closed without an answer (respond 444)")
    }
}

impl std::error::Error for CloseWithoutAnswer {}
