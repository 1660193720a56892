//! Metrics and logs set-up. The request path records through the `metrics`
//! facade only; which recorder receives the figures is decided here (the
//! process-wide Prometheus recorder in a worker, a local one in the sandbox).
//!
//! Every family the crate records is listed in [`FAMILIES`] with its HELP
//! text, and each process registers the families it owns at start
//! ([`register_data_plane`], [`register_supervisor`], [`register_gate`]):
//! a family that appears only once something happens makes `rate()` and
//! absence alerts blind until then, and a scrape cannot tell "zero" from
//! "not this version".
//!
//! The families a fleet compares across pods carry the config version
//! ([`VersionMetrics`]): per-route request counters by status class and the
//! duration histogram. Their handles are resolved once per compiled
//! version, when it is activated, so a request increments a counter it
//! already holds instead of building labels.

use std::collections::HashMap;
use std::sync::Mutex;

use aegis_engine::CompiledConfig;
use metrics::{Counter, Histogram, Unit};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets of `aegis_request_duration_seconds`.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric family: its name, kind, unit and HELP text.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<Unit>,
    pub help: &'static str,
}

const fn family(name: &'static str, kind: Kind, help: &'static str) -> Family {
    Family {
        name,
        kind,
        unit: None,
        help,
    }
}

/// Every family this crate records (a unit test checks that each
/// `metrics::counter!/gauge!/histogram!` in `src/` names one of these).
pub const FAMILIES: &[Family] = &[
    // Data plane (each worker, or the single process).
    family(
        "aegis_requests_total",
        Kind::Counter,
        "Requests served, by route and status",
    ),
    family(
        "aegis_route_requests_total",
        Kind::Counter,
        "Requests served, by config version, route and status class",
    ),
    Family {
        name: "aegis_request_duration_seconds",
        kind: Kind::Histogram,
        unit: Some(Unit::Seconds),
        help: "Time from request head to the end of the response body, by config version",
    },
    family(
        "aegis_upstream_endpoint_healthy",
        Kind::Gauge,
        "1 when the endpoint passes its health checks",
    ),
    family(
        "aegis_config_info",
        Kind::Gauge,
        "1 for the active config version (0 for the ones before), with its SHA-256",
    ),
    family(
        "aegis_feature_errors_total",
        Kind::Counter,
        "Requests whose feature scoring failed at run time",
    ),
    family(
        "aegis_upstream_errors_total",
        Kind::Counter,
        "Requests answered 502/503/504, by route and status",
    ),
    family(
        "aegis_upstream_ejections_spared_total",
        Kind::Counter,
        "Passive ejections not made because the endpoint was the last one of its upstream",
    ),
    family(
        "aegis_upstream_connections_total",
        Kind::Counter,
        "Connections opened to upstream endpoints",
    ),
    family(
        "aegis_tls_handshake_failures_total",
        Kind::Counter,
        "TLS handshakes with clients that failed",
    ),
    family(
        "aegis_overloaded",
        Kind::Gauge,
        "1 while this process is at limits.max_connections or out of descriptors (and 5 s after)",
    ),
    family(
        "aegis_connections_active",
        Kind::Gauge,
        "Client connections this process serves",
    ),
    family(
        "aegis_accept_paused_total",
        Kind::Counter,
        "Times accepting paused at limits.max_connections",
    ),
    family(
        "aegis_accept_errors_total",
        Kind::Counter,
        "Failed accepts of client connections (EMFILE and the like back off)",
    ),
    family(
        "aegis_http1_handoffs_total",
        Kind::Counter,
        "Client connections Aegis's own HTTP/1.1 server handed to hyper's (HTTP/1.0, an h2c preface, chunked or still-arriving bodies, upgrades, unusual heads)",
    ),
    family(
        "aegis_request_header_timeouts_total",
        Kind::Counter,
        "Request heads incomplete at limits.client_header_timeout, answered 408",
    ),
    family(
        "aegis_client_body_timeouts_total",
        Kind::Counter,
        "Request bodies idle for limits.client_body_timeout, answered 408",
    ),
    family(
        "aegis_client_send_timeouts_total",
        Kind::Counter,
        "Clients disconnected after reading nothing for limits.send_timeout",
    ),
    family(
        "aegis_access_log_dropped_total",
        Kind::Counter,
        "Access log records dropped because the log writer fell behind",
    ),
    family(
        "aegis_sample_heads_truncated_total",
        Kind::Counter,
        "Traffic-sample heads stored without some header lines (over sample.max_head_bytes)",
    ),
    family(
        "aegis_sample_heads_dropped_total",
        Kind::Counter,
        "Traffic-sample heads not stored (over sample.max_head_bytes or sample.max_bytes)",
    ),
    family(
        "aegis_features_module_enabled",
        Kind::Gauge,
        "1 while the feature module is switched on (the kill switch)",
    ),
    // Supervisor.
    family(
        "aegis_workers_healthy",
        Kind::Gauge,
        "Worker processes that answered their last health probe",
    ),
    family(
        "aegis_worker_restarts_total",
        Kind::Counter,
        "Worker processes replaced, by reason (exited, killed, hung, rss)",
    ),
    // Gate and state directory.
    family(
        "aegis_config_verdicts_total",
        Kind::Counter,
        "Verdicts on config candidates (reused ones too), by version, result and reason",
    ),
    family(
        "aegis_config_candidates_total",
        Kind::Counter,
        "Config candidates taken by the gate",
    ),
    family(
        "aegis_config_promotions_total",
        Kind::Counter,
        "Config versions promoted",
    ),
    family(
        "aegis_config_rejections_total",
        Kind::Counter,
        "Config candidates rejected, by primary reason",
    ),
    family(
        "aegis_config_rollbacks_total",
        Kind::Counter,
        "Versions taken back, by reason (canary_5xx, bake_5xx, crash_loop, manual, reverted, ...)",
    ),
    family(
        "aegis_config_held_total",
        Kind::Counter,
        "Accepted candidates held for confirmation, by reason",
    ),
    family(
        "aegis_config_could_not_judge_total",
        Kind::Counter,
        "Times the gate could not judge a candidate (not about its content), by reason",
    ),
    family(
        "aegis_config_freezes_total",
        Kind::Counter,
        "Times promotion was frozen because the config directory kept flapping",
    ),
    family(
        "aegis_config_canary_state",
        Kind::Gauge,
        "Progressive rollout: 0 steady, 1 canary, 2 baking, 3 promotion frozen",
    ),
    family(
        "aegis_config_fleet_held",
        Kind::Gauge,
        "1 while an accepted candidate waits for the fleet's hold-off, else 0",
    ),
    Family {
        name: "aegis_gate_duration_seconds",
        kind: Kind::Histogram,
        unit: Some(Unit::Seconds),
        help: "Time from a candidate's snapshot to its verdict",
    },
    family(
        "aegis_state_verify_failures_total",
        Kind::Counter,
        "Promoted snapshots whose content did not match their id when loaded",
    ),
    family(
        "aegis_state_bad_snapshots_total",
        Kind::Counter,
        "Times the active version in the state directory could not be served at start",
    ),
    family(
        "aegis_state_corrupt_history_lines",
        Kind::Gauge,
        "Unreadable lines the last read of the verdict history skipped",
    ),
];

/// Known `reason` values of `aegis_worker_restarts_total`
/// (`supervisor::RestartReason`).
const RESTART_REASONS: &[&str] = &["exited", "killed", "hung", "rss"];

/// Primary reason codes of a rejected candidate (`gate::verdict`).
const REJECTION_REASONS: &[&str] = &[
    "invalid",
    "crashed",
    "oom",
    "timeout",
    "regression:newly_blocked",
    "regression:status",
    "regression:route_changed",
    "regression:latency",
    "regression:memory",
];

/// Rollback reasons (`rollout::compare` findings, the gate's own codes).
const ROLLBACK_REASONS: &[&str] = &[
    "canary_health",
    "canary_5xx",
    "canary_4xx",
    "canary_redirects",
    "canary_route",
    "canary_inconclusive",
    "canary_latency",
    "bake_health",
    "bake_5xx",
    "bake_latency",
    "load_failed",
    "crash_loop",
    "manual",
    "reverted",
];

/// Reasons the gate could not judge a candidate (`gate::GateError`,
/// `gate::sandbox::not_about_content`).
const COULD_NOT_JUDGE_REASONS: &[&str] = &[
    "read",
    "outside_config_dir",
    "sandbox",
    "deadline",
    "state_dir",
    "load",
    "rollback",
];

/// A Prometheus recorder with our histogram buckets, not installed.
pub fn prometheus_builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new().set_buckets_for_metric(
        Matcher::Full("aegis_request_duration_seconds".to_string()),
        &DURATION_BUCKETS,
    )
}

/// The process-wide recorder, once installed: the gate installs it before
/// it judges the config directory at start (so that judgement is counted)
/// and the serving code asks for it again later.
static RECORDER: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// The process-wide recorder, installed (every family described) on the
/// first call; later calls return the same handle.
pub fn process_recorder() -> Result<PrometheusHandle, BuildError> {
    let mut slot = RECORDER.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = slot.as_ref() {
        return Ok(h.clone());
    }
    let handle = prometheus_builder()?.install_recorder()?;
    describe();
    *slot = Some(handle.clone());
    Ok(handle)
}

/// The recorder of a serving process (a worker, or the single process),
/// with the data plane's families registered. Returns the handle the admin
/// listener renders.
pub fn install_prometheus() -> Result<PrometheusHandle, BuildError> {
    let handle = process_recorder()?;
    register_data_plane();
    Ok(handle)
}

/// Describes every family to the current recorder (a description without
/// a series is not rendered: registration makes the series).
pub fn describe() {
    for f in FAMILIES {
        match (f.kind, f.unit) {
            (Kind::Counter, Some(u)) => metrics::describe_counter!(f.name, u, f.help),
            (Kind::Counter, None) => metrics::describe_counter!(f.name, f.help),
            (Kind::Gauge, Some(u)) => metrics::describe_gauge!(f.name, u, f.help),
            (Kind::Gauge, None) => metrics::describe_gauge!(f.name, f.help),
            (Kind::Histogram, Some(u)) => metrics::describe_histogram!(f.name, u, f.help),
            (Kind::Histogram, None) => metrics::describe_histogram!(f.name, f.help),
        }
    }
}

// Registration adds 0 (never sets): a family registered by two roles in one
// process (single-process mode) or after it was first recorded keeps its
// value.

fn zero_counter(name: &'static str) {
    metrics::counter!(name).increment(0);
}

fn zero_counters(name: &'static str, reasons: &[&'static str]) {
    for r in reasons {
        metrics::counter!(name, "reason" => *r).increment(0);
    }
}

/// Looking a histogram up registers it: rendered with empty buckets until
/// its first sample.
fn empty_histogram(name: &'static str) {
    let _registered = metrics::histogram!(name);
}

fn zero_gauge(name: &'static str) {
    metrics::gauge!(name).increment(0.0);
}

/// The data plane's unlabelled families at 0. The families labelled by
/// route and status appear with their first request (the statuses are not
/// known before); the endpoint gauges, `aegis_config_info` and the
/// per-version families ([`VersionMetrics`]) are set when the config is
/// activated.
pub fn register_data_plane() {
    zero_counter("aegis_feature_errors_total");
    zero_counter("aegis_upstream_connections_total");
    zero_counter("aegis_tls_handshake_failures_total");
    zero_gauge("aegis_overloaded");
    zero_gauge("aegis_connections_active");
    zero_counter("aegis_accept_paused_total");
    zero_counter("aegis_accept_errors_total");
    zero_counter("aegis_http1_handoffs_total");
    zero_counter("aegis_request_header_timeouts_total");
    zero_counter("aegis_client_body_timeouts_total");
    zero_counter("aegis_client_send_timeouts_total");
    zero_counter("aegis_access_log_dropped_total");
    zero_counter("aegis_sample_heads_truncated_total");
    zero_counter("aegis_sample_heads_dropped_total");
    zero_counter("aegis_state_verify_failures_total");
}

/// The supervisor's families: no worker healthy yet, no restart.
pub fn register_supervisor() {
    zero_gauge("aegis_workers_healthy");
    zero_counters("aegis_worker_restarts_total", RESTART_REASONS);
}

/// The gate's families, with every reason it knows at 0.
pub fn register_gate() {
    zero_counter("aegis_config_candidates_total");
    zero_counter("aegis_config_promotions_total");
    zero_counter("aegis_config_freezes_total");
    zero_counter("aegis_state_verify_failures_total");
    zero_counter("aegis_state_bad_snapshots_total");
    zero_counters("aegis_config_rejections_total", REJECTION_REASONS);
    zero_counters("aegis_config_rollbacks_total", ROLLBACK_REASONS);
    zero_counters(
        "aegis_config_held_total",
        &[crate::gate::verdict::HELD_BLAST_RADIUS],
    );
    zero_counters(
        "aegis_config_could_not_judge_total",
        COULD_NOT_JUDGE_REASONS,
    );
    zero_gauge("aegis_config_canary_state");
    zero_gauge("aegis_state_corrupt_history_lines");
    empty_histogram("aegis_gate_duration_seconds");
}

/// Status classes of `aegis_route_requests_total`.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The `route` label of a request no route matched (or answered before
/// routing: framing, header size).
pub const NO_ROUTE: &str = "-";

/// Index into [`STATUS_CLASSES`]; a code outside 100..=599 counts as 5xx.
fn class_of(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// The per-version request families of one compiled config, their handles
/// resolved (and so registered, at 0) once when the version is activated:
/// `aegis_route_requests_total{version, route, class}` for every route and
/// [`NO_ROUTE`] × [`STATUS_CLASSES`], and
/// `aegis_request_duration_seconds{version}`. Cardinality: (routes + 1) × 5
/// counters and one histogram per version this process activated.
pub struct VersionMetrics {
    version: String,
    routes: HashMap<String, RouteCounters>,
    no_route: RouteCounters,
    duration: Histogram,
}

/// Statuses whose `aegis_requests_total{route, status}` handle is kept per
/// route once first used; any other status builds its labels per request
/// (rare, and it keeps the cache a fixed size whatever an upstream sends).
const COMMON_STATUSES: [u16; 16] = [
    200, 201, 204, 206, 301, 302, 304, 400, 401, 403, 404, 429, 500, 502, 503, 504,
];

/// One route's handles within a version.
struct RouteCounters {
    name: String,
    classes: [Counter; 5],
    /// `aegis_requests_total` by [`COMMON_STATUSES`] position, resolved on
    /// first use so that only statuses served appear in the scrape.
    by_status: [std::sync::OnceLock<Counter>; COMMON_STATUSES.len()],
}

impl RouteCounters {
    fn new(version: &str, route: &str) -> Self {
        Self {
            name: route.to_string(),
            classes: class_counters(version, route),
            by_status: Default::default(),
        }
    }

    fn count_status(&self, status: u16) {
        match COMMON_STATUSES
            .iter()
            .position(|s| *s == status)
            .and_then(|i| self.by_status.get(i))
        {
            Some(slot) => slot
                .get_or_init(|| requests_total(&self.name, status))
                .increment(1),
            None => requests_total(&self.name, status).increment(1),
        }
    }
}

/// The `aegis_requests_total{route, status}` handle.
fn requests_total(route: &str, status: u16) -> Counter {
    metrics::counter!(
        "aegis_requests_total",
        "route" => route.to_string(),
        "status" => status.to_string()
    )
}

impl std::fmt::Debug for VersionMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionMetrics")
            .field("version", &self.version)
            .field("routes", &self.routes.len())
            .finish()
    }
}

fn class_counters(version: &str, route: &str) -> [Counter; 5] {
    STATUS_CLASSES.map(|class| {
        metrics::counter!(
            "aegis_route_requests_total",
            "version" => version.to_string(),
            "route" => route.to_string(),
            "class" => class
        )
    })
}

impl VersionMetrics {
    /// Resolves the handles of `config`'s version in the current recorder.
    pub fn new(config: &CompiledConfig) -> Self {
        let version = config.version.as_str();
        let routes = config
            .routes
            .iter()
            .map(|r| (r.name.to_string(), RouteCounters::new(version, &r.name)))
            .collect();
        Self {
            version: version.to_string(),
            routes,
            no_route: RouteCounters::new(version, NO_ROUTE),
            duration: metrics::histogram!(
                "aegis_request_duration_seconds",
                "version" => version.to_string()
            ),
        }
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Counts one request of this version; the histogram to record its
    /// duration into when the body ends.
    pub fn request(&self, route: Option<&str>, status: u16) -> &Histogram {
        let counters = route
            .and_then(|r| self.routes.get(r))
            .unwrap_or(&self.no_route);
        if let Some(c) = counters.classes.get(class_of(status)) {
            c.increment(1);
        }
        &self.duration
    }

    /// Counts one request in `aegis_requests_total{route, status}` (the
    /// version-less family) with the cached handle of a common status.
    pub fn requests_total(&self, route: Option<&str>, status: u16) {
        match route {
            None => self.no_route.count_status(status),
            Some(r) => match self.routes.get(r) {
                Some(c) => c.count_status(status),
                None => requests_total(r, status).increment(1),
            },
        }
    }
}

/// Counts a request in `aegis_requests_total{route, status}` without a
/// version's handles (a request that outlived its version).
pub fn requests_total_uncached(route: Option<&str>, status: u16) {
    requests_total(route.unwrap_or(NO_ROUTE), status).increment(1);
}

/// Counts a request of a version whose handles are not at hand (it started
/// before a promotion and ended after): labels built once, for this rare
/// request only.
pub fn request_of_version(version: &str, route: Option<&str>, status: u16) -> Histogram {
    let class = STATUS_CLASSES
        .get(class_of(status))
        .copied()
        .unwrap_or("5xx");
    metrics::counter!(
        "aegis_route_requests_total",
        "version" => version.to_string(),
        "route" => route.unwrap_or(NO_ROUTE).to_string(),
        "class" => class
    )
    .increment(1);
    metrics::histogram!("aegis_request_duration_seconds", "version" => version.to_string())
}

/// `aegis_config_info{version, sha256}`: 1 for `new`, 0 for `old`.
pub fn config_info(old: Option<&CompiledConfig>, new: &CompiledConfig) {
    if let Some(old) = old.filter(|o| o.version != new.version) {
        metrics::gauge!(
            "aegis_config_info",
            "version" => old.version.clone(),
            "sha256" => old.sha256.clone()
        )
        .set(0.0);
    }
    metrics::gauge!(
        "aegis_config_info",
        "version" => new.version.clone(),
        "sha256" => new.sha256.clone()
    )
    .set(1.0);
}

/// Counts a verdict: `version` is the candidate's engine version when it
/// compiled (the value the request families carry), else its snapshot id;
/// `result` is `accepted`, `held` or `rejected`; `reason` the verdict code
/// (`accept`, `invalid`, `regression:status`, `held:blast_radius`, ...).
pub fn verdict(version: &str, accepted: bool, reason: &str) {
    let result = if accepted {
        "accepted"
    } else if reason.starts_with("held:") {
        "held"
    } else {
        "rejected"
    };
    metrics::counter!(
        "aegis_config_verdicts_total",
        "version" => version.to_string(),
        "result" => result,
        "reason" => reason.to_string()
    )
    .increment(1);
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family registered by every role, rendered by a local recorder.
    fn rendered() -> String {
        let recorder = prometheus_builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            register_data_plane();
            register_supervisor();
            register_gate();
        });
        handle.render()
    }

    #[test]
    fn every_registered_family_has_help_and_type() {
        let text = rendered();
        let declared = |kw: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| l.strip_prefix(kw))
                .filter_map(|l| l.split(' ').next())
                .map(str::to_string)
                .collect()
        };
        let (help, types) = (declared("# HELP "), declared("# TYPE "));
        assert!(!types.is_empty());
        for t in &types {
            assert!(help.contains(t), "{t} has no HELP in\n{text}");
        }
        for name in [
            "aegis_config_promotions_total",
            "aegis_config_rejections_total",
            "aegis_worker_restarts_total",
            "aegis_gate_duration_seconds",
            "aegis_workers_healthy",
        ] {
            assert!(types.iter().any(|t| t == name), "{name} missing:\n{text}");
        }
        assert!(text.contains("aegis_config_rejections_total{reason=\"invalid\"} 0"));
        assert!(!text.contains("aegis_request_duration_seconds_count"));
    }

    #[test]
    fn version_metrics_are_registered_and_counted() {
        let yaml = "routes:\n  - { name: a, match: { path_prefix: /a }, respond: { body: a } }\n";
        let src = aegis_engine::config::ConfigSource::from_files(
            std::path::Path::new("."),
            vec![aegis_engine::config::SourceFile {
                name: "routes.yaml".to_string(),
                text: yaml.to_string(),
            }],
        );
        let compiled =
            aegis_engine::config::compile(&src, &aegis_engine::config::Limits::default()).unwrap();
        let recorder = prometheus_builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            let m = VersionMetrics::new(&compiled);
            m.request(Some("a"), 200).record(0.01);
            m.request(Some("a"), 503).record(0.02);
            m.request(None, 404).record(0.0);
            m.request(Some("gone"), 200);
            m.requests_total(Some("a"), 200);
            m.requests_total(Some("a"), 200);
            m.requests_total(Some("a"), 299);
            m.requests_total(None, 404);
            requests_total_uncached(None, 404);
            config_info(None, &compiled);
            verdict(&compiled.version, false, "regression:status");
        });
        let text = handle.render();
        let v = &compiled.version;
        for line in [
            format!("aegis_route_requests_total{{version=\"{v}\",route=\"a\",class=\"2xx\"}} 1"),
            format!("aegis_route_requests_total{{version=\"{v}\",route=\"a\",class=\"5xx\"}} 1"),
            format!("aegis_route_requests_total{{version=\"{v}\",route=\"a\",class=\"1xx\"}} 0"),
            format!("aegis_route_requests_total{{version=\"{v}\",route=\"-\",class=\"4xx\"}} 1"),
            format!("aegis_route_requests_total{{version=\"{v}\",route=\"-\",class=\"2xx\"}} 1"),
            format!("aegis_request_duration_seconds_count{{version=\"{v}\"}} 3"),
            "aegis_requests_total{route=\"a\",status=\"200\"} 2".to_string(),
            "aegis_requests_total{route=\"a\",status=\"299\"} 1".to_string(),
            "aegis_requests_total{route=\"-\",status=\"404\"} 2".to_string(),
            format!(
                "aegis_config_info{{version=\"{v}\",sha256=\"{}\"}} 1",
                compiled.sha256
            ),
            format!(
                "aegis_config_verdicts_total{{version=\"{v}\",result=\"rejected\",reason=\"regression:status\"}} 1"
            ),
        ] {
            assert!(text.contains(&line), "{line} missing in\n{text}");
        }
        assert_eq!(compiled.sha256.len(), 64);
        assert!(compiled.sha256.starts_with(v.as_str()));
    }

    #[test]
    fn registering_again_keeps_values() {
        let recorder = prometheus_builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!("aegis_config_promotions_total").increment(2);
            metrics::gauge!("aegis_config_canary_state").set(1.0);
            register_gate();
            register_gate();
        });
        let text = handle.render();
        assert!(text.contains("aegis_config_promotions_total 2"), "{text}");
        assert!(text.contains("aegis_config_canary_state 1"), "{text}");
    }

    /// Every `metrics::counter!/gauge!/histogram!("name"` in the crate's
    /// sources names a family of [`FAMILIES`] of that kind: a new metric
    /// without a description fails here, not in `promtool`.
    #[test]
    fn every_recorded_family_is_listed() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![src];
        let mut seen = 0usize;
        while let Some(p) = files.pop() {
            if p.is_dir() {
                files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            if p.extension().is_none_or(|e| e != "rs") || p.ends_with("telemetry.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            for (mac, kind) in [
                ("metrics::counter!(", Kind::Counter),
                ("metrics::gauge!(", Kind::Gauge),
                ("metrics::histogram!(", Kind::Histogram),
            ] {
                for (at, _) in text.match_indices(mac) {
                    let rest = text[at + mac.len()..].trim_start();
                    let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next())
                    else {
                        panic!("{}: {mac} without a literal name", p.display());
                    };
                    let f = FAMILIES.iter().find(|f| f.name == name);
                    assert!(
                        f.is_some_and(|f| f.kind == kind),
                        "{}: {name} ({kind:?}) is not in telemetry::FAMILIES",
                        p.display()
                    );
                    seen += 1;
                }
            }
        }
        assert!(seen > 10, "only {seen} metrics found: the scan is broken");
    }
}
