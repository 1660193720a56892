//! Upstream pools: endpoint selection by the pool's balance policy, health
//! state (active checks and passive ejection), a keep-alive connection pool
//! per endpoint, timeouts and retries. [`PooledConnector`] is the real
//! [`Connector`]; the sandbox plugs in its own.
//!
//! Connections are HTTP/1.1, one request at a time, returned to the
//! endpoint's idle list when the response body ends and dropped when it does
//! not. Requests go through the lean client of [`h1`], driven in the
//! request's own task; a request asking for an upgrade goes through hyper's
//! `client::conn::http1` (the pipeline tunnels with hyper's `OnUpgrade`), and
//! the connection it leaves behind after a non-101 answer is pooled as such. A request is retried on another endpoint when it
//! never left (connect failure, or a pooled connection found closed before
//! the request was written), for any method, as nginx does; after it left,
//! only idempotent requests without a body are retried.

pub mod balance;
mod h1;
pub mod health;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use aegis_engine::CompiledConfig;
use aegis_engine::compiled::UpstreamPool;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use crate::pipeline::{
    BoxError, Connector, ForwardCtx, Forwarded, ProxyBody, UpstreamError, boxed, is_idempotent,
};

/// Idle connections kept per endpoint at most. Below it the pool keeps as
/// many as were in use at once lately (`Endpoint::idle_cap`): a burst's
/// connections are reused by the next burst of the same size, and a quiet
/// endpoint does not hold 256 sockets open on the upstream.
pub const MAX_IDLE_PER_ENDPOINT: usize = 256;
/// Idle connections kept per endpoint whatever the recent concurrency.
pub const MIN_IDLE_PER_ENDPOINT: usize = 4;
/// How long an idle upstream connection is kept (nginx's upstream
/// `keepalive_timeout` default).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

type Sender = http1::SendRequest<ProxyBody>;

/// A connection in the idle list.
enum PoolConn {
    /// The lean client's connection (every request but upgrades).
    Lean(h1::Conn),
    /// Hyper's client, left by an upgrade request answered without 101.
    Hyper(Sender),
}

impl PoolConn {
    fn is_usable(&mut self) -> bool {
        match self {
            PoolConn::Lean(c) => c.is_usable(),
            PoolConn::Hyper(s) => !s.is_closed(),
        }
    }
}

struct IdleConn {
    conn: PoolConn,
    since: Instant,
}

/// Live state of one endpoint of one pool, kept across versions while the
/// pool names the address: health, ejection, connections. What a version
/// says of the endpoint (weight, backup) is in its [`Member`], and the pool's
/// settings are read from the request's version, so a promotion changes
/// them at once.
pub struct Endpoint {
    pub pool: String,
    pub address: Arc<str>,
    /// Active health: false after `fall` failed checks, true after `rise` good ones.
    healthy: AtomicBool,
    /// Passive ejection: when it was last ejected (ms since `epoch`), or
    /// [`NEVER`]. The end is computed with the current `fail_timeout`.
    ejected_at_ms: AtomicU64,
    /// Requests in flight (least_conn).
    active: AtomicUsize,
    /// The most requests in flight at once since `peak_since_ms`: how many
    /// idle connections are worth keeping.
    peak: AtomicUsize,
    peak_since_ms: AtomicU64,
    idle: Mutex<Vec<IdleConn>>,
    passive: Mutex<PassiveState>,
    pub(crate) check: Mutex<health::CheckState>,
    epoch: Instant,
}

#[derive(Default)]
struct PassiveState {
    fails: u32,
    window_start: Option<Instant>,
}

const NEVER: u64 = u64::MAX;

impl Endpoint {
    fn new(pool: &str, address: &str, epoch: Instant) -> Self {
        Self {
            pool: pool.to_string(),
            address: Arc::from(address),
            healthy: AtomicBool::new(true),
            ejected_at_ms: AtomicU64::new(NEVER),
            active: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            peak_since_ms: AtomicU64::new(0),
            idle: Mutex::new(Vec::new()),
            passive: Mutex::new(PassiveState::default()),
            check: Mutex::new(health::CheckState::default()),
            epoch,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Usable under `spec` (the pool as the request's version has it):
    /// healthy by the active checks, if it has any, and not passively
    /// ejected, if it counts failures.
    pub fn is_available(&self, spec: &UpstreamPool) -> bool {
        (spec.health_check.is_none() || self.is_healthy()) && !self.is_ejected(spec)
    }

    /// Up by the active checks (or the pool has none); passive ejection
    /// aside. When no endpoint is available, the balancer falls back to
    /// these: an ejection is a guess from a few failures, a failed check a
    /// verdict.
    pub fn passes_checks(&self, spec: &UpstreamPool) -> bool {
        spec.health_check.is_none() || self.is_healthy()
    }

    fn is_ejected(&self, spec: &UpstreamPool) -> bool {
        let at = self.ejected_at_ms.load(Ordering::Relaxed);
        if at == NEVER || spec.max_fails == 0 {
            return false;
        }
        let window = u64::try_from(spec.fail_timeout.as_millis()).unwrap_or(u64::MAX);
        self.now_ms() < at.saturating_add(window)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub(crate) fn set_healthy(&self, up: bool) {
        let was = self.healthy.swap(up, Ordering::Relaxed);
        metrics::gauge!("aegis_upstream_endpoint_healthy", "upstream" => self.pool.clone(), "endpoint" => self.address.to_string())
            .set(if up { 1.0 } else { 0.0 });
        if was != up {
            if up {
                tracing::info!(upstream = %self.pool, endpoint = %self.address, "endpoint back up");
            } else {
                tracing::warn!(upstream = %self.pool, endpoint = %self.address, "endpoint down");
                self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
            }
        }
    }

    /// Counts a failed attempt; ejects after `max_fails` within
    /// `fail_timeout`. With `last`, the endpoint is the only one of its pool
    /// still available: it is never ejected (nginx never marks the last
    /// server of an upstream down), or one failed request would answer 503
    /// for `fail_timeout` to everyone.
    fn record_failure(&self, max_fails: u32, fail_timeout: Duration, last: bool) {
        if max_fails == 0 {
            return;
        }
        let now = Instant::now();
        let mut p = self.passive.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = p
            .window_start
            .is_none_or(|s| now.saturating_duration_since(s) > fail_timeout);
        if fresh {
            p.window_start = Some(now);
            p.fails = 0;
        }
        p.fails = p.fails.saturating_add(1);
        if p.fails >= max_fails && last {
            p.fails = 0;
            p.window_start = None;
            metrics::counter!("aegis_upstream_ejections_spared_total", "upstream" => self.pool.clone())
                .increment(1);
            tracing::debug!(upstream = %self.pool, endpoint = %self.address, "last available endpoint: not ejected");
        } else if p.fails >= max_fails {
            self.ejected_at_ms.store(self.now_ms(), Ordering::Relaxed);
            p.fails = 0;
            p.window_start = None;
            tracing::warn!(upstream = %self.pool, endpoint = %self.address, ?fail_timeout, "endpoint ejected after failures");
        }
    }

    fn record_success(&self) {
        let mut p = self.passive.lock().unwrap_or_else(|e| e.into_inner());
        p.fails = 0;
        p.window_start = None;
    }

    /// Counts one more request in flight, for the peak.
    fn started(&self) {
        let now = self
            .active
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    /// Idle connections worth keeping: the peak concurrency of the last
    /// idle timeout (the peak restarts from what is in flight once that
    /// long has passed), within the fixed bounds.
    fn idle_cap(&self) -> usize {
        let now = self.now_ms();
        let since = self.peak_since_ms.load(Ordering::Relaxed);
        let window = u64::try_from(IDLE_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(since) > window {
            self.peak_since_ms.store(now, Ordering::Relaxed);
            self.peak
                .store(self.active.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.peak
            .load(Ordering::Relaxed)
            .clamp(MIN_IDLE_PER_ENDPOINT, MAX_IDLE_PER_ENDPOINT)
    }

    fn checkout(&self) -> Option<PoolConn> {
        loop {
            // The check reads the socket: not under the lock.
            let mut c = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            if c.since.elapsed() < IDLE_TIMEOUT && c.conn.is_usable() {
                return Some(c.conn);
            }
        }
    }

    fn checkin(&self, conn: PoolConn) {
        if matches!(&conn, PoolConn::Hyper(s) if s.is_closed()) || !self.is_healthy() {
            return;
        }
        let cap = self.idle_cap();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < cap {
            idle.push(IdleConn {
                conn,
                since: Instant::now(),
            });
        }
    }
}

/// An endpoint as one version names it: the shared state, with this
/// version's weight and backup flag.
pub struct Member {
    pub endpoint: Arc<Endpoint>,
    pub weight: u32,
    pub backup: bool,
}

/// One pool of one version: its endpoints in config order (balance indexes
/// them), each with the state shared across versions.
pub struct PoolRuntime {
    pub name: Arc<str>,
    pub members: Vec<Member>,
    pub(crate) rr: AtomicUsize,
}

struct PoolSet {
    version: String,
    pools: Vec<Arc<PoolRuntime>>,
}

impl PoolSet {
    /// Built for `config` (its version, every upstream of it).
    fn is_for(&self, config: &CompiledConfig) -> bool {
        self.version == config.version && self.pools.len() == config.upstreams.len()
    }
}

struct Inner {
    /// Endpoint state by (pool, address): kept across config swaps.
    registry: Mutex<HashMap<(String, String), Arc<Endpoint>>>,
    current: ArcSwap<PoolSet>,
    epoch: Instant,
}

/// The real connector: pooled keep-alive HTTP/1.1 to upstream endpoints.
#[derive(Clone)]
pub struct PooledConnector {
    inner: Arc<Inner>,
}

impl Default for PooledConnector {
    fn default() -> Self {
        Self::new()
    }
}

impl PooledConnector {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                registry: Mutex::new(HashMap::new()),
                current: ArcSwap::from_pointee(PoolSet {
                    version: String::new(),
                    pools: Vec::new(),
                }),
                epoch: Instant::now(),
            }),
        }
    }

    /// The pools of `config`, built on first use of a version with the
    /// version's weights and backup flags (endpoint state carries over by
    /// pool name and address).
    pub fn pools(&self, config: &CompiledConfig) -> Vec<Arc<PoolRuntime>> {
        self.pools_for(config, false)
    }

    /// The pool `id` of `config`: on a request's path, so the built version's
    /// pool is taken without copying the list.
    fn pool(
        &self,
        config: &CompiledConfig,
        id: aegis_engine::compiled::UpstreamId,
    ) -> Option<Arc<PoolRuntime>> {
        {
            let cur = self.inner.current.load();
            if cur.is_for(config) {
                return cur.pools.get(id).cloned();
            }
        }
        self.pools(config).get(id).cloned()
    }

    /// As [`PooledConnector::pools`]; with `prune`, endpoint state that
    /// `config` no longer names is dropped. Only the health loop prunes, with
    /// the active config: a request still holding an older snapshot must not
    /// wipe the state of endpoints the new one added.
    pub(crate) fn pools_for(&self, config: &CompiledConfig, prune: bool) -> Vec<Arc<PoolRuntime>> {
        let cur = self.inner.current.load();
        if !prune && cur.is_for(config) {
            return cur.pools.clone();
        }
        drop(cur);
        let mut reg = self
            .inner
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut pools = Vec::with_capacity(config.upstreams.len());
        let mut keep = std::collections::HashSet::new();
        for up in &config.upstreams {
            let mut members = Vec::with_capacity(up.endpoints.len());
            for spec in &up.endpoints {
                let key = (up.name.to_string(), spec.address.clone());
                let endpoint = reg
                    .entry(key.clone())
                    .or_insert_with(|| {
                        let ep = Arc::new(Endpoint::new(&up.name, &spec.address, self.inner.epoch));
                        ep.set_healthy(true);
                        ep
                    })
                    .clone();
                keep.insert(key);
                members.push(Member {
                    endpoint,
                    weight: spec.weight.max(1),
                    backup: spec.backup,
                });
            }
            pools.push(Arc::new(PoolRuntime {
                name: up.name.clone(),
                members,
                rr: AtomicUsize::new(0),
            }));
        }
        if prune {
            reg.retain(|k, _| keep.contains(k));
        }
        let set = Arc::new(PoolSet {
            version: config.version.clone(),
            pools: pools.clone(),
        });
        self.inner.current.store(set);
        pools
    }

    /// Starts the active health checks of the pools of `config` (whatever
    /// config the handle holds at each round). Runs until `shutdown` fires.
    pub fn spawn_health_checks(
        &self,
        config: crate::pipeline::ConfigHandle,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        health::spawn(self.clone(), config, shutdown)
    }

    async fn send_once(
        &self,
        pool: &UpstreamPool,
        ep: &Arc<Endpoint>,
        mut req: Request<ProxyBody>,
        response_timeout: Duration,
        active: ActiveGuard,
    ) -> Result<Response<ProxyBody>, Failure> {
        let upgrade = req.headers().contains_key(http::header::UPGRADE)
            || req.method() == http::Method::CONNECT;
        // A pooled connection first; if it turns out closed before the request
        // was written, a fresh one (the request comes back to us).
        let mut pooled = ep.checkout();
        loop {
            let reused = pooled.is_some();
            let conn = match pooled.take() {
                Some(c) => c,
                None => match connect(ep, pool.connect_timeout).await {
                    Ok(s) => PoolConn::Lean(h1::Conn::new(s)),
                    Err(error) => {
                        return Err(Failure {
                            error,
                            request: Some(req),
                            sent: false,
                        });
                    }
                },
            };
            let conn = match conn {
                PoolConn::Lean(c) if upgrade => {
                    let Some(io) = c.into_io() else { continue };
                    match handshake(ep, io).await {
                        Ok(s) => PoolConn::Hyper(s),
                        Err(error) => {
                            return Err(Failure {
                                error,
                                request: Some(req),
                                sent: false,
                            });
                        }
                    }
                }
                other => other,
            };
            let again = match conn {
                PoolConn::Lean(c) => {
                    match lean_attempt(ep, c, req, reused, response_timeout).await {
                        Attempt::Ok(parts, body) => {
                            return Ok(respond(ep, parts, body, active, response_timeout));
                        }
                        Attempt::Retry(r) => r,
                        Attempt::Failed(f) => return Err(f),
                    }
                }
                PoolConn::Hyper(s) => {
                    match hyper_attempt(ep, s, req, reused, response_timeout).await {
                        Attempt::Ok(parts, body) => {
                            return Ok(respond(ep, parts, body, active, response_timeout));
                        }
                        Attempt::Retry(r) => r,
                        Attempt::Failed(f) => return Err(f),
                    }
                }
            };
            req = again;
        }
    }
}

/// One try of a request on one connection.
enum Attempt<B> {
    /// The response head, and its body still on the connection.
    Ok(http::response::Parts, B),
    /// The pooled connection failed before any of the request left: try
    /// a fresh one with it.
    Retry(Request<ProxyBody>),
    Failed(Failure),
}

/// The response as the pipeline takes it: the body hands the connection
/// back when it ends and carries the in-flight guard.
fn respond<B: PoolBody>(
    ep: &Arc<Endpoint>,
    parts: http::response::Parts,
    inner: B,
    active: ActiveGuard,
    idle: Duration,
) -> Response<ProxyBody> {
    let body = PooledBody {
        inner,
        ep: ep.clone(),
        _active: active,
        idle,
        timer: None,
        waiting: false,
    };
    Response::from_parts(parts, boxed(body))
}

async fn lean_attempt(
    ep: &Endpoint,
    conn: h1::Conn,
    req: Request<ProxyBody>,
    reused: bool,
    response_timeout: Duration,
) -> Attempt<h1::ResponseBody> {
    let protocol = |source: BoxError| UpstreamError::Protocol {
        endpoint: ep.address.to_string(),
        source,
    };
    match tokio::time::timeout(response_timeout, h1::send(conn, req)).await {
        Ok(Ok((head, body))) => {
            let (parts, ()) = head.into_parts();
            Attempt::Ok(parts, body)
        }
        Ok(Err(h1::SendError::NotSent { request, .. })) if reused => Attempt::Retry(*request),
        Ok(Err(h1::SendError::NotSent { request, source })) => Attempt::Failed(Failure {
            error: protocol(Box::new(source)),
            request: Some(*request),
            sent: false,
        }),
        Ok(Err(h1::SendError::ClientBody(source))) => Attempt::Failed(Failure {
            error: UpstreamError::ClientBody { source },
            request: None,
            sent: true,
        }),
        Ok(Err(h1::SendError::Upstream(source))) => Attempt::Failed(Failure {
            error: protocol(source),
            request: None,
            sent: true,
        }),
        Err(_) => Attempt::Failed(Failure {
            error: UpstreamError::Timeout {
                endpoint: ep.address.to_string(),
                timeout: response_timeout,
            },
            request: None,
            sent: true,
        }),
    }
}

async fn hyper_attempt(
    ep: &Endpoint,
    mut sender: Sender,
    req: Request<ProxyBody>,
    reused: bool,
    response_timeout: Duration,
) -> Attempt<HyperBody> {
    if reused && sender.ready().await.is_err() {
        return Attempt::Retry(req);
    }
    let fut = sender.try_send_request(req);
    match tokio::time::timeout(response_timeout, fut).await {
        Ok(Ok(resp)) => {
            let (parts, body) = resp.into_parts();
            Attempt::Ok(
                parts,
                HyperBody {
                    body,
                    sender: Some(sender),
                },
            )
        }
        Ok(Err(mut e)) => match e.take_message() {
            Some(back) if reused => Attempt::Retry(back),
            None if e.error().is_user() => Attempt::Failed(Failure {
                error: UpstreamError::ClientBody {
                    source: Box::new(e.into_error()),
                },
                request: None,
                sent: true,
            }),
            back => Attempt::Failed(Failure {
                error: UpstreamError::Protocol {
                    endpoint: ep.address.to_string(),
                    source: Box::new(e.into_error()),
                },
                sent: back.is_none(),
                request: back,
            }),
        },
        Err(_) => Attempt::Failed(Failure {
            error: UpstreamError::Timeout {
                endpoint: ep.address.to_string(),
                timeout: response_timeout,
            },
            request: None,
            sent: true,
        }),
    }
}

struct Failure {
    error: UpstreamError,
    /// The request, when it never left and can be sent elsewhere.
    request: Option<Request<ProxyBody>>,
    /// Whether any of it may have reached the endpoint.
    sent: bool,
}

async fn resolve(address: &str) -> Result<SocketAddr, std::io::Error> {
    if let Ok(a) = address.parse::<SocketAddr>() {
        return Ok(a);
    }
    tokio::net::lookup_host(address)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
}

async fn connect(ep: &Endpoint, timeout: Duration) -> Result<tokio::net::TcpStream, UpstreamError> {
    let endpoint = ep.address.to_string();
    let attempt = async {
        let addr = resolve(&ep.address).await?;
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        Ok::<_, std::io::Error>(stream)
    };
    let stream = match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(UpstreamError::Connect {
                endpoint,
                source: Box::new(e),
            });
        }
        Err(_) => return Err(UpstreamError::ConnectTimeout { endpoint, timeout }),
    };
    metrics::counter!("aegis_upstream_connections_total").increment(1);
    Ok(stream)
}

/// Hyper's client on a connected socket, for an upgrade request: its
/// connection task runs on its own, with upgrades.
async fn handshake(ep: &Endpoint, stream: tokio::net::TcpStream) -> Result<Sender, UpstreamError> {
    let (sender, conn) = http1::Builder::new()
        .handshake::<_, ProxyBody>(TokioIo::new(stream))
        .await
        .map_err(|e| UpstreamError::Connect {
            endpoint: ep.address.to_string(),
            source: Box::new(e),
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection closed");
        }
    });
    Ok(sender)
}

impl Connector for PooledConnector {
    async fn forward(
        &self,
        ctx: ForwardCtx,
        req: Request<ProxyBody>,
    ) -> Result<Forwarded, UpstreamError> {
        let Some(spec) = ctx.config.upstreams.get(ctx.upstream) else {
            return Err(UpstreamError::UnknownUpstream(ctx.upstream));
        };
        let Some(pool) = self.pool(&ctx.config, ctx.upstream) else {
            return Err(UpstreamError::UnknownUpstream(ctx.upstream));
        };
        let response_timeout = ctx.timeout.unwrap_or(spec.response_timeout);
        let idempotent = is_idempotent(req.method());
        let body_empty = req.body().is_end_stream();
        // The head, kept to rebuild a bodiless idempotent request after a
        // failure past the point of no return: only when a retry can happen
        // at all (another endpoint to try, a retry left), since the copy of
        // every header costs more than the rest of the forwarding.
        let retry_possible = ctx.retries > 0 && pool.members.len() > 1;
        let replay = (retry_possible && idempotent && body_empty).then(|| {
            (
                req.method().clone(),
                req.uri().clone(),
                req.headers().clone(),
            )
        });
        let mut req = Some(req);
        let mut tried: Vec<usize> = Vec::new();
        let mut retries_left = ctx.retries;
        let mut last_err: Option<UpstreamError> = None;
        loop {
            let hash_key = balance::hash_key(spec, ctx.client_ip, req.as_ref());
            let Some(idx) = balance::pick(spec, &pool, &tried, hash_key) else {
                return Err(last_err.unwrap_or(UpstreamError::NoHealthyEndpoint {
                    upstream: spec.name.to_string(),
                }));
            };
            let Some(ep) = pool.members.get(idx).map(|m| m.endpoint.clone()) else {
                return Err(UpstreamError::NoHealthyEndpoint {
                    upstream: spec.name.to_string(),
                });
            };
            let Some(r) = req.take() else {
                return Err(last_err.unwrap_or(UpstreamError::NoHealthyEndpoint {
                    upstream: spec.name.to_string(),
                }));
            };
            ep.started();
            let active = ActiveGuard(ep.clone());
            // The response body carries the in-flight guard itself (one body
            // layer, not two); a failed attempt drops it inside.
            match self.send_once(spec, &ep, r, response_timeout, active).await {
                Ok(response) => {
                    ep.record_success();
                    return Ok(Forwarded {
                        response,
                        endpoint: ep.address.clone(),
                    });
                }
                Err(f) if matches!(f.error, UpstreamError::ClientBody { .. }) => {
                    return Err(f.error);
                }
                Err(f) => {
                    let last = !pool
                        .members
                        .iter()
                        .any(|m| !Arc::ptr_eq(&m.endpoint, &ep) && m.endpoint.is_available(spec));
                    // Out of descriptors here is this process's trouble,
                    // not the endpoint's: never eject for it.
                    if !local_exhaustion(&f.error) {
                        ep.record_failure(spec.max_fails, spec.fail_timeout, last);
                    }
                    tried.push(idx);
                    tracing::debug!(upstream = %spec.name, endpoint = %ep.address, error = %f.error, sent = f.sent, "attempt failed");
                    let again = match (f.request, &replay) {
                        (Some(r), _) => Some(r),
                        (None, Some((m, u, h))) if f.sent => {
                            let mut r = Request::new(crate::pipeline::empty());
                            *r.method_mut() = m.clone();
                            *r.uri_mut() = u.clone();
                            *r.headers_mut() = h.clone();
                            Some(r)
                        }
                        _ => None,
                    };
                    // Timeouts after sending are not retried: the upstream may
                    // still be working on it, and a second try doubles the wait.
                    let timed_out = matches!(f.error, UpstreamError::Timeout { .. });
                    match again {
                        Some(r) if retries_left > 0 && !timed_out => {
                            retries_left = retries_left.saturating_sub(1);
                            req = Some(r);
                            last_err = Some(f.error);
                        }
                        _ => return Err(f.error),
                    }
                }
            }
        }
    }
}

/// A connect that failed for want of descriptors or memory in this process
/// (EMFILE, ENFILE, ENOBUFS, ENOMEM).
fn local_exhaustion(e: &UpstreamError) -> bool {
    let UpstreamError::Connect { source, .. } = e else {
        return false;
    };
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(n) = io.raw_os_error()
        {
            use nix::errno::Errno;
            return [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM]
                .contains(&Errno::from_raw(n));
        }
        cur = err.source();
    }
    false
}

/// Decrements an endpoint's in-flight count when the response is done.
struct ActiveGuard(Arc<Endpoint>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body whose connection can go back to the idle list.
trait PoolBody: Body<Data = Bytes, Error: Into<BoxError>> + Unpin + Send + 'static {
    /// The connection, once the body ended cleanly and it can carry
    /// another request; called at most once that yields one.
    fn take_conn(&mut self) -> Option<PoolConn>;
    /// Closes the connection (the body failed or timed out).
    fn discard(&mut self);
}

/// Hyper's response body and the client it came on.
struct HyperBody {
    body: hyper::body::Incoming,
    sender: Option<Sender>,
}

impl Body for HyperBody {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            self.sender = None;
        }
        polled
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl PoolBody for HyperBody {
    fn take_conn(&mut self) -> Option<PoolConn> {
        self.sender.take().map(PoolConn::Hyper)
    }
    fn discard(&mut self) {
        self.sender = None;
    }
}

impl PoolBody for h1::ResponseBody {
    fn take_conn(&mut self) -> Option<PoolConn> {
        h1::ResponseBody::take_conn(self).map(PoolConn::Lean)
    }
    fn discard(&mut self) {
        h1::ResponseBody::discard(self);
    }
}

/// The upstream response body: hands the connection back when it ends, and
/// fails when the upstream sends nothing for `idle` while we wait on it
/// (nginx's `proxy_read_timeout`; time the client takes to read does not
/// count).
struct PooledBody<B: PoolBody> {
    inner: B,
    ep: Arc<Endpoint>,
    /// Counts the request in flight on the endpoint until the body is gone.
    _active: ActiveGuard,
    idle: Duration,
    /// Made on the first wait: a body already read with its head (most
    /// small responses) never arms a timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    waiting: bool,
}

/// The upstream stopped sending a response body.
#[derive(Debug, thiserror::Error)]
#[error("upstream sent no body bytes for {0:?}")]
pub struct BodyIdleTimeout(pub Duration);

impl<B: PoolBody> PooledBody<B> {
    fn release(&mut self) {
        if let Some(c) = self.inner.take_conn() {
            self.ep.checkin(c);
        }
    }
}

impl<B: PoolBody> Body for PooledBody<B> {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.waiting = false;
                this.release();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.waiting = false;
                this.inner.discard();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(f))) => {
                this.waiting = false;
                // Trailers end an HTTP/1 body, and a length-delimited body
                // may be complete with its last data frame: the reader need
                // not poll again, so hand the connection back now.
                if f.is_trailers() || this.inner.is_end_stream() {
                    this.release();
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    let deadline = tokio::time::Instant::now() + this.idle;
                    match this.timer.as_mut() {
                        Some(t) => t.as_mut().reset(deadline),
                        None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                let fired = this
                    .timer
                    .as_mut()
                    .is_some_and(|t| t.as_mut().poll(cx).is_ready());
                if fired {
                    this.inner.discard();
                    this.waiting = false;
                    Poll::Ready(Some(Err(Box::new(BodyIdleTimeout(this.idle)))))
                } else {
                    Poll::Pending
                }
            }
        }
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: PoolBody> Drop for PooledBody<B> {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aegis_engine::config::{ConfigSource, Limits, SourceFile, compile};

    #[test]
    fn idle_pool_follows_recent_concurrency() {
        let ep = Endpoint::new("p", "127.0.0.1:1", Instant::now());
        assert_eq!(
            ep.idle_cap(),
            MIN_IDLE_PER_ENDPOINT,
            "nothing in flight yet"
        );
        for _ in 0..40 {
            ep.started();
        }
        assert_eq!(ep.idle_cap(), 40);
        for _ in 0..400 {
            ep.started();
        }
        assert_eq!(ep.idle_cap(), MAX_IDLE_PER_ENDPOINT);
        // A window later, the peak restarts from what is in flight.
        ep.active.store(0, Ordering::Relaxed);
        ep.peak_since_ms.store(0, Ordering::Relaxed);
        let later = Endpoint {
            epoch: Instant::now()
                .checked_sub(IDLE_TIMEOUT + Duration::from_secs(1))
                .unwrap(),
            ..ep
        };
        assert_eq!(later.idle_cap(), MIN_IDLE_PER_ENDPOINT);
    }

    fn config(upstream: &str) -> CompiledConfig {
        let text = format!(
            "upstreams:\n  - name: p\n{upstream}routes:\n  - name: r\n    match: {{ path_prefix: \"/\" }}\n    upstream: p\n"
        );
        let src = ConfigSource::from_files(
            std::path::Path::new("/nonexistent"),
            vec![SourceFile {
                name: "routes.yaml".into(),
                text,
            }],
        );
        compile(&src, &Limits::default()).unwrap()
    }

    /// Endpoint addresses picked by `n` round-robin requests.
    fn spread(c: &PooledConnector, cfg: &CompiledConfig, n: usize) -> HashMap<String, usize> {
        let pools = c.pools(cfg);
        let mut out = HashMap::new();
        for _ in 0..n {
            let i = balance::pick(&cfg.upstreams[0], &pools[0], &[], None).unwrap();
            *out.entry(pools[0].members[i].endpoint.address.to_string())
                .or_insert(0) += 1;
        }
        out
    }

    #[test]
    fn promoted_weights_and_backup_take_effect_and_state_carries_over() {
        let c = PooledConnector::new();
        let v1 = config("    endpoints: [\"10.0.0.1:80\", \"10.0.0.2:80\", \"10.0.0.3:80\"]\n");
        let s = spread(&c, &v1, 300);
        assert_eq!(s.get("10.0.0.1:80"), Some(&100), "{s:?}");
        let old = c.pools(&v1)[0].members[0].endpoint.clone();
        old.record_failure(5, Duration::from_secs(10), false);

        let v2 = config(
            "    endpoints:\n      - { address: \"10.0.0.1:80\", weight: 3 }\n      - { address: \"10.0.0.2:80\", backup: true }\n",
        );
        let s = spread(&c, &v2, 300);
        assert_eq!(s.get("10.0.0.1:80"), Some(&300), "{s:?}");
        assert_eq!(s.len(), 1, "backup or removed endpoint picked: {s:?}");
        let pools = c.pools(&v2);
        let p = &pools[0];
        assert!(Arc::ptr_eq(&old, &p.members[0].endpoint), "state kept");
        assert_eq!(old.passive.lock().unwrap().fails, 1, "failure count kept");
        assert_eq!((p.members[0].weight, p.members[0].backup), (3, false));
        assert_eq!((p.members[1].weight, p.members[1].backup), (1, true));

        // Back to the first version: its own weights again.
        let s = spread(&c, &v1, 300);
        assert_eq!(s.get("10.0.0.2:80"), Some(&100), "{s:?}");
    }

    #[test]
    fn ejection_and_health_follow_the_promoted_pool_settings() {
        let c = PooledConnector::new();
        let checked = config(
            "    endpoints: [\"10.0.0.1:80\", \"10.0.0.2:80\"]\n    health_check: { path: /health }\n    passive: { max_fails: 1, fail_timeout: 1h }\n",
        );
        let pools = c.pools(&checked);
        let (a, b) = (
            pools[0].members[0].endpoint.clone(),
            pools[0].members[1].endpoint.clone(),
        );
        a.record_failure(1, Duration::from_secs(3600), false);
        b.set_healthy(false);
        let spec = &checked.upstreams[0];
        assert!(!a.is_available(spec) && !b.is_available(spec));

        // A shorter fail_timeout ends the ejection now; without checks the
        // last verdict no longer counts.
        let relaxed = config(
            "    endpoints: [\"10.0.0.1:80\", \"10.0.0.2:80\"]\n    passive: { max_fails: 1, fail_timeout: 1ms }\n",
        );
        std::thread::sleep(Duration::from_millis(5));
        let spec = &relaxed.upstreams[0];
        assert!(a.is_available(spec) && b.is_available(spec));

        // Passive accounting off: no ejection applies.
        let off = config("    endpoints: [\"10.0.0.1:80\"]\n    passive: { max_fails: 0 }\n");
        a.record_failure(1, Duration::from_secs(3600), false);
        assert!(!a.is_available(&checked.upstreams[0]));
        assert!(a.is_available(&off.upstreams[0]));
    }
}
