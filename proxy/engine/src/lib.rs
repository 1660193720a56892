//! The Aegis engine: the config model, its validation and compilation, and
//! the per-request decision.
//!
//! The proxy's workers and the sandbox runner both link this crate, and
//! nothing else routes a request: a config the sandbox judged is judged by the
//! very code that will serve it. The crate is pure (no I/O beyond reading a
//! config directory, no async runtime) so it compiles fast and can be fuzzed
//! and benchmarked on its own.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod access;
pub mod civil;
pub mod compiled;
pub mod config;
pub mod decide;
pub mod features;
pub mod map;
pub mod rewrite;
pub mod route_table;
pub mod sample;
mod serde_arc;
pub mod tls;
pub mod tls_check;

pub use compiled::CompiledConfig;
pub use config::{LoadError, load_dir};
pub use decide::{DecideOptions, Decision, DecisionSummary, Outcome, RequestHead, decide};
