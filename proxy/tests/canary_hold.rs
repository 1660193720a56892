//! The canary with real worker processes (`workers: 2`): a canary whose
//! sides have too few requests to compare is held for up to three windows,
//! then promoted when it is clean and rolled back (`canary_inconclusive`)
//! when it failed requests; a small route that fails on the canary only is
//! rolled back by name (`canary_route`) although its share of all traffic
//! is under the global threshold.
//!
//! The failing upstream is a real HTTP server answering 500: the sandbox
//! replays through a stub connector and never reaches it.

mod util;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use util::load::{Load, admin, get_ok, wait_until};
use util::{Backend, Proxy};

const WORKERS: &str =
    "workers: 2\nhealth: { interval: 200ms, timeout: 500ms, fall: 5, grace: 500ms }\n";

fn routes(site: &Backend, hook: &Backend) -> String {
    format!(
        "upstreams:\n  - name: app\n    endpoints: [\"{}\"]\n  - name: hooks\n    endpoints: [\"{}\"]\nroutes:\n  - name: hook\n    match: {{ path_prefix: /hook }}\n    upstream: hooks\n  - name: site\n    match: {{ path_prefix: / }}\n    upstream: app\n",
        site.addr, hook.addr
    )
}

fn config(p: &Proxy) -> serde_json::Value {
    admin(p, "GET", "/admin/config")
}

fn verdicts(p: &Proxy) -> String {
    admin(p, "GET", "/admin/verdicts").to_string()
}

/// One request every `every` until stopped: a quiet site.
fn trickle(addr: SocketAddr, every: Duration) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let h = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            get_ok(addr, "/");
            std::thread::sleep(every);
        }
    });
    (stop, h)
}

fn events(p: &Proxy) -> Vec<serde_json::Value> {
    config(p)["rollout"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_canary_with_too_few_requests_is_held_then_decided() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let a = rt.block_on(Backend::start("a"));
    let b = rt.block_on(Backend::start("b"));
    let bad = rt.block_on(Backend::start("bad"));
    bad.set_failing(true);
    // min_requests far above what a trickle brings in 2 s windows: every
    // window ends with too few requests on both sides.
    let settings = format!(
        "{WORKERS}gate: {{ debounce: 50ms, canary_seconds: 2, bake_seconds: 0, regression: {{ min_requests: 100000 }} }}\n"
    );
    let p = Proxy::start(&settings, &routes(&a, &a));
    let (stop, trickler) = trickle(p.http, Duration::from_millis(40));

    // A clean version: held two more windows, then promoted as
    // inconclusive (before: promoted after one window as "inconclusive").
    p.write("routes.yaml", &routes(&b, &a));
    let started = Instant::now();
    wait_until("the clean canary promoted", Duration::from_secs(30), || {
        events(&p).iter().any(|e| e["event"] == "canary_passed")
    });
    let took = started.elapsed();
    let ev = events(&p);
    let extended = ev
        .iter()
        .filter(|e| e["event"] == "canary_extended")
        .count();
    let passed = ev.iter().find(|e| e["event"] == "canary_passed").unwrap();
    eprintln!("clean canary passed after {took:?}: {passed}");
    assert_eq!(extended, 2, "{ev:?}");
    assert!(
        passed["detail"]
            .as_str()
            .unwrap()
            .starts_with("inconclusive after 3 windows"),
        "{passed}"
    );
    assert!(took >= Duration::from_secs(6), "held only {took:?}");
    wait_until("the clean version stable", Duration::from_secs(10), || {
        config(&p)["rollout"]["phase"] == "steady"
    });

    // A version whose upstream fails: too few requests to compare, but the
    // canary answered 5xx: rolled back at the third window's end.
    p.write("routes.yaml", &routes(&bad, &a));
    wait_until(
        "the failing canary rolled back",
        Duration::from_secs(30),
        || verdicts(&p).contains("rolled_back:canary_inconclusive"),
    );
    let v = verdicts(&p);
    eprintln!("{v}");
    assert!(v.contains("still too few requests to compare"), "{v}");
    stop.store(true, Ordering::Relaxed);
    trickler.join().unwrap();
}

#[test]
fn a_small_route_failing_on_the_canary_is_rolled_back_by_name() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(Backend::start("app"));
    let hooks = rt.block_on(Backend::start("hooks"));
    let hooks2 = rt.block_on(Backend::start("hooks2"));
    // The global 5xx threshold at 50 points: the hook route's share of all
    // traffic (one client of five) cannot reach it, only its own share can.
    let settings = format!(
        "{WORKERS}gate: {{ debounce: 50ms, canary_seconds: 60, bake_seconds: 0, regression: {{ max_5xx_increase: 0.5 }} }}\n"
    );
    let p = Proxy::start(&settings, &routes(&app, &hooks));
    let site = Load::start(p.http, 4, "/");
    let hook = Load::start(p.http, 1, "/hook/event");
    site.wait_ok(100, Duration::from_secs(10));
    hook.wait_ok(20, Duration::from_secs(10));

    // The candidate moves the hook route to another pool, which breaks
    // once the canary serves it (nothing before promotion can see it).
    p.write("routes.yaml", &routes(&app, &hooks2));
    wait_until("canary", Duration::from_secs(20), || {
        config(&p)["rollout"]["phase"] == "canary"
    });
    hooks2.set_failing(true);
    let broke = Instant::now();
    wait_until("rolled back by route", Duration::from_secs(30), || {
        verdicts(&p).contains("rolled_back:canary_route")
    });
    let took = broke.elapsed();
    let v = verdicts(&p);
    let (site, hook) = (site.finish(), hook.finish());
    eprintln!("rolled back {took:?} after the route broke; site {site:?}; hook {hook:?}");
    assert!(
        v.contains("route hook: the canary worker answered 5xx"),
        "{v}"
    );
    assert!(!v.contains("rolled_back:canary_5xx"), "{v}");
}
