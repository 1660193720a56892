//! Reading a config directory into memory: which files belong to the set,
//! and the set's content hash.
//!
//! The whole set is read before anything is parsed, so a compiled config
//! always corresponds to one snapshot of the directory and its version (the
//! hash) names exactly those bytes.
//!
//! Every file is read confined ([`read_confined`]): a config file, or a file
//! one names, that resolves (symlinks followed) outside the config directory
//! is refused before a byte of it is read. Otherwise `ln -s /etc/shadow
//! leak.yaml` would put the first line of /etc/shadow into a parse error on
//! the admin API. Symlinks that stay inside (a Kubernetes ConfigMap volume's
//! `routes.yaml -> ..data/routes.yaml`, `..data -> ..2026_…`) are followed.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

/// The name of the process-settings file.
pub const SETTINGS_FILE: &str = "aegis.yaml";

/// One file of a config set, read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// File name relative to the config directory (what errors show).
    pub name: String,
    pub text: String,
}

/// A config directory as read at one moment.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub dir: PathBuf,
    /// `aegis.yaml`, when present.
    pub settings: Option<SourceFile>,
    /// Every other `*.yaml` / `*.yml`, sorted by name.
    pub files: Vec<SourceFile>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
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
    #[error("{file}: not UTF-8 text")]
    NotText { file: PathBuf },
    #[error(
        "{file}: resolves to {target}, outside the config directory: not read (config files must be inside it; symlinks are followed)"
    )]
    Outside { file: PathBuf, target: PathBuf },
    #[error("{file}: changed while it was being read; read again")]
    Changed { file: PathBuf },
}

/// Why [`read_confined`] read nothing.
#[derive(Debug, thiserror::Error)]
pub enum ConfinedError {
    /// The path resolves (symlinks followed) outside every allowed directory.
    #[error("resolves to {}, outside the directories it may be read from", target.display())]
    Outside { target: PathBuf },
    /// A directory, a device, a FIFO: nothing a config reads.
    #[error("not a regular file")]
    NotFile,
    #[error("{size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    /// The file the name resolves to was replaced between the check and the
    /// read (a rename-on-save, or a race for a path outside).
    #[error("changed while it was being read")]
    Changed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads the regular file `path` resolves to, symlinks followed, when it lies
/// inside one of `roots` (canonical directories, see
/// [`std::fs::canonicalize`]) and holds at most `max` bytes. Nothing is read
/// from a file outside. The content is never part of an error.
pub fn read_confined(path: &Path, roots: &[PathBuf], max: u64) -> Result<Vec<u8>, ConfinedError> {
    // An editor's rename-on-save between the check and the read is no
    // attack: try again a few times before calling it a change.
    let mut tries: u8 = 0;
    loop {
        match read_confined_once(path, roots, max) {
            Err(ConfinedError::Changed) if tries < 3 => tries = tries.saturating_add(1),
            other => return other,
        }
    }
}

fn read_confined_once(path: &Path, roots: &[PathBuf], max: u64) -> Result<Vec<u8>, ConfinedError> {
    let target = resolve_within(path, roots)?;
    let meta = std::fs::metadata(&target)?;
    if !meta.is_file() {
        return Err(ConfinedError::NotFile);
    }
    if meta.len() > max {
        return Err(ConfinedError::TooLarge {
            size: meta.len(),
            limit: max,
        });
    }
    let file = std::fs::File::open(&target)?;
    let held = file.metadata()?;
    // The check and the open are two steps: a directory on the way swapped
    // for a symlink in between would open a file outside. So the file held
    // open must be the one the name resolves to inside, after the open.
    let again = resolve_within(path, roots)?;
    let now = std::fs::metadata(&again)?;
    if !held.is_file() || (held.dev(), held.ino()) != (now.dev(), now.ino()) {
        return Err(ConfinedError::Changed);
    }
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if size > max {
        return Err(ConfinedError::TooLarge { size, limit: max });
    }
    Ok(bytes)
}

/// `path` resolved (symlinks followed), when inside one of `roots`.
fn resolve_within(path: &Path, roots: &[PathBuf]) -> Result<PathBuf, ConfinedError> {
    let target = std::fs::canonicalize(path)?;
    if roots.iter().any(|r| target.starts_with(r)) {
        Ok(target)
    } else {
        Err(ConfinedError::Outside { target })
    }
}

/// True when the relative `path`, read as written, leaves the directory it
/// is relative to (`../x`, `a/../../x`) or is not relative at all. Checked
/// before the file system is asked, so a refused name does not tell whether
/// something exists out there.
pub fn climbs_out(path: &Path) -> bool {
    let mut depth: usize = 0;
    for c in path.components() {
        match c {
            Component::Normal(_) => depth = depth.saturating_add(1),
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return true,
            },
            Component::RootDir | Component::Prefix(_) => return true,
        }
    }
    false
}

/// `path` with `.` and `..` taken out as written (no symlinks resolved): the
/// place an absolute path claims, to compare with allowed directories before
/// the file system is asked.
pub fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// True for files that editors, backups and hidden tooling leave behind.
pub fn is_ignored(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || [".swp", ".swx", ".tmp", ".bak", ".orig"]
            .iter()
            .any(|s| name.ends_with(s))
}

/// True for a name that is part of a config set.
pub fn is_config_file(name: &str) -> bool {
    !is_ignored(name) && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

impl ConfigSource {
    /// Reads every config file of `dir` (not recursive: sub-directories such
    /// as `examples/` or `certs/` are not part of the set). A config file
    /// that resolves outside `dir` is refused ([`SourceError::Outside`]).
    pub fn read_dir(dir: &Path, max_file_size: u64) -> Result<Self, SourceError> {
        let dir_err = |source| SourceError::Dir {
            dir: dir.to_path_buf(),
            source,
        };
        let entries = std::fs::read_dir(dir).map_err(dir_err)?;
        let roots = [std::fs::canonicalize(dir).map_err(dir_err)?];
        let mut settings = None;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(dir_err)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_config_file(&name) {
                continue;
            }
            let path = entry.path();
            // Follows symlinks that stay inside, as Kubernetes ConfigMap
            // volumes need.
            let bytes = match read_confined(&path, &roots, max_file_size) {
                Ok(b) => b,
                Err(ConfinedError::NotFile) => continue,
                Err(ConfinedError::Outside { target }) => {
                    return Err(SourceError::Outside { file: path, target });
                }
                Err(ConfinedError::TooLarge { size, limit }) => {
                    return Err(SourceError::TooLarge {
                        file: path,
                        size,
                        limit,
                    });
                }
                Err(ConfinedError::Changed) => return Err(SourceError::Changed { file: path }),
                Err(ConfinedError::Io(source)) => {
                    return Err(SourceError::Read { file: path, source });
                }
            };
            let text = String::from_utf8(bytes)
                .map_err(|_| SourceError::NotText { file: path.clone() })?;
            let file = SourceFile {
                name: name.clone(),
                text,
            };
            if name == SETTINGS_FILE {
                settings = Some(file);
            } else {
                files.push(file);
            }
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self {
            dir: dir.to_path_buf(),
            settings,
            files,
        })
    }

    /// A source made in memory (tests, the importer).
    pub fn from_files(dir: &Path, files: Vec<SourceFile>) -> Self {
        let mut settings = None;
        let mut hot = Vec::new();
        for f in files {
            if f.name == SETTINGS_FILE {
                settings = Some(f);
            } else {
                hot.push(f);
            }
        }
        hot.sort_by(|a, b| a.name.cmp(&b.name));
        Self {
            dir: dir.to_path_buf(),
            settings,
            files: hot,
        }
    }
}

/// Accumulates the content hash of a config set: file names and contents of
/// the hot files, plus every file they reference (certificates).
#[derive(Default)]
pub struct ContentHasher(Sha256);

impl ContentHasher {
    pub fn add(&mut self, name: &str, bytes: &[u8]) {
        self.0.update((name.len() as u64).to_le_bytes());
        self.0.update(name.as_bytes());
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    /// The version string: the first 12 hex digits of the SHA-256.
    pub fn finish(self) -> String {
        let digest = self.0.finalize();
        digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
    }

    /// The whole SHA-256 in hex (64 digits); the version is its first 12.
    pub fn finish_full(self) -> String {
        let digest = self.0.finalize();
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignores_editor_and_hidden_files() {
        for name in [
            ".routes.yaml.swp",
            "routes.yaml~",
            "x.yaml.tmp",
            "x.bak",
            ".hidden.yaml",
            "readme.md",
        ] {
            assert!(!is_config_file(name), "{name}");
        }
        for name in ["routes.yaml", "f.yml", "aegis.yaml"] {
            assert!(is_config_file(name), "{name}");
        }
    }

    #[test]
    fn hash_depends_on_names_and_contents() {
        let h = |pairs: &[(&str, &str)]| {
            let mut c = ContentHasher::default();
            for (n, t) in pairs {
                c.add(n, t.as_bytes());
            }
            c.finish()
        };
        assert_eq!(h(&[("a", "x")]), h(&[("a", "x")]));
        assert_ne!(h(&[("a", "x")]), h(&[("b", "x")]));
        assert_ne!(h(&[("a", "x")]), h(&[("a", "y")]));
        assert_ne!(h(&[("ab", "")]), h(&[("a", "b")]));
        assert_eq!(h(&[]).len(), 12);
    }

    const SECRET: &str = "root:$6$containment-secret-line:19000:0:99999:7:::";

    #[test]
    fn a_config_file_symlinked_out_is_refused_without_its_content() {
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("shadow");
        std::fs::write(&secret, format!("{SECRET}\ndaemon:*:19000\n")).unwrap();
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("routes.yaml"), "routes: []\n").unwrap();
        std::os::unix::fs::symlink(&secret, d.path().join("leak.yaml")).unwrap();
        let e = ConfigSource::read_dir(d.path(), 1 << 20).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, SourceError::Outside { .. }), "{msg}");
        assert!(msg.starts_with(&format!("{}: ", d.path().join("leak.yaml").display())));
        assert!(msg.contains("outside the config directory"), "{msg}");
        assert!(!msg.contains("containment-secret-line"), "{msg}");

        // A symlinked sub-directory that leads out is the same thing.
        std::fs::remove_file(d.path().join("leak.yaml")).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("sub")).unwrap();
        std::fs::write(outside.path().join("x.yaml"), SECRET).unwrap();
        std::os::unix::fs::symlink("sub/x.yaml", d.path().join("leak.yaml")).unwrap();
        let msg = ConfigSource::read_dir(d.path(), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("outside the config directory"), "{msg}");
        assert!(!msg.contains("containment-secret-line"), "{msg}");
    }

    #[test]
    fn a_configmap_volume_is_read_through_its_inside_symlinks() {
        // routes.yaml -> ..data/routes.yaml, ..data -> ..2026_12_01_xx.123,
        // as the kubelet lays out a ConfigMap volume.
        let d = tempfile::tempdir().unwrap();
        let ts = d.path().join("..2026_12_01_00_00_00.123");
        std::fs::create_dir(&ts).unwrap();
        std::fs::write(ts.join("routes.yaml"), "routes: []\n").unwrap();
        std::fs::write(ts.join("aegis.yaml"), "workers: 0\n").unwrap();
        std::os::unix::fs::symlink("..2026_12_01_00_00_00.123", d.path().join("..data")).unwrap();
        for f in ["routes.yaml", "aegis.yaml"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), d.path().join(f)).unwrap();
        }
        let s = ConfigSource::read_dir(d.path(), 1 << 20).unwrap();
        assert_eq!(s.files.len(), 1);
        assert_eq!(s.files[0].name, "routes.yaml");
        assert_eq!(s.files[0].text, "routes: []\n");
        assert_eq!(s.settings.unwrap().text, "workers: 0\n");

        // The same through a directory that is itself reached by a symlink.
        let link = tempfile::tempdir().unwrap();
        let via = link.path().join("configs");
        std::os::unix::fs::symlink(d.path(), &via).unwrap();
        assert_eq!(
            ConfigSource::read_dir(&via, 1 << 20).unwrap().files.len(),
            1
        );
    }

    #[test]
    fn read_confined_checks_place_kind_and_size() {
        let d = tempfile::tempdir().unwrap();
        let root = [std::fs::canonicalize(d.path()).unwrap()];
        std::fs::write(d.path().join("a"), "12345").unwrap();
        assert_eq!(
            read_confined(&d.path().join("a"), &root, 5).unwrap(),
            b"12345"
        );
        assert!(matches!(
            read_confined(&d.path().join("a"), &root, 4),
            Err(ConfinedError::TooLarge { size: 5, limit: 4 })
        ));
        std::fs::create_dir(d.path().join("dir")).unwrap();
        assert!(matches!(
            read_confined(&d.path().join("dir"), &root, 5),
            Err(ConfinedError::NotFile)
        ));
        assert!(matches!(
            read_confined(&d.path().join("missing"), &root, 5),
            Err(ConfinedError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound
        ));
        // `..` through the file system, and no roots at all.
        let up = d.path().join("dir/../../");
        assert!(matches!(
            read_confined(&up, &root, 5),
            Err(ConfinedError::Outside { .. })
        ));
        assert!(matches!(
            read_confined(&d.path().join("a"), &[], 5),
            Err(ConfinedError::Outside { .. })
        ));
        // A device is outside the directory before it is not a file.
        std::os::unix::fs::symlink("/dev/zero", d.path().join("zero.yaml")).unwrap();
        assert!(matches!(
            read_confined(&d.path().join("zero.yaml"), &root, 5),
            Err(ConfinedError::Outside { .. })
        ));
    }

    #[test]
    fn names_that_climb_out() {
        for p in ["../x.pem", "a/../../x.pem", "/abs/x.pem", ".."] {
            assert!(climbs_out(Path::new(p)), "{p}");
        }
        for p in ["x.pem", "certs/x.pem", "./certs/../x.pem", "a/b/../../x"] {
            assert!(!climbs_out(Path::new(p)), "{p}");
        }
        assert_eq!(
            lexical(Path::new("/etc/aegis/certs/../../shadow")),
            Path::new("/etc/shadow")
        );
        assert_eq!(lexical(Path::new("/../a/./b")), Path::new("/a/b"));
    }
}
