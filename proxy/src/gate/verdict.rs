//! The verdict: accept or reject a candidate, with one primary reason code
//! and a sentence a person can act on.
//!
//! Reason codes: `invalid` (static stage), `crashed`, `oom`, `timeout` (the
//! runner died, ran out of memory, CPU or time), and `regression:<kind>`
//! where kind is, in this order of precedence, `tls_expired`,
//! `tls_not_yet_valid`, `tls_chain`, `tls_expiring`, `tls_sni` (the
//! candidate's certificates, checked as a client would), `newly_blocked`,
//! `status`, `redirect_self`, `redirect_loop`, `redirect_unserved`
//! (redirects followed inside the config), `route` (one route's success
//! share fell, however small the route), `now_local` (forwarded requests
//! now answered by Aegis), `route_changed`, then `upstream:<kind>` (the
//! gate's check against the real upstreams: `status`, `timeout`, `connect`,
//! `location`; `upstream_check.rs`), `latency` or `memory`
//! (gate.policy exceeded). When several are exceeded, the first is primary
//! and the others are listed in `also`.
//!
//! `held:blast_radius` is not a rejection of what the candidate does but of
//! how much it changes: valid, replayed clean, yet it removes more than
//! `max_routes_removed` / `max_upstreams_removed` / `max_tls_removed` /
//! `max_files_removed` of the baseline's routes, pools, TLS entries or files,
//! re-routes more than `max_rerouted` of the replayed requests, or makes a
//! file, the whole set or a list reach `max_growth` times its size (by more
//! than `growth_floor_bytes` / `growth_floor_entries`). The gate keeps such a
//! candidate until `POST /admin/confirm` ([`Verdict::is_held`]). Rejection
//! comes first: a candidate that is invalid or regresses keeps that code,
//! and what would have held it is listed in `also`. Without a baseline
//! there is nothing to compare and nothing is held.

use aegis_engine::config::settings::{GatePolicy, SandboxLimits};
use serde::{Deserialize, Serialize};

use super::report::{
    ChangeCount, ListDiff, RedirectCount, ReplayReport, RouteCompare, RunnerOutcome, SandboxReport,
    TlsFinding, TlsReport,
};

/// The reason code of a held candidate.
pub const HELD_BLAST_RADIUS: &str = "held:blast_radius";

/// How the runner ended when it did not hand back a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RunnerFailure {
    /// "memory allocation of N bytes failed" (RLIMIT_AS) or a cgroup OOM kill.
    Oom { detail: String },
    /// The parent's wall-clock deadline, or SIGXCPU at RLIMIT_CPU.
    Timeout { detail: String },
    /// A signal, a panic, or an exit without a report.
    Crashed { detail: String },
}

/// What the gate learned from the sandbox.
#[derive(Debug, Clone, PartialEq)]
pub enum SandboxOutcome {
    Report(Box<SandboxReport>),
    Failed {
        failure: RunnerFailure,
        /// The stage the runner had announced last (`compile candidate`, …).
        stage: Option<String>,
        /// The last lines of its stderr.
        stderr_tail: String,
        peak_rss_bytes: Option<u64>,
    },
}

/// The decision about one candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub accepted: bool,
    /// `None` when accepted.
    pub reason: Option<String>,
    /// One sentence: why, and what to do about it.
    pub sentence: String,
    /// Further exceeded policies, as `code: sentence`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<String>,
}

impl Verdict {
    fn accept(sentence: String) -> Self {
        Self {
            accepted: true,
            reason: None,
            sentence,
            also: Vec::new(),
        }
    }

    fn reject(reason: &str, sentence: String) -> Self {
        Self {
            accepted: false,
            reason: Some(reason.to_string()),
            sentence,
            also: Vec::new(),
        }
    }

    /// Not accepted, but only until a person confirms: the candidate is
    /// valid and replayed clean, and changes too much to go in unasked.
    fn hold(reason: &str, sentence: String) -> Self {
        Self::reject(reason, sentence)
    }

    /// `accept` or the reason code.
    pub fn code(&self) -> &str {
        self.reason.as_deref().unwrap_or("accept")
    }

    /// True for a candidate held for confirmation (`held:*`) rather than
    /// rejected: `POST /admin/confirm` may promote it.
    pub fn is_held(&self) -> bool {
        !self.accepted
            && self
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with("held:"))
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / f64::from(1u32 << 20))
}

fn pct(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

/// A configured share as people write it: `20%`, `12.5%`.
fn limit_pct(share: f64) -> String {
    let p = share * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{p:.0}%")
    } else {
        format!("{p:.1}%")
    }
}

/// A configured factor as people write it: `2×`, `1.5×`.
fn times(f: f64) -> String {
    if (f - f.round()).abs() < 1e-9 {
        format!("{f:.0}×")
    } else {
        format!("{f}×")
    }
}

/// `Some(words)` when `cand` grew from `base` by more than `floor` and to at
/// least `factor` times `base` ("doubled" must count at 2.0, hence `>=`).
/// From nothing, any growth past the floor counts: there is no ratio.
fn grown(base: u64, cand: u64, factor: f64, floor: u64) -> Option<String> {
    if cand.saturating_sub(base) <= floor {
        return None;
    }
    if base == 0 {
        return Some("from none".to_string());
    }
    let ratio = cand as f64 / base as f64;
    (ratio >= factor).then(|| format!("{ratio:.1}× ≥ {}", times(factor)))
}

/// Up to three names, for a sentence.
fn some_names(names: &[String], total: u64) -> String {
    let shown: Vec<&str> = names.iter().take(3).map(String::as_str).collect();
    let more = if total > count(shown.len()) {
        ", …"
    } else {
        ""
    };
    format!("{}{more}", shown.join(", "))
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The blast-radius limits `report` exceeds under `policy`, as phrases of
/// one sentence (empty when none is, or when there was no baseline).
fn blast_radius(report: &SandboxReport, replay: &ReplayReport, policy: &GatePolicy) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let b = report.blast_radius.as_ref();
    let mut removed_any = false;
    let mut files_named = false;
    if let Some(b) = b {
        // Which files went is the first thing to check, so they are named;
        // route or pool names would make the sentence long (the report
        // lists them).
        let removals: [(&str, &ListDiff, f64, bool); 4] = [
            ("routes", &b.routes, policy.max_routes_removed, false),
            (
                "upstreams",
                &b.upstreams,
                policy.max_upstreams_removed,
                false,
            ),
            ("tls entries", &b.tls, policy.max_tls_removed, false),
            ("config files", &b.files, policy.max_files_removed, true),
        ];
        for (what, d, max, name_them) in removals {
            if d.removed_share <= max {
                continue;
            }
            removed_any = true;
            let which = if name_them {
                files_named = true;
                format!(": {}", some_names(&d.removed_names, d.removed))
            } else {
                String::new()
            };
            found.push(format!(
                "{} of {} {what} removed ({} > {}{which})",
                d.removed,
                d.baseline,
                pct(d.removed_share),
                limit_pct(max)
            ));
        }
    }
    // Reuses the replay's own count; without a baseline it has nothing to
    // compare and stays 0. `max_route_changed` (a rejection) was checked
    // before this is reached.
    let rerouted = &replay.changes.route_changed;
    if replay.baseline.is_some() && rerouted.share > policy.max_rerouted {
        let example = rerouted
            .examples
            .first()
            .map(|e| format!("; e.g. {}", e.describe()))
            .unwrap_or_default();
        found.push(format!(
            "{} of {} replayed requests re-routed ({} > {}{example})",
            rerouted.count,
            replay.requests,
            pct(rerouted.share),
            limit_pct(policy.max_rerouted)
        ));
    }
    let Some(b) = b else {
        return found;
    };
    let lists: [(&str, &ListDiff); 6] = [
        ("routes", &b.routes),
        ("upstreams", &b.upstreams),
        ("tls entries", &b.tls),
        ("features", &b.features),
        ("rate limits", &b.rate_limits),
        ("config files", &b.files),
    ];
    for (what, d) in lists {
        if let Some(g) = grown(
            d.baseline,
            d.candidate,
            policy.max_growth,
            policy.growth_floor_entries,
        ) {
            found.push(format!(
                "{what} grew {} → {} ({g})",
                d.baseline, d.candidate
            ));
        }
    }
    let floor = policy.growth_floor_bytes.0;
    let mut file_grew = false;
    for f in &b.file_bytes {
        if let (Some(base), Some(cand)) = (f.baseline, f.candidate)
            && let Some(g) = grown(base, cand, policy.max_growth, floor)
        {
            file_grew = true;
            found.push(format!("{} grew {base} → {cand} bytes ({g})", f.name));
        }
    }
    // The whole set catches a large new file (no per-file ratio); it would
    // only repeat a file that grew already.
    let t = &b.total_bytes;
    if !file_grew
        && let (Some(base), Some(cand)) = (t.baseline, t.candidate)
        && let Some(g) = grown(base, cand, policy.max_growth, floor)
    {
        found.push(format!("{} grew {base} → {cand} bytes ({g})", t.name));
    }
    if removed_any {
        // Where the removed entries went: the files that lost most of
        // their bytes (a truncation) or disappeared, largest loss first.
        let mut shrunk: Vec<(u64, String)> = b
            .file_bytes
            .iter()
            .filter_map(|f| {
                let base = f.baseline?;
                match f.candidate {
                    Some(cand) if cand.saturating_mul(2) < base => Some((
                        base.saturating_sub(cand),
                        format!("{} shrank {base} → {cand} bytes", f.name),
                    )),
                    None if !files_named => {
                        Some((base, format!("{} deleted ({base} bytes)", f.name)))
                    }
                    _ => None,
                }
            })
            .collect();
        shrunk.sort_by_key(|(loss, _)| std::cmp::Reverse(*loss));
        found.extend(shrunk.into_iter().take(2).map(|(_, s)| s));
    }
    found
}

/// `regression:tls_*` from the runner's certificate checks, one per code
/// (the first name of each; the sentence names how many more).
fn tls_findings(found: &mut Vec<(String, String)>, tls: &TlsReport) {
    let mut codes: Vec<&str> = tls.findings.iter().map(|f| f.code.as_str()).collect();
    codes.dedup();
    let mut seen: Vec<&str> = Vec::new();
    for code in codes {
        if seen.contains(&code) {
            continue;
        }
        seen.push(code);
        let all: Vec<&TlsFinding> = tls.findings.iter().filter(|f| f.code == code).collect();
        let Some(first) = all.first() else { continue };
        let more = match all.len().saturating_sub(1) {
            0 => String::new(),
            n => format!(" (and {n} more)"),
        };
        let what = match code {
            "tls_sni" => {
                "clients that asked for this name in the sample would get no certificate for it"
            }
            "tls_chain" => "clients cannot build a chain to a root they trust",
            "tls_expiring" => "renew it before it goes live",
            _ => "every TLS handshake for it would fail",
        };
        found.push((
            format!("regression:{code}"),
            format!(
                "certificate for {}: {}{more}: {what}",
                first.name, first.detail
            ),
        ));
    }
}

/// `regression:redirect_*`: redirects followed inside the candidate that
/// newly end at themselves, in a loop or at a host it does not serve.
fn redirect_findings(
    found: &mut Vec<(String, String)>,
    replay: &ReplayReport,
    policy: &GatePolicy,
) {
    let total = replay.requests;
    let r = &replay.redirects;
    let kinds: [(&str, &RedirectCount, &str); 3] = [
        (
            "regression:redirect_self",
            &r.to_itself,
            "would be redirected to the very URL they asked for (an https redirect answering on the TLS listener too?)",
        ),
        (
            "regression:redirect_loop",
            &r.loops,
            "would be redirected in a loop",
        ),
        (
            "regression:redirect_unserved",
            &r.unserved,
            "would be redirected to a host this config does not serve (any more)",
        ),
    ];
    for (code, c, what) in kinds {
        let share = if total == 0 {
            0.0
        } else {
            c.count as f64 / total as f64
        };
        if c.count == 0 || share <= policy.max_redirect_broken {
            continue;
        }
        let e = c
            .examples
            .first()
            .map(|e| format!("; e.g. {e}"))
            .unwrap_or_default();
        found.push((
            code.to_string(),
            format!(
                "{} of {total} replayed requests ({}) {what}, limit {} (gate.policy.max_redirect_broken){e}",
                c.count,
                pct(share),
                pct(policy.max_redirect_broken)
            ),
        ));
    }
}

/// `regression:route`: the routes, by name, whose success share falls by
/// more than `max_route_success_drop` over at least `min_route_requests`
/// replayed requests, worst first.
fn route_findings(replay: &ReplayReport, policy: &GatePolicy) -> Option<(String, String)> {
    replay.baseline.as_ref()?;
    let total = replay.requests;
    let mut bad: Vec<(&String, &RouteCompare)> = replay
        .per_route
        .iter()
        .filter(|(_, r)| r.requests >= policy.min_route_requests.max(1))
        .filter(|(_, r)| r.success_drop() > policy.max_route_success_drop)
        .collect();
    if bad.is_empty() {
        return None;
    }
    bad.sort_by(|a, b| b.1.success_drop().total_cmp(&a.1.success_drop()));
    let one = |(name, r): &(&String, &RouteCompare)| {
        let name = if name.as_str() == "-" {
            "(no route)".to_string()
        } else {
            format!("route {name}")
        };
        let share = if total == 0 {
            0.0
        } else {
            r.requests as f64 / total as f64
        };
        let c = &r.candidate;
        format!(
            "{name}: success {} → {} of {} replayed requests ({} of the sample; now 3xx {}, 4xx {}, 5xx {}, blocked {}, answered locally {})",
            pct(r.success_share(&r.baseline)),
            pct(r.success_share(c)),
            r.requests,
            pct(share),
            c.s3xx,
            c.s4xx,
            c.s5xx,
            c.blocked,
            c.local
        )
    };
    let shown: Vec<String> = bad.iter().take(3).map(one).collect();
    let more = match bad.len().saturating_sub(3) {
        0 => String::new(),
        n => format!("; and {n} more route(s)"),
    };
    let example = bad
        .first()
        .and_then(|(_, r)| r.example.as_ref())
        .map(|e| format!("; e.g. {}", e.describe()))
        .unwrap_or_default();
    Some((
        "regression:route".to_string(),
        format!(
            "{}{more}, limit a drop of {} (gate.policy.max_route_success_drop, routes with at least {} requests){example}",
            shown.join("; "),
            limit_pct(policy.max_route_success_drop),
            policy.min_route_requests
        ),
    ))
}

fn stage_words(stage: &Option<String>) -> String {
    match stage {
        Some(s) => format!(" while it was at `{s}`"),
        None => String::new(),
    }
}

/// Judges the sandbox's outcome under the baseline's policy and limits.
pub fn judge(outcome: &SandboxOutcome, policy: &GatePolicy, limits: &SandboxLimits) -> Verdict {
    let report = match outcome {
        SandboxOutcome::Failed {
            failure,
            stage,
            stderr_tail,
            ..
        } => return judge_failure(failure, stage, stderr_tail, limits),
        SandboxOutcome::Report(r) => r,
    };
    if report.outcome == RunnerOutcome::Invalid {
        let n = report.diagnostics.len();
        let first = report
            .diagnostics
            .first()
            .cloned()
            .unwrap_or_else(|| "the config set could not be loaded".to_string());
        let sentence = if n > 1 {
            format!("{first} (and {} more error(s))", n.saturating_sub(1))
        } else {
            first
        };
        return Verdict::reject("invalid", sentence);
    }
    let Some(replay) = &report.replay else {
        return Verdict::reject(
            "crashed",
            "the sandbox runner reported no replay results".to_string(),
        );
    };
    let total = replay.requests;
    let mut found: Vec<(String, String)> = Vec::new();
    let example = |c: &ChangeCount| -> String {
        c.examples
            .first()
            .map(|e| format!("; e.g. {}", e.describe()))
            .unwrap_or_default()
    };
    let ch = &replay.changes;
    // Certificates first: a handshake that fails takes every request of
    // the name with it, whatever the replay says.
    if let Some(tls) = &report.tls {
        tls_findings(&mut found, tls);
    }
    if ch.newly_blocked.share > policy.max_newly_blocked {
        found.push((
            "regression:newly_blocked".into(),
            format!(
                "{} of {total} replayed requests ({}) would be newly blocked by the feature score, limit {} (gate.policy.max_newly_blocked){}: check the features and scoring.block_at",
                ch.newly_blocked.count,
                pct(ch.newly_blocked.share),
                pct(policy.max_newly_blocked),
                example(&ch.newly_blocked)
            ),
        ));
    }
    if ch.status_worsened.share > policy.max_status_worsened {
        let unreachable = if replay.unreachable_upstreams.is_empty() {
            String::new()
        } else {
            format!(
                " (unreachable upstream(s): {})",
                replay.unreachable_upstreams.join(", ")
            )
        };
        found.push((
            "regression:status".into(),
            format!(
                "{} of {total} replayed requests ({}) would get a worse status class (now 4xx: {}, now 5xx: {}), limit {} (gate.policy.max_status_worsened){unreachable}{}",
                ch.status_worsened.count,
                pct(ch.status_worsened.share),
                ch.now_4xx.count,
                ch.now_5xx.count,
                pct(policy.max_status_worsened),
                example(&ch.status_worsened)
            ),
        ));
    }
    redirect_findings(&mut found, replay, policy);
    if let Some(f) = route_findings(replay, policy) {
        found.push(f);
    }
    if replay.baseline.is_some() && ch.now_local.share > policy.max_now_local {
        found.push((
            "regression:now_local".into(),
            format!(
                "{} of {total} replayed requests ({}) that the active config forwards upstream would be answered by Aegis itself (respond), limit {} (gate.policy.max_now_local){}: a maintenance page or a catch-all left on a forward route?",
                ch.now_local.count,
                pct(ch.now_local.share),
                pct(policy.max_now_local),
                example(&ch.now_local)
            ),
        ));
    }
    if let Some(max) = policy.max_route_changed
        && replay.baseline.is_some()
        && ch.route_moved.share > max
    {
        found.push((
                "regression:route_changed".into(),
                format!(
                    "{} of {total} replayed requests ({}) would take a different route that the active config also has, limit {} (gate.policy.max_route_changed){}",
                    ch.route_moved.count,
                    pct(ch.route_moved.share),
                    pct(max),
                    example(&ch.route_moved)
                ),
            ));
    }
    // The real upstreams' answers (the gate sent them after the runner
    // exited): what the stub connector cannot see.
    if let Some(check) = &report.upstream_check
        && let Some(f) = super::upstream_check::findings(check, limits.upstream_check.max_worse)
    {
        found.push(f);
    }
    let max_p99_us = policy.max_p99.0.as_secs_f64() * 1e6;
    if total > 0 && replay.latency_us.p99 > max_p99_us {
        found.push((
            "regression:latency".into(),
            format!(
                "p99 per-request time in the sandbox is {:.1} ms, limit {:.1} ms (gate.policy.max_p99): look for expensive regexes in routes or features",
                replay.latency_us.p99 / 1000.0,
                max_p99_us / 1000.0
            ),
        ));
    }
    if report.peak_rss_bytes > policy.max_peak_rss.0 {
        found.push((
            "regression:memory".into(),
            format!(
                "the sandbox runner peaked at {} holding the candidate and the baseline, limit {} (gate.policy.max_peak_rss): the config is too large for a worker",
                mib(report.peak_rss_bytes),
                mib(policy.max_peak_rss.0)
            ),
        ));
    }
    let held = blast_radius(report, replay, policy);
    let mut it = found.into_iter();
    match it.next() {
        Some((code, sentence)) => {
            let mut v = Verdict::reject(&code, sentence);
            v.also = it.map(|(c, s)| format!("{c}: {s}")).collect();
            // Rejection comes first; the hold is only mentioned.
            if !held.is_empty() {
                v.also
                    .push(format!("{HELD_BLAST_RADIUS}: {}", held.join(", ")));
            }
            v
        }
        None if !held.is_empty() => Verdict::hold(
            HELD_BLAST_RADIUS,
            format!(
                "held: {}; confirm with POST /admin/confirm",
                held.join(", ")
            ),
        ),
        None => {
            let sample = &report.sample;
            Verdict::accept(format!(
                "replayed {total} requests ({} recorded, {} synthesized): {} changed route, {} newly blocked, {} worse status; p99 {:.2} ms; peak RSS {}",
                sample.recorded,
                sample.synthesized,
                ch.route_changed.count,
                ch.newly_blocked.count,
                ch.status_worsened.count,
                replay.latency_us.p99 / 1000.0,
                mib(report.peak_rss_bytes)
            ))
        }
    }
}

fn judge_failure(
    failure: &RunnerFailure,
    stage: &Option<String>,
    stderr_tail: &str,
    limits: &SandboxLimits,
) -> Verdict {
    let at = stage_words(stage);
    match failure {
        RunnerFailure::Oom { detail } => Verdict::reject(
            "oom",
            format!(
                "the sandbox runner ran out of memory{at} (limit {}, gate.sandbox.memory; {detail}): the config needs more memory than a worker may use, make it smaller (fewer or simpler regex routes)",
                mib(limits.memory.0)
            ),
        ),
        RunnerFailure::Timeout { detail } => Verdict::reject(
            "timeout",
            format!(
                "the sandbox runner did not finish{at}: {detail} (gate.sandbox.deadline {:?}, gate.sandbox.cpu_seconds {}): the config is too expensive to compile or to serve",
                limits.deadline.0, limits.cpu_seconds
            ),
        ),
        RunnerFailure::Crashed { detail } => {
            let last = stderr_tail
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| format!(" (last words: {})", l.trim()))
                .unwrap_or_default();
            Verdict::reject(
                "crashed",
                format!("the sandbox runner crashed{at}: {detail}{last}"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::report::{
        BlastRadius, ChangeExample, Inventory, Isolation, ReplayReport, Side, Tally,
    };

    fn side(status: u16, blocked: bool) -> Side {
        Side {
            route: Some("r".into()),
            action: if blocked { "block" } else { "respond" }.into(),
            status,
            upstream: None,
            blocked,
            score: None,
        }
    }

    fn report(worse: u64, blocked: u64, total: usize) -> SandboxOutcome {
        let mut r = SandboxReport::new(Isolation::default());
        r.outcome = RunnerOutcome::Replayed;
        let mut replay = ReplayReport {
            requests: total,
            ..ReplayReport::default()
        };
        for _ in 0..worse {
            crate::gate::replay::compare(
                &mut replay.changes,
                &ChangeExample {
                    method: "GET".into(),
                    host: None,
                    path: "/".into(),
                    synthetic: false,
                    baseline: side(200, false),
                    candidate: side(404, false),
                },
                true,
            );
        }
        for _ in 0..blocked {
            crate::gate::replay::compare(
                &mut replay.changes,
                &ChangeExample {
                    method: "GET".into(),
                    host: None,
                    path: "/".into(),
                    synthetic: false,
                    baseline: side(200, false),
                    candidate: side(403, true),
                },
                true,
            );
        }
        replay.changes.finish(total);
        r.replay = Some(replay);
        SandboxOutcome::Report(Box::new(r))
    }

    #[test]
    fn thresholds_and_primary_reason() {
        let p = GatePolicy::default();
        let l = SandboxLimits::default();
        assert!(judge(&report(1, 0, 1000), &p, &l).accepted);
        let v = judge(&report(50, 0, 1000), &p, &l);
        assert_eq!(v.code(), "regression:status");
        assert!(v.sentence.contains("50 of 1000"), "{}", v.sentence);
        // Blocking worsens the status too; newly_blocked is primary.
        let v = judge(&report(0, 900, 1000), &p, &l);
        assert_eq!(v.code(), "regression:newly_blocked");
        assert_eq!(v.also.len(), 1);
    }

    fn names(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    /// A clean replay of 1000 requests against a baseline, `rerouted` of
    /// them on another route (same status), with `blast` as the report's
    /// blast radius.
    fn with_blast(blast: Option<BlastRadius>, rerouted: u64) -> SandboxOutcome {
        with_blast_kept(blast, rerouted, true)
    }

    /// `kept`: the candidate still has the baseline's route (false: the
    /// route was deleted).
    fn with_blast_kept(blast: Option<BlastRadius>, rerouted: u64, kept: bool) -> SandboxOutcome {
        let mut r = SandboxReport::new(Isolation::default());
        r.outcome = RunnerOutcome::Replayed;
        let mut replay = ReplayReport {
            requests: 1000,
            baseline: Some(Tally::default()),
            ..ReplayReport::default()
        };
        for _ in 0..rerouted {
            let mut cand = side(200, false);
            cand.route = Some("other".into());
            crate::gate::replay::compare(
                &mut replay.changes,
                &ChangeExample {
                    method: "GET".into(),
                    host: None,
                    path: "/x".into(),
                    synthetic: false,
                    baseline: side(200, false),
                    candidate: cand,
                },
                kept,
            );
        }
        replay.changes.finish(1000);
        r.replay = Some(replay);
        r.blast_radius = blast;
        SandboxOutcome::Report(Box::new(r))
    }

    /// A 30-route baseline in routes.yaml (4210 bytes) and features.yaml
    /// (5000 bytes, 20 features); `edit` changes the candidate's copy.
    fn blast(edit: impl FnOnce(&mut Inventory)) -> Option<BlastRadius> {
        let base = Inventory {
            routes: names("r", 30),
            upstreams: names("u", 5),
            features: names("f", 20),
            files: vec![
                ("aegis.yaml".into(), 100),
                ("features.yaml".into(), 5000),
                ("routes.yaml".into(), 4210),
                ("upstreams.yaml".into(), 300),
            ],
            ..Inventory::default()
        };
        let mut cand = base.clone();
        edit(&mut cand);
        Some(BlastRadius::between(&base, &cand))
    }

    fn set_file(inv: &mut Inventory, name: &str, bytes: u64) {
        for f in &mut inv.files {
            if f.0 == name {
                f.1 = bytes;
            }
        }
    }

    #[test]
    fn most_routes_removed_is_held_with_the_numbers() {
        let p = GatePolicy::default();
        let l = SandboxLimits::default();
        let o = with_blast(
            blast(|c| {
                c.routes.truncate(18);
                set_file(c, "routes.yaml", 150);
            }),
            0,
        );
        let v = judge(&o, &p, &l);
        assert!(!v.accepted);
        assert!(v.is_held());
        assert_eq!(v.code(), HELD_BLAST_RADIUS);
        assert_eq!(
            v.sentence,
            "held: 12 of 30 routes removed (40.0% > 20%), routes.yaml shrank 4210 → 150 bytes; confirm with POST /admin/confirm"
        );
        assert!(v.also.is_empty());
    }

    #[test]
    fn blast_radius_thresholds() {
        let p = GatePolicy::default();
        let l = SandboxLimits::default();
        let held = |b: Option<BlastRadius>, rerouted: u64| {
            let v = judge(&with_blast(b, rerouted), &p, &l);
            assert!(v.accepted || v.is_held(), "{v:?}");
            v
        };
        // Nothing changed; the same config against itself.
        assert!(held(blast(|_| {}), 0).accepted);
        // Routes: 6 of 30 is 20%, not above; 7 is.
        assert!(held(blast(|c| c.routes.truncate(24)), 0).accepted);
        assert!(held(blast(|c| c.routes.truncate(23)), 0).is_held());
        // One route edited (renamed even), two added.
        assert!(held(blast(|c| c.routes[3] = "renamed".into()), 0).accepted);
        assert!(held(blast(|c| c.routes.extend(names("new", 2))), 0).accepted);
        // Upstreams: 1 of 5 is 20%; 2 of 5 is held.
        assert!(held(blast(|c| c.upstreams.truncate(4)), 0).accepted);
        assert!(held(blast(|c| c.upstreams.truncate(3)), 0).is_held());
        // TLS entries: one of two.
        let tls = |c: &mut Inventory| c.tls = vec!["a.example".into()];
        let v = judge(
            &with_blast(
                Some(BlastRadius::between(
                    &Inventory {
                        tls: vec!["a.example".into(), "b.example".into()],
                        ..Inventory::default()
                    },
                    &{
                        let mut c = Inventory::default();
                        tls(&mut c);
                        c
                    },
                )),
                0,
            ),
            &p,
            &l,
        );
        assert!(v.is_held(), "{v:?}");
        assert!(
            v.sentence
                .contains("1 of 2 tls entries removed (50.0% > 20%)")
        );
        // Files: one of four deleted is 25%, named.
        let v = held(blast(|c| c.files.retain(|f| f.0 != "upstreams.yaml")), 0);
        assert!(v.is_held());
        assert!(
            v.sentence
                .contains("1 of 4 config files removed (25.0% > 20%: upstreams.yaml)"),
            "{}",
            v.sentence
        );
        // Re-routed: 100 of 1000 is 10%, not above; 101 is.
        assert!(held(blast(|_| {}), 100).accepted);
        let v = held(blast(|_| {}), 101);
        assert!(
            v.sentence
                .contains("101 of 1000 replayed requests re-routed (10.1% > 10%; e.g. GET /x"),
            "{}",
            v.sentence
        );
        // Growth: a file that doubled, by more than 4 KiB.
        let v = held(blast(|c| set_file(c, "features.yaml", 10_000)), 0);
        assert!(v.is_held());
        assert!(
            v.sentence
                .contains("features.yaml grew 5000 → 10000 bytes (2.0× ≥ 2×)"),
            "{}",
            v.sentence
        );
        // 1.8× is not double; 300 → 900 bytes is under the floor.
        assert!(held(blast(|c| set_file(c, "features.yaml", 9000)), 0).accepted);
        assert!(held(blast(|c| set_file(c, "upstreams.yaml", 900)), 0).accepted);
        // A list that doubled by more than 10 entries; 5 → 10 upstreams
        // is under the floor.
        let v = held(blast(|c| c.features.extend(names("g", 20))), 0);
        assert!(
            v.sentence.contains("features grew 20 → 40 (2.0× ≥ 2×)"),
            "{}",
            v.sentence
        );
        assert!(held(blast(|c| c.upstreams.extend(names("v", 5))), 0).accepted);
        // A large new file: no ratio of its own, the whole set grew.
        let v = held(blast(|c| c.files.push(("big.yaml".into(), 20_000))), 0);
        assert!(
            v.sentence
                .contains("the config set grew 9610 → 29610 bytes (3.1× ≥ 2×)"),
            "{}",
            v.sentence
        );
    }

    #[test]
    fn tiny_configs_may_double_under_the_floors() {
        let p = GatePolicy::default();
        let l = SandboxLimits::default();
        let base = Inventory {
            routes: names("r", 2),
            files: vec![("routes.yaml".into(), 200)],
            ..Inventory::default()
        };
        let mut cand = base.clone();
        cand.routes.extend(names("new", 3));
        cand.files = vec![("routes.yaml".into(), 500)];
        let v = judge(
            &with_blast(Some(BlastRadius::between(&base, &cand)), 0),
            &p,
            &l,
        );
        assert!(v.accepted, "{v:?}");
    }

    #[test]
    fn rejection_comes_before_the_hold() {
        let p = GatePolicy::default();
        let l = SandboxLimits::default();
        // Regresses and removes most routes: the regression is the reason.
        let SandboxOutcome::Report(mut r) = report(50, 0, 1000) else {
            unreachable!()
        };
        r.blast_radius = blast(|c| c.routes.truncate(3));
        let v = judge(&SandboxOutcome::Report(r.clone()), &p, &l);
        assert_eq!(v.code(), "regression:status");
        assert!(!v.is_held());
        let also = v.also.last().unwrap();
        assert!(
            also.starts_with("held:blast_radius: 27 of 30 routes removed (90.0% > 20%)"),
            "{also}"
        );
        // Invalid stays invalid.
        r.outcome = RunnerOutcome::Invalid;
        r.diagnostics = vec!["routes.yaml:1:1: bad".into()];
        let v = judge(&SandboxOutcome::Report(r), &p, &l);
        assert_eq!(v.code(), "invalid");
        assert!(!v.is_held());
    }

    #[test]
    fn rerouted_hold_and_max_route_changed_rejection() {
        let l = SandboxLimits::default();
        // max_route_changed under max_rerouted: the rejection wins.
        let p = GatePolicy {
            max_route_changed: Some(0.05),
            ..GatePolicy::default()
        };
        let v = judge(&with_blast(blast(|_| {}), 200), &p, &l);
        assert_eq!(v.code(), "regression:route_changed");
        assert!(
            v.also
                .iter()
                .any(|a| a.starts_with("held:blast_radius: 200 of 1000"))
        );
        // Above it: 10% < share ≤ 50% is held, above 50% rejected.
        let p = GatePolicy {
            max_route_changed: Some(0.5),
            ..GatePolicy::default()
        };
        assert!(judge(&with_blast(blast(|_| {}), 200), &p, &l).is_held());
        assert_eq!(
            judge(&with_blast(blast(|_| {}), 600), &p, &l).code(),
            "regression:route_changed"
        );
    }

    #[test]
    fn requests_of_a_deleted_route_are_held_not_rejected() {
        // Deleting a route re-routes its requests by intent: the default
        // max_route_changed (25 %) does not reject that, the blast-radius
        // guard holds it for a person (30 % > max_rerouted).
        let p = GatePolicy::default();
        let l = SandboxLimits::default();
        let v = judge(&with_blast_kept(blast(|_| {}), 300, false), &p, &l);
        assert!(v.is_held(), "{}: {}", v.code(), v.sentence);
        // The same share moved between routes both configs have is judged.
        let v = judge(&with_blast_kept(blast(|_| {}), 300, true), &p, &l);
        assert_eq!(v.code(), "regression:route_changed");
    }

    #[test]
    fn no_baseline_nothing_held() {
        let p = GatePolicy::default();
        let l = SandboxLimits::default();
        // No blast radius and no baseline tally: even a (nonsensical)
        // route-changed count holds nothing.
        let SandboxOutcome::Report(mut r) = with_blast(None, 500) else {
            unreachable!()
        };
        if let Some(replay) = r.replay.as_mut() {
            replay.baseline = None;
        }
        let v = judge(&SandboxOutcome::Report(r), &p, &l);
        assert!(v.accepted, "{v:?}");
        assert!(!v.is_held());
    }

    #[test]
    fn is_held_only_for_held_codes() {
        assert!(!Verdict::accept("ok".into()).is_held());
        assert!(!Verdict::reject("invalid", "x".into()).is_held());
        assert!(Verdict::hold(HELD_BLAST_RADIUS, "x".into()).is_held());
        // An older verdict.json without the field parses the same.
        let v: Verdict = serde_json::from_str(
            r#"{"accepted":false,"reason":"held:blast_radius","sentence":"held: …"}"#,
        )
        .unwrap();
        assert!(v.is_held());
    }

    #[test]
    fn failures_map_to_codes() {
        let l = SandboxLimits::default();
        let p = GatePolicy::default();
        for (f, code) in [
            (RunnerFailure::Oom { detail: "x".into() }, "oom"),
            (RunnerFailure::Timeout { detail: "x".into() }, "timeout"),
            (RunnerFailure::Crashed { detail: "x".into() }, "crashed"),
        ] {
            let o = SandboxOutcome::Failed {
                failure: f,
                stage: Some("compile candidate".into()),
                stderr_tail: String::new(),
                peak_rss_bytes: None,
            };
            let v = judge(&o, &p, &l);
            assert!(!v.accepted);
            assert_eq!(v.code(), code);
        }
    }
}
