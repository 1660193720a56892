//! Handing listening sockets and the control channel to a worker process by
//! inheritance.
//!
//! The supervisor binds every listener once; each worker inherits the same
//! sockets, so each listener has one accept queue shared by all workers. A
//! worker that dies leaves the queue to the others: nothing waiting in it is
//! lost. (With SO_REUSEPORT each worker would own a queue of its own, and the
//! connections queued on a dying worker's socket would be reset.)
//!
//! The descriptors are created close-on-exec, and only cleared around the
//! spawn of a worker, under [`SPAWN_LOCK`], so no other child (the sandbox
//! runner, for one) inherits a listener by accident. Every spawn in the
//! process goes through that lock.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};

/// Held while a child is spawned: between clearing close-on-exec on the
/// descriptors meant for one worker and setting it again.
pub static SPAWN_LOCK: Mutex<()> = Mutex::new(());

/// Sets or clears close-on-exec.
pub fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> nix::Result<()> {
    let flags = if on {
        FdFlag::FD_CLOEXEC
    } else {
        FdFlag::empty()
    };
    fcntl(fd, FcntlArg::F_SETFD(flags)).map(|_| ())
}

/// Runs `spawn` with `fds` inheritable, restoring close-on-exec after.
pub fn spawn_inheriting<T>(
    fds: &[BorrowedFd<'_>],
    spawn: impl FnOnce() -> std::io::Result<T>,
) -> std::io::Result<T> {
    let _guard = SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for fd in fds {
        set_cloexec(*fd, false).map_err(std::io::Error::from)?;
    }
    let result = spawn();
    for fd in fds {
        let _ = set_cloexec(*fd, true);
    }
    result
}

/// The number a descriptor has (the same in the child, which inherits it).
pub fn raw<F: AsFd>(f: &F) -> RawFd {
    f.as_fd().as_raw_fd()
}

/// Takes ownership of a descriptor number this process inherited.
///
/// # Errors
/// When the number is not an open descriptor of this process.
pub fn adopt(fd: RawFd) -> std::io::Result<OwnedFd> {
    // Check it is open before claiming it, so a wrong number is an error
    // and not a descriptor closed twice.
    fcntl(unsafe_free_borrow(fd)?, FcntlArg::F_GETFD).map_err(std::io::Error::from)?;
    // SAFETY: the number came from the supervisor, which created the
    // descriptor and passed it to this process by inheritance for this
    // process to own; it is open (checked above) and nothing else in this
    // process refers to it (it is adopted once, at start, before any other
    // descriptor is opened by the worker's runtime).
    #[allow(unsafe_code)]
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let _ = set_cloexec(owned.as_fd(), true);
    Ok(owned)
}

fn unsafe_free_borrow(fd: RawFd) -> std::io::Result<BorrowedFd<'static>> {
    if fd < 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "negative descriptor",
        ));
    }
    // SAFETY: only used for the F_GETFD probe above, which fails cleanly
    // (EBADF) on a closed number; the borrow does not outlive the call.
    #[allow(unsafe_code)]
    let b = unsafe { BorrowedFd::borrow_raw(fd) };
    Ok(b)
}
