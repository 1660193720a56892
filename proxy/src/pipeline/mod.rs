//! The request path: one `tower::Service` from a client request to a
//! response, built from the compiled config and generic over the
//! [`Connector`] that reaches upstreams.
//!
//! The workers run it with [`crate::upstream::PooledConnector`] behind real
//! listeners; the sandbox runs the identical service with a stub connector and
//! `tower::ServiceExt::oneshot`. Every decision about a request is made here:
//! framing checks, `decide`, 400/403/404/redirect/respond, rate limits, body
//! limits, header edits, hop-by-hop removal, `X-Forwarded-*`, `Via`, the
//! score header, forwarding, the mapping of upstream errors to 502/503/504,
//! upgrades, the access log line and the metrics.

pub mod body;
pub mod compress;
pub mod headers;
pub mod ratelimit;
pub mod reservoir;
pub mod static_files;
pub mod traffic;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use aegis_engine::compiled::{
    CompiledRoute, ErrorAnswer, ErrorTarget, Expires, RouteAction, UpstreamId,
};
use aegis_engine::config::Settings;
use aegis_engine::config::settings::FailMode;
use aegis_engine::decide::Scored;
use aegis_engine::{CompiledConfig, DecideOptions, DecisionSummary, Outcome, RequestHead};
use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;

pub use body::{BoxError, ProxyBody, boxed, empty, full};

use crate::access_log::{AccessLog, AccessRecord};

/// The active compiled config. A request loads the snapshot once and keeps it
/// to the end; [`ConfigHandle::store`] never disturbs requests in flight.
///
/// Beside it, once a [`Pipeline`] serves it, the per-version metric handles
/// of the same version ([`crate::telemetry::VersionMetrics`]), resolved at
/// activation so a request never builds labels. A handle no pipeline serves
/// (the supervisor's) resolves none, so it exports no request families.
#[derive(Debug, Clone)]
pub struct ConfigHandle {
    current: Arc<ArcSwap<CompiledConfig>>,
    metrics: Arc<arc_swap::ArcSwapOption<crate::telemetry::VersionMetrics>>,
}

impl ConfigHandle {
    pub fn new(config: CompiledConfig) -> Self {
        Self::from_arc(Arc::new(config))
    }

    pub fn from_arc(config: Arc<CompiledConfig>) -> Self {
        Self {
            current: Arc::new(ArcSwap::new(config)),
            metrics: Arc::new(arc_swap::ArcSwapOption::empty()),
        }
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<CompiledConfig> {
        self.current.load_full()
    }

    /// Makes `config` the active one and records `aegis_config_info`; when
    /// a pipeline serves this handle, resolves the new version's request
    /// metrics.
    pub fn store(&self, config: Arc<CompiledConfig>) {
        if self.metrics.load().is_some() {
            let m = crate::telemetry::VersionMetrics::new(&config);
            self.metrics.store(Some(Arc::new(m)));
        }
        let old = self.current.swap(config.clone());
        crate::telemetry::config_info(Some(&old), &config);
    }

    /// Called by the pipeline that serves this handle: from now on every
    /// activated version gets its request metrics.
    fn serve_metrics(&self) {
        if self.metrics.load().is_none() {
            let m = crate::telemetry::VersionMetrics::new(&self.load());
            self.metrics.store(Some(Arc::new(m)));
        }
    }
}

/// Who sent the request: given once per connection by the listener
/// ([`Pipeline::for_connection`]), or as a request extension (the gate's
/// replay, whose requests each come from their recorded client; an
/// extension wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    pub addr: SocketAddr,
    /// True on a TLS listener (`X-Forwarded-Proto: https`).
    pub tls: bool,
    /// The local port of the listener (0: unknown): routes may be bound to
    /// ports (`match.ports`), as nginx servers are to `listen` sockets.
    pub local_port: u16,
}

impl Default for ClientInfo {
    fn default() -> Self {
        Self {
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            tls: false,
            local_port: 0,
        }
    }
}

/// Request extension set by the HTTP/1 transport when the raw head carried
/// both `Content-Length` and `Transfer-Encoding` (hyper resolves that case
/// silently); the pipeline answers 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmbiguousFraming;

/// What the pipeline decided for the request, for the sandbox and tests: a
/// response extension of [`Pipeline::serve`] (the `tower::Service`), given
/// by value by [`Pipeline::serve_outcome`].
#[derive(Debug, Clone, PartialEq)]
pub struct RequestOutcome {
    /// The route's name (the compiled config's own, shared).
    pub route: Option<Arc<str>>,
    pub summary: DecisionSummary,
    /// The status the client got.
    pub status: u16,
    /// Which endpoint served it, when forwarded.
    pub endpoint: Option<Arc<str>>,
    /// Set when the pipeline answered before `decide` (framing, header size).
    pub rejected: Option<&'static str>,
}

/// Response extension: close the connection without sending this answer
/// (nginx's `return 444`). The server drops the connection; the log and
/// metrics still count a 444.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseWithoutAnswer;

/// The status nginx uses to close a connection without an answer.
pub const CLOSE_WITHOUT_ANSWER: u16 = 444;

/// A connector's answer: the upstream's response and the endpoint that
/// gave it (returned, not attached as an extension: one allocation less on
/// every forwarded request).
#[derive(Debug)]
pub struct Forwarded {
    pub response: Response<ProxyBody>,
    pub endpoint: Arc<str>,
}

/// What a connector needs to forward one request.
#[derive(Debug, Clone)]
pub struct ForwardCtx {
    /// The snapshot the request started with.
    pub config: Arc<CompiledConfig>,
    pub upstream: UpstreamId,
    pub route: Arc<str>,
    /// Time to the response head; `None` means the pool's `response_timeout`.
    pub timeout: Option<Duration>,
    /// Further endpoints to try after a failure that is safe to retry.
    pub retries: u32,
    pub client_ip: IpAddr,
}

/// Why forwarding failed. [`UpstreamError::status`] is the one place these
/// become status codes.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream `{upstream}` has no healthy endpoint")]
    NoHealthyEndpoint { upstream: String },
    #[error("no upstream with id {0} in the config")]
    UnknownUpstream(UpstreamId),
    #[error("connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: BoxError,
    },
    #[error("connect to {endpoint}: timed out after {timeout:?}")]
    ConnectTimeout { endpoint: String, timeout: Duration },
    #[error("{endpoint}: {source}")]
    Protocol {
        endpoint: String,
        #[source]
        source: BoxError,
    },
    #[error("{endpoint}: no response head within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    /// The client's request body failed (aborted, or over the limit): the
    /// client's fault, never counted against the endpoint.
    #[error("request body: {source}")]
    ClientBody {
        #[source]
        source: BoxError,
    },
}

impl UpstreamError {
    /// 503 when no endpoint can be tried, 504 on timeouts, 502 otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::NoHealthyEndpoint { .. } => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamError::ConnectTimeout { .. } | UpstreamError::Timeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            UpstreamError::ClientBody { .. } => StatusCode::BAD_REQUEST,
            UpstreamError::UnknownUpstream(_)
            | UpstreamError::Connect { .. }
            | UpstreamError::Protocol { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The endpoint involved, if any.
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            UpstreamError::Connect { endpoint, .. }
            | UpstreamError::ConnectTimeout { endpoint, .. }
            | UpstreamError::Protocol { endpoint, .. }
            | UpstreamError::Timeout { endpoint, .. } => Some(endpoint),
            _ => None,
        }
    }
}

/// Reaches upstreams. The workers use [`crate::upstream::PooledConnector`];
/// the sandbox uses a stub.
pub trait Connector: Clone + Send + Sync + 'static {
    /// Sends `req` (already rewritten for the upstream: origin-form URI,
    /// hop-by-hop headers removed, `Host` set) to an endpoint of
    /// `ctx.upstream` and returns the response head with a streaming body.
    /// A 101 response carries hyper's `OnUpgrade` in its extensions when the
    /// connection can be tunnelled.
    fn forward(
        &self,
        ctx: ForwardCtx,
        req: Request<ProxyBody>,
    ) -> impl Future<Output = Result<Forwarded, UpstreamError>> + Send;
}

/// Per-process settings the pipeline reads on every request (from
/// the promoted version's `aegis.yaml`; swapped on promotion).
#[derive(Debug, Clone, Copy)]
pub struct PipelineSettings {
    /// `limits.max_request_body`; a route's `max_request_body` overrides it.
    pub max_request_body: u64,
    /// `limits.max_header_bytes`: total request header bytes, else 431.
    pub max_header_bytes: u64,
    /// `features_module.on_error`.
    pub fail_closed: bool,
    /// `limits.client_body_timeout`: longest wait for request body bytes.
    pub client_body_timeout: Duration,
    /// `compression`: gzip and brotli on the way to the client.
    pub compression: compress::Compression,
}

impl PipelineSettings {
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            max_request_body: s.limits.max_request_body.0,
            max_header_bytes: s.limits.max_header_bytes.0,
            fail_closed: s.features_module.on_error == FailMode::Closed,
            client_body_timeout: s.limits.client_body_timeout.0,
            compression: compress::Compression::from_settings(&s.compression),
        }
    }
}

impl Default for PipelineSettings {
    fn default() -> Self {
        Self::from_settings(&Settings::default())
    }
}

struct Shared {
    config: ConfigHandle,
    /// Swapped when a promoted version changes them (limits and fail mode
    /// take effect live, like the routes).
    settings: arc_swap::ArcSwap<PipelineSettings>,
    features_enabled: Arc<AtomicBool>,
    limiter: ratelimit::RateLimiter,
    access_log: AccessLog,
    /// The traffic sample the gate replays (none in the sandbox).
    reservoir: Option<Arc<crate::pipeline::reservoir::Reservoir>>,
    /// What the progressive rollout compares between processes.
    traffic: Arc<traffic::TrafficCounters>,
}

/// The request pipeline. Cheap to clone (one `Arc`, the connector, and the
/// connection's client).
pub struct Pipeline<C> {
    shared: Arc<Shared>,
    connector: C,
    /// The connection's client, when this copy serves one connection.
    conn: Option<ConnClient>,
}

/// A connection's client, with what is made from it once per connection
/// instead of per request.
#[derive(Clone)]
struct ConnClient {
    info: ClientInfo,
    /// The peer address as an `X-Forwarded-For` entry.
    forwarded_for: HeaderValue,
}

impl<C: Clone> Clone for Pipeline<C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            connector: self.connector.clone(),
            conn: self.conn.clone(),
        }
    }
}

/// Builds a [`Pipeline`].
pub struct PipelineBuilder<C> {
    config: ConfigHandle,
    connector: C,
    settings: PipelineSettings,
    features_enabled: Option<Arc<AtomicBool>>,
    access_log: AccessLog,
    reservoir: Option<Arc<crate::pipeline::reservoir::Reservoir>>,
}

impl<C: Connector> PipelineBuilder<C> {
    /// Records a uniform sample of request heads and their outcomes.
    pub fn reservoir(mut self, reservoir: Arc<crate::pipeline::reservoir::Reservoir>) -> Self {
        self.reservoir = Some(reservoir);
        self
    }

    pub fn settings(mut self, settings: PipelineSettings) -> Self {
        self.settings = settings;
        self
    }

    /// The features module kill switch (default: a new switch, on).
    pub fn features_switch(mut self, switch: Arc<AtomicBool>) -> Self {
        self.features_enabled = Some(switch);
        self
    }

    pub fn access_log(mut self, log: AccessLog) -> Self {
        self.access_log = log;
        self
    }

    pub fn build(self) -> Pipeline<C> {
        Pipeline {
            shared: Arc::new(Shared {
                config: self.config,
                settings: arc_swap::ArcSwap::from_pointee(self.settings),
                features_enabled: self
                    .features_enabled
                    .unwrap_or_else(|| Arc::new(AtomicBool::new(true))),
                limiter: ratelimit::RateLimiter::default(),
                access_log: self.access_log,
                reservoir: self.reservoir,
                traffic: Arc::default(),
            }),
            connector: self.connector,
            conn: None,
        }
    }
}

impl<C: Connector> Pipeline<C> {
    /// This pipeline for the requests of one connection from `client`: the
    /// client's details travel with the service rather than as an extension
    /// of every request (three allocations each).
    pub fn for_connection(&self, client: ClientInfo) -> Self {
        Self {
            shared: self.shared.clone(),
            connector: self.connector.clone(),
            conn: Some(ConnClient {
                info: client,
                forwarded_for: headers::ip_value(client.addr.ip()),
            }),
        }
    }

    /// Who sent `req`: its extension, else the connection's client.
    fn client_of<B>(&self, req: &Request<B>) -> ClientInfo {
        req.extensions()
            .get::<ClientInfo>()
            .copied()
            .or(self.conn.as_ref().map(|c| c.info))
            .unwrap_or_default()
    }

    /// Starts a builder with default settings, no access log and the features
    /// module on.
    pub fn builder(config: ConfigHandle, connector: C) -> PipelineBuilder<C> {
        config.serve_metrics();
        PipelineBuilder {
            config,
            connector,
            settings: PipelineSettings::default(),
            features_enabled: None,
            access_log: AccessLog::off(),
            reservoir: None,
        }
    }

    pub fn config(&self) -> &ConfigHandle {
        &self.shared.config
    }

    /// Applies a promoted version's limits and fail mode to new requests.
    pub fn set_settings(&self, settings: PipelineSettings) {
        self.shared.settings.store(Arc::new(settings));
    }

    /// The features module kill switch.
    pub fn features_switch(&self) -> Arc<AtomicBool> {
        self.shared.features_enabled.clone()
    }

    pub fn connector(&self) -> &C {
        &self.connector
    }

    /// This process's live traffic counters.
    pub fn traffic(&self) -> Arc<traffic::TrafficCounters> {
        self.shared.traffic.clone()
    }
}

impl<C, B> tower::Service<Request<B>> for Pipeline<C>
where
    C: Connector,
    B: Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.serve(req).await) })
    }
}

impl<C: Connector> Pipeline<C> {
    /// One request through the pipeline: what [`tower::Service::call`]
    /// runs, without boxing its future, so a server that awaits it in
    /// place (Aegis's own HTTP/1 loop) skips an allocation and a copy of
    /// the future per request. The same code either way.
    pub async fn serve<B>(&self, req: Request<B>) -> Response<ProxyBody>
    where
        B: Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut resp, outcome) = self.serve_outcome(req).await;
        resp.extensions_mut().insert(outcome);
        resp
    }

    /// [`Self::serve`] with the outcome returned beside the response rather
    /// than attached to it: a server with no use for it (Aegis's HTTP/1
    /// loop) saves the extension map's three allocations per request.
    pub async fn serve_outcome<B>(&self, req: Request<B>) -> (Response<ProxyBody>, RequestOutcome)
    where
        B: Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        // A body already at its end (GET, HEAD, most requests) becomes the
        // empty body, which boxes nothing.
        let req = req.map(|b| if b.is_end_stream() { empty() } else { boxed(b) });
        // The sampling decision is one counter and one random number; only a
        // chosen request has its head recorded, straight from the request
        // (the route and status are filled in once answered).
        let sampled = self.shared.reservoir.as_ref().and_then(|r| {
            r.choose().map(|slot| {
                let client = self.client_of(&req);
                let mut head = r.head(
                    reservoir::HeadRef::of_request(&req),
                    client.addr.ip(),
                    None,
                    0,
                );
                if client.tls {
                    head.scheme = "https".to_string();
                }
                head.port = (client.local_port != 0).then_some(client.local_port);
                (r.clone(), slot, head)
            })
        });
        let (resp, outcome) = self.handle(req).await;
        if let Some((r, slot, mut head)) = sampled {
            head.status = Some(resp.status().as_u16());
            head.route = outcome.route.as_deref().map(str::to_string);
            r.fill(slot, head);
        }
        (resp, outcome)
    }
}

/// An answer before [`Pipeline::finish`] counts and logs it.
struct Answered {
    resp: Response<ProxyBody>,
    log: LogCtx,
    summary: DecisionSummary,
    rejected: Option<&'static str>,
    /// The answer is an upstream's (error pages treat those apart).
    from_upstream: bool,
}

impl Answered {
    fn new(
        resp: Response<ProxyBody>,
        log: LogCtx,
        summary: DecisionSummary,
        rejected: Option<&'static str>,
    ) -> Self {
        Self {
            resp,
            log,
            summary,
            rejected,
            from_upstream: false,
        }
    }
}

/// What an error page's request is made from: the client request's head.
struct KeptHead {
    method: Method,
    uri: Uri,
    version: Version,
    headers: http::HeaderMap,
    /// Who sent it, given to the page's request as its extension.
    client: ClientInfo,
}

impl KeptHead {
    fn of(req: &Request<ProxyBody>, client: ClientInfo) -> Self {
        Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            client,
        }
    }
}

/// What the access log and metrics need, carried to the end of the body.
/// The route and upstream come from the request's `DecisionSummary` and the
/// version from its snapshot, so nothing is copied for them per request.
struct LogCtx {
    start: Instant,
    wall: SystemTime,
    client: IpAddr,
    /// The snapshot the request started with (its version labels metrics).
    config: Arc<CompiledConfig>,
    /// What only the access log line needs; `None` when the log is off.
    line: Option<LogLine>,
    endpoint: Option<Arc<str>>,
    score: Option<f64>,
    /// The request body's counters, when it has one.
    body: Option<Arc<body::BodyState>>,
    /// What the request said about compression (`Accept-Encoding`, …).
    encoding: compress::ClientEncoding,
}

/// The request side of an access log line.
struct LogLine {
    method: Method,
    host: Option<HeaderValue>,
    /// The request target, shared with the request (its path is logged).
    uri: Uri,
}

/// A redirect the pipeline answers itself (no `Location` when the target
/// is not a valid header value).
fn redirect_answer(status: StatusCode, location: &str) -> Response<ProxyBody> {
    redirect_to(status, HeaderValue::from_str(location).ok())
}

fn redirect_to(status: StatusCode, location: Option<HeaderValue>) -> Response<ProxyBody> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = status;
    if let Some(v) = location {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

/// A response the pipeline makes itself: short text body.
fn plain(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(full(format!("{text}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn status_text(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
}

fn reject_summary(status: StatusCode, action: &'static str) -> DecisionSummary {
    DecisionSummary {
        route: None,
        action: action.into(),
        upstream: None,
        upstream_path: None,
        location: None,
        status: Some(status.as_u16()),
        score: None,
        blocked: false,
        scoring_failed: false,
    }
}

/// A route's response edits: `expires` first, then `response_headers`
/// (so a `Cache-Control` set there wins), each on nginx's statuses where
/// nginx would apply it. `rendered`: its values with variables, rendered
/// for the request ([`headers::render_edits`]; empty when it has none).
fn edit_response(
    route: &CompiledRoute,
    resp: &mut Response<ProxyBody>,
    rendered: &[aegis_engine::compiled::RenderedHeader],
) {
    let status = resp.status();
    if let Some(e) = route.expires
        && aegis_engine::compiled::add_header_status(status)
    {
        let (expires, cache_control) = match e {
            Expires::Seconds(n) => {
                let now = SystemTime::now();
                let d = Duration::from_secs(n.unsigned_abs());
                let at = if n >= 0 {
                    now.checked_add(d)
                } else {
                    now.checked_sub(d)
                };
                (
                    at.map(httpdate::fmt_http_date),
                    if n > 0 {
                        format!("max-age={n}")
                    } else if n == 0 {
                        "max-age=0".to_string()
                    } else {
                        "no-cache".to_string()
                    },
                )
            }
            Expires::Epoch => (
                Some("Thu, 01 Jan 1970 00:00:01 GMT".to_string()),
                "no-cache".to_string(),
            ),
            Expires::Max => (
                Some("Thu, 31 Dec 2037 23:55:55 GMT".to_string()),
                "max-age=315360000".to_string(),
            ),
        };
        let h = resp.headers_mut();
        if let Some(v) = expires.and_then(|e| HeaderValue::from_str(&e).ok()) {
            h.insert(header::EXPIRES, v);
        }
        if let Ok(v) = HeaderValue::from_str(&cache_control) {
            h.insert(header::CACHE_CONTROL, v);
        }
    }
    route
        .response_edits
        .apply_response(status, resp.headers_mut(), rendered);
}

/// Methods whose request may be sent twice (RFC 9110 §9.2.2).
pub fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl<C: Connector> Pipeline<C> {
    /// Serves one request. Never fails: every error is a response.
    async fn handle(&self, req: Request<ProxyBody>) -> (Response<ProxyBody>, RequestOutcome) {
        let config = self.shared.config.load();
        if !config.has_error_pages {
            let a = self.answer(config, req).await;
            return self.finish(a.resp, a.log, a.summary, a.rejected);
        }
        let kept = KeptHead::of(&req, self.client_of(&req));
        let mut a = self.answer(config.clone(), req).await;
        if a.rejected.is_none() {
            let status = a.resp.status();
            let from_upstream = a.from_upstream;
            let route = a.summary.route.clone();
            if let Some(resp) = self
                .error_page(&config, route.as_deref(), status, from_upstream, kept)
                .await
            {
                a.resp = resp;
            }
        }
        self.finish(a.resp, a.log, a.summary, a.rejected)
    }

    /// nginx `error_page`: an error answer of the request's route replaced
    /// by its page, one level deep (nginx's `recursive_error_pages off`).
    /// The page is answered as a GET of its path through the same config,
    /// with its own log context dropped: the client's request is logged
    /// and counted once, with the status it finally got.
    async fn error_page(
        &self,
        config: &Arc<CompiledConfig>,
        route: Option<&str>,
        status: StatusCode,
        from_upstream: bool,
        kept: KeptHead,
    ) -> Option<Response<ProxyBody>> {
        if status.as_u16() < 300 {
            return None;
        }
        let name = route?;
        let route = config.routes.iter().find(|r| &*r.name == name)?;
        if from_upstream && !route.intercept_errors {
            return None;
        }
        let page = route.error_page(status)?;
        let uri = match &page.target {
            ErrorTarget::Redirect(location) => {
                let code = match page.answer {
                    ErrorAnswer::Code(c) => c,
                    _ => StatusCode::FOUND,
                };
                return Some(redirect_to(code, Some(location.clone())));
            }
            ErrorTarget::Uri(u) => u,
        };
        let mut b = Uri::builder().path_and_query(uri.as_str());
        if let (Some(scheme), Some(auth)) = (kept.uri.scheme(), kept.uri.authority()) {
            b = b.scheme(scheme.clone()).authority(auth.clone());
        }
        let mut req = Request::new(empty());
        *req.uri_mut() = b.build().ok()?;
        *req.method_mut() = if kept.method == Method::HEAD {
            Method::HEAD
        } else {
            Method::GET
        };
        *req.version_mut() = kept.version;
        *req.headers_mut() = kept.headers;
        for h in [
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            header::EXPECT,
        ] {
            req.headers_mut().remove(h);
        }
        req.extensions_mut().insert(kept.client);
        let inner = Box::pin(self.answer(config.clone(), req)).await;
        let mut resp = inner.resp;
        match page.answer {
            ErrorAnswer::Original => *resp.status_mut() = status,
            ErrorAnswer::Code(c) => *resp.status_mut() = c,
            ErrorAnswer::Target => {}
        }
        Some(resp)
    }

    /// Answers one request under `config`, up to what [`Self::finish`]
    /// does with the answer. Never fails: every error is a response.
    async fn answer(&self, config: Arc<CompiledConfig>, mut req: Request<ProxyBody>) -> Answered {
        let start = Instant::now();
        let wall = SystemTime::now();
        let client = self.client_of(&req);
        // The request target's authority wins over Host (absolute form,
        // `:authority`); a bad or missing one is answered 400 below.
        // The client behind trusted proxies (`real_ip`), or the peer: what
        // access rules, rate limits, forwarding headers and the log see.
        let client_ip = config.client_ip(client.addr.ip(), req.headers());
        let authority = headers::request_authority(req.version(), req.uri(), req.headers());
        // The Host header's own value (shared, not copied), and as text.
        let host_value: Option<HeaderValue> = authority.clone().unwrap_or(None);
        let host: Option<&str> = host_value.as_ref().and_then(|v| v.to_str().ok());
        let mut log = LogCtx {
            start,
            wall,
            client: client_ip,
            config: config.clone(),
            line: self.shared.access_log.is_enabled().then(|| LogLine {
                method: req.method().clone(),
                host: host_value.clone(),
                uri: req.uri().clone(),
            }),
            endpoint: None,
            score: None,
            body: None,
            encoding: compress::ClientEncoding::of(&req),
        };

        // Framing and size checks hyper does not make for us.
        let framing = if req.extensions().get::<AmbiguousFraming>().is_some() {
            Err(headers::FramingError::LengthAndChunked)
        } else {
            headers::check_framing(req.headers())
        };
        if let Err(e) = framing {
            let status = e.status();
            let text = if status == StatusCode::BAD_REQUEST {
                "400 Bad Request: ambiguous framing".to_string()
            } else {
                status_text(status)
            };
            let mut resp = plain(status, &text);
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            let summary = reject_summary(status, "bad_framing");
            return Answered::new(resp, log, summary, Some("framing"));
        }
        if let Err(e) = authority {
            let mut resp = plain(StatusCode::BAD_REQUEST, &format!("400 Bad Request: {e}"));
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            let summary = reject_summary(StatusCode::BAD_REQUEST, "bad_host");
            return Answered::new(resp, log, summary, Some("host"));
        }
        // Copied once: the request sees one version's settings, and no
        // guard is held across the awaits below.
        let settings = **self.shared.settings.load();
        if headers::header_bytes(req.headers()) > settings.max_header_bytes {
            let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
            let resp = plain(status, &status_text(status));
            return Answered::new(
                resp,
                log,
                reject_summary(status, "header_too_large"),
                Some("headers"),
            );
        }

        // Decide.
        let opts = DecideOptions {
            features_enabled: self.shared.features_enabled.load(Ordering::Relaxed),
            fail_closed: settings.fail_closed,
        };
        let scheme = if client.tls { "https" } else { "http" };
        // The request's target, copied by reference count (its bytes are
        // the request's), so `head` can borrow it while the request is
        // changed and taken apart below.
        let uri = req.uri().clone();
        // What `decide` sees, and what header values with variables are
        // rendered from later: the request as it came.
        let head = RequestHead {
            method: req.method(),
            scheme,
            host,
            path: uri.path(),
            query: uri.query(),
            headers: req.headers(),
            client_ip,
            port: client.local_port,
        };
        let (summary, route_id, score, redirect, early, static_path, chosen) = {
            let d = aegis_engine::decide(&config, &head, opts);
            if let Scored::Failed(e) = &d.scored {
                metrics::counter!("aegis_feature_errors_total").increment(1);
                tracing::warn!(error = %e, fail_closed = opts.fail_closed, "feature scoring failed");
            }
            let redirect = match &d.outcome {
                Outcome::Redirect { status, location } => Some((*status, location.clone())),
                _ => None,
            };
            // The upstream `decide` chose (a route's map picks it per
            // request).
            let chosen = match &d.outcome {
                Outcome::Forward { id, .. } => Some(*id),
                _ => None,
            };
            // Answered here, before any route option applies.
            let early = match &d.outcome {
                Outcome::BadPath => Some(StatusCode::BAD_REQUEST),
                Outcome::Blocked => Some(StatusCode::FORBIDDEN),
                Outcome::Denied => Some(StatusCode::FORBIDDEN),
                Outcome::BadUpstream => Some(StatusCode::BAD_GATEWAY),
                Outcome::RewriteLoop => Some(StatusCode::INTERNAL_SERVER_ERROR),
                Outcome::NoRoute => Some(StatusCode::NOT_FOUND),
                _ => None,
            };
            let static_path = matches!(d.outcome, Outcome::Static).then(|| d.path.to_string());
            (
                d.summary(),
                d.route_id,
                d.score(),
                redirect,
                early,
                static_path,
                chosen,
            )
        };
        log.score = score;
        let route = route_id.and_then(|id| config.routes.get(id));

        if let Some(status) = early {
            let resp = plain(status, &status_text(status));
            return Answered::new(resp, log, summary, None);
        }
        let Some(mut route) = route else {
            let resp = plain(StatusCode::NOT_FOUND, "404 Not Found");
            return Answered::new(resp, log, summary, None);
        };
        // A `rewrite … redirect` of a route of another kind: nginx's
        // rewrite phase answers before limits and the content.
        if let Some((status, location)) = &redirect
            && !matches!(route.action, RouteAction::Redirect { .. })
        {
            let mut resp = redirect_answer(*status, location);
            let r = headers::render_edits(&config, route, &head, false);
            edit_response(route, &mut resp, &r.response);
            return Answered::new(resp, log, summary, None);
        }

        // Per-client rate limit.
        if let Some(spec) = route.rate_limit.and_then(|i| config.rate_limits.get(i))
            && let Err(wait) = self.shared.limiter.check_arrived(
                spec,
                client_ip,
                req.extensions().get::<ratelimit::ArrivedAt>().copied(),
            )
        {
            let status = StatusCode::TOO_MANY_REQUESTS;
            let mut resp = plain(status, &status_text(status));
            let secs = wait
                .as_secs()
                .saturating_add(u64::from(wait.subsec_nanos() > 0))
                .max(1);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            let mut summary = summary;
            summary.status = Some(429);
            return Answered::new(resp, log, summary, Some("rate_limit"));
        }

        // Body limit, from the declared length first.
        let limit = route.max_request_body.unwrap_or(settings.max_request_body);
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            let status = StatusCode::PAYLOAD_TOO_LARGE;
            let mut resp = plain(status, &status_text(status));
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            let mut summary = summary;
            summary.status = Some(413);
            return Answered::new(resp, log, summary, Some("body_limit"));
        }

        // Answer locally from files; `try_files ... @name` hands the
        // request to the named route, which answers below as its own.
        let mut summary = summary;
        if let (RouteAction::Static(st), Some(path)) = (&route.action, &static_path) {
            let sreq = static_files::StaticRequest {
                method: req.method(),
                headers: req.headers(),
                path,
                query: uri.query(),
            };
            match static_files::serve(st, &sreq).await {
                static_files::Served::Response(mut resp) => {
                    let r = headers::render_edits(&config, route, &head, false);
                    edit_response(route, &mut resp, &r.response);
                    return Answered::new(resp, log, summary, None);
                }
                static_files::Served::Route(id) => {
                    let Some(target) = config.routes.get(id) else {
                        let resp = plain(StatusCode::NOT_FOUND, "404 Not Found");
                        return Answered::new(resp, log, summary, None);
                    };
                    route = target;
                    summary.route = Some(target.name.clone());
                    match &target.action {
                        RouteAction::Forward(f) => {
                            summary.action = "forward".into();
                            summary.upstream =
                                config.upstreams.get(f.upstream).map(|u| u.name.clone());
                            // As nginx passes a named location the URI
                            // unchanged.
                            summary.upstream_path = Some(path.clone());
                        }
                        RouteAction::Respond { status, .. } => {
                            summary.action = "respond".into();
                            summary.status = Some(status.as_u16());
                        }
                        _ => {}
                    }
                }
            }
        }

        let fwd = match &route.action {
            RouteAction::Forward(f) => f,
            RouteAction::Static(_) => {
                // Only a static route's own phase above serves files; the
                // compile refuses a fallback to one.
                let resp = plain(StatusCode::NOT_FOUND, "404 Not Found");
                return Answered::new(resp, log, summary, None);
            }
            RouteAction::Redirect { .. } => {
                let (status, location) = redirect.unwrap_or((StatusCode::FOUND, "/".to_string()));
                let mut resp = redirect_answer(status, &location);
                let r = headers::render_edits(&config, route, &head, false);
                edit_response(route, &mut resp, &r.response);
                return Answered::new(resp, log, summary, None);
            }
            RouteAction::Respond {
                status,
                body,
                headers,
            } => {
                let mut resp = Response::new(full(bytes::Bytes::copy_from_slice(body.as_bytes())));
                *resp.status_mut() = *status;
                for (n, v) in headers {
                    resp.headers_mut().append(n.clone(), v.clone());
                }
                if status.as_u16() == CLOSE_WITHOUT_ANSWER {
                    resp.extensions_mut().insert(CloseWithoutAnswer);
                }
                let r = headers::render_edits(&config, route, &head, false);
                edit_response(route, &mut resp, &r.response);
                return Answered::new(resp, log, summary, None);
            }
        };

        // Forward: rewrite the request for the upstream. Values with
        // variables see the request as it came.
        let rendered = headers::render_edits(&config, route, &head, true);
        let client_upgrade = headers::upgrade_allowed(req.headers(), route.websocket)
            .then(|| req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>())
            .flatten();
        let version = req.version();
        let (mut parts, body) = req.into_parts();
        // When normalization and prefix edits left the path as the client
        // sent it (most requests), its path and query are reused as they
        // are: a reference count, not a new string parsed again.
        // The summary's upstream path is the one forwarded: `decide`'s, or
        // a named location's.
        let upstream_path = summary.upstream_path.as_deref();
        let unchanged = upstream_path
            .is_some_and(|p| p == parts.uri.path())
            .then(|| parts.uri.path_and_query().cloned())
            .flatten()
            .and_then(|pq| {
                let mut p = http::uri::Parts::default();
                p.path_and_query = Some(pq);
                Uri::from_parts(p).ok()
            });
        parts.uri = match unchanged {
            Some(u) => u,
            None => {
                let path = upstream_path.unwrap_or("/");
                let path_and_query = match uri.query() {
                    Some(q) => format!("{path}?{q}"),
                    None => path.to_string(),
                };
                match Uri::builder().path_and_query(path_and_query).build() {
                    Ok(u) => u,
                    Err(_) => {
                        let resp = plain(StatusCode::BAD_REQUEST, "400 Bad Request");
                        return Answered::new(resp, log, summary, None);
                    }
                }
            }
        };
        parts.version = Version::HTTP_11;
        let h = &mut parts.headers;
        headers::strip_hop_by_hop(h, client_upgrade.is_some(), true);
        // h2c's companion (in case no `Connection` named it), `Expect`, and
        // a score header the client sent: found in one pass over the names,
        // so the common request pays no hashed remove for them.
        let (mut h2_settings, mut expect, mut client_score) = (false, false, false);
        for name in h.keys() {
            h2_settings |= name.as_str() == "http2-settings";
            expect |= name == header::EXPECT;
            client_score |= *name == config.scoring.header;
        }
        if h2_settings {
            h.remove("http2-settings");
        }
        if expect {
            h.remove(header::EXPECT);
        }
        if client_score {
            h.remove(&config.scoring.header);
        }
        if version == Version::HTTP_2 {
            headers::join_cookies(h);
        }
        // The connection's peer as an entry, made once per connection; a
        // client behind trusted proxies (`real_ip`) is written here.
        let client_entry = self
            .conn
            .as_ref()
            .filter(|c| c.info.addr.ip() == client_ip)
            .map(|c| c.forwarded_for.clone())
            .unwrap_or_else(|| headers::ip_value(client_ip));
        headers::set_forwarded(h, client_entry, client.tls, host_value.as_ref());
        headers::append_via(h, version);
        match (&fwd.host_rewrite, &host_value) {
            (Some(v), _) => {
                h.insert(header::HOST, v.clone());
            }
            (None, Some(orig)) => {
                h.insert(header::HOST, orig.clone());
            }
            (None, None) => {}
        }
        // A score of 0 (no feature matched, or none configured: most
        // requests) is a constant, not a formatted string.
        let score_value = score.and_then(|s| {
            if s == 0.0 {
                Some(HeaderValue::from_static("0"))
            } else {
                HeaderValue::from_str(&format!("{s}")).ok()
            }
        });
        if let Some(v) = score_value {
            h.insert(config.scoring.header.clone(), v);
        }
        route.request_edits.apply(h);
        aegis_engine::compiled::apply_rendered(h, &rendered.request);
        parts.extensions = http::Extensions::new();
        // A request with no body (most: GET, HEAD) forwards the empty body
        // as it is, with nothing to limit, time or count.
        let body = if body.is_end_stream() {
            body
        } else {
            let state = Arc::new(body::BodyState::default());
            log.body = Some(state.clone());
            boxed(
                body::LimitedBody::new(body, limit, state)
                    .idle_timeout(settings.client_body_timeout),
            )
        };
        let upstream_req = Request::from_parts(parts, body);

        let ctx = ForwardCtx {
            config: config.clone(),
            upstream: chosen.unwrap_or(fwd.upstream),
            route: route.name.clone(),
            timeout: fwd.timeout,
            // Non-idempotent methods are retried only when the request never
            // left (connect failures); the connector knows which is which.
            retries: fwd.retries,
            client_ip,
        };
        let result = self.connector.forward(ctx, upstream_req).await;
        let mut resp = match result {
            Ok(answer) => {
                log.endpoint = Some(answer.endpoint);
                answer.response
            }
            Err(e) => {
                let body = log.body.as_deref();
                if body.is_some_and(|b| b.exceeded.load(Ordering::Relaxed)) {
                    let status = StatusCode::PAYLOAD_TOO_LARGE;
                    let mut resp = plain(status, &status_text(status));
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    return Answered::new(resp, log, summary, Some("body_limit"));
                }
                if body.is_some_and(|b| b.timed_out.load(Ordering::Relaxed)) {
                    // The rest of the body may never come: answer and close.
                    let status = StatusCode::REQUEST_TIMEOUT;
                    let mut resp = plain(status, &status_text(status));
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    return Answered::new(resp, log, summary, Some("body_timeout"));
                }
                let status = e.status();
                log.endpoint = e.endpoint().map(Arc::from);
                tracing::warn!(
                    route = %route.name,
                    upstream = summary.upstream.as_deref().unwrap_or(""),
                    endpoint = e.endpoint().unwrap_or(""),
                    status = status.as_u16(),
                    error = %e,
                    "upstream request failed"
                );
                metrics::counter!("aegis_upstream_errors_total", "route" => route.name.clone(), "status" => status.as_str().to_string()).increment(1);
                let resp = plain(status, &status_text(status));
                return Answered::new(resp, log, summary, None);
            }
        };
        // The response, on its way back.
        let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let upstream_upgrade = if upgraded {
            resp.extensions_mut().remove::<hyper::upgrade::OnUpgrade>()
        } else {
            None
        };
        *resp.version_mut() = Version::HTTP_11;
        // Chunked wins over a Content-Length sent with it (RFC 9112 §6.3);
        // the stale length must not reach the client.
        if resp.headers().contains_key(header::TRANSFER_ENCODING) {
            resp.headers_mut().remove(header::CONTENT_LENGTH);
        }
        headers::strip_hop_by_hop(resp.headers_mut(), upgraded, false);
        if !fwd.location_rewrite.is_empty() {
            let origin = headers::ClientOrigin {
                scheme,
                host,
                port: client.local_port,
            };
            headers::rewrite_location(resp.headers_mut(), &fwd.location_rewrite, &origin);
        }
        headers::append_via(resp.headers_mut(), Version::HTTP_11);
        edit_response(route, &mut resp, &rendered.response);
        if upgraded {
            match (client_upgrade, upstream_upgrade) {
                (Some(c), Some(u)) => {
                    let route_name = route.name.clone();
                    tokio::spawn(async move {
                        match tokio::try_join!(c, u) {
                            Ok((c, u)) => {
                                let mut c = hyper_util::rt::TokioIo::new(c);
                                let mut u = hyper_util::rt::TokioIo::new(u);
                                if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await
                                {
                                    tracing::debug!(route = %route_name, error = %e, "tunnel closed");
                                }
                            }
                            Err(e) => {
                                tracing::debug!(route = %route_name, error = %e, "upgrade failed");
                            }
                        }
                    });
                }
                _ => {
                    // A 101 we cannot tunnel is a broken upstream answer.
                    let status = StatusCode::BAD_GATEWAY;
                    return Answered::new(plain(status, &status_text(status)), log, summary, None);
                }
            }
        }
        let mut a = Answered::new(resp, log, summary, None);
        a.from_upstream = true;
        a
    }

    /// Counts the request, wraps the body so the access log line is written
    /// when it ends, and gives the outcome beside the response.
    fn finish(
        &self,
        resp: Response<ProxyBody>,
        log: LogCtx,
        summary: DecisionSummary,
        rejected: Option<&'static str>,
    ) -> (Response<ProxyBody>, RequestOutcome) {
        // Before the counting body: the bytes logged are the bytes sent.
        let resp = compress::compress(self.shared.settings.load().compression, &log.encoding, resp);
        let status = resp.status().as_u16();
        let route = summary.route.as_deref();
        // The version's handles, resolved at activation; a request that
        // started on the version before a promotion builds its labels.
        let duration = match &*self.shared.config.metrics.load() {
            Some(m) if m.version() == log.config.version => {
                m.requests_total(route, status);
                m.request(route, status).clone()
            }
            _ => {
                crate::telemetry::requests_total_uncached(route, status);
                crate::telemetry::request_of_version(&log.config.version, route, status)
            }
        };
        self.shared.traffic.record(status, log.start.elapsed());
        let access_log = self.shared.access_log.clone();
        // The access log's copies of the summary, only when it is on.
        let names = log
            .line
            .is_some()
            .then(|| (summary.route.clone(), summary.upstream.clone()));
        let outcome = RequestOutcome {
            route: summary.route.clone(),
            summary,
            status,
            endpoint: log.endpoint.clone(),
            rejected,
        };
        let (parts, body) = resp.into_parts();
        let body = body::CountingBody::new(body, move |bytes_out, ok| {
            let elapsed = log.start.elapsed();
            duration.record(elapsed.as_secs_f64());
            if let (Some(line), Some((route, upstream))) = (log.line, names) {
                access_log.log(&AccessRecord {
                    time: log.wall,
                    client: log.client,
                    method: line.method.as_str(),
                    host: line.host.as_ref().and_then(|h| h.to_str().ok()),
                    path: line.uri.path(),
                    status,
                    bytes_in: log
                        .body
                        .as_ref()
                        .map_or(0, |b| b.bytes_in.load(Ordering::Relaxed)),
                    bytes_out,
                    duration: elapsed,
                    route: route.as_deref(),
                    upstream: upstream.as_deref(),
                    endpoint: log.endpoint.as_deref(),
                    config_version: &log.config.version,
                    score: log.score,
                    aborted: !ok,
                });
            }
        });
        (Response::from_parts(parts, boxed(body)), outcome)
    }
}

#[cfg(test)]
mod tests;
