//! The Aegis proxy: data plane, gate and supervisor, built on the engine.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod cli;

pub use aegis_engine as engine;
