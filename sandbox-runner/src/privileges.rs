//! Dropping privileges: the runner replays traffic recorded from the
//! internet through a config nobody has vouched for yet, so it should be
//! able to do as little as possible if either finds a bug in it.
//!
//! Two steps, because the snapshot it is given is the gate's private copy
//! (0600 files under the 0700 state directory, owned by root when the proxy
//! runs as root) and the compile reads certificate files by path:
//!
//! 1. [`drop_to_reader`], first thing after the resource limits (and after
//!    the traffic sample is read): the bounding, ambient and inheritable
//!    capability sets are cleared; started as root, the runner switches to
//!    the configured uid/gid (`gate.sandbox.uid`/`gid`, default 65534,
//!    `nobody`) with no supplementary groups, and keeps exactly one
//!    capability, CAP_DAC_READ_SEARCH (read any file, write none; the
//!    snapshot and its `tls_dirs`), or CAP_DAC_OVERRIDE where the container
//!    did not give it the first; `PR_SET_NO_NEW_PRIVS` is set and a seccomp
//!    filter installed (see [`DENIED`]).
//! 2. [`drop_all`], after both configs are compiled and before the probe
//!    and the replay: the last capability goes too. The replay runs with no
//!    capability at all as an unprivileged user.
//!
//! The environment is cleared by the gate when it starts the runner (see
//! `aegis_proxy::gate::sandbox`): `/proc/<pid>/environ` shows the block a
//! process was started with, so only the parent can keep a secret such as
//! `AEGIS_ADMIN_TOKEN` out of it.
//!
//! Not started as root (a developer's `cargo test`, an unprivileged
//! service), the runner cannot change its user and does not try; it still
//! clears what it can, sets no_new_privs and installs the filter.

use std::collections::{BTreeMap, HashSet};

use caps::{CapSet, Capability};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("started as root, cannot switch to uid {uid} gid {gid}: {step}: {source}")]
    Switch {
        uid: u32,
        gid: u32,
        step: &'static str,
        source: nix::Error,
    },
    #[error("cannot drop capabilities ({step}): {why}")]
    Caps { step: &'static str, why: String },
}

/// Whom to become when started as root.
#[derive(Debug, Clone, Copy)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// System calls the runner never needs; each fails with EPERM. A deny-list
/// (not an allow-list) because the runner's set of calls comes from std,
/// tokio and the allocator, which change under us; these are the calls an
/// exploit wants: running programs, tracing or reading other processes,
/// namespaces and mounts, kernel modules and keys, BPF and perf, io_uring,
/// opening files by handle (the classic escape with CAP_DAC_READ_SEARCH),
/// sockets (the runner talks over its stdin and stdout only; `socketpair`
/// stays allowed: tokio's signal driver makes one, and a pair reaches
/// nothing outside the process), changing
/// users, owners or the clock, rebooting.
pub const DENIED: &[(&str, i64)] = &[
    ("execve", libc::SYS_execve),
    ("execveat", libc::SYS_execveat),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("socket", libc::SYS_socket),
    ("connect", libc::SYS_connect),
    ("bind", libc::SYS_bind),
    ("listen", libc::SYS_listen),
    ("accept4", libc::SYS_accept4),
    ("setuid", libc::SYS_setuid),
    ("setgid", libc::SYS_setgid),
    ("setreuid", libc::SYS_setreuid),
    ("setregid", libc::SYS_setregid),
    ("setresuid", libc::SYS_setresuid),
    ("setresgid", libc::SYS_setresgid),
    ("setgroups", libc::SYS_setgroups),
    ("setfsuid", libc::SYS_setfsuid),
    ("setfsgid", libc::SYS_setfsgid),
    ("fchown", libc::SYS_fchown),
    ("fchownat", libc::SYS_fchownat),
    ("mknodat", libc::SYS_mknodat),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("acct", libc::SYS_acct),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("personality", libc::SYS_personality),
    ("quotactl", libc::SYS_quotactl),
    ("syslog", libc::SYS_syslog),
    ("vhangup", libc::SYS_vhangup),
    #[cfg(target_arch = "x86_64")]
    ("accept", libc::SYS_accept),
    #[cfg(target_arch = "x86_64")]
    ("chown", libc::SYS_chown),
    #[cfg(target_arch = "x86_64")]
    ("lchown", libc::SYS_lchown),
    #[cfg(target_arch = "x86_64")]
    ("mknod", libc::SYS_mknod),
    #[cfg(target_arch = "x86_64")]
    ("iopl", libc::SYS_iopl),
    #[cfg(target_arch = "x86_64")]
    ("ioperm", libc::SYS_ioperm),
];

/// Step 1 (see the module docs). Returns what was done, in words, for the
/// report's `isolation.privileges`. Fails only when started as root and the
/// user cannot be changed: a runner that would replay as root refuses to.
pub fn drop_to_reader(run_as: RunAs) -> Result<String, PrivilegeError> {
    let mut words = Vec::new();
    let root = nix::unistd::geteuid().is_root();
    let permitted = caps::read(None, CapSet::Permitted).unwrap_or_default();
    // Clearing the bounding set needs CAP_SETPCAP: while still root.
    match caps::clear(None, CapSet::Bounding) {
        Ok(()) => words.push("bounding set cleared".to_string()),
        Err(e) => words.push(format!("bounding set kept ({e})")),
    }
    for (set, step) in [
        (CapSet::Ambient, "ambient"),
        (CapSet::Inheritable, "inheritable"),
    ] {
        caps::clear(None, set).map_err(|e| PrivilegeError::Caps {
            step,
            why: e.to_string(),
        })?;
    }
    if root {
        let reader = [
            Capability::CAP_DAC_READ_SEARCH,
            Capability::CAP_DAC_OVERRIDE,
        ]
        .into_iter()
        .find(|c| permitted.contains(c));
        switch_user(run_as)?;
        let keep: HashSet<Capability> = reader.into_iter().collect();
        // setresuid from root has cleared the effective set; keep-caps left
        // the permitted one: narrow it to the reader.
        for (set, step) in [
            (CapSet::Permitted, "permitted"),
            (CapSet::Effective, "effective"),
        ] {
            caps::set(None, set, &keep).map_err(|e| PrivilegeError::Caps {
                step,
                why: e.to_string(),
            })?;
        }
        words.insert(0, format!("uid {} gid {}", run_as.uid, run_as.gid));
        words.push(match reader {
            Some(c) => format!("{c} kept until the configs are compiled"),
            None => "no capabilities".to_string(),
        });
    } else {
        clear_caps()?;
        words.insert(
            0,
            format!(
                "uid {} (not started as root: user unchanged)",
                nix::unistd::geteuid()
            ),
        );
        words.push("no capabilities".to_string());
    }
    words.push(match nix::sys::prctl::set_no_new_privs() {
        Ok(()) => "no_new_privs".to_string(),
        Err(e) => format!("no_new_privs failed: {e}"),
    });
    words.push(match install_seccomp() {
        Ok(n) => format!("seccomp filter ({n} system calls denied)"),
        Err(why) => format!("no seccomp filter: {why}"),
    });
    Ok(words.join(", "))
}

/// Step 2: no capability left, for the probe and the replay.
pub fn drop_all() -> Result<(), PrivilegeError> {
    clear_caps()
}

fn clear_caps() -> Result<(), PrivilegeError> {
    for (set, step) in [
        (CapSet::Effective, "effective"),
        (CapSet::Permitted, "permitted"),
    ] {
        caps::clear(None, set).map_err(|e| PrivilegeError::Caps {
            step,
            why: e.to_string(),
        })?;
    }
    Ok(())
}

/// setgroups([]), setresgid, setresuid, keeping the permitted capabilities
/// across the switch (PR_SET_KEEPCAPS) so the reader capability survives.
fn switch_user(run_as: RunAs) -> Result<(), PrivilegeError> {
    let err = |step| {
        move |source| PrivilegeError::Switch {
            uid: run_as.uid,
            gid: run_as.gid,
            step,
            source,
        }
    };
    nix::sys::prctl::set_keepcaps(true).map_err(err("PR_SET_KEEPCAPS"))?;
    nix::unistd::setgroups(&[]).map_err(err("setgroups"))?;
    let gid = nix::unistd::Gid::from_raw(run_as.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(err("setresgid"))?;
    let uid = nix::unistd::Uid::from_raw(run_as.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(err("setresuid"))?;
    nix::sys::prctl::set_keepcaps(false).map_err(err("PR_SET_KEEPCAPS"))?;
    if nix::unistd::geteuid().is_root() || nix::unistd::getuid().is_root() {
        return Err(PrivilegeError::Switch {
            uid: run_as.uid,
            gid: run_as.gid,
            step: "check",
            source: nix::Error::EPERM,
        });
    }
    Ok(())
}

/// Installs [`DENIED`] as a seccomp filter (EPERM for each, everything else
/// allowed); returns how many calls it denies.
fn install_seccomp() -> Result<usize, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        DENIED.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
    let n = rules.len();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(u32::try_from(libc::EPERM).unwrap_or(1)),
        arch,
    )
    .map_err(|e| e.to_string())?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())?;
    seccompiler::apply_filter(&program).map_err(|e| e.to_string())?;
    Ok(n)
}
