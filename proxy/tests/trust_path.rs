//! The trust path, tried as an operator would: nothing the gate rejected, and
//! nothing the watched directory holds, ever serves. Real `aegis run`
//! processes with real worker processes under live load; each scenario
//! asserts what the clients saw and which version serves.
//!
//! - a rejected `aegis.yaml`, then every worker killed: the respawned workers
//!   serve the promoted snapshot, not the rejected settings;
//! - random bytes, a symlink loop, the directory moved away, then respawns:
//!   no crash loop, nothing changes for clients;
//! - rollbacks go to the last version that finished its bake, never to a
//!   superseded candidate; a directory restored to the stable version goes
//!   back to it without a canary;
//! - a writer that pauses mid-file, and a deleted file, are held by the
//!   blast-radius guard, promoted only when a person confirms;
//! - a sandbox killed from outside is retried, not remembered;
//! - a full state directory is "could not judge", retried once space is back;
//! - a tampered or missing snapshot at start is repaired from an identical
//!   config directory; a corrupt history line is skipped;
//! - live settings (`limits.*`) reach every worker at promotion, restart-only
//!   ones (`workers`) are announced.

mod util;

use std::io::Write;
use std::time::{Duration, Instant};

use util::load::{Load, admin, kill_worker, served_version, wait_until, wait_until_ok, workers};
use util::{Backend, Proxy};

const ROUTES: &str = util::HELLO_ROUTES;

const WORKERS: &str =
    "workers: 2\nhealth: { interval: 200ms, timeout: 500ms, fall: 5, grace: 500ms }\n";

/// The load's client threads (one request in flight each).
const CLIENTS: usize = 4;

fn config(p: &Proxy) -> serde_json::Value {
    admin(p, "GET", "/admin/config")
}

fn verdicts(p: &Proxy) -> Vec<serde_json::Value> {
    admin(p, "GET", "/admin/verdicts")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The newest verdict's reason code (`accept` when accepted).
fn newest_code(p: &Proxy) -> String {
    verdicts(p)
        .first()
        .map(|v| {
            v["verdict"]["reason"]
                .as_str()
                .unwrap_or("accept")
                .to_string()
        })
        .unwrap_or_default()
}

/// The active snapshot id (waits out an admin call lost on a loaded machine).
fn active_id(p: &Proxy) -> String {
    let mut id = String::new();
    wait_until("the admin API answers", Duration::from_secs(10), || {
        id = config(p)["active"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        !id.is_empty()
    });
    id
}

fn all_workers_on(p: &Proxy, version: &str) -> bool {
    let w = workers(p);
    !w.is_empty()
        && w.iter()
            .all(|w| w["version"] == version && w["healthy"] == true)
}

/// The aegis.yaml the harness wrote, plus `extra`.
fn settings_plus(p: &Proxy, extra: &str) -> String {
    let now = std::fs::read_to_string(p.path().join("aegis.yaml")).unwrap();
    format!("{now}{extra}")
}

#[test]
fn a_rejected_aegis_yaml_never_reaches_a_respawned_worker() {
    let p = Proxy::start(
        &format!("{WORKERS}sample: {{ flush_interval: 200ms }}\ngate: {{ debounce: 50ms }}\n"),
        ROUTES,
    );
    let v0 = served_version(&p);
    let load = Load::start(p.http, CLIENTS, "/");
    load.wait_ok(100, Duration::from_secs(10));
    // The gate replays recorded traffic: wait for the first sample.
    let sample = p.state.path().join("sample.jsonl");
    wait_until("a traffic sample recorded", Duration::from_secs(10), || {
        std::fs::metadata(&sample).is_ok_and(|m| m.len() > 0)
    });
    let verdicts_before = verdicts(&p).len();
    p.write(
        "aegis.yaml",
        &settings_plus(&p, "limits: { max_header_bytes: 16 }\n"),
    );
    wait_until("the gate judged it", Duration::from_secs(30), || {
        verdicts(&p).len() > verdicts_before
    });
    let code = newest_code(&p);
    assert!(
        code.starts_with("regression") || code == "invalid",
        "a 16-byte header limit was not rejected: {code}"
    );
    // Every worker replaced, one after the other.
    kill_worker(&p, 0);
    kill_worker(&p, 1);
    load.wait_ok(300, Duration::from_secs(20));
    let seen = load.finish();
    eprintln!("after rejected settings and two kills: {seen:?}");
    assert_eq!(
        seen.not_ok(),
        0,
        "clients got the rejected settings' answers: {seen:?}"
    );
    assert!(
        seen.broken <= 2 * CLIENTS as u64,
        "more broken requests than were in flight on the killed workers: {seen:?}"
    );
    assert!(all_workers_on(&p, &v0), "{:?}", workers(&p));
}

#[test]
fn respawns_do_not_depend_on_what_the_watched_directory_holds() {
    let p = Proxy::start(WORKERS, ROUTES);
    let v0 = served_version(&p);
    let load = Load::start(p.http, CLIENTS, "/");
    load.wait_ok(100, Duration::from_secs(10));

    // Random bytes (not even UTF-8) as a config file.
    std::fs::write(
        p.path().join("junk.yaml"),
        [0xff_u8, 0xfe, 0x00, 0x9c, 0x80],
    )
    .unwrap();
    wait_until("the junk rejected", Duration::from_secs(20), || {
        newest_code(&p) == "invalid"
    });
    kill_worker(&p, 0);
    std::fs::remove_file(p.path().join("junk.yaml")).unwrap();

    // A symlink loop: the directory cannot be read at all.
    std::os::unix::fs::symlink("loop.yaml", p.path().join("loop.yaml")).unwrap();
    wait_until("could not judge the loop", Duration::from_secs(20), || {
        config(&p)["could_not_judge"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("could_not_judge:"))
    });
    kill_worker(&p, 1);

    // The directory moved away.
    let moved = p.path().with_extension("moved");
    std::fs::rename(p.path(), &moved).unwrap();
    kill_worker(&p, 0);
    kill_worker(&p, 1);
    load.wait_ok(200, Duration::from_secs(20));
    std::fs::rename(&moved, p.path()).unwrap();

    let seen = load.finish();
    eprintln!("junk, loop, moved dir, four kills: {seen:?}");
    assert_eq!(seen.not_ok(), 0, "{seen:?}");
    assert!(seen.broken <= 4 * CLIENTS as u64, "{seen:?}");
    let w = workers(&p);
    assert!(
        w.iter().all(|w| w["paused_until_unix"].is_null()),
        "respawning was paused (a crash loop): {w:?}"
    );
    assert!(all_workers_on(&p, &v0), "{w:?}");
    let c = config(&p);
    assert_eq!(c["rollbacks"], 0, "{c}");
}

fn routes_to(backend: &Backend, extra: &str) -> String {
    format!(
        "upstreams:\n  - name: app\n    endpoints: [\"{}\"]\nroutes:\n  - name: site\n    match: {{ path_prefix: / }}\n    upstream: app\n{extra}",
        backend.addr
    )
}

const EXTRA_ROUTE: &str = "  - name: extra\n    match: { path_prefix: /extra }\n    respond: { status: 200, body: \"extra\\n\" }\n";

#[test]
fn a_rollback_goes_to_the_last_baked_version_never_to_a_superseded_one() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let good = rt.block_on(Backend::start("good"));
    let bad = rt.block_on(Backend::start("bad"));
    bad.set_failing(true);
    let settings =
        format!("{WORKERS}gate: {{ debounce: 50ms, canary_seconds: 1, bake_seconds: 120 }}\n");
    let p = Proxy::start(&settings, &routes_to(&good, ""));
    let v0 = served_version(&p);
    let id0 = active_id(&p);
    assert_eq!(config(&p)["stable"], id0.as_str());
    let load = Load::start(p.http, CLIENTS, "/");
    load.wait_ok(100, Duration::from_secs(10));

    // v1: harmless, passes its canary, then bakes for two minutes.
    p.write("routes.yaml", &routes_to(&good, EXTRA_ROUTE));
    wait_until("v1 baking on every worker", Duration::from_secs(30), || {
        config(&p)["rollout"]["phase"] == "baking"
    });
    let v1 = served_version(&p);
    assert_ne!(v1, v0);
    // v2 arrives during v1's bake (v1 is cut short, never stable), and its
    // upstream fails live traffic on the canary.
    p.write("routes.yaml", &routes_to(&bad, EXTRA_ROUTE));
    // Whichever canary check sees it first (canary_5xx for the whole
    // traffic, canary_route for its one route, canary_inconclusive when a
    // loaded machine left a side short of requests) takes the failing
    // version back; where to is what this test is about.
    let rolled_back = wait_until_ok(Duration::from_secs(30), || {
        verdicts(&p).iter().any(|v| {
            v["verdict"]["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("rolled_back:canary_"))
        })
    });
    assert!(
        rolled_back,
        "v2 not rolled back within 30 s: {}\nverdicts {:?}",
        config(&p),
        verdicts(&p)
    );
    wait_until("every worker back", Duration::from_secs(10), || {
        all_workers_on(&p, &v0)
    });
    let after = load.counts();
    load.wait_ok(100, Duration::from_secs(10));
    let clean = load.finish().since(&after);
    let c = config(&p);
    eprintln!(
        "rolled back to {}; stable chain {}",
        c["version"], c["stable_chain"]
    );
    assert_eq!(c["version"], v0.as_str(), "not back on the baked version");
    assert_eq!(c["stable"], id0.as_str());
    assert_eq!(clean.failures(), 0, "{clean:?}");
}

#[test]
fn a_directory_restored_to_the_stable_version_goes_back_to_it_without_a_canary() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let good = rt.block_on(Backend::start("good"));
    let settings =
        format!("{WORKERS}gate: {{ debounce: 50ms, canary_seconds: 60, bake_seconds: 60 }}\n");
    let full = routes_to(&good, EXTRA_ROUTE);
    let p = Proxy::start(&settings, &full);
    let v0 = served_version(&p);
    let load = Load::start(p.http, CLIENTS, "/");
    load.wait_ok(100, Duration::from_secs(10));
    // A candidate on the canary (a long window) ...
    p.write(
        "routes.yaml",
        &routes_to(
            &good,
            &format!("{EXTRA_ROUTE}{}", EXTRA_ROUTE.replace("extra", "more")),
        ),
    );
    wait_until("the canary serves it", Duration::from_secs(30), || {
        config(&p)["candidate"].is_string()
    });
    // ... abandoned: the file goes back to what was stable.
    p.write("routes.yaml", &full);
    wait_until(
        "every worker on the stable version",
        Duration::from_secs(30),
        || all_workers_on(&p, &v0) && config(&p)["candidate"].is_null(),
    );
    // A failing upstream now finds no rollout to roll back.
    good.set_failing(true);
    std::thread::sleep(Duration::from_secs(2));
    good.set_failing(false);
    load.wait_ok(100, Duration::from_secs(10));
    load.finish();
    let c = config(&p);
    assert_eq!(c["version"], v0.as_str(), "{c}");
    let events = c["rollout"]["events"].to_string();
    assert!(events.contains("back_to_stable"), "{events}");
    assert!(
        !verdicts(&p).iter().any(|v| v["verdict"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("rolled_back"))),
        "a version was rolled back"
    );
}

/// SIGKILLs every `aegis-sandbox` judging for `state` until `until`.
fn kill_sandboxes(state: &std::path::Path, until: Instant) -> u32 {
    let needle = state.display().to_string();
    let mut killed = 0;
    while Instant::now() < until {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            if cmd.contains("aegis-sandbox") && cmd.contains(&needle) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                killed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    killed
}

#[test]
fn a_sandbox_killed_from_outside_is_retried_not_remembered() {
    let p = Proxy::start("gate: { debounce: 50ms }\n", ROUTES);
    let v0 = served_version(&p);
    let state = p.state.path().to_path_buf();
    let killer =
        std::thread::spawn(move || kill_sandboxes(&state, Instant::now() + Duration::from_secs(3)));
    p.write("routes.yaml", &format!("{ROUTES}{EXTRA_ROUTE}"));
    let killed = killer.join().unwrap();
    assert!(
        killed > 0,
        "no sandbox was seen to kill: the test proved nothing"
    );
    // The history keeps one line per could-not-judge streak: read it there,
    // not in /admin/config, which a retry right after the killer stopped may
    // already have cleared.
    let codes: Vec<String> = verdicts(&p)
        .iter()
        .filter_map(|v| v["verdict"]["reason"].as_str().map(str::to_string))
        .collect();
    eprintln!("killed {killed} sandbox(es); verdict codes: {codes:?}");
    assert!(
        codes.iter().any(|c| c == "could_not_judge:runner_killed"),
        "{codes:?}"
    );
    assert!(
        !codes.iter().any(|c| c == "crashed"),
        "a kill from outside became a verdict on the content: {codes:?}"
    );
    // Retried (backoff, at most a few seconds): judged and promoted.
    wait_until("promoted on a retry", Duration::from_secs(30), || {
        served_version(&p) != v0
    });
    let c = config(&p);
    assert!(c["could_not_judge"].is_null(), "{c}");
    let m = util::raw(
        p.admin.unwrap(),
        b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(
        m.contains("aegis_config_could_not_judge_total{reason=\"runner_killed\"}"),
        "{m}"
    );
}

/// A tmpfs mounted over a directory, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "this test mounts a small tmpfs as the state directory and needs root"
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_state_directory_is_could_not_judge_and_retried_once_space_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let _fs = Tmpfs::mount(state.path(), "2m");
    std::fs::write(
        dir.path().join("aegis.yaml"),
        "listen: [\"127.0.0.1:0\"]\nadmin: \"127.0.0.1:0\"\naccess_log: \"off\"\nworkers: 0\ngate: { debounce: 50ms }\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("routes.yaml"), ROUTES).unwrap();
    let p = Proxy::spawn_in(dir, state);
    let v0 = served_version(&p);
    let load = Load::start(p.http, CLIENTS, "/");
    load.wait_ok(50, Duration::from_secs(10));
    // Fill the disk.
    let filler = p.state.path().join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    p.write("routes.yaml", &format!("{ROUTES}{EXTRA_ROUTE}"));
    wait_until(
        "could not judge: state dir",
        Duration::from_secs(20),
        || config(&p)["could_not_judge"]["reason"] == "could_not_judge:state_dir",
    );
    let c = config(&p);
    assert!(
        c["could_not_judge"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("full")),
        "the message does not name the full disk: {c}"
    );
    assert_eq!(served_version(&p), v0);
    std::fs::remove_file(&filler).unwrap();
    let answer = admin(&p, "POST", "/admin/rejudge");
    assert_eq!(answer["rejudging"], true, "{answer}");
    wait_until(
        "promoted once space is back",
        Duration::from_secs(20),
        || served_version(&p) != v0,
    );
    let seen = load.finish();
    assert_eq!(seen.failures(), 0, "{seen:?}");
    assert!(config(&p)["could_not_judge"].is_null());
}

#[test]
fn a_tampered_or_missing_snapshot_at_start_is_repaired_from_the_identical_directory() {
    let p = Proxy::start("", ROUTES);
    let id = active_id(&p);
    let (dir, state) = p.into_dirs();
    let kept = state.path().join("versions").join(&id).join("files");
    // Tampered: a route the gate never judged.
    std::fs::write(
        kept.join("routes.yaml"),
        format!(
            "{ROUTES}  - name: evil\n    match: {{ path_prefix: /evil }}\n    respond: {{ status: 200, body: \"tampered\\n\" }}\n"
        ),
    )
    .unwrap();
    let p = Proxy::spawn_in(dir, state);
    assert_eq!(active_id(&p), id);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let evil = rt.block_on(util::get(&util::client(), &p.url("/evil"), None));
    assert_eq!(evil.text(), "hello\n", "the tampered snapshot was served");
    let kept_text = std::fs::read_to_string(kept.join("routes.yaml")).unwrap();
    assert!(!kept_text.contains("evil"), "the snapshot was not repaired");

    // Missing: the version's files deleted.
    let (dir, state) = p.into_dirs();
    std::fs::remove_dir_all(&kept).unwrap();
    let p = Proxy::spawn_in(dir, state);
    assert_eq!(active_id(&p), id);
    let got = rt.block_on(util::get(&util::client(), &p.url("/"), None));
    assert_eq!(got.text(), "hello\n");

    // Private: no one else can read the state directory.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(p.state.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "state dir mode {mode:o}");
    let mode = std::fs::metadata(kept.join("routes.yaml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "snapshot file mode {mode:o}");
}

#[test]
fn a_tampered_snapshot_with_a_changed_directory_falls_back_to_the_gate() {
    let p = Proxy::start("", ROUTES);
    let id = active_id(&p);
    let (dir, state) = p.into_dirs();
    let kept = state.path().join("versions").join(&id).join("files");
    std::fs::write(kept.join("routes.yaml"), "routes: []\n").unwrap();
    // The directory moved on meanwhile: the tampered copy cannot be repaired
    // from it and there is no other stable version; the directory is gated.
    std::fs::write(
        dir.path().join("routes.yaml"),
        format!("{ROUTES}{EXTRA_ROUTE}"),
    )
    .unwrap();
    let p = Proxy::spawn_in(dir, state);
    assert_ne!(active_id(&p), id);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let got = rt.block_on(util::get(&util::client(), &p.url("/extra"), None));
    assert_eq!(got.text(), "extra\n");
}

#[test]
fn a_corrupt_history_line_is_skipped_not_the_whole_history() {
    let p = Proxy::start("gate: { debounce: 50ms }\n", ROUTES);
    assert!(!verdicts(&p).is_empty());
    let history = p.state.path().join("history.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&history)
        .unwrap();
    f.write_all(b"\xff\xfe not json \x00\n{\"id\": 3}\n")
        .unwrap();
    drop(f);
    p.write("routes.yaml", &format!("{ROUTES}{EXTRA_ROUTE}"));
    wait_until("the new verdict listed", Duration::from_secs(20), || {
        verdicts(&p).len() >= 2
    });
    let mut m = String::new();
    let seen = util::load::wait_until_ok(Duration::from_secs(10), || {
        m = util::raw(
            p.admin.unwrap(),
            b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        );
        m.contains("aegis_state_corrupt_history_lines 2")
    });
    assert!(seen, "{m}");
}

#[test]
fn live_settings_reach_every_worker_and_restart_only_ones_are_announced() {
    let p = Proxy::start(
        &format!("{WORKERS}gate: {{ debounce: 50ms, canary_seconds: 0 }}\n"),
        ROUTES,
    );
    let id0 = active_id(&p);
    p.write(
        "aegis.yaml",
        &settings_plus(&p, "limits: { max_request_body: 10 }\n")
            .replace("workers: 2", "workers: 3"),
    );
    // Only aegis.yaml changed: the engine version (the hot content's hash)
    // stays, the snapshot id does not. The config line comes once every
    // worker acknowledged the load (no canary here).
    assert!(
        p.wait_line("aegis: config ", Duration::from_secs(30))
            .is_some(),
        "not promoted"
    );
    assert_ne!(active_id(&p), id0);
    let c = config(&p);
    let pending = c["pending_restart"].to_string();
    assert!(pending.contains("workers"), "{c}");
    assert_eq!(
        workers(&p).len(),
        2,
        "the worker count changed without a restart"
    );
    // Every worker enforces the new body limit: many fresh connections, so
    // both workers answer some of them.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let statuses: Vec<u16> = rt.block_on(async {
        let mut out = Vec::new();
        for _ in 0..40 {
            let req = http::Request::post(p.url("/"))
                .header("connection", "close")
                .body(util::full(vec![b'x'; 100]))
                .unwrap();
            out.push(util::send(&util::client(), req).await.status);
        }
        out
    });
    assert!(statuses.iter().all(|s| *s == 413), "{statuses:?}");
    let per_worker: Vec<u64> = workers(&p)
        .iter()
        .map(|w| w["requests"].as_u64().unwrap_or(0))
        .collect();
    eprintln!("per-worker requests: {per_worker:?}");
}

/// `n` respond routes, one per path.
fn many_routes(n: usize) -> String {
    // The catch-all first: a truncated file keeps it, so every request still
    // gets a 200, only from another route (what the replay alone accepts).
    let mut s = String::from(
        "routes:\n  - name: hello\n    match: { path_prefix: / }\n    respond: { status: 200, body: \"hello\\n\" }\n",
    );
    for i in 0..n {
        s.push_str(&format!(
            "  - name: r{i}\n    match: {{ path_prefix: /r{i} }}\n    respond: {{ status: 200, body: \"r{i}\\n\" }}\n"
        ));
    }
    s
}

#[test]
fn a_paused_writer_s_truncated_file_is_held_not_promoted() {
    let full = many_routes(30);
    let p = Proxy::start(&format!("{WORKERS}gate: {{ debounce: 50ms }}\n"), &full);
    let id0 = active_id(&p);
    let load = Load::start(p.http, CLIENTS, "/r29");
    load.wait_ok(100, Duration::from_secs(10));
    // A writer that stops after a few whole lines (valid YAML: 3 routes)
    // for 2 s, then writes the rest, in place.
    let cut = full
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .find(|i| *i >= 150)
        .unwrap();
    let path = p.path().join("routes.yaml");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&full.as_bytes()[..cut]).unwrap();
    f.flush().unwrap();
    wait_until(
        "the truncated candidate held",
        Duration::from_secs(20),
        || config(&p)["held"]["reason"] == "held:blast_radius",
    );
    let held = config(&p)["held"].clone();
    eprintln!("held: {held}");
    assert!(
        held["sentence"]
            .as_str()
            .is_some_and(|s| s.contains("routes removed")),
        "{held}"
    );
    std::thread::sleep(Duration::from_secs(2));
    f.write_all(&full.as_bytes()[cut..]).unwrap();
    drop(f);
    wait_until(
        "the hold released by the full file",
        Duration::from_secs(20),
        || config(&p)["held"].is_null(),
    );
    // The rest of the file lands in one write; a look between the gate's
    // reads may still catch a nearly whole file (a few routes short, under
    // the limits): it may be promoted on its way, but the end is the full file.
    wait_until("the full file serving", Duration::from_secs(20), || {
        active_id(&p) == id0
    });
    load.wait_ok(100, Duration::from_secs(10));
    let seen = load.finish();
    assert_eq!(seen.failures(), 0, "{seen:?}");
    let held_id = held["id"].as_str().unwrap();
    assert!(
        !verdicts(&p)
            .iter()
            .any(|v| v["id"] == held_id && v["verdict"]["accepted"] == true),
        "the truncated version {held_id} was accepted"
    );
}

#[test]
fn a_held_deletion_is_promoted_only_when_a_person_confirms() {
    let p = Proxy::start_with(
        "gate: { debounce: 50ms }\n",
        &[
            ("routes.yaml", ROUTES),
            (
                "more.yaml",
                "routes:\n  - name: more\n    match: { path_prefix: /more }\n    respond: { status: 200, body: \"more\\n\" }\n",
            ),
        ],
    );
    let id0 = active_id(&p);
    std::fs::remove_file(p.path().join("more.yaml")).unwrap();
    wait_until("the deletion held", Duration::from_secs(20), || {
        config(&p)["held"]["reason"] == "held:blast_radius"
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(active_id(&p), id0, "held but promoted");
    let answer = admin(&p, "POST", "/admin/confirm");
    assert_eq!(answer["confirmed"], true, "{answer}");
    wait_until("promoted once confirmed", Duration::from_secs(20), || {
        active_id(&p) != id0
    });
    let c = config(&p);
    assert!(c["held"].is_null(), "{c}");
    assert!(
        verdicts(&p)[0]["verdict"]["sentence"]
            .as_str()
            .is_some_and(|s| s.contains("confirmed by the admin API")),
        "{:?}",
        verdicts(&p)
    );
}

#[test]
fn a_read_only_state_directory_is_named_as_such_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("routes.yaml"), ROUTES).unwrap();
    std::fs::write(
        dir.path().join("aegis.yaml"),
        "listen: [\"127.0.0.1:0\"]\nadmin: \"127.0.0.1:0\"\nworkers: 0\n",
    )
    .unwrap();
    let _fs = Tmpfs::mount(state.path(), "1m");
    let st = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(state.path())
        .status()
        .unwrap();
    assert!(st.success(), "remount read-only");
    let err = match Proxy::try_spawn_in(dir, state) {
        Ok(_) => panic!("started on a read-only state directory"),
        Err(e) => e,
    };
    assert!(err.contains("read-only file system"), "{err}");
}
