//! Operations: access log lines, the admin token, hash balancing and a
//! graceful drain on SIGTERM.

mod util;

use std::time::Duration;

use http::Request;
use util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_json_line_per_request() {
    let a = Backend::start("a").await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let routes = format!(
        r#"
upstreams:
  - name: a
    endpoints: ["{}"]
routes:
  - name: r
    match: {{ path_prefix: "/" }}
    upstream: a
"#,
        a.addr
    );
    let p = Proxy::start(
        &format!("access_log: \"{}\"\n", log.path().display()),
        &routes,
    );
    let c = client();
    let r = send(
        &c,
        Request::post(p.url("/up?x=1"))
            .header("host", "shop.test")
            .body(full("12345"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(get(&c, &p.url("/missing-nothing"), None).await.status, 200);
    let mut lines = Vec::new();
    for _ in 0..50 {
        lines = std::fs::read_to_string(log.path())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        if lines.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lines.len(), 2, "{lines:?}");
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["host"], "shop.test");
    assert_eq!(v["path"], "/up");
    assert_eq!(v["status"], 200);
    assert_eq!(v["bytes_in"], 5);
    assert!(v["bytes_out"].as_u64().unwrap() > 0);
    assert_eq!(v["route"], "r");
    assert_eq!(v["endpoint"], a.addr.to_string());
    assert_eq!(v["client"], "127.0.0.1");
    assert!(v["config_version"].as_str().unwrap().len() == 12);
    assert!(v["time"].as_str().unwrap().ends_with('Z'));
    assert!(v["duration_ms"].as_f64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_and_token() {
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), "s3cret\n").unwrap();
    let p = Proxy::start(
        &format!("admin_token_file: \"{}\"\n", token_file.path().display()),
        "routes: [{ name: r, match: { path_prefix: / }, respond: { body: ok } }]\n",
    );
    let c = client();
    let url = |path: &str| format!("http://{}{}", p.admin.unwrap(), path);
    assert_eq!(get(&c, &url("/healthz"), None).await.status, 401);
    let authed = |path: &str| {
        Request::get(url(path))
            .header("authorization", "Bearer s3cret")
            .body(full(""))
            .unwrap()
    };
    assert_eq!(send(&c, authed("/healthz")).await.text(), "ok\n");
    let cfg = send(&c, authed("/admin/config")).await.json();
    assert_eq!(cfg["routes"][0], "r");
    let _ = get(&c, &p.url("/"), None).await;
    let metrics = send(&c, authed("/metrics")).await.text();
    assert!(
        metrics.contains("aegis_requests_total{route=\"r\",status=\"200\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("aegis_request_duration_seconds_bucket"));
    assert!(metrics.contains("aegis_config_info{version="));
}

#[test]
fn admin_off_loopback_without_token_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("aegis.yaml"),
        "listen: [\"127.0.0.1:0\"]\nadmin: \"0.0.0.0:0\"\nadmin_token_env: AEGIS_TEST_NO_SUCH_TOKEN\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aegis"))
        .args(["run", "--config-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("token"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_balancing_is_sticky_per_key() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let routes = format!(
        r#"
upstreams:
  - name: h
    balance: {{ hash: {{ header: x-user }} }}
    endpoints: ["{}", "{}"]
routes:
  - name: r
    match: {{ path_prefix: "/" }}
    upstream: h
"#,
        a.addr, b.addr
    );
    let p = Proxy::start("", &routes);
    let c = client();
    let mut seen = std::collections::HashSet::new();
    for user in 0..16 {
        let mut first = None;
        for _ in 0..3 {
            let r = send(
                &c,
                Request::get(p.url("/"))
                    .header("x-user", format!("u{user}"))
                    .body(full(""))
                    .unwrap(),
            )
            .await;
            let be = r.backend().unwrap();
            assert_eq!(*first.get_or_insert(be.clone()), be, "user {user} moved");
            seen.insert(be);
        }
    }
    assert_eq!(seen.len(), 2, "16 users all on one endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight() {
    let a = Backend::start("a").await;
    let routes = format!(
        r#"
upstreams:
  - name: a
    endpoints: ["{}"]
routes:
  - name: r
    match: {{ path_prefix: "/" }}
    upstream: a
"#,
        a.addr
    );
    let mut p = Proxy::start("drain_timeout: 5s\n", &routes);
    let c = client();
    let url = p.url("/slow/800");
    let inflight = tokio::spawn(async move { get(&c, &url, None).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(p.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // No new connections once draining.
    assert!(std::net::TcpStream::connect(p.http).is_err());
    let r = inflight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "slow");
    let status = tokio::task::spawn_blocking(move || p.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
}
