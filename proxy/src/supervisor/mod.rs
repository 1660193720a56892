//! The supervisor: binds the listeners, runs N worker processes of the same
//! binary that inherit them, watches each one and replaces it when it
//! misbehaves, without the other workers' traffic noticing.
//!
//! Each listen address is bound once per worker slot, with SO_REUSEPORT,
//! so the kernel spreads new connections evenly over the slots (one shared
//! accept queue let whichever worker woke first take nearly every
//! connection). The supervisor keeps every slot's sockets open for its
//! whole life, so nothing queued on a slot is lost when its worker dies:
//! the replacement inherits the same socket, queue and all. Meanwhile the
//! other workers take over the queue of a slot without a healthy worker
//! (`ToWorker::Adopt`: every worker inherits every slot's sockets and
//! accepts on the orphaned ones until the slot is healthy again).
//!
//! - **exited or killed**: respawned at once; with exponential backoff when
//!   it keeps dying.
//! - **hung** (`health.fall` probes in a row unanswered; a probe is answered
//!   from inside the worker's event loop): SIGTERM, SIGKILL after
//!   `health.grace`, respawn.
//! - **leaking** (RSS over `health.max_rss`): the replacement is started
//!   first; once it serves, the old worker drains and exits.
//! - **crash loop** (`health.crash_loop_deaths` deaths within
//!   `health.crash_window`): respawning stops for one window, loudly, and the
//!   owner is told (the gate rolls back a promotion the deaths followed).
//!
//! The supervisor serves no traffic. Workers die with it (PR_SET_PDEATHSIG).

pub mod fds;
pub mod ipc;
pub mod metrics_merge;
pub mod serve;
pub mod worker;

use std::collections::{HashMap, VecDeque};
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aegis_engine::config::settings::Health;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::pipeline::traffic::TrafficTotals;
use crate::rollout::SlotTraffic;
use ipc::{FromWorker, ToWorker};

/// How the supervisor runs its workers.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// The `aegis` binary to run workers from.
    pub exe: PathBuf,
    pub workers: usize,
    pub threads_per_worker: usize,
    pub health: Health,
    pub drain_timeout: Duration,
    /// Where worker 0 writes the traffic sample (a uniform sample of the
    /// requests that worker serves, which the shared accept queue makes a
    /// uniform share of all traffic).
    pub sample_out: Option<PathBuf>,
    /// The kill switch's initial position (`features_module.enabled`).
    pub features_enabled: bool,
}

/// Why a worker was replaced (also the `reason` label of
/// `aegis_worker_restarts_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartReason {
    Exited,
    Killed,
    Hung,
    Rss,
}

impl RestartReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartReason::Exited => "exited",
            RestartReason::Killed => "killed",
            RestartReason::Hung => "hung",
            RestartReason::Rss => "rss",
        }
    }
}

/// One row of `GET /admin/workers`.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatus {
    pub slot: usize,
    pub pid: Option<u32>,
    pub started_unix: Option<u64>,
    pub version: Option<String>,
    pub healthy: bool,
    pub rss_bytes: u64,
    pub cpu_percent: f32,
    pub restarts: u64,
    pub last_restart_reason: Option<RestartReason>,
    /// Set while respawning is paused after a crash loop.
    pub paused_until_unix: Option<u64>,
    /// The current process's live counters (as of the last probe).
    pub requests: u64,
    pub errors_5xx: u64,
    /// Set on the canary worker while it serves a version the others do not.
    pub canary: bool,
    /// The worker said, at the last probe, that it is at its connection
    /// limit or out of descriptors (`aegis_overloaded`).
    pub overloaded: bool,
}

/// Something the owner of the supervisor should act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SupervisorEvent {
    /// Workers kept dying: respawning is paused for `pause`. `since` is the
    /// first death of the loop.
    CrashLoop {
        deaths: usize,
        pause: Duration,
        since: Instant,
        /// The versions the dead workers were serving (or starting on), so
        /// the owner blames a promotion only when its workers died.
        versions: Vec<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("starting worker {slot}: {source}")]
    Spawn { slot: usize, source: std::io::Error },
    #[error("worker {slot} did not become ready: {why}")]
    NotReady { slot: usize, why: String },
}

/// One worker slot's own listening sockets: one per listen address, in the
/// order of `listen` and `listen_tls`.
#[derive(Debug)]
pub struct SlotSockets {
    pub plain: Vec<TcpListener>,
    pub tls: Vec<TcpListener>,
}

/// Binds every address once per slot, each socket with SO_REUSEPORT (the
/// kernel balances new connections over a port's sockets) and a deep
/// backlog, close-on-exec until a worker spawn clears it.
///
/// SO_REUSEPORT would also let a second `aegis run` on the same port join
/// the group silently and take a share of the traffic. So each address is
/// first bound by a plain probe socket: one that is in use fails here, as
/// without reuseport. The probe also fixes the port when the address asks
/// for port 0, so every slot gets the same one.
pub fn bind_groups(
    plain: &[String],
    tls: &[String],
    slots: usize,
) -> Result<Vec<SlotSockets>, SupervisorError> {
    let mut out: Vec<SlotSockets> = (0..slots.max(1))
        .map(|_| SlotSockets {
            plain: Vec::new(),
            tls: Vec::new(),
        })
        .collect();
    for (addrs, is_tls) in [(plain, false), (tls, true)] {
        for addr in addrs {
            let group = bind_group(addr, out.len())?;
            for (slot, l) in out.iter_mut().zip(group) {
                if is_tls {
                    slot.tls.push(l);
                } else {
                    slot.plain.push(l);
                }
            }
        }
    }
    Ok(out)
}

fn bind_group(addr: &str, n: usize) -> Result<Vec<TcpListener>, SupervisorError> {
    let bind_err = |source| SupervisorError::Bind {
        addr: addr.to_string(),
        source,
    };
    let wanted: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| bind_err(std::io::Error::other(format!("`{addr}` is not ip:port"))))?;
    let socket = |reuse_port: bool| -> std::io::Result<socket2::Socket> {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(wanted),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        s.set_reuse_address(true)?;
        if reuse_port {
            s.set_reuse_port(true)?;
        }
        Ok(s)
    };
    let probe = socket(false).map_err(bind_err)?;
    probe.bind(&wanted.into()).map_err(bind_err)?;
    let actual = probe
        .local_addr()
        .map_err(bind_err)?
        .as_socket()
        .ok_or_else(|| bind_err(std::io::Error::other("not an IP socket")))?;
    drop(probe);
    (0..n)
        .map(|_| {
            let s = socket(true)?;
            s.bind(&actual.into())?;
            s.listen(4096)?;
            Ok(TcpListener::from(s))
        })
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(bind_err)
}

/// How long a scrape of `/metrics` waits for a worker's text: well inside
/// a scraper's timeout (Prometheus: 10 s), long enough for a worker that
/// is merely busy to render it.
const SCRAPE_WAIT: Duration = Duration::from_millis(500);

type RoutesSeen = Arc<Mutex<Option<Arc<crate::rollout::routes::RouteCounts>>>>;

/// Questions sent to a worker and waiting for its answer, by sequence
/// number; `None` once its control channel closed (it died): a question
/// asked then, or still waiting, gets no answer at once instead of at its
/// timeout (a promotion waiting 30 s on a dead worker blocked the crash-loop
/// rollback behind it).
type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<FromWorker>>>>>;

/// A running worker process.
struct WorkerProc {
    pid: u32,
    started: SystemTime,
    tx: mpsc::Sender<ToWorker>,
    pending: Pending,
    version: Arc<Mutex<Option<String>>>,
    traffic: Arc<Mutex<TrafficTotals>>,
    /// Its per-route answers, as of its last probe.
    routes: RoutesSeen,
    overloaded: Arc<std::sync::atomic::AtomicBool>,
    /// The last Prometheus text it sent, served when it does not answer a
    /// scrape in time.
    metrics: String,
}

#[derive(Default)]
struct Slot {
    current: Option<WorkerProc>,
    /// Replaced workers still draining.
    draining: Vec<u32>,
    restarts: u64,
    last_reason: Option<RestartReason>,
    failed_probes: u32,
    rss: u64,
    cpu: f32,
    healthy: bool,
    /// The reason to record when the current process exits (set when the
    /// supervisor itself kills it).
    kill_reason: Option<RestartReason>,
    /// The version this slot serves instead of everyone's (the canary's):
    /// a replacement process starts on it too.
    serve: Option<Served>,
}

/// A promoted snapshot as a worker loads it: its files in the state
/// directory and the id (content hash) the worker verifies them against.
/// Workers start, restart and reload only from one of these, never from the
/// watched config directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub dir: PathBuf,
    pub id: String,
    /// The engine version it compiles to (what workers report serving).
    pub version: String,
}

enum Event {
    Exited {
        slot: usize,
        pid: u32,
        status: std::process::ExitStatus,
    },
    Ready {
        slot: usize,
        pid: u32,
    },
}

struct Inner {
    cfg: SupervisorConfig,
    /// Every slot's listening sockets, until the supervisor stops (then
    /// closed, so new connections are refused instead of queued for nobody).
    listeners: Mutex<Option<Vec<SlotSockets>>>,
    /// The orphaned slots last announced to the workers (`ToWorker::Adopt`).
    /// An async lock held from computing the set to the last send, so two
    /// announcements never reach a worker out of order (an old set arriving
    /// last would keep a worker accepting for a slot that has its own).
    orphans: tokio::sync::Mutex<Vec<usize>>,
    /// Set once every first worker serves: before that, every slot is
    /// "orphaned" and the first worker ready would take connections that
    /// keep-alive clients then keep on it.
    started: AtomicBool,
    /// What every slot without a version of its own serves (and respawns on).
    serve: Mutex<Served>,
    slots: Mutex<Vec<Slot>>,
    /// Recent deaths, with the version each dead worker served.
    deaths: Mutex<VecDeque<(Instant, String)>>,
    paused_until: Mutex<Option<(Instant, SystemTime)>>,
    seq: AtomicU64,
    stopping: AtomicBool,
    /// The feature module's kill switch, for every worker (new ones too).
    features: AtomicBool,
    events: mpsc::UnboundedSender<Event>,
    owner_events: mpsc::UnboundedSender<SupervisorEvent>,
}

/// The supervisor's handle: cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl Supervisor {
    /// Takes the bound listeners; `serve` is the promoted snapshot workers
    /// start with (the active version). Returns the handle, the event loop to
    /// run, and the receiver of events the owner should act on.
    pub fn new(
        cfg: SupervisorConfig,
        sockets: Vec<SlotSockets>,
        serve: Served,
    ) -> (
        Self,
        SupervisorLoop,
        mpsc::UnboundedReceiver<SupervisorEvent>,
    ) {
        let (events, rx) = mpsc::unbounded_channel();
        let cfg_features = cfg.features_enabled;
        let (owner_tx, owner_rx) = mpsc::unbounded_channel();
        let slots = (0..cfg.workers).map(|_| Slot::default()).collect();
        let inner = Arc::new(Inner {
            cfg,
            listeners: Mutex::new(Some(sockets)),
            orphans: tokio::sync::Mutex::new(Vec::new()),
            started: AtomicBool::new(false),
            serve: Mutex::new(serve),
            slots: Mutex::new(slots),
            deaths: Mutex::new(VecDeque::new()),
            paused_until: Mutex::new(None),
            seq: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            features: AtomicBool::new(cfg_features),
            events,
            owner_events: owner_tx,
        });
        let sup = Supervisor { inner };
        let lp = SupervisorLoop {
            sup: sup.clone(),
            rx,
        };
        (sup, lp, owner_rx)
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.inner.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts every worker and waits until each serves.
    pub async fn start_all(&self) -> Result<(), SupervisorError> {
        let mut ready = Vec::new();
        for slot in 0..self.inner.cfg.workers {
            ready.push((slot, self.spawn(slot)?));
        }
        for (slot, r) in ready {
            match tokio::time::timeout(Duration::from_secs(30), r).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(SupervisorError::NotReady {
                        slot,
                        why: "it exited".into(),
                    });
                }
                Err(_) => {
                    return Err(SupervisorError::NotReady {
                        slot,
                        why: "timeout".into(),
                    });
                }
            }
        }
        metrics::gauge!("aegis_workers_healthy").set(self.inner.cfg.workers as f64);
        self.inner.started.store(true, Ordering::SeqCst);
        self.share_orphans(true).await;
        Ok(())
    }

    /// Spawns the worker of `slot`; the receiver fires once it serves.
    fn spawn(&self, slot: usize) -> Result<oneshot::Receiver<()>, SupervisorError> {
        let (parent_end, child_end) = std::os::unix::net::UnixStream::pair()
            .map_err(|source| SupervisorError::Spawn { slot, source })?;
        let own = self.slots().get(slot).and_then(|s| s.serve.clone());
        let served = own.unwrap_or_else(|| {
            self.inner
                .serve
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        });
        let cfg = &self.inner.cfg;
        let mut cmd = tokio::process::Command::new(&cfg.exe);
        cmd.arg("worker")
            .arg("--serve-dir")
            .arg(&served.dir)
            .arg("--snapshot")
            .arg(&served.id)
            .arg("--control-fd")
            .arg(fds::raw(&child_end).to_string())
            .arg("--supervisor-pid")
            .arg(std::process::id().to_string())
            .arg("--worker-id")
            .arg(slot.to_string())
            .arg("--threads")
            .arg(cfg.threads_per_worker.to_string())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(false);
        if !self.inner.features.load(Ordering::SeqCst) {
            cmd.arg("--features-off");
        }
        if let (0, Some(p)) = (slot, &cfg.sample_out) {
            cmd.arg("--sample-out").arg(p);
        }
        let listeners = self
            .inner
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(sockets) = listeners.as_ref() else {
            return Err(SupervisorError::Spawn {
                slot,
                source: std::io::Error::other("the supervisor is stopping"),
            });
        };
        let mut inherit: Vec<std::os::fd::BorrowedFd<'_>> = Vec::new();
        inherit.push(child_end.as_fd());
        // Its own slot's sockets, and every other slot's as spares it
        // accepts on only while that slot is orphaned.
        for (i, own) in sockets.iter().enumerate() {
            let (plain_flag, tls_flag) = if i == slot {
                ("--listen-fd", "--tls-fd")
            } else {
                ("--spare-listen-fd", "--spare-tls-fd")
            };
            for l in &own.plain {
                let fd = fds::raw(l);
                cmd.arg(plain_flag).arg(if i == slot {
                    fd.to_string()
                } else {
                    format!("{i}:{fd}")
                });
                inherit.push(l.as_fd());
            }
            for l in &own.tls {
                let fd = fds::raw(l);
                cmd.arg(tls_flag).arg(if i == slot {
                    fd.to_string()
                } else {
                    format!("{i}:{fd}")
                });
                inherit.push(l.as_fd());
            }
        }
        let spawned = fds::spawn_inheriting(&inherit, || cmd.spawn());
        drop(listeners);
        let mut child = spawned.map_err(|source| SupervisorError::Spawn { slot, source })?;
        drop(child_end);
        let pid = child.id().unwrap_or(0);

        let (tx, mut to_worker) = mpsc::channel::<ToWorker>(64);
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let version: Arc<Mutex<Option<String>>> = Arc::default();
        let traffic: Arc<Mutex<TrafficTotals>> = Arc::default();
        let routes: RoutesSeen = Arc::default();
        let overloaded: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let (ready_tx, ready_rx) = oneshot::channel();
        parent_end
            .set_nonblocking(true)
            .map_err(|source| SupervisorError::Spawn { slot, source })?;
        let stream = tokio::net::UnixStream::from_std(parent_end)
            .map_err(|source| SupervisorError::Spawn { slot, source })?;
        let (mut rd, mut wr) = stream.into_split();
        tokio::spawn(async move {
            while let Some(msg) = to_worker.recv().await {
                if ipc::write_msg(&mut wr, &msg).await.is_err() {
                    break;
                }
            }
        });
        {
            let pending = pending.clone();
            let version = version.clone();
            let traffic = traffic.clone();
            let routes = routes.clone();
            let overloaded = overloaded.clone();
            let events = self.inner.events.clone();
            let sup = Arc::downgrade(&self.inner);
            tokio::spawn(async move {
                let mut ready_tx = Some(ready_tx);
                loop {
                    let msg = match ipc::read_msg::<_, FromWorker>(&mut rd).await {
                        Ok(m) => m,
                        Err(_) => break,
                    };
                    let seq = match &msg {
                        FromWorker::Ready { version: v, .. } => {
                            *version.lock().unwrap_or_else(|e| e.into_inner()) = Some(v.clone());
                            // Healthy now, not when the event loop gets to
                            // the event: it may be awaiting a probe round,
                            // and meanwhile the slot would count as orphaned
                            // and its connections go to the other workers
                            // (keep-alive clients then stay there).
                            if let Some(inner) = sup.upgrade() {
                                Supervisor { inner }.mark_ready(slot, pid);
                            }
                            if let Some(r) = ready_tx.take() {
                                let _ = r.send(());
                            }
                            let _ = events.send(Event::Ready { slot, pid });
                            continue;
                        }
                        FromWorker::Pong {
                            seq,
                            version: v,
                            traffic: t,
                            routes: r,
                            overloaded: o,
                        } => {
                            overloaded.store(*o, std::sync::atomic::Ordering::Relaxed);
                            *version.lock().unwrap_or_else(|e| e.into_inner()) = Some(v.clone());
                            *traffic.lock().unwrap_or_else(|e| e.into_inner()) = *t;
                            *routes.lock().unwrap_or_else(|e| e.into_inner()) =
                                r.clone().map(Arc::new);
                            *seq
                        }
                        FromWorker::MetricsText { seq, .. } => *seq,
                        FromWorker::Loaded { seq, version: v } => {
                            *version.lock().unwrap_or_else(|e| e.into_inner()) = Some(v.clone());
                            *seq
                        }
                        FromWorker::LoadFailed { seq, .. } => *seq,
                    };
                    let waiter = pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_mut()
                        .and_then(|m| m.remove(&seq));
                    if let Some(w) = waiter {
                        let _ = w.send(msg);
                    }
                }
                // Dropping the waiting senders answers their questions now.
                *pending.lock().unwrap_or_else(|e| e.into_inner()) = None;
            });
        }
        {
            let events = self.inner.events.clone();
            tokio::spawn(async move {
                if let Ok(status) = child.wait().await {
                    let _ = events.send(Event::Exited { slot, pid, status });
                }
            });
        }
        let proc = WorkerProc {
            pid,
            started: SystemTime::now(),
            tx,
            pending,
            version,
            traffic,
            routes,
            overloaded,
            metrics: String::new(),
        };
        let mut slots = self.slots();
        if let Some(s) = slots.get_mut(slot) {
            if let Some(old) = s.current.take() {
                s.draining.push(old.pid);
            }
            s.current = Some(proc);
            s.failed_probes = 0;
            s.healthy = false;
        }
        tracing::info!(slot, pid, "worker started");
        Ok(ready_rx)
    }

    /// The worker `pid` of `slot` said it serves.
    fn mark_ready(&self, slot: usize, pid: u32) {
        let mut slots = self.slots();
        if let Some(s) = slots.get_mut(slot)
            && s.current.as_ref().map(|w| w.pid) == Some(pid)
        {
            s.healthy = true;
            s.failed_probes = 0;
        }
    }

    /// Sends a request and waits for its answer.
    async fn ask(
        &self,
        slot: usize,
        make: impl FnOnce(u64) -> ToWorker,
        wait: Duration,
    ) -> Option<FromWorker> {
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let (tx, pending) = {
            let slots = self.slots();
            let w = slots.get(slot)?.current.as_ref()?;
            (w.tx.clone(), w.pending.clone())
        };
        let (otx, orx) = oneshot::channel();
        match pending.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            Some(m) => {
                m.insert(seq, otx);
            }
            None => return None,
        }
        if tx.send(make(seq)).await.is_err() {
            return None;
        }
        let answer = tokio::time::timeout(wait, orx)
            .await
            .ok()
            .and_then(|r| r.ok());
        if let Some(m) = pending.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            m.remove(&seq);
        }
        answer
    }

    /// Slots without a healthy worker: none running, not ready yet, or its
    /// last probe unanswered. Their queues are taken over by the others.
    fn orphaned(&self) -> Vec<usize> {
        if self.inner.stopping.load(Ordering::SeqCst) || !self.inner.started.load(Ordering::SeqCst)
        {
            return Vec::new();
        }
        self.slots()
            .iter()
            .enumerate()
            .filter(|(_, s)| s.current.is_none() || !s.healthy || s.failed_probes > 0)
            .map(|(i, _)| i)
            .collect()
    }

    /// Tells every worker which slots' sockets to accept on besides
    /// its own, when that set changed (or always, with `force`: a worker that
    /// just became ready has not heard it).
    async fn share_orphans(&self, force: bool) {
        let mut last = self.inner.orphans.lock().await;
        let now = self.orphaned();
        if *last == now && !force {
            return;
        }
        if *last != now {
            tracing::info!(orphaned = ?now, "slots taken over by the other workers");
        }
        last.clone_from(&now);
        // Every current worker, healthy or not: one that missed a probe when
        // the set changed would otherwise keep an old set (and keep
        // accepting for a slot that has its worker back). Messages keep
        // their order, so a slow worker ends on the newest set too.
        let txs: Vec<mpsc::Sender<ToWorker>> = self
            .slots()
            .iter()
            .filter_map(|s| s.current.as_ref().map(|w| w.tx.clone()))
            .collect();
        for tx in txs {
            let _ = tx.send(ToWorker::Adopt { slots: now.clone() }).await;
        }
    }

    /// Worker slots.
    pub fn size(&self) -> usize {
        self.inner.cfg.workers
    }

    /// Hands a version to the worker of slot `only`, or to every worker (a
    /// replacement process then starts on it too); true when each concerned
    /// answers a probe with it.
    pub async fn load(&self, only: Option<usize>, served: Served) -> bool {
        let slots: Vec<usize> = match only {
            None => {
                *self.inner.serve.lock().unwrap_or_else(|e| e.into_inner()) = served.clone();
                for s in self.slots().iter_mut() {
                    s.serve = None;
                }
                (0..self.inner.cfg.workers).collect()
            }
            Some(slot) => {
                let everyone = self
                    .inner
                    .serve
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .id
                    .clone();
                if let Some(s) = self.slots().get_mut(slot) {
                    // Back to everyone's version: no longer a canary.
                    s.serve = (everyone != served.id).then(|| served.clone());
                }
                vec![slot]
            }
        };
        let mut all = true;
        for slot in slots {
            all &= self.load_slot(slot, &served).await;
        }
        all
    }

    async fn load_slot(&self, slot: usize, served: &Served) -> bool {
        // Answered once the worker verified, compiled and swapped it in (a
        // version whose hot content is unchanged but whose settings differ
        // reports the same engine version: the answer, not a probe, tells).
        let answer = self
            .ask(
                slot,
                |seq| ToWorker::Load {
                    seq,
                    dir: served.dir.clone(),
                    id: served.id.clone(),
                    version: served.version.clone(),
                },
                Duration::from_secs(30),
            )
            .await;
        match answer {
            Some(FromWorker::Loaded { version, .. }) if version == served.version => true,
            Some(FromWorker::LoadFailed { error, .. }) => {
                tracing::error!(slot, id = %served.id, %error, "the worker did not load the version");
                false
            }
            other => {
                tracing::error!(slot, id = %served.id, ?other, "no load acknowledgement from the worker");
                false
            }
        }
    }

    /// Every slot's live counters, as of its last probe.
    pub fn traffic(&self) -> Vec<SlotTraffic> {
        self.slots()
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let w = s.current.as_ref()?;
                Some(SlotTraffic {
                    slot: i,
                    pid: w.pid,
                    restarts: s.restarts,
                    totals: *w.traffic.lock().unwrap_or_else(|e| e.into_inner()),
                    routes: w.routes.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                })
            })
            .collect()
    }

    /// Flips the feature module in every worker; returns once each has
    /// answered a probe sent after the switch (the channel keeps order).
    pub async fn set_features(&self, enabled: bool) {
        self.inner.features.store(enabled, Ordering::SeqCst);
        for slot in 0..self.inner.cfg.workers {
            let tx = self
                .slots()
                .get(slot)
                .and_then(|s| s.current.as_ref().map(|w| w.tx.clone()));
            if let Some(tx) = tx
                && tx.send(ToWorker::Features { enabled }).await.is_ok()
            {
                let _ = self
                    .ask(slot, |seq| ToWorker::Ping { seq }, Duration::from_secs(2))
                    .await;
            }
        }
    }

    pub fn features_enabled(&self) -> bool {
        self.inner.features.load(Ordering::SeqCst)
    }

    /// The rows of `GET /admin/workers`.
    pub fn status(&self) -> Vec<WorkerStatus> {
        let paused = *self
            .inner
            .paused_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let unix = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .ok()
        };
        self.slots()
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    i,
                    s,
                    s.current
                        .as_ref()
                        .map(|w| *w.traffic.lock().unwrap_or_else(|e| e.into_inner())),
                )
            })
            .map(|(i, s, traffic)| WorkerStatus {
                slot: i,
                pid: s.current.as_ref().map(|w| w.pid),
                started_unix: s.current.as_ref().and_then(|w| unix(w.started)),
                version: s
                    .current
                    .as_ref()
                    .and_then(|w| w.version.lock().unwrap_or_else(|e| e.into_inner()).clone()),
                healthy: s.healthy,
                rss_bytes: s.rss,
                cpu_percent: s.cpu,
                restarts: s.restarts,
                last_restart_reason: s.last_reason,
                paused_until_unix: paused.and_then(|(_, t)| unix(t)),
                requests: traffic.map_or(0, |t| t.requests),
                errors_5xx: traffic.map_or(0, |t| t.errors_5xx),
                canary: s.serve.is_some(),
                overloaded: s
                    .current
                    .as_ref()
                    .is_some_and(|w| w.overloaded.load(std::sync::atomic::Ordering::Relaxed)),
            })
            .collect()
    }

    /// The merged Prometheus text of every worker, labelled by worker slot,
    /// as each has it now: asked at scrape time, so a scrape right after
    /// traffic counts it. A worker that does not answer within
    /// [`SCRAPE_WAIT`] (busy loading a version, hung) is served from the
    /// last text it sent.
    pub async fn metrics_text(&self) -> String {
        let current: Vec<(usize, u32)> = self
            .slots()
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.current.as_ref().map(|w| (i, w.pid)))
            .collect();
        let asks = current.into_iter().map(|(slot, pid)| {
            let sup = self.clone();
            async move {
                let answer = sup
                    .ask(slot, |seq| ToWorker::Metrics { seq }, SCRAPE_WAIT)
                    .await;
                (slot, pid, answer)
            }
        });
        let answers = futures_join_all(asks).await;
        let mut texts = Vec::new();
        {
            let mut slots = self.slots();
            for (slot, pid, answer) in answers {
                // Replaced meanwhile: the answer (if any) was not its
                // successor's, which has sent nothing yet.
                let Some(w) = slots
                    .get_mut(slot)
                    .and_then(|s| s.current.as_mut())
                    .filter(|w| w.pid == pid)
                else {
                    continue;
                };
                if let Some(FromWorker::MetricsText { text, .. }) = answer {
                    w.metrics = text;
                }
                texts.push((slot, w.metrics.clone()));
            }
        }
        let sources: Vec<(Option<usize>, &str)> = texts
            .iter()
            .map(|(slot, text)| (Some(*slot), text.as_str()))
            .collect();
        metrics_merge::merge(&sources)
    }

    /// Stops every worker: drain, then SIGKILL whatever is left after
    /// `drain_timeout` + `health.grace`.
    pub async fn stop_all(&self) {
        let (txs, mut pids): (Vec<_>, Vec<u32>) = {
            let slots = self.slots();
            let txs = slots
                .iter()
                .filter_map(|s| s.current.as_ref().map(|w| w.tx.clone()))
                .collect();
            let pids = slots
                .iter()
                .flat_map(|s| {
                    s.current
                        .iter()
                        .map(|w| w.pid)
                        .chain(s.draining.iter().copied())
                })
                .collect();
            (txs, pids)
        };
        self.inner.stopping.store(true, Ordering::SeqCst);
        // The workers hold the sockets open while they drain; once the last
        // one closes, connecting is refused rather than queued for nobody.
        drop(
            self.inner
                .listeners
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        for tx in txs {
            let _ = tx.send(ToWorker::Stop).await;
        }
        for pid in &pids {
            let _ = kill(
                Pid::from_raw(i32::try_from(*pid).unwrap_or(0)),
                Signal::SIGTERM,
            );
        }
        let deadline =
            Instant::now() + self.inner.cfg.drain_timeout + self.inner.cfg.health.grace.0;
        while !pids.is_empty() && Instant::now() < deadline {
            pids.retain(|p| alive(*p));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for pid in pids {
            tracing::warn!(pid, "worker did not drain in time: SIGKILL");
            let _ = kill(
                Pid::from_raw(i32::try_from(pid).unwrap_or(0)),
                Signal::SIGKILL,
            );
        }
    }
}

fn alive(pid: u32) -> bool {
    let Ok(p) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0 checks existence; a zombie (exited, not reaped) counts as gone
    // once its exit watcher reaps it.
    kill(Pid::from_raw(p), None).is_ok()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

/// The supervisor's event loop: exits, probes, resource checks.
pub struct SupervisorLoop {
    sup: Supervisor,
    rx: mpsc::UnboundedReceiver<Event>,
}

impl SupervisorLoop {
    pub async fn run(mut self, stop: tokio_util::sync::CancellationToken) {
        let cfg = self.sup.inner.cfg.clone();
        let mut tick = tokio::time::interval(cfg.health.interval.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sys = sysinfo::System::new().ok();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                ev = self.rx.recv() => match ev {
                    Some(ev) => self.on_event(ev),
                    None => return,
                },
                _ = tick.tick() => self.on_tick(&mut sys).await,
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Ready { slot, pid } => {
                let old: Vec<u32> = {
                    let mut slots = self.sup.slots();
                    let Some(s) = slots.get_mut(slot) else { return };
                    if s.current.as_ref().map(|w| w.pid) == Some(pid) {
                        s.healthy = true;
                    }
                    s.draining.clone()
                };
                let sup = self.sup.clone();
                tokio::spawn(async move { sup.share_orphans(true).await });
                // A replacement serves: let the workers it replaced drain.
                for p in old {
                    tracing::info!(slot, pid = p, "replacement ready: draining the old worker");
                    let _ = kill(
                        Pid::from_raw(i32::try_from(p).unwrap_or(0)),
                        Signal::SIGTERM,
                    );
                    let grace =
                        self.sup.inner.cfg.drain_timeout + self.sup.inner.cfg.health.grace.0;
                    tokio::spawn(async move {
                        tokio::time::sleep(grace).await;
                        if alive(p) {
                            let _ = kill(
                                Pid::from_raw(i32::try_from(p).unwrap_or(0)),
                                Signal::SIGKILL,
                            );
                        }
                    });
                }
            }
            Event::Exited { slot, pid, status } => self.on_exit(slot, pid, status),
        }
    }

    fn on_exit(&mut self, slot: usize, pid: u32, status: std::process::ExitStatus) {
        use std::os::unix::process::ExitStatusExt;
        let dead_version: String;
        let reason = {
            let mut slots = self.sup.slots();
            let Some(s) = slots.get_mut(slot) else { return };
            if let Some(i) = s.draining.iter().position(|p| *p == pid) {
                // A replaced worker finished draining: expected.
                s.draining.swap_remove(i);
                return;
            }
            if s.current.as_ref().map(|w| w.pid) != Some(pid) {
                return;
            }
            let reported = s
                .current
                .take()
                .and_then(|w| w.version.lock().unwrap_or_else(|e| e.into_inner()).clone());
            // A worker that died before it reported was starting on its
            // slot's version.
            dead_version = reported.unwrap_or_else(|| {
                s.serve.as_ref().map_or_else(
                    || {
                        self.sup
                            .inner
                            .serve
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .version
                            .clone()
                    },
                    |v| v.version.clone(),
                )
            });
            s.healthy = false;
            if self.sup.inner.stopping.load(Ordering::SeqCst) {
                return;
            }
            let reason = s
                .kill_reason
                .take()
                .unwrap_or(if status.signal().is_some() {
                    RestartReason::Killed
                } else {
                    RestartReason::Exited
                });
            s.restarts = s.restarts.saturating_add(1);
            s.last_reason = Some(reason);
            reason
        };
        tracing::warn!(slot, pid, %status, reason = reason.as_str(), "worker died");
        {
            // Its queue goes to the others until the replacement serves.
            let sup = self.sup.clone();
            tokio::spawn(async move { sup.share_orphans(false).await });
        }
        metrics::counter!("aegis_worker_restarts_total", "reason" => reason.as_str()).increment(1);
        let h = &self.sup.inner.cfg.health;
        let (recent, backoff, since, versions) = {
            let mut deaths = self
                .sup
                .inner
                .deaths
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            deaths.push_back((now, dead_version));
            while deaths
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > h.crash_window.0)
            {
                deaths.pop_front();
            }
            let n = deaths.len();
            // 0 ms for the first death in the window, then 100 ms doubling, capped at 10 s.
            let exp = u32::try_from(n.saturating_sub(1))
                .unwrap_or(u32::MAX)
                .min(7);
            let backoff = if n <= 1 {
                Duration::ZERO
            } else {
                Duration::from_millis(100u64 << exp).min(Duration::from_secs(10))
            };
            let mut versions: Vec<String> = deaths.iter().map(|(_, v)| v.clone()).collect();
            versions.sort();
            versions.dedup();
            (
                n,
                backoff,
                deaths.front().map_or(now, |(t, _)| *t),
                versions,
            )
        };
        let mut delay = backoff;
        if recent >= usize::try_from(h.crash_loop_deaths).unwrap_or(usize::MAX) {
            let pause = h.crash_window.0;
            tracing::error!(
                deaths = recent,
                ?pause,
                "CRASH LOOP: workers keep dying; respawning paused"
            );
            *self
                .sup
                .inner
                .paused_until
                .lock()
                .unwrap_or_else(|e| e.into_inner()) =
                Some((Instant::now() + pause, SystemTime::now() + pause));
            let _ = self
                .sup
                .inner
                .owner_events
                .send(SupervisorEvent::CrashLoop {
                    deaths: recent,
                    pause,
                    since,
                    versions,
                });
            self.sup
                .inner
                .deaths
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            delay = pause;
        }
        let sup = self.sup.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if sup.inner.stopping.load(Ordering::SeqCst) {
                return;
            }
            *sup.inner
                .paused_until
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = None;
            if let Err(e) = sup.spawn(slot) {
                tracing::error!(error = %e, "respawn failed");
            }
        });
    }

    async fn on_tick(&mut self, sys: &mut Option<sysinfo::System>) {
        let cfg = &self.sup.inner.cfg;
        // Probes, in parallel, through each worker's event loop.
        // Each result is kept with the worker it probed: a slot whose worker
        // was replaced (or first started) while the round ran must not get
        // the old worker's miss, which would mark the new one unhealthy and
        // hand its connections to the others until the next round.
        let probed: Vec<Option<u32>> = self
            .sup
            .slots()
            .iter()
            .map(|s| s.current.as_ref().map(|w| w.pid))
            .collect();
        let probes = probed.into_iter().enumerate().map(|(slot, pid)| {
            let sup = self.sup.clone();
            let timeout = cfg.health.timeout.0;
            async move {
                let pong = match pid {
                    Some(_) => sup.ask(slot, |seq| ToWorker::Ping { seq }, timeout).await,
                    None => None,
                };
                (slot, pid, pong.is_some())
            }
        });
        let results = futures_join_all(probes).await;
        let pids: Vec<sysinfo::Pid> = self
            .sup
            .slots()
            .iter()
            .filter_map(|s| s.current.as_ref().map(|w| sysinfo::Pid::from_u32(w.pid)))
            .collect();
        if let Some(sys) = sys.as_mut() {
            sys.refresh_processes_specifics(
                sysinfo::ProcessesToUpdate::Some(&pids),
                true,
                sysinfo::ProcessRefreshKind::nothing()
                    .with_memory()
                    .with_cpu(),
            );
        }
        let mut to_kill = Vec::new();
        let mut to_replace = Vec::new();
        let mut healthy = 0usize;
        {
            let mut slots = self.sup.slots();
            for (slot, probed, ok) in results {
                let Some(s) = slots.get_mut(slot) else {
                    continue;
                };
                let Some(w) = s.current.as_ref() else {
                    continue;
                };
                let pid = w.pid;
                if probed != Some(pid) {
                    continue;
                }
                if let Some(p) = sys
                    .as_ref()
                    .and_then(|sys| sys.process(sysinfo::Pid::from_u32(pid)))
                {
                    s.rss = p.memory();
                    s.cpu = p.cpu_usage();
                }
                if ok {
                    s.failed_probes = 0;
                    s.healthy = true;
                    healthy += 1;
                } else {
                    s.failed_probes = s.failed_probes.saturating_add(1);
                    s.healthy = false;
                    if s.failed_probes >= cfg.health.fall && s.kill_reason.is_none() {
                        tracing::warn!(
                            slot,
                            pid,
                            probes = s.failed_probes,
                            cpu = s.cpu,
                            "worker hung: replacing"
                        );
                        s.kill_reason = Some(RestartReason::Hung);
                        to_kill.push(pid);
                    }
                }
                if ok
                    && s.rss > cfg.health.max_rss.0
                    && s.kill_reason.is_none()
                    && s.draining.is_empty()
                {
                    tracing::warn!(
                        slot,
                        pid,
                        rss = s.rss,
                        limit = cfg.health.max_rss.0,
                        "worker over max_rss: replacing"
                    );
                    s.restarts = s.restarts.saturating_add(1);
                    s.last_reason = Some(RestartReason::Rss);
                    to_replace.push(slot);
                }
            }
        }
        metrics::gauge!("aegis_workers_healthy").set(healthy as f64);
        self.sup.share_orphans(false).await;
        for pid in to_kill {
            let p = Pid::from_raw(i32::try_from(pid).unwrap_or(0));
            let _ = kill(p, Signal::SIGTERM);
            let grace = cfg.health.grace.0;
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                let _ = kill(p, Signal::SIGKILL);
            });
        }
        for slot in to_replace {
            metrics::counter!("aegis_worker_restarts_total", "reason" => "rss").increment(1);
            // The old one keeps serving until the replacement is ready
            // (Event::Ready drains it).
            if let Err(e) = self.sup.spawn(slot) {
                tracing::error!(error = %e, "replacement failed");
            }
        }
    }
}

/// Awaits every future (a tiny join_all, to avoid a dependency).
async fn futures_join_all<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}
