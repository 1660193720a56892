//! The runner binary on its own: a replay of the shipped config and seed
//! sample reports what it did, and a config that breaks the static stage is
//! reported as invalid with its located errors. (The gate's own tests drive
//! the runner through `aegis`; these keep the binary built and honest when
//! the workspace's tests run.)

use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn run(args: &[&str]) -> (serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_aegis-sandbox"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (report, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn replays_the_default_config_against_itself() {
    let configs = repo().join("configs");
    let sample = configs.join("sample.jsonl");
    let (r, err) = run(&[
        "--candidate",
        configs.to_str().unwrap(),
        "--baseline",
        configs.to_str().unwrap(),
        "--sample",
        sample.to_str().unwrap(),
        "--no-probe",
    ]);
    assert_eq!(r["outcome"], "replayed", "{r}\n{err}");
    assert_eq!(r["candidate_version"], r["baseline_version"]);
    assert!(r["peak_rss_bytes"].as_u64().unwrap() > 0);
    // The same config against itself changes nothing.
    let text = r.to_string();
    assert!(text.contains("\"isolation\""), "{text}");
}

#[test]
fn a_broken_config_is_reported_invalid_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("routes.yaml"),
        "routes:\n  - name: r\n    match: { path_prefix: / }\n    upstream: missing\n",
    )
    .unwrap();
    let (r, err) = run(&["--candidate", dir.path().to_str().unwrap(), "--no-probe"]);
    assert_eq!(r["outcome"], "invalid", "{r}\n{err}");
    assert!(r.to_string().contains("routes.yaml:4:15"), "{r}");
}
