//! The feature module's kill switch under load: `POST
//! /admin/modules/features off` stops scoring from the very next request, in
//! one process and across worker processes, and fails no request.

mod util;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use util::Proxy;

const SET: &str = r#"
routes:
  - name: hello
    match: { path_prefix: / }
    respond: { status: 200, body: "hello\n" }
features:
  - name: bot-header
    weight: 1.0
    when: { header: x-bot, present: true }
scoring: { block_at: 1.0 }
"#;

fn get(addr: SocketAddr, bot: bool) -> String {
    let extra = if bot { "X-Bot: 1\r\n" } else { "" };
    util::raw(
        addr,
        format!("GET / HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    )
}

fn switch(p: &Proxy, body: &str) -> String {
    util::raw(
        p.admin.unwrap(),
        format!(
            "POST /admin/modules/features HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
        Duration::from_secs(5),
    )
}

fn exercise(settings: &str) {
    let p = Proxy::start(settings, SET);
    let addr = p.http;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if get(addr, false).starts_with("HTTP/1.1 200") {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for _ in 0..3 {
        // Every worker scores: blocked, whichever one answers.
        for _ in 0..6 {
            assert!(get(addr, true).starts_with("HTTP/1.1 403"));
        }
        let r = switch(&p, "off");
        assert!(
            r.starts_with("HTTP/1.1 200") && r.contains("\"enabled\": false"),
            "{r}"
        );
        for _ in 0..6 {
            assert!(
                get(addr, true).starts_with("HTTP/1.1 200"),
                "scored after the switch"
            );
        }
        let r = switch(&p, r#"{"enabled": true}"#);
        assert!(r.contains("\"enabled\": true"), "{r}");
    }
    assert!(switch(&p, "maybe").starts_with("HTTP/1.1 400"));
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("kill switch: {ok} ok, {failed} failed");
    assert!(ok > 50);
    assert_eq!(failed, 0);
}

#[test]
fn kill_switch_in_one_process() {
    exercise("");
}

#[test]
fn kill_switch_across_workers() {
    exercise("workers: 2\n");
}
