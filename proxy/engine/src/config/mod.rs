//! The config model: files as written ([`raw`], [`settings`]), how a
//! directory is read ([`source`]), and how it is checked and compiled
//! ([`compile`]). Errors are [`Diagnostics`]: every problem, located.

pub mod compile;
pub mod diagnostic;
pub mod raw;
pub mod settings;
pub mod source;
pub mod units;

use std::path::Path;

pub use compile::{compile, parse_settings};
pub use diagnostic::{Diagnostic, Diagnostics};
pub use settings::{Limits, Settings};
pub use source::{ConfigSource, SourceError, SourceFile};

use crate::compiled::CompiledConfig;

/// Why a config directory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// Reads and compiles a config directory: settings from its `aegis.yaml`
/// (defaults when absent) and the hot content compiled under those limits.
pub fn load_dir(dir: &Path) -> Result<(Settings, CompiledConfig), LoadError> {
    // The file size limit must be known before aegis.yaml is read; the
    // default applies to that first read.
    let source = ConfigSource::read_dir(dir, Limits::default().max_file_size.0)?;
    let settings = parse_settings(&source).map_err(LoadError::Invalid)?;
    let compiled = compile(&source, &settings.limits).map_err(LoadError::Invalid)?;
    Ok((settings, compiled))
}
