//! The serving process records the traffic sample the gate replays: a
//! uniform reservoir of request heads with what live traffic got, secrets
//! redacted, flushed atomically into the state directory.

mod util;

use std::time::{Duration, Instant};

use aegis_engine::sample::{SampleLimits, TrafficSample};
use util::Proxy;

const ROUTES: &str = r#"
routes:
  - name: hello
    match: { path_prefix: / }
    respond: { status: 200, body: "hello\n" }
  - name: gone
    match: { path: /gone }
    respond: { status: 410 }
"#;

fn recorded(p: &Proxy, at_least: usize) -> TrafficSample {
    let path = p.state.path().join("sample.jsonl");
    let start = Instant::now();
    loop {
        if let Ok(f) = std::fs::File::open(&path) {
            let (s, report) =
                TrafficSample::read(std::io::BufReader::new(f), SampleLimits::default()).unwrap();
            assert_eq!(report.invalid_lines, 0);
            if s.requests.len() >= at_least {
                return s;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no sample of {at_least} in {path:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn send(p: &Proxy, path: &str) -> String {
    util::raw(
        p.http,
        format!(
            "GET {path}?q=1 HTTP/1.1\r\nHost: shop.test\r\nAuthorization: Bearer s3cret\r\nX-Api-Key: k3y\r\nUser-Agent: t\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
        Duration::from_secs(5),
    )
}

#[test]
fn single_process_records_heads_outcomes_and_redacts() {
    let p = Proxy::start(
        "sample: { flush_interval: 200ms, secret_headers: [x-api-key] }\n",
        ROUTES,
    );
    for i in 0..15 {
        assert!(send(&p, &format!("/a/{i}")).starts_with("HTTP/1.1 200"));
    }
    for _ in 0..5 {
        assert!(send(&p, "/gone").starts_with("HTTP/1.1 410"));
    }
    let s = recorded(&p, 20);
    let gone: Vec<_> = s.requests.iter().filter(|r| r.path == "/gone").collect();
    assert_eq!(gone.len(), 5);
    assert!(
        gone.iter()
            .all(|r| r.status == Some(410) && r.route.as_deref() == Some("gone"))
    );
    let r = &s.requests[0];
    assert_eq!(r.host.as_deref(), Some("shop.test"));
    assert_eq!(r.query.as_deref(), Some("q=1"));
    let header = |n: &str| {
        r.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("authorization"), Some("[redacted]"));
    assert_eq!(header("x-api-key"), Some("[redacted]"));
    assert_eq!(header("user-agent"), Some("t"));
    let text = std::fs::read_to_string(p.state.path().join("sample.jsonl")).unwrap();
    assert!(!text.contains("s3cret") && !text.contains("k3y"));
}

#[test]
fn supervised_workers_record_a_sample_too() {
    let p = Proxy::start("workers: 2\nsample: { flush_interval: 200ms }\n", ROUTES);
    for i in 0..40 {
        assert!(send(&p, &format!("/b/{i}")).starts_with("HTTP/1.1 200"));
    }
    // Worker 0 records; the shared accept queue gives it a share of these.
    let s = recorded(&p, 1);
    assert!(
        s.requests
            .iter()
            .all(|r| r.route.as_deref() == Some("hello"))
    );
}
