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

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aegis_engine::CompiledConfig;
use aegis_engine::sample::SampledRequest;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use tower::ServiceExt;

use super::report::{ChangeExample, Changes, Percentiles, ReplayReport, Side, Tally};
use crate::pipeline::{
    BoxError, ClientInfo, ConfigHandle, Connector, ForwardCtx, Pipeline, PipelineSettings,
    ProxyBody, RequestOutcome, UpstreamEndpoint, UpstreamError, empty,
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
    ) -> Result<Response<ProxyBody>, UpstreamError> {
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
        if self.unreachable.contains(&pool.name) {
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
        resp.extensions_mut()
            .insert(UpstreamEndpoint(Arc::from(endpoint.as_str())));
        Ok(resp)
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
}

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
                route: Some(route.name.clone()),
                synthetic: true,
            });
        }
    }
    out
}

/// Builds the HTTP request a sampled head stands for. Header names or values
/// that are not valid HTTP are left out (the sample file is not trusted).
fn to_request(s: &SampledRequest) -> Request<Empty<Bytes>> {
    let pq = match &s.query {
        Some(q) => format!("{}?{q}", s.path),
        None => s.path.clone(),
    };
    let uri = pq.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/"));
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = uri;
    *req.method_mut() = http::Method::from_bytes(s.method.as_bytes()).unwrap_or(http::Method::GET);
    let headers = req.headers_mut();
    if let Some(h) = s
        .host
        .as_deref()
        .and_then(|h| HeaderValue::from_str(h).ok())
    {
        headers.insert(http::header::HOST, h);
    }
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
    req.extensions_mut().insert(ClientInfo {
        addr: SocketAddr::new(s.client_ip, 0),
        tls: s.scheme.eq_ignore_ascii_case("https"),
    });
    req
}

/// Sends one request through the pipeline; returns the outcome and the time
/// to the end of the response body, microseconds.
async fn one(pipeline: &Pipeline<SampleConnector>, s: &SampledRequest) -> (Side, f64) {
    pipeline.connector().set_current(s);
    let req = to_request(s);
    let start = Instant::now();
    let resp = match pipeline.clone().oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = resp.status().as_u16();
    let outcome = resp.extensions().get::<RequestOutcome>().cloned();
    // Drain the body so the pipeline's end-of-response work runs too.
    let _ = resp.into_body().collect().await;
    let micros = start.elapsed().as_secs_f64() * 1e6;
    let side = match outcome {
        Some(o) => Side {
            route: o.route,
            action: o.summary.action,
            status,
            upstream: o.summary.upstream,
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
    (side, micros)
}

/// 0 for 1xx–3xx, 1 for 4xx, 2 for 5xx: "worse" is a higher class.
fn class_rank(status: u16) -> u8 {
    match status {
        500.. => 2,
        400..=499 => 1,
        _ => 0,
    }
}

/// Classifies one request's change into `changes`.
pub fn compare(changes: &mut Changes, ex: &ChangeExample) {
    let (b, c) = (&ex.baseline, &ex.candidate);
    let route_changed = b.route != c.route;
    let any =
        route_changed || b.action != c.action || b.status != c.status || b.blocked != c.blocked;
    if any {
        changes.changed.add(ex);
    }
    if route_changed {
        changes.route_changed.add(ex);
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

/// Replays `requests` through the candidate (and the baseline, when given)
/// and compares them request by request.
pub async fn replay(
    candidate: Arc<CompiledConfig>,
    baseline: Option<Arc<CompiledConfig>>,
    requests: &[SampledRequest],
    opts: ReplayOptions,
) -> ReplayReport {
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
    for s in requests {
        let (c, c_us) = one(&cand, s).await;
        cand_time += c_us;
        cand_lat.push(c_us);
        report.candidate.add(&c);
        if let Some(base) = &base {
            let (b, b_us) = one(base, s).await;
            base_lat.push(b_us);
            base_tally.add(&b);
            let ex = ChangeExample {
                method: s.method.clone(),
                host: s.host.clone(),
                path: s.path.clone(),
                synthetic: s.synthetic,
                baseline: b,
                candidate: c,
            };
            compare(&mut report.changes, &ex);
        }
    }
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
}
