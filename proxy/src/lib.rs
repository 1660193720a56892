//! The Aegis proxy: data plane, gate and supervisor, built on the engine.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::print_stderr
    )
)]

/// A line on stderr for people, scripts and tests (`aegis: config …`).
/// Unlike `eprintln!` it never panics: a closed stderr (the process manager
/// or the test that read the listen lines went away) must not take down
/// the gate task or a worker halfway through a promotion.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod access_log;
pub mod admin;
pub mod cli;
pub mod codec;
pub mod gate;
pub mod kill_switch;
pub mod pipeline;
pub mod rollout;
pub mod server;
pub mod supervisor;
pub mod telemetry;
pub mod upstream;

pub use aegis_engine as engine;
