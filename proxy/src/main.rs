//! `aegis`: the command line. Each subcommand's arguments and entry point
//! live in the module that implements it; this file only dispatches, so
//! errors get their context at the edge and the modules stay testable.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// mimalloc rather than glibc malloc: on the request path it takes a third
// fewer instructions per request under callgrind and more requests per
// second pinned (docs/BENCHMARKS.md, "Instructions and allocations per
// request"). The library stays allocator-neutral; only this binary picks.
// `--features system-alloc` keeps glibc's, for heap profilers that see only
// malloc (`valgrind --tool=dhat`, bench/alloc-sites.sh).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Aegis: an edge reverse proxy that never trusts a configuration file.
// The version line carries the commit and build date (`proxy/build.rs`), so
// a bug report names the exact build.
#[derive(Parser)]
#[command(
    name = "aegis",
    version = env!("AEGIS_VERSION_LONG"),
    about,
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a config directory (supervisor, workers, gate).
    ///
    /// At start the gate gives the version to serve: the last promoted one
    /// from the state directory, or the config directory judged now. A
    /// supervisor with `workers` worker processes serves it (`--workers 0`:
    /// this one process). The gate watches the directory: a change is judged
    /// in a sandbox against the recorded traffic, rolled out on one canary
    /// worker, then on all, and rolled back on a regression. A rejected
    /// change is never served; the version before it stays.
    Run(aegis_proxy::cli::run::RunArgs),
    /// Check a config set: exit 0 and a summary when it is valid, exit 1 and
    /// every error as `file:line:col: path: message` when not, 2 on usage errors.
    Check(aegis_proxy::cli::check::CheckArgs),
    /// Show what a running aegis serves and why: the active and stable
    /// versions, the rollout, held or unjudged candidates, workers, verdicts.
    Status(aegis_proxy::cli::status::StatusArgs),
    /// Convert an nginx configuration into an Aegis config set.
    ImportNginx(aegis_proxy::cli::import_nginx::ImportArgs),
    /// A worker process, started by the supervisor (not for direct use).
    #[command(hide = true)]
    Worker(aegis_proxy::supervisor::worker::WorkerArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Run(args) => aegis_proxy::cli::run::main(args),
        Command::Check(args) => aegis_proxy::cli::check::main(args),
        Command::Status(args) => aegis_proxy::cli::status::main(args),
        Command::ImportNginx(args) => aegis_proxy::cli::import_nginx::main(args),
        Command::Worker(args) => aegis_proxy::supervisor::worker::main(args),
    }
}
