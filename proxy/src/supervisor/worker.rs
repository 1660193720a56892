//! The worker process (`aegis worker`, hidden): serves the listeners it
//! inherited from the supervisor, and answers the supervisor on its control
//! channel from inside its own runtime, so a hung event loop shows as a
//! failed probe.
//!
//! A worker never reads the watched config directory: it serves only a
//! promoted snapshot from the state directory (`--serve-dir`, named by its
//! content hash `--snapshot`), and verifies that hash before serving it
//! (`gate::store::load_verified`). Its process settings (limits, fail mode)
//! come from that snapshot's own `aegis.yaml`, so a respawn serves exactly
//! what was promoted, whatever the directory holds now.
//!
//! A worker accepts on its own slot's sockets, and on another slot's
//! (`--spare-listen-fd SLOT:FD`) only while the supervisor says that slot has
//! no healthy worker (`ToWorker::Adopt`).
//!
//! With one runtime thread (the default: one worker process per core) the
//! runtime is current-thread: no work stealing, no cross-thread wake-ups,
//! the same instructions per request for less CPU than a one-thread
//! multi-thread runtime.

use aegis_engine::config::Settings;
use anyhow::Context as _;
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::net::UnixStream;

use super::fds;
use super::ipc::{self, FromWorker, ToWorker};
use crate::cli::run::{self, Listeners, Serving};
use crate::gate::store;
use crate::pipeline::PipelineSettings;

#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// The promoted snapshot to serve first: its files in the state directory.
    #[arg(long)]
    pub serve_dir: PathBuf,
    /// That snapshot's id (its content hash), verified before serving.
    #[arg(long)]
    pub snapshot: String,
    /// Inherited plain listener descriptors.
    #[arg(long = "listen-fd")]
    pub listen_fds: Vec<RawFd>,
    /// Inherited TLS listener descriptors.
    #[arg(long = "tls-fd")]
    pub tls_fds: Vec<RawFd>,
    /// Other slots' plain listener descriptors, as `SLOT:FD`.
    #[arg(long = "spare-listen-fd", value_parser = parse_spare)]
    pub spare_listen_fds: Vec<(usize, RawFd)>,
    /// Other slots' TLS listener descriptors, as `SLOT:FD`.
    #[arg(long = "spare-tls-fd", value_parser = parse_spare)]
    pub spare_tls_fds: Vec<(usize, RawFd)>,
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

fn parse_spare(s: &str) -> Result<(usize, RawFd), String> {
    let (slot, fd) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not SLOT:FD"))?;
    let slot = slot
        .parse()
        .map_err(|_| format!("`{slot}` is not a slot"))?;
    let fd = fd
        .parse()
        .map_err(|_| format!("`{fd}` is not a descriptor"))?;
    Ok((slot, fd))
}

/// The per-route counts are read at most once per this many times the
/// last read took (≤ 0.5 % of the worker's time).
const ROUTE_COUNTS_DUTY: u32 = 200;

/// Other slots' sockets, kept unserved until adopted.
#[derive(Default)]
struct Spares {
    sockets: HashMap<usize, (Vec<std::net::TcpListener>, Vec<std::net::TcpListener>)>,
    /// Slots adopted now: the token that stops accepting on their sockets.
    adopted: HashMap<usize, tokio_util::sync::CancellationToken>,
    tasks: Vec<crate::server::ListenerTask>,
}

impl Spares {
    /// Accepts on the spare sockets of `slots` and stops on the others.
    fn adopt(&mut self, serving: &Serving, own: u32, slots: &[usize]) {
        let own = usize::try_from(own).unwrap_or(usize::MAX);
        self.adopted.retain(|slot, stop| {
            let keep = slots.contains(slot);
            if !keep {
                tracing::info!(
                    slot,
                    "slot has a healthy worker again: no longer accepting for it"
                );
                stop.cancel();
            }
            keep
        });
        for &slot in slots {
            if slot == own || self.adopted.contains_key(&slot) {
                continue;
            }
            let Some((plain, tls)) = self.sockets.get(&slot) else {
                continue;
            };
            // Serve duplicates: the originals stay here for the next time.
            let dup =
                |ls: &[std::net::TcpListener]| -> std::io::Result<Vec<tokio::net::TcpListener>> {
                    ls.iter()
                        .map(|l| {
                            let d = l.try_clone()?;
                            d.set_nonblocking(true)?;
                            tokio::net::TcpListener::from_std(d)
                        })
                        .collect()
                };
            let listeners = match (dup(plain), dup(tls)) {
                (Ok(plain), Ok(tls)) => Listeners { plain, tls },
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(slot, error = %e, "cannot take over the slot's sockets");
                    continue;
                }
            };
            let stop = serving.shutdown.child_token();
            match serving.serve_more(listeners, &stop) {
                Ok(tasks) => {
                    tracing::info!(slot, "slot has no healthy worker: accepting for it");
                    self.tasks.extend(tasks);
                    self.adopted.insert(slot, stop);
                }
                Err(e) => tracing::warn!(slot, error = %e, "cannot take over the slot's sockets"),
            }
        }
        self.tasks.retain(|t| !t.handle.is_finished());
    }
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
    let mut spares = Spares::default();
    for (fds_of, is_tls) in [(&args.spare_listen_fds, false), (&args.spare_tls_fds, true)] {
        for (slot, fd) in fds_of {
            let l = fds::adopt(*fd)
                .map(std::net::TcpListener::from)
                .context("adopting a spare listener")?;
            let entry = spares.sockets.entry(*slot).or_default();
            if is_tls {
                entry.1.push(l);
            } else {
                entry.0.push(l);
            }
        }
    }

    let (settings, compiled) = store::load_verified(&args.serve_dir, &args.snapshot)
        .with_context(|| format!("worker {}", args.worker_id))?;
    let mut builder = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(args.threads);
        b
    };
    let rt = builder
        .thread_name(format!("aegis-worker-{}", args.worker_id))
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(serve(args, settings, compiled, plain, tls, control, spares))
}

async fn serve(
    args: WorkerArgs,
    settings: Settings,
    compiled: aegis_engine::CompiledConfig,
    plain: Vec<std::net::TcpListener>,
    tls: Vec<std::net::TcpListener>,
    control: std::os::unix::net::UnixStream,
    mut spares: Spares,
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
    // Per-route counts for the canary, read from this worker's Prometheus
    // text: rendering costs about 11 µs per series (11 ms at 1000 routes,
    // on this single-threaded worker), so it is redone at most once per
    // ROUTE_COUNTS_DUTY times its last cost (at least every probe when
    // cheap), and at once when the version served changed.
    let mut routes: Option<crate::rollout::routes::RouteCounts> = None;
    let mut routes_next = std::time::Instant::now();
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
            Ok(ToWorker::Ping { seq }) => {
                let version = serving.config.load().version.clone();
                // Read from the counters the data plane keeps anyway
                // (off the request path, once per probe).
                let now = std::time::Instant::now();
                let stale = routes.as_ref().is_none_or(|r| r.version != version);
                if let Some(h) = prometheus.as_ref()
                    && (stale || now >= routes_next)
                {
                    routes = Some(crate::rollout::routes::RouteCounts::from_prometheus(
                        &h.render(),
                        &version,
                    ));
                    routes_next = now + now.elapsed().saturating_mul(ROUTE_COUNTS_DUTY);
                }
                FromWorker::Pong {
                    seq,
                    version,
                    traffic: traffic.totals(),
                    routes: routes.clone(),
                    overloaded: crate::server::overloaded(),
                }
            }
            Ok(ToWorker::Metrics { seq }) => FromWorker::MetricsText {
                seq,
                text: prometheus.as_ref().map(|h| h.render()).unwrap_or_default(),
            },
            Ok(ToWorker::Load {
                seq,
                dir,
                id,
                version,
            }) => load(&serving, seq, dir, id, version).await,
            Ok(ToWorker::Features { enabled }) => {
                features.store(enabled, std::sync::atomic::Ordering::SeqCst);
                continue;
            }
            Ok(ToWorker::Adopt { slots }) => {
                spares.adopt(&serving, args.worker_id, &slots);
                continue;
            }
        };
        if ipc::write_msg(&mut tx, &reply).await.is_err() {
            break;
        }
    }
    // The adopted listeners stop with the shutdown (their tokens are its
    // children) and drain alongside the worker's own.
    let adopted = std::mem::take(&mut spares.tasks);
    serving.drain().await;
    for t in adopted {
        let _ = t.handle.await;
    }
    Ok(())
}

/// Verifies and compiles a promoted snapshot off the event loop (probes
/// keep being answered), then swaps it in with its live settings.
async fn load(
    serving: &Serving,
    seq: u64,
    dir: PathBuf,
    id: String,
    version: String,
) -> FromWorker {
    let loaded = tokio::task::spawn_blocking(move || store::load_verified(&dir, &id)).await;
    match loaded {
        Ok(Ok((settings, c))) if c.version == version => {
            apply_live(serving, &settings);
            serving.promote(c);
            FromWorker::Loaded { seq, version }
        }
        Ok(Ok((_, c))) => FromWorker::LoadFailed {
            seq,
            error: format!(
                "the snapshot compiles to version {}, not {version}",
                c.version
            ),
            version,
        },
        Ok(Err(e)) => FromWorker::LoadFailed {
            seq,
            version,
            error: e.to_string(),
        },
        Err(e) => FromWorker::LoadFailed {
            seq,
            version,
            error: e.to_string(),
        },
    }
}

/// The process settings a running worker takes from a new version at once
/// (the others are listed by the gate as "takes effect on restart").
fn apply_live(serving: &Serving, settings: &Settings) {
    serving
        .pipeline
        .set_settings(PipelineSettings::from_settings(settings));
}
