//! `aegis-sandbox`: the shadow stage of the config gate, in a process of its
//! own. It limits itself (memory, CPU, files, network, core dumps, parent
//! death: `limits.rs`), then compiles the candidate with the engine (the
//! static stage: a config that compiles to 650 MB dies here, not in a
//! worker), compiles the baseline, asks the gate which new upstreams answer,
//! replays the traffic sample through the proxy's real request pipeline
//! (`aegis_proxy::gate::replay`), plans the upstream check (the upstream
//! requests both configs would send, for the gate to send:
//! `aegis_proxy::gate::upstream_check`) and writes its report as one JSON line on
//! stdout. Progress goes to stderr as `aegis-sandbox: stage <name>` so the
//! gate can say where a runner died.
//!
//! Exit status: 0 with a report (also when the candidate is invalid: that is
//! a result, not a failure), 2 on usage errors, 1 when the runner itself
//! could not work (limits, I/O). Signals and aborts speak for themselves.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod limits;
mod privileges;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_engine::CompiledConfig;
use aegis_engine::config::settings::GatePolicy;
use aegis_engine::config::{self, ConfigSource, Limits, Settings};
use aegis_engine::sample::{SampleLimits, SampledRequest, TrafficSample};
use aegis_engine::tls_check;
use aegis_proxy::gate::replay::{self, ReplayOptions};
use aegis_proxy::gate::report::{
    BlastRadius, Inventory, ProbeAnswer, ProbeRequest, RunnerOutcome, SampleInfo, SandboxReport,
    TlsFinding, TlsReport,
};
use aegis_proxy::gate::sandbox::STAGE_PREFIX;
use aegis_proxy::gate::upstream_check;
use aegis_proxy::pipeline::PipelineSettings;
use anyhow::Context as _;
use clap::Parser;

/// Replays a traffic sample through a candidate config under resource limits.
#[derive(Parser, Debug)]
#[command(name = "aegis-sandbox", version, about)]
struct Args {
    /// The candidate config directory (a snapshot).
    #[arg(long)]
    candidate: PathBuf,
    /// The active config directory to compare against.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Traffic sample (JSON Lines).
    #[arg(long)]
    sample: Option<PathBuf>,
    /// Memory limit, bytes (RLIMIT_AS, or the cgroup's memory.max).
    #[arg(long, default_value_t = 512 << 20)]
    memory: u64,
    /// CPU limit, seconds (RLIMIT_CPU).
    #[arg(long, default_value_t = 30)]
    cpu_seconds: u64,
    /// Open files (RLIMIT_NOFILE).
    #[arg(long, default_value_t = 64)]
    nofile: u64,
    /// The gate's pid: the runner exits if it is no longer its parent.
    #[arg(long)]
    parent_pid: Option<u32>,
    /// A cgroup v2 directory to join (the gate set its memory.max).
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Do not ask the gate to probe new endpoints.
    #[arg(long)]
    no_probe: bool,
    /// Below this many recorded requests the sample counts as thin and
    /// synthetic requests are added from the baseline's routes.
    #[arg(long, default_value_t = 1000)]
    min_recorded: usize,
    /// At most this many synthetic requests.
    #[arg(long, default_value_t = 10_000)]
    max_synthetic: usize,
    /// User id to run as when started as root (privileges.rs).
    #[arg(long, default_value_t = 65534)]
    uid: u32,
    /// Group id to run as when started as root.
    #[arg(long, default_value_t = 65534)]
    gid: u32,
    /// Plan the upstream check: at most this many distinct upstream
    /// requests for the gate to send (the runner itself has no network).
    #[arg(long)]
    upstream_check: Option<u64>,
}

/// Test hook: sleep this many milliseconds before the replay (so a test can
/// signal a runner that is certainly alive).
const HOLD_ENV: &str = "AEGIS_SANDBOX_TEST_HOLD_MS";

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aegis-sandbox: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn stage(name: &str) {
    eprintln!("{STAGE_PREFIX}{name}");
}

fn run(args: &Args) -> anyhow::Result<()> {
    let isolation = limits::apply(&limits::Wanted {
        memory: args.memory,
        cpu_seconds: args.cpu_seconds,
        nofile: args.nofile,
        parent_pid: args.parent_pid,
        cgroup: args.cgroup.clone(),
    })?;
    let mut report = SandboxReport::new(isolation);

    stage("read sample");
    let (recorded, mut sample_info) = read_sample(args.sample.as_deref())?;
    // The sample is read; the configs are read with one reading capability.
    report.isolation.privileges = privileges::drop_to_reader(privileges::RunAs {
        uid: args.uid,
        gid: args.gid,
    })?;

    stage("compile candidate");
    let t = Instant::now();
    let (cand_settings, candidate, cand_files) = match compile_dir(&args.candidate) {
        Ok(x) => x,
        Err(diagnostics) => {
            report.outcome = RunnerOutcome::Invalid;
            report.diagnostics = diagnostics;
            report.compile_ms.candidate = ms(t.elapsed());
            report.sample = sample_info;
            return finish(report);
        }
    };
    report.compile_ms.candidate = ms(t.elapsed());
    report.candidate_version = Some(candidate.version.clone());
    report.candidate_summary = Some(candidate.summary());

    let mut baseline: Option<(Settings, Arc<CompiledConfig>)> = None;
    if let Some(dir) = &args.baseline {
        stage("compile baseline");
        let t = Instant::now();
        match compile_dir(dir) {
            Ok((s, c, files)) => {
                report.baseline_version = Some(c.version.clone());
                // Counts and names only: cheap next to the compiles, and
                // done here because the gate never parses a candidate.
                report.blast_radius = Some(BlastRadius::between(
                    &inventory(&c, files),
                    &inventory(&candidate, cand_files.clone()),
                ));
                baseline = Some((s, Arc::new(c)));
            }
            Err(d) => {
                report.baseline_error = Some(d.first().cloned().unwrap_or_default());
            }
        }
        report.compile_ms.baseline = Some(ms(t.elapsed()));
    }

    stage("check certificates");
    {
        let policy = baseline
            .as_ref()
            .map_or(&cand_settings.gate.policy, |(s, _)| &s.gate.policy);
        report.tls = Some(check_tls(
            &candidate,
            baseline.as_ref().map(|(_, c)| c.as_ref()),
            &recorded,
            policy,
            &args.candidate,
        ));
    }

    privileges::drop_all()?;
    stage("probe");
    let unreachable = if args.no_probe {
        Vec::new()
    } else {
        ask_probe(&candidate, baseline.as_ref().map(|(_, c)| c.as_ref()))?
    };

    stage("replay");
    if let Some(ms) = std::env::var(HOLD_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
    let mut requests = recorded;
    if requests.len() < args.min_recorded {
        let from = baseline.as_ref().map_or(&candidate, |(_, c)| c.as_ref());
        let synthetic = replay::synthesize(from, args.max_synthetic);
        sample_info.synthesized = synthetic.len();
        requests.extend(synthetic);
    }
    report.sample = sample_info;
    let candidate = Arc::new(candidate);
    let check_settings = (
        PipelineSettings::from_settings(&cand_settings),
        baseline
            .as_ref()
            .map(|(s, _)| PipelineSettings::from_settings(s))
            .unwrap_or_default(),
    );
    let opts = ReplayOptions {
        unreachable,
        settings: PipelineSettings::from_settings(&cand_settings),
        baseline_settings: baseline
            .as_ref()
            .map(|(s, _)| PipelineSettings::from_settings(s))
            .unwrap_or_default(),
        tls_listener: !cand_settings.listen_tls.is_empty(),
        baseline_tls_listener: baseline
            .as_ref()
            .is_some_and(|(s, _)| !s.listen_tls.is_empty()),
    };
    // One thread: RLIMIT_AS is the memory limit of exactly this process.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the replay runtime")?;
    let replayed = rt.block_on(replay::replay(
        candidate.clone(),
        baseline.as_ref().map(|(_, c)| c.clone()),
        &requests,
        opts,
    ));
    report.replay = Some(replayed);
    if let (Some(max), Some((_, base))) = (args.upstream_check, &baseline) {
        stage("plan upstream check");
        report.upstream_plan = Some(rt.block_on(upstream_check::plan(
            candidate,
            base.clone(),
            check_settings.0,
            check_settings.1,
            &requests,
            max,
        )));
    }
    report.outcome = RunnerOutcome::Replayed;
    finish(report)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn finish(mut report: SandboxReport) -> anyhow::Result<()> {
    stage("report");
    let (rss, cpu) = limits::usage();
    report.peak_rss_bytes = rss;
    report.cpu_seconds = cpu;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &report).context("writing the report")?;
    out.write_all(b"\n").context("writing the report")?;
    out.flush().context("writing the report")?;
    Ok(())
}

fn read_sample(
    path: Option<&Path>,
) -> anyhow::Result<(Vec<aegis_engine::sample::SampledRequest>, SampleInfo)> {
    let mut info = SampleInfo::default();
    let Some(path) = path else {
        return Ok((Vec::new(), info));
    };
    info.source = Some(path.display().to_string());
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        // A missing sample is a thin one: the synthetic requests cover it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), info)),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let (sample, read) =
        TrafficSample::read(std::io::BufReader::new(file), SampleLimits::default())
            .with_context(|| format!("reading {}", path.display()))?;
    info.recorded = sample.requests.len();
    info.skipped_lines = read.invalid_lines.saturating_add(read.oversized_lines);
    info.truncated = read.truncated;
    Ok((sample.requests, info))
}

/// Config files of a set (aegis.yaml included) and their sizes, bytes.
type FileSizes = Vec<(String, u64)>;

/// The static stage: read, parse settings, compile. Errors as
/// `file:line:col: path: message`. Also returns the set's file sizes, for
/// the blast radius (the source itself is dropped: it may be large).
fn compile_dir(dir: &Path) -> Result<(Settings, CompiledConfig, FileSizes), Vec<String>> {
    let source = ConfigSource::read_dir(dir, Limits::default().max_file_size.0)
        .map_err(|e| vec![e.to_string()])?;
    let settings = config::parse_settings(&source)
        .map_err(|d| d.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let compiled = config::compile(&source, &settings.limits)
        .map_err(|d| d.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let files = source
        .settings
        .iter()
        .chain(&source.files)
        .map(|f| {
            (
                f.name.clone(),
                u64::try_from(f.text.len()).unwrap_or(u64::MAX),
            )
        })
        .collect();
    Ok((settings, compiled, files))
}

/// What a compiled set holds, by name, for [`BlastRadius::between`].
fn inventory(c: &CompiledConfig, files: FileSizes) -> Inventory {
    let names = |it: &mut dyn Iterator<Item = &str>| it.map(str::to_string).collect::<Vec<_>>();
    Inventory {
        routes: names(&mut c.routes.iter().map(|r| &*r.name)),
        upstreams: names(&mut c.upstreams.iter().map(|u| &*u.name)),
        // A `tls` entry has no name of its own: it is the names it serves.
        tls: c
            .certificates
            .iter()
            .map(|cert| {
                let mut n = cert.server_names.clone();
                n.sort();
                n.join(",")
            })
            .collect(),
        features: (0..c.features.len())
            .filter_map(|i| c.features.get(i))
            .map(|f| f.name.clone())
            .collect(),
        rate_limits: names(&mut c.rate_limits.iter().map(|r| r.name.as_str())),
        files,
    }
}

/// Asks the gate to probe the candidate's endpoints that the baseline does
/// not have; returns the pools it found unreachable.
fn ask_probe(
    candidate: &CompiledConfig,
    baseline: Option<&CompiledConfig>,
) -> anyhow::Result<Vec<String>> {
    let known: HashSet<&str> = baseline
        .map(|b| {
            b.upstreams
                .iter()
                .flat_map(|u| u.endpoints.iter().map(|e| e.address.as_str()))
                .collect()
        })
        .unwrap_or_default();
    let mut probe: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pool in &candidate.upstreams {
        // A pool with one known endpoint is served by it: no probe needed.
        if pool
            .endpoints
            .iter()
            .any(|e| known.contains(e.address.as_str()))
        {
            continue;
        }
        let eps: Vec<String> = pool.endpoints.iter().map(|e| e.address.clone()).collect();
        if !eps.is_empty() {
            probe.insert(pool.name.to_string(), eps);
        }
    }
    if probe.is_empty() {
        return Ok(Vec::new());
    }
    {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, &ProbeRequest { probe }).context("asking for probes")?;
        out.write_all(b"\n").context("asking for probes")?;
        out.flush().context("asking for probes")?;
    }
    let mut line = String::new();
    std::io::Read::take(std::io::stdin().lock(), 1 << 20)
        .read_line(&mut line)
        .context("reading the probe answer")?;
    let answer: ProbeAnswer = serde_json::from_str(line.trim()).unwrap_or_default();
    Ok(answer.unreachable)
}

/// The candidate's certificates checked as a client would, now: validity,
/// expiry within `tls_expiry_window`, chain (to `tls_trust_store` when set),
/// and every HTTPS name of the recorded sample that the baseline covered
/// and the candidate no longer does. A problem the active version has with
/// the very same certificate is `inherited`, not the candidate's doing.
fn check_tls(
    candidate: &CompiledConfig,
    baseline: Option<&CompiledConfig>,
    sample: &[SampledRequest],
    policy: &GatePolicy,
    candidate_dir: &Path,
) -> TlsReport {
    let mut out = TlsReport {
        checked: u64::try_from(candidate.certificates.len()).unwrap_or(u64::MAX),
        ..TlsReport::default()
    };
    let configured = policy.tls_trust_store.as_deref().map(|p| {
        let path = Path::new(p);
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            candidate_dir.join(path)
        };
        tls_check::read_roots(&path)
    });
    let configured_roots = match configured {
        Some(Ok(roots)) => Some(roots),
        Some(Err(e)) => {
            out.findings.push(TlsFinding {
                code: "tls_chain".to_string(),
                name: "(every certificate)".to_string(),
                detail: format!("the trust store gate.policy.tls_trust_store cannot be used: {e}"),
            });
            Some(Vec::new())
        }
        None => None,
    };
    let opts = tls_check::CheckOptions {
        now: std::time::SystemTime::now(),
        expiry_window: policy.tls_expiry_window.0,
        // Only read when there is something to check.
        system_roots: if candidate.certificates.is_empty() {
            Vec::new()
        } else {
            tls_check::system_roots()
        },
        configured_roots,
    };
    let active: HashSet<[u8; 32]> = baseline
        .map(|b| {
            b.certificates
                .iter()
                .filter_map(|c| c.key.cert.first())
                .map(|d| tls_check::fingerprint(d))
                .collect()
        })
        .unwrap_or_default();
    for p in tls_check::check(candidate, &opts) {
        let f = TlsFinding {
            code: p.problem.code().to_string(),
            name: p.names,
            detail: p.detail,
        };
        if active.contains(&p.leaf_sha256) {
            out.inherited.push(f);
        } else {
            out.findings.push(f);
        }
    }
    if let Some(base) = baseline {
        let mut names: Vec<String> = sample
            .iter()
            .filter(|r| !r.synthetic && r.scheme.eq_ignore_ascii_case("https"))
            .filter_map(|r| r.host.as_deref())
            .map(|h| {
                h.rsplit_once(':')
                    .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
                    .map_or(h, |(h, _)| h)
                    .to_ascii_lowercase()
            })
            .collect();
        names.sort();
        names.dedup();
        names.retain(|n| tls_check::covers(base, n));
        for n in &names {
            if !tls_check::covers(candidate, n) {
                out.findings.push(TlsFinding {
                    code: "tls_sni".to_string(),
                    name: n.clone(),
                    detail: "served HTTPS traffic in the sample and no certificate of the candidate covers it any more".to_string(),
                });
            }
        }
        out.sample_names = names;
    }
    out
}
