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
    // Masked at their length (docs/GATE.md, "What the sample keeps").
    assert_eq!(header("authorization"), Some("Bearer a0aaaa"));
    assert_eq!(header("x-api-key"), Some("a0a"));
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

/// 20 000 unauthenticated GETs with 60 KB of headers each, the padding an
/// attacker would fill the sample with: the sample stays under
/// the default `sample.max_bytes` on disk, the serving process's memory
/// grows by at most about that bound (not by 10 000 × 60 KB, 1.27 GB before
/// the bound), and the cut heads are counted.
#[test]
fn padded_heads_cannot_grow_the_sample_or_the_worker() {
    // The default `sample.max_bytes`: the settings are the shipped ones.
    const BOUND: u64 = 32 << 20;
    let p = Proxy::start("sample: { flush_interval: 200ms }\n", ROUTES);
    let pad = "p".repeat(1000);
    let mut head = String::from("GET /pad HTTP/1.1\r\nHost: shop.test\r\n");
    for i in 0..60 {
        head.push_str(&format!("X-Pad-{i}: {pad}\r\n"));
    }
    head.push_str("\r\n");
    let head = head.into_bytes();
    assert!(head.len() > 60_000);
    // Warm up (connection buffers, allocator arenas), then measure.
    let run = |n: usize| {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let head = head.clone();
                let addr = p.http;
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut s = std::net::TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut buf = vec![0u8; 4096];
                    for _ in 0..n / 4 {
                        s.write_all(&head).unwrap();
                        // One short response per request (keep-alive).
                        let k = s.read(&mut buf).unwrap();
                        assert!(
                            buf[..k].starts_with(b"HTTP/1.1 200"),
                            "{}",
                            String::from_utf8_lossy(&buf[..k])
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    };
    run(400);
    std::thread::sleep(Duration::from_millis(500));
    let before = p.rss_kib();
    run(20_000);
    std::thread::sleep(Duration::from_millis(800));
    let after = p.rss_kib();
    let grew = after.saturating_sub(before) * 1024;
    let size = std::fs::metadata(p.state.path().join("sample.jsonl"))
        .unwrap()
        .len();
    eprintln!("rss {before} KiB -> {after} KiB (+{grew} B), sample {size} B");
    assert!(size <= BOUND, "sample {size} bytes, bound {BOUND}");
    // The bound, plus room for the allocator's slack; the unbounded
    // reservoir grew by about 600 MB here.
    assert!(grew <= BOUND + (32 << 20), "grew {grew} bytes");
    let s = recorded(&p, 1);
    let r = &s.requests[0];
    assert!(
        r.omitted_headers > 0 && r.omitted_header_bytes > 40_000,
        "{r:?}"
    );
    let metrics = util::raw(
        p.admin.unwrap(),
        b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    let truncated = metrics
        .lines()
        .find_map(|l| l.strip_prefix("aegis_sample_heads_truncated_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(truncated >= 1000.0, "{truncated}");
}
