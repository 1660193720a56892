//! Corpus cases under live load, end to end (issue 14, item 8): a real
//! `aegis run` with two workers serves the `shop` base
//! (`configs/examples/bases/shop`, its endpoints pointed at a real
//! backend, its listeners on free ports) while client threads send steady
//! traffic to the main, checkout, API and webhook routes. A dangerous case
//! is dropped into the config directory; the test counts every request a
//! client saw fail (any status but 200, a reset, a refused connection)
//! from the drop until 10 s after its verdict, and the verdict's code.
//!
//! Representative cases, one per class the pre-promotion stages catch: a
//! small route broken (`regression:route`), a redirect loop
//! (`regression:redirect_*`), an expired certificate (`regression:tls_*`).
//! For all of them the target is zero failed requests: the candidate never
//! serves. The whole corpus (verdicts and verdict times, without load) is
//! `bench/gate-corpus.sh`.

mod util;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use util::load::{Counts, Load, admin, wait_until};
use util::{Backend, Proxy};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The case's files (or the base's), with the discard endpoint pointed at
/// `backend` and the fixed listen/admin addresses on free ports.
fn copy_into(dir: &Path, from: &Path, backend: &str) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if !e.file_type().unwrap().is_file() {
            continue;
        }
        let name = e.file_name();
        let bytes = std::fs::read(e.path()).unwrap();
        let out = if e.path().extension().is_some_and(|x| x == "yaml") {
            let text = String::from_utf8(bytes).unwrap();
            text.replace("\"127.0.0.1:9\"", &format!("\"{backend}\""))
                .replace("127.0.0.1:8080", "127.0.0.1:0")
                .replace("127.0.0.1:8443", "127.0.0.1:0")
                .replace("\"127.0.0.1:9901\"", "\"127.0.0.1:0\"")
                .into_bytes()
        } else {
            bytes
        };
        std::fs::write(dir.join(name), out).unwrap();
    }
}

/// The `# gate:` line of a case.
fn expected(case: &Path) -> String {
    for e in std::fs::read_dir(case).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            for line in std::fs::read_to_string(&p).unwrap().lines() {
                if let Some(v) = line.strip_prefix("# gate: ") {
                    return v.trim().to_string();
                }
            }
        }
    }
    panic!("{}: no # gate: line", case.display())
}

fn verdicts(p: &Proxy) -> Vec<serde_json::Value> {
    admin(p, "GET", "/admin/verdicts")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn sum(loads: &[Load]) -> Counts {
    let mut total = Counts::default();
    for l in loads {
        let c = l.counts();
        total.ok += c.ok;
        total.broken += c.broken;
        total.refused += c.refused;
        for (s, n) in c.statuses {
            *total.statuses.entry(s).or_default() += n;
        }
    }
    total
}

const PATHS: [&str; 4] = ["/", "/checkout/cart", "/api/v1/items", "/hooks/payment"];

/// Serves the shop, drops `case`, returns (verdict code, seconds from the
/// drop to the verdict, what the clients saw from the drop to 10 s after).
fn run_case(case: &str) -> (String, f64, Counts) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let backend = rt.block_on(Backend::start("shop"));
    let addr = backend.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    for f in ["aegis.yaml", "features.yaml", "routes.yaml", "sample.jsonl"] {
        let from = repo().join("configs").join(f);
        if from.exists() {
            std::fs::copy(&from, dir.path().join(f)).unwrap();
        }
    }
    copy_into(
        dir.path(),
        &repo().join("configs/examples/bases/shop"),
        &addr,
    );
    let mut aegis = std::fs::read_to_string(dir.path().join("aegis.yaml")).unwrap();
    aegis.push_str("access_log: \"off\"\n");
    std::fs::write(dir.path().join("aegis.yaml"), aegis).unwrap();
    let p = Proxy::spawn_in(dir, tempfile::tempdir().unwrap());
    wait_until("the base serving", Duration::from_secs(30), || {
        !verdicts(&p).is_empty()
            && admin(&p, "GET", "/admin/config")["rollout"]["phase"] == "steady"
    });
    let loads: Vec<Load> = PATHS
        .iter()
        .map(|path| Load::start(p.http, 1, path))
        .collect();
    for l in &loads {
        l.wait_ok(20, Duration::from_secs(10));
    }
    let seen = verdicts(&p).len();
    let before = sum(&loads);
    let case_dir = repo().join("configs/examples/dangerous").join(case);
    let dropped = Instant::now();
    copy_into(p.path(), &case_dir, &addr);
    let mut code = String::new();
    wait_until("the case's verdict", Duration::from_secs(30), || {
        let v = verdicts(&p);
        if v.len() > seen
            && let Some(r) = v.first()
        {
            code = r["verdict"]["reason"]
                .as_str()
                .unwrap_or("accept")
                .to_string();
            return true;
        }
        false
    });
    let took = dropped.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(10));
    let seen = sum(&loads).since(&before);
    for l in loads {
        l.finish();
    }
    (code, took, seen)
}

#[test]
fn dangerous_cases_under_load_fail_no_client_request() {
    let mut report = Vec::new();
    for case in ["webhook-maintenance", "redirect-loop", "cert-expired"] {
        let want = expected(&repo().join("configs/examples/dangerous").join(case));
        let (code, took, seen) = run_case(case);
        let line = format!(
            "{case}: {code} after {took:.2}s; {} requests from the drop to 10 s after the verdict, {} failed {seen:?}",
            seen.total(),
            seen.failures()
        );
        eprintln!("{line}");
        report.push((case, want, code, seen, line));
    }
    for (case, want, code, seen, line) in &report {
        assert_eq!(code, want, "{case}: {line}");
        assert!(seen.ok > 0, "{line}");
        assert_eq!(seen.failures(), 0, "{line}");
    }
}
