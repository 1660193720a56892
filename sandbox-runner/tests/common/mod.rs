//! What the runner's integration tests share: the repository root and one
//! run of the real runner binary on a candidate, a baseline and a sample.

use std::path::Path;
use std::process::Command;

use aegis_proxy::gate::report::SandboxReport;

pub fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Runs `aegis-sandbox` on `candidate` against `baseline` with `sample`
/// (no probes: the test endpoints are not meant to answer) and returns its
/// report; panics with the runner's output when there is none.
pub fn run_runner(candidate: &Path, baseline: &Path, sample: &Path) -> SandboxReport {
    let out = Command::new(env!("CARGO_BIN_EXE_aegis-sandbox"))
        .args(["--candidate", candidate.to_str().unwrap()])
        .args(["--baseline", baseline.to_str().unwrap()])
        .args(["--sample", sample.to_str().unwrap()])
        .arg("--no-probe")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{}: no report ({e}): {stdout}\n{}",
            candidate.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
