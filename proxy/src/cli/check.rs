//! `aegis check`: the gate, offline. The candidate goes through the sandbox
//! runner exactly as `aegis run` would send it: the static stage (load and
//! validation) and the replay of a traffic sample against the baseline, then
//! the verdict under the baseline's gate policy.
//!
//! Exit codes: 0 accepted, 1 rejected (invalid, crashed, oom, timeout,
//! regression:<kind>), 2 usage error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use aegis_engine::config::{self, ConfigSource, Limits};

use crate::gate::report::RunnerOutcome;
use crate::gate::sandbox::Sandbox;
use crate::gate::verdict::SandboxOutcome;
use crate::gate::{self, SEED_SAMPLE};

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The config directory (the candidate).
    #[arg(long, default_value = "configs")]
    pub config_dir: PathBuf,
    /// The active config to compare against (its aegis.yaml sets the gate
    /// policy and sandbox limits). Without it the candidate is judged alone:
    /// static stage, crash, memory, time and latency, no diff.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Traffic sample to replay (JSON Lines). Default: `sample.jsonl` in the
    /// config directory, else in the baseline.
    #[arg(long)]
    pub sample: Option<PathBuf>,
    /// Print the verdict and the sandbox report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Only the static stage, in this process (no sandbox, no replay).
    #[arg(long)]
    pub static_only: bool,
    /// Do not probe the candidate's new upstream endpoints.
    #[arg(long)]
    pub no_probe: bool,
}

/// The outcome of a static check, ready to print.
pub enum CheckOutcome {
    Valid { summary: String },
    Invalid { errors: Vec<String> },
}

pub fn check_static(dir: &Path) -> CheckOutcome {
    let source = match ConfigSource::read_dir(dir, Limits::default().max_file_size.0) {
        Ok(s) => s,
        Err(e) => {
            return CheckOutcome::Invalid {
                errors: vec![e.to_string()],
            };
        }
    };
    let settings = match config::parse_settings(&source) {
        Ok(s) => s,
        Err(d) => {
            return CheckOutcome::Invalid {
                errors: d.iter().map(|d| d.to_string()).collect(),
            };
        }
    };
    match config::compile(&source, &settings.limits) {
        Ok(c) => CheckOutcome::Valid {
            summary: c.summary(),
        },
        Err(d) => CheckOutcome::Invalid {
            errors: d.iter().map(|d| d.to_string()).collect(),
        },
    }
}

fn print_static(dir: &Path, outcome: CheckOutcome) -> ExitCode {
    match outcome {
        CheckOutcome::Valid { summary } => {
            println!("ok: {}: {summary}", dir.display());
            ExitCode::SUCCESS
        }
        CheckOutcome::Invalid { errors } => {
            print_invalid(dir, &errors);
            ExitCode::from(1)
        }
    }
}

fn print_invalid(dir: &Path, errors: &[String]) {
    for e in errors {
        crate::say!("{e}");
    }
    crate::say!("invalid: {}: {} error(s)", dir.display(), errors.len());
}

fn default_sample(args: &CheckArgs) -> Option<PathBuf> {
    if let Some(s) = &args.sample {
        return Some(s.clone());
    }
    std::iter::once(&args.config_dir)
        .chain(args.baseline.as_ref())
        .map(|d| d.join(SEED_SAMPLE))
        .find(|p| p.is_file())
}

pub fn main(args: CheckArgs) -> ExitCode {
    if args.static_only {
        return print_static(&args.config_dir, check_static(&args.config_dir));
    }
    for d in std::iter::once(&args.config_dir).chain(args.baseline.as_ref()) {
        if !d.is_dir() {
            crate::say!("aegis check: {} is not a directory", d.display());
            return ExitCode::from(2);
        }
    }
    if let Some(s) = args.sample.as_ref().filter(|s| !s.is_file()) {
        crate::say!("aegis check: sample {} is not a file", s.display());
        return ExitCode::from(2);
    }
    let sandbox = match Sandbox::locate() {
        Ok(s) => s,
        Err(e) => {
            crate::say!(
                "aegis check: {e}; only the static stage was run, the config was NOT replayed"
            );
            return print_static(&args.config_dir, check_static(&args.config_dir));
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            crate::say!("aegis check: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let sample = default_sample(&args);
    let result = rt.block_on(gate::check_offline(
        &sandbox,
        &args.config_dir,
        args.baseline.as_deref(),
        sample.as_deref(),
        args.no_probe,
    ));
    let (verdict, run, _policy, _limits) = match result {
        Ok(x) => x,
        Err(e) => {
            crate::say!("aegis check: {e}");
            return ExitCode::from(1);
        }
    };
    let code = if verdict.accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    };
    if args.json {
        let (report, failure) = match &run.outcome {
            SandboxOutcome::Report(r) => (serde_json::to_value(r).ok(), None),
            SandboxOutcome::Failed {
                failure,
                stage,
                stderr_tail,
                ..
            } => (
                None,
                Some(serde_json::json!({
                    "failure": failure,
                    "stage": stage,
                    "stderr_tail": stderr_tail,
                })),
            ),
        };
        let out = serde_json::json!({
            "config_dir": args.config_dir.display().to_string(),
            "baseline": args.baseline.as_ref().map(|b| b.display().to_string()),
            "sample": sample.as_ref().map(|s| s.display().to_string()),
            "verdict": verdict,
            "elapsed_s": run.elapsed.as_secs_f64(),
            "report": report,
            "runner_failure": failure,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return code;
    }
    let dir = args.config_dir.display();
    match &run.outcome {
        SandboxOutcome::Report(r) if r.outcome == RunnerOutcome::Invalid => {
            print_invalid(&args.config_dir, &r.diagnostics);
        }
        SandboxOutcome::Report(r) => {
            println!(
                "ok: {dir}: {}",
                r.candidate_summary.as_deref().unwrap_or("compiled")
            );
            if let Some(rep) = &r.replay {
                let c = &rep.changes;
                println!(
                    "replay: {} requests ({} recorded, {} synthesized) against {}: {} changed route, {} newly blocked, {} worse status, {} now redirected; p99 {:.3} ms; peak RSS {} MiB; {:.0} req/s",
                    rep.requests,
                    r.sample.recorded,
                    r.sample.synthesized,
                    r.baseline_version.as_deref().unwrap_or("no baseline"),
                    c.route_changed.count,
                    c.newly_blocked.count,
                    c.status_worsened.count,
                    c.now_redirected.count,
                    rep.latency_us.p99 / 1000.0,
                    r.peak_rss_bytes >> 20,
                    rep.replay_rate
                );
            }
            if let Some(e) = &r.baseline_error {
                crate::say!("warning: the baseline does not load ({e}); judged without it");
            }
            if verdict.accepted {
                println!("accept: {dir}: {}", verdict.sentence);
            } else {
                crate::say!("reject: {dir}: {}: {}", verdict.code(), verdict.sentence);
                for a in &verdict.also {
                    crate::say!("  also {a}");
                }
            }
        }
        SandboxOutcome::Failed { .. } => {
            crate::say!("reject: {dir}: {}: {}", verdict.code(), verdict.sentence);
        }
    }
    code
}
