//! Reading a config directory into memory: which files belong to the set,
//! and the set's content hash.
//!
//! The whole set is read before anything is parsed, so a compiled config
//! always corresponds to one snapshot of the directory and its version (the
//! hash) names exactly those bytes.

use std::path::{Path, PathBuf};

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
    /// as `examples/` or `certs/` are not part of the set).
    pub fn read_dir(dir: &Path, max_file_size: u64) -> Result<Self, SourceError> {
        let entries = std::fs::read_dir(dir).map_err(|source| SourceError::Dir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let mut settings = None;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| SourceError::Dir {
                dir: dir.to_path_buf(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_config_file(&name) {
                continue;
            }
            let path = entry.path();
            // Follows symlinks, as Kubernetes ConfigMap volumes need.
            let meta = std::fs::metadata(&path).map_err(|source| SourceError::Read {
                file: path.clone(),
                source,
            })?;
            if !meta.is_file() {
                continue;
            }
            if meta.len() > max_file_size {
                return Err(SourceError::TooLarge {
                    file: path,
                    size: meta.len(),
                    limit: max_file_size,
                });
            }
            let bytes = std::fs::read(&path).map_err(|source| SourceError::Read {
                file: path.clone(),
                source,
            })?;
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
}
