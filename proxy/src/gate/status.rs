//! The gate's status job: what the gate is doing (`StatusInner`, one
//! owner: the gate writes it under its lock), rendered for
//! `GET /admin/config`, `GET /admin/verdicts` and `GET /ready`, and the
//! admin endpoints that act on the gate.

use super::*;

/// The promoted version in this process.
#[derive(Debug, Clone)]
pub(super) struct Active {
    pub(super) id: String,
    pub(super) engine_version: String,
    pub(super) settings: Settings,
    pub(super) compiled: Arc<CompiledConfig>,
    pub(super) since_ms: u64,
}

#[derive(Debug)]
pub(super) struct StatusInner {
    pub(super) active: Option<Active>,
    pub(super) watcher: String,
    pub(super) judging: Option<String>,
    pub(super) recent_candidates: VecDeque<String>,
    /// Candidates that came back after another one (reused verdicts).
    pub(super) flaps_seen: u64,
    pub(super) candidates: u64,
    pub(super) promotions: u64,
    pub(super) rollbacks: u64,
    pub(super) rejections: BTreeMap<String, u64>,
    pub(super) rollout: Rollout,
    /// The rollout's settings: those of the version active when the one
    /// being rolled out arrived (a candidate does not choose its own canary).
    pub(super) policy: Option<Policy>,
    pub(super) flaps: FlapGuard,
    /// When a candidate was last promoted (not a rollback).
    pub(super) promoted_at: Option<Instant>,
    /// The content the last look found: the same again is no news (a
    /// spurious wake-up must not judge and count it twice).
    pub(super) last_look: Option<String>,
    /// An accepted candidate held by the blast-radius guard until
    /// `POST /admin/confirm`.
    pub(super) held: Option<Record>,
    /// An accepted candidate waiting for this node's hold-off or for the
    /// halt file to go (`fleet`).
    pub(super) fleet_hold: Option<fleet::FleetHold>,
    pub(super) could_not_judge: Option<CouldNotJudge>,
    /// Settings of the active version that the running processes cannot
    /// take live ("workers 2 → 3"): they take effect on restart.
    pub(super) pending_restart: Vec<String>,
    /// The settings the processes started with (what "takes effect on
    /// restart" compares against).
    pub(super) boot_settings: Option<Settings>,
}

impl Default for StatusInner {
    fn default() -> Self {
        Self {
            active: None,
            watcher: "not started".to_string(),
            judging: None,
            recent_candidates: VecDeque::new(),
            flaps_seen: 0,
            candidates: 0,
            promotions: 0,
            rollbacks: 0,
            rejections: BTreeMap::new(),
            rollout: Rollout::new(None),
            policy: None,
            flaps: FlapGuard::default(),
            promoted_at: None,
            last_look: None,
            held: None,
            fleet_hold: None,
            could_not_judge: None,
            pending_restart: Vec::new(),
            boot_settings: None,
        }
    }
}

impl StatusInner {
    pub(super) fn canary_state(&self) -> u8 {
        if self.flaps.frozen().is_some() {
            3
        } else {
            self.rollout.state_code()
        }
    }
}

/// What the gate is doing, for `GET /admin/config` and `GET /admin/verdicts`.
#[derive(Clone)]
pub struct GateStatus {
    pub(super) inner: Arc<Mutex<StatusInner>>,
    pub(super) store: Store,
    pub(super) config_dir: PathBuf,
}

impl GateStatus {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, StatusInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `GET /admin/config`: the active version and the gate's state.
    pub fn config_json(&self) -> serde_json::Value {
        let chain = self.store.stable_chain();
        let g = self.lock();
        serde_json::json!({
            "active": g.active.as_ref().map(|a| serde_json::json!({
                "id": a.id,
                "engine_version": a.engine_version,
                "since_ms": a.since_ms,
                "files": self.store.files_dir(&a.id).display().to_string(),
                "stable": chain.last() == Some(&a.id),
            })),
            // The last-known-good chain, newest first: what a rollback returns to.
            "stable": chain.last(),
            "stable_chain": chain.iter().rev().collect::<Vec<_>>(),
            // The version on the canary or baking, not yet stable.
            "candidate": g.rollout.current(),
            "held": g.held.as_ref().map(|r| serde_json::json!({
                "id": r.id,
                "reason": r.verdict.reason,
                "sentence": r.verdict.sentence,
                "confirm": "POST /admin/confirm",
            })),
            "fleet_hold": g.fleet_hold.as_ref().map(fleet::FleetHold::json),
            "holdoff": fleet::holdoff_json(g.active.as_ref().map(|a| &a.settings), &self.config_dir),
            "could_not_judge": g.could_not_judge,
            "pending_restart": g.pending_restart,
            "config_dir": self.config_dir.display().to_string(),
            "state_dir": self.store.root().display().to_string(),
            "watcher": g.watcher,
            "judging": g.judging,
            "candidates": g.candidates,
            "promotions": g.promotions,
            "rollbacks": g.rollbacks,
            "rejections": g.rejections,
            "flaps": g.flaps_seen,
            "rollout": g.rollout.json(g.policy.as_ref()),
            "frozen": g.flaps.frozen(),
            "flips": g.flaps.flips(),
        })
    }

    /// `GET /admin/verdicts`: the last 50 verdicts, newest first.
    pub fn verdicts_json(&self) -> serde_json::Value {
        let mut h = self.store.history(50);
        h.reverse();
        serde_json::to_value(h).unwrap_or(serde_json::Value::Null)
    }

    /// The active snapshot id.
    pub fn active_id(&self) -> Option<String> {
        self.lock().active.as_ref().map(|a| a.id.clone())
    }

    /// The engine version of the active snapshot (what workers report).
    pub fn active_version(&self) -> Option<String> {
        self.lock()
            .active
            .as_ref()
            .map(|a| a.engine_version.clone())
    }

    /// Whether promotion is frozen by flapping.
    pub fn frozen(&self) -> bool {
        self.lock().flaps.frozen().is_some()
    }

    /// A read-only copy of what `GET /ready` decides on (`admin::ready`).
    pub fn ready_facts(&self) -> crate::admin::ready::Facts {
        let mut f = {
            let g = self.lock();
            crate::admin::ready::Facts {
                serving: g.active.as_ref().map(|a| a.id.clone()),
                candidate: g.rollout.current().cloned(),
                canary: g.rollout.state_code() == 1,
                on_disk: g.last_look.clone(),
                judging: g.judging.clone(),
                could_not_judge: g.could_not_judge.as_ref().map(|c| c.reason.clone()),
                frozen: g.flaps.frozen().is_some(),
                fleet_held: g.fleet_hold.as_ref().map(|h| h.reason.to_string()),
                require_accepted: g
                    .active
                    .as_ref()
                    .is_some_and(|a| a.settings.gate.require_accepted),
                ..Default::default()
            }
        };
        f.stable = self.store.stable_chain().last().cloned();
        if let Some(rec) = f.on_disk.as_deref().and_then(|id| self.store.record(id)) {
            f.on_disk_verdict = Some(rec.verdict.code().to_string());
            f.on_disk_accepted = rec.verdict.accepted;
        }
        f
    }
}

/// Registers on the admin listener: `GET /admin/config` (the engine's
/// summary of the served config, the gate's state, the rollout),
/// `GET /admin/verdicts`, `POST /admin/rollback` (back to the stable
/// version, by hand) and `POST /admin/confirm` (resume a frozen promotion).
pub fn register_admin(admin: &crate::admin::AdminState, gate: &Arc<Gate>, config: ConfigHandle) {
    let s = gate.status();
    admin.register(
        "/admin/config",
        Arc::new(move || {
            let c = config.load();
            let mut v = s.config_json();
            if let Some(o) = v.as_object_mut() {
                o.insert("version".into(), c.version.clone().into());
                o.insert("summary".into(), c.summary().into());
                o.insert("files".into(), serde_json::json!(c.files));
                o.insert(
                    "routes".into(),
                    serde_json::json!(c.routes.iter().map(|r| &*r.name).collect::<Vec<_>>()),
                );
                o.insert(
                    "upstreams".into(),
                    serde_json::json!(c.upstreams.iter().map(|u| &*u.name).collect::<Vec<_>>()),
                );
            }
            v
        }),
    );
    let status = gate.status();
    admin.register("/admin/verdicts", Arc::new(move || status.verdicts_json()));
    let status = gate.status();
    admin.set_ready(Arc::new(move || status.ready_facts()));
    let g = gate.clone();
    admin.register_post(
        "/admin/rollback",
        Arc::new(move |_body| {
            let g = g.clone();
            Box::pin(async move {
                let from = g.status().active_id().unwrap_or_default();
                tracing::warn!(version = %from, "rollback requested by the admin API");
                match g.roll_back("manual", "rolled back by the admin API").await {
                    Ok(Some(to)) => Ok(serde_json::json!({ "rolled_back": from, "to": to })),
                    Ok(None) => Err(GateError::NoRollback(format!(
                        "{from} is the only accepted version in the state directory"
                    ))
                    .to_string()),
                    Err(e) => Err(e.to_string()),
                }
            })
        }),
    );
    let g = gate.clone();
    admin.register_post(
        "/admin/confirm",
        Arc::new(move |_body| {
            let g = g.clone();
            Box::pin(async move {
                match g.confirm() {
                    Some(c) => Ok(serde_json::json!({
                        "confirmed": true,
                        "was_frozen": c.was_frozen,
                        "held": c.held,
                    })),
                    None => Ok(serde_json::json!({
                        "confirmed": false,
                        "why": "nothing waited: promotion was not frozen and no candidate was held",
                    })),
                }
            })
        }),
    );
    let g = gate.clone();
    admin.register_post(
        "/admin/rejudge",
        Arc::new(move |_body| {
            let g = g.clone();
            Box::pin(async move {
                g.rejudge("POST /admin/rejudge");
                Ok(serde_json::json!({ "rejudging": true }))
            })
        }),
    );
}
