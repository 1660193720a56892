//! What the import could not carry over exactly, located at `file:line`.

use std::fmt;

use crate::parse::Loc;

/// How much a finding matters to someone replacing nginx.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Impact {
    /// The directive was not carried over and clients would see a
    /// difference. The import fails unless `--allow-partial`.
    Dropped,
    /// Carried over with a documented difference in some cases.
    Differs,
    /// Not carried over, and it changes nothing a client sees (process
    /// settings, buffers, logging...).
    Ignored,
    /// Carried over exactly. Listed in the report too, so that every
    /// directive of the input appears in it exactly once.
    Carried,
}

impl Impact {
    pub fn label(self) -> &'static str {
        match self {
            Impact::Dropped => "dropped",
            Impact::Differs => "differs",
            Impact::Ignored => "ignored",
            Impact::Carried => "carried",
        }
    }
}

/// One directive that was not carried over exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub at: Loc,
    /// The directive as written (abbreviated).
    pub directive: String,
    pub impact: Impact,
    pub reason: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: `{}`: {}",
            self.at,
            self.impact.label(),
            self.directive,
            self.reason
        )
    }
}
