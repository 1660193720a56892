//! The Aegis proxy: data plane, gate and supervisor, built on the engine.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod access_log;
pub mod admin;
pub mod cli;
pub mod gate;
pub mod kill_switch;
pub mod pipeline;
pub mod rollout;
pub mod server;
pub mod supervisor;
pub mod telemetry;
pub mod upstream;

pub use aegis_engine as engine;
