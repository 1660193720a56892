//! The limits the runner applies to itself, first thing, while it is still
//! single-threaded: so no `pre_exec` (and no unsafe) is needed in the parent,
//! and RLIMIT_AS, which counts every thread's stack and arena, is a memory
//! limit for this one process.
//!
//! Each limit that cannot be applied is reported in words, never silently
//! skipped; only the memory and CPU limits are required (the gate's verdicts
//! mean nothing without them).

use std::path::Path;

use aegis_proxy::gate::report::Isolation;
use nix::sys::resource::{Resource, setrlimit};

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("cannot set {what}: {source}")]
    Rlimit {
        what: &'static str,
        source: nix::Error,
    },
    #[error("the gate that started this runner (pid {0}) is gone")]
    Orphan(u32),
}

/// What to apply.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub memory: u64,
    pub cpu_seconds: u64,
    pub nofile: u64,
    pub parent_pid: Option<u32>,
    /// A cgroup v2 directory (with memory.max set) to move into.
    pub cgroup: Option<std::path::PathBuf>,
}

fn mib(b: u64) -> String {
    format!("{} MiB", b >> 20)
}

/// Applies every limit; returns what was applied, for the report. (Fields
/// are filled in the order the limits are applied.)
#[allow(clippy::field_reassign_with_default)]
pub fn apply(w: &Wanted) -> Result<Isolation, LimitError> {
    let mut iso = Isolation::default();

    // Die with the gate: a runner must never outlive the process that judges it.
    iso.parent_death = match nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL) {
        Ok(()) => "SIGKILL on parent death".to_string(),
        Err(e) => format!("none: {e}"),
    };
    if let Some(ppid) = w.parent_pid {
        // The parent may have died before PR_SET_PDEATHSIG took effect.
        if u32::try_from(nix::unistd::getppid().as_raw()).ok() != Some(ppid) {
            return Err(LimitError::Orphan(ppid));
        }
    }

    // No network: a new, empty network namespace (only loopback, down).
    iso.network = match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        Ok(()) => "new network namespace".to_string(),
        Err(first) => match nix::sched::unshare(
            nix::sched::CloneFlags::CLONE_NEWUSER | nix::sched::CloneFlags::CLONE_NEWNET,
        ) {
            Ok(()) => "new user and network namespace".to_string(),
            Err(e) => format!("none: unshare(CLONE_NEWNET): {first}; with CLONE_NEWUSER: {e}"),
        },
    };

    // No core dumps (a dump of a 600 MB config helps nobody and fills disks).
    let core = setrlimit(Resource::RLIMIT_CORE, 0, 0);
    let dumpable = nix::sys::prctl::set_dumpable(false);
    iso.core_dumps = match (core, dumpable) {
        (Ok(()), Ok(())) => "off (RLIMIT_CORE 0, not dumpable)".to_string(),
        (c, d) => format!("partly: RLIMIT_CORE {c:?}, PR_SET_DUMPABLE {d:?}"),
    };

    setrlimit(Resource::RLIMIT_NOFILE, w.nofile, w.nofile).map_err(|source| {
        LimitError::Rlimit {
            what: "RLIMIT_NOFILE",
            source,
        }
    })?;
    iso.nofile = format!("RLIMIT_NOFILE {}", w.nofile);

    // SIGXCPU at the soft limit (the gate reports `timeout`), SIGKILL 2 s later.
    let cpu = w.cpu_seconds.max(1);
    setrlimit(Resource::RLIMIT_CPU, cpu, cpu.saturating_add(2)).map_err(|source| {
        LimitError::Rlimit {
            what: "RLIMIT_CPU",
            source,
        }
    })?;
    iso.cpu = format!("RLIMIT_CPU {cpu} s");

    iso.memory = match w.cgroup.as_deref().map(join_cgroup) {
        Some(Ok(())) => format!("cgroup memory.max {}", mib(w.memory)),
        other => {
            setrlimit(Resource::RLIMIT_AS, w.memory, w.memory).map_err(|source| {
                LimitError::Rlimit {
                    what: "RLIMIT_AS",
                    source,
                }
            })?;
            match other {
                Some(Err(e)) => format!("RLIMIT_AS {} (cgroup join failed: {e})", mib(w.memory)),
                _ => format!("RLIMIT_AS {}", mib(w.memory)),
            }
        }
    };
    Ok(iso)
}

fn join_cgroup(dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
}

/// Peak RSS (bytes) and CPU time (seconds) of this process so far.
pub fn usage() -> (u64, f64) {
    match nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            // ru_maxrss is in KiB on Linux.
            let rss = u64::try_from(u.max_rss()).unwrap_or(0).saturating_mul(1024);
            let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            (rss, secs(u.user_time()) + secs(u.system_time()))
        }
        Err(_) => (0, 0.0),
    }
}
