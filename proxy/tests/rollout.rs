//! Progressive rollout with real worker processes under live load: a version
//! that passes the sandbox but fails live traffic is caught on the canary
//! worker and rolled back before the other worker takes it; a version whose
//! traffic turns to 5xx during the bake is rolled back by itself; candidates
//! flapping between accepted and rejected freeze promotion until a person
//! confirms; `POST /admin/rollback` takes a version back by hand.
//!
//! The failing upstream is a real HTTP server answering 500: the sandbox
//! replays through a stub connector and never reaches it, the TCP probe of
//! the gate finds it listening, so only live traffic can tell.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use util::load::admin;
use util::{Backend, Proxy};

fn routes_to(backend: &Backend) -> String {
    format!(
        "upstreams:\n  - name: app\n    endpoints: [\"{}\"]\nroutes:\n  - name: site\n    match: {{ path_prefix: / }}\n    upstream: app\n",
        backend.addr
    )
}

fn get(p: &Proxy, path: &str) -> serde_json::Value {
    admin(p, "GET", path)
}

fn metrics(p: &Proxy) -> String {
    util::raw(
        p.admin.unwrap(),
        b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
}

fn version(p: &Proxy) -> String {
    get(p, "/admin/config")["version"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn verdicts(p: &Proxy) -> String {
    get(p, "/admin/verdicts").to_string()
}

fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// Per-slot `(requests, errors_5xx)` from `/admin/workers`.
fn worker_counts(p: &Proxy) -> Vec<(u64, u64)> {
    get(p, "/admin/workers")
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|w| {
            (
                w["requests"].as_u64().unwrap_or(0),
                w["errors_5xx"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Client threads, one request per connection, counting what came back.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    server_errors: Arc<AtomicU64>,
    broken: Arc<AtomicU64>,
    /// Requests completed per client thread (each has one in flight at most).
    done: Arc<Vec<AtomicU64>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    ok: u64,
    server_errors: u64,
    broken: u64,
}

impl Counts {
    fn total(&self) -> u64 {
        self.ok + self.server_errors + self.broken
    }
    fn since(&self, earlier: Counts) -> Counts {
        Counts {
            ok: self.ok - earlier.ok,
            server_errors: self.server_errors - earlier.server_errors,
            broken: self.broken - earlier.broken,
        }
    }
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let server_errors = Arc::new(AtomicU64::new(0));
        let broken = Arc::new(AtomicU64::new(0));
        let done: Arc<Vec<AtomicU64>> = Arc::new((0..clients).map(|_| AtomicU64::new(0)).collect());
        let threads = (0..clients)
            .map(|i| {
                let (stop, ok, se, broken, done) = (
                    stop.clone(),
                    ok.clone(),
                    server_errors.clone(),
                    broken.clone(),
                    done.clone(),
                );
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match status(addr) {
                            Some(200) => ok.fetch_add(1, Ordering::Relaxed),
                            Some(s) if s >= 500 => se.fetch_add(1, Ordering::Relaxed),
                            _ => broken.fetch_add(1, Ordering::Relaxed),
                        };
                        done[i].fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            server_errors,
            broken,
            done,
            threads,
        }
    }

    /// Waits until every client has completed a request since now, so the
    /// counts taken after it include no request sent before now (a request
    /// in flight on the canary when the rollback landed still ran on the
    /// version it started on, and may fail after the workers report v0).
    fn settle(&self) {
        let at: Vec<u64> = self
            .done
            .iter()
            .map(|d| d.load(Ordering::Relaxed))
            .collect();
        wait_until(
            "every client past its in-flight request",
            Duration::from_secs(10),
            || {
                self.done
                    .iter()
                    .zip(&at)
                    .all(|(d, a)| d.load(Ordering::Relaxed) > *a)
            },
        );
    }

    fn counts(&self) -> Counts {
        Counts {
            ok: self.ok.load(Ordering::SeqCst),
            server_errors: self.server_errors.load(Ordering::SeqCst),
            broken: self.broken.load(Ordering::SeqCst),
        }
    }

    fn finish(self) -> Counts {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        Counts {
            ok: self.ok.load(Ordering::SeqCst),
            server_errors: self.server_errors.load(Ordering::SeqCst),
            broken: self.broken.load(Ordering::SeqCst),
        }
    }
}

fn status(addr: SocketAddr) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Polls `/admin/workers` until stopped; keeps every (slot, version) seen.
fn watch_workers(p: &Proxy) -> (Arc<AtomicBool>, std::thread::JoinHandle<Vec<(u64, String)>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let admin = p.admin.unwrap();
    let s = stop.clone();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let h = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            let body = util::raw(
                admin,
                b"GET /admin/workers HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                Duration::from_secs(5),
            );
            let rows: serde_json::Value =
                serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap_or("[]"))
                    .unwrap_or_default();
            for w in rows.as_array().cloned().unwrap_or_default() {
                if let (Some(slot), Some(v)) = (w["slot"].as_u64(), w["version"].as_str()) {
                    let mut seen = seen.lock().unwrap();
                    if !seen.iter().any(|(s, x)| *s == slot && x == v) {
                        seen.push((slot, v.to_string()));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        seen.lock().unwrap().clone()
    });
    (stop, h)
}

const WORKERS: &str =
    "workers: 2\nhealth: { interval: 200ms, timeout: 500ms, fall: 5, grace: 500ms }\n";

#[test]
fn canary_catches_a_version_that_fails_live_traffic() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let good = rt.block_on(Backend::start("good"));
    let bad = rt.block_on(Backend::start("bad"));
    bad.set_failing(true);
    // A canary window far longer than the test: the rollback must come from
    // the comparison, not from the window's end.
    let settings =
        format!("{WORKERS}gate: {{ debounce: 50ms, canary_seconds: 60, bake_seconds: 0 }}\n");
    let p = Proxy::start(&settings, &routes_to(&good));
    let v0 = version(&p);
    let load = Load::start(p.http, 4);
    wait_until("load flowing", Duration::from_secs(10), || {
        load.counts().ok > 200
    });
    wait_until(
        "the workers' counters reported",
        Duration::from_secs(10),
        || worker_counts(&p).iter().all(|(requests, _)| *requests > 0),
    );
    let (stop_watch, watcher) = watch_workers(&p);
    let before = load.counts();
    let workers_before = worker_counts(&p);
    let written = Instant::now();
    p.write("routes.yaml", &routes_to(&bad));
    // canary_5xx (the whole traffic) or canary_route (its one route),
    // whichever check has its counts first: the same failure.
    wait_until("canary rolled back", Duration::from_secs(30), || {
        let v = verdicts(&p);
        v.contains("rolled_back:canary_5xx") || v.contains("rolled_back:canary_route")
    });
    let took = written.elapsed();
    // Both workers report the version before again.
    wait_until("every worker back on v0", Duration::from_secs(10), || {
        let w = get(&p, "/admin/workers");
        w.as_array()
            .is_some_and(|a| a.iter().all(|w| w["version"] == v0.as_str()))
    });
    let during = load.counts().since(before);
    let workers_after = worker_counts(&p);
    // After the rollback nothing fails: counted from requests sent after it.
    load.settle();
    let after_rollback = load.counts();
    std::thread::sleep(Duration::from_millis(1500));
    let clean = load.counts().since(after_rollback);
    let end = load.finish();
    stop_watch.store(true, Ordering::Relaxed);
    let seen = watcher.join().unwrap();

    eprintln!(
        "rolled back after {took:?}; during: {during:?}; workers {workers_before:?} -> {workers_after:?}; seen {seen:?}; after: {clean:?}; total {end:?}"
    );
    assert!(
        during.server_errors > 0,
        "the canary never served the failing version: the test proved nothing"
    );
    let other: Vec<&(u64, String)> = seen.iter().filter(|(_, v)| *v != v0).collect();
    assert!(!other.is_empty(), "no worker ever served the new version");
    assert!(
        other.iter().all(|(slot, _)| *slot == 0),
        "only the canary (slot 0) may serve the new version: {seen:?}"
    );
    let events = get(&p, "/admin/config")["rollout"]["events"].to_string();
    for e in ["canary_started", "rolled_back"] {
        assert!(events.contains(e), "{e} missing from {events}");
    }
    // The control worker answered no 5xx; the failed share is at most the
    // canary's share of the traffic over the same seconds.
    let d = |i: usize| {
        (
            workers_after[i].0 - workers_before[i].0,
            workers_after[i].1 - workers_before[i].1,
        )
    };
    let (canary_requests, canary_5xx) = d(0);
    let (control_requests, control_5xx) = d(1);
    assert_eq!(control_5xx, 0, "the control worker failed requests");
    assert!(canary_5xx > 0);
    let canary_share = canary_requests as f64 / (canary_requests + control_requests) as f64;
    let failed_share = during.server_errors as f64 / during.total() as f64;
    assert!(
        failed_share <= canary_share + 0.02,
        "failed {failed_share:.3} of requests, the canary took {canary_share:.3}"
    );
    assert_eq!(during.broken, 0, "connections broke during the canary");
    assert_eq!(
        clean.server_errors + clean.broken,
        0,
        "failures after the rollback"
    );
    assert!(clean.ok > 0);
    assert_eq!(version(&p), v0);
    assert!(took < Duration::from_secs(20), "rollback took {took:?}");
    let m = metrics(&p);
    assert!(
        m.contains("aegis_config_rollbacks_total{reason=\"canary_5xx\"} 1")
            || m.contains("aegis_config_rollbacks_total{reason=\"canary_route\"} 1"),
        "{m}"
    );
    // The rejected version stays rejected while its file is in the directory.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(version(&p), v0);
}

#[test]
fn bake_rolls_back_a_version_whose_traffic_turns_to_5xx() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let a = rt.block_on(Backend::start("a"));
    let b = rt.block_on(Backend::start("b"));
    let settings =
        format!("{WORKERS}gate: {{ debounce: 50ms, canary_seconds: 1, bake_seconds: 60 }}\n");
    let p = Proxy::start(&settings, &routes_to(&a));
    let v0 = version(&p);
    let load = Load::start(p.http, 4);
    wait_until("load flowing", Duration::from_secs(10), || {
        load.counts().ok > 200
    });
    p.write("routes.yaml", &routes_to(&b));
    wait_until("baking", Duration::from_secs(20), || {
        get(&p, "/admin/config")["rollout"]["phase"] == "baking"
    });
    let v1 = version(&p);
    assert_ne!(v1, v0);
    assert!(load.counts().server_errors == 0);
    // The upstream of the new version breaks after the full promotion.
    b.set_failing(true);
    let broke = Instant::now();
    wait_until("bake rolled back", Duration::from_secs(15), || {
        verdicts(&p).contains("rolled_back:bake_5xx")
    });
    let took = broke.elapsed();
    wait_until("every worker back on v0", Duration::from_secs(10), || {
        let w = get(&p, "/admin/workers");
        w.as_array()
            .is_some_and(|a| a.iter().all(|w| w["version"] == v0.as_str()))
    });
    load.settle();
    let after = load.counts();
    std::thread::sleep(Duration::from_millis(1000));
    let clean = load.counts().since(after);
    let end = load.finish();
    eprintln!("bake rollback {took:?} after the upstream broke; load {end:?}");
    // docs/GATE.md: a regression is acted on within health.interval (200 ms
    // here) + the rollout tick (250 ms) once the window holds
    // gate.regression.min_requests requests; 2 s leaves room for a loaded
    // machine.
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(clean.server_errors + clean.broken, 0);
    assert!(clean.ok > 0);
    let config = get(&p, "/admin/config");
    assert_eq!(config["rollout"]["phase"], "steady");
    assert_eq!(
        config["rollout"]["stable"].as_str(),
        config["active"]["id"].as_str()
    );
    let events = config["rollout"]["events"].to_string();
    for e in [
        "canary_started",
        "canary_passed",
        "promoted_all",
        "rolled_back",
    ] {
        assert!(events.contains(e), "{e} missing from {events}");
    }
}

const HELLO: &str = "routes:\n  - name: hello\n    match: { path_prefix: / }\n    respond: { status: 200, body: \"hello\\n\" }\n";
const HELLO_AND_EXTRA: &str = "routes:\n  - name: hello\n    match: { path_prefix: / }\n    respond: { status: 200, body: \"hello\\n\" }\n  - name: extra\n    match: { path: /extra }\n    respond: { status: 200, body: \"extra\\n\" }\n";
const BROKEN: &str =
    "routes:\n  - name: hello\n    match: { path_prefix: / }\n    respond: { status: 999 }\n";

fn flips(p: &Proxy) -> u64 {
    get(p, "/admin/config")["flips"].as_u64().unwrap_or(0)
}

#[test]
fn flapping_candidates_freeze_promotion_until_confirmed() {
    let p = Proxy::start(
        "gate: { debounce: 50ms, bake_seconds: 0, freeze_after_flips: 4 }\n",
        HELLO,
    );
    let v0 = version(&p);
    // accepted (v0) → rejected → accepted (v0 again) → rejected → accepted (v1)
    for (i, text) in [BROKEN, HELLO, BROKEN].iter().enumerate() {
        p.write("routes.yaml", text);
        let counted = wait_for(Duration::from_secs(10), || flips(&p) == i as u64 + 1);
        assert!(counted, "look {i}: {}", get(&p, "/admin/config"));
    }
    assert_eq!(version(&p), v0);
    assert!(get(&p, "/admin/config")["frozen"].is_null());
    p.write("routes.yaml", HELLO_AND_EXTRA);
    wait_until("frozen", Duration::from_secs(10), || {
        !get(&p, "/admin/config")["frozen"].is_null()
    });
    let config = get(&p, "/admin/config");
    let why = config["frozen"]["why"].as_str().unwrap();
    assert!(why.contains("POST /admin/confirm"), "{why}");
    assert!(
        config["rollout"]["events"]
            .to_string()
            .contains("\"frozen\"")
    );
    // The accepted candidate waits.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(version(&p), v0, "promoted while frozen");
    assert!(metrics(&p).contains("aegis_config_canary_state 3"));
    let last = get(&p, "/admin/verdicts")[0].clone();
    assert_eq!(last["verdict"]["accepted"], true, "{last}");

    let answer = admin(&p, "POST", "/admin/confirm");
    assert_eq!(answer["confirmed"], true, "{answer}");
    wait_until("promoted once confirmed", Duration::from_secs(10), || {
        version(&p) != v0
    });
    assert!(get(&p, "/admin/config")["frozen"].is_null());
    let extra = util::raw(
        p.http,
        b"GET /extra HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(extra.ends_with("extra\n"), "{extra}");
}

#[test]
fn admin_rollback_takes_the_active_version_back() {
    let p = Proxy::start("gate: { debounce: 50ms, bake_seconds: 0 }\n", HELLO);
    let v0 = version(&p);
    let answer = admin(&p, "POST", "/admin/rollback");
    assert!(
        answer.is_null() || answer.get("rolled_back").is_none(),
        "nothing to roll back to, yet: {answer}"
    );
    p.write("routes.yaml", HELLO_AND_EXTRA);
    wait_until("v1 promoted", Duration::from_secs(10), || version(&p) != v0);
    let v1 = version(&p);
    let answer = admin(&p, "POST", "/admin/rollback");
    assert!(answer["rolled_back"].is_string(), "{answer}");
    wait_until("v0 back", Duration::from_secs(5), || version(&p) == v0);
    assert!(verdicts(&p).contains("rolled_back:manual"));
    // v1's file is still in the directory: its verdict is now a rejection.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(version(&p), v0, "{v1} came back");
    assert!(metrics(&p).contains("aegis_config_rollbacks_total{reason=\"manual\"} 1"));
}
