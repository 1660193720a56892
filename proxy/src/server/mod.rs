//! Listeners: plain HTTP/1.1 with h2c prior knowledge, and TLS (rustls, ALPN
//! h2 and http/1.1) with certificates chosen by SNI from the active config,
//! so they swap with it. Each connection gets a [`ClientInfo`] extension on
//! its requests and is served by the pipeline; nothing about a request is
//! decided here. Graceful drain: when the shutdown token fires, listeners stop
//! accepting and connections finish their requests in flight.

pub mod framing;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::pipeline::{AmbiguousFraming, ClientInfo, Connector, Pipeline};

/// Connection-level options of a listener.
#[derive(Debug, Clone)]
pub struct ConnOptions {
    /// Bound on a request head (HTTP/1 read buffer, HTTP/2 header list);
    /// from `limits.max_header_bytes`. Heads a little over the limit reach the
    /// pipeline (431 there); far over it, hyper answers 431 itself.
    pub max_header_bytes: usize,
    /// Time to read a request head before the connection is dropped.
    pub header_read_timeout: Duration,
    /// Time for a TLS handshake.
    pub handshake_timeout: Duration,
}

impl Default for ConnOptions {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 << 10,
            header_read_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

fn builder(opts: &ConnOptions) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // The read buffer bounds the head; leave room above the pipeline's own
    // limit so the pipeline answers the near misses with its 431.
    let buf = opts.max_header_bytes.saturating_add(16 << 10).max(8192);
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .max_buf_size(buf);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(buf).unwrap_or(u32::MAX));
    b
}

/// A running listener: wait on it to know its connections have drained.
pub struct ListenerTask {
    pub local_addr: SocketAddr,
    pub handle: tokio::task::JoinHandle<()>,
}

async fn serve_conn<C, I>(
    io: I,
    info: ClientInfo,
    pipeline: Pipeline<C>,
    opts: &ConnOptions,
    graceful: &GracefulShutdown,
) where
    C: Connector,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (io, verdicts) = framing::FramingProbe::new(io);
    let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        req.extensions_mut().insert(info);
        if req.version() < http::Version::HTTP_2 && verdicts.next_is_ambiguous() {
            req.extensions_mut().insert(AmbiguousFraming);
        }
        pipeline.clone().oneshot(req)
    });
    let builder = builder(opts);
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .into_owned();
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    });
}

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
        let mut stopping = false;
        while let Some((stream, peer)) = next_conn(&listener, &shutdown, &mut stopping).await {
            let _ = stream.set_nodelay(true);
            let info = ClientInfo {
                addr: peer,
                tls: false,
            };
            serve_conn(stream, info, pipeline.clone(), &opts, &graceful).await;
        }
        drop(listener);
        drain(graceful, drain_timeout).await;
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
        let mut stopping = false;
        while let Some((stream, peer)) = next_conn(&listener, &shutdown, &mut stopping).await {
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let pipeline = pipeline.clone();
            let opts = opts.clone();
            let graceful = graceful.clone();
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
                };
                serve_conn(tls, info, pipeline, &opts, &graceful).await;
            });
        }
        drop(listener);
        match Arc::try_unwrap(graceful) {
            Ok(g) => drain(g, drain_timeout).await,
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
                            drain(inner, left).await;
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

/// The next connection to serve. After `shutdown`, the connections the
/// kernel already queued are still taken (until the queue stays empty for a
/// moment), so stopping a worker resets none that completed their handshake;
/// other workers sharing the socket keep accepting new ones.
async fn next_conn(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    stopping: &mut bool,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        if *stopping {
            return match tokio::time::timeout(Duration::from_millis(2), listener.accept()).await {
                Ok(Ok(x)) => Some(x),
                _ => None,
            };
        }
        tokio::select! {
            _ = shutdown.cancelled() => *stopping = true,
            r = listener.accept() => match r {
                Ok(x) => return Some(x),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

/// How long connections keep going after accepting stopped, before the
/// graceful close: a client that connected just before the stop has its
/// request head read and served, instead of finding its idle-looking
/// connection closed.
const LINGER: Duration = Duration::from_millis(300);

async fn drain(graceful: GracefulShutdown, timeout: Duration) {
    tokio::time::sleep(LINGER.min(timeout)).await;
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
