//! The demo backend: a small, fast upstream with knobs for tests and demos.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::util::Rng;

/// The endpoints, as shown by `aegis-loadgen backend --help`.
pub const ENDPOINTS: &str = "\
Endpoints (every response carries `x-backend: NAME`):
  GET  /                   200 with body `NAME\\n` (any other path does the same)
  GET  /healthz            200 `ok\\n`
  ANY  /echo               200 JSON: backend, method, path, query, version, headers
                           (object, repeated names joined by \", \"), header_list
                           (pairs in order), body_len, remote_addr
  ANY  /delay/MS           waits MS milliseconds, then answers as `/`
  ANY  /bytes/N            200 with a body of N bytes (at most 64 MiB)
  ANY  /status/CODE        answers with status CODE
  ANY  /close              drops the connection without answering
  POST /admin/freeze?ms=N  freezes the backend for N ms: every request arriving
                           in that window waits until the freeze ends (shows
                           coordinated omission); answers at once
  GET  /admin/stats        JSON: backend name, requests served (admin excluded)
                           and connections accepted
Query parameters understood on every non-admin path:
  delay_ms=MS              wait MS milliseconds before answering
  fail=P                   answer 500 with probability P (0.0 to 1.0)
With --fail-share P every non-admin request fails with probability P (a `fail=`
parameter overrides it).";

/// Backend settings.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub listen: SocketAddr,
    pub name: String,
    /// Share of requests answered 500 (0.0 to 1.0).
    pub fail_share: f64,
    /// Worker threads (default: one per core).
    pub threads: Option<usize>,
    /// Serve TLS with this certificate chain and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl BackendConfig {
    pub fn new(listen: SocketAddr, name: &str) -> Self {
        Self {
            listen,
            name: name.to_string(),
            fail_share: 0.0,
            threads: None,
            tls: None,
        }
    }
}

struct State {
    name: String,
    body: Bytes,
    header: HeaderValue,
    fail_share: f64,
    epoch: Instant,
    /// Microseconds since `epoch` until which the backend is frozen.
    frozen_until_us: AtomicU64,
    served: AtomicU64,
    connections: AtomicU64,
}

impl State {
    fn freeze(&self, d: Duration) {
        let until = self.epoch.elapsed().saturating_add(d).as_micros();
        let until = u64::try_from(until).unwrap_or(u64::MAX);
        self.frozen_until_us.fetch_max(until, Ordering::SeqCst);
    }

    async fn wait_unfrozen(&self) {
        loop {
            let until = self.frozen_until_us.load(Ordering::SeqCst);
            let until = self.epoch + Duration::from_micros(until);
            if Instant::now() >= until {
                return;
            }
            tokio::time::sleep_until(until.into()).await;
        }
    }
}

/// A backend running on its own runtime; stops when dropped.
pub struct BackendHandle {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackendHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Freezes the backend for `d` (as `POST /admin/freeze`).
    pub fn freeze(&self, d: Duration) {
        self.state.freeze(d);
    }

    /// Non-admin requests served so far.
    pub fn served(&self) -> u64 {
        self.state.served.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }
}

impl Drop for BackendHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn build_state(cfg: &BackendConfig) -> anyhow::Result<Arc<State>> {
    let header = HeaderValue::from_str(&cfg.name)
        .with_context(|| format!("backend name {:?} is not a valid header value", cfg.name))?;
    if !(0.0..=1.0).contains(&cfg.fail_share) {
        anyhow::bail!("--fail-share must be between 0 and 1");
    }
    Ok(Arc::new(State {
        name: cfg.name.clone(),
        body: Bytes::from(format!("{}\n", cfg.name)),
        header,
        fail_share: cfg.fail_share,
        epoch: Instant::now(),
        frozen_until_us: AtomicU64::new(0),
        served: AtomicU64::new(0),
        connections: AtomicU64::new(0),
    }))
}

fn build_runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = threads {
        b.worker_threads(t.max(1));
    }
    b.enable_all()
        .thread_name("backend")
        .build()
        .context("building the backend runtime")
}

fn tls_acceptor(cfg: &BackendConfig) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let Some((cert, key)) = &cfg.tls else {
        return Ok(None);
    };
    crate::tls::install_provider();
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate and key")?;
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(sc))))
}

/// Starts a backend on a background thread. Use port 0 to get a free port.
pub fn spawn(cfg: BackendConfig) -> anyhow::Result<BackendHandle> {
    let state = build_state(&cfg)?;
    let acceptor = tls_acceptor(&cfg)?;
    let std_listener = std::net::TcpListener::bind(cfg.listen)
        .with_context(|| format!("binding {}", cfg.listen))?;
    std_listener
        .set_nonblocking(true)
        .context("set_nonblocking")?;
    let addr = std_listener.local_addr().context("local_addr")?;
    let rt = build_runtime(cfg.threads)?;
    let (tx, rx) = watch::channel(false);
    let st = state.clone();
    let thread = std::thread::Builder::new()
        .name("backend-main".into())
        .spawn(move || {
            rt.block_on(async move {
                match TcpListener::from_std(std_listener) {
                    Ok(listener) => serve(listener, st, acceptor, rx).await,
                    Err(e) => eprintln!("backend: {e}"),
                }
            });
            rt.shutdown_timeout(Duration::from_millis(100));
        })
        .context("spawning the backend thread")?;
    Ok(BackendHandle {
        addr,
        state,
        shutdown: tx,
        thread: Some(thread),
    })
}

/// Runs a backend in the foreground until Ctrl-C; `on_ready` gets the bound
/// address.
pub fn run_forever(cfg: BackendConfig, on_ready: impl FnOnce(SocketAddr)) -> anyhow::Result<()> {
    let state = build_state(&cfg)?;
    let acceptor = tls_acceptor(&cfg)?;
    let rt = build_runtime(cfg.threads)?;
    rt.block_on(async move {
        let listener = TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("binding {}", cfg.listen))?;
        on_ready(listener.local_addr().context("local_addr")?);
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            crate::stop_signal().await;
            let _ = tx.send(true);
        });
        serve(listener, state, acceptor, rx).await;
        Ok::<(), anyhow::Error>(())
    })?;
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(_) => {
                // Out of descriptors or a connection gone before accept.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        state.connections.fetch_add(1, Ordering::Relaxed);
        let state = state.clone();
        let builder = builder.clone();
        let acceptor = acceptor.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(state.clone(), peer, req));
            match acceptor {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    tokio::select! { _ = conn => {}, _ = stop.changed() => {} }
                }
                Some(acc) => {
                    if let Ok(tls) = acc.accept(stream).await {
                        let conn = builder.serve_connection(TokioIo::new(tls), svc);
                        tokio::select! { _ = conn => {}, _ = stop.changed() => {} }
                    }
                }
            }
        });
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
struct CloseConnection;

impl std::fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection closed on request (/close)")
    }
}

impl std::error::Error for CloseConnection {}

thread_local! {
    static RNG: RefCell<Rng> = RefCell::new(Rng::new(seed_from_time()));
}

fn seed_from_time() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let id = std::thread::current().id();
    nanos ^ (format!("{id:?}").len() as u64).wrapping_mul(0x9E37_79B9)
}

fn chance(p: f64) -> bool {
    p > 0.0 && RNG.with(|r| r.borrow_mut().next_f64()) < p
}

fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

fn text(state: &State, status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert("x-backend", state.header.clone());
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

fn json(state: &State, status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = text(state, status, Bytes::from(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[derive(Serialize)]
struct Echo<'a> {
    backend: &'a str,
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    version: String,
    headers: serde_json::Map<String, serde_json::Value>,
    header_list: Vec<(String, String)>,
    body_len: u64,
    remote_addr: String,
}

async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, BoxError> {
    let head = req.method() == Method::HEAD;
    let resp = respond(state, peer, req).await?;
    if !head {
        return Ok(resp);
    }
    // HEAD: the headers of the GET answer, no body (HTTP/2 rejects one).
    let (mut parts, body) = resp.into_parts();
    let len = body
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    parts
        .headers
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok(Response::from_parts(parts, Full::new(Bytes::new())))
}

async fn respond(
    state: Arc<State>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, BoxError> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let query = parts.uri.query();

    if let Some(admin) = path.strip_prefix("/admin/") {
        return Ok(match (admin, &parts.method) {
            ("freeze", &Method::POST) => {
                let ms: u64 = query_param(query, "ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1000);
                state.freeze(Duration::from_millis(ms));
                json(
                    &state,
                    StatusCode::OK,
                    &serde_json::json!({ "frozen_ms": ms }),
                )
            }
            ("stats", _) => json(
                &state,
                StatusCode::OK,
                &serde_json::json!({
                    "backend": state.name,
                    "requests": state.served.load(Ordering::SeqCst),
                    "connections": state.connections.load(Ordering::SeqCst),
                }),
            ),
            _ => text(
                &state,
                StatusCode::NOT_FOUND,
                Bytes::from_static(b"unknown admin endpoint\n"),
            ),
        });
    }
    state.served.fetch_add(1, Ordering::Relaxed);
    state.wait_unfrozen().await;

    // Read (and count) the request body.
    let mut body = body;
    let mut body_len: u64 = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            body_len += data.len() as u64;
        }
    }

    let delay = path
        .strip_prefix("/delay/")
        .and_then(|ms| ms.parse::<u64>().ok())
        .or_else(|| query_param(query, "delay_ms").and_then(|v| v.parse().ok()));
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    let fail = query_param(query, "fail")
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(state.fail_share);
    if chance(fail) {
        let body = Bytes::from(format!("{}: injected failure\n", state.name));
        return Ok(text(&state, StatusCode::INTERNAL_SERVER_ERROR, body));
    }

    if path == "/healthz" {
        return Ok(text(&state, StatusCode::OK, Bytes::from_static(b"ok\n")));
    }
    if path == "/close" {
        return Err(Box::new(CloseConnection));
    }
    if path == "/echo" {
        let mut headers = serde_json::Map::new();
        let mut header_list = Vec::with_capacity(parts.headers.len());
        for (name, value) in &parts.headers {
            let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
            header_list.push((name.as_str().to_string(), v.clone()));
            match headers.get_mut(name.as_str()) {
                Some(serde_json::Value::String(prev)) => {
                    prev.push_str(", ");
                    prev.push_str(&v);
                }
                _ => {
                    headers.insert(name.as_str().to_string(), serde_json::Value::String(v));
                }
            }
        }
        let echo = Echo {
            backend: &state.name,
            method: parts.method.as_str(),
            path,
            query,
            version: format!("{:?}", parts.version),
            headers,
            header_list,
            body_len,
            remote_addr: peer.to_string(),
        };
        return Ok(json(&state, StatusCode::OK, &echo));
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        return Ok(match n.parse::<usize>() {
            Ok(n) if n <= 64 * 1024 * 1024 => {
                let mut resp = text(&state, StatusCode::OK, Bytes::from(vec![b'x'; n]));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                resp
            }
            _ => text(
                &state,
                StatusCode::BAD_REQUEST,
                Bytes::from_static(b"bad size\n"),
            ),
        });
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return Ok(
            match code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
            {
                Some(status) => text(&state, status, state.body.clone()),
                None => text(
                    &state,
                    StatusCode::BAD_REQUEST,
                    Bytes::from_static(b"bad status\n"),
                ),
            },
        );
    }
    Ok(text(&state, StatusCode::OK, state.body.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params() {
        assert_eq!(query_param(Some("a=1&fail=0.5"), "fail"), Some("0.5"));
        assert_eq!(query_param(Some("a=1"), "fail"), None);
        assert_eq!(query_param(None, "fail"), None);
        assert_eq!(query_param(Some("flag"), "flag"), Some(""));
    }
}
