//! aegis-loadgen: a load generator that does not hide latency (closed and
//! open loop, HTTP/1.1 and HTTP/2, TLS), the demo backend, and a traffic
//! sample generator. See `src/main.rs` for the command line.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod backend;
pub mod h1;
pub mod report;
pub mod run;
pub mod sample;
pub mod scenario;
pub mod tls;
pub mod util;
