//! `aegis run` with workers: the supervisor process binds the listeners,
//! starts the workers, serves the admin API (with the workers' metrics
//! merged and `/admin/workers`), and waits for signals: SIGTERM/SIGINT drain
//! and stop everything, SIGHUP re-reads the config directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aegis_engine::config::Settings;
use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::{Served, Supervisor, SupervisorConfig, SupervisorEvent, bind_groups};
use crate::admin::{self, AdminState};
use crate::gate::{Fleet, Gate};
use crate::pipeline::ConfigHandle;
use crate::rollout::SlotTraffic;

/// What the supervised process needs to start.
pub struct Supervised {
    /// The promoted snapshot the workers serve first (the active version).
    pub serve: Served,
    pub settings: Settings,
    pub compiled: Arc<aegis_engine::CompiledConfig>,
    pub workers: usize,
    /// Where the traffic sample goes (the gate's state directory).
    pub sample_out: Option<PathBuf>,
}

/// The running supervisor, for the gate to promote through.
pub struct Running {
    pub supervisor: Supervisor,
    pub config: ConfigHandle,
    /// Opened by [`run`] once the gate's endpoints are registered too.
    pub admin: Option<admin::BoundAdmin>,
    pub shutdown: CancellationToken,
    pub events: tokio::sync::mpsc::UnboundedReceiver<SupervisorEvent>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Binds, starts the workers and the admin listener.
pub async fn start(s: Supervised) -> anyhow::Result<Running> {
    // The supervisor's own families only: the data plane's are the workers'.
    let prometheus = match crate::telemetry::process_recorder() {
        Ok(h) => {
            crate::telemetry::register_supervisor();
            Some(h)
        }
        Err(e) => {
            tracing::warn!(error = %e, "metrics recorder not installed");
            None
        }
    };
    let exe = std::env::current_exe().context("locating the aegis binary")?;
    let sockets = bind_groups(&s.settings.listen, &s.settings.listen_tls, s.workers)?;
    if let Some(first) = sockets.first() {
        for l in &first.plain {
            crate::say!("aegis: listening http {}", l.local_addr()?);
        }
        for l in &first.tls {
            crate::say!("aegis: listening https {}", l.local_addr()?);
        }
    }
    let cfg = SupervisorConfig {
        exe,
        workers: s.workers,
        threads_per_worker: 1,
        health: s.settings.health.clone(),
        drain_timeout: s.settings.drain_timeout.0,
        sample_out: s.sample_out.clone(),
        features_enabled: s.settings.features_module.enabled,
    };
    let (supervisor, event_loop, events) = Supervisor::new(cfg, sockets, s.serve.clone());
    let shutdown = CancellationToken::new();
    let tasks = vec![tokio::spawn(event_loop.run(shutdown.clone()))];
    supervisor
        .start_all()
        .await
        .context("starting the workers")?;
    crate::say!("aegis: {} workers serving", s.workers);

    let config = ConfigHandle::from_arc(s.compiled);
    let mut admin_state = None;
    if s.settings.admin != "off" {
        let addr: std::net::SocketAddr = s
            .settings
            .admin
            .parse()
            .map_err(|_| admin::AdminError::BadAddress(s.settings.admin.clone()))?;
        let token = admin::resolve_token(
            &addr,
            &s.settings.admin_token_env,
            s.settings.admin_token_file.as_deref(),
        )?;
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding admin {addr}"))?;
        let state = AdminState::new(config.clone(), prometheus, token);
        let sup = supervisor.clone();
        state.register(
            "/admin/workers",
            Arc::new(move || serde_json::to_value(sup.status()).unwrap_or_default()),
        );
        let sup = supervisor.clone();
        state.add_metrics_source(Arc::new(move || {
            let sup = sup.clone();
            Box::pin(async move { sup.metrics_text().await })
        }));
        crate::kill_switch::register(&state, Arc::new(supervisor.clone()));
        admin_state = Some(admin::BoundAdmin::new(l, state));
    }
    Ok(Running {
        supervisor,
        config,
        admin: admin_state,
        shutdown,
        events,
        tasks,
    })
}

impl Running {
    /// Stops the workers (drain), then the supervisor's own tasks.
    pub async fn stop(self) {
        self.supervisor.stop_all().await;
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The workers, as the gate's rollout sees them (the supervisor keeps its
/// own copy of the version being rolled out for `/admin/config`).
struct WorkerFleet {
    supervisor: Supervisor,
    config: ConfigHandle,
}

impl Fleet for WorkerFleet {
    fn size(&self) -> usize {
        self.supervisor.size()
    }

    fn load(
        &self,
        only: Option<usize>,
        files_dir: &Path,
        id: &str,
        config: Arc<aegis_engine::CompiledConfig>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'static>> {
        let version = config.version.clone();
        self.config.store(config);
        let sup = self.supervisor.clone();
        let served = Served {
            dir: files_dir.to_path_buf(),
            id: id.to_string(),
            version: version.clone(),
        };
        Box::pin(async move {
            let ok = sup.load(only, served).await;
            match (ok, only) {
                (true, None) => tracing::info!(version, "every worker serves it"),
                (true, Some(slot)) => tracing::info!(version, slot, "the worker serves it"),
                (false, _) => {
                    tracing::error!(version, ?only, "not every worker acknowledged the version")
                }
            }
            ok
        })
    }

    fn traffic(&self) -> Vec<SlotTraffic> {
        self.supervisor.traffic()
    }
}

/// Supervised `aegis run`: the gate watches the config directory and
/// promotes through the supervisor to the workers (canary first).
pub async fn run(s: Supervised, gate: Arc<Gate>) -> anyhow::Result<()> {
    let mut signals = crate::cli::run::Signals::install()?;
    let mut running = start(s).await?;
    if let Some(admin) = running.admin.take() {
        crate::gate::register_admin(&admin.state, &gate, running.config.clone());
        running.tasks.push(admin.open(running.shutdown.clone())?);
    }
    let fleet = Arc::new(WorkerFleet {
        supervisor: running.supervisor.clone(),
        config: running.config.clone(),
    });
    let watcher = gate.clone().spawn(fleet, running.shutdown.clone());
    loop {
        tokio::select! {
            hangup = signals.next_is_hangup() => if hangup {
                gate.rejudge("SIGHUP");
            } else {
                break;
            },
            ev = running.events.recv() => if let Some(SupervisorEvent::CrashLoop { deaths, pause, since, versions }) = ev {
                tracing::error!(deaths, ?pause, ?versions, "crash loop: respawning paused");
                // Deaths that began after a promotion count against it, but
                // only when the dead workers were serving it: a loop of
                // workers on another version says nothing about this one.
                let after_promotion = gate.last_promotion().is_some_and(|p| p <= since);
                let on_active = gate
                    .status()
                    .active_version()
                    .is_some_and(|v| versions.contains(&v));
                if after_promotion && on_active {
                    let why = format!(
                        "{deaths} worker deaths within health.crash_window after the promotion"
                    );
                    match gate.roll_back("crash_loop", &why).await {
                        Ok(Some(v)) => tracing::error!("rolled back to {v}: {why}"),
                        Ok(None) => {}
                        Err(e) => tracing::error!(error = %e, "rollback failed"),
                    }
                }
            },
        }
    }
    tracing::info!("shutting down: draining the workers");
    running.stop().await;
    let _ = watcher.await;
    Ok(())
}

impl crate::kill_switch::FeatureSwitch for Supervisor {
    fn enabled(&self) -> bool {
        self.features_enabled()
    }
    fn set(
        &self,
        enabled: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let sup = self.clone();
        Box::pin(async move { sup.set_features(enabled).await })
    }
}
