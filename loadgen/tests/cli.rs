//! The `aegis-loadgen` binary end to end.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_aegis-loadgen");

/// A backend process on a free port; killed on drop.
struct Backend {
    child: Child,
    url: String,
}

impl Backend {
    fn start(name: &str) -> Self {
        let mut child = Command::new(BIN)
            .args([
                "backend",
                "--listen",
                "127.0.0.1:0",
                "--name",
                name,
                "--threads",
                "1",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line.trim().rsplit(' ').next().unwrap().to_string();
        assert!(line.contains("listening on"), "{line}");
        Self {
            child,
            url: format!("http://{addr}"),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn run_writes_json_and_fails_on_error() {
    let be = Backend::start("cli");
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");

    let out = Command::new(BIN)
        .args([
            "run",
            "--target",
            &be.url,
            "-n",
            "200",
            "-c",
            "4",
            "--no-live",
            "--fail-on-error",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("p99.9"), "{text}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["requests"], 200);
    assert_eq!(v["statuses"]["200"], 200);
    assert_eq!(v["errors"]["total"], 0);
    for p in ["p50", "p90", "p99", "p999", "max"] {
        assert!(v["latency_ms"][p].as_f64().unwrap() > 0.0, "{p}");
    }

    let out = Command::new(BIN)
        .args(["run", "--target", &format!("{}/status/500", be.url)])
        .args([
            "-n",
            "10",
            "--expect",
            "200",
            "--fail-on-error",
            "--json",
            "-",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["errors"]["unexpected_status"], 10);

    // Without --fail-on-error the same run exits 0.
    let out = Command::new(BIN)
        .args([
            "run",
            "--target",
            &format!("{}/status/500", be.url),
            "-n",
            "5",
            "--expect",
            "200",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn live_line_with_flag() {
    let be = Backend::start("live");
    let out = Command::new(BIN)
        .args([
            "run",
            "--target",
            &format!("{}/?delay_ms=1", be.url),
            "-d",
            "1500ms",
            "-c",
            "2",
            "--live",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("req/s") && err.contains("p99"), "{err}");
    // Without a terminal and without --live there is no live line.
    let out = Command::new(BIN)
        .args(["run", "--target", &be.url, "-n", "10"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).is_empty());
}

#[test]
fn sample_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("mix.yaml");
    std::fs::write(
        &scenario,
        "host: shop.example\nexpect: [200]\nrequests:\n  - path: /products?page=2\n    weight: 3\n  - method: POST\n    path: /cart\n    body_size: 64\n    headers: { cookie: secret }\n",
    )
    .unwrap();
    let sample = |seed: &str, name: &str| {
        let out = dir.path().join(name);
        let st = Command::new(BIN)
            .args(["sample", "--scenario"])
            .arg(&scenario)
            .args(["--count", "200", "--seed", seed, "--out"])
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::read(out).unwrap()
    };
    let a = sample("7", "a.jsonl");
    let b = sample("7", "b.jsonl");
    let c = sample("8", "c.jsonl");
    assert_eq!(a, b);
    assert_ne!(a, c);
    let (s, report) = aegis_engine::sample::TrafficSample::read(
        &a[..],
        aegis_engine::sample::SampleLimits::default(),
    )
    .unwrap();
    assert_eq!(s.requests.len(), 200);
    assert_eq!(report.invalid_lines, 0);
    let posts: Vec<_> = s.requests.iter().filter(|r| r.method == "POST").collect();
    assert!(!posts.is_empty() && posts.len() < 100, "{}", posts.len());
    assert!(
        posts
            .iter()
            .all(|r| r.body_len == 64 && r.headers[0].1 == "[redacted]")
    );
    let get = s.requests.iter().find(|r| r.method == "GET").unwrap();
    assert_eq!(get.path, "/products");
    assert_eq!(get.query.as_deref(), Some("page=2"));
    assert_eq!(get.host.as_deref(), Some("shop.example"));
}

#[test]
fn help_documents_endpoints_and_scenarios() {
    let out = Command::new(BIN)
        .args(["backend", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "/echo",
        "/delay/MS",
        "/bytes/N",
        "/admin/freeze",
        "delay_ms",
        "fail=P",
        "--fail-share",
    ] {
        assert!(
            text.contains(needle),
            "{needle} missing from backend --help"
        );
    }
    let out = Command::new(BIN).args(["run", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--rate",
        "--http2",
        "--insecure",
        "--scenario",
        "weight",
        "intended send time",
    ] {
        assert!(text.contains(needle), "{needle} missing from run --help");
    }
}

#[test]
fn bad_input_is_reported() {
    let out = Command::new(BIN)
        .args(["run", "--target", "localhost:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("scheme"));
    let out = Command::new(BIN)
        .args([
            "run",
            "--target",
            "http://127.0.0.1:1",
            "--scenario",
            "/nonexistent.yaml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonexistent.yaml"));
}

/// Sends SIGTERM (what `docker stop` sends) and waits up to `within`.
fn terminate(child: &mut Child, within: std::time::Duration) -> Option<std::process::ExitStatus> {
    let pid = child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success());
    let until = std::time::Instant::now() + within;
    while std::time::Instant::now() < until {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    None
}

#[test]
fn backend_and_run_stop_on_sigterm() {
    let mut be = Backend::start("term");
    let mut run = Command::new(BIN)
        .args([
            "run",
            "--target",
            &be.url,
            "-c",
            "2",
            "-d",
            "60s",
            "--no-live",
        ])
        .args(["--json", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // Handled, not merely fatal: a clean exit with the report of what ran
    // (a process that is PID 1 in a container would otherwise ignore it).
    let status = terminate(&mut run, std::time::Duration::from_secs(5));
    assert!(status.is_some_and(|s| s.success()), "run: {status:?}");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut run.stdout.take().unwrap(), &mut out).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["requests"].as_u64().unwrap() > 0, "{out}");

    let status = terminate(&mut be.child, std::time::Duration::from_secs(5));
    assert!(status.is_some_and(|s| s.success()), "backend: {status:?}");
}
