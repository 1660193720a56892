//! The runner binary on its own: a replay of the shipped config and seed
//! sample reports what it did, and a config that breaks the static stage is
//! reported as invalid with its located errors. (The gate's own tests drive
//! the runner through `aegis`; these keep the binary built and honest when
//! the workspace's tests run.)

mod common;

use std::path::Path;
use std::process::Command;

use common::repo;

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

// ---------------------------------------------------------------------------
// Blast radius: the runner compares the candidate's routes, pools, TLS
// entries, features, rate limits and files with the baseline's, and the
// verdict holds a valid, clean-replaying candidate that changes too much.
// ---------------------------------------------------------------------------

use aegis_engine::config::settings::{GatePolicy, SandboxLimits};
use aegis_proxy::gate::report::SandboxReport;
use aegis_proxy::gate::verdict::{self, SandboxOutcome, Verdict};

/// 20 routes that answer themselves, `/r0/` … `/r19/`, four lines each
/// after the `routes:` line.
fn routes_yaml() -> String {
    let mut t = String::from("routes:\n");
    for i in 0..20 {
        t.push_str(&format!(
            "  - name: r{i}\n    match: {{ path_prefix: \"/r{i}/\" }}\n    respond: {{ status: 200, body: \"route {i} of the main file\\n\" }}\n    response_headers: {{ set: {{ x-route: r{i} }} }}\n"
        ));
    }
    t
}

/// 10 routes to the three pools, `/a0/` … `/a9/`.
fn admin_routes_yaml() -> String {
    let mut t = String::from("routes:\n");
    for i in 0..10 {
        t.push_str(&format!(
            "  - name: a{i}\n    match: {{ path_prefix: \"/a{i}/\" }}\n    upstream: pool{}\n",
            i % 3
        ));
    }
    t
}

fn upstreams_yaml() -> String {
    let mut t = String::from("upstreams:\n");
    for i in 0..3 {
        t.push_str(&format!(
            "  - name: pool{i}\n    endpoints: [\"127.0.0.1:{}\"]\n",
            9100 + i
        ));
    }
    t
}

/// `n` features that never match (no request sends the header), so a
/// larger list blocks nothing.
fn features_yaml(n: usize) -> String {
    let mut t = String::from("features:\n");
    for i in 0..n {
        t.push_str(&format!(
            "  - name: never-{i}\n    weight: 0.01\n    when: {{ header: x-never-{i}, present: true }}\n"
        ));
    }
    t.push_str("scoring:\n  block_at: 1.0\n");
    t
}

/// 1000 recorded requests (no synthetic ones) to the first three routes:
/// the rest are the rarely visited routes a replay cannot vouch for.
fn sample_jsonl() -> String {
    let mut t = String::new();
    for i in 0..1000 {
        let r = i % 3;
        t.push_str(&format!(
            "{{\"method\":\"GET\",\"host\":\"example.com\",\"path\":\"/r{r}/item/{i}\",\"headers\":[[\"user-agent\",\"Mozilla/5.0\"]],\"client_ip\":\"198.51.100.7\",\"status\":200,\"route\":\"r{r}\"}}\n"
        ));
    }
    t
}

/// The 30-route baseline: routes.yaml (20), admin-routes.yaml (10),
/// upstreams.yaml (3 pools), features.yaml (20 features).
fn baseline_files() -> Vec<(&'static str, String)> {
    vec![
        ("routes.yaml", routes_yaml()),
        ("admin-routes.yaml", admin_routes_yaml()),
        ("upstreams.yaml", upstreams_yaml()),
        ("features.yaml", features_yaml(20)),
    ]
}

fn write_dir(files: &[(&str, String)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(d.path().join(name), text).unwrap();
    }
    d
}

/// Runs the runner on `candidate` against `baseline` with the sample; the
/// report and the verdict under the default policy.
fn judge_dirs(candidate: &Path, baseline: &Path, sample: &Path) -> (SandboxReport, Verdict) {
    let report = common::run_runner(candidate, baseline, sample);
    let v = verdict::judge(
        &SandboxOutcome::Report(Box::new(report.clone())),
        &GatePolicy::default(),
        &SandboxLimits::default(),
    );
    (report, v)
}

/// The baseline, its sample, and a candidate made from the baseline's files
/// by `edit`.
fn judge_edit(edit: impl FnOnce(&mut Vec<(&'static str, String)>)) -> (SandboxReport, Verdict) {
    let base = write_dir(&baseline_files());
    let sample = base.path().join("sample.jsonl");
    std::fs::write(&sample, sample_jsonl()).unwrap();
    let mut files = baseline_files();
    edit(&mut files);
    let cand = write_dir(&files);
    judge_dirs(cand.path(), base.path(), &sample)
}

fn file_mut<'a>(files: &'a mut [(&'static str, String)], name: &str) -> &'a mut String {
    &mut files.iter_mut().find(|(n, _)| *n == name).unwrap().1
}

#[test]
fn blast_radius_truncated_routes_file_is_held_with_the_numbers() {
    let (r, v) = judge_edit(|files| {
        // What an interrupted copy leaves: the first 13 lines (three routes).
        let f = file_mut(files, "routes.yaml");
        *f = f.lines().take(13).map(|l| format!("{l}\n")).collect();
    });
    assert_eq!(r.replay.as_ref().unwrap().changes.changed.count, 0, "{r:?}");
    let b = r.blast_radius.as_ref().unwrap();
    assert_eq!((b.routes.baseline, b.routes.candidate), (30, 13));
    assert_eq!(b.routes.removed, 17);
    assert!((b.routes.removed_share - 17.0 / 30.0).abs() < 1e-9);
    assert_eq!(
        b.routes.removed_names.first().map(String::as_str),
        Some("r3")
    );
    assert_eq!(b.files.removed, 0);
    let routes = b
        .file_bytes
        .iter()
        .find(|f| f.name == "routes.yaml")
        .unwrap();
    let (before, after) = (routes.baseline.unwrap(), routes.candidate.unwrap());
    assert!(after * 4 < before, "{routes:?}");
    assert!(v.is_held(), "{v:?}");
    assert_eq!(v.code(), "held:blast_radius");
    assert_eq!(
        v.sentence,
        format!(
            "held: 17 of 30 routes removed (56.7% > 20%), routes.yaml shrank {before} → {after} bytes; confirm with POST /admin/confirm"
        )
    );
}

#[test]
fn blast_radius_deleted_routes_file_is_held() {
    let (r, v) = judge_edit(|files| files.retain(|(n, _)| *n != "admin-routes.yaml"));
    assert_eq!(r.replay.as_ref().unwrap().changes.changed.count, 0);
    let b = r.blast_radius.as_ref().unwrap();
    assert_eq!((b.files.baseline, b.files.removed), (4, 1));
    assert_eq!(b.files.removed_names, vec!["admin-routes.yaml".to_string()]);
    assert_eq!(b.routes.removed, 10);
    // The pools are still defined: nothing removed there.
    assert_eq!(b.upstreams.removed, 0);
    assert!(v.is_held(), "{v:?}");
    assert!(
        v.sentence.starts_with(
            "held: 10 of 30 routes removed (33.3% > 20%), 1 of 4 config files removed (25.0% > 20%: admin-routes.yaml)"
        ),
        "{}",
        v.sentence
    );
}

#[test]
fn blast_radius_doubled_feature_file_is_held() {
    let (r, v) = judge_edit(|files| *file_mut(files, "features.yaml") = features_yaml(40));
    assert_eq!(r.replay.as_ref().unwrap().changes.changed.count, 0);
    let b = r.blast_radius.as_ref().unwrap();
    assert_eq!((b.features.baseline, b.features.candidate), (20, 40));
    let f = b
        .file_bytes
        .iter()
        .find(|f| f.name == "features.yaml")
        .unwrap();
    assert!(
        f.candidate.unwrap() > f.baseline.unwrap() * 19 / 10,
        "{f:?}"
    );
    assert!(v.is_held(), "{v:?}");
    assert!(
        v.sentence.contains("features grew 20 → 40 (2.0× ≥ 2×)"),
        "{}",
        v.sentence
    );
}

#[test]
fn blast_radius_one_route_edit_or_two_more_routes_are_not_held() {
    let (r, v) = judge_edit(|files| {
        let f = file_mut(files, "routes.yaml");
        *f = f.replace("\"/r7/\"", "\"/r7-new/\"");
    });
    assert!(v.accepted, "{v:?}");
    let b = r.blast_radius.as_ref().unwrap();
    assert_eq!((b.routes.removed, b.routes.added), (0, 0));

    let (r, v) = judge_edit(|files| {
        file_mut(files, "admin-routes.yaml").push_str(
            "  - name: a10\n    match: { path_prefix: \"/a10/\" }\n    upstream: pool0\n  - name: a11\n    match: { path_prefix: \"/a11/\" }\n    upstream: pool1\n",
        );
    });
    assert!(v.accepted, "{v:?}");
    assert_eq!(r.blast_radius.as_ref().unwrap().routes.added, 2);
}

#[test]
fn blast_radius_shipped_configs_are_not_held() {
    let configs = repo().join("configs");
    let sample = configs.join("sample.jsonl");
    // Each shipped set against itself.
    for dir in [configs.clone(), configs.join("examples/multi-upstream")] {
        let (r, v) = judge_dirs(&dir, &dir, &sample);
        assert!(v.accepted, "{}: {v:?}", dir.display());
        let b = r.blast_radius.unwrap();
        assert_eq!(b.routes.removed + b.files.removed + b.upstreams.removed, 0);
    }
    // The good examples over the shipped set (as docs/GATE.md shows them).
    for name in ["add-api-route", "add-feature"] {
        let d = tempfile::tempdir().unwrap();
        for f in ["aegis.yaml", "routes.yaml", "features.yaml"] {
            std::fs::copy(configs.join(f), d.path().join(f)).unwrap();
        }
        let ex = configs.join("examples/good").join(name);
        for e in std::fs::read_dir(&ex).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), d.path().join(e.file_name())).unwrap();
        }
        let (_, v) = judge_dirs(d.path(), &configs, &sample);
        assert!(v.accepted, "{name}: {v:?}");
    }
}

#[test]
fn blast_radius_needs_a_baseline() {
    let cand = write_dir(&baseline_files());
    let out = Command::new(env!("CARGO_BIN_EXE_aegis-sandbox"))
        .args(["--candidate", cand.path().to_str().unwrap(), "--no-probe"])
        .output()
        .unwrap();
    let r: SandboxReport = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r.blast_radius.is_none());
    let v = verdict::judge(
        &SandboxOutcome::Report(Box::new(r)),
        &GatePolicy::default(),
        &SandboxLimits::default(),
    );
    assert!(v.accepted, "{v:?}");
}
