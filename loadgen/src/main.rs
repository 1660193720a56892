//! `aegis-loadgen`: load that tells the truth, and the demo backend.
//!
//! # Usage
//!
//! ```text
//! # Closed loop: 50 connections on 2 threads, as fast as they go, for 30 s.
//! aegis-loadgen run --target http://127.0.0.1:8080/ -c 50 -t 2 -d 30s
//!
//! # Open loop at 2000 req/s: latency counted from each request's intended
//! # send time, so a stalled server shows up in the percentiles.
//! aegis-loadgen run --target http://127.0.0.1:8080/ -c 50 --rate 2000 -d 30s
//!
//! # Exactly 10 000 requests from a weighted scenario over HTTP/2 + TLS,
//! # machine-readable report, non-zero exit on any error.
//! aegis-loadgen run --target https://app.local:8443 --http2 --cacert ca.pem \
//!     --scenario mix.yaml -n 10000 --json report.json --fail-on-error
//!
//! # The demo backend (HTTP/1.1 and h2c), failing 10% of requests.
//! aegis-loadgen backend --listen 127.0.0.1:9001 --name blue --fail-share 0.1
//!
//! # A traffic sample (JSON Lines) drawn from a scenario, to seed an install.
//! aegis-loadgen sample --scenario mix.yaml --count 1000 --seed 7 --out sample.jsonl
//! ```
//!
//! `aegis-loadgen <command> --help` documents every flag, the scenario format
//! and the backend's endpoints.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aegis_loadgen::backend::{self, BackendConfig};
use aegis_loadgen::run::{RunConfig, run};
use aegis_loadgen::scenario::Scenario;
use aegis_loadgen::util::parse_duration;
use anyhow::Context;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "aegis-loadgen",
    version,
    about = "Load that tells the truth (closed and open loop), and the demo backend"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sends load to a target and reports latency percentiles, statuses and errors.
    Run(RunArgs),
    /// Runs the demo backend (HTTP/1.1 and h2c on one port).
    #[command(after_long_help = backend::ENDPOINTS)]
    Backend(BackendArgs),
    /// Writes a traffic sample (JSON Lines) drawn from a scenario's weighted mix.
    Sample(SampleArgs),
}

const SCENARIO_HELP: &str = "\
Scenario file (YAML):
  expect: [200]                  # statuses accepted for every request (optional)
  headers: { user-agent: me }    # headers added to every request (optional)
  host: app.example.com          # Host header (optional; default the target's)
  client_ips: [10.0.0.1]         # client addresses for `sample` (optional)
  requests:                      # the weighted mix
    - weight: 8                  # relative weight (default 1)
      path: /api/items?page=1    # path and query (default /)
    - weight: 1
      method: POST               # default GET
      host: other.example.com    # overrides the scenario's host
      headers: { content-type: application/json }
      body_size: 512             # request body bytes (default 0)
      expect: [200, 201]         # overrides the scenario's expect

Modes:
  closed loop (default)  each connection sends its next request as soon as the
                         previous response is complete (like wrk)
  open loop (--rate R)   requests are scheduled at R per second over all
                         connections; latency is measured from each request's
                         intended send time (like wrk2), so a stall shows up as
                         latency for every request that should have been sent.
                         Send times have the timer's 1 ms granularity: a request
                         may leave up to ~1 ms late, and that counts as latency

Errors: refused (nothing listening), reset (connection reset or closed
mid-request), timeout (no full response within --timeout), unexpected_status
(status not in the scenario's expect list), connect, tls, protocol, other.
The exit status is 1 on a failure to run, and 2 with --fail-on-error when any
request failed.";

#[derive(Args)]
#[command(after_long_help = SCENARIO_HELP)]
struct RunArgs {
    /// Target URL (http:// or https://); without --scenario every request is a GET of it.
    #[arg(long)]
    target: String,
    /// Connections kept open (each with at most one request in flight).
    #[arg(short = 'c', long, default_value_t = 10)]
    connections: usize,
    /// With --http2: requests in flight on each connection (HTTP/2 streams).
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Worker threads the connections are spread over (like wrk's -t).
    #[arg(short = 't', long, default_value_t = 2)]
    threads: usize,
    /// How long to run (e.g. 500ms, 10s, 2m); default 10s unless --requests is given.
    #[arg(short = 'd', long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Send exactly this many requests (with --duration: whichever ends first).
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Open loop: this many requests per second over all connections.
    #[arg(short = 'R', long)]
    rate: Option<f64>,
    /// HTTP/2: prior knowledge (h2c) on http://, ALPN h2 on https://.
    #[arg(long)]
    http2: bool,
    /// PEM file of CA certificates for https:// (default: the system bundle).
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// Accept any server certificate on https://.
    #[arg(short = 'k', long)]
    insecure: bool,
    /// Scenario file (YAML) with a weighted mix of requests; see below.
    #[arg(short = 's', long, value_name = "FILE")]
    scenario: Option<PathBuf>,
    /// Expected status without a scenario (repeatable); others count as unexpected_status.
    #[arg(long, value_name = "STATUS")]
    expect: Vec<u16>,
    /// Timeout of each request (connect, send, and the full response).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    timeout: Duration,
    /// Print the live line (every second, on stderr) even when stderr is not a terminal.
    #[arg(long)]
    live: bool,
    /// Never print the live line.
    #[arg(long, conflicts_with = "live")]
    no_live: bool,
    /// Write the report as JSON to FILE ("-" for stdout, then the text report goes to stderr).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Exit with status 2 if any request failed.
    #[arg(long)]
    fail_on_error: bool,
    /// Seed of the scenario's request picker.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
struct BackendArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Name returned in the body and the x-backend header.
    #[arg(long, default_value = "backend")]
    name: String,
    /// Share of requests answered with 500 (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    fail_share: f64,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Serve TLS (HTTP/1.1 and h2 by ALPN) with this PEM certificate chain (needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Args)]
struct SampleArgs {
    /// Scenario file (YAML) whose weighted mix is sampled.
    #[arg(short = 's', long, value_name = "FILE")]
    scenario: PathBuf,
    /// Number of requests to write.
    #[arg(short = 'n', long, default_value_t = 1000)]
    count: usize,
    /// Output file (JSON Lines, the aegis traffic sample format); "-" for stdout.
    #[arg(short = 'o', long, value_name = "FILE")]
    out: PathBuf,
    /// Seed: the same seed gives the same sample.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Scheme recorded on every request.
    #[arg(long, default_value = "http")]
    scheme: String,
    /// Host recorded when the scenario gives none.
    #[arg(long)]
    host: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => cmd_run(args),
        Command::Backend(args) => cmd_backend(args).map(|()| ExitCode::SUCCESS),
        Command::Sample(args) => cmd_sample(args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("aegis-loadgen: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn cmd_run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let scenario = args.scenario.as_deref().map(Scenario::load).transpose()?;
    let mut cfg = RunConfig::new(&args.target);
    cfg.connections = args.connections;
    cfg.streams = args.streams;
    cfg.threads = args.threads;
    cfg.duration = args.duration;
    cfg.requests = args.requests;
    cfg.rate = args.rate;
    cfg.http2 = args.http2;
    cfg.ca_file = args.cacert;
    cfg.insecure = args.insecure;
    cfg.scenario = scenario;
    cfg.expect = args.expect;
    cfg.timeout = args.timeout;
    cfg.live = !args.no_live && (args.live || std::io::stderr().is_terminal());
    cfg.seed = args.seed;
    watch_ctrl_c(&cfg);

    let report = run(&cfg)?;
    let json_to_stdout = args.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    if json_to_stdout {
        eprint!("{}", report.render());
    } else {
        print!("{}", report.render());
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).context("encoding the report")?;
        if json_to_stdout {
            println!("{text}");
        } else {
            std::fs::write(path, format!("{text}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    std::io::stdout().flush().context("flushing stdout")?;
    if args.fail_on_error && report.errors.total > 0 {
        eprintln!("aegis-loadgen: {} request(s) failed", report.errors.total);
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C or SIGTERM (`docker stop`) stops the run early; the report
/// covers what ran.
fn watch_ctrl_c(cfg: &RunConfig) {
    let stop = cfg.stop.clone();
    let _ = std::thread::Builder::new()
        .name("ctrl-c".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                aegis_loadgen::stop_signal().await;
                stop.store(true, Ordering::Relaxed);
            });
        });
}

fn cmd_backend(args: BackendArgs) -> anyhow::Result<()> {
    let mut cfg = BackendConfig::new(args.listen, &args.name);
    cfg.fail_share = args.fail_share;
    cfg.threads = args.threads;
    cfg.tls = args.tls_cert.zip(args.tls_key);
    let name = cfg.name.clone();
    backend::run_forever(cfg, |addr| {
        println!("aegis-loadgen backend {name} listening on {addr}");
        let _ = std::io::stdout().flush();
    })
}

fn cmd_sample(args: SampleArgs) -> anyhow::Result<()> {
    let scenario = Scenario::load(&args.scenario)?;
    let sample = aegis_loadgen::sample::generate(
        &scenario,
        args.count,
        args.seed,
        &args.scheme,
        args.host.as_deref(),
    );
    if args.out.as_os_str() == "-" {
        sample
            .write(std::io::stdout().lock())
            .context("writing the sample")?;
    } else {
        let file = std::fs::File::create(&args.out)
            .with_context(|| format!("creating {}", args.out.display()))?;
        sample
            .write(std::io::BufWriter::new(file))
            .with_context(|| format!("writing {}", args.out.display()))?;
        eprintln!(
            "wrote {} requests to {}",
            sample.requests.len(),
            args.out.display()
        );
    }
    Ok(())
}
