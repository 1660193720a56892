//! Local-gate fleets (docs/FLEET.md, "Local-gate mode"), against real
//! `aegis run` processes: an accepted candidate waits this node's hold-off
//! (`gate.holdoff`: FNV-1a 64 of the node's name, from `AEGIS_NODE_NAME`,
//! into the window) before it serves, visibly held meanwhile, and a newer
//! candidate replaces it; the halt file `aegis-halt` holds every accepted
//! candidate (`held:halt`) until it goes, and is itself no candidate.

mod util;

use std::time::{Duration, Instant};

use util::Proxy;

fn routes(body: &str) -> String {
    format!(
        "routes:\n  - name: hello\n    match: {{ path_prefix: / }}\n    respond: {{ status: 200, body: \"{body}\\n\" }}\n"
    )
}

/// `GET <path>` on the admin listener (loopback, no token): status, body.
fn admin(p: &Proxy, path: &str) -> (u16, String) {
    util::admin_status(p, path, None)
}

fn json(p: &Proxy, path: &str) -> serde_json::Value {
    let (_, body) = admin(p, path);
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

fn config(p: &Proxy) -> serde_json::Value {
    json(p, "/admin/config")
}

fn active(p: &Proxy) -> String {
    config(p)["active"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Polls `f` every 50 ms until it gives `Some`, for at most `limit`.
fn wait<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within {limit:?}");
}

/// The fleet hold in `/admin/config`: (id, reason).
fn fleet_hold(p: &Proxy) -> Option<(String, String)> {
    let c = config(p);
    let h = &c["fleet_hold"];
    Some((
        h["id"].as_str()?.to_string(),
        h["reason"].as_str()?.to_string(),
    ))
}

/// FNV-1a 64, written out again here: the documented hash, not the
/// gate's code, decides what the test expects.
fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Whether one `aegis_config_verdicts_total` series for `reason` with
/// result `held` is on `/metrics`.
fn held_metric(p: &Proxy, reason: &str) -> bool {
    let (_, m) = admin(p, "/metrics");
    m.lines().any(|l| {
        l.starts_with("aegis_config_verdicts_total")
            && l.contains("result=\"held\"")
            && l.contains(&format!("reason=\"{reason}\""))
    })
}

const WINDOW_MS: u64 = 10_000;

#[test]
fn holdoff_delays_promotion_by_the_nodes_place_in_the_window() {
    // A node whose delay is 4-6 s in a 10 s window.
    let node = (0..10_000)
        .map(|i| format!("node-{i}"))
        .find(|n| (4_000..6_000).contains(&(fnv1a64(n) % WINDOW_MS)))
        .unwrap();
    let delay = Duration::from_millis(fnv1a64(&node) % WINDOW_MS);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("aegis.yaml"),
        format!(
            "listen: [\"127.0.0.1:0\"]\nadmin: \"127.0.0.1:0\"\naccess_log: \"off\"\nworkers: 0\n\
             gate:\n  holdoff:\n    window: {WINDOW_MS}ms\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("routes.yaml"), routes("one")).unwrap();
    let p = Proxy::try_spawn_in_env(
        dir,
        tempfile::tempdir().unwrap(),
        &[("AEGIS_NODE_NAME", std::ffi::OsStr::new(&node))],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let v1 = wait(Duration::from_secs(10), "serving at start", || {
        let (s, body) = admin(&p, "/ready");
        (s == 200 && body.contains("\"serving\"")).then(|| active(&p))
    });
    let h = &config(&p)["holdoff"];
    assert_eq!(h["node"], node.as_str(), "{h}");
    assert_eq!(
        h["delay_ms"].as_u64(),
        Some(u64::try_from(delay.as_millis()).unwrap()),
        "{h}"
    );

    // A candidate: accepted, held for this node's delay, visibly.
    p.write("routes.yaml", &routes("two"));
    let (two, reason) = wait(Duration::from_secs(20), "the hold", || fleet_hold(&p));
    assert_eq!(reason, "held:holdoff");
    assert_ne!(two, v1);
    assert_eq!(active(&p), v1);
    let (status, body) = admin(&p, "/ready");
    assert_eq!(status, 503, "{body}");
    let r: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["state"], "held", "{r}");
    let verdicts = json(&p, "/admin/verdicts");
    assert_eq!(verdicts[0]["id"], two.as_str(), "{verdicts}");
    assert_eq!(
        verdicts[0]["verdict"]["reason"], "held:holdoff",
        "{verdicts}"
    );
    assert!(held_metric(&p, "held:holdoff"));

    // A newer candidate replaces it, with the hold-off from its own
    // arrival: the first one's hold (begun before) would end earlier.
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(active(&p), v1, "promoted before the hold-off ended");
    assert_eq!(fleet_hold(&p).map(|h| h.0), Some(two.clone()));
    let wrote = Instant::now();
    p.write("routes.yaml", &routes("three"));
    let (three, _) = wait(Duration::from_secs(20), "the newer hold", || {
        fleet_hold(&p).filter(|(id, _)| *id != two)
    });
    assert_ne!(three, v1);
    // Not promoted before its delay (less a margin): neither it nor the
    // replaced one, whose hold would have ended 1.5 s sooner.
    let margin = Duration::from_millis(700);
    while wrote.elapsed() < delay.saturating_sub(margin) {
        assert_eq!(active(&p), v1, "promoted before the hold-off ended");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait(
        delay + Duration::from_secs(15),
        "promotion after the hold-off",
        || (active(&p) == three).then_some(()),
    );
    assert!(fleet_hold(&p).is_none(), "{}", config(&p));
    assert_eq!(
        wait(Duration::from_secs(10), "ready", || {
            let (s, _) = admin(&p, "/ready");
            (s == 200).then_some(s)
        }),
        200
    );
}

#[test]
fn halt_file_holds_every_accepted_candidate_until_it_goes() {
    let p = Proxy::start("", &routes("one"));
    let v1 = wait(Duration::from_secs(10), "serving at start", || {
        let (s, body) = admin(&p, "/ready");
        (s == 200 && body.contains("\"serving\"")).then(|| active(&p))
    });
    let candidates = config(&p)["candidates"].as_u64();
    let history = json(&p, "/admin/verdicts").as_array().map(Vec::len);

    // The halt file alone is no candidate: nothing is judged, nothing
    // changes, the node stays ready.
    std::fs::write(p.path().join("aegis-halt"), "incident 42\n").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let c = config(&p);
    assert_eq!(c["candidates"].as_u64(), candidates, "{c}");
    assert_eq!(c["holdoff"]["halted"], true, "{c}");
    assert_eq!(
        json(&p, "/admin/verdicts").as_array().map(Vec::len),
        history
    );
    assert_eq!(active(&p), v1);
    assert_eq!(admin(&p, "/ready").0, 200);

    // A good candidate while halted: judged, accepted, held.
    p.write("routes.yaml", &routes("two"));
    let (two, reason) = wait(Duration::from_secs(20), "the hold", || fleet_hold(&p));
    assert_eq!(reason, "held:halt");
    let verdicts = json(&p, "/admin/verdicts");
    assert_eq!(verdicts[0]["verdict"]["reason"], "held:halt", "{verdicts}");
    assert_eq!(verdicts[1]["id"], two.as_str(), "{verdicts}");
    assert_eq!(verdicts[1]["verdict"]["accepted"], true, "{verdicts}");
    assert!(held_metric(&p, "held:halt"));
    let (status, body) = admin(&p, "/ready");
    assert_eq!(status, 503, "{body}");
    let r: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["state"], "held", "{r}");
    assert_eq!(r["fleet_held"], "held:halt", "{r}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(active(&p), v1, "promoted while halted");

    // The halt goes: promoted (no hold-off window here).
    std::fs::remove_file(p.path().join("aegis-halt")).unwrap();
    wait(Duration::from_secs(10), "promotion after the halt", || {
        (active(&p) == two).then_some(())
    });
    assert!(fleet_hold(&p).is_none());
    assert_eq!(config(&p)["holdoff"]["halted"], false);
}
