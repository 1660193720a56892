//! The gate's catch count over the example corpus: every
//! `configs/examples/{good,dangerous}/*` case that names its base
//! (`# base: NAME`) is judged by the real runner binary against that base
//! (over the shipped set), with the base's sample and policy, and must get
//! exactly the verdict its `# gate:` line states. The shipped examples
//! without a base are judged under load by `proxy/tests/gate_e2e.rs`.
//!
//! Prints one line per case and the totals, e.g.
//! `corpus: 19 of 19 dangerous caught, 6 of 6 good promoted`.

mod common;

use std::path::{Path, PathBuf};

use aegis_proxy::gate::verdict::{self, SandboxOutcome};
use common::repo;

/// The value of `# KEY: ` in the case's yaml files.
fn header(dir: &Path, key: &str) -> Option<String> {
    let prefix = format!("# {key}: ");
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            for line in std::fs::read_to_string(&p).unwrap().lines() {
                if let Some(v) = line.strip_prefix(&prefix) {
                    return Some(v.trim().to_string());
                }
            }
        }
    }
    None
}

fn layer(into: &Path, from: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), into.join(e.file_name())).unwrap();
        }
    }
}

fn judge(case: &Path, base: &Path) -> (String, String) {
    let baseline = tempfile::tempdir().unwrap();
    layer(baseline.path(), &repo().join("configs"));
    layer(baseline.path(), base);
    let candidate = tempfile::tempdir().unwrap();
    layer(candidate.path(), baseline.path());
    layer(candidate.path(), case);
    let sample: PathBuf = base.join("sample.jsonl");
    let report = common::run_runner(candidate.path(), baseline.path(), &sample);
    // The active version's policy, as the gate uses it.
    let (settings, _) = aegis_engine::load_dir(baseline.path()).unwrap();
    let v = verdict::judge(
        &SandboxOutcome::Report(Box::new(report)),
        &settings.gate.policy,
        &settings.gate.sandbox,
    );
    (v.code().to_string(), v.sentence)
}

#[test]
fn every_corpus_case_gets_its_verdict() {
    let mut caught = 0;
    let mut dangerous = 0;
    let mut promoted = 0;
    let mut good = 0;
    let mut wrong = Vec::new();
    for kind in ["dangerous", "good"] {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo().join("configs/examples").join(kind))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for case in dirs {
            let Some(base) = header(&case, "base") else {
                continue;
            };
            let want =
                header(&case, "gate").unwrap_or_else(|| panic!("{}: no # gate:", case.display()));
            let base = repo().join("configs/examples/bases").join(base);
            let (code, sentence) = judge(&case, &base);
            let name = format!("{kind}/{}", case.file_name().unwrap().to_string_lossy());
            eprintln!("{name}: {code}: {sentence}");
            let want_code = if want == "promote" {
                "accept"
            } else {
                want.as_str()
            };
            if kind == "dangerous" {
                dangerous += 1;
                if code != "accept" && !code.starts_with("held:") {
                    caught += 1;
                }
            } else {
                good += 1;
                if code == "accept" {
                    promoted += 1;
                }
            }
            if code != want_code {
                wrong.push(format!(
                    "{name}: expected {want_code}, got {code}: {sentence}"
                ));
            }
        }
    }
    eprintln!(
        "corpus: {caught} of {dangerous} dangerous caught, {promoted} of {good} good promoted"
    );
    assert!(
        dangerous >= 19 && good >= 6,
        "{dangerous} dangerous, {good} good"
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
