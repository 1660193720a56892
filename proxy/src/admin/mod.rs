//! The admin listener: `GET /healthz`, `GET /metrics` (Prometheus text from
//! the metrics exporter, rendered by this handler), and JSON endpoints under
//! `/admin/` that other parts of the proxy register (`/admin/config` is
//! built in; the gate and supervisor add `/admin/verdicts` and
//! `/admin/workers`). Off loopback, every request must carry
//! `Authorization: Bearer <token>`, except `GET`/`POST /ready` (a kubelet's
//! probe carries no token): without the token it answers the status and one
//! line, with it (or on loopback without a token set) the gate's facts as
//! JSON ([`ready`]).

pub mod ready;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::pipeline::ConfigHandle;

/// A JSON endpoint's producer.
pub type JsonFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// More Prometheus text for `/metrics` (the supervisor's merged workers),
/// produced at scrape time.
pub type MetricsFn =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// A `POST` endpoint: the request body (at most [`MAX_POST_BODY`]) in, JSON
/// or a message for a 400 out.
pub type PostFn = Arc<
    dyn Fn(
            Bytes,
        )
            -> std::pin::Pin<Box<dyn Future<Output = Result<serde_json::Value, String>> + Send>>
        + Send
        + Sync,
>;

/// The gate's facts for `GET /ready`.
pub type ReadyFn = Arc<dyn Fn() -> ready::Facts + Send + Sync>;

/// Largest body a `POST` endpoint reads.
pub const MAX_POST_BODY: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "the admin listener {addr} is not on loopback: set a token in ${env} or admin_token_file"
    )]
    TokenRequired { addr: String, env: String },
    #[error("cannot read the admin token file {path}: {source}")]
    TokenFile {
        path: String,
        source: std::io::Error,
    },
    #[error("admin address `{0}` is not host:port")]
    BadAddress(String),
}

/// Shared state of the admin API.
#[derive(Clone)]
pub struct AdminState {
    config: ConfigHandle,
    prometheus: Option<PrometheusHandle>,
    token: Option<Arc<str>>,
    endpoints: Arc<RwLock<HashMap<String, JsonFn>>>,
    metrics_sources: Arc<RwLock<Vec<MetricsFn>>>,
    posts: Arc<RwLock<HashMap<String, PostFn>>>,
    ready: Arc<RwLock<Option<ReadyFn>>>,
}

impl AdminState {
    pub fn new(
        config: ConfigHandle,
        prometheus: Option<PrometheusHandle>,
        token: Option<String>,
    ) -> Self {
        let state = Self {
            config,
            prometheus,
            token: token.map(Arc::from),
            endpoints: Arc::new(RwLock::new(HashMap::new())),
            metrics_sources: Arc::new(RwLock::new(Vec::new())),
            posts: Arc::new(RwLock::new(HashMap::new())),
            ready: Arc::new(RwLock::new(None)),
        };
        let cfg = state.config.clone();
        state.register(
            "/admin/config",
            Arc::new(move || {
                let c = cfg.load();
                serde_json::json!({
                    "version": c.version,
                    "summary": c.summary(),
                    "files": c.files,
                    "routes": c.routes.iter().map(|r| &*r.name).collect::<Vec<_>>(),
                    "upstreams": c.upstreams.iter().map(|u| &*u.name).collect::<Vec<_>>(),
                })
            }),
        );
        for path in ["/admin/verdicts", "/admin/workers"] {
            state.register(path, Arc::new(|| serde_json::json!([])));
        }
        state
    }

    /// Sets what `GET /ready` reads (the gate registers it). Without one,
    /// `/ready` answers 503 `not ready: no gate`.
    pub fn set_ready(&self, f: ReadyFn) {
        *self.ready.write().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    /// `GET /ready`: 200 when ready, else 503. `authorized`: the JSON
    /// detail (versions and verdicts), else a line with the state only.
    fn handle_ready(&self, req: &Request<Incoming>, authorized: bool) -> Response<Full<Bytes>> {
        let f = self.ready.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(f) = f else {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no gate\n",
                "text/plain",
            );
        };
        let r = ready::evaluate(f(), ready::require_of(req.uri().query()));
        let status = if r.ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        if authorized {
            let body = serde_json::to_string_pretty(&r).unwrap_or_default();
            return text(status, &body, "application/json");
        }
        let word = if r.ready { "ready" } else { "not ready" };
        text(
            status,
            &format!("{word}: {}\n", r.state.as_str()),
            "text/plain",
        )
    }

    /// Adds or replaces a `POST path` endpoint.
    pub fn register_post(&self, path: &str, f: PostFn) {
        self.posts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_string(), f);
    }

    async fn handle_post(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() == "/ready" {
            // A webhook (Flagger's pre-rollout) POSTs its own JSON: the
            // body is not read; the answer is the readiness.
            let authorized = self.authorized(&req);
            return self.handle_ready(&req, authorized);
        }
        if !self.authorized(&req) {
            return text(StatusCode::UNAUTHORIZED, "unauthorized\n", "text/plain");
        }
        let f = self
            .posts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(req.uri().path())
            .cloned();
        let Some(f) = f else {
            return text(StatusCode::NOT_FOUND, "not found\n", "text/plain");
        };
        use http_body_util::BodyExt as _;
        let limited = http_body_util::Limited::new(req.into_body(), MAX_POST_BODY);
        let body = match limited.collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body too large\n",
                    "text/plain",
                );
            }
        };
        match f(body).await {
            Ok(v) => {
                let body = serde_json::to_string_pretty(&v).unwrap_or_default();
                text(StatusCode::OK, &body, "application/json")
            }
            Err(why) => text(StatusCode::BAD_REQUEST, &format!("{why}\n"), "text/plain"),
        }
    }

    /// Adds Prometheus text to every `/metrics` answer.
    pub fn add_metrics_source(&self, f: MetricsFn) {
        self.metrics_sources
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(f);
    }

    async fn render_metrics(&self) -> Option<String> {
        let sources = self
            .metrics_sources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if self.prometheus.is_none() && sources.is_empty() {
            return None;
        }
        let own = self.prometheus.as_ref().map_or_else(String::new, |h| {
            h.run_upkeep();
            h.render()
        });
        let mut texts = vec![own];
        for f in sources {
            texts.push(f().await);
        }
        // Merged, not concatenated: a family this process and the sources
        // both have must be one group (its HELP/TYPE once).
        let parts: Vec<(Option<usize>, &str)> = texts.iter().map(|t| (None, t.as_str())).collect();
        Some(crate::supervisor::metrics_merge::merge(&parts))
    }

    /// Adds or replaces a JSON endpoint (`GET path`).
    pub fn register(&self, path: &str, f: JsonFn) {
        self.endpoints
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_string(), f);
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(given) = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_credentials)
        else {
            return false;
        };
        // Length-independent comparison of the bytes.
        let (a, b) = (given.as_bytes(), token.as_bytes());
        let mut diff = u8::from(a.len() != b.len());
        for (x, y) in a.iter().zip(b.iter()) {
            diff |= x ^ y;
        }
        diff == 0
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() == "/ready" && matches!(*req.method(), Method::GET | Method::HEAD) {
            let authorized = self.authorized(&req);
            return self.handle_ready(&req, authorized);
        }
        if !self.authorized(&req) {
            return text(StatusCode::UNAUTHORIZED, "unauthorized\n", "text/plain");
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n",
                "text/plain",
            );
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n", "text/plain"),
            "/metrics" => match self.render_metrics().await {
                Some(body) => text(StatusCode::OK, &body, "text/plain; version=0.0.4"),
                None => text(StatusCode::NOT_FOUND, "no metrics recorder\n", "text/plain"),
            },
            path => {
                let f = self
                    .endpoints
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(path)
                    .cloned();
                match f {
                    Some(f) => {
                        let body = serde_json::to_string_pretty(&f()).unwrap_or_default();
                        text(StatusCode::OK, &body, "application/json")
                    }
                    None => text(StatusCode::NOT_FOUND, "not found\n", "text/plain"),
                }
            }
        }
    }
}

fn text(status: StatusCode, body: &str, ctype: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    r
}

/// The credentials of an `Authorization: Bearer <token>` value. The scheme
/// is case-insensitive (RFC 9110 §11.1: `bearer` and `BEARER` are the
/// same scheme); spaces around the token are dropped.
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// The bearer token the admin listener requires at `addr`: none on loopback
/// unless one is configured, else from `token_file` or the `token_env`
/// variable; an error when required and missing.
pub fn resolve_token(
    addr: &SocketAddr,
    token_env: &str,
    token_file: Option<&std::path::Path>,
) -> Result<Option<String>, AdminError> {
    let from_file = match token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|source| AdminError::TokenFile {
                    path: p.display().to_string(),
                    source,
                })?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let token = from_file
        .or_else(|| std::env::var(token_env).ok().map(|s| s.trim().to_string()))
        .filter(|t| !t.is_empty());
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(AdminError::TokenRequired {
            addr: addr.to_string(),
            env: token_env.to_string(),
        });
    }
    Ok(token)
}

/// An admin listener that is bound but not yet answering. Endpoints are
/// registered on `state` first and the listener is opened last, so the first
/// request (a script reading `aegis: listening admin`) sees every endpoint and
/// every metric family.
pub struct BoundAdmin {
    listener: TcpListener,
    pub state: AdminState,
}

impl BoundAdmin {
    pub fn new(listener: TcpListener, state: AdminState) -> Self {
        Self { listener, state }
    }

    /// Announces the address and starts answering until `shutdown`.
    pub fn open(self, shutdown: CancellationToken) -> std::io::Result<tokio::task::JoinHandle<()>> {
        crate::say!("aegis: listening admin {}", self.listener.local_addr()?);
        Ok(serve(self.listener, self.state, shutdown))
    }
}

/// Serves the admin API on `listener` until `shutdown`.
pub fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(_) => continue,
                },
            };
            let state = state.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move {
                        let resp = if req.method() == Method::POST {
                            state.handle_post(req).await
                        } else {
                            state.handle(req).await
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = conn => {}
                    _ = shutdown.cancelled() => {}
                }
            });
        }
    })
}
