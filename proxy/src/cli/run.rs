//! `aegis run`: serve a config directory in this process (the supervisor
//! issue splits it into worker processes; the gate puts itself in front of
//! the config swaps). SIGHUP reloads the directory (a set that fails to load
//! leaves the active one in place); SIGTERM or SIGINT stop accepting and
//! drain requests in flight up to `drain_timeout`.
//!
//! Once bound, one line per listener goes to stderr, for scripts and tests:
//! `aegis: listening http 127.0.0.1:8080` (`https`, `admin` likewise).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use aegis_engine::CompiledConfig;
use aegis_engine::config::Settings;
use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::access_log::AccessLog;
use crate::admin::{self, AdminState};
use crate::pipeline::{ConfigHandle, Pipeline, PipelineSettings};
use crate::server::{self, ConnOptions, tls};
use crate::upstream::PooledConnector;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The config directory (watched).
    #[arg(long, default_value = "configs")]
    pub config_dir: PathBuf,
    /// Runtime threads (default: `workers` from aegis.yaml, `auto` = one per core).
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn main(args: RunArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aegis run: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    crate::telemetry::init_tracing();
    let (settings, compiled) = aegis_engine::load_dir(&args.config_dir)
        .with_context(|| format!("loading {}", args.config_dir.display()))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args
        .threads
        .unwrap_or_else(|| settings.workers.resolve(cores))
        .max(1);
    // One thread: a current-thread runtime, without the work-stealing
    // scheduler's cross-thread wake-ups (the shape of an nginx worker).
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .context("starting the runtime")?;
    rt.block_on(serve(&args.config_dir, settings, compiled))
}

/// Binds every listener of `settings`, serves until SIGTERM/SIGINT, drains.
pub async fn serve(
    config_dir: &Path,
    settings: Settings,
    compiled: CompiledConfig,
) -> anyhow::Result<()> {
    start(settings, compiled)
        .await?
        .run_until_signal(config_dir)
        .await
}

/// A serving process, between [`start`] and [`Serving::run_until_signal`]:
/// the seam where the gate plugs in (it promotes through `config`, registers
/// its admin endpoints on `admin`, and stops with `shutdown`).
pub struct Serving {
    pub config: ConfigHandle,
    pub connector: PooledConnector,
    pub pipeline: Pipeline<PooledConnector>,
    /// The admin API, when `admin` is not `off`.
    pub admin: Option<AdminState>,
    /// Cancelled on SIGTERM/SIGINT: listeners stop accepting and drain.
    pub shutdown: CancellationToken,
    pub drain_timeout: std::time::Duration,
    tasks: Vec<server::ListenerTask>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

/// Binds every listener of `settings` and starts serving `compiled`.
pub async fn start(settings: Settings, compiled: CompiledConfig) -> anyhow::Result<Serving> {
    let prometheus = match crate::telemetry::install_prometheus() {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "metrics recorder not installed");
            None
        }
    };
    if let Some(h) = prometheus.clone() {
        // Histograms keep raw samples until drained: drain them on a timer,
        // not only on scrape, so an unscraped worker does not grow.
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                h.run_upkeep();
            }
        });
    }
    let config = ConfigHandle::new(compiled);
    config.store(config.load());
    tracing::info!("{}", config.load().summary());
    let connector = PooledConnector::new();
    connector.pools(&config.load());
    let access_log = AccessLog::from_setting(&settings.access_log)?;
    let pipeline = Pipeline::builder(config.clone(), connector.clone())
        .settings(PipelineSettings::from_settings(&settings))
        .features_switch(Arc::new(AtomicBool::new(settings.features_module.enabled)))
        .access_log(access_log)
        .build();
    let shutdown = CancellationToken::new();
    let drain = settings.drain_timeout.0;
    let opts = ConnOptions {
        max_header_bytes: usize::try_from(settings.limits.max_header_bytes.0).unwrap_or(usize::MAX),
        ..ConnOptions::default()
    };

    let mut tasks = Vec::new();
    for addr in &settings.listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let t = server::serve_plain(l, pipeline.clone(), opts.clone(), shutdown.clone(), drain)?;
        eprintln!("aegis: listening http {}", t.local_addr);
        tasks.push(t);
    }
    if !settings.listen_tls.is_empty() {
        let resolver = Arc::new(tls::SniResolver::new(
            config.clone(),
            settings.tls_unknown_sni,
        ));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(resolver)));
        for addr in &settings.listen_tls {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            let t = server::serve_tls(
                l,
                acceptor.clone(),
                pipeline.clone(),
                opts.clone(),
                shutdown.clone(),
                drain,
            )?;
            eprintln!("aegis: listening https {}", t.local_addr);
            tasks.push(t);
        }
    }
    let mut background = Vec::new();
    let mut admin_state = None;
    if settings.admin != "off" {
        let addr: std::net::SocketAddr = settings
            .admin
            .parse()
            .map_err(|_| admin::AdminError::BadAddress(settings.admin.clone()))?;
        let token = admin::resolve_token(
            &addr,
            &settings.admin_token_env,
            settings.admin_token_file.as_deref(),
        )?;
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding admin {addr}"))?;
        eprintln!("aegis: listening admin {}", l.local_addr()?);
        let state = AdminState::new(config.clone(), prometheus, token);
        background.push(admin::serve(l, state.clone(), shutdown.clone()));
        admin_state = Some(state);
    }
    background.push(connector.spawn_health_checks(config.clone(), shutdown.clone()));
    Ok(Serving {
        config,
        connector,
        pipeline,
        admin: admin_state,
        shutdown,
        drain_timeout: drain,
        tasks,
        background,
    })
}

impl Serving {
    /// Serves until SIGTERM or SIGINT (SIGHUP reloads `config_dir`), then
    /// stops accepting and waits for requests in flight, up to the drain
    /// timeout.
    pub async fn run_until_signal(self, config_dir: &Path) -> anyhow::Result<()> {
        wait_for_signals(config_dir, &self.config).await?;
        self.drain().await;
        Ok(())
    }

    /// Stops accepting and waits for requests in flight (each listener gives
    /// up after the drain timeout).
    pub async fn drain(self) {
        tracing::info!(drain = ?self.drain_timeout, "shutting down: draining requests in flight");
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.handle.await;
        }
        for b in self.background {
            let _ = b.await;
        }
    }
}

async fn wait_for_signals(config_dir: &Path, config: &ConfigHandle) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => reload(config_dir, config),
        }
    }
}

fn reload(config_dir: &Path, config: &ConfigHandle) {
    match aegis_engine::load_dir(config_dir) {
        Ok((_, compiled)) => {
            let summary = compiled.summary();
            config.store(Arc::new(compiled));
            tracing::info!("config reloaded: {summary}");
            eprintln!("aegis: config {}", config.load().version);
        }
        Err(e) => tracing::error!("config reload failed, keeping the active set: {e}"),
    }
}
