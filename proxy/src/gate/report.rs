//! The sandbox report: what `aegis-sandbox` writes (one JSON line on stdout)
//! and the gate reads. Defined here so the runner and the gate share one
//! type; every field is plain data so a report can be kept on disk and served
//! by `GET /admin/verdicts` as it is.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bumped when a field changes meaning.
pub const REPORT_SCHEMA: u32 = 1;

/// Examples kept for each kind of change.
pub const MAX_EXAMPLES: usize = 20;

/// How far the runner got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerOutcome {
    /// The candidate failed the static stage (load and validation).
    Invalid,
    /// The candidate compiled and the sample was replayed.
    Replayed,
}

/// The whole report of one sandbox run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxReport {
    pub schema: u32,
    pub outcome: RunnerOutcome,
    /// Engine version (content hash) of the candidate, when it compiled.
    pub candidate_version: Option<String>,
    pub candidate_summary: Option<String>,
    pub baseline_version: Option<String>,
    /// Why the baseline could not be used, when one was given and failed.
    pub baseline_error: Option<String>,
    /// Static-stage errors, `file:line:col: path: message`, every one.
    pub diagnostics: Vec<String>,
    /// Peak resident set size of the runner (getrusage), bytes.
    pub peak_rss_bytes: u64,
    /// User + system CPU time of the runner, seconds.
    pub cpu_seconds: f64,
    pub compile_ms: CompileTimes,
    /// What limits and isolation the runner actually had.
    pub isolation: Isolation,
    pub sample: SampleInfo,
    pub replay: Option<ReplayReport>,
}

impl SandboxReport {
    pub fn new(isolation: Isolation) -> Self {
        Self {
            schema: REPORT_SCHEMA,
            outcome: RunnerOutcome::Invalid,
            candidate_version: None,
            candidate_summary: None,
            baseline_version: None,
            baseline_error: None,
            diagnostics: Vec::new(),
            peak_rss_bytes: 0,
            cpu_seconds: 0.0,
            compile_ms: CompileTimes::default(),
            isolation,
            sample: SampleInfo::default(),
            replay: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompileTimes {
    pub candidate: f64,
    pub baseline: Option<f64>,
}

/// The limits the runner applied to itself, as words for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    /// `cgroup memory.max 512 MiB`, `RLIMIT_AS 512 MiB` or `none: why`.
    pub memory: String,
    pub cpu: String,
    pub nofile: String,
    /// `new network namespace` or `none: why`.
    pub network: String,
    pub core_dumps: String,
    pub parent_death: String,
}

/// Where the replayed requests came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleInfo {
    /// The sample file, when there was one.
    pub source: Option<String>,
    /// Requests read from the recorded sample.
    pub recorded: usize,
    /// Requests made up from the baseline's routes (`CompiledRoute::examples`).
    pub synthesized: usize,
    /// Lines of the sample file that could not be used.
    pub skipped_lines: usize,
    /// True when the sample file was cut at its size or request limit.
    pub truncated: bool,
}

/// Percentiles of a set of durations, microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// From unsorted durations in microseconds.
    pub fn from_micros(values: &mut [f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(f64::total_cmp);
        let at = |q: f64| -> f64 {
            let last = values.len().saturating_sub(1);
            // Nearest rank; the float→usize cast saturates and is clamped.
            let idx = ((last as f64) * q).round() as usize;
            values.get(idx.min(last)).copied().unwrap_or(0.0)
        };
        Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// Decisions of one config over the replayed requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Route name (`-` when none matched) → requests.
    pub by_route: BTreeMap<String, u64>,
    /// `forward`, `respond`, `redirect`, `block`, `no_route`, … → requests.
    pub by_action: BTreeMap<String, u64>,
    /// Status the client got → requests.
    pub by_status: BTreeMap<u16, u64>,
}

impl Tally {
    pub fn add(&mut self, side: &Side) {
        let route = side.route.clone().unwrap_or_else(|| "-".to_string());
        bump(self.by_route.entry(route).or_default());
        bump(self.by_action.entry(side.action.clone()).or_default());
        bump(self.by_status.entry(side.status).or_default());
    }
}

fn bump(n: &mut u64) {
    *n = n.saturating_add(1);
}

/// One config's answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Side {
    pub route: Option<String>,
    pub action: String,
    pub status: u16,
    pub upstream: Option<String>,
    pub blocked: bool,
    pub score: Option<f64>,
}

/// A request whose outcome changed, for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeExample {
    pub method: String,
    pub host: Option<String>,
    pub path: String,
    pub synthetic: bool,
    pub baseline: Side,
    pub candidate: Side,
}

impl ChangeExample {
    /// `GET shop.example.com/cart: 200 (route app) → 502 (route everything)`.
    pub fn describe(&self) -> String {
        let side = |s: &Side| {
            let mut t = format!("{}", s.status);
            if s.blocked {
                t.push_str(" blocked");
            }
            match &s.route {
                Some(r) => t.push_str(&format!(" (route {r})")),
                None => t.push_str(" (no route)"),
            }
            t
        };
        format!(
            "{} {}{}: {} → {}",
            self.method,
            self.host.as_deref().unwrap_or(""),
            self.path,
            side(&self.baseline),
            side(&self.candidate)
        )
    }
}

/// A count of changed requests with its share and a few examples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangeCount {
    pub count: u64,
    /// `count / requests` (0 when nothing was replayed).
    pub share: f64,
    pub examples: Vec<ChangeExample>,
}

impl ChangeCount {
    pub fn add(&mut self, ex: &ChangeExample) {
        self.count = self.count.saturating_add(1);
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(ex.clone());
        }
    }

    pub fn finish(&mut self, total: usize) {
        self.share = if total == 0 {
            0.0
        } else {
            self.count as f64 / total as f64
        };
    }
}

/// Candidate against baseline, request by request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    /// Requests whose outcome differs in any way below.
    pub changed: ChangeCount,
    pub route_changed: ChangeCount,
    pub newly_blocked: ChangeCount,
    /// Status class got worse (2xx/3xx → 4xx → 5xx).
    pub status_worsened: ChangeCount,
    pub now_4xx: ChangeCount,
    pub now_5xx: ChangeCount,
    pub now_redirected: ChangeCount,
}

impl Changes {
    pub fn finish(&mut self, total: usize) {
        for c in [
            &mut self.changed,
            &mut self.route_changed,
            &mut self.newly_blocked,
            &mut self.status_worsened,
            &mut self.now_4xx,
            &mut self.now_5xx,
            &mut self.now_redirected,
        ] {
            c.finish(total);
        }
    }
}

/// The replay stage's results.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplayReport {
    /// Requests replayed through each config.
    pub requests: usize,
    /// Per-request pipeline time under the candidate, microseconds.
    pub latency_us: Percentiles,
    /// The same under the baseline, when there is one.
    pub baseline_latency_us: Option<Percentiles>,
    /// Wall time of the candidate's replay, milliseconds.
    pub replay_ms: f64,
    /// Candidate requests per second.
    pub replay_rate: f64,
    pub candidate: Tally,
    pub baseline: Option<Tally>,
    /// Empty without a baseline.
    pub changes: Changes,
    /// Candidate upstream pools the gate found unreachable (every endpoint
    /// refused the TCP probe); the stub connector answers 502 for them.
    pub unreachable_upstreams: Vec<String>,
}

/// First line the runner writes on stdout after compiling the candidate:
/// endpoints that the gate should probe (those of the candidate that the
/// baseline does not have), by pool. The gate answers with [`ProbeAnswer`] on
/// the runner's stdin; the runner itself has no network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeRequest {
    pub probe: BTreeMap<String, Vec<String>>,
}

/// The gate's answer to a [`ProbeRequest`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeAnswer {
    /// Pools none of whose endpoints accepted a TCP connection.
    pub unreachable: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::from_micros(&mut v);
        assert_eq!(p.max, 100.0);
        assert!((p.p50 - 50.0).abs() <= 1.0, "{p:?}");
        assert!((p.p99 - 99.0).abs() <= 1.0, "{p:?}");
        assert_eq!(Percentiles::from_micros(&mut []), Percentiles::default());
    }

    #[test]
    fn report_round_trips() {
        let r = SandboxReport::new(Isolation::default());
        let s = serde_json::to_string(&r).unwrap();
        let back: SandboxReport = serde_json::from_str(&s).unwrap();
        assert_eq!(back, r);
    }
}
