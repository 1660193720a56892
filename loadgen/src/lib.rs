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

/// Resolves on SIGINT or SIGTERM. Both stop a run or a backend: in a
/// container the process is PID 1, which the kernel gives no default action
/// for SIGTERM, so without a handler `docker stop` waits out its timeout and
/// kills it.
pub async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
