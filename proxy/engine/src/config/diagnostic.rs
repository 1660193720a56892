//! Config errors a person can act on: `file:line:col: key.path: message`.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_saphyr::Location;

/// One problem in a config set, located as precisely as the parser allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based; 0 when the problem has no position (a missing file).
    pub line: u64,
    pub column: u64,
    /// Key path inside the file, e.g. `routes[3].match.path_regex`.
    pub path: String,
    pub message: String,
}

impl Diagnostic {
    pub fn new(
        file: &str,
        at: Location,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.to_string(),
            line: at.line(),
            column: at.column(),
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every error found in a config set (never just the first).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }
    /// The first error, as the one-sentence reason of a rejection.
    pub fn headline(&self) -> String {
        match self.0.first() {
            Some(d) if self.0.len() == 1 => d.to_string(),
            Some(d) => format!("{d} (and {} more)", self.0.len().saturating_sub(1)),
            None => "no errors".to_string(),
        }
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}
