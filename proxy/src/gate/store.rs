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
//! versions/<id>/files/    the snapshot, as the runner and the workers read it
//! versions/<id>/verdict.json
//! versions/<id>/report.json   the sandbox report (or the runner's stderr in stderr.txt)
//! history.jsonl           one line per verdict, newest last
//! sample.jsonl            the traffic sample flushed by the serving process
//! ```

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use aegis_engine::config::source::{ContentHasher, is_config_file};
use serde::{Deserialize, Serialize};

use super::verdict::Verdict;

/// Files in one snapshot, at most.
pub const MAX_FILES: usize = 1000;
/// Default state directory, relative to the working directory.
pub const DEFAULT_STATE_DIR: &str = "aegis-state";

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
    #[error("state directory {path}: {source}")]
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
    /// Reads `dir` as a snapshot.
    pub fn read(dir: &Path, max_file_size: u64) -> Result<Self, StoreError> {
        let entries = std::fs::read_dir(dir).map_err(|source| StoreError::Dir {
            dir: dir.to_path_buf(),
            source,
        })?;
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
            if let Some(bytes) = read_file(&entry.path(), max_file_size)? {
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
            if let Some(bytes) = read_file(&dir.join(&r), max_file_size)? {
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

/// A regular file's bytes (symlinks followed), `None` when it is not a
/// regular file or does not exist.
fn read_file(path: &Path, max: u64) -> Result<Option<Vec<u8>>, StoreError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        // Deleted between the listing and now, or a dangling symlink.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Read {
                file: path.to_path_buf(),
                source,
            });
        }
    };
    if !meta.is_file() {
        return Ok(None);
    }
    if meta.len() > max {
        return Err(StoreError::TooLarge {
            file: path.to_path_buf(),
            size: meta.len(),
            limit: max,
        });
    }
    match std::fs::read(path) {
        Ok(b) if u64::try_from(b.len()).unwrap_or(u64::MAX) <= max => Ok(Some(b)),
        Ok(b) => Err(StoreError::TooLarge {
            file: path.to_path_buf(),
            size: u64::try_from(b.len()).unwrap_or(u64::MAX),
            limit: max,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Read {
            file: path.to_path_buf(),
            source,
        }),
    }
}

/// Relative paths named by `certificate:` or `key:` in YAML text (block or
/// flow style). Absolute paths and paths that climb out are left out: they
/// are read where they are.
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
}

fn state_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::State {
        path: path.to_path_buf(),
        source,
    }
}

impl Store {
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let versions = root.join("versions");
        std::fs::create_dir_all(&versions).map_err(state_err(&versions))?;
        Ok(Self {
            root: root.to_path_buf(),
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
        snap.write_to(&tmp).map_err(state_err(&tmp))?;
        std::fs::rename(&tmp, &dir).map_err(state_err(&dir))?;
        Ok(dir)
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

    pub fn append_history(&self, rec: &Record) -> Result<(), StoreError> {
        let p = self.root.join("history.jsonl");
        let mut line = serde_json::to_vec(rec).map_err(|source| StoreError::Json {
            path: p.clone(),
            source,
        })?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(state_err(&p))?;
        f.write_all(&line).map_err(state_err(&p))?;
        Ok(())
    }

    /// The last `n` verdicts, newest last.
    pub fn history(&self, n: usize) -> Vec<Record> {
        let text = std::fs::read_to_string(self.root.join("history.jsonl")).unwrap_or_default();
        let all: Vec<Record> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let skip = all.len().saturating_sub(n);
        all.into_iter().skip(skip).collect()
    }

    /// Saves a text artifact of a version (`report.json`, `stderr.txt`).
    pub fn save_artifact(&self, id: &str, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let p = self.version_dir(id).join(name);
        atomic_write(&p, bytes).map_err(state_err(&p))
    }

    /// The promoted version, when there is one whose files are present.
    pub fn active(&self) -> Option<String> {
        let id = std::fs::read_to_string(self.root.join("active")).ok()?;
        let id = id.trim().to_string();
        (!id.is_empty() && self.files_dir(&id).is_dir()).then_some(id)
    }

    /// Moves the active pointer: write, fsync, rename, fsync the directory.
    pub fn set_active(&self, id: &str) -> Result<(), StoreError> {
        let p = self.root.join("active");
        atomic_write(&p, format!("{id}\n").as_bytes()).map_err(state_err(&p))
    }
}

/// Writes `path` atomically and durably: a temporary file beside it, fsync,
/// rename over, fsync of the directory.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
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
