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
    /// How much of the baseline the candidate removes or multiplies; only
    /// when both compiled (a first config has nothing to compare). Absent in
    /// reports written before it existed.
    #[serde(default)]
    pub blast_radius: Option<BlastRadius>,
    /// Certificates checked as a client would; absent when the runner did
    /// not get that far, or in older reports.
    #[serde(default)]
    pub tls: Option<TlsReport>,
    /// Filled by the gate after the runner exits: the runner's
    /// `upstream_plan` sent to the real upstreams (`gate::upstream_check`).
    #[serde(default)]
    pub upstream_check: Option<UpstreamCheck>,
    /// The upstream requests the runner wants sent, when the gate asked
    /// for an upstream check (`--upstream-check`).
    #[serde(default)]
    pub upstream_plan: Option<UpstreamPlan>,
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
            blast_radius: None,
            tls: None,
            upstream_check: None,
            upstream_plan: None,
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
    /// `uid 65534 gid 65534, no capabilities, no_new_privs, seccomp filter`
    /// or what could not be dropped (sandbox-runner/src/privileges.rs).
    /// Absent in reports written before it existed.
    #[serde(default)]
    pub privileges: String,
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
        // The action is named only when it changed (forward → respond).
        let show_action = self.baseline.action != self.candidate.action;
        let side = |s: &Side| {
            let mut t = format!("{}", s.status);
            if s.blocked {
                t.push_str(" blocked");
            }
            let action = if show_action {
                format!(", {}", s.action)
            } else {
                String::new()
            };
            match &s.route {
                Some(r) => t.push_str(&format!(" (route {r}{action})")),
                None => t.push_str(&format!(" (no route{action})")),
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
#[serde(default)]
pub struct Changes {
    /// Requests whose outcome differs in any way below.
    pub changed: ChangeCount,
    /// The baseline forwarded them to an upstream, the candidate answers
    /// them itself (`respond`): a maintenance page left on, a catch-all.
    pub now_local: ChangeCount,
    pub route_changed: ChangeCount,
    /// Re-routed away from a route the candidate still has (a pattern that
    /// now captures more, a reordered table): what
    /// `gate.policy.max_route_changed` rejects. Requests whose route the
    /// candidate deleted are the blast-radius guard's, held for a person.
    pub route_moved: ChangeCount,
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
            &mut self.now_local,
            &mut self.route_changed,
            &mut self.route_moved,
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
    /// The same comparison per route (the baseline's route, the one users
    /// had; `-` for requests no baseline route matched), so a small route
    /// is judged on its own and not averaged away. Absent in older reports.
    #[serde(default)]
    pub per_route: BTreeMap<String, RouteCompare>,
    /// Redirects followed inside the config that end badly under the
    /// candidate and did not under the baseline (a loop, a redirect to
    /// itself, a host this config no longer serves).
    #[serde(default)]
    pub redirects: RedirectChanges,
}

/// How one route's requests fared under both configs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteCompare {
    /// Replayed requests the baseline sent to this route.
    pub requests: u64,
    /// Of them, synthesized from the route's examples.
    pub synthesized: u64,
    pub baseline: Classes,
    pub candidate: Classes,
    /// The first request that succeeded under the baseline and not under
    /// the candidate.
    pub example: Option<ChangeExample>,
}

impl RouteCompare {
    /// `successes / requests` of one side (1 when nothing was replayed).
    pub fn success_share(&self, side: &Classes) -> f64 {
        if self.requests == 0 {
            1.0
        } else {
            side.success as f64 / self.requests as f64
        }
    }

    /// How far the candidate's success share falls below the baseline's
    /// (negative when it rose).
    pub fn success_drop(&self) -> f64 {
        self.success_share(&self.baseline) - self.success_share(&self.candidate)
    }
}

/// One side's answers to one route's requests, by status class.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Classes {
    /// Answers the user would take as the page they asked for (see
    /// `replay::succeeded`): below 400, not blocked, not a broken redirect,
    /// and not a local answer where the baseline forwarded.
    pub success: u64,
    pub s2xx: u64,
    pub s3xx: u64,
    pub s4xx: u64,
    pub s5xx: u64,
    pub blocked: u64,
    /// Answered by Aegis itself (`respond`) instead of an upstream.
    pub local: u64,
}

impl Classes {
    pub fn add(&mut self, side: &Side, success: bool) {
        if success {
            bump(&mut self.success);
        }
        match side.status {
            500.. => bump(&mut self.s5xx),
            400..=499 => bump(&mut self.s4xx),
            300..=399 => bump(&mut self.s3xx),
            _ => bump(&mut self.s2xx),
        }
        if side.blocked {
            bump(&mut self.blocked);
        }
        if side.action == "respond" {
            bump(&mut self.local);
        }
    }
}

/// How a chain of redirects followed inside one config ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "end")]
pub enum RedirectEnd {
    /// A final answer (not a redirect) from this config, or a target that
    /// leaves it (another site, or https where Aegis has no TLS listener).
    Served { status: u16 },
    /// The first redirect points at the very URL that was asked for (an
    /// https redirect on the TLS listener itself).
    ToItself { location: String },
    /// A later hop comes back to a URL of the chain, or the chain is longer
    /// than the depth followed.
    Loop { chain: Vec<String> },
    /// The target's host is one no route, certificate or recorded request
    /// of this config names.
    Unserved { host: String, location: String },
}

/// Requests whose redirects end badly, by kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RedirectChanges {
    /// `regression:redirect_self`.
    pub to_itself: RedirectCount,
    /// `regression:redirect_loop`.
    pub loops: RedirectCount,
    /// `regression:redirect_unserved`.
    pub unserved: RedirectCount,
}

/// A count of requests with a few examples (`GET h/p: 301 → https://h/p`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RedirectCount {
    pub count: u64,
    pub examples: Vec<String>,
}

impl RedirectCount {
    pub fn add(&mut self, example: impl FnOnce() -> String) {
        bump(&mut self.count);
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(example());
        }
    }
}

/// What the runner found checking the candidate's certificates as a client
/// would, at judge time (`aegis_engine::tls_check`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsReport {
    /// Certificates checked.
    pub checked: u64,
    /// Problems that are the candidate's doing: each a regression.
    pub findings: Vec<TlsFinding>,
    /// Problems the active version has already (the same certificate):
    /// reported, not a reason to refuse an unrelated edit.
    pub inherited: Vec<TlsFinding>,
    /// HTTPS names of the sample the baseline's certificates covered.
    pub sample_names: Vec<String>,
}

/// One certificate problem, with the name it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFinding {
    /// `tls_expired`, `tls_not_yet_valid`, `tls_expiring`, `tls_chain`,
    /// `tls_sni` (the verdict's code is `regression:<this>`).
    pub code: String,
    /// The server name (or names) of the entry.
    pub name: String,
    pub detail: String,
}

/// The upstream verification's results (issue 14, item 1;
/// `gate::upstream_check`): the gate, not the runner (which has no network),
/// sent the requests of the runner's [`UpstreamPlan`] to the real endpoints
/// and compared each candidate answer with the baseline's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpstreamCheck {
    /// Upstream requests sent (candidate and baseline together; each
    /// distinct request once), at most `gate.sandbox.upstream_check.max_requests`.
    pub sent: u64,
    /// Pairs (one sampled request, as the candidate and as the baseline would
    /// send it) whose two answers were both obtained and compared.
    pub checked: u64,
    /// Checked pairs whose answers differ in any way (status class,
    /// Location, content type, length bucket, an error on either side).
    pub differed: u64,
    /// Checked pairs whose candidate answer is worse: by code (`status`,
    /// `timeout`, `connect`, `location`), and in all.
    pub worse: u64,
    pub worse_by_code: BTreeMap<String, u64>,
    /// Per route (the baseline's): pairs checked and worse.
    pub per_route: BTreeMap<String, UpstreamRouteCheck>,
    /// Pairs of the plan not checked: over the request cap, past the time
    /// budget, or cut by the budget while waiting.
    pub not_checked: u64,
    /// Wall time of the check, milliseconds.
    pub elapsed_ms: f64,
    /// `GET www.example.com/a → pool app 127.0.0.1:9001: 200 text/html 2^12 → 404 text/html 2^8 (upstream:status)`.
    pub examples: Vec<String>,
}

/// One route's share of the upstream check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpstreamRouteCheck {
    pub checked: u64,
    pub worse: u64,
    /// The first worse pair's code (`status`, `timeout`, …).
    pub code: Option<String>,
}

/// One upstream request exactly as a config's pipeline would send it: the
/// endpoint chosen, the rewritten head, and the timeouts that apply.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UpstreamRequest {
    pub pool: String,
    /// `host:port` of the endpoint.
    pub endpoint: String,
    pub method: String,
    /// Origin-form path and query, as sent.
    pub target: String,
    /// Header lines as sent (`host` included), in order.
    pub headers: Vec<(String, String)>,
    pub connect_timeout_ms: u64,
    /// Time to the response head (a route's `timeout`, else the pool's
    /// `response_timeout`).
    pub response_timeout_ms: u64,
}

/// One sampled request under both configs, for the upstream check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamPair {
    /// The baseline's route (`health:<pool>` for a pool's health check).
    pub route: String,
    /// `GET www.example.com/a`: the request as the client sent it.
    pub request: String,
    pub baseline: UpstreamRequest,
    pub candidate: UpstreamRequest,
}

/// What the runner leaves for the gate to send (it has no network): the
/// pairs whose candidate request differs from the baseline's, chosen round
/// robin across routes, at most `max_requests` distinct requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpstreamPlan {
    pub pairs: Vec<UpstreamPair>,
    /// Sampled requests that qualified (GET/HEAD, no body, nothing redacted
    /// in the path or query, forwarded by both to pools both configs have).
    pub eligible: u64,
    /// Of them, sent identically by both configs (nothing to check).
    pub identical: u64,
    /// Distinct differing pairs left out by the request cap.
    pub over_cap: u64,
}

/// What one compiled config set holds, by name: the input of
/// [`BlastRadius::between`]. The runner fills it from the compiled sets (the
/// gate never parses a candidate).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub routes: Vec<String>,
    pub upstreams: Vec<String>,
    /// One name per `tls` entry: its server names, sorted, comma-joined.
    pub tls: Vec<String>,
    pub features: Vec<String>,
    pub rate_limits: Vec<String>,
    /// Config files of the set (aegis.yaml included) and their sizes, bytes.
    pub files: Vec<(String, u64)>,
}

/// One list of the baseline against the candidate's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListDiff {
    /// Entries in the baseline.
    pub baseline: u64,
    /// Entries in the candidate.
    pub candidate: u64,
    /// Baseline names the candidate does not have (a rename counts as one
    /// removed and one added: what served under the old name is gone).
    pub removed: u64,
    /// Candidate names the baseline does not have.
    pub added: u64,
    /// `removed / baseline`, 0 when the baseline has none.
    pub removed_share: f64,
    /// Up to [`MAX_EXAMPLES`] of the removed names.
    pub removed_names: Vec<String>,
}

impl ListDiff {
    /// Compares two lists of names as multisets (a name listed twice must be
    /// gone twice to count twice).
    pub fn between(baseline: &[String], candidate: &[String]) -> Self {
        let mut left: BTreeMap<&str, u64> = BTreeMap::new();
        for n in candidate {
            bump(left.entry(n.as_str()).or_default());
        }
        let mut d = Self {
            baseline: count(baseline.len()),
            candidate: count(candidate.len()),
            ..Self::default()
        };
        for n in baseline {
            match left.get_mut(n.as_str()) {
                Some(c) if *c > 0 => *c = c.saturating_sub(1),
                _ => {
                    bump(&mut d.removed);
                    if d.removed_names.len() < MAX_EXAMPLES {
                        d.removed_names.push(n.clone());
                    }
                }
            }
        }
        d.added = left.values().fold(0u64, |a, n| a.saturating_add(*n));
        d.removed_share = share(d.removed, d.baseline);
        d
    }
}

/// Size of one config file on either side, bytes; `None` where it does not
/// exist.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileBytes {
    pub name: String,
    pub baseline: Option<u64>,
    pub candidate: Option<u64>,
}

/// The candidate against the baseline as configs, not as traffic: cheap
/// counts that catch what a replay cannot (a truncated routes file whose
/// lost routes the sample never visited compiles and replays clean). The
/// share of replayed requests whose route changed is not repeated here: it
/// is `replay.changes.route_changed`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlastRadius {
    pub routes: ListDiff,
    pub upstreams: ListDiff,
    /// `tls` entries, named by their server names.
    pub tls: ListDiff,
    pub features: ListDiff,
    pub rate_limits: ListDiff,
    /// Config files of the directory, by file name.
    pub files: ListDiff,
    /// Every config file of either side, sorted by name.
    pub file_bytes: Vec<FileBytes>,
    /// All config files together, bytes.
    pub total_bytes: FileBytes,
}

impl BlastRadius {
    pub fn between(baseline: &Inventory, candidate: &Inventory) -> Self {
        let names = |files: &[(String, u64)]| -> Vec<String> {
            files.iter().map(|(n, _)| n.clone()).collect()
        };
        let mut sizes: BTreeMap<&str, FileBytes> = BTreeMap::new();
        for (name, bytes) in &baseline.files {
            sizes.entry(name).or_default().baseline = Some(*bytes);
        }
        for (name, bytes) in &candidate.files {
            sizes.entry(name).or_default().candidate = Some(*bytes);
        }
        let file_bytes = sizes
            .into_iter()
            .map(|(name, mut f)| {
                f.name = name.to_string();
                f
            })
            .collect();
        let total =
            |files: &[(String, u64)]| files.iter().fold(0u64, |a, (_, b)| a.saturating_add(*b));
        Self {
            routes: ListDiff::between(&baseline.routes, &candidate.routes),
            upstreams: ListDiff::between(&baseline.upstreams, &candidate.upstreams),
            tls: ListDiff::between(&baseline.tls, &candidate.tls),
            features: ListDiff::between(&baseline.features, &candidate.features),
            rate_limits: ListDiff::between(&baseline.rate_limits, &candidate.rate_limits),
            files: ListDiff::between(&names(&baseline.files), &names(&candidate.files)),
            file_bytes,
            total_bytes: FileBytes {
                name: "the config set".to_string(),
                baseline: Some(total(&baseline.files)),
                candidate: Some(total(&candidate.files)),
            },
        }
    }
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// `part / whole`, 0 when `whole` is 0.
fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
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

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn list_diff_counts_removed_and_added_by_name() {
        let d = ListDiff::between(&names(&["a", "b", "c", "d"]), &names(&["a", "c", "e"]));
        assert_eq!((d.baseline, d.candidate, d.removed, d.added), (4, 3, 2, 1));
        assert_eq!(d.removed_names, names(&["b", "d"]));
        assert!((d.removed_share - 0.5).abs() < 1e-9);
        // No baseline entries: nothing can be removed, and no division.
        let d = ListDiff::between(&[], &names(&["a"]));
        assert_eq!((d.removed, d.added, d.removed_share), (0, 1, 0.0));
    }

    #[test]
    fn blast_radius_lists_every_file_of_either_side() {
        let base = Inventory {
            files: vec![("a.yaml".into(), 100), ("b.yaml".into(), 50)],
            ..Inventory::default()
        };
        let cand = Inventory {
            files: vec![("a.yaml".into(), 300), ("c.yaml".into(), 7)],
            ..Inventory::default()
        };
        let b = BlastRadius::between(&base, &cand);
        assert_eq!(b.files.removed_names, names(&["b.yaml"]));
        assert_eq!(b.file_bytes.len(), 3);
        assert_eq!(b.file_bytes[1].name, "b.yaml");
        assert_eq!(b.file_bytes[1].candidate, None);
        assert_eq!(b.total_bytes.baseline, Some(150));
        assert_eq!(b.total_bytes.candidate, Some(307));
    }

    #[test]
    fn a_report_without_blast_radius_still_parses() {
        let r = SandboxReport::new(Isolation::default());
        let mut v = serde_json::to_value(&r).unwrap();
        v.as_object_mut().unwrap().remove("blast_radius");
        let back: SandboxReport = serde_json::from_value(v).unwrap();
        assert_eq!(back.blast_radius, None);
    }

    #[test]
    fn report_round_trips() {
        let r = SandboxReport::new(Isolation::default());
        let s = serde_json::to_string(&r).unwrap();
        let back: SandboxReport = serde_json::from_str(&s).unwrap();
        assert_eq!(back, r);
    }
}
