//! The load engine against the demo backend, in-process.
//!
//! Bounds are generous: these tests must pass on a loaded 2-core machine.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use aegis_loadgen::backend::{self, BackendConfig, BackendHandle};
use aegis_loadgen::report::Report;
use aegis_loadgen::run::{RunConfig, run};
use aegis_loadgen::scenario::Scenario;

fn start_backend(name: &str) -> BackendHandle {
    let mut cfg = BackendConfig::new("127.0.0.1:0".parse().unwrap(), name);
    cfg.threads = Some(2);
    backend::spawn(cfg).unwrap()
}

fn cfg(url: &str) -> RunConfig {
    let mut c = RunConfig::new(url);
    c.connections = 4;
    c.threads = 2;
    c.timeout = Duration::from_secs(5);
    c
}

fn run_ok(c: &RunConfig) -> Report {
    let r = run(c).unwrap();
    eprintln!("{}", r.render());
    r
}

/// A raw HTTP/1.1 exchange with `Connection: close`; returns (head, body).
fn raw(addr: std::net::SocketAddr, request: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

#[test]
fn counts_are_exact_closed_loop() {
    let be = start_backend("a");
    let mut c = cfg(&be.url());
    c.connections = 8;
    c.requests = Some(1000);
    let r = run_ok(&c);
    assert_eq!(r.requests, 1000);
    assert_eq!(r.responses, 1000);
    assert_eq!(r.statuses.get(&200), Some(&1000));
    assert_eq!(r.errors.total, 0);
    assert!(r.latency_ms.p50 > 0.0);
    assert_eq!(
        be.served(),
        1000,
        "the backend saw every request exactly once"
    );
    assert_eq!(r.body_bytes, 2 * 1000, "body `a\\n` each time");
}

#[test]
fn counts_are_exact_open_loop() {
    let be = start_backend("b");
    let mut c = cfg(&be.url());
    c.requests = Some(300);
    c.rate = Some(1000.0);
    let r = run_ok(&c);
    assert_eq!(r.mode, "open");
    assert_eq!(r.requests, 300);
    assert_eq!(r.statuses.get(&200), Some(&300));
    assert_eq!(be.served(), 300);
    // 300 requests at 1000/s take about 0.3 s.
    assert!(
        r.elapsed_s >= 0.25 && r.elapsed_s < 5.0,
        "elapsed {}",
        r.elapsed_s
    );
}

#[test]
fn counts_are_exact_http2() {
    let be = start_backend("h2");
    let mut c = cfg(&be.url());
    c.http2 = true;
    c.requests = Some(500);
    let r = run_ok(&c);
    assert_eq!(r.protocol, "http2");
    assert_eq!(r.requests, 500);
    assert_eq!(r.statuses.get(&200), Some(&500));
    assert_eq!(be.served(), 500);
}

#[test]
fn percentiles_match_a_known_delay() {
    let be = start_backend("slow");
    let mut c = cfg(&format!("{}/delay/20", be.url()));
    c.requests = Some(200);
    let r = run_ok(&c);
    assert_eq!(r.responses, 200);
    let l = &r.latency_ms;
    assert!(l.min >= 19.9, "min {l:?}");
    assert!(l.p50 >= 20.0 && l.p50 <= 60.0, "p50 {l:?}");
    assert!(l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max);
}

#[test]
fn duration_mode_stops_on_time() {
    let be = start_backend("d");
    let mut c = cfg(&format!("{}/?delay_ms=2", be.url()));
    c.duration = Some(Duration::from_secs(1));
    let r = run_ok(&c);
    assert!(
        r.elapsed_s >= 0.95 && r.elapsed_s < 4.0,
        "elapsed {}",
        r.elapsed_s
    );
    assert!(r.responses > 10);
    assert_eq!(r.requests, r.responses);
    assert_eq!(be.served(), r.responses);
}

/// Closed loop vs open loop against the same 1 s freeze: the closed loop's
/// connections simply wait, so only a handful of requests see the stall and
/// p99 stays low; the open loop counts from the intended send times, so every
/// request that should have been sent during the freeze shows it.
#[test]
fn open_loop_reports_a_freeze_that_closed_loop_hides() {
    fn with_freeze(mut c: RunConfig, be: &BackendHandle) -> Report {
        let d = Duration::from_secs(3);
        c.duration = Some(d);
        c.connections = 2;
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(1000));
                be.freeze(Duration::from_secs(1));
            });
            run_ok(&c)
        })
    }
    let be_closed = start_backend("closed");
    let be_open = start_backend("open");
    let closed_cfg = cfg(&format!("{}/?delay_ms=2", be_closed.url()));
    let mut open_cfg = cfg(&format!("{}/?delay_ms=2", be_open.url()));
    open_cfg.rate = Some(100.0);
    let (closed, open) = std::thread::scope(|s| {
        let closed = s.spawn(|| with_freeze(closed_cfg, &be_closed));
        let open = s.spawn(|| with_freeze(open_cfg, &be_open));
        (closed.join().unwrap(), open.join().unwrap())
    });
    // Both see the stall in their maximum...
    assert!(
        closed.latency_ms.max >= 800.0,
        "closed {:?}",
        closed.latency_ms
    );
    assert!(open.latency_ms.max >= 800.0, "open {:?}", open.latency_ms);
    // ...but only the open loop reports it in the percentiles.
    assert!(
        closed.responses >= 300,
        "closed loop too slow to judge: {}",
        closed.responses
    );
    assert!(
        closed.latency_ms.p99 < 300.0,
        "closed {:?}",
        closed.latency_ms
    );
    assert!(open.latency_ms.p99 >= 700.0, "open {:?}", open.latency_ms);
    assert!(open.latency_ms.p90 >= 300.0, "open {:?}", open.latency_ms);
    assert!(open.latency_ms.p99 > 3.0 * closed.latency_ms.p99);
    // The open loop kept its schedule: ~300 requests in 3 s.
    assert!(
        (250..=310).contains(&open.requests),
        "open requests {}",
        open.requests
    );
}

#[test]
fn refused_is_classified() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut c = cfg(&format!("http://127.0.0.1:{port}/"));
    c.requests = Some(5);
    let r = run_ok(&c);
    assert_eq!(r.requests, 5);
    assert_eq!(r.responses, 0);
    assert_eq!(r.errors.refused, 5);
    assert_eq!(r.errors.total, 5);
}

#[test]
fn unexpected_status_from_scenario() {
    let be = start_backend("s");
    let scenario = Scenario::parse(
        "expect: [200]\nrequests:\n  - path: /\n  - path: /status/503\n  - path: /status/201\n    expect: [201]\n",
    )
    .unwrap();
    let mut c = cfg(&be.url());
    c.scenario = Some(scenario);
    c.requests = Some(600);
    let r = run_ok(&c);
    assert_eq!(r.requests, 600);
    let ok = r.statuses.get(&200).copied().unwrap_or(0);
    let bad = r.statuses.get(&503).copied().unwrap_or(0);
    let created = r.statuses.get(&201).copied().unwrap_or(0);
    assert_eq!(ok + bad + created, 600);
    assert!(ok > 100 && bad > 100 && created > 100, "{:?}", r.statuses);
    assert_eq!(r.errors.unexpected_status, bad);
    assert_eq!(r.errors.total, bad);
}

#[test]
fn timeout_is_classified() {
    let be = start_backend("t");
    let mut c = cfg(&format!("{}/delay/3000", be.url()));
    c.connections = 2;
    c.requests = Some(4);
    c.timeout = Duration::from_millis(200);
    let r = run_ok(&c);
    assert_eq!(r.requests, 4);
    assert_eq!(r.errors.timeout, 4);
    assert_eq!(r.responses, 0);
    assert!(
        r.elapsed_s < 2.5,
        "timeouts must not wait for the delay: {}",
        r.elapsed_s
    );
}

#[test]
fn reset_is_classified() {
    let be = start_backend("r");
    let mut c = cfg(&format!("{}/close", be.url()));
    c.requests = Some(6);
    let r = run_ok(&c);
    assert_eq!(r.requests, 6);
    assert_eq!(r.errors.reset, 6);
}

#[test]
fn fail_share_and_fail_parameter() {
    let mut bc = BackendConfig::new("127.0.0.1:0".parse().unwrap(), "f");
    bc.fail_share = 0.3;
    let be = backend::spawn(bc).unwrap();
    let mut c = cfg(&be.url());
    c.requests = Some(1000);
    let r = run_ok(&c);
    let failed = r.statuses.get(&500).copied().unwrap_or(0);
    assert!((200..=400).contains(&failed), "500s: {failed}");
    assert_eq!(
        r.errors.total, 0,
        "no expected statuses given: a 500 is not an error"
    );

    let mut c = cfg(&format!("{}/?fail=1", be.url()));
    c.requests = Some(50);
    c.expect = vec![200];
    let r = run_ok(&c);
    assert_eq!(r.statuses.get(&500), Some(&50));
    assert_eq!(r.errors.unexpected_status, 50);
}

#[test]
fn backend_endpoints() {
    let be = start_backend("blue");
    let (head, body) = raw(
        be.addr(),
        "POST /echo?x=1 HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: 192.0.2.7\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("x-backend: blue"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["backend"], "blue");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/echo");
    assert_eq!(v["query"], "x=1");
    assert_eq!(v["headers"]["x-forwarded-for"], "192.0.2.7");
    assert_eq!(v["body_len"], 5);

    let (head, body) = raw(
        be.addr(),
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200"));
    assert_eq!(body, "blue\n");
    let (_, body) = raw(
        be.addr(),
        "GET /bytes/1000 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(body.len(), 1000);
    let (head, body) = raw(
        be.addr(),
        "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200"));
    assert_eq!(body, "ok\n");
    let (head, _) = raw(
        be.addr(),
        "GET /status/418 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 418"), "{head}");

    // A freeze holds every request that arrives in its window.
    let (head, _) = raw(
        be.addr(),
        "POST /admin/freeze?ms=400 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200"));
    let t = std::time::Instant::now();
    let _ = raw(
        be.addr(),
        "GET /?delay_ms=10 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );

    let (_, body) = raw(
        be.addr(),
        "GET /admin/stats HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["requests"], 6);
}

#[test]
fn tls_with_cacert_insecure_and_http2() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let mut bc = BackendConfig::new("127.0.0.1:0".parse().unwrap(), "tls");
    bc.tls = Some((cert.clone(), key));
    let be = backend::spawn(bc).unwrap();
    let url = format!("https://localhost:{}/", be.addr().port());

    let mut c = cfg(&url);
    c.requests = Some(100);
    c.ca_file = Some(cert.clone());
    let r = run_ok(&c);
    assert_eq!(r.statuses.get(&200), Some(&100));

    c.http2 = true;
    let r = run_ok(&c);
    assert_eq!(r.statuses.get(&200), Some(&100));

    let mut c = cfg(&url);
    c.requests = Some(20);
    c.insecure = true;
    let r = run_ok(&c);
    assert_eq!(r.statuses.get(&200), Some(&20));

    // Not trusted: every request fails the TLS handshake.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let other_ca = dir.path().join("other.pem");
    std::fs::write(&other_ca, other.cert.pem()).unwrap();
    let mut c = cfg(&url);
    c.requests = Some(3);
    c.ca_file = Some(other_ca);
    let r = run_ok(&c);
    assert_eq!(r.errors.tls, 3);
}

#[test]
fn request_bodies_and_methods_are_well_formed() {
    let be = start_backend("body");
    let scenario = Scenario::parse(
        "expect: [200]\nheaders: { x-test: yes }\nrequests:\n  - method: POST\n    path: /echo\n    body_size: 1000\n  - method: PUT\n    path: /echo?x=1\n  - method: HEAD\n    path: /bytes/100\n  - path: /bytes/70000\n",
    )
    .unwrap();
    for http2 in [false, true] {
        let mut c = cfg(&be.url());
        c.scenario = Some(scenario.clone());
        c.requests = Some(400);
        c.http2 = http2;
        let r = run_ok(&c);
        assert_eq!(r.requests, 400);
        assert_eq!(
            r.statuses.get(&200),
            Some(&400),
            "http2 {http2}: {:?}",
            r.statuses
        );
        assert_eq!(r.errors.total, 0);
        // A quarter of the mix is /bytes/70000: about 100 of 400, drawn at
        // random; 60 is over four standard deviations below that.
        assert!(r.body_bytes > 60 * 70_000, "{}", r.body_bytes);
    }
}

#[test]
fn http2_streams_share_connections() {
    let be = start_backend("streams");
    let mut c = cfg(&format!("{}/delay/20", be.url()));
    c.http2 = true;
    c.connections = 2;
    c.streams = 10;
    c.requests = Some(200);
    let r = run_ok(&c);
    assert_eq!(r.streams, 10);
    assert_eq!(r.statuses.get(&200), Some(&200));
    assert_eq!(be.served(), 200);
    assert_eq!(be.connections(), 2, "the streams share their connection");
    // 20 requests in flight: about 10 rounds of 20 ms (2 in flight would take 2 s).
    assert!(r.elapsed_s < 1.5, "elapsed {}", r.elapsed_s);

    let mut c = cfg(&be.url());
    c.streams = 4;
    assert!(run(&c).is_err(), "--streams without --http2 is refused");
}
