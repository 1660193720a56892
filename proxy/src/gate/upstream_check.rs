//! The upstream check: a few of the sample's safe requests sent to the real
//! upstreams as the candidate would send them and as the active config
//! does, and the answers compared (issue 14, item 1).
//!
//! The replay's stub connector answers with the recorded status, so what
//! only the upstream sees is invisible there: a Host rewritten to a name the
//! upstream refuses, a `strip_prefix` that strips too much, a route pointed
//! at the wrong (existing) pool, a 1 ms timeout, a health-check path typo.
//!
//! Two halves, on both sides of the sandbox boundary:
//!
//! - **[`plan`]**, in the runner (no network): each eligible sampled request
//!   (GET/HEAD without a body, nothing redacted in its path or query) goes
//!   through the real [`Pipeline`] of both configs with a [`CaptureConnector`]
//!   that keeps the upstream request as the pipeline hands it over (the
//!   rewritten head, the pool, the endpoint, the timeouts) and answers 200.
//!   Pairs whose two requests are identical are dropped (nothing the
//!   candidate does can differ); the rest are taken round robin across
//!   routes up to `max_requests` distinct requests, into the report's
//!   [`UpstreamPlan`].
//! - **[`run`]**, in the gate after the runner exited: every distinct
//!   request of the plan is sent once (at most `max_requests`, at most
//!   `max_rate` per second per endpoint, within `time_budget`), each with the
//!   timeouts its config would use, and the answers of each pair compared:
//!   status class, `Location`, content type and a length bucket. Worse
//!   (`upstream:status`, `upstream:timeout`, `upstream:connect`,
//!   `upstream:location`) is judged by [`findings`].
//!
//! The gate does not trust the plan's size: it dedupes and caps it again.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_engine::CompiledConfig;
use aegis_engine::config::settings::UpstreamCheckSettings;
use aegis_engine::sample::SampledRequest;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tower::ServiceExt;

use super::report::{UpstreamCheck, UpstreamPair, UpstreamPlan, UpstreamRequest};
use crate::pipeline::{
    ClientInfo, ConfigHandle, Connector, ForwardCtx, Forwarded, Pipeline, PipelineSettings,
    ProxyBody, UpstreamError, empty,
};

/// Header the gate adds to every check request, so an upstream's operators
/// can tell (and filter) them; both sides get it, so it changes no answer
/// the comparison depends on.
pub const CHECK_HEADER: &str = "x-aegis-check";

/// Body bytes read to measure a response without a Content-Length.
const MAX_BODY_READ: usize = 256 << 10;
/// Check requests in flight at once (the per-endpoint pacing still holds).
const CONCURRENCY: usize = 8;
/// Examples kept in the result.
const MAX_EXAMPLES: usize = 20;

/// The connector of [`plan`]: keeps what the pipeline would send upstream
/// and answers 200 without touching the network.
#[derive(Debug, Clone, Default)]
pub struct CaptureConnector {
    captured: Arc<Mutex<Option<UpstreamRequest>>>,
}

impl CaptureConnector {
    fn take(&self) -> Option<UpstreamRequest> {
        self.captured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Connector for CaptureConnector {
    async fn forward(
        &self,
        ctx: ForwardCtx,
        req: Request<ProxyBody>,
    ) -> Result<Forwarded, UpstreamError> {
        let pool = ctx
            .config
            .upstreams
            .get(ctx.upstream)
            .ok_or(UpstreamError::UnknownUpstream(ctx.upstream))?;
        // The endpoint a fresh balancer starts with: the first that takes
        // traffic (weight above 0, not a backup), else the first.
        let endpoint = pool
            .endpoints
            .iter()
            .find(|e| e.weight > 0 && !e.backup)
            .or_else(|| pool.endpoints.first())
            .map(|e| e.address.clone())
            .unwrap_or_default();
        let target = req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_string(), ToString::to_string);
        let headers = req
            .headers()
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let captured = UpstreamRequest {
            pool: pool.name.to_string(),
            endpoint: endpoint.clone(),
            method: req.method().as_str().to_string(),
            target,
            headers,
            connect_timeout_ms: ms(pool.connect_timeout),
            response_timeout_ms: ms(ctx.timeout.unwrap_or(pool.response_timeout)),
        };
        *self.captured.lock().unwrap_or_else(|e| e.into_inner()) = Some(captured);
        let resp = Response::new(empty());
        Ok(Forwarded {
            response: resp,
            endpoint: Arc::from(endpoint.as_str()),
        })
    }
}

/// A sampled request the check may send: GET or HEAD, no body, and no
/// placeholder where a secret was (a redacted path or query would only ask
/// for a page nobody has).
fn eligible(s: &SampledRequest) -> bool {
    (s.method == "GET" || s.method == "HEAD")
        && s.body_len == 0
        && !s.chunked
        && !s
            .redacted
            .iter()
            .any(|r| r.starts_with("path:") || r.starts_with("query:"))
}

/// The client request a sampled head stands for, without the headers that
/// held secrets (their placeholders would only earn a 401 from the upstream,
/// on both sides, and look like a credential-stuffing attempt in its logs).
fn to_request(s: &SampledRequest) -> Request<Empty<Bytes>> {
    let pq = match &s.query {
        Some(q) => format!("{}?{q}", s.path),
        None => s.path.clone(),
    };
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = pq.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/"));
    *req.method_mut() = http::Method::from_bytes(s.method.as_bytes()).unwrap_or(http::Method::GET);
    let dropped: HashSet<String> = s
        .redacted
        .iter()
        .filter_map(|r| {
            r.strip_prefix("header:")
                .map(str::to_ascii_lowercase)
                .or_else(|| r.starts_with("cookie:").then(|| "cookie".to_string()))
        })
        .collect();
    let host = s.host.as_deref().unwrap_or("synthesized.invalid");
    if let Ok(h) = HeaderValue::from_str(host) {
        req.headers_mut().insert(http::header::HOST, h);
    }
    for (n, v) in &s.headers {
        let lower = n.to_ascii_lowercase();
        if lower == "host" || dropped.contains(&lower) || v == "[redacted]" {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            req.headers_mut().append(n, v);
        }
    }
    req.extensions_mut().insert(ClientInfo {
        addr: SocketAddr::new(s.client_ip, 0),
        tls: s.scheme.eq_ignore_ascii_case("https"),
        local_port: s.port.unwrap_or(0),
    });
    req
}

async fn capture(
    p: &Pipeline<CaptureConnector>,
    s: &SampledRequest,
) -> Option<(UpstreamRequest, Option<std::sync::Arc<str>>)> {
    let _ = p.connector().take();
    let resp = match p.clone().oneshot(to_request(s)).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let route = resp
        .extensions()
        .get::<crate::pipeline::RequestOutcome>()
        .and_then(|o| o.route.clone());
    let _ = resp.into_body().collect().await;
    p.connector().take().map(|r| (r, route))
}

/// Distinct requests a plan's pairs need that `have` does not hold yet.
fn new_requests<'a>(
    pair: &'a UpstreamPair,
    have: &HashSet<&UpstreamRequest>,
) -> Vec<&'a UpstreamRequest> {
    let mut out = Vec::new();
    for r in [&pair.baseline, &pair.candidate] {
        if !have.contains(r) && !out.contains(&r) {
            out.push(r);
        }
    }
    out
}

/// Takes pairs round robin across routes (so a small route is checked too)
/// while their distinct requests fit in `max_requests`. Returns the pairs
/// and how many were left out.
fn select(
    by_route: BTreeMap<String, VecDeque<UpstreamPair>>,
    max: u64,
) -> (Vec<UpstreamPair>, u64) {
    let mut queues: Vec<VecDeque<UpstreamPair>> = by_route.into_values().collect();
    let mut chosen: Vec<UpstreamPair> = Vec::new();
    let mut left_out = 0u64;
    let mut sent: u64 = 0;
    loop {
        let mut progressed = false;
        for q in &mut queues {
            let Some(pair) = q.pop_front() else { continue };
            progressed = true;
            let have: HashSet<&UpstreamRequest> = chosen
                .iter()
                .flat_map(|p| [&p.baseline, &p.candidate])
                .collect();
            let n = u64::try_from(new_requests(&pair, &have).len()).unwrap_or(u64::MAX);
            if sent.saturating_add(n) <= max {
                sent = sent.saturating_add(n);
                chosen.push(pair);
            } else {
                left_out = left_out.saturating_add(1);
            }
        }
        if !progressed {
            return (chosen, left_out);
        }
    }
}

/// Health checks as the health checker sends them (`GET path`, `Host` the
/// endpoint): one pair per pool both configs have when the check's path or
/// timeout changed.
fn health_pairs(candidate: &CompiledConfig, baseline: &CompiledConfig) -> Vec<UpstreamPair> {
    let mut out = Vec::new();
    for cp in &candidate.upstreams {
        let Some(bp) = baseline.upstreams.iter().find(|b| b.name == cp.name) else {
            continue;
        };
        let (Some(ch), Some(bh)) = (&cp.health_check, &bp.health_check) else {
            continue;
        };
        // One endpoint both configs check (the active config's first that
        // the candidate keeps): only the path and the timeout differ.
        let Some(be) = bp
            .endpoints
            .iter()
            .find(|b| cp.endpoints.iter().any(|c| c.address == b.address))
        else {
            continue;
        };
        let ce = be;
        let req = |pool: &str, ep: &str, path: &str, connect: Duration, timeout: Duration| {
            UpstreamRequest {
                pool: pool.to_string(),
                endpoint: ep.to_string(),
                method: "GET".to_string(),
                target: path.to_string(),
                headers: vec![("host".to_string(), ep.to_string())],
                connect_timeout_ms: ms(connect),
                response_timeout_ms: ms(timeout),
            }
        };
        let b = req(
            &bp.name,
            &be.address,
            &bh.path,
            bp.connect_timeout,
            bh.timeout,
        );
        let c = req(
            &cp.name,
            &ce.address,
            &ch.path,
            cp.connect_timeout,
            ch.timeout,
        );
        if b != c {
            out.push(UpstreamPair {
                route: format!("health:{}", cp.name),
                request: format!("health check of pool {}", cp.name),
                baseline: b,
                candidate: c,
            });
        }
    }
    out
}

/// The runner's half: the pairs to send, at most `max_requests` distinct
/// requests. Only sampled requests both configs forward, to pools both have.
pub async fn plan(
    candidate: Arc<CompiledConfig>,
    baseline: Arc<CompiledConfig>,
    cand_settings: PipelineSettings,
    base_settings: PipelineSettings,
    requests: &[SampledRequest],
    max_requests: u64,
) -> UpstreamPlan {
    let both: HashSet<String> = candidate
        .upstreams
        .iter()
        .map(|u| u.name.to_string())
        .filter(|n| baseline.upstreams.iter().any(|b| *b.name == **n))
        .collect();
    let known: HashSet<String> = baseline
        .upstreams
        .iter()
        .flat_map(|u| u.endpoints.iter().map(|e| e.address.clone()))
        .collect();
    let hp = health_pairs(&candidate, &baseline);
    let cand = Pipeline::builder(
        ConfigHandle::from_arc(candidate),
        CaptureConnector::default(),
    )
    .settings(cand_settings)
    .build();
    let base = Pipeline::builder(
        ConfigHandle::from_arc(baseline),
        CaptureConnector::default(),
    )
    .settings(base_settings)
    .build();
    let mut out = UpstreamPlan::default();
    let mut seen: HashSet<(UpstreamRequest, UpstreamRequest)> = HashSet::new();
    let mut by_route: BTreeMap<String, VecDeque<UpstreamPair>> = BTreeMap::new();
    for p in hp {
        by_route.entry(p.route.clone()).or_default().push_back(p);
    }
    // Recorded requests first: they are what users send.
    let ordered = requests
        .iter()
        .filter(|r| !r.synthetic)
        .chain(requests.iter().filter(|r| r.synthetic));
    for s in ordered.filter(|s| eligible(s)) {
        let Some((b, route)) = capture(&base, s).await else {
            continue;
        };
        let Some((c, _)) = capture(&cand, s).await else {
            continue;
        };
        // Pools both configs have, and only endpoints the active config
        // already sends to: the check never brings traffic to a new address
        // (a node not yet ready; the TCP probe and the canary judge those),
        // and a candidate cannot make the gate send requests elsewhere.
        if !both.contains(&b.pool) || !both.contains(&c.pool) || !known.contains(&c.endpoint) {
            continue;
        }
        out.eligible = out.eligible.saturating_add(1);
        if b == c {
            out.identical = out.identical.saturating_add(1);
            continue;
        }
        if !seen.insert((b.clone(), c.clone())) {
            continue;
        }
        let route = route.as_deref().unwrap_or("-").to_string();
        let request = format!(
            "{} {}{}",
            s.method,
            s.host.as_deref().unwrap_or(""),
            match &s.query {
                Some(q) => format!("{}?{q}", s.path),
                None => s.path.clone(),
            }
        );
        by_route
            .entry(route.clone())
            .or_default()
            .push_back(UpstreamPair {
                route,
                request,
                baseline: b,
                candidate: c,
            });
    }
    let (pairs, over_cap) = select(by_route, max_requests);
    out.pairs = pairs;
    out.over_cap = over_cap;
    out
}

/// What one upstream request got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Response {
        status: u16,
        location: Option<String>,
        content_type: Option<String>,
        /// `0`, or `2^k` with `2^k <= length < 2^(k+1)`.
        length_bucket: String,
    },
    /// The connect failed or timed out at the config's `connect_timeout`.
    Connect(String),
    /// No response head within the config's response timeout.
    Timeout(u64),
    /// Another failure (protocol error).
    Failed(String),
    /// The time budget ran out first: not an answer about the upstream.
    OutOfTime,
}

impl Answer {
    fn describe(&self) -> String {
        match self {
            Answer::Response {
                status,
                location,
                content_type,
                length_bucket,
            } => {
                let mut t = format!(
                    "{status} {} {length_bucket}",
                    content_type.as_deref().unwrap_or("-")
                );
                if let Some(l) = location {
                    t.push_str(&format!(" → {l}"));
                }
                t
            }
            Answer::Connect(e) => format!("connect failed ({e})"),
            Answer::Timeout(ms) => format!("no response head within {ms} ms"),
            Answer::Failed(e) => format!("failed ({e})"),
            Answer::OutOfTime => "not checked (time budget)".to_string(),
        }
    }
}

fn bucket(len: u64) -> String {
    if len == 0 {
        "0".to_string()
    } else {
        format!("2^{}", 63u32.saturating_sub(len.leading_zeros()))
    }
}

/// Sends one request on a fresh connection, within its timeouts and the
/// time left.
async fn send(r: &UpstreamRequest, deadline: tokio::time::Instant) -> Answer {
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let connect_t = Duration::from_millis(r.connect_timeout_ms);
    let connect = async {
        let addr = tokio::net::lookup_host(r.endpoint.as_str())
            .await?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
        tokio::net::TcpStream::connect(addr).await
    };
    let stream = match tokio::time::timeout(connect_t.min(left), connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Answer::Connect(e.to_string()),
        Err(_) if connect_t <= left => {
            return Answer::Connect(format!("timed out after {} ms", r.connect_timeout_ms));
        }
        Err(_) => return Answer::OutOfTime,
    };
    let _ = stream.set_nodelay(true);
    let handshake = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream));
    let (mut sender, conn) = match handshake.await {
        Ok(x) => x,
        Err(e) => return Answer::Failed(e.to_string()),
    };
    let conn = tokio::spawn(conn);
    let mut req = Request::new(Empty::new());
    *req.method_mut() = http::Method::from_bytes(r.method.as_bytes()).unwrap_or(http::Method::GET);
    *req.uri_mut() = r
        .target
        .parse::<Uri>()
        .unwrap_or_else(|_| Uri::from_static("/"));
    for (n, v) in &r.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            req.headers_mut().append(n, v);
        }
    }
    req.headers_mut()
        .insert(CHECK_HEADER, HeaderValue::from_static("upstream"));
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let response_t = Duration::from_millis(r.response_timeout_ms);
    let answer = match tokio::time::timeout(response_t.min(left), sender.send_request(req)).await {
        Ok(Ok(resp)) => measure(resp, deadline).await,
        Ok(Err(e)) => Answer::Failed(e.to_string()),
        Err(_) if response_t <= left => Answer::Timeout(r.response_timeout_ms),
        Err(_) => Answer::OutOfTime,
    };
    conn.abort();
    answer
}

async fn measure(resp: Response<hyper::body::Incoming>, deadline: tokio::time::Instant) -> Answer {
    let header = |name: http::header::HeaderName| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let status = resp.status().as_u16();
    let location = (300..400)
        .contains(&status)
        .then(|| header(http::header::LOCATION))
        .flatten();
    // The media type only: a charset parameter is not a different page.
    let content_type = header(http::header::CONTENT_TYPE).map(|t| {
        t.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    });
    let declared = header(http::header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    let length = match declared {
        Some(n) => n,
        None => {
            // Counted up to a cap, within the budget.
            let mut body = resp.into_body();
            let mut n: usize = 0;
            while n < MAX_BODY_READ {
                match tokio::time::timeout_at(deadline, body.frame()).await {
                    Ok(Some(Ok(f))) => {
                        n = n.saturating_add(f.data_ref().map_or(0, Bytes::len));
                    }
                    _ => break,
                }
            }
            u64::try_from(n).unwrap_or(u64::MAX)
        }
    };
    Answer::Response {
        status,
        location,
        content_type,
        length_bucket: bucket(length),
    }
}

/// Spaces requests to one endpoint `1 / max_rate` apart.
#[derive(Debug, Default)]
struct Pacer {
    next: Mutex<HashMap<String, tokio::time::Instant>>,
}

impl Pacer {
    /// The moment this request may start (reserved now).
    fn slot(&self, endpoint: &str, interval: Duration) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        let mut g = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let at = g.get(endpoint).copied().map_or(now, |n| n.max(now));
        g.insert(endpoint.to_string(), at + interval);
        at
    }
}

/// How a candidate answer compares with the baseline's: `None` when it is
/// not worse; else the code (`status`, `timeout`, `connect`, `location`).
pub fn worse(baseline: &Answer, candidate: &Answer) -> Option<&'static str> {
    let class = |s: u16| match s {
        500.. => 3,
        400..=499 => 2,
        _ => 1,
    };
    match (baseline, candidate) {
        (Answer::OutOfTime, _) | (_, Answer::OutOfTime) => None,
        // The baseline got no answer either: the upstream is down for both,
        // not the candidate's doing.
        (b, _) if !matches!(b, Answer::Response { .. }) => None,
        (_, Answer::Timeout(_)) => Some("timeout"),
        (_, Answer::Connect(_) | Answer::Failed(_)) => Some("connect"),
        (
            Answer::Response {
                status: bs,
                location: bl,
                ..
            },
            Answer::Response {
                status: cs,
                location: cl,
                ..
            },
        ) => {
            if class(*cs) > class(*bs) {
                Some("status")
            } else if cl.is_some() && cl != bl {
                Some("location")
            } else {
                None
            }
        }
        _ => None,
    }
}

/// The gate's half: sends the plan's distinct requests (capped again here:
/// the plan comes from the runner, which judged an untrusted candidate) and
/// compares each pair.
pub async fn run(plan: &UpstreamPlan, settings: &UpstreamCheckSettings) -> UpstreamCheck {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + settings.time_budget.0;
    let mut out = UpstreamCheck::default();
    // Distinct requests, capped; a pair is checked only when both of its
    // requests are among them.
    let mut order: Vec<UpstreamRequest> = Vec::new();
    let mut index: HashMap<UpstreamRequest, usize> = HashMap::new();
    let mut pairs: Vec<&UpstreamPair> = Vec::new();
    let max = usize::try_from(settings.max_requests).unwrap_or(usize::MAX);
    for p in &plan.pairs {
        let fresh: Vec<&UpstreamRequest> = [&p.baseline, &p.candidate]
            .into_iter()
            .filter(|r| !index.contains_key(*r))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if order.len().saturating_add(fresh.len()) > max {
            out.not_checked = out.not_checked.saturating_add(1);
            continue;
        }
        for r in fresh {
            index.insert(r.clone(), order.len());
            order.push(r.clone());
        }
        pairs.push(p);
    }
    let interval = Duration::from_secs_f64(1.0 / settings.max_rate.max(0.1));
    let pacer = Arc::new(Pacer::default());
    let sem = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut set = tokio::task::JoinSet::new();
    for (i, r) in order.iter().cloned().enumerate() {
        let (pacer, sem) = (pacer.clone(), sem.clone());
        set.spawn(async move {
            let Ok(_permit) = sem.acquire_owned().await else {
                return (i, Answer::OutOfTime, false);
            };
            let at = pacer.slot(&r.endpoint, interval);
            if at >= deadline {
                return (i, Answer::OutOfTime, false);
            }
            tokio::time::sleep_until(at).await;
            (i, send(&r, deadline).await, true)
        });
    }
    let mut answers: Vec<Answer> = vec![Answer::OutOfTime; order.len()];
    // The tasks bound themselves by the deadline; this is the backstop.
    let backstop = deadline + Duration::from_millis(100);
    while let Ok(Some(res)) = tokio::time::timeout_at(backstop, set.join_next()).await {
        if let Ok((i, a, sent)) = res {
            if sent {
                out.sent = out.sent.saturating_add(1);
            }
            if let Some(slot) = answers.get_mut(i) {
                *slot = a;
            }
        }
    }
    set.abort_all();
    let answer = |r: &UpstreamRequest| {
        index
            .get(r)
            .and_then(|i| answers.get(*i))
            .cloned()
            .unwrap_or(Answer::OutOfTime)
    };
    for p in pairs {
        let (b, c) = (answer(&p.baseline), answer(&p.candidate));
        if b == Answer::OutOfTime || c == Answer::OutOfTime {
            out.not_checked = out.not_checked.saturating_add(1);
            continue;
        }
        out.checked = out.checked.saturating_add(1);
        let route = out.per_route.entry(p.route.clone()).or_default();
        route.checked = route.checked.saturating_add(1);
        if b != c {
            out.differed = out.differed.saturating_add(1);
        }
        let code = worse(&b, &c);
        if let Some(code) = code {
            out.worse = out.worse.saturating_add(1);
            route.worse = route.worse.saturating_add(1);
            route.code.get_or_insert_with(|| code.to_string());
            let n = out.worse_by_code.entry(code.to_string()).or_default();
            *n = n.saturating_add(1);
        }
        if b != c && out.examples.len() < MAX_EXAMPLES {
            let side = |r: &UpstreamRequest| {
                let host = r
                    .headers
                    .iter()
                    .find(|(n, _)| n == "host")
                    .map_or("-", |(_, v)| v.as_str());
                format!(
                    "{} {} (Host {host}) to pool {} {}",
                    r.method, r.target, r.pool, r.endpoint
                )
            };
            out.examples.push(format!(
                "{} (route {}): active sends {}: {}; candidate sends {}: {}{}",
                p.request,
                p.route,
                side(&p.baseline),
                b.describe(),
                side(&p.candidate),
                c.describe(),
                code.map(|c| format!(" (upstream:{c})")).unwrap_or_default()
            ));
        }
    }
    out.elapsed_ms = start.elapsed().as_secs_f64() * 1000.0;
    out
}

/// The reason codes of a check, in order of precedence.
const CODES: [&str; 4] = ["status", "timeout", "connect", "location"];

/// Findings for the verdict: `(upstream:<code>, sentence)` when the share of
/// worse pairs, overall or on one route with at least two of them, exceeds
/// `max_worse`, or when a pool's health check is worse. The primary code is
/// the most frequent one.
pub fn findings(check: &UpstreamCheck, max_worse: f64) -> Option<(String, String)> {
    if check.checked == 0 || check.worse == 0 {
        return None;
    }
    let share = |w: u64, n: u64| if n == 0 { 0.0 } else { w as f64 / n as f64 };
    let overall = share(check.worse, check.checked) > max_worse;
    let mut routes: Vec<(&String, &super::report::UpstreamRouteCheck)> = check
        .per_route
        .iter()
        .filter(|(_, r)| r.worse > 0)
        .collect();
    routes.sort_by(|a, b| b.1.worse.cmp(&a.1.worse).then(a.0.cmp(b.0)));
    let route_bad = routes
        .iter()
        .any(|(_, r)| r.worse >= 2 && share(r.worse, r.checked) > max_worse);
    // A health check that now fails marks every endpoint of its pool down:
    // one such pair is enough.
    let health_bad = routes
        .iter()
        .any(|(n, r)| n.starts_with("health:") && r.worse > 0);
    if !overall && !route_bad && !health_bad {
        return None;
    }
    let code = CODES
        .iter()
        .max_by_key(|c| {
            (
                check.worse_by_code.get(**c).copied().unwrap_or(0),
                // Ties go to the earlier code.
                std::cmp::Reverse(CODES.iter().position(|x| x == *c)),
            )
        })
        .copied()
        .unwrap_or("status");
    let named: Vec<String> = routes
        .iter()
        .take(5)
        .map(|(n, r)| {
            format!(
                "route {n}: {} of {} worse ({})",
                r.worse,
                r.checked,
                r.code.as_deref().unwrap_or("-")
            )
        })
        .collect();
    let what = match code {
        "timeout" => "time out at the candidate's timeout",
        "connect" => "fail to connect",
        "location" => "redirect elsewhere",
        _ => "get a worse status class",
    };
    let example = check
        .examples
        .iter()
        .find(|e| e.ends_with(&format!("(upstream:{code})")))
        .or_else(|| check.examples.first())
        .map(|e| format!("; e.g. {e}"))
        .unwrap_or_default();
    Some((
        format!("upstream:{code}"),
        format!(
            "sent to the real upstreams, {} of {} checked requests ({:.1}%) would {what} under the candidate where the active config's did not, limit {:.1}% (gate.sandbox.upstream_check.max_worse); {}{example}",
            check.worse,
            check.checked,
            share(check.worse, check.checked) * 100.0,
            max_worse * 100.0,
            named.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, location: Option<&str>) -> Answer {
        Answer::Response {
            status,
            location: location.map(str::to_string),
            content_type: Some("text/html".into()),
            length_bucket: bucket(1000),
        }
    }

    #[test]
    fn what_counts_as_worse() {
        assert_eq!(worse(&resp(200, None), &resp(404, None)), Some("status"));
        assert_eq!(worse(&resp(200, None), &resp(503, None)), Some("status"));
        assert_eq!(worse(&resp(404, None), &resp(200, None)), None);
        assert_eq!(worse(&resp(404, None), &resp(404, None)), None);
        assert_eq!(
            worse(&resp(200, None), &Answer::Timeout(1)),
            Some("timeout")
        );
        assert_eq!(
            worse(&resp(200, None), &Answer::Connect("x".into())),
            Some("connect")
        );
        // The upstream is down for both: not the candidate's doing.
        assert_eq!(
            worse(&Answer::Connect("x".into()), &Answer::Timeout(1)),
            None
        );
        assert_eq!(
            worse(&resp(301, Some("/a")), &resp(301, Some("/b"))),
            Some("location")
        );
        assert_eq!(
            worse(&resp(200, None), &resp(302, Some("/login"))),
            Some("location")
        );
        assert_eq!(worse(&resp(301, Some("/a")), &resp(301, Some("/a"))), None);
        assert_eq!(worse(&resp(200, None), &Answer::OutOfTime), None);
    }

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!(bucket(0), "0");
        assert_eq!(bucket(1), "2^0");
        assert_eq!(bucket(1023), "2^9");
        assert_eq!(bucket(1024), "2^10");
    }

    fn req(ep: &str, target: &str) -> UpstreamRequest {
        UpstreamRequest {
            pool: "p".into(),
            endpoint: ep.into(),
            method: "GET".into(),
            target: target.into(),
            headers: vec![],
            connect_timeout_ms: 1000,
            response_timeout_ms: 1000,
        }
    }

    #[test]
    fn selection_is_round_robin_and_capped() {
        let mut by_route: BTreeMap<String, VecDeque<UpstreamPair>> = BTreeMap::new();
        for (route, n) in [("big", 10), ("small", 1)] {
            for i in 0..n {
                by_route
                    .entry(route.into())
                    .or_default()
                    .push_back(UpstreamPair {
                        route: route.into(),
                        request: String::new(),
                        baseline: req("a:1", &format!("/{route}/{i}")),
                        candidate: req("b:1", &format!("/{route}/{i}")),
                    });
            }
        }
        let (chosen, left) = select(by_route, 6);
        assert_eq!(chosen.len(), 3);
        assert!(chosen.iter().any(|p| p.route == "small"));
        assert_eq!(left, 8);
    }

    #[test]
    fn findings_name_the_route_and_need_more_than_the_threshold() {
        let mut c = UpstreamCheck {
            checked: 40,
            worse: 1,
            ..UpstreamCheck::default()
        };
        c.worse_by_code.insert("status".into(), 1);
        c.per_route.insert(
            "api".into(),
            super::super::report::UpstreamRouteCheck {
                checked: 1,
                worse: 1,
                code: Some("status".into()),
            },
        );
        // 1 of 40 (2.5%) and one route with a single worse pair: accepted.
        assert_eq!(findings(&c, 0.05), None);
        c.worse = 2;
        c.worse_by_code.insert("status".into(), 2);
        c.per_route.insert(
            "api".into(),
            super::super::report::UpstreamRouteCheck {
                checked: 2,
                worse: 2,
                code: Some("status".into()),
            },
        );
        let (code, sentence) = findings(&c, 0.05).unwrap();
        assert_eq!(code, "upstream:status");
        assert!(sentence.contains("route api: 2 of 2"), "{sentence}");
    }

    #[test]
    fn one_worse_health_check_is_enough() {
        let mut c = UpstreamCheck {
            checked: 40,
            worse: 1,
            ..UpstreamCheck::default()
        };
        c.worse_by_code.insert("status".into(), 1);
        c.per_route.insert(
            "health:app".into(),
            super::super::report::UpstreamRouteCheck {
                checked: 1,
                worse: 1,
                code: Some("status".into()),
            },
        );
        let (code, sentence) = findings(&c, 0.05).unwrap();
        assert_eq!(code, "upstream:status");
        assert!(sentence.contains("route health:app"), "{sentence}");
    }
}
