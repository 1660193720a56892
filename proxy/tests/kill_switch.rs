//! The feature module's kill switch under load: `POST
//! /admin/modules/features off` stops scoring from the very next request, in
//! one process and across worker processes, and fails no request.

mod util;

use std::net::SocketAddr;
use std::time::Duration;

use util::Proxy;
use util::load::Load;

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
    // Ordinary traffic throughout. Each step waits for some of it to be
    // answered, so the switch flips while requests are in flight however
    // slow the machine (a fixed count after the fact was at the mercy of
    // how much CPU the load threads got in a window of milliseconds).
    let load = Load::start(addr, 4, "/");
    load.wait_ok(10, Duration::from_secs(30));
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
        load.wait_ok(10, Duration::from_secs(30));
        for _ in 0..6 {
            assert!(
                get(addr, true).starts_with("HTTP/1.1 200"),
                "scored after the switch"
            );
        }
        let r = switch(&p, r#"{"enabled": true}"#);
        assert!(r.contains("\"enabled\": true"), "{r}");
        load.wait_ok(10, Duration::from_secs(30));
    }
    assert!(switch(&p, "maybe").starts_with("HTTP/1.1 400"));
    let c = load.finish();
    eprintln!("kill switch: {c:?}");
    assert!(c.ok >= 70, "{c:?}");
    assert_eq!(c.failures(), 0, "{c:?}");
}

#[test]
fn kill_switch_in_one_process() {
    exercise("");
}

#[test]
fn kill_switch_across_workers() {
    exercise("workers: 2\n");
}
