//! Every config shipped in `configs/` and `configs/examples/` loads with
//! exactly the outcome its `# expect:` line states.
//!
//! `good/*` and `dangerous/*` examples are drop-ins: their files are copied
//! over the default set (replacing files of the same name), as a person
//! would drop them into the watched directory.

use std::path::{Path, PathBuf};

use aegis_engine::config::LoadError;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

enum Expect {
    Valid,
    Invalid(String),
}

fn expectation(dir: &Path) -> Expect {
    let mut found = None;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                if let Some(rest) = line.strip_prefix("# expect: ") {
                    let e = if rest.trim() == "valid" {
                        Expect::Valid
                    } else {
                        let msg = rest
                            .strip_prefix("invalid ")
                            .expect("expect: valid | invalid \"...\"");
                        Expect::Invalid(msg.trim().trim_matches('"').to_string())
                    };
                    assert!(
                        found.is_none()
                            || matches!((&found, &e), (Some(Expect::Valid), Expect::Valid))
                    );
                    found = Some(e);
                }
            }
        }
    }
    found.unwrap_or_else(|| panic!("{}: no `# expect:` line", dir.display()))
}

/// `# base: NAME` in an example's files: it is dropped over
/// `configs/examples/bases/NAME` (itself over the default set) rather than
/// over the default set alone.
pub fn base_of(dir: &Path) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                if let Some(rest) = line.strip_prefix("# base: ") {
                    return Some(repo().join("configs/examples/bases").join(rest.trim()));
                }
            }
        }
    }
    None
}

fn overlay(example: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut layers = vec![repo().join("configs")];
    layers.extend(base_of(example));
    layers.push(example.to_path_buf());
    for base in layers {
        for entry in std::fs::read_dir(base).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
            }
        }
    }
    dir
}

fn check(name: &str, dir: &Path, expect: Expect) {
    match (aegis_engine::load_dir(dir), expect) {
        (Ok(_), Expect::Valid) => {}
        (Err(LoadError::Invalid(d)), Expect::Invalid(msg)) => {
            assert!(
                d.to_string().contains(&msg),
                "{name}: expected an error containing {msg:?}, got:\n{d}"
            );
        }
        (Ok((_, c)), Expect::Invalid(msg)) => panic!(
            "{name}: loaded ({}) but expected error {msg:?}",
            c.summary()
        ),
        (Err(e), Expect::Valid) => panic!("{name}: expected valid, got:\n{e}"),
        (Err(e), Expect::Invalid(_)) => panic!("{name}: could not be read: {e}"),
    }
}

#[test]
fn bases_are_valid() {
    let merged = tempfile::tempdir().unwrap();
    for layer in [
        repo().join("configs"),
        repo().join("configs/examples/bases/shop"),
    ] {
        for entry in std::fs::read_dir(layer).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), merged.path().join(entry.file_name())).unwrap();
            }
        }
    }
    let (settings, c) = aegis_engine::load_dir(merged.path()).unwrap();
    assert_eq!(settings.listen_tls, vec!["127.0.0.1:8443"]);
    assert_eq!(c.certificates.len(), 1);
}

#[test]
fn default_set_is_valid() {
    let (settings, config) = aegis_engine::load_dir(&repo().join("configs")).unwrap();
    assert_eq!(settings.listen, vec!["127.0.0.1:8080"]);
    assert_eq!(settings.admin, "127.0.0.1:9901");
    assert!(config.routes.iter().any(|r| &*r.name == "welcome"));
}

#[test]
fn multi_upstream_example_is_valid() {
    let dir = repo().join("configs/examples/multi-upstream");
    check("multi-upstream", &dir, expectation(&dir));
    let (_, c) = aegis_engine::load_dir(&dir).unwrap();
    assert_eq!(c.upstreams.len(), 4);
    assert_eq!(c.certificates.len(), 2);
}

#[test]
fn drop_in_examples_have_their_expected_outcome() {
    let mut seen = 0;
    for kind in ["good", "dangerous"] {
        let mut dirs: Vec<_> = std::fs::read_dir(repo().join("configs/examples").join(kind))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for example in dirs {
            let name = format!("{kind}/{}", example.file_name().unwrap().to_string_lossy());
            let merged = overlay(&example);
            check(&name, merged.path(), expectation(&example));
            seen += 1;
        }
    }
    // The shipped nine (documented in the README) and the corpus of issue
    // 14 (docs/GATE.md): 9 + 25.
    assert_eq!(seen, 34);
}

#[test]
fn the_doubled_feature_file_names_count_and_limit() {
    let merged = overlay(&repo().join("configs/examples/dangerous/feature-file-doubled"));
    let Err(LoadError::Invalid(d)) = aegis_engine::load_dir(merged.path()) else {
        panic!("must be invalid")
    };
    assert_eq!(d.len(), 1, "{d}");
    let line = d.to_string();
    assert!(line.starts_with("features.yaml:"), "{line}");
    assert!(line.contains("features[200]"), "{line}");
}

#[test]
fn synthetic_examples_hit_their_own_route() {
    let (_, c) = aegis_engine::load_dir(&repo().join("configs/examples/multi-upstream")).unwrap();
    let mut checked = 0;
    for route in &c.routes {
        for ex in &route.examples {
            let mut headers = http::HeaderMap::new();
            for (k, v) in &ex.headers {
                headers.insert(k.clone(), v.clone());
            }
            let head = aegis_engine::RequestHead {
                method: &ex.method,
                scheme: "https",
                host: ex.host.as_deref(),
                path: &ex.path,
                query: None,
                headers: &headers,
                client_ip: "192.0.2.1".parse().unwrap(),
                port: 0,
            };
            let d = aegis_engine::decide(&c, &head, aegis_engine::DecideOptions::default());
            assert_eq!(d.route.map(|r| &*r.name), Some(&*route.name), "{ex:?}");
            checked += 1;
        }
    }
    // shop-images is a regex route: no example; shop.example.com's
    // wildcard gives the redirect route one.
    assert!(checked >= 9, "{checked}");
}
