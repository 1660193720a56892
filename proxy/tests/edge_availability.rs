//! Edge hardening, availability (issue #16 items 1–3): the real `aegis`
//! binary under live load (`util::load`, one request per connection),
//! counting every request a client saw fail.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use util::load::{Load, get_ok, wait_until, wait_until_ok, workers};
use util::*;

// Item 1: the only endpoint of a pool is never ejected by passive health.
#[test]
fn last_endpoint_is_never_ejected_under_load() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let origin = rt.block_on(origin::flaky());
    let routes = format!(
        r#"
upstreams:
  - name: only
    endpoints: ["{origin}"]
    passive: {{ max_fails: 1, fail_timeout: 10s }}
routes:
  - name: r
    match: {{ path_prefix: "/" }}
    upstream: only
"#
    );
    let p = Proxy::start("", &routes);
    let load = Load::start(p.http, 4, "/ok");
    load.wait_ok(50, Duration::from_secs(10));
    let mut closes = 0;
    for _ in 0..10 {
        let got = raw(
            p.http,
            b"GET /close HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            Duration::from_secs(3),
        );
        assert!(got.starts_with("HTTP/1.1 502"), "{got}");
        closes += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let c = load.finish();
    eprintln!("{closes} upstream failures; load: {c:?}");
    assert!(c.ok > 100, "{c:?}");
    assert_eq!(c.failures(), 0, "the only endpoint was ejected: {c:?}");
}

// Item 2: at the connection cap a worker stops accepting, says it is
// `overloaded` (health answer, /admin/workers, metrics), and serves again
// once the idle connections time out.
#[test]
fn connection_cap_reports_overloaded_and_recovers() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let origin = rt.block_on(origin::flaky());
    let p = Proxy::start(
        "workers: 1\nlimits: { max_connections: 8, client_header_timeout: 2s }\n",
        &format!(
            "upstreams:\n  - {{ name: u, endpoints: [\"{origin}\"] }}\nroutes:\n  - {{ name: r, match: {{ path_prefix: / }}, upstream: u }}\n"
        ),
    );
    wait_until("worker serving", Duration::from_secs(10), || {
        get_ok(p.http, "/ok")
    });
    assert!(workers(&p)[0]["overloaded"] == false, "{:?}", workers(&p));
    // 30 idle connections: 8 are taken, the rest wait in the backlog.
    let idle: Vec<TcpStream> = (0..30)
        .map(|_| TcpStream::connect(p.http).unwrap())
        .collect();
    wait_until(
        "overloaded in /admin/workers",
        Duration::from_secs(5),
        || workers(&p)[0]["overloaded"] == true,
    );
    let metrics = raw(
        p.admin.unwrap(),
        b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("aegis_overloaded") && l.ends_with(" 1")),
        "no aegis_overloaded 1 in the metrics"
    );
    // Load meanwhile: queued, then served once the idle ones are cut after
    // the header timeout. Nothing fails.
    let load = Load::start(p.http, 4, "/ok");
    load.wait_ok(50, Duration::from_secs(20));
    let c = load.finish();
    eprintln!("load behind 30 idle connections: {c:?}");
    assert_eq!(c.failures(), 0, "{c:?}");
    drop(idle);
    wait_until("no longer overloaded", Duration::from_secs(15), || {
        workers(&p)[0]["overloaded"] == false
    });
}

// Item 2: running out of descriptors backs off instead of spinning on
// `accept failed`, and ejects no healthy backend.
#[test]
fn descriptor_exhaustion_backs_off_and_ejects_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let origin = rt.block_on(origin::flaky());
    let p = Proxy::start(
        "limits: { max_connections: 5000, client_header_timeout: 3s }\n",
        &format!(
            "upstreams:\n  - {{ name: u, endpoints: [\"{origin}\"], passive: {{ max_fails: 1, fail_timeout: 30s }} }}\nroutes:\n  - {{ name: r, match: {{ path_prefix: / }}, upstream: u }}\n"
        ),
    );
    assert!(get_ok(p.http, "/ok"));
    let st = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(p.pid().to_string())
        .arg("--nofile=128:128")
        .status()
        .unwrap();
    assert!(st.success(), "prlimit failed");
    // Idle connections until accept hits EMFILE.
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(p.http).unwrap())
        .collect();
    let load = Load::start(p.http, 2, "/ok");
    let started = Instant::now();
    let mut warned = 0;
    while started.elapsed() < Duration::from_secs(2) {
        if p.wait_line("accept failed", Duration::from_millis(100))
            .is_some()
        {
            warned += 1;
        }
    }
    assert!(
        warned >= 1,
        "accept never failed: the test did not exhaust descriptors"
    );
    assert!(warned <= 4, "{warned} `accept failed` lines in 2 s");
    // The idle connections time out; the load gets through, and the backend
    // was never ejected for our own lack of descriptors.
    load.wait_ok(20, Duration::from_secs(30));
    drop(idle);
    let c = load.finish();
    eprintln!("load during descriptor exhaustion: {c:?}");
    assert_eq!(c.statuses.get(&503), None, "backend ejected: {c:?}");
    assert!(wait_until_ok(Duration::from_secs(5), || get_ok(
        p.http, "/ok"
    )));
    let mut s = TcpStream::connect(p.http).unwrap();
    s.write_all(b"GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

// Item 3 under load: clients trickling heads and bodies are cut off at
// their timeouts while normal load flows without failures.
#[test]
fn slow_clients_do_not_hold_the_proxy_under_load() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A backend that reads the whole body before answering (`/upload`).
    let backend = rt.block_on(Backend::start("b"));
    let origin = backend.addr;
    let p = Proxy::start(
        "limits: { client_header_timeout: 1s, client_body_timeout: 1s }\n",
        &format!(
            "upstreams:\n  - {{ name: u, endpoints: [\"{origin}\"] }}\nroutes:\n  - {{ name: r, match: {{ path_prefix: / }}, upstream: u }}\n"
        ),
    );
    let load = Load::start(p.http, 4, "/ok");
    let slow: Vec<std::thread::JoinHandle<String>> = (0..20)
        .map(|i| {
            let addr = p.http;
            std::thread::spawn(move || {
                let req: &[u8] = if i % 2 == 0 {
                    b"GET /x HTTP/1.1\r\nHost: t\r\nX-Slow: "
                } else {
                    b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\npart"
                };
                raw(addr, req, Duration::from_secs(6))
            })
        })
        .collect();
    let started = Instant::now();
    for t in slow {
        let got = t.join().unwrap();
        assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let c = load.finish();
    eprintln!("load beside 20 slow clients: {c:?}");
    assert!(c.ok > 0 && c.failures() == 0, "{c:?}");
}
