//! Snapshots and the state directory.
//!
//! A candidate is the whole config set at one moment: every config file of
//! the directory (symlinks followed, as a Kubernetes ConfigMap volume needs)
//! plus the files its `tls` entries name, read as bytes and hashed. The gate
//! never parses or compiles a candidate in its own process before the
//! verdict: finding the TLS files is a textual scan for `certificate:` and
//! `key:` values (a value that names no file is simply not copied; the
//! runner's static stage then reports it).
//!
//! Layout of the state directory (`--state-dir`, else `state_dir` in
//! aegis.yaml, else `./aegis-state`):
//!
//! ```text
//! active                  id of the promoted version (write, fsync, rename, fsync dir)
//! stable                  the last-known-good chain: ids that finished their bake, newest last
//! versions/<id>/files/    the snapshot, as the runner and the workers read it
//! versions/<id>/verdict.json
//! versions/<id>/report.json   the sandbox report (or the runner's stderr in stderr.txt)
//! history.jsonl           one line per verdict, newest last (rotated to history.jsonl.1)
//! sample.jsonl            the traffic sample flushed by the serving process
//! ```
//!
//! The state directory is not trusted blindly: a version's files are served
//! only after their content hash matches the id they are kept under
//! ([`load_verified`], used by the gate and by every worker), a corrupt
//! history line is skipped and counted, never the whole history, and
//! everything is private to the user (directories 0700, files 0600).

use std::io::{Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use aegis_engine::config::source::{ConfinedError, ContentHasher, is_config_file, read_confined};
use serde::{Deserialize, Serialize};

use super::verdict::Verdict;

/// Files in one snapshot, at most.
pub const MAX_FILES: usize = 1000;
/// Default state directory, relative to the working directory.
pub const DEFAULT_STATE_DIR: &str = "aegis-state";
/// `history.jsonl` is rotated (to `history.jsonl.1`) past this size.
pub const HISTORY_ROTATE_BYTES: u64 = 4 << 20;
/// The tail of the history read for `/admin/verdicts` and rollback targets.
const HISTORY_TAIL_BYTES: u64 = 1 << 20;
/// Ids kept in the stable chain.
const STABLE_CHAIN_LEN: usize = 32;
/// Largest file read back from a kept snapshot (they were limited on entry).
const MAX_KEPT_FILE: u64 = 256 << 20;

/// Why a kept version cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("version {id}: no files in the state directory ({dir})")]
    Missing { id: String, dir: PathBuf },
    #[error(
        "version {id}: the files in {dir} hash to {found}, not {id}: they changed after they were kept; not serving them"
    )]
    Tampered {
        id: String,
        dir: PathBuf,
        found: String,
    },
    #[error("version {id}: {source}")]
    Unreadable { id: String, source: StoreError },
    #[error("version {id}: {why}")]
    Invalid { id: String, why: String },
}

/// Reads the kept snapshot `id` from `dir`, checks that its content hash is
/// `id`, and compiles it (settings from its own `aegis.yaml`). The one way a
/// kept version becomes something to serve: the gate's promotion and every
/// worker (start, respawn, canary, rollback) go through it.
pub fn load_verified(
    dir: &Path,
    id: &str,
) -> Result<(aegis_engine::config::Settings, aegis_engine::CompiledConfig), VerifyError> {
    if !dir.is_dir() {
        return Err(VerifyError::Missing {
            id: id.to_string(),
            dir: dir.to_path_buf(),
        });
    }
    let snap = Snapshot::read(dir, MAX_KEPT_FILE).map_err(|source| VerifyError::Unreadable {
        id: id.to_string(),
        source,
    })?;
    if snap.id != id {
        metrics::counter!("aegis_state_verify_failures_total").increment(1);
        return Err(VerifyError::Tampered {
            id: id.to_string(),
            dir: dir.to_path_buf(),
            found: snap.id,
        });
    }
    aegis_engine::load_dir(dir).map_err(|e| VerifyError::Invalid {
        id: id.to_string(),
        why: e.to_string(),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("config directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {size} bytes, over the limit of {limit} bytes (limits.max_file_size)")]
    TooLarge {
        file: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("{dir}: more than {MAX_FILES} config files")]
    TooMany { dir: PathBuf },
    /// A config file, or a file one names, that resolves (symlinks followed)
    /// outside the config directory. Nothing of it was read.
    #[error(
        "{file}: resolves outside the config directory: not read (files of a config set must be inside it; symlinks are followed)"
    )]
    Outside { file: PathBuf },
    #[error("state directory {path}: {}", io_cause(source))]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// A config set as bytes at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Content hash of every file (names and bytes), 12 hex digits.
    pub id: String,
    /// Relative path → bytes, sorted by path.
    pub files: Vec<(String, Vec<u8>)>,
}

impl Snapshot {
    /// Reads `dir` as a snapshot. A config file or a TLS file it names that
    /// resolves outside `dir` (symlinks followed: `leak.yaml -> /etc/shadow`,
    /// `certs -> /etc`) refuses the whole snapshot with
    /// [`StoreError::Outside`] before a byte of it is read, so nothing from
    /// outside reaches a verdict or the state directory. Symlinks that stay
    /// inside (a ConfigMap volume's `..data`) are followed.
    pub fn read(dir: &Path, max_file_size: u64) -> Result<Self, StoreError> {
        let entries = std::fs::read_dir(dir).map_err(|source| StoreError::Dir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let root = std::fs::canonicalize(dir).map_err(|source| StoreError::Dir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let root = [root];
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| StoreError::Dir {
                dir: dir.to_path_buf(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_config_file(&name) {
                continue;
            }
            if let Some(bytes) = read_file(&entry.path(), &root, max_file_size)? {
                files.push((name, bytes));
                if files.len() > MAX_FILES {
                    return Err(StoreError::TooMany {
                        dir: dir.to_path_buf(),
                    });
                }
            }
        }
        let mut refs: Vec<String> = Vec::new();
        for (_, bytes) in &files {
            refs.extend(tls_references(&String::from_utf8_lossy(bytes)));
        }
        refs.sort();
        refs.dedup();
        for r in refs {
            if files.iter().any(|(n, _)| *n == r) || files.len() >= MAX_FILES {
                continue;
            }
            if let Some(bytes) = read_file(&dir.join(&r), &root, max_file_size)? {
                files.push((r, bytes));
            }
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let mut h = ContentHasher::default();
        for (n, b) in &files {
            h.add(n, b);
        }
        Ok(Self {
            id: h.finish(),
            files,
        })
    }

    /// The content of `aegis.yaml`, when present.
    pub fn settings_text(&self) -> Option<String> {
        self.files
            .iter()
            .find(|(n, _)| n == aegis_engine::config::source::SETTINGS_FILE)
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
    }

    /// Writes the files under `dir` (created).
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, bytes) in &self.files {
            let p = dir.join(name);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&p, bytes)?;
        }
        Ok(())
    }
}

/// A regular file's bytes (symlinks followed, confined to `roots`: see
/// [`read_confined`]), `None` when it is not a regular file or does not
/// exist.
fn read_file(path: &Path, roots: &[PathBuf], max: u64) -> Result<Option<Vec<u8>>, StoreError> {
    let file = || path.to_path_buf();
    match read_confined(path, roots, max) {
        Ok(b) => Ok(Some(b)),
        // Deleted between the listing and now, or a dangling symlink.
        Err(ConfinedError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(ConfinedError::NotFile) => Ok(None),
        Err(ConfinedError::Outside { .. }) => Err(StoreError::Outside { file: file() }),
        Err(ConfinedError::TooLarge { size, limit }) => Err(StoreError::TooLarge {
            file: file(),
            size,
            limit,
        }),
        Err(ConfinedError::Changed) => Err(StoreError::Read {
            file: file(),
            source: std::io::Error::other("changed while it was being read"),
        }),
        Err(ConfinedError::Io(source)) => Err(StoreError::Read {
            file: file(),
            source,
        }),
    }
}

/// Relative paths named by `certificate:` or `key:` in YAML text (block or
/// flow style): the files copied with the snapshot. Absolute paths and paths
/// that climb out (`../x.pem`) are left out and nothing is read from them
/// here: the engine reads an absolute path where it is, only under
/// `tls_dirs` of aegis.yaml, and refuses a climbing one, located, in the
/// runner's static stage.
pub fn tls_references(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for key in ["certificate:", "key:"] {
        let mut from = 0usize;
        while let Some(pos) = text.get(from..).and_then(|t| t.find(key)) {
            let at = from.saturating_add(pos);
            from = at.saturating_add(key.len());
            // A whole key: not the tail of `hash_key:` or `x-key:`.
            let before = text.get(..at).and_then(|t| t.chars().next_back());
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-') {
                continue;
            }
            let rest = text
                .get(from..)
                .unwrap_or("")
                .trim_start_matches([' ', '\t']);
            let value: String = rest
                .trim_start_matches(['"', '\''])
                .chars()
                .take_while(|c| !matches!(c, '"' | '\'' | ',' | '}' | ']' | '\n' | '\r' | '#'))
                .collect();
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            let p = Path::new(value);
            if p.components().all(|c| matches!(c, Component::Normal(_))) {
                out.push(value.to_string());
            }
        }
    }
    out
}

/// What the gate decided about one version, kept in the state dir.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Snapshot id.
    pub id: String,
    /// The engine's version of the compiled set, when it compiled.
    pub engine_version: Option<String>,
    pub verdict: Verdict,
    /// Unix time of the verdict, milliseconds.
    pub at_ms: u64,
    /// Time the gate took, seconds.
    pub duration_s: f64,
    /// Where it came from (`configs`, `aegis check`).
    pub source: String,
    /// Requests replayed (recorded + synthesized).
    pub replayed: Option<usize>,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// Corrupt history lines the last read skipped (warned once per change).
    corrupt_seen: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// The cause of a state-directory error in words an operator acts on.
fn io_cause(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(nix::libc::EROFS) => format!("{e}: the state directory is on a read-only file system"),
        Some(nix::libc::ENOSPC) => format!("{e}: the disk holding the state directory is full"),
        Some(nix::libc::EDQUOT) => format!("{e}: the disk quota of the state directory is used up"),
        Some(nix::libc::EACCES) | Some(nix::libc::EPERM) => {
            format!("{e}: this user may not write the state directory")
        }
        _ => e.to_string(),
    }
}

fn state_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::State {
        path: path.to_path_buf(),
        source,
    }
}

/// Makes a directory tree private to this user: 0700 directories, 0600 files.
fn make_private(path: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
        for entry in std::fs::read_dir(path)? {
            make_private(&entry?.path())?;
        }
    } else if meta.is_file() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

impl Store {
    /// Opens (creating) the state directory and checks that it can be
    /// written, so a read-only or full disk is named at start-up instead of
    /// surfacing later as a failed promotion.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let versions = root.join("versions");
        std::fs::create_dir_all(&versions).map_err(state_err(&versions))?;
        for d in [root, versions.as_path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
                .map_err(state_err(d))?;
        }
        let probe = root.join(format!(".probe-{}", std::process::id()));
        atomic_write(&probe, b"ok\n").map_err(state_err(root))?;
        let _ = std::fs::remove_file(&probe);
        Ok(Self {
            root: root.to_path_buf(),
            corrupt_seen: Default::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn version_dir(&self, id: &str) -> PathBuf {
        self.root.join("versions").join(id)
    }

    /// The snapshot's files as the runner and the workers read them.
    pub fn files_dir(&self, id: &str) -> PathBuf {
        self.version_dir(id).join("files")
    }

    pub fn sample_path(&self) -> PathBuf {
        self.root.join("sample.jsonl")
    }

    fn history_path(&self) -> PathBuf {
        self.root.join("history.jsonl")
    }

    /// Keeps the snapshot under its id (once: a directory is written beside
    /// and renamed into place, so a crash never leaves half a version).
    pub fn save_snapshot(&self, snap: &Snapshot) -> Result<PathBuf, StoreError> {
        let dir = self.files_dir(&snap.id);
        if dir.is_dir() {
            return Ok(dir);
        }
        let vdir = self.version_dir(&snap.id);
        std::fs::create_dir_all(&vdir).map_err(state_err(&vdir))?;
        let tmp = vdir.join(format!(".files.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let written = snap.write_to(&tmp).and_then(|()| make_private(&vdir));
        if let Err(source) = written {
            // A half-written copy must not stay behind (a full disk).
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(StoreError::State { path: tmp, source });
        }
        std::fs::rename(&tmp, &dir).map_err(state_err(&dir))?;
        Ok(dir)
    }

    /// Replaces the kept files of `snap.id` (a copy found tampered with or
    /// incomplete) by `snap`, whose content hashes to that id.
    pub fn repair_snapshot(&self, snap: &Snapshot) -> Result<PathBuf, StoreError> {
        let dir = self.files_dir(&snap.id);
        let aside = self
            .version_dir(&snap.id)
            .join(format!(".files.bad-{}", std::process::id()));
        if dir.exists() {
            std::fs::rename(&dir, &aside).map_err(state_err(&dir))?;
        }
        let saved = self.save_snapshot(snap);
        let _ = std::fs::remove_dir_all(&aside);
        saved
    }

    /// The verdict already given to `id`, if any.
    pub fn record(&self, id: &str) -> Option<Record> {
        let p = self.version_dir(id).join("verdict.json");
        let text = std::fs::read_to_string(p).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Keeps a verdict (and appends it to the history).
    pub fn save_record(&self, rec: &Record) -> Result<(), StoreError> {
        let p = self.version_dir(&rec.id).join("verdict.json");
        let json = serde_json::to_vec_pretty(rec).map_err(|source| StoreError::Json {
            path: p.clone(),
            source,
        })?;
        atomic_write(&p, &json).map_err(state_err(&p))?;
        self.append_history(rec)
    }

    /// Appends one line to the history, rotating it past
    /// [`HISTORY_ROTATE_BYTES`] (one older generation is kept).
    pub fn append_history(&self, rec: &Record) -> Result<(), StoreError> {
        let p = self.history_path();
        let mut line = serde_json::to_vec(rec).map_err(|source| StoreError::Json {
            path: p.clone(),
            source,
        })?;
        line.push(b'\n');
        if std::fs::metadata(&p).is_ok_and(|m| m.len() > HISTORY_ROTATE_BYTES) {
            let old = self.root.join("history.jsonl.1");
            std::fs::rename(&p, &old).map_err(state_err(&p))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&p)
            .map_err(state_err(&p))?;
        f.write_all(&line).map_err(state_err(&p))?;
        Ok(())
    }

    /// The last `n` verdicts, newest last, read from the tail of the history
    /// (a bounded read, whatever its size). A line that is not a verdict (a
    /// torn write, bytes that are not UTF-8, an edit by hand) is skipped
    /// with a counted warning.
    pub fn history(&self, n: usize) -> Vec<Record> {
        let bytes = read_tail(&self.history_path(), HISTORY_TAIL_BYTES).unwrap_or_default();
        let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        if u64::try_from(bytes.len()).unwrap_or(u64::MAX) >= HISTORY_TAIL_BYTES && !lines.is_empty()
        {
            // The first line of a tail read is cut: not corrupt, just partial.
            lines.remove(0);
        }
        let mut bad = 0u64;
        let mut all: Vec<Record> = Vec::new();
        for l in lines {
            if l.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<Record>(l) {
                Ok(r) => all.push(r),
                Err(_) => bad = bad.saturating_add(1),
            }
        }
        // A gauge of what the last read skipped (each read sees the same
        // lines again: a counter would count them once per request).
        metrics::gauge!("aegis_state_corrupt_history_lines").set(bad as f64);
        let before = self
            .corrupt_seen
            .swap(bad, std::sync::atomic::Ordering::Relaxed);
        if bad > 0 && bad != before {
            tracing::warn!(
                lines = bad,
                file = %self.history_path().display(),
                "skipped history lines that are not verdicts"
            );
        }
        let skip = all.len().saturating_sub(n);
        all.into_iter().skip(skip).collect()
    }

    /// Saves a text artifact of a version (`report.json`, `stderr.txt`).
    pub fn save_artifact(&self, id: &str, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let p = self.version_dir(id).join(name);
        atomic_write(&p, bytes).map_err(state_err(&p))
    }

    /// The id the active pointer names, whether or not its files are there.
    pub fn active_pointer(&self) -> Option<String> {
        let id = std::fs::read_to_string(self.root.join("active")).ok()?;
        let id = id.trim().to_string();
        is_id(&id).then_some(id)
    }

    /// The promoted version, when there is one whose files are present.
    pub fn active(&self) -> Option<String> {
        self.active_pointer()
            .filter(|id| self.files_dir(id).is_dir())
    }

    /// Moves the active pointer: write, fsync, rename, fsync the directory.
    pub fn set_active(&self, id: &str) -> Result<(), StoreError> {
        let p = self.root.join("active");
        atomic_write(&p, format!("{id}\n").as_bytes()).map_err(state_err(&p))
    }

    /// The last-known-good chain: versions that finished their bake (or
    /// were served when nothing else had), newest last. Only these are
    /// rollback targets.
    pub fn stable_chain(&self) -> Vec<String> {
        let text = std::fs::read(self.root.join("stable")).unwrap_or_default();
        String::from_utf8_lossy(&text)
            .lines()
            .map(str::trim)
            .filter(|l| is_id(l))
            .map(str::to_string)
            .collect()
    }

    /// Appends `id` to the stable chain (moved to the end if it was there).
    pub fn mark_stable(&self, id: &str) -> Result<(), StoreError> {
        let mut chain = self.stable_chain();
        if chain.last().map(String::as_str) == Some(id) {
            return Ok(());
        }
        chain.retain(|c| c != id);
        chain.push(id.to_string());
        let skip = chain.len().saturating_sub(STABLE_CHAIN_LEN);
        let text: String = chain.iter().skip(skip).map(|c| format!("{c}\n")).collect();
        let p = self.root.join("stable");
        atomic_write(&p, text.as_bytes()).map_err(state_err(&p))
    }
}

/// A snapshot id: 12 lowercase hex digits (what [`ContentHasher`] makes).
fn is_id(s: &str) -> bool {
    s.len() == 12
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The last `max` bytes of a file (all of it when shorter).
fn read_tail(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(std::io::SeekFrom::Start(len.saturating_sub(max)))?;
    let mut out = Vec::new();
    f.take(max).read_to_end(&mut out)?;
    Ok(out)
}

/// Writes `path` atomically and durably: a temporary file beside it (mode
/// 0600), fsync, rename over, fsync of the directory.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tls_references() {
        let t = "tls:\n  - server_names: [a]\n    certificate: certs/a.pem\n    key: \"certs/a.key\"\n  - { certificate: b.pem, key: /abs/b.key }\nupstreams:\n  - name: x\n    balance: { hash_key: client_ip }\n    key: ../up.pem\n";
        let r = tls_references(t);
        assert_eq!(r, vec!["certs/a.pem", "b.pem", "certs/a.key"]);
    }

    #[test]
    fn snapshot_refuses_what_resolves_outside_and_copies_nothing_of_it() {
        const SECRET: &str = "containment-secret-line: 1";
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("shadow"), format!("{SECRET}\n")).unwrap();
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("routes.yaml"), "routes: []\n").unwrap();
        std::os::unix::fs::symlink(outside.path().join("shadow"), d.path().join("leak.yaml"))
            .unwrap();
        let e = Snapshot::read(d.path(), 1 << 20).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, StoreError::Outside { .. }), "{msg}");
        assert!(
            msg.contains("leak.yaml: resolves outside the config directory"),
            "{msg}"
        );
        assert!(!msg.contains("containment-secret-line"), "{msg}");
        std::fs::remove_file(d.path().join("leak.yaml")).unwrap();

        // A TLS file named relative to the directory, through a symlink out.
        std::os::unix::fs::symlink(outside.path(), d.path().join("certs")).unwrap();
        std::fs::write(
            d.path().join("tls.yaml"),
            "tls:\n - certificate: certs/shadow\n",
        )
        .unwrap();
        let msg = Snapshot::read(d.path(), 1 << 20).unwrap_err().to_string();
        assert!(
            msg.contains("certs/shadow: resolves outside the config directory"),
            "{msg}"
        );
        std::fs::remove_file(d.path().join("certs")).unwrap();

        // `..` and absolute names are not copied (the engine refuses them).
        let abs = outside.path().join("shadow").display().to_string();
        std::fs::write(
            d.path().join("tls.yaml"),
            format!("tls:\n - {{ certificate: ../shadow, key: \"{abs}\" }}\n"),
        )
        .unwrap();
        let s = Snapshot::read(d.path(), 1 << 20).unwrap();
        let names: Vec<&str> = s.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["routes.yaml", "tls.yaml"]);
        let leaked = |b: &Vec<u8>| b.starts_with(SECRET.as_bytes());
        assert!(!s.files.iter().any(|(_, b)| leaked(b)));
    }

    #[test]
    fn snapshot_follows_a_configmap_volumes_inside_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let ts = d.path().join("..2026_12_01_00_00_00.123");
        std::fs::create_dir_all(ts.join("certs")).unwrap();
        std::fs::write(ts.join("routes.yaml"), "routes: []\n").unwrap();
        std::fs::write(ts.join("tls.yaml"), "tls:\n - certificate: certs/a.pem\n").unwrap();
        std::fs::write(ts.join("certs/a.pem"), "PEM").unwrap();
        std::os::unix::fs::symlink("..2026_12_01_00_00_00.123", d.path().join("..data")).unwrap();
        for f in ["routes.yaml", "tls.yaml", "certs"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), d.path().join(f)).unwrap();
        }
        let s = Snapshot::read(d.path(), 1 << 20).unwrap();
        let names: Vec<&str> = s.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["certs/a.pem", "routes.yaml", "tls.yaml"]);
    }

    #[test]
    fn snapshot_hash_follows_content_and_copies_references() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("routes.yaml"), "routes: []\n").unwrap();
        std::fs::write(d.path().join("notes.md"), "x").unwrap();
        std::fs::write(d.path().join(".routes.yaml.swp"), "x").unwrap();
        std::fs::create_dir(d.path().join("certs")).unwrap();
        std::fs::write(d.path().join("certs/a.pem"), "PEM").unwrap();
        let a = Snapshot::read(d.path(), 1 << 20).unwrap();
        assert_eq!(a.files.len(), 1);
        std::fs::write(
            d.path().join("tls.yaml"),
            "tls:\n - certificate: certs/a.pem\n",
        )
        .unwrap();
        let b = Snapshot::read(d.path(), 1 << 20).unwrap();
        assert_eq!(b.files.len(), 3);
        assert_ne!(a.id, b.id);
        assert_eq!(b, Snapshot::read(d.path(), 1 << 20).unwrap());

        let s = tempfile::tempdir().unwrap();
        let store = Store::open(s.path()).unwrap();
        let files = store.save_snapshot(&b).unwrap();
        assert_eq!(Snapshot::read(&files, 1 << 20).unwrap().id, b.id);
        assert_eq!(store.active(), None);
        store.set_active(&b.id).unwrap();
        assert_eq!(store.active().as_deref(), Some(b.id.as_str()));
    }
}
