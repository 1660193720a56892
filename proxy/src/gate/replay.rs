//! The shadow replay: every sampled request through the proxy's real request
//! service ([`Pipeline`]) under the candidate and under the baseline, with
//! the upstream connector replaced by [`SampleConnector`], which answers as
//! the sample recorded. Only the sandbox runner calls this (it compiles the
//! configs); the gate reads the [`ReplayReport`] it produces.
//!
//! Requests are replayed one at a time, in sample order, on the caller's
//! (single-threaded) runtime: the runner must stay single-threaded for
//! RLIMIT_AS to be a memory limit, and sequential replay makes the stub's
//! "current request" well defined.
//!
//! Besides the request-by-request [`Changes`], the replay keeps a
//! comparison per route ([`RouteCompare`], keyed by the baseline's route:
//! what users had), so a route of 0.1 % of the traffic that stops working is
//! seen on its own; and it follows a redirect through the same config (up
//! to [`MAX_REDIRECT_DEPTH`] hops) to see where the user ends up: a loop, a
//! redirect to the URL itself (an https redirect on the TLS listener), or a
//! host this config does not serve.
//!
//! What is replayed of a recorded request: method, host, path, query, the
//! headers as recorded (secrets redacted by the reservoir), the client
//! address (rate limits are per address, as live), and the body length as a
//! `content-length` header when the head had none (the body limits look at
//! it; the stub connector never reads a body). Known limit: requests run
//! back to back, not at the recorded pace (the sample has no times).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aegis_engine::CompiledConfig;
use aegis_engine::sample::SampledRequest;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use tower::ServiceExt;

use super::report::{
    ChangeExample, Changes, Percentiles, RedirectChanges, RedirectEnd, ReplayReport, RouteCompare,
    Side, Tally,
};
use crate::pipeline::ratelimit::ArrivedAt;
use crate::pipeline::{
    BoxError, ClientInfo, ConfigHandle, Connector, ForwardCtx, Forwarded, Pipeline,
    PipelineSettings, ProxyBody, RequestOutcome, UpstreamError, empty,
};

/// What the stub should answer for the request being replayed.
#[derive(Debug, Clone, Default)]
struct Current {
    /// The route live traffic took and the status it got.
    route: Option<String>,
    status: Option<u16>,
}

/// The upstream connector of the sandbox: no network. A pool the gate found
/// unreachable gets a connect error (the pipeline answers 502); otherwise the
/// answer is the status the sample recorded for this request when the
/// request takes the route it took live, and 200 when it does not (a new
/// route's upstream is assumed to work once its endpoints answer the probe).
#[derive(Debug, Clone, Default)]
pub struct SampleConnector {
    current: Arc<Mutex<Current>>,
    unreachable: Arc<HashSet<String>>,
}

impl SampleConnector {
    pub fn new(unreachable: impl IntoIterator<Item = String>) -> Self {
        Self {
            current: Arc::default(),
            unreachable: Arc::new(unreachable.into_iter().collect()),
        }
    }

    fn set_current(&self, req: &SampledRequest) {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        cur.route = req.route.clone();
        cur.status = req.status;
    }
}

#[derive(Debug, thiserror::Error)]
#[error("endpoint unreachable (TCP probe refused or timed out)")]
struct Unreachable;

impl Connector for SampleConnector {
    async fn forward(
        &self,
        ctx: ForwardCtx,
        _req: Request<ProxyBody>,
    ) -> Result<Forwarded, UpstreamError> {
        let pool = ctx
            .config
            .upstreams
            .get(ctx.upstream)
            .ok_or(UpstreamError::UnknownUpstream(ctx.upstream))?;
        let endpoint = pool
            .endpoints
            .first()
            .map(|e| e.address.clone())
            .unwrap_or_default();
        if self.unreachable.contains(&*pool.name) {
            return Err(UpstreamError::Connect {
                endpoint,
                source: Box::new(Unreachable) as BoxError,
            });
        }
        let status = {
            let cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
            match (&cur.route, cur.status) {
                (Some(r), Some(s)) if r.as_str() == &*ctx.route => s,
                _ => 200,
            }
        };
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        Ok(Forwarded {
            response: resp,
            endpoint: Arc::from(endpoint.as_str()),
        })
    }
}

/// Options of [`replay`].
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Candidate pools answered with a connect error.
    pub unreachable: Vec<String>,
    /// Pipeline settings (body and header limits, fail mode) of the candidate.
    pub settings: PipelineSettings,
    pub baseline_settings: PipelineSettings,
    /// The candidate has a TLS listener (`listen_tls`): an https redirect
    /// target is served by this proxy and followed; without one it leaves
    /// (TLS is terminated in front).
    pub tls_listener: bool,
    pub baseline_tls_listener: bool,
}

/// Redirect hops followed inside one config before the chain counts as a
/// loop (browsers give up at 20; five on-site hops are already a bug).
pub const MAX_REDIRECT_DEPTH: usize = 5;

/// Requests made up from a config's routes (`CompiledRoute::examples`), for
/// a sample too thin to exercise every route; at most `max`.
pub fn synthesize(config: &CompiledConfig, max: usize) -> Vec<SampledRequest> {
    let mut out = Vec::new();
    for route in &config.routes {
        for ex in &route.examples {
            if out.len() >= max {
                return out;
            }
            out.push(SampledRequest {
                method: ex.method.to_string(),
                scheme: "http".to_string(),
                port: ex.port,
                host: ex.host.clone(),
                path: ex.path.clone(),
                query: None,
                headers: ex
                    .headers
                    .iter()
                    .filter_map(|(n, v)| Some((n.to_string(), v.to_str().ok()?.to_string())))
                    .collect(),
                client_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
                body_len: 0,
                status: None,
                route: Some(route.name.to_string()),
                synthetic: true,
                ..SampledRequest::default()
            });
        }
    }
    out
}

/// The replay's clock for rate limits: a request recorded at `at_ms`
/// arrives at `start + (at_ms - first_ms)`, so per-client token buckets see
/// the recorded gaps however fast the replay runs. `None` when the sample
/// has no times (older samples): then requests arrive back to back.
#[derive(Debug, Clone, Copy)]
struct Clock {
    start: Instant,
    first_ms: u64,
}

impl Clock {
    fn of(requests: &[SampledRequest]) -> Option<Self> {
        let first_ms = requests.iter().map(|r| r.at_ms).filter(|t| *t > 0).min()?;
        Some(Clock {
            start: Instant::now(),
            first_ms,
        })
    }

    fn at(&self, at_ms: u64) -> Option<ArrivedAt> {
        if at_ms == 0 {
            return None;
        }
        let offset = std::time::Duration::from_millis(at_ms.saturating_sub(self.first_ms));
        self.start.checked_add(offset).map(ArrivedAt)
    }
}

/// Builds the HTTP request a sampled head stands for. Header names or values
/// that are not valid HTTP are left out (the sample file is not trusted).
fn to_request(s: &SampledRequest, clock: Option<Clock>) -> Request<Empty<Bytes>> {
    let pq = match &s.query {
        Some(q) => format!("{}?{q}", s.path),
        None => s.path.clone(),
    };
    let uri = pq.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/"));
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = uri;
    *req.method_mut() = http::Method::from_bytes(s.method.as_bytes()).unwrap_or(http::Method::GET);
    let host = s
        .host
        .as_deref()
        .and_then(|h| HeaderValue::from_str(h).ok());
    let headers = req.headers_mut();
    match host {
        Some(h) => {
            headers.insert(http::header::HOST, h);
        }
        // A request synthesized for a route that matches any host: HTTP/1.1
        // without Host is a 400 (`bad_host`) before any route is looked
        // at, so it would replay nothing. Any valid name reaches such a
        // route; `.invalid` is reserved and names nothing real.
        None if s.synthetic => {
            headers.insert(
                http::header::HOST,
                HeaderValue::from_static("synthesized.invalid"),
            );
        }
        // Recorded without Host: only HTTP/1.0 is served so, replay it so.
        None => *req.version_mut() = http::Version::HTTP_10,
    }
    let headers = req.headers_mut();
    for (n, v) in &s.headers {
        if n.eq_ignore_ascii_case("host") {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.append(n, v);
        }
    }
    // The body itself is not kept, its length is: the body limits read
    // `content-length` (the stub connector never reads a body).
    if s.body_len > 0 && !headers.contains_key(http::header::CONTENT_LENGTH) {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(s.body_len));
    } else if s.chunked
        && !headers.contains_key(http::header::CONTENT_LENGTH)
        && !headers.contains_key(http::header::TRANSFER_ENCODING)
    {
        headers.insert(
            http::header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    add_filler(headers, s.omitted_headers, s.omitted_header_bytes);
    req.extensions_mut().insert(ClientInfo {
        addr: SocketAddr::new(s.client_ip, 0),
        tls: s.scheme.eq_ignore_ascii_case("https"),
        local_port: s.port.unwrap_or(0),
    });
    if let Some(at) = clock.and_then(|c| c.at(s.at_ms)) {
        req.extensions_mut().insert(at);
    }
    req
}

/// At most this many filler lines, of at most this many bytes in all: the
/// sample file is not trusted.
const MAX_FILLER_HEADERS: u32 = 256;
const MAX_FILLER_BYTES: u64 = 256 * 1024;

/// Header lines the recorder left out (to keep the sample's heads small)
/// come back as `x-aegis-filler-N` lines of the same total size
/// (`name: value\r\n` each), so header count and size limits see the real
/// head.
fn add_filler(headers: &mut http::HeaderMap, lines: u32, bytes: u64) {
    let lines = lines.min(MAX_FILLER_HEADERS);
    if lines == 0 {
        return;
    }
    let bytes = bytes.min(MAX_FILLER_BYTES);
    let per_line = usize::try_from(bytes / u64::from(lines)).unwrap_or(0);
    for i in 0..lines {
        let name = format!("x-aegis-filler-{i}");
        // name + ": " + value + "\r\n"
        let overhead = name.len().saturating_add(4);
        let value = "a".repeat(per_line.saturating_sub(overhead).max(1));
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.append(n, v);
        }
    }
}

/// Sends one request through the pipeline; returns the outcome, the time
/// to the end of the response body, microseconds, and the `location` of a
/// redirect.
async fn one(
    pipeline: &Pipeline<SampleConnector>,
    s: &SampledRequest,
    clock: Option<Clock>,
) -> (Side, f64, Option<String>) {
    pipeline.connector().set_current(s);
    let req = to_request(s, clock);
    let start = Instant::now();
    let resp = match pipeline.clone().oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = resp.status().as_u16();
    let location = if (300..400).contains(&status) {
        resp.headers()
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    } else {
        None
    };
    let outcome = resp.extensions().get::<RequestOutcome>().cloned();
    // Drain the body so the pipeline's end-of-response work runs too.
    let _ = resp.into_body().collect().await;
    let micros = start.elapsed().as_secs_f64() * 1e6;
    let side = match outcome {
        Some(o) => Side {
            route: o.route.as_deref().map(str::to_string),
            action: o.summary.action.into_owned(),
            status,
            upstream: o.summary.upstream.as_deref().map(str::to_string),
            blocked: o.summary.blocked,
            score: o.summary.score,
        },
        None => Side {
            route: None,
            action: "unknown".to_string(),
            status,
            upstream: None,
            blocked: false,
            score: None,
        },
    };
    (side, micros, location)
}

/// 0 for 1xx–3xx, 1 for 4xx, 2 for 5xx: "worse" is a higher class.
fn class_rank(status: u16) -> u8 {
    match status {
        500.. => 2,
        400..=499 => 1,
        _ => 0,
    }
}

/// Classifies one request's change into `changes`; `route_kept` when the
/// candidate still has the route the baseline chose (or it chose none).
pub fn compare(changes: &mut Changes, ex: &ChangeExample, route_kept: bool) {
    let (b, c) = (&ex.baseline, &ex.candidate);
    let route_changed = b.route != c.route;
    let any =
        route_changed || b.action != c.action || b.status != c.status || b.blocked != c.blocked;
    if any {
        changes.changed.add(ex);
    }
    if route_changed {
        changes.route_changed.add(ex);
        if route_kept {
            changes.route_moved.add(ex);
        }
    }
    if is_local_instead(b, c) {
        changes.now_local.add(ex);
    }
    if c.blocked && !b.blocked {
        changes.newly_blocked.add(ex);
    }
    if class_rank(c.status) > class_rank(b.status) {
        changes.status_worsened.add(ex);
    }
    if c.status >= 500 && b.status < 500 {
        changes.now_5xx.add(ex);
    }
    if (400..500).contains(&c.status) && !(400..500).contains(&b.status) {
        changes.now_4xx.add(ex);
    }
    if (300..400).contains(&c.status) && !(300..400).contains(&b.status) {
        changes.now_redirected.add(ex);
    }
}

/// The baseline forwarded the request to an upstream; the candidate answers
/// it itself. A maintenance `respond` left on a forward route answers 200
/// and no status class worsens, yet no user reaches the application.
pub fn is_local_instead(b: &Side, c: &Side) -> bool {
    b.action == "forward" && c.action == "respond"
}

/// Whether a side's answer is what the user asked for: below 400, not
/// blocked, and not a redirect chain that ends badly (`broken`). For the
/// candidate also not a local answer where the baseline forwarded.
pub fn succeeded(side: &Side, broken_redirect: bool) -> bool {
    side.status < 400 && !side.blocked && !broken_redirect
}

/// What the redirect follower needs to know about one config.
#[derive(Debug, Default)]
struct Site {
    /// Host names (lowercase, no port) its routes and certificates name.
    named: HashSet<String>,
    /// Certificate names `*.example.com` as `example.com`.
    wildcards: Vec<String>,
    tls_listener: bool,
}

impl Site {
    fn of(config: &CompiledConfig, tls_listener: bool) -> Self {
        let mut site = Site {
            tls_listener,
            ..Site::default()
        };
        for r in &config.routes {
            for ex in &r.examples {
                if let Some(h) = &ex.host {
                    site.named.insert(bare_host(h));
                }
            }
        }
        for c in &config.certificates {
            for n in &c.server_names {
                match n.strip_prefix("*.") {
                    Some(rest) => site.wildcards.push(rest.to_ascii_lowercase()),
                    None => {
                        site.named.insert(n.to_ascii_lowercase());
                    }
                }
            }
        }
        site
    }

    /// Named by a route or a certificate of this config, or seen in the
    /// recorded traffic (so it reaches this proxy).
    fn names(&self, host: &str, recorded: &HashSet<String>) -> bool {
        self.named.contains(host)
            || recorded.contains(host)
            || self.wildcards.iter().any(|w| {
                host.strip_suffix(w.as_str())
                    .and_then(|l| l.strip_suffix('.'))
                    .is_some_and(|l| !l.is_empty() && !l.contains('.'))
            })
    }
}

/// `Example.COM:8443` → `example.com`.
fn bare_host(h: &str) -> String {
    let h = h.trim();
    let h = if h.starts_with('[') {
        h.split(']').next().map_or(h, |x| x.trim_start_matches('['))
    } else {
        h.rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(h, |(host, _)| host)
    };
    h.to_ascii_lowercase()
}

/// The URL of a request, for loop detection.
fn url_of(s: &SampledRequest) -> String {
    let scheme = if s.scheme.eq_ignore_ascii_case("https") {
        "https"
    } else {
        "http"
    };
    let host = s.host.as_deref().unwrap_or("").to_ascii_lowercase();
    match &s.query {
        Some(q) => format!("{scheme}://{host}{}?{q}", s.path),
        None => format!("{scheme}://{host}{}", s.path),
    }
}

/// The request a `location` sends the client to, from `from`. `None` for
/// what is not an http(s) URL.
fn target(from: &SampledRequest, location: &str) -> Option<SampledRequest> {
    let loc = location.trim();
    let (scheme, rest) = if let Some(r) = loc.strip_prefix("https://") {
        ("https".to_string(), Some(r))
    } else if let Some(r) = loc.strip_prefix("http://") {
        ("http".to_string(), Some(r))
    } else if let Some(r) = loc.strip_prefix("//") {
        (from.scheme.clone(), Some(r))
    } else if loc.contains("://") {
        return None;
    } else {
        (from.scheme.clone(), None)
    };
    let (host, pq) = match rest {
        Some(r) => {
            let cut = r.find(['/', '?', '#']).unwrap_or(r.len());
            let (h, p) = r.split_at(cut);
            (Some(h.to_string()), p.to_string())
        }
        None if loc.starts_with('/') => (from.host.clone(), loc.to_string()),
        None => {
            // Relative to the current path's directory.
            let dir = from.path.rsplit_once('/').map_or("", |(d, _)| d);
            (from.host.clone(), format!("{dir}/{loc}"))
        }
    };
    let pq = pq.split('#').next().unwrap_or("");
    let (path, query) = match pq.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (pq.to_string(), None),
    };
    let path = if path.is_empty() {
        "/".to_string()
    } else {
        path
    };
    Some(SampledRequest {
        method: "GET".to_string(),
        scheme,
        host,
        path,
        query,
        headers: from.headers.clone(),
        client_ip: from.client_ip,
        body_len: 0,
        status: None,
        route: None,
        synthetic: from.synthetic,
        at_ms: from.at_ms,
        ..SampledRequest::default()
    })
}

/// Follows `location` (the answer to `start`) through `pipeline` until a
/// final answer, a loop, a host this config does not serve, or
/// [`MAX_REDIRECT_DEPTH`] hops.
async fn follow(
    pipeline: &Pipeline<SampleConnector>,
    clock: Option<Clock>,
    site: &Site,
    recorded: &HashSet<String>,
    start: &SampledRequest,
    location: String,
) -> RedirectEnd {
    let mut chain = vec![url_of(start)];
    let mut cur = start.clone();
    let mut location = location;
    for _ in 0..MAX_REDIRECT_DEPTH {
        let Some(next) = target(&cur, &location) else {
            return RedirectEnd::Served { status: 0 };
        };
        let url = url_of(&next);
        if chain.last().is_some_and(|u| *u == url) {
            return RedirectEnd::ToItself { location };
        }
        if chain.contains(&url) {
            chain.push(url);
            return RedirectEnd::Loop { chain };
        }
        let host = bare_host(next.host.as_deref().unwrap_or(""));
        let https = next.scheme == "https";
        if https && !site.tls_listener {
            // TLS is terminated in front of this proxy: the target leaves it.
            return RedirectEnd::Served { status: 0 };
        }
        if !site.names(&host, recorded) {
            return RedirectEnd::Unserved { host, location };
        }
        chain.push(url);
        let (side, _, loc) = one(pipeline, &next, clock).await;
        if side.action == "no_route" {
            return RedirectEnd::Unserved { host, location };
        }
        match loc {
            Some(l) => {
                cur = next;
                location = l;
            }
            None => {
                return RedirectEnd::Served {
                    status: side.status,
                };
            }
        }
    }
    RedirectEnd::Loop { chain }
}

fn broken(end: &Option<RedirectEnd>) -> bool {
    matches!(
        end,
        Some(
            RedirectEnd::ToItself { .. } | RedirectEnd::Loop { .. } | RedirectEnd::Unserved { .. }
        )
    )
}

/// Counts a candidate redirect that ends badly where the baseline's did not
/// end the same way. An unserved host counts only when it used to be
/// served: the baseline names it, or the baseline's redirect of the same
/// request ended on a page (a changed target, a typo'd domain). A new
/// redirect to a site that was never this proxy's is someone else's page.
fn compare_redirects(
    out: &mut RedirectChanges,
    base_site: &Site,
    recorded: &HashSet<String>,
    describe: impl Fn() -> String,
    b: &Option<RedirectEnd>,
    c: &Option<RedirectEnd>,
) {
    let same_kind = std::mem::discriminant;
    let new_kind = |e: &RedirectEnd| !b.as_ref().is_some_and(|b| same_kind(b) == same_kind(e));
    match c {
        Some(e @ RedirectEnd::ToItself { location }) if new_kind(e) => {
            out.to_itself
                .add(|| format!("{} → {location} (itself)", describe()));
        }
        Some(e @ RedirectEnd::Loop { chain }) if new_kind(e) => {
            out.loops
                .add(|| format!("{}: {}", describe(), chain.join(" → ")));
        }
        Some(RedirectEnd::Unserved { host, location }) => {
            let was_served = base_site.names(host, recorded)
                || matches!(b, Some(RedirectEnd::Served { status }) if *status != 0);
            let same = matches!(b, Some(RedirectEnd::Unserved { host: h, .. }) if h == host);
            if was_served && !same {
                out.unserved.add(|| {
                    format!(
                        "{} → {location} ({host} is not served by this config)",
                        describe()
                    )
                });
            }
        }
        _ => {}
    }
}

/// Replays `requests` through the candidate (and the baseline, when given)
/// and compares them request by request.
pub async fn replay(
    candidate: Arc<CompiledConfig>,
    baseline: Option<Arc<CompiledConfig>>,
    requests: &[SampledRequest],
    opts: ReplayOptions,
) -> ReplayReport {
    let cand_site = Site::of(&candidate, opts.tls_listener);
    let cand_routes: HashSet<String> = candidate
        .routes
        .iter()
        .map(|r| r.name.to_string())
        .collect();
    let base_site = baseline
        .as_ref()
        .map(|b| Site::of(b, opts.baseline_tls_listener))
        .unwrap_or_default();
    // Hosts live traffic reached this proxy with.
    let recorded: HashSet<String> = requests
        .iter()
        .filter(|r| !r.synthetic)
        .filter_map(|r| r.host.as_deref().map(bare_host))
        .collect();
    let cand = Pipeline::builder(
        ConfigHandle::from_arc(candidate),
        SampleConnector::new(opts.unreachable.iter().cloned()),
    )
    .settings(opts.settings)
    .build();
    let base = baseline.map(|b| {
        Pipeline::builder(ConfigHandle::from_arc(b), SampleConnector::new([]))
            .settings(opts.baseline_settings)
            .build()
    });

    let mut report = ReplayReport {
        requests: requests.len(),
        unreachable_upstreams: opts.unreachable.clone(),
        ..ReplayReport::default()
    };
    let mut cand_lat = Vec::with_capacity(requests.len());
    let mut base_lat = Vec::with_capacity(if base.is_some() { requests.len() } else { 0 });
    let mut base_tally = Tally::default();
    let mut cand_time = 0.0f64;
    let mut per_route: BTreeMap<String, RouteCompare> = BTreeMap::new();
    // With recorded times, requests go in the order they arrived.
    let clock = Clock::of(requests);
    let mut order: Vec<&SampledRequest> = requests.iter().collect();
    if clock.is_some() {
        order.sort_by_key(|r| r.at_ms);
    }
    for s in order {
        let (c, c_us, c_loc) = one(&cand, s, clock).await;
        cand_time += c_us;
        cand_lat.push(c_us);
        let c_end = match c_loc {
            Some(l) => Some(follow(&cand, clock, &cand_site, &recorded, s, l).await),
            None => None,
        };
        report.candidate.add(&c);
        let Some(base) = &base else {
            let key = c.route.clone().unwrap_or_else(|| "-".to_string());
            let rc = per_route.entry(key).or_default();
            rc.requests = rc.requests.saturating_add(1);
            rc.candidate.add(&c, succeeded(&c, broken(&c_end)));
            continue;
        };
        let (b, b_us, b_loc) = one(base, s, clock).await;
        base_lat.push(b_us);
        base_tally.add(&b);
        let b_end = match b_loc {
            Some(l) => Some(follow(base, clock, &base_site, &recorded, s, l).await),
            None => None,
        };
        let ex = ChangeExample {
            method: s.method.clone(),
            host: s.host.clone(),
            path: s.path.clone(),
            synthetic: s.synthetic,
            baseline: b,
            candidate: c,
        };
        let kept = ex
            .baseline
            .route
            .as_ref()
            .is_none_or(|r| cand_routes.contains(r));
        compare(&mut report.changes, &ex, kept);
        compare_redirects(
            &mut report.redirects,
            &base_site,
            &recorded,
            || {
                format!(
                    "{} {}{}: {}",
                    s.method,
                    s.host.as_deref().unwrap_or(""),
                    s.path,
                    ex.candidate.status
                )
            },
            &b_end,
            &c_end,
        );
        let b_ok = succeeded(&ex.baseline, broken(&b_end));
        let c_ok = succeeded(&ex.candidate, broken(&c_end))
            && !is_local_instead(&ex.baseline, &ex.candidate);
        let key = ex.baseline.route.clone().unwrap_or_else(|| "-".to_string());
        let rc = per_route.entry(key).or_default();
        rc.requests = rc.requests.saturating_add(1);
        if s.synthetic {
            rc.synthesized = rc.synthesized.saturating_add(1);
        }
        rc.baseline.add(&ex.baseline, b_ok);
        rc.candidate.add(&ex.candidate, c_ok);
        if b_ok && !c_ok && rc.example.is_none() {
            rc.example = Some(ex);
        }
    }
    report.per_route = per_route;
    report.changes.finish(requests.len());
    report.latency_us = Percentiles::from_micros(&mut cand_lat);
    if base.is_some() {
        report.baseline_latency_us = Some(Percentiles::from_micros(&mut base_lat));
        report.baseline = Some(base_tally);
    }
    report.replay_ms = cand_time / 1000.0;
    report.replay_rate = if cand_time > 0.0 {
        requests.len() as f64 / (cand_time / 1e6)
    } else {
        0.0
    };
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use aegis_engine::config::{ConfigSource, Limits, SourceFile, compile};

    fn config(files: &[(&str, &str)]) -> Arc<CompiledConfig> {
        let src = ConfigSource::from_files(
            std::path::Path::new("/nonexistent"),
            files
                .iter()
                .map(|(n, t)| SourceFile {
                    name: n.to_string(),
                    text: t.to_string(),
                })
                .collect(),
        );
        Arc::new(compile(&src, &Limits::default()).unwrap())
    }

    fn get(path: &str, status: Option<u16>, route: Option<&str>) -> SampledRequest {
        SampledRequest {
            method: "GET".into(),
            scheme: "http".into(),
            host: Some("example.com".into()),
            path: path.into(),
            query: None,
            headers: vec![("accept".into(), "*/*".into())],
            client_ip: "10.0.0.1".parse().unwrap(),
            body_len: 0,
            status,
            route: route.map(str::to_string),
            synthetic: false,
            ..SampledRequest::default()
        }
    }

    const WELCOME: &str = "routes:\n  - name: welcome\n    match: { path_prefix: \"/\" }\n    respond: { status: 200, body: \"hi\" }\n";

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn unreachable_pool_turns_5xx() {
        let base = config(&[("routes.yaml", WELCOME)]);
        let cand = config(&[(
            "routes.yaml",
            "upstreams:\n  - name: dead\n    endpoints: [\"127.0.0.1:1\"]\nroutes:\n  - name: all\n    match: { path_prefix: \"/\" }\n    upstream: dead\n",
        )]);
        let reqs: Vec<_> = (0..10)
            .map(|i| get(&format!("/p{i}"), Some(200), Some("welcome")))
            .collect();
        let r = rt().block_on(replay(
            cand,
            Some(base),
            &reqs,
            ReplayOptions {
                unreachable: vec!["dead".into()],
                ..ReplayOptions::default()
            },
        ));
        assert_eq!(r.requests, 10);
        assert_eq!(r.changes.status_worsened.count, 10);
        assert_eq!(r.changes.now_5xx.count, 10);
        assert_eq!(r.changes.route_changed.count, 10);
        assert_eq!(r.candidate.by_status.get(&502), Some(&10));
        assert!((r.changes.status_worsened.share - 1.0).abs() < 1e-9);
    }

    #[test]
    fn recorded_status_is_answered_on_the_same_route() {
        let cfg = "upstreams:\n  - name: app\n    endpoints: [\"127.0.0.1:9\"]\nroutes:\n  - name: app\n    match: { path_prefix: \"/\" }\n    upstream: app\n";
        let c = config(&[("routes.yaml", cfg)]);
        let reqs = vec![
            get("/a", Some(404), Some("app")),
            get("/b", Some(503), Some("other")),
            get("/c", None, None),
        ];
        let r = rt().block_on(replay(c.clone(), Some(c), &reqs, ReplayOptions::default()));
        assert_eq!(r.candidate.by_status.get(&404), Some(&1));
        assert_eq!(r.candidate.by_status.get(&200), Some(&2));
        assert_eq!(r.changes.changed.count, 0);
    }

    #[test]
    fn synthesizes_from_routes() {
        let c = config(&[("routes.yaml", WELCOME)]);
        let s = synthesize(&c, 100);
        assert!(!s.is_empty());
        assert!(s.iter().all(|r| r.synthetic));
        assert!(synthesize(&c, 0).is_empty());
    }
    fn judge(r: &ReplayReport) -> crate::gate::verdict::Verdict {
        use crate::gate::report::{Isolation, RunnerOutcome, SandboxReport};
        let mut rep = SandboxReport::new(Isolation::default());
        rep.outcome = RunnerOutcome::Replayed;
        rep.replay = Some(r.clone());
        crate::gate::verdict::judge(
            &crate::gate::verdict::SandboxOutcome::Report(Box::new(rep)),
            &aegis_engine::config::settings::GatePolicy::default(),
            &aegis_engine::config::settings::SandboxLimits::default(),
        )
    }

    const SHOP: &str = "upstreams:\n  - name: app\n    endpoints: [\"127.0.0.1:9\"]\nroutes:\n  - name: checkout\n    match: { path_prefix: \"/checkout\" }\n    upstream: app\n  - name: site\n    match: { path_prefix: \"/\" }\n    upstream: app\n";

    /// 990 page views and 10 checkout POSTs with a 5 KB body (1 % of the
    /// sample, at the global limit, not over it).
    fn shop_sample() -> Vec<SampledRequest> {
        let mut v: Vec<_> = (0..990)
            .map(|i| get(&format!("/p{i}"), Some(200), Some("site")))
            .collect();
        for i in 0..10 {
            let mut r = get(&format!("/checkout/{i}"), Some(200), Some("checkout"));
            r.method = "POST".into();
            r.body_len = 5000;
            v.push(r);
        }
        v
    }

    #[test]
    fn a_small_route_is_judged_on_its_own_with_its_body_lengths() {
        let base = config(&[("routes.yaml", SHOP)]);
        let cand = config(&[(
            "routes.yaml",
            &SHOP.replace(
                "    upstream: app\n  - name: site",
                "    upstream: app\n    max_request_body: 1KiB\n  - name: site",
            ),
        )]);
        let r = rt().block_on(replay(
            cand,
            Some(base),
            &shop_sample(),
            ReplayOptions::default(),
        ));
        let rc = &r.per_route["checkout"];
        assert_eq!(
            (rc.requests, rc.baseline.success, rc.candidate.success),
            (10, 10, 0)
        );
        assert_eq!(rc.candidate.s4xx, 10);
        assert_eq!(r.per_route["site"].candidate.success, 990);
        // 1.0 % worse globally: not over max_status_worsened.
        assert_eq!(r.changes.status_worsened.count, 10);
        let v = judge(&r);
        assert_eq!(v.code(), "regression:route", "{v:?}");
        assert!(
            v.sentence
                .contains("route checkout: success 100.0% → 0.0% of 10"),
            "{}",
            v.sentence
        );
        assert!(v.sentence.contains("(1.0% of the sample"), "{}", v.sentence);
    }

    #[test]
    fn a_forward_route_answered_locally_is_a_change() {
        let base = config(&[("routes.yaml", SHOP)]);
        let cand = config(&[(
            "routes.yaml",
            &SHOP.replace(
                "  - name: checkout\n    match: { path_prefix: \"/checkout\" }\n    upstream: app\n",
                "  - name: checkout\n    match: { path_prefix: \"/checkout\" }\n    respond: { status: 200, body: \"back soon\" }\n",
            ),
        )]);
        let r = rt().block_on(replay(
            cand,
            Some(base),
            &shop_sample(),
            ReplayOptions::default(),
        ));
        assert_eq!(r.changes.now_local.count, 10);
        assert_eq!(r.changes.status_worsened.count, 0);
        assert_eq!(r.per_route["checkout"].candidate.local, 10);
        let v = judge(&r);
        // The route's success share went to 0: named as such, and the
        // example says the answer is now local (1.0 % of the sample is not
        // over the global max_now_local).
        assert_eq!(v.code(), "regression:route", "{v:?}");
        assert!(v.sentence.contains("answered locally 10"), "{}", v.sentence);
        assert!(
            v.sentence.contains("(route checkout, respond)"),
            "{}",
            v.sentence
        );
    }

    fn redirects(extra: &str) -> String {
        format!(
            "routes:\n{extra}  - name: page\n    match: {{ path_prefix: \"/\" }}\n    respond: {{ status: 200, body: \"page\" }}\n"
        )
    }

    #[test]
    fn a_redirect_loop_inside_the_config_is_followed_and_named() {
        let base = config(&[("routes.yaml", &redirects(""))]);
        let cand = config(&[(
            "routes.yaml",
            &redirects(
                "  - name: root\n    match: { path: \"/\" }\n    redirect: { status: 301, location: \"/index\" }\n  - name: index\n    match: { path: \"/index\" }\n    redirect: { status: 302, location: \"/\" }\n",
            ),
        )]);
        let reqs: Vec<_> = (0..100)
            .map(|_| get("/", Some(200), Some("page")))
            .collect();
        let r = rt().block_on(replay(cand, Some(base), &reqs, ReplayOptions::default()));
        // 200 → 301 is no worse status class…
        assert_eq!(r.changes.status_worsened.count, 0);
        assert_eq!(r.redirects.loops.count, 100);
        let v = judge(&r);
        assert_eq!(v.code(), "regression:redirect_loop", "{v:?}");
        assert!(
            v.sentence
                .contains("http://example.com/ → http://example.com/index → http://example.com/"),
            "{}",
            v.sentence
        );
    }

    #[test]
    fn an_https_redirect_on_the_tls_listener_points_at_itself() {
        let base = config(&[("routes.yaml", &redirects(""))]);
        let cand = config(&[(
            "routes.yaml",
            &redirects(
                "  - name: to-https\n    match: { path_prefix: \"/\" }\n    redirect: { status: 301, location: \"https://$host$request_uri\" }\n",
            ),
        )]);
        let mut reqs: Vec<_> = (0..50)
            .map(|_| get("/a", Some(200), Some("page")))
            .collect();
        for r in &mut reqs {
            r.scheme = "https".into();
        }
        let opts = ReplayOptions {
            tls_listener: true,
            baseline_tls_listener: true,
            ..ReplayOptions::default()
        };
        let r = rt().block_on(replay(
            cand.clone(),
            Some(base.clone()),
            &reqs,
            opts.clone(),
        ));
        assert_eq!(r.redirects.to_itself.count, 50);
        assert_eq!(judge(&r).code(), "regression:redirect_self");
        // On a plain listener, with TLS terminated in front, the same
        // redirect leaves this proxy: nothing to judge.
        for r in &mut reqs {
            r.scheme = "http".into();
        }
        let r = rt().block_on(replay(cand, Some(base), &reqs, ReplayOptions::default()));
        assert_eq!(r.redirects.to_itself.count + r.redirects.loops.count, 0);
        let v = judge(&r);
        assert!(!v.code().starts_with("regression:redirect"), "{v:?}");
        assert!(
            !v.also.iter().any(|a| a.starts_with("regression:redirect")),
            "{v:?}"
        );
    }

    #[test]
    fn a_redirect_to_a_host_no_longer_served() {
        let hosts = |target: &str| {
            format!(
                "routes:\n  - name: old\n    match: {{ host: old.example.com }}\n    redirect: {{ status: 301, location: \"http://{target}$request_uri\" }}\n  - name: new\n    match: {{ host: new.example.com }}\n    respond: {{ status: 200, body: \"new\" }}\n"
            )
        };
        let base = config(&[("routes.yaml", &hosts("new.example.com"))]);
        let typo = config(&[("routes.yaml", &hosts("new.exmaple.com"))]);
        let reqs: Vec<_> = (0..20)
            .map(|_| {
                let mut r = get("/x", Some(301), Some("old"));
                r.host = Some("old.example.com".into());
                r
            })
            .collect();
        let r = rt().block_on(replay(
            typo,
            Some(base.clone()),
            &reqs,
            ReplayOptions::default(),
        ));
        assert_eq!(r.redirects.unserved.count, 20);
        let v = judge(&r);
        assert_eq!(v.code(), "regression:redirect_unserved", "{v:?}");
        assert!(v.sentence.contains("new.exmaple.com"), "{}", v.sentence);
        // The same config against itself: nothing changed.
        let r = rt().block_on(replay(
            base.clone(),
            Some(base),
            &reqs,
            ReplayOptions::default(),
        ));
        assert_eq!(r.redirects.unserved.count, 0);
    }

    #[test]
    fn rate_limits_see_the_recorded_pace_per_client() {
        let limited = "rate_limits:\n  - name: tight\n    requests_per_second: 1\n    burst: 1\nroutes:\n  - name: page\n    match: { path_prefix: \"/\" }\n    rate_limit: tight\n    respond: { status: 200, body: \"page\" }\n";
        let base = config(&[("routes.yaml", &redirects(""))]);
        let cand = config(&[("routes.yaml", limited)]);
        // Two clients, each one request every 2 s: never over 1/s.
        let reqs: Vec<_> = (0..20u64)
            .map(|i| {
                let mut r = get("/", Some(200), Some("page"));
                r.client_ip = if i % 2 == 0 { "10.0.0.1" } else { "10.0.0.2" }
                    .parse()
                    .unwrap();
                r.at_ms = 1_700_000_000_000 + i * 1000;
                r
            })
            .collect();
        let r = rt().block_on(replay(
            cand.clone(),
            Some(base.clone()),
            &reqs,
            ReplayOptions::default(),
        ));
        assert_eq!(
            r.candidate.by_status.get(&429),
            None,
            "{:?}",
            r.candidate.by_status
        );
        // Without recorded times they arrive back to back and trip it.
        let burst: Vec<_> = reqs
            .iter()
            .cloned()
            .map(|mut r| {
                r.at_ms = 0;
                r
            })
            .collect();
        let r = rt().block_on(replay(cand, Some(base), &burst, ReplayOptions::default()));
        assert!(
            r.candidate.by_status.get(&429).is_some_and(|n| *n >= 16),
            "{:?}",
            r.candidate.by_status
        );
    }

    #[test]
    fn omitted_headers_come_back_as_filler() {
        let mut s = get("/", None, None);
        s.omitted_headers = 4;
        s.omitted_header_bytes = 4000;
        let req = to_request(&s, None);
        let filler: usize = req
            .headers()
            .iter()
            .filter(|(n, _)| n.as_str().starts_with("x-aegis-filler-"))
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        assert_eq!(filler, 4000);
    }
}
