//! The watcher with a relative `--config-dir` (the README's `configs`):
//! an edit in place is seen, and the gate's own reads of the directory do
//! not wake it again (they once made it re-judge a rejected candidate every
//! few hundred milliseconds, counting the rejection each time).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn admin_json(admin: SocketAddr, path: &str) -> serde_json::Value {
    let body = admin_text(admin, path);
    serde_json::from_str(if body.is_empty() { "null" } else { &body }).unwrap()
}

/// `root/configs/` with an `aegis.yaml` of one process on ephemeral ports
/// (plus `extra` settings lines), for `start(root)`.
fn configs(root: &Path, extra: &str) -> PathBuf {
    let conf = root.join("configs");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("aegis.yaml"),
        format!("listen: [\"127.0.0.1:0\"]\nadmin: \"127.0.0.1:0\"\nworkers: 0\naccess_log: \"off\"\ngate: {{ debounce: 50ms }}\n{extra}"),
    )
    .unwrap();
    conf
}

const GOOD: &str = "routes:\n  - name: hello\n    match: { path_prefix: / }\n    respond: { status: 200, body: \"hello\\n\" }\n";

#[test]
fn relative_config_dir_sees_edits_in_place_and_does_not_rejudge_itself() {
    let root = tempfile::tempdir().unwrap();
    let conf = configs(root.path(), "");
    std::fs::write(conf.join("routes.yaml"), GOOD).unwrap();
    let (proc, admin) = start(root.path());
    let v0 = admin_json(admin, "/admin/config")["version"].clone();

    // An invalid file, written in place (no rename: only the file's own
    // events say it changed).
    std::fs::write(conf.join("routes.yaml"), "routes: [").unwrap();
    let start = Instant::now();
    while admin_json(admin, "/admin/config")["rejections"]["invalid"] != 1 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the in-place edit was not judged: {}",
            admin_json(admin, "/admin/config")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let config = admin_json(admin, "/admin/config");
    assert_eq!(config["rejections"]["invalid"], 1, "re-judged: {config}");
    assert_eq!(config["candidates"], 2, "startup + the edit: {config}");
    assert_eq!(config["version"], v0);

    // A fix, in place again, is promoted.
    std::fs::write(
        conf.join("routes.yaml"),
        GOOD.replace("hello\\n", "fixed\\n"),
    )
    .unwrap();
    let start = Instant::now();
    while admin_json(admin, "/admin/config")["version"] == v0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the fix was not promoted: {}",
            admin_json(admin, "/admin/config")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A new version is a promotion, not a rollback.
    let config = admin_json(admin, "/admin/config");
    assert_eq!(config["rollbacks"], 0, "{config}");
    drop(proc);
}

fn admin_text(admin: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}

fn start(root: &Path) -> (Running, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_aegis"))
        .current_dir(root)
        .args(["run", "--config-dir", "configs", "--state-dir", "state"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let proc = Running(child);
    let mut admin = None;
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if let Some(a) = line.strip_prefix("aegis: listening admin ") {
            admin = Some(a.parse::<SocketAddr>().unwrap());
            break;
        }
    }
    (proc, admin.expect("aegis did not start"))
}

/// A certificate renewed in place under `certs/` (no top-level file
/// touched) is a new candidate: the watch is recursive. Before, the
/// renewal was never judged and the old certificate kept serving.
#[test]
fn a_certificate_renewed_in_place_under_certs_is_judged() {
    let root = tempfile::tempdir().unwrap();
    let conf = configs(root.path(), "");
    std::fs::create_dir_all(conf.join("certs")).unwrap();
    std::fs::write(conf.join("routes.yaml"), GOOD).unwrap();
    std::fs::write(
        conf.join("tls.yaml"),
        "tls:\n  - server_names: [a.example.com]\n    certificate: certs/a.pem\n    key: certs/a.key\n",
    )
    .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = |cn: &str| {
        let mut p = rcgen::CertificateParams::new(vec!["a.example.com".to_string()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.self_signed(&key).unwrap().pem()
    };
    std::fs::write(conf.join("certs/a.pem"), cert("first")).unwrap();
    std::fs::write(conf.join("certs/a.key"), key.serialize_pem()).unwrap();
    let (proc, admin) = start(root.path());
    let v0 = admin_json(admin, "/admin/config")["version"].clone();
    assert!(v0.is_string(), "{v0}");

    // Let the start-up looks settle: only the renewal may wake the gate.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(admin_json(admin, "/admin/config")["version"], v0);
    std::fs::write(conf.join("certs/a.pem"), cert("renewed")).unwrap();
    let start = Instant::now();
    while admin_json(admin, "/admin/config")["version"] == v0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the renewed certificate was not judged: {}",
            admin_json(admin, "/admin/config")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(proc);
}

/// A file over `limits.max_file_size` in `aegis run`: a verdict the operator
/// sees (`could_not_judge:read`, with the file and the limit) and a metric,
/// as `aegis check` says `invalid` for it; the active version keeps serving.
#[test]
fn a_file_over_max_file_size_gets_a_verdict_and_a_metric() {
    let root = tempfile::tempdir().unwrap();
    let conf = configs(root.path(), "limits: { max_file_size: 4KiB }\n");
    std::fs::write(conf.join("routes.yaml"), GOOD).unwrap();
    let (proc, admin) = start(root.path());
    let v0 = admin_json(admin, "/admin/config")["version"].clone();
    let big = format!("{GOOD}# {}\n", "x".repeat(8 << 10));
    std::fs::write(conf.join("big.yaml"), big).unwrap();
    let start = Instant::now();
    loop {
        let config = admin_json(admin, "/admin/config");
        let metrics = admin_text(admin, "/metrics");
        let seen = config["could_not_judge"]["reason"] == "could_not_judge:read"
            && metrics.contains("aegis_config_could_not_judge_total{reason=\"read\"}");
        if seen {
            let detail = config["could_not_judge"]["detail"].to_string();
            assert!(detail.contains("big.yaml"), "{config}");
            assert!(detail.contains("max_file_size"), "{config}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no verdict or metric for the oversized file: {config}\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(admin_json(admin, "/admin/config")["version"], v0);
    drop(proc);
}

/// `aegis run` end to end: a route of 1 % of the sample that starts failing
/// is rejected by name (`regression:route`, under every global share), and
/// a redirect loop that answers 301 (no worse status class) is rejected as
/// `regression:redirect_loop`; the active version keeps serving.
#[test]
fn aegis_run_rejects_a_small_broken_route_and_a_redirect_loop() {
    let root = tempfile::tempdir().unwrap();
    let conf = configs(root.path(), "");
    let routes = |small: &str, extra: &str| {
        format!(
            "routes:\n  - name: small\n    match: {{ path: \"/small\" }}\n    respond: {{ status: {small}, body: \"small\" }}\n{extra}  - name: page\n    match: {{ path_prefix: \"/\" }}\n    respond: {{ status: 200, body: \"page\" }}\n"
        )
    };
    std::fs::write(conf.join("routes.yaml"), routes("200", "")).unwrap();
    let mut sample = String::new();
    for i in 0..1000 {
        let (path, route) = if i % 100 == 0 {
            ("/small", "small")
        } else if i % 2 == 0 {
            ("/", "page")
        } else {
            ("/other", "page")
        };
        sample.push_str(&format!(
            "{{\"method\":\"GET\",\"host\":\"example.com\",\"path\":\"{path}\",\"status\":200,\"route\":\"{route}\"}}\n"
        ));
    }
    std::fs::write(conf.join("sample.jsonl"), sample).unwrap();
    let (proc, admin) = start(root.path());
    let v0 = admin_json(admin, "/admin/config")["version"].clone();
    let wait_rejection = |code: &str| {
        let start = Instant::now();
        loop {
            let config = admin_json(admin, "/admin/config");
            if config["rejections"][code] == 1 {
                assert_eq!(config["version"], v0, "{config}");
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no {code}: {config}\n{}",
                admin_text(admin, "/admin/verdicts")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    std::fs::write(conf.join("routes.yaml"), routes("503", "")).unwrap();
    wait_rejection("regression:route");
    let verdicts = admin_text(admin, "/admin/verdicts");
    assert!(
        verdicts.contains("route small: success 100.0% → 0.0% of 10"),
        "{verdicts}"
    );

    std::fs::write(
        conf.join("routes.yaml"),
        routes(
            "200",
            "  - name: root\n    match: { path: \"/\" }\n    redirect: { status: 301, location: \"/index\" }\n  - name: index\n    match: { path: \"/index\" }\n    redirect: { status: 302, location: \"/\" }\n",
        ),
    )
    .unwrap();
    wait_rejection("regression:redirect_loop");
    drop(proc);
}
