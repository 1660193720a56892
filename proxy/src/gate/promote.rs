//! The gate's promote job: a verified snapshot becomes the active version
//! (`activate`, the one place that hands a version to the fleet), a
//! rollback goes to the last baked version of the stable chain, never to a
//! superseded or abandoned candidate (`rollback_target`).

use super::*;

impl Gate {
    /// When a candidate was last promoted while running (not a rollback).
    pub fn last_promotion(&self) -> Option<Instant> {
        self.status.lock().promoted_at
    }

    /// Takes back the active version after it misbehaved in production
    /// (`code`, e.g. `canary_5xx`, `crash_loop`, `manual`): its verdict
    /// becomes `rolled_back:<code>`, so the watcher will not promote it again
    /// while it sits in the config directory, and every worker goes back to
    /// the stable version (the one the rollout started from), else the last
    /// accepted one before it. `None` when there is nothing to go back to.
    pub async fn roll_back(&self, code: &str, why: &str) -> Result<Option<String>, GateError> {
        let _busy = self.busy.lock().await;
        self.roll_back_locked(code, why).await
    }

    /// The version a rollback of `active` returns to: the newest version of
    /// the stable chain (it finished its bake) other than `active` and not
    /// rolled back since. Never a candidate that was superseded, abandoned
    /// or never baked; `None` when there is none (the caller keeps `active`).
    pub(super) fn rollback_target(&self, active: &str) -> Option<String> {
        let still_accepted = |id: &str| self.store.record(id).is_some_and(|r| r.verdict.accepted);
        self.store
            .stable_chain()
            .into_iter()
            .rev()
            .find(|id| id != active && still_accepted(id))
    }

    /// Adds `id` to the persistent last-known-good chain.
    pub(super) fn mark_stable(&self, id: &str) {
        match self.store.mark_stable(id) {
            Ok(()) => tracing::info!(target: "aegis::gate", "{id} is stable (last known good)"),
            Err(e) => tracing::error!(error = %e, "cannot record {id} as stable"),
        }
    }

    pub(super) async fn roll_back_locked(
        &self,
        code: &str,
        why: &str,
    ) -> Result<Option<String>, GateError> {
        let Some(active) = self.active() else {
            return Ok(None);
        };
        let Some(previous) = self.rollback_target(&active.id) else {
            tracing::error!(
                active = %active.id,
                "{why}: no stable version other than this one to roll back to; it keeps serving"
            );
            self.status.lock().rollout.log(
                "rollback_impossible",
                &active.id,
                format!("{code}: {why}; no other stable version, keeping it"),
                now_ms(),
            );
            return Ok(None);
        };
        let reason = format!("rolled_back:{code}");
        let rec = Record {
            id: active.id.clone(),
            engine_version: Some(active.engine_version.clone()),
            verdict: Verdict {
                accepted: false,
                reason: Some(reason.clone()),
                sentence: format!("{why}; rolled back to {previous}"),
                also: Vec::new(),
            },
            at_ms: now_ms(),
            duration_s: 0.0,
            source: "production".to_string(),
            replayed: None,
        };
        self.store.save_record(&rec)?;
        metrics::counter!("aegis_config_rollbacks_total", "reason" => code.to_string())
            .increment(1);
        let (_, compiled) = self.activate(&previous, false)?;
        if let Some(fleet) = self.fleet.get() {
            let dir = self.store.files_dir(&previous);
            if !fleet.load(None, &dir, &previous, compiled.clone()).await {
                tracing::error!(version = %previous, "not every worker acknowledged the rollback");
            }
        }
        announce(&compiled);
        let freeze = {
            let mut g = self.status.lock();
            g.rollbacks = g.rollbacks.saturating_add(1);
            g.rollout.settled(&previous);
            g.rollout.log(
                "rolled_back",
                &active.id,
                format!("{code}: {why}; every worker is back on {previous}"),
                now_ms(),
            );
            let limits = g.active.as_ref().map(|a| {
                (
                    a.settings.gate.freeze_after_flips,
                    a.settings.gate.flap_window.0,
                )
            });
            limits.and_then(|(limit, window)| {
                g.flaps.rolled_back(Instant::now(), limit, window, now_ms())
            })
        };
        if let Some(f) = freeze {
            self.frozen_now(&active.id, f);
        }
        self.publish_state();
        // For scripts and tests, like the promotion line.
        crate::say!(
            "aegis: rolled back {} to {previous} ({code})",
            active.engine_version
        );
        Ok(Some(previous))
    }

    /// Compiles an accepted version in this process and makes it the active
    /// one (the pointer in the state directory, the status). The fleet is
    /// the caller's business. `reverted`: the config directory went back to
    /// a version accepted before (its verdict was reused), which counts as a
    /// rollback (`reason="reverted"`).
    pub(super) fn activate(
        &self,
        id: &str,
        reverted: bool,
    ) -> Result<(Settings, Arc<CompiledConfig>), GateError> {
        let dir = self.store.files_dir(id);
        let (settings, compiled) = store::load_verified(&dir, id).map_err(|e| GateError::Load {
            id: id.to_string(),
            why: e.to_string(),
        })?;
        let compiled = Arc::new(compiled);
        self.store.set_active(id)?;
        let mut g = self.status.lock();
        let previous = g.active.as_ref().map(|a| a.id.clone());
        g.pending_restart = match &g.boot_settings {
            Some(boot) => restart_only_changes(boot, &settings),
            None => Vec::new(),
        };
        if !g.pending_restart.is_empty() {
            tracing::warn!(
                target: "aegis::gate",
                "{id} accepted; takes effect on restart: {}",
                g.pending_restart.join(", ")
            );
        }
        if previous.is_some() && reverted {
            g.rollbacks = g.rollbacks.saturating_add(1);
            // The config directory went back to an earlier accepted version.
            metrics::counter!("aegis_config_rollbacks_total", "reason" => "reverted").increment(1);
        }
        g.promotions = g.promotions.saturating_add(1);
        metrics::counter!("aegis_config_promotions_total").increment(1);
        g.active = Some(Active {
            id: id.to_string(),
            engine_version: compiled.version.clone(),
            settings: settings.clone(),
            compiled: compiled.clone(),
            since_ms: now_ms(),
        });
        drop(g);
        tracing::info!(target: "aegis::gate", "promoted {id}: {}", compiled.summary());
        Ok((settings, compiled))
    }

    /// [`Gate::activate`] at start-up, before anything serves: announced at once.
    pub(super) fn activate_announced(
        &self,
        id: &str,
    ) -> Result<(Settings, Arc<CompiledConfig>), GateError> {
        let v = self.activate(id, false)?;
        announce(&v.1);
        Ok(v)
    }

    /// Promotes an accepted candidate to the fleet: to the canary worker
    /// first when the fleet and the rollout policy allow, else to every
    /// worker (then the bake watches).
    pub(super) async fn promote_candidate(
        &self,
        id: &str,
        reverted: bool,
    ) -> Result<(), GateError> {
        let policy = self.active().map(|a| Policy::of(&a.settings));
        let (settings, compiled) = self.activate(id, reverted)?;
        let policy = policy.unwrap_or_else(|| Policy::of(&settings));
        let Some(fleet) = self.fleet.get().cloned() else {
            self.status.lock().rollout.settled(id);
            announce(&compiled);
            return Ok(());
        };
        if self.store.stable_chain().last().map(String::as_str) == Some(id) {
            // The directory went back to the last known good version (an
            // abandoned candidate replaced by the original): no canary, no
            // bake; every worker returns to it.
            self.status.lock().rollout.log(
                "back_to_stable",
                id,
                "the config directory holds the stable version again; every worker returns to it"
                    .into(),
                now_ms(),
            );
            let dir = self.store.files_dir(id);
            if !fleet.load(None, &dir, id, compiled.clone()).await {
                tracing::error!(version = %id, "not every worker acknowledged the stable version");
            }
            announce(&compiled);
            self.status.lock().rollout.settled(id);
            self.publish_state();
            return Ok(());
        }
        let start = {
            let mut g = self.status.lock();
            g.promoted_at = Some(Instant::now());
            g.policy = Some(policy.clone());
            g.rollout.plan(id, fleet.size(), &policy, now_ms())
        };
        let dir = self.store.files_dir(id);
        let only = match start {
            Start::Canary => Some(CANARY_SLOT),
            Start::All => None,
        };
        let loaded = fleet.load(only, &dir, id, compiled.clone()).await;
        if loaded {
            announce(&compiled);
        }
        if !loaded {
            let why = match only {
                Some(slot) => format!("worker {slot} (the canary) did not load and serve it"),
                None => "not every worker loaded and served it".to_string(),
            };
            self.publish_state();
            self.roll_back_locked("load_failed", &why).await?;
            return Ok(());
        }
        let traffic = fleet.traffic();
        {
            let mut g = self.status.lock();
            match start {
                Start::Canary => {
                    g.rollout
                        .canary_started(id, Instant::now(), now_ms(), traffic, &policy)
                }
                Start::All => g
                    .rollout
                    .all_started(id, Instant::now(), now_ms(), traffic, &policy),
            }
        }
        self.mark_if_settled(id);
        self.publish_state();
        Ok(())
    }
}
