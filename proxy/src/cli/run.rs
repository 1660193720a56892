//! `aegis run`: serve a config directory behind the gate.
//!
//! At start the gate gives the version to serve: the last promoted one from
//! the state directory, or the config directory judged now (a rejected
//! directory serves nothing: exit code 3). Then either a supervisor with
//! `workers` worker processes ([`crate::supervisor`]) or, with `--workers
//! 0`, this one process serves it. The gate watches the directory; SIGHUP
//! makes it look at once. SIGTERM or SIGINT stop accepting and drain
//! requests in flight up to `drain_timeout`.
//!
//! Once bound, one line per listener goes to stderr, for scripts and tests:
//! `aegis: listening http 127.0.0.1:8080` (`https`, `admin` likewise), and
//! one line per promoted version: `aegis: config <version>`.

use std::path::PathBuf;
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
use crate::gate;
use crate::pipeline::reservoir::Reservoir;
use crate::pipeline::{ConfigHandle, Pipeline, PipelineSettings};
use crate::server::{self, ConnOptions, tls};
use crate::upstream::PooledConnector;

/// The rest of `aegis run --help`: what an operator needs without the
/// source (signals, exit codes, where state lives, the admin API). Exit code
/// 3 is [`EXIT_REJECTED`]; `proxy/tests/cli.rs` checks the text names it.
const RUN_LONG_HELP: &str = "\
Signals:
  SIGHUP           re-read the config directory and judge it again now, even
                   if it looks unchanged (also retries a could-not-judge);
                   same as POST /admin/rejudge
  SIGTERM, SIGINT  stop accepting, drain requests in flight up to
                   `drain_timeout` (aegis.yaml, default 10s), then exit 0;
                   with workers, what is left after `drain_timeout` +
                   `health.grace` is killed

Exit codes:
  0  stopped cleanly (after SIGTERM or SIGINT)
  1  error: a listener did not bind, the state directory is unusable, an
     admin listener off loopback without a token, ...
  2  usage error (bad arguments)
  3  the config directory was rejected by the gate at first start (no
     promoted version in the state directory): nothing is served; the
     verdict is printed. Later rejections do not stop aegis: it keeps
     serving the version it has.

State (--state-dir, else `state_dir` in aegis.yaml, else ./aegis-state):
  active          the promoted version (served again on restart)
  versions/<id>/  every judged version: its files, verdict and report
  stable          the stable chain: versions that finished their bake, what
                  a rollback returns to
  history.jsonl   the verdicts
  sample.jsonl    the traffic sample the gate replays against a candidate

Admin API (`admin` in aegis.yaml, default 127.0.0.1:9901; off loopback every
request needs `Authorization: Bearer <token>`, the token from
`admin_token_file` or $AEGIS_ADMIN_TOKEN, see `admin_token_env`):
  GET  /healthz, /metrics
  GET  /admin/config       active and stable versions, the stable chain, the
                           rollout, held and could-not-judge candidates,
                           settings pending a restart
  GET  /admin/verdicts     the last 50 verdicts, newest first
  GET  /admin/workers      one row per worker (with workers only)
  POST /admin/confirm      promote a held candidate, release a frozen promotion
  POST /admin/rollback     take the active version back to the stable one
  POST /admin/rejudge      judge the config directory again now (as SIGHUP)
`aegis status` prints the first three for a person.

Stderr, for scripts: `aegis: listening http|https|admin ADDR` once bound;
`aegis: config <version>` at start (with `(restored)` or `(gated)`) and on
every promotion.";

#[derive(clap::Args, Debug)]
#[command(after_long_help = RUN_LONG_HELP)]
pub struct RunArgs {
    /// The config directory (watched).
    #[arg(long, default_value = "configs")]
    pub config_dir: PathBuf,
    /// Where versions, verdicts, the stable chain and the traffic sample are
    /// kept (default: `state_dir` in aegis.yaml, else ./aegis-state).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Worker processes, overriding `workers` in aegis.yaml. `0` serves in
    /// this one process: development mode, no supervisor, no self-healing.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Runtime threads in single-process mode (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Exit code when the config directory fails the gate at start.
pub const EXIT_REJECTED: u8 = 3;

pub fn main(args: RunArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::say!("aegis run: {e:#}");
            if e.downcast_ref::<gate::StartupError>()
                .is_some_and(|s| matches!(s, gate::StartupError::Rejected { .. }))
            {
                ExitCode::from(EXIT_REJECTED)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    crate::telemetry::init_tracing();
    let (gate, started) = gate::start_blocking(&args.config_dir, args.state_dir.as_deref())?;
    // An admin listener off loopback without a token is refused before any
    // data listener is bound or worker started: nothing serves half-set-up.
    check_admin_token(&started.settings)?;
    crate::say!(
        "aegis: config {} ({})",
        started.compiled.version,
        started.how
    );
    let serve_dir = gate.store().files_dir(&started.id);
    let settings = started.settings;
    let compiled = started.compiled;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = args
        .workers
        .unwrap_or_else(|| settings.workers.resolve(cores));
    if workers > 0 {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("starting the runtime")?;
        return rt.block_on(crate::supervisor::serve::run(
            crate::supervisor::serve::Supervised {
                serve: crate::supervisor::Served {
                    dir: serve_dir,
                    id: started.id.clone(),
                    version: compiled.version.clone(),
                },
                settings,
                compiled,
                workers,
                sample_out: Some(gate.store().sample_path()),
            },
            gate,
        ));
    }
    let threads = args.threads.unwrap_or(cores).max(1);
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
    rt.block_on(async move {
        let mut signals = Signals::install()?;
        let mut serving = start(settings, compiled, Some(gate.store().sample_path())).await?;
        if let Some(admin) = &serving.admin {
            gate::register_admin(admin, &gate, serving.config.clone());
            crate::kill_switch::register(admin, serving.pipeline.features_switch());
        }
        serving.open_admin()?;
        let pipeline = serving.pipeline.clone();
        let fleet = crate::rollout::LocalFleet {
            config: serving.config.clone(),
            traffic: serving.pipeline.traffic(),
            apply_settings: Some(Arc::new(move |s: &Settings| {
                pipeline.set_settings(crate::pipeline::PipelineSettings::from_settings(s));
            })),
        };
        let watcher = gate
            .clone()
            .spawn(Arc::new(fleet), serving.shutdown.clone());
        signals.wait(&gate).await;
        serving.drain().await;
        let _ = watcher.await;
        Ok(())
    })
}

/// Fails when `admin` needs a token (off loopback) and none is set.
fn check_admin_token(settings: &Settings) -> anyhow::Result<()> {
    if settings.admin == "off" {
        return Ok(());
    }
    let addr: std::net::SocketAddr = settings
        .admin
        .parse()
        .map_err(|_| admin::AdminError::BadAddress(settings.admin.clone()))?;
    admin::resolve_token(
        &addr,
        &settings.admin_token_env,
        settings.admin_token_file.as_deref(),
    )?;
    Ok(())
}

/// Listeners bound by this process ([`bind`]) or inherited from the
/// supervisor.
pub struct Listeners {
    pub plain: Vec<TcpListener>,
    pub tls: Vec<TcpListener>,
}

/// Binds every listener of `settings`.
pub async fn bind(settings: &Settings) -> anyhow::Result<Listeners> {
    let mut plain = Vec::new();
    for addr in &settings.listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        plain.push(l);
    }
    let mut tls = Vec::new();
    for addr in &settings.listen_tls {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        tls.push(l);
    }
    Ok(Listeners { plain, tls })
}

/// A serving process, between [`start`] and [`Serving::run_until_signal`]:
/// the seam where the gate plugs in (it promotes through `config`, registers
/// its admin endpoints on `admin`, and stops with `shutdown`).
pub struct Serving {
    pub config: ConfigHandle,
    pub connector: PooledConnector,
    pub pipeline: Pipeline<PooledConnector>,
    /// The admin API, when `admin` is not `off`: register endpoints on it,
    /// then [`Serving::open_admin`].
    pub admin: Option<AdminState>,
    admin_listener: Option<TcpListener>,
    /// This process's metrics recorder (a worker sends its text up).
    pub prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Cancelled on SIGTERM/SIGINT: listeners stop accepting and drain.
    pub shutdown: CancellationToken,
    pub drain_timeout: std::time::Duration,
    opts: ConnOptions,
    acceptor: tokio_rustls::TlsAcceptor,
    tasks: Vec<server::ListenerTask>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

/// Binds every listener of `settings` and starts serving `compiled`, with
/// the admin listener.
pub async fn start(
    settings: Settings,
    compiled: Arc<CompiledConfig>,
    sample_out: Option<PathBuf>,
) -> anyhow::Result<Serving> {
    let listeners = bind(&settings).await?;
    start_with(settings, compiled, listeners, true, sample_out).await
}

/// Serves `compiled` on `listeners`; the admin listener too when
/// `with_admin` (a worker process has none: its supervisor serves it). With
/// `sample_out`, a reservoir of request heads is kept and flushed there every
/// `sample.flush_interval` (the traffic sample the gate replays).
pub async fn start_with(
    settings: Settings,
    compiled: Arc<CompiledConfig>,
    listeners: Listeners,
    with_admin: bool,
    sample_out: Option<PathBuf>,
) -> anyhow::Result<Serving> {
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
    let config = ConfigHandle::from_arc(compiled);
    config.store(config.load());
    tracing::info!("{}", config.load().summary());
    let connector = PooledConnector::new();
    connector.pools(&config.load());
    let access_log = AccessLog::from_setting(&settings.access_log)?;
    let mut builder = Pipeline::builder(config.clone(), connector.clone())
        .settings(PipelineSettings::from_settings(&settings))
        .features_switch(Arc::new(AtomicBool::new(settings.features_module.enabled)))
        .access_log(access_log);
    let shutdown = CancellationToken::new();
    let mut background = Vec::new();
    if let Some(path) = sample_out {
        let reservoir = Arc::new(Reservoir::from_settings(&settings.sample));
        builder = builder.reservoir(reservoir.clone());
        background.push(crate::pipeline::reservoir::spawn_flusher(
            reservoir,
            path,
            settings.sample.flush_interval.0,
            shutdown.clone(),
        ));
    }
    let pipeline = builder.build();
    let drain = settings.drain_timeout.0;
    let opts = ConnOptions {
        max_header_bytes: usize::try_from(settings.limits.max_header_bytes.0).unwrap_or(usize::MAX),
        header_read_timeout: settings.limits.client_header_timeout.0,
        send_timeout: settings.limits.send_timeout.0,
        max_connections: match settings.limits.max_connections {
            0 => server::auto_max_connections(),
            n => usize::try_from(n).unwrap_or(usize::MAX),
        },
        ..ConnOptions::default()
    };

    let resolver = Arc::new(tls::SniResolver::new(
        config.clone(),
        settings.tls_unknown_sni,
    ));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(resolver)));
    let mut tasks = Vec::new();
    for l in listeners.plain {
        let t = server::serve_plain(l, pipeline.clone(), opts.clone(), shutdown.clone(), drain)?;
        if with_admin {
            crate::say!("aegis: listening http {}", t.local_addr);
        }
        tasks.push(t);
    }
    for l in listeners.tls {
        let t = server::serve_tls(
            l,
            acceptor.clone(),
            pipeline.clone(),
            opts.clone(),
            shutdown.clone(),
            drain,
        )?;
        if with_admin {
            crate::say!("aegis: listening https {}", t.local_addr);
        }
        tasks.push(t);
    }
    let mut admin_state = None;
    let mut admin_listener = None;
    if with_admin && settings.admin != "off" {
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
        admin_state = Some(AdminState::new(config.clone(), prometheus.clone(), token));
        admin_listener = Some(l);
    }
    background.push(connector.spawn_health_checks(config.clone(), shutdown.clone()));
    Ok(Serving {
        config,
        connector,
        pipeline,
        admin: admin_state,
        admin_listener,
        prometheus,
        shutdown,
        drain_timeout: drain,
        opts,
        acceptor,
        tasks,
        background,
    })
}

impl Serving {
    /// Starts answering on the admin listener, after every endpoint is
    /// registered (a no-op without one, or the second time).
    pub fn open_admin(&mut self) -> anyhow::Result<()> {
        if let (Some(l), Some(state)) = (self.admin_listener.take(), self.admin.clone()) {
            let task = admin::BoundAdmin::new(l, state).open(self.shutdown.clone())?;
            self.background.push(task);
        }
        Ok(())
    }

    /// Swaps in a compiled config (requests in flight keep theirs).
    pub fn promote(&self, compiled: CompiledConfig) {
        self.connector.pools(&compiled);
        self.config.store(Arc::new(compiled));
    }

    /// Serves more listeners (another worker slot's sockets, while that slot
    /// has no healthy worker) until `stop` or this process's shutdown; each
    /// then drains like the others.
    pub fn serve_more(
        &self,
        listeners: Listeners,
        stop: &CancellationToken,
    ) -> std::io::Result<Vec<server::ListenerTask>> {
        let opts = ConnOptions {
            take_queued_on_stop: false,
            ..self.opts.clone()
        };
        let mut tasks = Vec::new();
        for l in listeners.plain {
            tasks.push(server::serve_plain(
                l,
                self.pipeline.clone(),
                opts.clone(),
                stop.clone(),
                self.drain_timeout,
            )?);
        }
        for l in listeners.tls {
            tasks.push(server::serve_tls(
                l,
                self.acceptor.clone(),
                self.pipeline.clone(),
                opts.clone(),
                stop.clone(),
                self.drain_timeout,
            )?);
        }
        Ok(tasks)
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

/// Waits for SIGTERM or SIGINT; SIGHUP makes the gate look at the config
/// directory at once.
/// SIGTERM, SIGINT and SIGHUP, taken over before anything is announced: a
/// signal sent right after `aegis: listening` must not meet the default
/// action (SIGHUP's terminates the process).
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers; inside the runtime.
    pub fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("SIGHUP handler")?,
        })
    }

    /// The next signal: `true` for SIGHUP, `false` for SIGTERM or SIGINT.
    pub async fn next_is_hangup(&mut self) -> bool {
        tokio::select! {
            _ = self.term.recv() => false,
            _ = self.int.recv() => false,
            _ = self.hup.recv() => true,
        }
    }

    /// Until SIGTERM or SIGINT; each SIGHUP has the gate judge the config
    /// directory again.
    pub async fn wait(&mut self, gate: &gate::Gate) {
        while self.next_is_hangup().await {
            gate.rejudge("SIGHUP");
        }
    }
}
