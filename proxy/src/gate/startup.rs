//! The gate at process start: serve the active version from the state
//! directory if it verifies, repair it from an identical directory, or
//! judge the directory as any other candidate (`docs/LIFECYCLE.md`).

use super::*;

impl Gate {
    /// The version to serve at start. The active pointer's snapshot when it
    /// verifies; a snapshot found tampered with or missing is repaired from
    /// the config directory when that holds the identical content, else the
    /// newest stable version that verifies is served; with neither, the
    /// config directory must pass the gate now.
    pub async fn startup(&self) -> Result<Started, StartupError> {
        let started = self.startup_inner().await?;
        let mut g = self.status.lock();
        g.boot_settings = Some(started.settings.clone());
        Ok(started)
    }

    pub(super) async fn startup_inner(&self) -> Result<Started, StartupError> {
        if let Some(id) = self.store.active_pointer() {
            let restored = match self.activate_announced(&id) {
                Ok(v) => Some((id.clone(), v, "restored")),
                Err(e) => {
                    metrics::counter!("aegis_state_bad_snapshots_total").increment(1);
                    tracing::error!(error = %e, "the active version in the state directory cannot be served");
                    crate::say!("aegis: state: {e}");
                    self.recover(&id).await
                }
            };
            if let Some((id, (settings, compiled), how)) = restored {
                if self.store.stable_chain().is_empty() {
                    // A state directory from before the stable chain: what
                    // was served is the last known good.
                    self.mark_stable(&id);
                }
                self.status.lock().rollout = Rollout::new(Some(id.clone()));
                self.saw(&id, true);
                return Ok(Started {
                    id,
                    settings,
                    compiled,
                    how,
                });
            }
        }
        let _busy = self.busy.lock().await;
        let snap = self.snapshot().await?;
        let (record, _) = self.judge(&snap).await?;
        if !record.verdict.accepted {
            self.count_rejection(&record);
            return Err(StartupError::Rejected {
                dir: self.opts.config_dir.display().to_string(),
                code: record.verdict.code().to_string(),
                sentence: record.verdict.sentence.clone(),
                state: self.store.root().display().to_string(),
            });
        }
        let (settings, compiled) = self.activate_announced(&record.id)?;
        self.status.lock().rollout = Rollout::new(Some(record.id.clone()));
        self.mark_stable(&record.id);
        self.saw(&record.id, true);
        Ok(Started {
            id: record.id,
            settings,
            compiled,
            how: "gated",
        })
    }

    /// The active snapshot `bad` did not verify: repair it from an identical
    /// config directory, else fall back to the newest stable version that
    /// verifies. `None`: gate the config directory.
    pub(super) async fn recover(
        &self,
        bad: &str,
    ) -> Option<(String, (Settings, Arc<CompiledConfig>), &'static str)> {
        if let Ok(snap) = self.snapshot().await
            && snap.id == bad
        {
            match self.store.repair_snapshot(&snap) {
                Ok(_) => match self.activate_announced(bad) {
                    Ok(v) => {
                        crate::say!(
                            "aegis: state: {bad} repaired from the identical config directory"
                        );
                        return Some((bad.to_string(), v, "repaired"));
                    }
                    Err(e) => tracing::error!(error = %e, "the repaired snapshot does not load"),
                },
                Err(e) => tracing::error!(error = %e, "cannot repair {bad}"),
            }
        }
        for id in self.store.stable_chain().into_iter().rev() {
            if id == bad || !self.store.record(&id).is_some_and(|r| r.verdict.accepted) {
                continue;
            }
            match self.activate_announced(&id) {
                Ok(v) => {
                    crate::say!(
                        "aegis: state: serving the previous stable version {id} instead of {bad}"
                    );
                    return Some((id, v, "previous stable"));
                }
                Err(e) => {
                    tracing::error!(error = %e, "stable version {id} cannot be served either")
                }
            }
        }
        None
    }
}
