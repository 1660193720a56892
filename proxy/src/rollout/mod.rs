//! Progressive rollout: what happens to a version after the gate accepted
//! it. The sandbox replayed a sample; live traffic is bigger than any
//! sample, so a promoted version goes first to one canary worker, is compared
//! there with the control workers still on the version before, then goes to
//! every worker, and is watched for a bake window against the traffic before
//! the promotion. A regression at either step rolls it back.
//!
//! ```text
//!  accepted ─► canary (slot 0, gate.canary_seconds)   ── regression ─► rolled back
//!                 │ canary vs control: deaths, 5xx/4xx/3xx shares, per route, p99;
//!                 │ held up to 3 windows while a side has too few requests
//!                 ▼
//!              every worker, bake (gate.bake_seconds)  ── regression ─► rolled back
//!                 │ all workers vs the window before: 5xx share, p99, deaths
//!                 ▼
//!              steady: the version is the new stable one
//! ```
//!
//! This module is the state machine and the bookkeeping; the gate drives it
//! (`Gate::rollout_tick`) and moves versions through a [`Fleet`]: the
//! supervisor's workers, or the one serving process (no canary then: there
//! is no control group in one process, only the bake).

pub mod compare;
pub mod routes;

use std::collections::VecDeque;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_engine::CompiledConfig;
use aegis_engine::config::Settings;
use aegis_engine::config::settings::Regression;
use serde::Serialize;

use self::compare::{Finding, MAX_CANARY_WINDOWS, Window};
use self::routes::RouteCounts;
use crate::pipeline::ConfigHandle;
use crate::pipeline::traffic::{TrafficCounters, TrafficTotals};

/// The worker slot that takes a new version first.
pub const CANARY_SLOT: usize = 0;

/// One serving process's counters, as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotTraffic {
    pub slot: usize,
    pub pid: u32,
    /// Times the slot's process was replaced so far.
    pub restarts: u64,
    pub totals: TrafficTotals,
    /// Its per-route answers of the version it serves (a worker's; shared,
    /// since every reading until the next probe holds the same ones).
    pub routes: Option<Arc<RouteCounts>>,
}

/// Where promoted versions go.
pub trait Fleet: Send + Sync {
    /// Serving processes.
    fn size(&self) -> usize;
    /// Makes slot `only` (or every slot) serve `config`, the promoted
    /// snapshot `id` whose files are in `files_dir` (a worker verifies and
    /// compiles them itself). Resolves to true once every process concerned
    /// serves it.
    fn load(
        &self,
        only: Option<usize>,
        files_dir: &Path,
        id: &str,
        config: Arc<CompiledConfig>,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'static>>;
    /// Every serving process's counters, as last read.
    fn traffic(&self) -> Vec<SlotTraffic>;
}

/// Applies a promoted version's live process settings (its `aegis.yaml`).
pub type ApplySettings = Arc<dyn Fn(&Settings) + Send + Sync>;

/// `--workers 0`: this process serves, alone.
pub struct LocalFleet {
    pub config: ConfigHandle,
    pub traffic: Arc<TrafficCounters>,
    /// Where the version's live settings go (the pipeline's limits).
    pub apply_settings: Option<ApplySettings>,
}

impl Fleet for LocalFleet {
    fn size(&self) -> usize {
        1
    }
    fn load(
        &self,
        _only: Option<usize>,
        files_dir: &Path,
        _id: &str,
        config: Arc<CompiledConfig>,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'static>> {
        // The gate verified and compiled this snapshot just now; its
        // aegis.yaml is small and already validated.
        if let Some(apply) = &self.apply_settings {
            apply(&crate::gate::settings_of_dir(files_dir));
        }
        self.config.store(config);
        Box::pin(async { true })
    }
    fn traffic(&self) -> Vec<SlotTraffic> {
        vec![SlotTraffic {
            slot: 0,
            pid: std::process::id(),
            restarts: 0,
            totals: self.traffic.totals(),
            routes: None,
        }]
    }
}

/// The rollout's settings, from the active version's aegis.yaml.
#[derive(Debug, Clone)]
pub struct Policy {
    pub canary: Duration,
    pub bake: Duration,
    pub regression: Regression,
}

impl Policy {
    pub fn of(settings: &Settings) -> Policy {
        Policy {
            canary: Duration::from_secs(settings.gate.canary_seconds),
            bake: Duration::from_secs(settings.gate.bake_seconds),
            regression: settings.gate.regression.clone(),
        }
    }
}

#[derive(Debug, Clone)]
enum Phase {
    Steady,
    /// Accepted and active, its workers still loading it: the rollout has
    /// begun though no worker has said it serves the version yet. Without it
    /// `aegis status --wait` saw "active, steady" between the promotion and
    /// the canary's start and called a canary rollout finished.
    Loading {
        version: String,
        start: Start,
    },
    Canary {
        version: String,
        slot: usize,
        started: Instant,
        started_ms: u64,
        at_start: Vec<SlotTraffic>,
        /// The window before the promotion, for the bake that follows.
        before: Window,
        /// Canary windows so far (1, then one more each time a side had too
        /// few requests at the window's end, up to [`MAX_CANARY_WINDOWS`]).
        windows: u32,
    },
    Baking {
        version: String,
        started: Instant,
        started_ms: u64,
        at_start: Vec<SlotTraffic>,
        before: Window,
    },
}

/// One step of a rollout, for `/admin/config` (the log line says the same).
#[derive(Debug, Clone, Serialize)]
pub struct RolloutEvent {
    pub at_ms: u64,
    /// `canary_started`, `canary_extended`, `canary_passed`, `promoted_all`, `baked`,
    /// `rolled_back`, `rollback_impossible`, `back_to_stable`, `superseded`,
    /// `frozen`, `confirmed`.
    pub event: &'static str,
    pub version: String,
    pub detail: String,
}

/// What the gate should do after an observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Wait,
    /// The canary passed: load the version into every worker.
    PromoteAll {
        version: String,
        detail: String,
    },
    /// The bake passed: the version is stable.
    Baked {
        version: String,
        detail: String,
    },
    /// A regression: roll the version back.
    RollBack {
        version: String,
        finding: Finding,
    },
}

/// How a promotion starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Load into [`CANARY_SLOT`] only.
    Canary,
    /// Load into every slot.
    All,
}

/// The rollout state of one proxy.
#[derive(Debug)]
pub struct Rollout {
    phase: Phase,
    /// The last version that finished its rollout (or was served at start):
    /// what the control group serves and what a rollback returns to.
    stable: Option<String>,
    /// Readings of the fleet, oldest first, for "the window before".
    history: VecDeque<(Instant, Vec<SlotTraffic>)>,
    events: VecDeque<RolloutEvent>,
}

const MAX_EVENTS: usize = 32;
const MAX_READINGS: usize = 4096;

impl Rollout {
    pub fn new(stable: Option<String>) -> Self {
        Self {
            phase: Phase::Steady,
            stable,
            history: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn stable(&self) -> Option<&str> {
        self.stable.as_deref()
    }

    /// The version being rolled out (on the canary or baking).
    pub fn current(&self) -> Option<&String> {
        match &self.phase {
            Phase::Steady => None,
            Phase::Loading { version, .. }
            | Phase::Canary { version, .. }
            | Phase::Baking { version, .. } => Some(version),
        }
    }

    /// `aegis_config_canary_state`: 0 steady, 1 canary, 2 baking; a version
    /// still loading counts as the phase it leads to.
    pub fn state_code(&self) -> u8 {
        match self.phase {
            Phase::Steady => 0,
            Phase::Loading {
                start: Start::Canary,
                ..
            } => 1,
            Phase::Loading {
                start: Start::All, ..
            } => 2,
            Phase::Canary { .. } => 1,
            Phase::Baking { .. } => 2,
        }
    }

    /// Keeps a reading of the fleet (for the window before a promotion).
    pub fn record(&mut self, now: Instant, traffic: Vec<SlotTraffic>, keep: Duration) {
        self.history.push_back((now, traffic));
        while self.history.len() > MAX_READINGS
            || self
                .history
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > keep)
        {
            self.history.pop_front();
        }
    }

    /// The fleet's traffic over the last `len` before `now`, from the kept
    /// readings (shorter when the process has not run that long).
    fn window_before(&self, now: Instant, len: Duration, current: &[SlotTraffic]) -> Window {
        let Some(first) = self
            .history
            .iter()
            .find(|(t, _)| now.duration_since(*t) <= len)
            .map(|(_, r)| r)
        else {
            return Window::default();
        };
        Window::between(first, current, |_| true)
    }

    pub fn log(&mut self, event: &'static str, version: &str, detail: String, at_ms: u64) {
        // Normal steps at INFO, so WARN and above stay what needs a look:
        // a version taken back, or promotion stopped until someone acts. An
        // event not listed here is new: WARN until it is placed.
        match event {
            "canary_started" | "canary_extended" | "canary_passed" | "promoted_all" | "baked"
            | "confirmed" | "back_to_stable" | "superseded" => {
                tracing::info!(target: "aegis::rollout", version, "{event}: {detail}")
            }
            "rolled_back" | "rollback_impossible" | "frozen" => {
                tracing::error!(target: "aegis::rollout", version, "{event}: {detail}")
            }
            _ => tracing::warn!(target: "aegis::rollout", version, "{event}: {detail}"),
        }
        self.events.push_back(RolloutEvent {
            at_ms,
            event,
            version: version.to_string(),
            detail,
        });
        while self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
    }

    /// A version was accepted: how to promote it. A canary needs more than
    /// one worker, a canary window, and a stable version for the control
    /// group to serve. A rollout in progress ends unfinished: a bake cut
    /// short or an unfinished canary is abandoned, and never becomes stable
    /// (only a version that finished its bake is a rollback target).
    pub fn plan(&mut self, version: &str, fleet_size: usize, policy: &Policy, at_ms: u64) -> Start {
        match std::mem::replace(&mut self.phase, Phase::Steady) {
            Phase::Steady => {}
            Phase::Loading { version: v, .. } => self.log(
                "superseded",
                &v,
                format!("load abandoned: {version} was accepted meanwhile"),
                at_ms,
            ),
            Phase::Canary { version: v, .. } => self.log(
                "superseded",
                &v,
                format!("canary abandoned: {version} was accepted meanwhile"),
                at_ms,
            ),
            Phase::Baking { version: v, .. } => {
                self.log(
                    "superseded",
                    &v,
                    format!(
                        "bake cut short, clean so far but not stable: {version} was accepted meanwhile"
                    ),
                    at_ms,
                );
            }
        }
        let start = if fleet_size > 1 && !policy.canary.is_zero() && self.stable.is_some() {
            Start::Canary
        } else {
            Start::All
        };
        self.phase = Phase::Loading {
            version: version.to_string(),
            start,
        };
        start
    }

    /// The canary slot serves `version` now.
    pub fn canary_started(
        &mut self,
        version: &str,
        now: Instant,
        at_ms: u64,
        traffic: Vec<SlotTraffic>,
        policy: &Policy,
    ) {
        let before = self.window_before(now, policy.bake.max(policy.canary), &traffic);
        self.log(
            "canary_started",
            version,
            format!(
                "worker {CANARY_SLOT} serves it for {}s next to the control workers on {}",
                policy.canary.as_secs(),
                self.stable.as_deref().unwrap_or("-")
            ),
            at_ms,
        );
        self.phase = Phase::Canary {
            version: version.to_string(),
            slot: CANARY_SLOT,
            started: now,
            started_ms: at_ms,
            at_start: traffic,
            before,
            windows: 1,
        };
    }

    /// Every worker serves `version` now: bake it, or, with no bake window
    /// (or nothing served before it), it is stable at once.
    pub fn all_started(
        &mut self,
        version: &str,
        now: Instant,
        at_ms: u64,
        traffic: Vec<SlotTraffic>,
        policy: &Policy,
    ) {
        let before = match std::mem::replace(&mut self.phase, Phase::Steady) {
            Phase::Canary { before, .. } => before,
            _ => self.window_before(now, policy.bake, &traffic),
        };
        if policy.bake.is_zero() || self.stable.is_none() {
            self.log(
                "promoted_all",
                version,
                "every worker serves it (no bake window)".into(),
                at_ms,
            );
            self.stable = Some(version.to_string());
            return;
        }
        self.log(
            "promoted_all",
            version,
            format!(
                "every worker serves it; baking for {}s against the window before ({})",
                policy.bake.as_secs(),
                before.describe()
            ),
            at_ms,
        );
        self.phase = Phase::Baking {
            version: version.to_string(),
            started: now,
            started_ms: at_ms,
            at_start: traffic,
            before,
        };
    }

    /// A rollback (or any promotion outside a rollout) made `to` the
    /// version every worker serves.
    pub fn settled(&mut self, to: &str) {
        self.phase = Phase::Steady;
        self.stable = Some(to.to_string());
    }

    /// Compares the latest reading; says what to do next.
    pub fn observe(&mut self, now: Instant, traffic: &[SlotTraffic], policy: &Policy) -> Step {
        match &mut self.phase {
            Phase::Steady | Phase::Loading { .. } => Step::Wait,
            Phase::Canary {
                version,
                slot,
                started,
                started_ms,
                at_start,
                windows,
                ..
            } => {
                let slot = *slot;
                let canary = Window::between(at_start, traffic, |s| s == slot);
                let control = Window::between(at_start, traffic, |s| s != slot);
                if let Some(finding) = compare::judge_canary(&canary, &control, &policy.regression)
                {
                    return Step::RollBack {
                        version: version.clone(),
                        finding,
                    };
                }
                let elapsed = now.duration_since(*started);
                if elapsed < policy.canary.saturating_mul(*windows) {
                    return Step::Wait;
                }
                let described = format!(
                    "canary {}; control {}",
                    canary.describe(),
                    control.describe()
                );
                let Some(short) = compare::too_few(&canary, &control, &policy.regression) else {
                    return Step::PromoteAll {
                        version: version.clone(),
                        detail: format!("no regression: {described}"),
                    };
                };
                if canary.traffic.requests == 0 && control.traffic.requests == 0 {
                    // An idle node: holding learns nothing, and it must
                    // still take changes. The bake watches what comes.
                    return Step::PromoteAll {
                        version: version.clone(),
                        detail: format!(
                            "inconclusive (no traffic at all in {}s), promoting: {described}",
                            elapsed.as_secs()
                        ),
                    };
                }
                if *windows < MAX_CANARY_WINDOWS {
                    // Hold: keep the canary running one more window rather
                    // than call a comparison of almost nothing "no
                    // regression".
                    *windows = windows.saturating_add(1);
                    let (version, n) = (version.clone(), *windows);
                    let at_ms = started_ms
                        .saturating_add(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
                    self.log(
                        "canary_extended",
                        &version,
                        format!(
                            "{short}: the canary runs window {n} of {MAX_CANARY_WINDOWS}; {described}"
                        ),
                        at_ms,
                    );
                    return Step::Wait;
                }
                if let Some(finding) =
                    compare::judge_inconclusive(&canary, &control, &policy.regression)
                {
                    return Step::RollBack {
                        version: version.clone(),
                        finding,
                    };
                }
                Step::PromoteAll {
                    version: version.clone(),
                    detail: format!(
                        "inconclusive after {MAX_CANARY_WINDOWS} windows ({short}), no 5xx beyond the allowed share on the canary, promoting; the bake watches it: {described}"
                    ),
                }
            }
            Phase::Baking {
                version,
                started,
                at_start,
                before,
                ..
            } => {
                let bake = Window::between(at_start, traffic, |_| true);
                if let Some(finding) = compare::judge_bake(&bake, before, &policy.regression) {
                    return Step::RollBack {
                        version: version.clone(),
                        finding,
                    };
                }
                if now.duration_since(*started) < policy.bake {
                    return Step::Wait;
                }
                Step::Baked {
                    version: version.clone(),
                    detail: format!(
                        "no regression: {} against {} before",
                        bake.describe(),
                        before.describe()
                    ),
                }
            }
        }
    }

    /// The bake passed.
    pub fn baked(&mut self, version: &str, detail: String, at_ms: u64) {
        self.log("baked", version, detail, at_ms);
        self.phase = Phase::Steady;
        self.stable = Some(version.to_string());
    }

    /// For `GET /admin/config`.
    pub fn json(&self, policy: Option<&Policy>) -> serde_json::Value {
        let left = |started: &Instant, len: Option<Duration>| {
            len.map(|l| {
                u64::try_from(l.saturating_sub(started.elapsed()).as_millis()).unwrap_or(u64::MAX)
            })
        };
        let (phase, version, since_ms, ends_in_ms, slot) = match &self.phase {
            Phase::Steady => ("steady", None, None, None, None),
            Phase::Loading { version, .. } => ("loading", Some(version.clone()), None, None, None),
            Phase::Canary {
                version,
                slot,
                started,
                started_ms,
                windows,
                ..
            } => (
                "canary",
                Some(version.clone()),
                Some(*started_ms),
                left(started, policy.map(|p| p.canary.saturating_mul(*windows))),
                Some(*slot),
            ),
            Phase::Baking {
                version,
                started,
                started_ms,
                ..
            } => (
                "baking",
                Some(version.clone()),
                Some(*started_ms),
                left(started, policy.map(|p| p.bake)),
                None,
            ),
        };
        serde_json::json!({
            "phase": phase,
            "version": version,
            "since_ms": since_ms,
            "ends_in_ms": ends_in_ms,
            "canary_slot": slot,
            "stable": self.stable,
            "events": self.events.iter().rev().collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(per_slot: &[(u64, u64)]) -> Vec<SlotTraffic> {
        per_slot
            .iter()
            .enumerate()
            .map(|(i, (ok, failed))| SlotTraffic {
                slot: i,
                pid: 100 + i as u32,
                restarts: 0,
                routes: None,
                totals: TrafficTotals {
                    requests: ok + failed,
                    errors_5xx: *failed,
                    latency: {
                        let mut l = [0; crate::pipeline::traffic::LATENCY_BUCKETS];
                        l[0] = ok + failed;
                        l
                    },
                    ..TrafficTotals::default()
                },
            })
            .collect()
    }

    fn policy() -> Policy {
        Policy {
            canary: Duration::from_secs(10),
            bake: Duration::from_secs(30),
            regression: Regression::default(),
        }
    }

    #[test]
    fn canary_then_bake_then_stable() {
        let p = policy();
        let t0 = Instant::now();
        let mut r = Rollout::new(Some("v0".into()));
        r.record(t0, reading(&[(0, 0), (0, 0)]), Duration::from_secs(60));
        assert_eq!(r.plan("v1", 2, &p, 0), Start::Canary);
        r.canary_started("v1", t0, 0, reading(&[(100, 0), (100, 0)]), &p);
        let mid = reading(&[(150, 0), (150, 0)]);
        assert_eq!(r.observe(t0 + Duration::from_secs(5), &mid, &p), Step::Wait);
        let Step::PromoteAll { version, .. } = r.observe(t0 + Duration::from_secs(10), &mid, &p)
        else {
            panic!("the canary passed")
        };
        assert_eq!(version, "v1");
        r.all_started("v1", t0 + Duration::from_secs(10), 0, mid.clone(), &p);
        assert_eq!(r.state_code(), 2);
        let later = reading(&[(300, 0), (300, 0)]);
        assert!(matches!(
            r.observe(t0 + Duration::from_secs(40), &later, &p),
            Step::Baked { .. }
        ));
        r.baked("v1", String::new(), 0);
        assert_eq!(r.stable(), Some("v1"));
        assert_eq!(r.state_code(), 0);
    }

    #[test]
    fn an_accepted_version_is_loading_until_its_workers_serve_it() {
        let p = policy();
        let mut r = Rollout::new(Some("v0".into()));
        assert_eq!(r.plan("v1", 2, &p, 0), Start::Canary);
        assert_eq!(r.json(Some(&p))["phase"], "loading");
        assert_eq!(r.current().map(String::as_str), Some("v1"));
        assert_eq!(r.state_code(), 1);
        assert_eq!(
            r.observe(Instant::now(), &reading(&[(0, 0), (0, 0)]), &p),
            Step::Wait
        );
        r.canary_started("v1", Instant::now(), 0, reading(&[(0, 0), (0, 0)]), &p);
        assert_eq!(r.json(Some(&p))["phase"], "canary");
    }

    #[test]
    fn a_failing_canary_is_rolled_back_before_its_window_ends() {
        let p = policy();
        let t0 = Instant::now();
        let mut r = Rollout::new(Some("v0".into()));
        r.plan("v1", 2, &p, 0);
        r.canary_started("v1", t0, 0, reading(&[(100, 0), (100, 0)]), &p);
        let step = r.observe(
            t0 + Duration::from_secs(1),
            &reading(&[(100, 25), (130, 0)]),
            &p,
        );
        let Step::RollBack { finding, .. } = step else {
            panic!("{step:?}")
        };
        assert_eq!(finding.code, "canary_5xx");
    }

    #[test]
    fn one_process_or_no_stable_version_skips_the_canary() {
        let p = policy();
        let mut r = Rollout::new(Some("v0".into()));
        assert_eq!(r.plan("v1", 1, &p, 0), Start::All);
        let mut r = Rollout::new(None);
        assert_eq!(r.plan("v1", 4, &p, 0), Start::All);
    }

    #[test]
    fn bake_regression_against_the_window_before() {
        let p = policy();
        let t0 = Instant::now();
        let mut r = Rollout::new(Some("v0".into()));
        r.record(t0, reading(&[(0, 0)]), Duration::from_secs(60));
        r.record(
            t0 + Duration::from_secs(20),
            reading(&[(400, 2)]),
            Duration::from_secs(60),
        );
        r.plan("v1", 1, &p, 0);
        r.all_started(
            "v1",
            t0 + Duration::from_secs(20),
            0,
            reading(&[(400, 2)]),
            &p,
        );
        let step = r.observe(t0 + Duration::from_secs(22), &reading(&[(410, 40)]), &p);
        let Step::RollBack { finding, .. } = step else {
            panic!("{step:?}")
        };
        assert_eq!(finding.code, "bake_5xx");
        assert!(finding.why.contains("0.5% of 402"), "{}", finding.why);
    }

    #[test]
    fn a_version_whose_bake_was_cut_short_never_becomes_stable() {
        let p = policy();
        let t0 = Instant::now();
        let mut r = Rollout::new(Some("v0".into()));
        r.plan("v1", 2, &p, 0);
        r.all_started("v1", t0, 0, reading(&[(0, 0), (0, 0)]), &p);
        assert_eq!(r.plan("v2", 2, &p, 0), Start::Canary);
        // v1 did not finish its bake: v0 stays the last known good.
        assert_eq!(r.stable(), Some("v0"));
    }

    #[test]
    fn a_canary_with_a_short_side_is_held_then_decided() {
        let p = policy();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // Control gets almost nothing: held for windows 2 and 3, then
        // promoted (clean canary), never "no regression".
        let mut r = Rollout::new(Some("v0".into()));
        r.plan("v1", 2, &p, 0);
        r.canary_started("v1", t0, 0, reading(&[(0, 0), (0, 0)]), &p);
        let short = reading(&[(200, 0), (3, 0)]);
        assert_eq!(r.observe(t0 + s(10), &short, &p), Step::Wait);
        assert_eq!(r.observe(t0 + s(15), &short, &p), Step::Wait);
        assert_eq!(r.observe(t0 + s(20), &short, &p), Step::Wait);
        let extended: Vec<_> = r
            .events
            .iter()
            .filter(|e| e.event == "canary_extended")
            .collect();
        assert_eq!(extended.len(), 2, "{:?}", r.events);
        assert!(
            extended[0].detail.contains("control 3 of 20"),
            "{:?}",
            extended[0]
        );
        let Step::PromoteAll { detail, .. } = r.observe(t0 + s(30), &short, &p) else {
            panic!("promoted at the third window's end")
        };
        assert!(
            detail.starts_with("inconclusive after 3 windows"),
            "{detail}"
        );
        // Enough on both sides by the second window: promoted then.
        let mut r = Rollout::new(Some("v0".into()));
        r.plan("v1", 2, &p, 0);
        r.canary_started("v1", t0, 0, reading(&[(0, 0), (0, 0)]), &p);
        assert_eq!(r.observe(t0 + s(10), &short, &p), Step::Wait);
        let Step::PromoteAll { detail, .. } =
            r.observe(t0 + s(20), &reading(&[(200, 0), (30, 0)]), &p)
        else {
            panic!("promoted at the second window's end")
        };
        assert!(detail.starts_with("no regression"), "{detail}");
        // Few requests and some of them failed: rolled back at the end.
        let mut r = Rollout::new(Some("v0".into()));
        r.plan("v1", 2, &p, 0);
        r.canary_started("v1", t0, 0, reading(&[(0, 0), (0, 0)]), &p);
        let failing = reading(&[(5, 3), (6, 0)]);
        for t in [10, 20] {
            assert_eq!(r.observe(t0 + s(t), &failing, &p), Step::Wait);
        }
        let Step::RollBack { finding, .. } = r.observe(t0 + s(30), &failing, &p) else {
            panic!("rolled back")
        };
        assert_eq!(finding.code, "canary_inconclusive");
        // An idle node is not held.
        let mut r = Rollout::new(Some("v0".into()));
        r.plan("v1", 2, &p, 0);
        r.canary_started("v1", t0, 0, reading(&[(0, 0), (0, 0)]), &p);
        assert!(matches!(
            r.observe(t0 + s(10), &reading(&[(0, 0), (0, 0)]), &p),
            Step::PromoteAll { .. }
        ));
    }
}
