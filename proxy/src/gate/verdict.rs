//! The verdict: accept or reject a candidate, with one primary reason code
//! and a sentence a person can act on.
//!
//! Reason codes: `invalid` (static stage), `crashed`, `oom`, `timeout` (the
//! runner died, ran out of memory, CPU or time), and `regression:<kind>`
//! where kind is `newly_blocked`, `status`, `route_changed`, `latency` or
//! `memory` (gate.policy exceeded). When several policies are exceeded, the
//! first in that order is primary and the others are listed in `also`.

use aegis_engine::config::settings::{GatePolicy, SandboxLimits};
use serde::{Deserialize, Serialize};

use super::report::{ChangeCount, RunnerOutcome, SandboxReport};

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

    /// `accept` or the reason code.
    pub fn code(&self) -> &str {
        self.reason.as_deref().unwrap_or("accept")
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / f64::from(1u32 << 20))
}

fn pct(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
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
    if let Some(max) = policy.max_route_changed
        && ch.route_changed.share > max
    {
        found.push((
                "regression:route_changed".into(),
                format!(
                    "{} of {total} replayed requests ({}) would take a different route, limit {} (gate.policy.max_route_changed){}",
                    ch.route_changed.count,
                    pct(ch.route_changed.share),
                    pct(max),
                    example(&ch.route_changed)
                ),
            ));
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
    let mut it = found.into_iter();
    match it.next() {
        Some((code, sentence)) => {
            let mut v = Verdict::reject(&code, sentence);
            v.also = it.map(|(c, s)| format!("{c}: {s}")).collect();
            v
        }
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
    use crate::gate::report::{ChangeExample, Isolation, ReplayReport, Side};

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
