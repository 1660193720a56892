//! The worker process (`aegis worker`, hidden): serves the listeners it
//! inherited from the supervisor, and answers the supervisor on its control
//! channel from inside its own runtime, so a hung event loop shows as a
//! failed probe.

use aegis_engine::config::{self, ConfigSource, Limits, Settings};
use anyhow::Context as _;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio::net::UnixStream;

use super::fds;
use super::ipc::{self, FromWorker, ToWorker};
use crate::cli::run::{self, Listeners, Serving};

#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// The config directory (its aegis.yaml gives the process settings).
    #[arg(long)]
    pub config_dir: PathBuf,
    /// The directory whose hot content to serve first (the active version).
    #[arg(long)]
    pub serve_dir: PathBuf,
    /// Inherited plain listener descriptors.
    #[arg(long = "listen-fd")]
    pub listen_fds: Vec<RawFd>,
    /// Inherited TLS listener descriptors.
    #[arg(long = "tls-fd")]
    pub tls_fds: Vec<RawFd>,
    /// Inherited control channel descriptor.
    #[arg(long)]
    pub control_fd: RawFd,
    /// The supervisor's pid: the worker exits when its parent is another.
    #[arg(long)]
    pub supervisor_pid: u32,
    #[arg(long, default_value_t = 0)]
    pub worker_id: u32,
    /// Runtime threads of this worker.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Start with the feature module switched off (the kill switch).
    #[arg(long)]
    pub features_off: bool,
    /// Keep a traffic sample and write it here (one worker does).
    #[arg(long)]
    pub sample_out: Option<PathBuf>,
}

pub fn main(args: WorkerArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::say!("aegis worker: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: WorkerArgs) -> anyhow::Result<()> {
    // Die with the supervisor, and not be left behind if it died already.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .context("PR_SET_PDEATHSIG")?;
    if std::os::unix::process::parent_id() != args.supervisor_pid {
        anyhow::bail!("the supervisor ({}) is gone", args.supervisor_pid);
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    crate::telemetry::init_tracing();

    let plain: Vec<std::net::TcpListener> = args
        .listen_fds
        .iter()
        .map(|fd| fds::adopt(*fd).map(std::net::TcpListener::from))
        .collect::<Result<_, _>>()
        .context("adopting the listeners")?;
    let tls: Vec<std::net::TcpListener> = args
        .tls_fds
        .iter()
        .map(|fd| fds::adopt(*fd).map(std::net::TcpListener::from))
        .collect::<Result<_, _>>()
        .context("adopting the TLS listeners")?;
    let control = std::os::unix::net::UnixStream::from(
        fds::adopt(args.control_fd).context("adopting the control channel")?,
    );

    let settings = load_settings(&args.config_dir)?;
    let compiled = compile_dir(&args.serve_dir, &settings.limits)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .thread_name(format!("aegis-worker-{}", args.worker_id))
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(serve(args, settings, compiled, plain, tls, control))
}

fn load_settings(config_dir: &Path) -> anyhow::Result<Settings> {
    let source = ConfigSource::read_dir(config_dir, Settings::default().limits.max_file_size.0)
        .with_context(|| format!("reading {}", config_dir.display()))?;
    config::parse_settings(&source).map_err(|d| anyhow::anyhow!("{d}"))
}

fn compile_dir(dir: &Path, limits: &Limits) -> anyhow::Result<aegis_engine::CompiledConfig> {
    let source = ConfigSource::read_dir(dir, limits.max_file_size.0)
        .with_context(|| format!("reading {}", dir.display()))?;
    config::compile(&source, limits).map_err(|d| anyhow::anyhow!("{d}"))
}

async fn serve(
    args: WorkerArgs,
    settings: Settings,
    compiled: aegis_engine::CompiledConfig,
    plain: Vec<std::net::TcpListener>,
    tls: Vec<std::net::TcpListener>,
    control: std::os::unix::net::UnixStream,
) -> anyhow::Result<()> {
    let to_tokio = |l: std::net::TcpListener| -> std::io::Result<tokio::net::TcpListener> {
        l.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(l)
    };
    let listeners = Listeners {
        plain: plain
            .into_iter()
            .map(to_tokio)
            .collect::<Result<Vec<_>, _>>()?,
        tls: tls
            .into_iter()
            .map(to_tokio)
            .collect::<Result<Vec<_>, _>>()?,
    };
    control.set_nonblocking(true)?;
    let control = UnixStream::from_std(control)?;

    let limits = settings.limits.clone();
    let serving = run::start_with(
        settings,
        std::sync::Arc::new(compiled),
        listeners,
        false,
        args.sample_out.clone(),
    )
    .await?;
    let prometheus = serving.prometheus.clone();
    let features = serving.pipeline.features_switch();
    let traffic = serving.pipeline.traffic();
    if args.features_off {
        features.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    let (mut rx, mut tx) = control.into_split();
    let version = serving.config.load().version.clone();
    ipc::write_msg(
        &mut tx,
        &FromWorker::Ready {
            pid: std::process::id(),
            version,
        },
    )
    .await?;
    tracing::debug!(worker = args.worker_id, "worker serving");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let msg = tokio::select! {
            _ = term.recv() => break,
            m = ipc::read_msg::<_, ToWorker>(&mut rx) => m,
        };
        let reply = match msg {
            Err(e) => {
                // The supervisor is gone or talks nonsense: drain and leave.
                tracing::warn!(error = %e, "control channel lost; draining");
                break;
            }
            Ok(ToWorker::Stop) => break,
            Ok(ToWorker::Ping { seq }) => FromWorker::Pong {
                seq,
                version: serving.config.load().version.clone(),
                traffic: traffic.totals(),
            },
            Ok(ToWorker::Metrics { seq }) => FromWorker::MetricsText {
                seq,
                text: prometheus.as_ref().map(|h| h.render()).unwrap_or_default(),
            },
            Ok(ToWorker::Load { dir, version }) => load(&serving, &limits, dir, version).await,
            Ok(ToWorker::Features { enabled }) => {
                features.store(enabled, std::sync::atomic::Ordering::SeqCst);
                continue;
            }
        };
        if ipc::write_msg(&mut tx, &reply).await.is_err() {
            break;
        }
    }
    serving.drain().await;
    Ok(())
}

/// Compiles a version off the event loop (probes keep being answered) and
/// swaps it in.
async fn load(serving: &Serving, limits: &Limits, dir: PathBuf, version: String) -> FromWorker {
    let limits = limits.clone();
    let compiled = tokio::task::spawn_blocking(move || compile_dir(&dir, &limits)).await;
    match compiled {
        Ok(Ok(c)) if c.version == version => {
            serving.promote(c);
            FromWorker::Loaded { version }
        }
        Ok(Ok(c)) => FromWorker::LoadFailed {
            error: format!("the directory holds version {}, not {version}", c.version),
            version,
        },
        Ok(Err(e)) => FromWorker::LoadFailed {
            version,
            error: format!("{e:#}"),
        },
        Err(e) => FromWorker::LoadFailed {
            version,
            error: e.to_string(),
        },
    }
}
