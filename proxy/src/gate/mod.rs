//! The config gate: no config reaches live traffic until it has run, in a
//! separate and limited process, against a sample of real traffic, and
//! behaved.
//!
//! ```text
//! watch (watch.rs) ─► snapshot (store.rs) ─► judged before? reuse the verdict
//!                                     └─► aegis-sandbox (sandbox.rs; the runner
//!                                         compiles = static stage, then replays
//!                                         the sample through the real Pipeline,
//!                                         replay.rs) ─► verdict (verdict.rs)
//!                                         ─► promote: active pointer + swap into
//!                                            every serving process (`Promote`)
//! ```
//!
//! The gate process never parses or compiles a candidate before its verdict
//! (a config that compiles to 650 MB must die in the runner, not here); it
//! reads bytes and hashes them. After an accept it compiles the snapshot the
//! runner already compiled within the limits, and hands it to [`Promote`].
//! `docs/GATE.md` is the user's guide; `docs/LIFECYCLE.md` follows a config
//! from the file write to the serving process, pointing at this code.

pub mod flaps;
pub mod fleet;
mod promote;
pub mod replay;
pub mod report;
pub mod sandbox;
mod startup;
mod status;
pub mod store;
pub mod upstream_check;
pub mod verdict;
pub mod watch;

use status::{Active, StatusInner};
pub use status::{GateStatus, register_admin};

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aegis_engine::CompiledConfig;
use aegis_engine::config::settings::{GatePolicy, SandboxLimits};
use aegis_engine::config::{ConfigSource, Limits, Settings, SourceFile};
use tokio_util::sync::CancellationToken;

use self::flaps::FlapGuard;
use self::sandbox::{Sandbox, SandboxRequest, SandboxRun};
use self::store::{Record, Snapshot, Store};
use self::verdict::{SandboxOutcome, Verdict};
use crate::pipeline::ConfigHandle;
use crate::rollout::{CANARY_SLOT, Policy, Rollout, Start, Step};

pub use crate::rollout::Fleet;

pub use self::sandbox::SandboxError;
pub use self::store::{DEFAULT_STATE_DIR, StoreError};

/// The seed traffic sample's file name in the config directory.
pub const SEED_SAMPLE: &str = "sample.jsonl";
/// Time for one TCP probe of a new upstream endpoint.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How often the rollout compares live traffic (the workers' counters are
/// refreshed every `health.interval`).
pub const ROLLOUT_TICK: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("version {id} was accepted but does not load in the serving process: {why}")]
    Load { id: String, why: String },
    #[error("nothing to roll back to: {0}")]
    NoRollback(String),
    /// The machinery failed, not the content: nothing is remembered about
    /// the candidate and the gate tries again (`could_not_judge:<code>`).
    #[error("could not judge the config directory ({code}): {detail}")]
    CouldNotJudge { code: &'static str, detail: String },
}

impl GateError {
    fn could_not(code: &'static str, e: impl std::fmt::Display) -> Self {
        GateError::CouldNotJudge {
            code,
            detail: e.to_string(),
        }
    }
}

/// True for a verdict that holds an otherwise acceptable candidate until a
/// person confirms it (`held:blast_radius`).
fn is_held(v: &Verdict) -> bool {
    v.reason.as_deref().is_some_and(|r| r.starts_with("held:"))
}

/// The first retry after a could-not-judge, doubled each time up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// The last failure to judge, until a judgement succeeds.
#[derive(Debug, Clone, serde::Serialize)]
struct CouldNotJudge {
    /// `could_not_judge:<code>`.
    reason: String,
    detail: String,
    /// The candidate, when its content could be read.
    candidate: Option<String>,
    since_ms: u64,
    attempts: u32,
    #[serde(skip)]
    retry_at: Instant,
}

/// Why `aegis run` does not start serving.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(
        "the config in {dir} was rejected by the gate ({code}): {sentence}\nnothing is served: fix the config and start again (state in {state})"
    )]
    Rejected {
        dir: String,
        code: String,
        sentence: String,
        state: String,
    },
    #[error(transparent)]
    Gate(#[from] GateError),
}

/// Where the gate works.
#[derive(Debug, Clone)]
pub struct GateOptions {
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
    pub sandbox: Sandbox,
    pub probe_timeout: Duration,
}

impl GateOptions {
    /// The state directory: `explicit`, else `state_dir` from the config
    /// directory's aegis.yaml, else [`DEFAULT_STATE_DIR`] in the working
    /// directory. Locates the runner ([`Sandbox::locate`]).
    pub fn new(config_dir: &Path, explicit: Option<&Path>) -> Result<Self, GateError> {
        let state_dir = match explicit {
            Some(p) => p.to_path_buf(),
            None => settings_of_dir(config_dir)
                .state_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
        };
        Ok(Self {
            config_dir: config_dir.to_path_buf(),
            state_dir,
            sandbox: Sandbox::locate()?,
            probe_timeout: PROBE_TIMEOUT,
        })
    }
}

/// Settings from a directory's aegis.yaml alone (small, no compilation);
/// defaults when missing or invalid (the static stage reports it).
pub fn settings_of_dir(dir: &Path) -> Settings {
    let path = dir.join(aegis_engine::config::source::SETTINGS_FILE);
    let text = match std::fs::metadata(&path) {
        Ok(m) if m.len() <= Limits::default().max_file_size.0 => {
            std::fs::read_to_string(&path).unwrap_or_default()
        }
        _ => String::new(),
    };
    settings_of_text(dir, &text)
}

fn settings_of_text(dir: &Path, text: &str) -> Settings {
    if text.is_empty() {
        return Settings::default();
    }
    let src = ConfigSource::from_files(
        dir,
        vec![SourceFile {
            name: aegis_engine::config::source::SETTINGS_FILE.to_string(),
            text: text.to_string(),
        }],
    );
    aegis_engine::config::parse_settings(&src).unwrap_or_default()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What happened to one look at the config directory.
#[derive(Debug, Clone)]
pub enum Considered {
    /// The directory holds the active version, or what the last look found.
    Unchanged,
    /// A candidate was judged (or its earlier verdict reused).
    Judged {
        record: Record,
        cached: bool,
        promoted: bool,
        /// Accepted, but not promoted: promotion is frozen.
        frozen: bool,
        /// Held by the blast-radius guard until confirmed.
        held: bool,
    },
}

/// How the serving process starts.
#[derive(Debug)]
pub struct Started {
    pub id: String,
    pub settings: Settings,
    pub compiled: Arc<CompiledConfig>,
    /// `restored` (the last promoted version) or `gated` (the config dir
    /// passed the gate just now).
    pub how: &'static str,
}

/// The gate of one config directory.
pub struct Gate {
    opts: GateOptions,
    store: Store,
    status: GateStatus,
    /// Serializes judgements (one sandbox at a time).
    busy: tokio::sync::Mutex<()>,
    wake: tokio::sync::Notify,
    /// The serving processes, once [`Gate::spawn`] is called.
    fleet: std::sync::OnceLock<Arc<dyn Fleet>>,
}

impl Gate {
    pub fn open(opts: GateOptions) -> Result<Arc<Self>, GateError> {
        // Described in `telemetry`; registered here, at 0, so the gate's
        // families are on `/metrics` before its first candidate.
        crate::telemetry::register_gate();
        let store = Store::open(&opts.state_dir)?;
        let status = GateStatus {
            inner: Arc::new(Mutex::new(StatusInner::default())),
            store: store.clone(),
            config_dir: opts.config_dir.clone(),
        };
        Ok(Arc::new(Self {
            opts,
            store,
            status,
            busy: tokio::sync::Mutex::new(()),
            wake: tokio::sync::Notify::new(),
            fleet: std::sync::OnceLock::new(),
        }))
    }

    pub fn status(&self) -> GateStatus {
        self.status.clone()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Makes the watch loop look at the directory now.
    pub fn trigger(&self) {
        self.wake.notify_one();
    }

    /// SIGHUP and `POST /admin/rejudge`: re-reads the directory and judges it
    /// again even if it looks unchanged, and retries a could-not-judge at
    /// once (content verdicts are kept: the same bytes get the same verdict).
    pub fn rejudge(&self, by: &str) {
        {
            let mut g = self.status.lock();
            g.last_look = None;
            if let Some(c) = g.could_not_judge.as_mut() {
                c.retry_at = Instant::now();
            }
        }
        tracing::info!(target: "aegis::gate", "{by}: re-reading and re-judging {}", self.opts.config_dir.display());
        crate::say!("aegis: {by}: re-judging {}", self.opts.config_dir.display());
        self.wake.notify_one();
    }

    fn active(&self) -> Option<Active> {
        self.status.lock().active.clone()
    }

    /// The traffic sample to replay: the serving process's, else the seed
    /// shipped in the config directory.
    pub fn sample_path(&self) -> Option<PathBuf> {
        let recorded = self.store.sample_path();
        if std::fs::metadata(&recorded).is_ok_and(|m| m.len() > 0) {
            return Some(recorded);
        }
        let seed = self.opts.config_dir.join(SEED_SAMPLE);
        seed.is_file().then_some(seed)
    }

    /// Snapshots the config directory (the debounce already happened): reads
    /// until two reads 50 ms apart agree, so a file still being written is
    /// not taken half-way (at most 20 tries; then the last read is judged).
    async fn snapshot(&self) -> Result<Snapshot, GateError> {
        let max = self
            .active()
            .map_or(Limits::default().max_file_size.0, |a| {
                a.settings.limits.max_file_size.0
            });
        let dir = &self.opts.config_dir;
        let read = |d: &Path| {
            Snapshot::read(d, max).map_err(|e| match e {
                // Refused, not failed: a file that resolves outside the
                // config directory is never read (its content never shows).
                StoreError::Outside { .. } => GateError::could_not("outside_config_dir", e),
                e => GateError::could_not("read", e),
            })
        };
        let mut last = read(dir)?;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let next = read(dir)?;
            if next == last {
                return Ok(next);
            }
            last = next;
        }
        Ok(last)
    }

    /// Judges a snapshot (reusing an earlier verdict for the same content).
    async fn judge(&self, snap: &Snapshot) -> Result<(Record, bool), GateError> {
        metrics::counter!("aegis_config_candidates_total").increment(1);
        {
            let mut g = self.status.lock();
            g.candidates = g.candidates.saturating_add(1);
            let seen_before = g.recent_candidates.iter().any(|c| *c == snap.id);
            let last = g.recent_candidates.back().cloned();
            if seen_before && last.as_deref() != Some(snap.id.as_str()) {
                g.flaps_seen = g.flaps_seen.saturating_add(1);
                tracing::warn!(
                    candidate = %snap.id,
                    "config is flapping: {} comes back after {}; the earlier verdict is reused",
                    snap.id,
                    last.unwrap_or_default()
                );
            }
            g.recent_candidates.push_back(snap.id.clone());
            if g.recent_candidates.len() > 16 {
                g.recent_candidates.pop_front();
            }
        }
        if let Some(rec) = self.store.record(&snap.id) {
            tracing::info!(
                target: "aegis::gate",
                "verdict {} {} (reused: judged before): {}",
                rec.id,
                rec.verdict.code(),
                rec.verdict.sentence
            );
            count_verdict(&rec);
            return Ok((rec, true));
        }
        let files = self
            .store
            .save_snapshot(snap)
            .map_err(|e| GateError::could_not("state_dir", e))?;
        self.status.lock().judging = Some(snap.id.clone());
        let active = self.active();
        let (policy, limits, probe) = match &active {
            Some(a) => (
                a.settings.gate.policy.clone(),
                a.settings.gate.sandbox.clone(),
                a.settings.gate.probe_endpoints,
            ),
            None => {
                let s = settings_of_text(&files, &snap.settings_text().unwrap_or_default());
                (s.gate.policy, s.gate.sandbox, s.gate.probe_endpoints)
            }
        };
        let baseline = active.as_ref().map(|a| self.store.files_dir(&a.id));
        let start = Instant::now();
        let run = self
            .opts
            .sandbox
            .run(&SandboxRequest {
                candidate: files,
                baseline,
                sample: self.sample_path(),
                limits: limits.clone(),
                probe_timeout: self.opts.probe_timeout,
                no_probe: !probe,
            })
            .await;
        self.status.lock().judging = None;
        let run = run.map_err(|e| GateError::could_not("sandbox", e))?;
        if let Some((code, detail)) = sandbox::not_about_content(&run) {
            // Not a verdict on the content: keep the stderr for a person,
            // remember nothing, try again.
            let _ = self
                .store
                .save_artifact(&snap.id, "stderr.txt", run.stderr.as_bytes());
            return Err(GateError::CouldNotJudge { code, detail });
        }
        let verdict = verdict::judge(&run.outcome, &policy, &limits);
        let rec = self.record(snap, &run, verdict, start.elapsed())?;
        metrics::histogram!("aegis_gate_duration_seconds").record(rec.duration_s);
        count_verdict(&rec);
        Ok((rec, false))
    }

    /// Keeps a content verdict. A verdict that cannot be kept (a full or
    /// read-only state dir) is a could-not-judge: serving on it would leave
    /// nothing to restart or roll back from.
    fn record(
        &self,
        snap: &Snapshot,
        run: &SandboxRun,
        v: Verdict,
        took: Duration,
    ) -> Result<Record, GateError> {
        let (engine_version, replayed) = match &run.outcome {
            SandboxOutcome::Report(r) => (
                r.candidate_version.clone(),
                r.replay.as_ref().map(|x| x.requests),
            ),
            SandboxOutcome::Failed { .. } => (None, None),
        };
        let rec = Record {
            id: snap.id.clone(),
            engine_version,
            verdict: v,
            at_ms: now_ms(),
            duration_s: took.as_secs_f64(),
            source: self.opts.config_dir.display().to_string(),
            replayed,
        };
        let artifact = match &run.outcome {
            SandboxOutcome::Report(r) => (
                "report.json",
                serde_json::to_vec_pretty(r).unwrap_or_default(),
            ),
            SandboxOutcome::Failed { .. } => ("stderr.txt", run.stderr.clone().into_bytes()),
        };
        if let Err(e) = self.store.save_artifact(&rec.id, artifact.0, &artifact.1) {
            tracing::warn!(error = %e, "cannot keep the sandbox report");
        }
        self.store
            .save_record(&rec)
            .map_err(|e| GateError::could_not("state_dir", e))?;
        tracing::info!(
            target: "aegis::gate",
            "verdict {} {} ({:.2}s): {}",
            rec.id,
            rec.verdict.code(),
            rec.duration_s,
            rec.verdict.sentence
        );
        Ok(rec)
    }

    /// Compares live traffic for the rollout in progress and acts on it:
    /// canary passed → every worker; bake passed → stable; a regression →
    /// rollback.
    pub async fn rollout_tick(&self) {
        let Some(fleet) = self.fleet.get().cloned() else {
            return;
        };
        let traffic = fleet.traffic();
        let now = Instant::now();
        let (step, policy) = {
            let mut g = self.status.lock();
            let policy = g
                .policy
                .clone()
                .or_else(|| g.active.as_ref().map(|a| Policy::of(&a.settings)));
            let Some(policy) = policy else {
                return;
            };
            let keep = policy
                .bake
                .max(policy.canary)
                .saturating_add(Duration::from_secs(10));
            g.rollout.record(now, traffic.clone(), keep);
            (g.rollout.observe(now, &traffic, &policy), policy)
        };
        match step {
            Step::Wait => {}
            Step::Baked { version, detail } => {
                let baked = {
                    let mut g = self.status.lock();
                    let current = g.rollout.current() == Some(&version);
                    if current {
                        g.rollout.baked(&version, detail, now_ms());
                    }
                    current
                };
                if baked {
                    self.mark_stable(&version);
                }
            }
            Step::PromoteAll { version, detail } => {
                let _busy = self.busy.lock().await;
                let Some(active) = self.active().filter(|a| a.id == version) else {
                    return;
                };
                if self.status.lock().rollout.current() != Some(&version) {
                    return;
                }
                self.status
                    .lock()
                    .rollout
                    .log("canary_passed", &version, detail, now_ms());
                let dir = self.store.files_dir(&version);
                if !fleet
                    .load(None, &dir, &version, active.compiled.clone())
                    .await
                {
                    let why = "not every worker loaded and served it after the canary";
                    if let Err(e) = self.roll_back_locked("load_failed", why).await {
                        tracing::error!(error = %e, "rollback failed");
                    }
                    return;
                }
                let traffic = fleet.traffic();
                self.status.lock().rollout.all_started(
                    &version,
                    Instant::now(),
                    now_ms(),
                    traffic,
                    &policy,
                );
                self.mark_if_settled(&version);
            }
            Step::RollBack { version, finding } => {
                let _busy = self.busy.lock().await;
                if self.status.lock().rollout.current() != Some(&version) {
                    return;
                }
                match self.roll_back_locked(finding.code, &finding.why).await {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        // Nothing to go back to: stop watching this rollout.
                        self.status.lock().rollout.settled(&version);
                    }
                    Err(e) => tracing::error!(error = %e, "rollback failed"),
                }
            }
        }
        self.publish_state();
    }

    /// A version every worker serves with no bake to wait for (no bake
    /// window, or nothing served before it) is stable at once.
    fn mark_if_settled(&self, id: &str) {
        let settled = {
            let g = self.status.lock();
            g.rollout.current().is_none() && g.rollout.stable() == Some(id)
        };
        if settled {
            self.mark_stable(id);
        }
    }

    fn publish_state(&self) {
        let code = self.status.lock().canary_state();
        metrics::gauge!("aegis_config_canary_state").set(f64::from(code));
    }

    fn frozen_now(&self, version: &str, f: flaps::Frozen) {
        metrics::counter!("aegis_config_freezes_total").increment(1);
        self.status
            .lock()
            .rollout
            .log("frozen", version, f.why.clone(), f.since_ms);
        crate::say!("aegis: promotion frozen");
    }

    /// Records a look at the directory in the flap guard.
    fn saw(&self, id: &str, accepted: bool) {
        let freeze = {
            let mut g = self.status.lock();
            let (limit, window) = g.active.as_ref().map_or((0, Duration::ZERO), |a| {
                (
                    a.settings.gate.freeze_after_flips,
                    a.settings.gate.flap_window.0,
                )
            });
            g.flaps
                .saw(id, accepted, Instant::now(), limit, window, now_ms())
        };
        if let Some(f) = freeze {
            self.frozen_now(id, f);
            self.publish_state();
        }
    }

    /// `POST /admin/confirm`: a person looked. A frozen promotion resumes,
    /// and a candidate held by the blast-radius guard is accepted (its
    /// verdict becomes an accept that says who confirmed it); then the
    /// directory is looked at again. `None` when nothing waited.
    pub fn confirm(&self) -> Option<Confirmed> {
        let (frozen, held) = {
            let mut g = self.status.lock();
            (g.flaps.confirm(), g.held.take())
        };
        if let Some(rec) = &held {
            let accepted = Record {
                verdict: Verdict {
                    accepted: true,
                    reason: None,
                    sentence: format!(
                        "confirmed by the admin API after a hold: {}",
                        rec.verdict.sentence
                    ),
                    also: Vec::new(),
                },
                at_ms: now_ms(),
                source: "admin".to_string(),
                ..rec.clone()
            };
            if let Err(e) = self.store.save_record(&accepted) {
                tracing::error!(error = %e, "cannot keep the confirmation of {}", rec.id);
                self.status.lock().held = held.clone();
                return None;
            }
        }
        if frozen.is_none() && held.is_none() {
            return None;
        }
        {
            let mut g = self.status.lock();
            // The accepted candidate waiting in the directory is news again.
            g.last_look = None;
            let active = g.active.as_ref().map(|a| a.id.clone()).unwrap_or_default();
            let what = match &held {
                Some(r) => format!("{} confirmed by the admin API", r.id),
                None => "promotion resumed by the admin API".to_string(),
            };
            g.rollout.log("confirmed", &active, what, now_ms());
        }
        self.publish_state();
        self.trigger();
        Some(Confirmed {
            was_frozen: frozen,
            held: held.map(|r| r.id),
        })
    }

    fn count_rejection(&self, rec: &Record) {
        let code = rec.verdict.code().to_string();
        metrics::counter!("aegis_config_rejections_total", "reason" => code.clone()).increment(1);
        let mut g = self.status.lock();
        let n = g.rejections.entry(code).or_default();
        *n = n.saturating_add(1);
    }

    /// Sets (or clears) the candidate waiting for the fleet, and its gauge.
    fn set_fleet_hold(&self, hold: Option<fleet::FleetHold>) {
        let on = hold.is_some();
        let before = std::mem::replace(&mut self.status.lock().fleet_hold, hold);
        if before.is_some() || on {
            metrics::gauge!("aegis_config_fleet_held").set(if on { 1.0 } else { 0.0 });
        }
    }

    /// Makes a fleet hold visible: a history line (`/admin/verdicts`), the
    /// verdict and held counters, the log.
    fn announce_fleet_hold(&self, h: &fleet::FleetHold) {
        let sentence = if h.reason == fleet::HELD_HALT {
            format!(
                "accepted, not promoted: {} is in the config directory (fleet-wide halt)",
                fleet::HALT_FILE
            )
        } else {
            format!(
                "accepted, promoted after this node's hold-off of {:.1}s",
                h.delay.as_secs_f64()
            )
        };
        let line = Record {
            verdict: Verdict {
                accepted: false,
                reason: Some(h.reason.to_string()),
                sentence: sentence.clone(),
                also: Vec::new(),
            },
            at_ms: now_ms(),
            ..h.record.clone()
        };
        if let Err(e) = self.store.append_history(&line) {
            tracing::warn!(error = %e, "cannot add the hold to the history");
        }
        count_verdict(&line);
        metrics::counter!("aegis_config_held_total", "reason" => h.reason).increment(1);
        tracing::warn!(target: "aegis::gate", "{} {}: {sentence}", h.record.id, h.reason);
        crate::say!("aegis: {} {}: {sentence}", h.record.id, h.reason);
    }

    /// The promotion path of an accepted candidate on a fleet node: promote
    /// it now, or hold it for the halt file or this node's hold-off
    /// (`fleet`). True when it was promoted.
    async fn fleet_step(&self, record: &Record, reverted: bool) -> Result<bool, GateError> {
        let halted = fleet::halted(&self.opts.config_dir);
        let (_, delay) = self
            .active()
            .map_or((None, Duration::ZERO), |a| fleet::holdoff_of(&a.settings));
        let now = Instant::now();
        let hold_at = |reason| fleet::FleetHold {
            record: record.clone(),
            reverted,
            reason,
            since_ms: now_ms(),
            release_at: now + delay,
            release_ms: now_ms().saturating_add(u64::try_from(delay.as_millis()).unwrap_or(0)),
            delay,
        };
        let existing = self
            .status
            .lock()
            .fleet_hold
            .clone()
            .filter(|h| h.record.id == record.id);
        let reason = if halted {
            fleet::HELD_HALT
        } else {
            fleet::HELD_HOLDOFF
        };
        // Going back to the last known good version (a revert) is never
        // held: holding it would keep the bad version serving.
        let to_stable = self.store.stable_chain().last() == Some(&record.id);
        let next = match existing {
            None if to_stable || (!halted && delay.is_zero()) => None,
            None => Some(hold_at(reason)),
            Some(h) if halted && h.reason == fleet::HELD_HALT => return Ok(false),
            Some(h) if halted => Some(fleet::FleetHold { reason, ..h }),
            // The halt file went: this node's hold-off counts from now, so
            // a released fleet does not promote together.
            Some(h) if h.reason == fleet::HELD_HALT && !delay.is_zero() => Some(hold_at(reason)),
            Some(h) if h.reason == fleet::HELD_HOLDOFF && now < h.release_at => return Ok(false),
            Some(_) => None,
        };
        if let Some(h) = next {
            self.announce_fleet_hold(&h);
            self.set_fleet_hold(Some(h));
            return Ok(false);
        }
        self.set_fleet_hold(None);
        self.promote_candidate(&record.id, reverted).await?;
        Ok(true)
    }

    /// The directory still holds what the last look found: a candidate
    /// waiting for the fleet may be due now.
    async fn release_fleet_hold(&self, id: &str) -> Result<Considered, GateError> {
        let Some(h) = self
            .status
            .lock()
            .fleet_hold
            .clone()
            .filter(|h| h.record.id == id)
        else {
            return Ok(Considered::Unchanged);
        };
        if self.status.frozen() {
            return Ok(Considered::Unchanged);
        }
        let promoted = self.fleet_step(&h.record, h.reverted).await?;
        if !promoted {
            return Ok(Considered::Unchanged);
        }
        Ok(Considered::Judged {
            record: h.record,
            cached: true,
            promoted,
            frozen: false,
            held: false,
        })
    }

    /// Looks at the config directory; judges and promotes a new candidate.
    pub async fn consider(&self) -> Result<Considered, GateError> {
        let _busy = self.busy.lock().await;
        let snap = self.snapshot().await?;
        let last = self.status.lock().last_look.replace(snap.id.clone());
        if self.active().is_some_and(|a| a.id == snap.id) {
            self.status.lock().held = None;
            self.set_fleet_hold(None);
            self.saw(&snap.id, true);
            return Ok(Considered::Unchanged);
        }
        if last.as_deref() == Some(snap.id.as_str()) {
            return self.release_fleet_hold(&snap.id).await;
        }
        // A newer candidate replaces one waiting for the fleet.
        if self
            .status
            .lock()
            .fleet_hold
            .as_ref()
            .is_some_and(|h| h.record.id != snap.id)
        {
            self.set_fleet_hold(None);
        }
        let (record, cached) = self.judge(&snap).await?;
        let held = is_held(&record.verdict);
        self.saw(&record.id, record.verdict.accepted || held);
        let mut promoted = false;
        let mut frozen = false;
        self.status.lock().held = held.then(|| record.clone());
        if held {
            metrics::counter!("aegis_config_held_total", "reason" => record.verdict.code().to_string())
                .increment(1);
            tracing::error!(
                target: "aegis::gate",
                "{} held, not promoted: {} (confirm with POST /admin/confirm)",
                record.id,
                record.verdict.sentence
            );
        } else if record.verdict.accepted {
            if self.status.frozen() {
                frozen = true;
                tracing::error!(
                    target: "aegis::gate",
                    "{} was accepted but promotion is frozen (flapping): confirm with POST /admin/confirm",
                    record.id
                );
            } else {
                // A verdict reused for content seen before is a revert; one a
                // person just confirmed is not.
                let reverted = cached && record.source != "admin";
                promoted = self.fleet_step(&record, reverted).await?;
            }
        } else {
            self.count_rejection(&record);
        }
        Ok(Considered::Judged {
            record,
            cached,
            promoted,
            frozen,
            held,
        })
    }

    /// Watches the config directory until `shutdown`, judging every change
    /// and promoting what passes into `fleet`; runs the rollout of what it
    /// promotes; retries a could-not-judge with backoff.
    pub fn spawn(
        self: Arc<Self>,
        fleet: Arc<dyn Fleet>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let _ = self.fleet.set(fleet);
        {
            let gate = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(ROLLOUT_TICK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tick.tick() => gate.rollout_tick().await,
                    }
                }
            });
        }
        tokio::spawn(async move {
            let debounce = self
                .active()
                .map_or(Duration::from_millis(300), |a| a.settings.gate.debounce.0);
            let max = self
                .active()
                .map_or(Limits::default().max_file_size.0, |a| {
                    a.settings.limits.max_file_size.0
                });
            let mut watcher = watch::DirWatcher::new(&self.opts.config_dir, debounce, max);
            self.status.lock().watcher = match watcher.polling() {
                Some(why) => format!("polling ({why})"),
                None => format!("notify, debounce {debounce:?}"),
            };
            // A change made while the process started up.
            self.look().await;
            loop {
                let retry_at = self
                    .status
                    .lock()
                    .could_not_judge
                    .as_ref()
                    .map(|c| c.retry_at);
                let retry = async {
                    match retry_at {
                        Some(t) => {
                            tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await
                        }
                        None => std::future::pending().await,
                    }
                };
                // A candidate waiting for the fleet: looked at again when its
                // hold-off ends, and every HOLD_POLL for the halt file.
                let hold_at = self.status.lock().fleet_hold.as_ref().map(|h| {
                    h.release_at
                        .min(Instant::now() + fleet::HOLD_POLL)
                        .max(Instant::now())
                });
                let hold = async {
                    match hold_at {
                        Some(t) => {
                            tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await
                        }
                        None => std::future::pending().await,
                    }
                };
                let go = tokio::select! {
                    ok = watcher.changed(&shutdown) => ok,
                    _ = self.wake.notified() => true,
                    _ = retry => true,
                    _ = hold => true,
                };
                if !go {
                    return;
                }
                if let Some(why) = watcher.polling() {
                    self.status.lock().watcher = format!("polling ({why})");
                }
                self.look().await;
            }
        })
    }

    async fn look(&self) {
        match self.consider().await {
            Ok(_) => {
                let cleared = self.status.lock().could_not_judge.take();
                if let Some(c) = cleared {
                    tracing::info!(target: "aegis::gate", "judging works again after {} ({} attempts)", c.reason, c.attempts);
                }
            }
            Err(e) => self.could_not_judge(&e),
        }
    }

    /// Records a failure to judge: nothing about the content is kept; it is
    /// shown in `/admin/config` and `/admin/verdicts`, counted, and retried
    /// with backoff (at once on SIGHUP or `POST /admin/rejudge`).
    fn could_not_judge(&self, e: &GateError) {
        let code = match e {
            GateError::CouldNotJudge { code, .. } => *code,
            GateError::Store(_) => "state_dir",
            GateError::Sandbox(_) => "sandbox",
            GateError::Load { .. } => "load",
            GateError::NoRollback(_) => "rollback",
        };
        let reason = format!("could_not_judge:{code}");
        metrics::counter!("aegis_config_could_not_judge_total", "reason" => code).increment(1);
        let (attempts, delay, candidate, first) = {
            let mut g = self.status.lock();
            // The same content must be judged again, not skipped as seen.
            let candidate = g.last_look.take();
            let same = g
                .could_not_judge
                .as_ref()
                .is_some_and(|c| c.reason == reason);
            let attempts = if same {
                g.could_not_judge
                    .as_ref()
                    .map_or(1, |c| c.attempts.saturating_add(1))
            } else {
                1
            };
            let exp = attempts.saturating_sub(1).min(6);
            let delay = RETRY_FIRST.saturating_mul(1u32 << exp).min(RETRY_MAX);
            let since_ms = g
                .could_not_judge
                .as_ref()
                .filter(|_| same)
                .map_or_else(now_ms, |c| c.since_ms);
            g.could_not_judge = Some(CouldNotJudge {
                reason: reason.clone(),
                detail: e.to_string(),
                candidate: candidate.clone(),
                since_ms,
                attempts,
                retry_at: Instant::now() + delay,
            });
            (attempts, delay, candidate, !same)
        };
        tracing::error!(
            target: "aegis::gate",
            attempts,
            "{reason}: {e}; the active version keeps serving; retrying in {delay:?}"
        );
        if first {
            crate::say!("aegis: {reason}: {e}");
            // One history line per streak, so /admin/verdicts shows it.
            let rec = Record {
                id: candidate.unwrap_or_else(|| "-".to_string()),
                engine_version: None,
                verdict: Verdict {
                    accepted: false,
                    reason: Some(reason),
                    sentence: format!("{e}; nothing was decided about the content; retrying"),
                    also: Vec::new(),
                },
                at_ms: now_ms(),
                duration_s: 0.0,
                source: self.opts.config_dir.display().to_string(),
                replayed: None,
            };
            if let Err(e) = self.store.append_history(&rec) {
                tracing::warn!(error = %e, "cannot add the could-not-judge line to the history");
            }
        }
    }
}

/// `aegis_config_verdicts_total` for one verdict (made now or reused).
fn count_verdict(rec: &Record) {
    let version = rec.engine_version.as_deref().unwrap_or(&rec.id);
    crate::telemetry::verdict(version, rec.verdict.accepted, rec.verdict.code());
}

/// The line scripts and tests wait for (like the listener lines), printed
/// once the version serves, not when the pointer moved.
fn announce(compiled: &CompiledConfig) {
    crate::say!("aegis: config {}", compiled.version);
}

/// What `POST /admin/confirm` released.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Confirmed {
    pub was_frozen: Option<flaps::Frozen>,
    /// The held candidate now accepted.
    pub held: Option<String>,
}

/// Settings that differ between `boot` (what the processes started with)
/// and `new` but cannot be applied to running processes: they take effect
/// on restart, and `/admin/config` says so (`pending_restart`). Live on
/// promotion: routes, upstreams, TLS certificates, features, rate limits,
/// `limits.max_request_body`, `limits.max_header_bytes` (lowered),
/// `limits.client_body_timeout`, `features_module.on_error`, and every `gate.*` setting.
pub fn restart_only_changes(boot: &Settings, new: &Settings) -> Vec<String> {
    fn show<T: serde::Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap_or_default()
    }
    let mut out = Vec::new();
    let mut cmp = |name: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{name} {a} → {b}"));
        }
    };
    cmp("listen", show(&boot.listen), show(&new.listen));
    cmp("listen_tls", show(&boot.listen_tls), show(&new.listen_tls));
    cmp(
        "tls_unknown_sni",
        show(&boot.tls_unknown_sni),
        show(&new.tls_unknown_sni),
    );
    cmp("admin", show(&boot.admin), show(&new.admin));
    cmp(
        "admin_token_env",
        show(&boot.admin_token_env),
        show(&new.admin_token_env),
    );
    cmp(
        "admin_token_file",
        show(&boot.admin_token_file),
        show(&new.admin_token_file),
    );
    cmp("workers", show(&boot.workers), show(&new.workers));
    cmp("state_dir", show(&boot.state_dir), show(&new.state_dir));
    cmp("access_log", show(&boot.access_log), show(&new.access_log));
    cmp("health", show(&boot.health), show(&new.health));
    cmp("sample", show(&boot.sample), show(&new.sample));
    cmp(
        "drain_timeout",
        show(&boot.drain_timeout),
        show(&new.drain_timeout),
    );
    cmp(
        "features_module.enabled",
        show(&boot.features_module.enabled),
        show(&new.features_module.enabled),
    );
    // Connection-level limits: the listeners were built with them.
    for (name, a, b) in [
        (
            "limits.client_header_timeout",
            show(&boot.limits.client_header_timeout),
            show(&new.limits.client_header_timeout),
        ),
        (
            "limits.send_timeout",
            show(&boot.limits.send_timeout),
            show(&new.limits.send_timeout),
        ),
        (
            "limits.max_connections",
            show(&boot.limits.max_connections),
            show(&new.limits.max_connections),
        ),
    ] {
        cmp(name, a, b);
    }
    if new.limits.max_header_bytes.0 > boot.limits.max_header_bytes.0 {
        // The HTTP parser's buffer was sized at start.
        cmp(
            "limits.max_header_bytes (raised)",
            show(&boot.limits.max_header_bytes),
            show(&new.limits.max_header_bytes),
        );
    }
    out
}

/// `aegis check` with the replay: judges `candidate` against `baseline`
/// (when given) without a state directory. The policy and sandbox limits
/// are the baseline's (the candidate's when there is none).
pub async fn check_offline(
    sandbox: &Sandbox,
    candidate: &Path,
    baseline: Option<&Path>,
    sample: Option<&Path>,
    no_probe: bool,
) -> Result<(Verdict, SandboxRun, GatePolicy, SandboxLimits), GateError> {
    let settings = settings_of_dir(baseline.unwrap_or(candidate));
    let (policy, limits) = (settings.gate.policy, settings.gate.sandbox);
    let run = sandbox
        .run(&SandboxRequest {
            candidate: candidate.to_path_buf(),
            baseline: baseline.map(Path::to_path_buf),
            sample: sample.map(Path::to_path_buf),
            limits: limits.clone(),
            probe_timeout: PROBE_TIMEOUT,
            no_probe,
        })
        .await?;
    let v = verdict::judge(&run.outcome, &policy, &limits);
    Ok((v, run, policy, limits))
}

/// For `aegis run`, before the listeners open: opens the gate of
/// `config_dir` and gets the version to serve (the last promoted one, or the
/// config directory judged now). On its own single-threaded runtime, so it
/// can run before the serving runtime is sized from the settings it returns.
pub fn start_blocking(
    config_dir: &Path,
    state_dir: Option<&Path>,
) -> Result<(Arc<Gate>, Started), StartupError> {
    // The serving process's recorder first: the judgement just below (the
    // first promotion) is counted, not recorded into no recorder. A failure
    // is reported by the serving code, which asks again.
    let _ = crate::telemetry::process_recorder();
    let opts = GateOptions::new(config_dir, state_dir)?;
    let gate = Gate::open(opts)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| {
            GateError::Store(StoreError::State {
                path: PathBuf::from("(runtime)"),
                source,
            })
        })?;
    let started = rt.block_on(gate.startup())?;
    Ok((gate, started))
}
