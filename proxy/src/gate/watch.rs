//! Watching the config directory: notify events, debounced into one
//! "something changed" per burst.
//!
//! What the gate sees is only "look again": the snapshot's content hash
//! decides whether anything really changed. That makes every odd way of
//! changing a directory the same case: an editor's write-temp-and-rename, a
//! partial write (the debounce, then [`super::store::Snapshot::read_stable`]),
//! a Kubernetes ConfigMap's atomic `..data` symlink swap, a deleted file, and
//! a burst of 100 writes (one candidate). The directory itself being
//! replaced (renamed away, a new one put in its place) is seen through a
//! watch on its parent; the watch on the directory is re-established after
//! every burst. The directory is watched recursively: the TLS files a
//! config names live in subdirectories (`certs/`), and a certificate renewed
//! in place there changes the snapshot (which copies them) without touching
//! a top-level file. If the watcher cannot be created or reports an error, the
//! gate falls back to polling the directory's content hash, and says so.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::store::Snapshot;

/// How often the fallback polls the content hash.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// A burst that never goes quiet is cut after this long.
pub const MAX_BURST: Duration = Duration::from_secs(5);

/// Events from notify, reduced to a wake-up.
struct Signal {
    notify: Notify,
    failed: std::sync::Mutex<Option<String>>,
}

/// A debounced watcher of one directory.
pub struct DirWatcher {
    dir: PathBuf,
    debounce: Duration,
    signal: Arc<Signal>,
    watcher: Option<notify::RecommendedWatcher>,
    /// Why we poll, when we do.
    polling: Option<String>,
    max_file_size: u64,
}

impl DirWatcher {
    /// Starts watching `dir` (and its parent, for a replaced directory).
    pub fn new(dir: &Path, debounce: Duration, max_file_size: u64) -> Self {
        let signal = Arc::new(Signal {
            notify: Notify::new(),
            failed: std::sync::Mutex::new(None),
        });
        let s2 = signal.clone();
        let dir_name = dir.file_name().map(|n| n.to_os_string());
        // notify reports absolute paths: compare with the directory's
        // absolute form, or a relative `--config-dir` (the README's
        // `configs`) would see no file event as its own.
        let watched_dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let canonical_dir = std::fs::canonicalize(dir).unwrap_or_else(|_| watched_dir.clone());
        let abs_dir = watched_dir.clone();
        let handler = move |res: notify::Result<notify::Event>| match res {
            // Reading a file is no change: without this, the gate's own
            // snapshot reads (open, close-without-write, and the access
            // time relatime updates once after a write) would wake the
            // watcher again after every look. A close after a write is
            // kept: it is how an editor's save ends. Metadata alone never
            // changes a snapshot (its id hashes names and bytes).
            Ok(ev)
                if matches!(ev.kind, notify::EventKind::Access(a)
                    if a != notify::event::AccessKind::Close(notify::event::AccessMode::Write))
                    || matches!(
                        ev.kind,
                        notify::EventKind::Modify(notify::event::ModifyKind::Metadata(_))
                    ) => {}
            Ok(ev) => {
                // Events from the parent matter only when they concern the
                // directory itself.
                let relevant = ev.paths.is_empty()
                    || ev.paths.iter().any(|p| {
                        p.starts_with(&watched_dir)
                            || p.starts_with(&canonical_dir)
                            || p.file_name().map(|n| n.to_os_string()) == dir_name
                    });
                if relevant {
                    s2.notify.notify_one();
                }
            }
            Err(e) => {
                *s2.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                s2.notify.notify_one();
            }
        };
        // Watched by its absolute path too: re-watching a relative path
        // after a change lost every later event.
        let dir = abs_dir.as_path();
        let mut me = Self {
            dir: dir.to_path_buf(),
            debounce,
            signal,
            watcher: None,
            polling: None,
            max_file_size,
        };
        match notify::recommended_watcher(handler) {
            Ok(mut w) => {
                let parent = dir
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let r = w
                    .watch(dir, RecursiveMode::Recursive)
                    .and_then(|()| w.watch(parent, RecursiveMode::NonRecursive));
                match r {
                    Ok(()) => me.watcher = Some(w),
                    Err(e) => me.fall_back(&format!("cannot watch {}: {e}", dir.display())),
                }
            }
            Err(e) => me.fall_back(&format!("cannot start the watcher: {e}")),
        }
        me
    }

    fn fall_back(&mut self, why: &str) {
        self.watcher = None;
        tracing::warn!(
            dir = %self.dir.display(),
            "config watcher failed ({why}): falling back to polling content hashes every {POLL_INTERVAL:?}"
        );
        crate::say!("aegis: config watcher failed ({why}): polling every {POLL_INTERVAL:?}");
        self.polling = Some(why.to_string());
    }

    /// Why the watcher polls, when it does.
    pub fn polling(&self) -> Option<&str> {
        self.polling.as_deref()
    }

    /// Re-watches the directory (it may have been replaced).
    fn rewatch(&mut self) {
        if let Some(w) = &mut self.watcher {
            let _ = w.unwatch(&self.dir);
            if let Err(e) = w.watch(&self.dir, RecursiveMode::Recursive) {
                // The directory is gone for now: the parent watch sees it come back.
                tracing::debug!(error = %e, "config directory not watchable yet");
            }
        }
    }

    /// Waits for the next change, debounced. Returns `false` on shutdown.
    pub async fn changed(&mut self, shutdown: &CancellationToken) -> bool {
        if self.polling.is_some() {
            return self.poll_change(shutdown).await;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = self.signal.notify.notified() => {}
        }
        let failed = self
            .signal
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(why) = failed {
            self.fall_back(&why);
            return true;
        }
        // Debounce: wait for `debounce` of quiet, at most MAX_BURST.
        let start = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = self.signal.notify.notified() => {
                    if start.elapsed() >= MAX_BURST {
                        break;
                    }
                }
                _ = tokio::time::sleep(self.debounce) => break,
            }
        }
        self.rewatch();
        true
    }

    async fn poll_change(&mut self, shutdown: &CancellationToken) -> bool {
        let id = |dir: &Path, max: u64| Snapshot::read(dir, max).map(|s| s.id).ok();
        let first = id(&self.dir, self.max_file_size);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
            if id(&self.dir, self.max_file_size) != first {
                return true;
            }
        }
    }
}
