//! Running `aegis-sandbox`: a child process that compiles the candidate and
//! the baseline and replays the traffic sample, under limits it applies to
//! itself (RLIMIT_AS or a cgroup, RLIMIT_CPU, RLIMIT_NOFILE, no core dumps,
//! PR_SET_PDEATHSIG, a new network namespace; then an unprivileged user, no
//! capabilities, no_new_privs and a seccomp filter: the runner's
//! `privileges.rs`) plus a wall-clock deadline enforced here, and an
//! environment cleared here ([`RUNNER_ENV_KEPT`]).
//!
//! The conversation, over the child's stdin/stdout, one JSON line each:
//! the runner announces the candidate endpoints the baseline does not have
//! ([`ProbeRequest`]); the gate probes them with TCP connects (the runner
//! has no network) and answers which pools are unreachable
//! ([`ProbeAnswer`]); the runner replays and writes its [`SandboxReport`].
//! After it exited, the gate sends the upstream requests the runner planned
//! (`report.upstream_plan`) to the real endpoints and keeps the comparison
//! in `report.upstream_check` (`upstream_check.rs`).
//! Its stderr is captured: it names the stage the runner is in
//! (`aegis-sandbox: stage …`) and, when an allocation fails under RLIMIT_AS,
//! Rust's "memory allocation of N bytes failed" before the abort, which is
//! how `oom` is told from a crash.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use aegis_engine::config::settings::SandboxLimits;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};

use super::report::{ProbeAnswer, ProbeRequest, SandboxReport};
use super::verdict::{RunnerFailure, SandboxOutcome};

/// The runner's binary name.
pub const RUNNER: &str = "aegis-sandbox";
/// Environment variable naming the runner binary (overrides the look-up).
pub const RUNNER_ENV: &str = "AEGIS_SANDBOX";
/// Open files the runner may have.
pub const RUNNER_NOFILE: u64 = 64;
/// Longest stdout line (the report) accepted from the runner.
const MAX_LINE: u64 = 32 << 20;
/// Stderr kept from the runner (the tail).
const MAX_STDERR: usize = 64 << 10;
/// The only environment variables the runner is started with (when set
/// here): the test hook that holds a runner alive, and Rust's backtrace
/// switch for a panic's report. Everything else is cleared.
pub const RUNNER_ENV_KEPT: [&str; 2] = ["AEGIS_SANDBOX_TEST_HOLD_MS", "RUST_BACKTRACE"];
/// Stage announcements on the runner's stderr.
pub const STAGE_PREFIX: &str = "aegis-sandbox: stage ";

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "cannot find the sandbox runner `{RUNNER}` next to {exe} (build it, or name it in ${RUNNER_ENV})"
    )]
    NotFound { exe: String },
    #[error("cannot start the sandbox runner {runner}: {source}")]
    Spawn {
        runner: String,
        source: std::io::Error,
    },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct SandboxRequest {
    pub candidate: PathBuf,
    pub baseline: Option<PathBuf>,
    pub sample: Option<PathBuf>,
    pub limits: SandboxLimits,
    /// Time for one TCP probe of a candidate endpoint.
    pub probe_timeout: Duration,
    /// Skip the probes (every endpoint counts as reachable).
    pub no_probe: bool,
}

/// One sandbox run, as the gate saw it.
#[derive(Debug, Clone)]
pub struct SandboxRun {
    pub outcome: SandboxOutcome,
    pub stderr: String,
    pub elapsed: Duration,
    /// How the memory limit was enforced (`cgroup` or `rlimit`).
    pub memory_mode: &'static str,
    /// Set when the run ended for a reason that says nothing about the
    /// candidate (see [`not_about_content`]).
    pub machinery: Option<(&'static str, String)>,
}

/// Whether a run's failure is about the machinery rather than the content:
/// the runner killed from outside (SIGKILL, SIGTERM, SIGINT, SIGHUP that the
/// gate did not send), or the wall-clock deadline reached while the runner
/// had been on a CPU for less than half of it (the host was too busy; a
/// candidate that keeps the runner busy past the deadline is a `timeout`). Such a run is retried, never remembered
/// as a verdict on the content. The candidate's own OOM under its memory
/// limit, SIGXCPU at its CPU limit, a panic or SIGSEGV stay content
/// verdicts.
pub fn not_about_content(run: &SandboxRun) -> Option<(&'static str, String)> {
    run.machinery.clone()
}

/// User + system CPU time of a live process, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.get(stat.rfind(')')?.saturating_add(2)..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // In USER_HZ, which Linux fixes at 100 for what it reports to user space.
    let ticks = utime.saturating_add(stime);
    Some(Duration::from_millis(ticks.saturating_mul(10)))
}

fn machinery_failure(
    outcome: &SandboxOutcome,
    status: Option<std::process::ExitStatus>,
    starved: bool,
    deadline: Duration,
) -> Option<(&'static str, String)> {
    let SandboxOutcome::Failed { failure, .. } = outcome else {
        return None;
    };
    if matches!(failure, RunnerFailure::Oom { .. }) {
        return None;
    }
    if starved {
        return Some((
            "deadline",
            format!(
                "the sandbox did not finish within its {deadline:?} wall-clock deadline and was on a CPU less than half of it (a busy host)"
            ),
        ));
    }
    if matches!(failure, RunnerFailure::Timeout { .. }) {
        return None;
    }
    let sig = status.and_then(|s| s.signal())?;
    matches!(
        sig,
        nix::libc::SIGKILL | nix::libc::SIGTERM | nix::libc::SIGINT | nix::libc::SIGHUP
    )
    .then(|| {
        (
            "runner_killed",
            format!(
                "the sandbox runner was killed from outside by {}",
                signal_name(sig)
            ),
        )
    })
}

/// The runner binary.
#[derive(Debug, Clone)]
pub struct Sandbox {
    runner: PathBuf,
}

impl Sandbox {
    pub fn new(runner: PathBuf) -> Self {
        Self { runner }
    }

    /// `$AEGIS_SANDBOX`, else `aegis-sandbox` next to the current executable
    /// (and one directory up, for test binaries under `deps/`).
    pub fn locate() -> Result<Self, SandboxError> {
        if let Some(p) = std::env::var_os(RUNNER_ENV) {
            return Ok(Self::new(PathBuf::from(p)));
        }
        let exe = std::env::current_exe().unwrap_or_default();
        let mut dir = exe.parent();
        for _ in 0..2 {
            let Some(d) = dir else { break };
            let cand = d.join(RUNNER);
            if cand.is_file() {
                return Ok(Self::new(cand));
            }
            dir = d.parent();
        }
        Err(SandboxError::NotFound {
            exe: exe.display().to_string(),
        })
    }

    pub fn runner(&self) -> &Path {
        &self.runner
    }

    /// Runs the sandbox to its end (report, death or deadline).
    pub async fn run(&self, req: &SandboxRequest) -> Result<SandboxRun, SandboxError> {
        let start = Instant::now();
        let cgroup = CgroupMemory::try_create(req.limits.memory.0);
        let mut cmd = tokio::process::Command::new(&self.runner);
        cmd.arg("--candidate").arg(&req.candidate);
        if let Some(b) = &req.baseline {
            cmd.arg("--baseline").arg(b);
        }
        if let Some(s) = &req.sample {
            cmd.arg("--sample").arg(s);
        }
        cmd.arg("--memory")
            .arg(req.limits.memory.0.to_string())
            .arg("--cpu-seconds")
            .arg(req.limits.cpu_seconds.max(1).to_string())
            .arg("--nofile")
            .arg(RUNNER_NOFILE.to_string())
            .arg("--parent-pid")
            .arg(std::process::id().to_string());
        if let Some(cg) = &cgroup {
            cmd.arg("--cgroup").arg(&cg.dir);
        }
        if req.no_probe {
            cmd.arg("--no-probe");
        }
        // The upstream check reaches real upstreams: never when the gate
        // may not touch them (`gate.probe_endpoints: false`, `--no-probe`).
        let check = &req.limits.upstream_check;
        let upstream_check = check.enabled && !req.no_probe && check.max_requests > 0;
        if upstream_check {
            cmd.arg("--upstream-check")
                .arg(check.max_requests.to_string());
        }
        cmd.arg("--uid")
            .arg(req.limits.uid.to_string())
            .arg("--gid")
            .arg(req.limits.gid.to_string());
        // Nothing of this process's environment (the admin token, cloud
        // credentials) reaches the runner: it gets only what it reads.
        cmd.env_clear();
        for name in RUNNER_ENV_KEPT {
            if let Some(v) = std::env::var_os(name) {
                cmd.env(name, v);
            }
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| SandboxError::Spawn {
            runner: self.runner.display().to_string(),
            source,
        })?;
        let stderr_task = child.stderr.take().map(|e| tokio::spawn(read_tail(e)));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();

        let talk = async {
            let report = match (stdout, stdin) {
                (Some(out), Some(inp)) => converse(out, inp, req.probe_timeout).await,
                _ => None,
            };
            let status = child.wait().await;
            (report, status)
        };
        let deadline = req.limits.deadline.0;
        let result = tokio::time::timeout(deadline, talk).await;
        // CPU the runner used by the deadline: what tells a slow candidate
        // from a starved runner on a busy host.
        let mut cpu_at_deadline = None;
        let (report, status, timed_out) = match result {
            Ok((report, status)) => (report, status.ok(), false),
            Err(_) => {
                cpu_at_deadline = child.id().and_then(cpu_time);
                let _ = child.start_kill();
                let status = child.wait().await.ok();
                (None, status, true)
            }
        };
        let stderr = match stderr_task {
            Some(t) => t.await.unwrap_or_default(),
            None => String::new(),
        };
        let oom_killed = cgroup.as_ref().is_some_and(CgroupMemory::oom_killed);
        let memory_mode = if cgroup.is_some() { "cgroup" } else { "rlimit" };
        drop(cgroup);
        let stage = stderr
            .lines()
            .filter_map(|l| l.strip_prefix(STAGE_PREFIX))
            .next_back()
            .map(str::to_string);
        let mut outcome = classify(
            report,
            status,
            timed_out,
            oom_killed,
            &stderr,
            stage,
            &req.limits,
        );
        // The runner has exited (and had no network): the gate sends what it
        // planned, under the check's own limits.
        if upstream_check
            && let SandboxOutcome::Report(r) = &mut outcome
            && let Some(plan) = r.upstream_plan.as_ref().filter(|p| !p.pairs.is_empty())
        {
            let result = super::upstream_check::run(plan, check).await;
            r.upstream_check = Some(result);
        }
        // Starved: less than half the deadline on a CPU (an unknown reading
        // counts as busy: retrying costs little, a wrong verdict sticks).
        let starved = timed_out
            && cpu_at_deadline.is_none_or(|cpu| cpu.as_secs_f64() < deadline.as_secs_f64() / 2.0);
        let machinery = machinery_failure(&outcome, status, starved, deadline);
        Ok(SandboxRun {
            machinery,
            outcome,
            stderr,
            elapsed: start.elapsed(),
            memory_mode,
        })
    }
}

/// Reads the runner's stdout: answers the probe request, returns the report.
async fn converse<R, W>(out: R, mut inp: W, probe_timeout: Duration) -> Option<SandboxReport>
where
    R: AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut out = BufReader::new(out);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut out)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await
            .ok()?;
        if n == 0 {
            return None;
        }
        if let Ok(probe) = serde_json::from_slice::<ProbeRequest>(&line) {
            let unreachable = probe_pools(&probe, probe_timeout).await;
            let mut answer = serde_json::to_vec(&ProbeAnswer { unreachable }).ok()?;
            answer.push(b'\n');
            // A runner that died meanwhile is classified by its exit.
            let _ = inp.write_all(&answer).await;
            let _ = inp.flush().await;
            continue;
        }
        if let Ok(report) = serde_json::from_slice::<SandboxReport>(&line) {
            return Some(report);
        }
    }
}

/// Pools none of whose endpoints accept a TCP connection within `timeout`.
/// Every endpoint is probed at once, so the wait is one timeout.
pub async fn probe_pools(req: &ProbeRequest, timeout: Duration) -> Vec<String> {
    let mut set = tokio::task::JoinSet::new();
    for (pool, endpoints) in &req.probe {
        for e in endpoints {
            let (pool, e) = (pool.clone(), e.clone());
            set.spawn(async move { (pool, probe(&e, timeout).await) });
        }
    }
    let mut reachable: std::collections::BTreeMap<String, bool> = std::collections::BTreeMap::new();
    while let Some(r) = set.join_next().await {
        if let Ok((pool, ok)) = r {
            *reachable.entry(pool).or_default() |= ok;
        }
    }
    reachable
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(pool, _)| pool)
        .collect()
}

/// One TCP connect to `addr` (`host:port`).
pub async fn probe(addr: &str, timeout: Duration) -> bool {
    let attempt = async {
        let addrs = tokio::net::lookup_host(addr).await.ok()?;
        for a in addrs {
            if tokio::net::TcpStream::connect(a).await.is_ok() {
                return Some(());
            }
        }
        None
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(())))
}

async fn read_tail<R: AsyncRead + Unpin>(mut r: R) -> String {
    let mut keep: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                keep.extend_from_slice(buf.get(..n).unwrap_or_default());
                if keep.len() > MAX_STDERR.saturating_mul(2) {
                    let cut = keep.len().saturating_sub(MAX_STDERR);
                    keep.drain(..cut);
                }
            }
        }
    }
    if keep.len() > MAX_STDERR {
        let cut = keep.len().saturating_sub(MAX_STDERR);
        keep.drain(..cut);
    }
    String::from_utf8_lossy(&keep).into_owned()
}

fn signal_name(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(s) => format!("{s} (signal {sig})"),
        Err(_) => format!("signal {sig}"),
    }
}

/// Turns how the runner ended into an outcome.
fn classify(
    report: Option<SandboxReport>,
    status: Option<std::process::ExitStatus>,
    timed_out: bool,
    oom_killed: bool,
    stderr: &str,
    stage: Option<String>,
    limits: &SandboxLimits,
) -> SandboxOutcome {
    let alloc_failed = stderr
        .lines()
        .find(|l| l.contains("memory allocation of") && l.contains("failed"))
        .map(|l| l.trim().to_string());
    let failure = if let Some(line) = alloc_failed {
        RunnerFailure::Oom { detail: line }
    } else if oom_killed {
        RunnerFailure::Oom {
            detail: "killed by the cgroup OOM killer".to_string(),
        }
    } else if timed_out {
        RunnerFailure::Timeout {
            detail: format!("killed at the {:?} wall-clock deadline", limits.deadline.0),
        }
    } else if let (Some(r), Some(s)) = (&report, status) {
        if s.success() {
            return SandboxOutcome::Report(Box::new(r.clone()));
        }
        RunnerFailure::Crashed {
            detail: format!("reported, then exited with {s}"),
        }
    } else {
        match status {
            Some(s) if s.signal() == Some(nix::libc::SIGXCPU) => RunnerFailure::Timeout {
                detail: format!("CPU limit of {} s exceeded (SIGXCPU)", limits.cpu_seconds),
            },
            Some(s) if s.signal().is_some() => RunnerFailure::Crashed {
                detail: format!("killed by {}", signal_name(s.signal().unwrap_or(0))),
            },
            Some(s) => {
                let panic = stderr
                    .lines()
                    .find(|l| l.contains("panicked at"))
                    .map(|l| format!(": {}", l.trim()))
                    .unwrap_or_default();
                match s.code() {
                    Some(101) => RunnerFailure::Crashed {
                        detail: format!("panicked{panic}"),
                    },
                    Some(c) => RunnerFailure::Crashed {
                        detail: format!("exited with status {c} without a report"),
                    },
                    None => RunnerFailure::Crashed {
                        detail: "ended without a report".to_string(),
                    },
                }
            }
            None => RunnerFailure::Crashed {
                detail: "its exit status could not be read".to_string(),
            },
        }
    };
    let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
    let stderr_tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    SandboxOutcome::Failed {
        failure,
        stage,
        stderr_tail,
        peak_rss_bytes: None,
    }
}

/// A cgroup v2 group with `memory.max`, when this machine delegates the
/// memory controller to us. Removed on drop.
struct CgroupMemory {
    dir: PathBuf,
}

impl CgroupMemory {
    fn try_create(limit: u64) -> Option<Self> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?;
        let base = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
        let enabled = std::fs::read_to_string(base.join("cgroup.subtree_control")).ok()?;
        if !enabled.split_whitespace().any(|c| c == "memory") {
            return None;
        }
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = base.join(format!("aegis-sandbox-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        let cg = Self { dir };
        std::fs::write(cg.dir.join("memory.max"), limit.to_string()).ok()?;
        let _ = std::fs::write(cg.dir.join("memory.swap.max"), "0");
        Some(cg)
    }

    fn oom_killed(&self) -> bool {
        std::fs::read_to_string(self.dir.join("memory.events"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse::<u64>().ok())
            })
            .is_some_and(|n| n > 0)
    }
}

impl Drop for CgroupMemory {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}
