//! The config gate end to end, under continuous load: the real data plane
//! (listener, `Pipeline`, `PooledConnector`) serving a `ConfigHandle`, the
//! gate watching a real config directory and judging every change with the
//! real `aegis-sandbox` binary, and a load of keep-alive clients counting
//! every answer that is not the expected 200.
//!
//! The gate runs in the test process (as it will inside `aegis run` once
//! `cli/run.rs` calls `gate::start_blocking` / `Gate::spawn`), so the tests
//! can read its state directly; the runner is the real binary, built on
//! demand into the same target directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aegis_proxy::gate::sandbox::Sandbox;
use aegis_proxy::gate::store::Record;
use aegis_proxy::gate::{Gate, GateOptions};
use aegis_proxy::pipeline::{ConfigHandle, Pipeline};
use aegis_proxy::server::{self, ConnOptions};
use aegis_proxy::upstream::PooledConnector;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio_util::sync::CancellationToken;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `aegis-sandbox` binary of this build profile. `cargo test
/// --workspace` builds it (the sandbox runner's own integration tests make
/// cargo build its binary) before any test runs; no cargo is run from here:
/// a nested cargo invocation changed the environment cargo fingerprints and
/// made the next build recompile the workspace.
fn runner() -> PathBuf {
    if let Some(p) = std::env::var_os("AEGIS_SANDBOX") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/gate_e2e-… → target/<profile>
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("aegis-sandbox");
    assert!(
        bin.is_file(),
        "{} is missing: run the whole suite (`cargo test --workspace --release`) or `cargo build --release -p aegis-sandbox` first",
        bin.display()
    );
    bin
}

struct Harness {
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    _state: tempfile::TempDir,
    gate: Arc<Gate>,
    handle: ConfigHandle,
    addr: SocketAddr,
    shutdown: CancellationToken,
}

const BASE_SETTINGS: &str = "admin: \"off\"\nworkers: 1\naccess_log: \"off\"\n";

impl Harness {
    /// The shipped config set plus `settings` in aegis.yaml, gated and served.
    fn start(settings: &str) -> Self {
        Self::start_with(settings, runner(), |_| {})
    }

    fn start_with(settings: &str, runner: PathBuf, prepare: impl FnOnce(&Path)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for name in ["routes.yaml", "features.yaml", "sample.jsonl"] {
            std::fs::copy(repo().join("configs").join(name), dir.path().join(name)).unwrap();
        }
        std::fs::write(
            dir.path().join("aegis.yaml"),
            format!("{BASE_SETTINGS}gate:\n  debounce: 200ms\n{settings}"),
        )
        .unwrap();
        prepare(dir.path());
        let state = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let gate = Gate::open(GateOptions {
            config_dir: dir.path().to_path_buf(),
            state_dir: state.path().to_path_buf(),
            sandbox: Sandbox::new(runner),
            probe_timeout: Duration::from_millis(300),
        })
        .unwrap();
        let started = rt.block_on(gate.startup()).unwrap();
        assert_eq!(started.how, "gated");
        let handle = ConfigHandle::from_arc(started.compiled);
        let shutdown = CancellationToken::new();
        let (addr, traffic) = rt.block_on(async {
            let connector = PooledConnector::new();
            let pipeline = Pipeline::builder(handle.clone(), connector).build();
            let traffic = pipeline.traffic();
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let t = server::serve_plain(
                l,
                pipeline,
                ConnOptions::default(),
                shutdown.clone(),
                Duration::from_secs(1),
            )
            .unwrap();
            (t.local_addr, traffic)
        });
        let _guard = rt.enter();
        let fleet = aegis_proxy::rollout::LocalFleet {
            config: handle.clone(),
            traffic,
            apply_settings: None,
        };
        gate.clone().spawn(Arc::new(fleet), shutdown.clone());
        Harness {
            rt,
            dir,
            _state: state,
            gate,
            handle,
            addr,
            shutdown,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn history(&self) -> Vec<Record> {
        self.gate.store().history(10_000)
    }

    fn active(&self) -> Option<String> {
        self.gate.status().active_id()
    }

    /// Waits for the history to grow past `seen` records; returns the new ones.
    fn wait_verdicts(&self, seen: usize, timeout: Duration) -> Vec<Record> {
        let end = Instant::now() + timeout;
        loop {
            let h = self.history();
            if h.len() > seen {
                // Let a burst settle into its verdicts.
                std::thread::sleep(Duration::from_millis(100));
                return self.history().split_off(seen);
            }
            assert!(Instant::now() < end, "no verdict within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn get(&self, path: &str) -> (u16, String) {
        let addr = self.addr;
        let path = path.to_string();
        self.rt.block_on(async move {
            let client = client();
            let resp = client.request(request(addr, &path)).await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        })
    }

    /// Keep-alive clients on `GET /` as a browser sends it, until stopped.
    fn load(&self, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), self.addr);
            tasks.push(self.rt.spawn(async move {
                let client = client();
                while !stop.load(Ordering::Relaxed) {
                    match client.request(request(addr, "/")).await {
                        Ok(r) if r.status() == 200 => {
                            let _ = r.into_body().collect().await;
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Empty<Bytes>,
>;

fn client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

fn request(addr: SocketAddr, path: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(format!("http://{addr}{path}"))
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Firefox/133.0",
        )
        .header("accept", "text/html,*/*;q=0.8")
        .body(Empty::new())
        .unwrap()
}

struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Lets the load go on until it has served 100 more requests since this
    /// call (traffic flows after the last change: on a busy machine a fixed
    /// time proves nothing), then stops it; returns (ok, failed).
    fn finish(self, h: &Harness) -> (u64, u64) {
        let target = self.ok.load(Ordering::Relaxed).saturating_add(100);
        let start = Instant::now();
        while self.ok.load(Ordering::Relaxed) < target && start.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = h.rt.block_on(t);
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

fn example(kind: &str, name: &str) -> PathBuf {
    repo().join("configs/examples").join(kind).join(name)
}

/// Copies an example's files over the config directory; returns what to
/// write back to undo it (name, previous content or None).
fn drop_in(h: &Harness, dir: &Path) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    let mut undo = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let to = h.path(&e.file_name().to_string_lossy());
        undo.push((to.clone(), std::fs::read(&to).ok()));
        std::fs::copy(e.path(), &to).unwrap();
    }
    undo
}

fn undo(files: Vec<(PathBuf, Option<Vec<u8>>)>) {
    for (p, prev) in files {
        match prev {
            Some(b) => std::fs::write(&p, b).unwrap(),
            None => std::fs::remove_file(&p).unwrap(),
        }
    }
}

fn welcome(body: &str) -> String {
    format!(
        "routes:\n  - name: welcome\n    match: {{ path_prefix: \"/\" }}\n    respond: {{ status: 200, body: \"{body}\\n\" }}\n  - name: healthz\n    match: {{ path: \"/healthz\" }}\n    respond: {{ status: 200, body: \"ok\\n\" }}\n"
    )
}

/// Waits until `GET /` answers `body`; returns how long it took.
fn wait_body(h: &Harness, body: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (_, b) = h.get("/");
        if b.trim() == body {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "`{body}` not served within {timeout:?} (serving `{}`; verdicts {:?})",
            b.trim(),
            h.history()
                .iter()
                .map(|r| (&r.id, r.verdict.code(), &r.verdict.sentence))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn good_changes_promote_and_dangerous_ones_are_rejected_under_load() {
    let h = Harness::start("");
    let load = h.load(4);
    std::thread::sleep(Duration::from_millis(200));

    // A good change: traffic follows within 2 s of the write.
    std::fs::write(h.path("routes.yaml"), welcome("version two")).unwrap();
    let took = wait_body(&h, "version two", Duration::from_secs(2));
    eprintln!("write → served: {took:?}");
    let good = h.active().unwrap();

    // Each valid-but-dangerous example: rejected with its reason, the active
    // version unchanged, then taken back out.
    for (kind, name, code) in [
        ("dangerous", "upstream-dead", "regression:status"),
        ("dangerous", "catch-all-404", "regression:status"),
        ("dangerous", "block-everyone", "regression:newly_blocked"),
        ("dangerous", "feature-file-doubled", "invalid"),
        ("dangerous", "wrong-certificate", "invalid"),
        ("dangerous", "huge-route-table", "oom"),
    ] {
        let seen = h.history().len();
        let files = drop_in(&h, &example(kind, name));
        let new = h.wait_verdicts(seen, Duration::from_secs(60));
        let last = new.last().unwrap();
        assert_eq!(last.verdict.code(), code, "{name}: {:?}", last.verdict);
        assert!(!last.verdict.sentence.is_empty());
        assert_eq!(h.active().as_deref(), Some(good.as_str()), "{name}");
        assert_eq!(h.handle.load().routes.len(), 2, "{name}");
        undo(files);
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(h.active().as_deref(), Some(good.as_str()), "{name} undone");
    }

    // The same bad file dropped a second time is not judged again.
    let runs = h.history().len();
    let files = drop_in(&h, &example("dangerous", "catch-all-404"));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        h.history().len(),
        runs,
        "a known-bad snapshot was judged again"
    );
    undo(files);
    std::thread::sleep(Duration::from_millis(600));

    let (ok, failed) = load.finish(&h);
    eprintln!("load: {ok} ok, {failed} failed");
    assert!(ok > 1000, "{ok}");
    assert_eq!(failed, 0);
}

#[test]
fn editor_saves_partial_writes_and_bursts() {
    let h = Harness::start("");
    let load = h.load(2);

    // Rename-on-save: write a temporary file (ignored), rename it over.
    let tmp = h.path(".routes.yaml.swp");
    std::fs::write(&tmp, welcome("renamed in")).unwrap();
    std::fs::rename(&tmp, h.path("routes.yaml")).unwrap();
    wait_body(&h, "renamed in", Duration::from_secs(2));

    // A half-written file: the first half sits there past the debounce; the
    // gate judges it (invalid) or waits, and never serves it; the whole file
    // is then promoted.
    let full = welcome("written in two halves");
    let (a, b) = full.split_at(full.len() / 2);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(h.path("routes.yaml")).unwrap();
        f.write_all(a.as_bytes()).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(700));
        f.write_all(b.as_bytes()).unwrap();
    }
    wait_body(&h, "written in two halves", Duration::from_secs(5));

    // A burst of 100 writes gives one candidate, not 100.
    let seen = h.history().len();
    for i in 0..100 {
        std::fs::write(h.path("routes.yaml"), welcome(&format!("burst {i}"))).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    // Not a speed claim: a verdict waits for the debounce and a sandbox
    // replay of 1 000 requests, which a loaded 2-core machine has seen take
    // several seconds.
    wait_body(&h, "burst 99", Duration::from_secs(15));
    let new = h.history().split_off(seen);
    assert!(new.len() <= 2, "{} candidates for one burst", new.len());

    // Deleting a file is a change like any other, and a big one: one of the
    // three files gone is held by the blast-radius guard until a person
    // confirms it.
    std::fs::remove_file(h.path("features.yaml")).unwrap();
    let start = Instant::now();
    while h.gate.status().config_json()["held"]["reason"] != "held:blast_radius" {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "deletion not held: {}",
            h.gate.status().config_json()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!h.handle.load().features.is_empty(), "held but promoted");
    assert!(h.gate.confirm().is_some_and(|c| c.held.is_some()));
    let start = Instant::now();
    while !h.handle.load().features.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "deletion not promoted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let (ok, failed) = load.finish(&h);
    assert!(ok > 100);
    assert_eq!(failed, 0);
}

#[test]
fn configmap_data_symlink_swap_and_replaced_directory() {
    // A Kubernetes ConfigMap volume: files are symlinks into `..data`, which
    // is itself a symlink swapped atomically to a new timestamped directory.
    let h = Harness::start_with("", runner(), |dir| {
        let v1 = dir.join("..2026_01_01_00_00_00.1");
        std::fs::create_dir(&v1).unwrap();
        std::fs::rename(dir.join("routes.yaml"), v1.join("routes.yaml")).unwrap();
        std::os::unix::fs::symlink("..2026_01_01_00_00_00.1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/routes.yaml", dir.join("routes.yaml")).unwrap();
    });
    let load = h.load(2);
    let v2 = h.path("..2026_01_01_00_00_01.2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join("routes.yaml"), welcome("from the configmap")).unwrap();
    std::os::unix::fs::symlink("..2026_01_01_00_00_01.2", h.path("..data_tmp")).unwrap();
    std::fs::rename(h.path("..data_tmp"), h.path("..data")).unwrap();
    wait_body(&h, "from the configmap", Duration::from_secs(2));
    let (ok, failed) = load.finish(&h);
    assert!(ok > 50);
    assert_eq!(failed, 0);
}

/// Pids of `aegis-sandbox` processes whose parent is this test process and
/// whose command line names `needle` (tests share the process).
fn runner_children(needle: &Path) -> Vec<i32> {
    let needle = needle.to_string_lossy().into_owned();
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid …
        let Some((comm, rest)) = stat.split_once(") ") else {
            continue;
        };
        let ppid = rest.split_whitespace().nth(1).unwrap_or("");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if comm.ends_with("(aegis-sandbox")
            && ppid == me
            && String::from_utf8_lossy(&cmdline).contains(&needle)
        {
            out.push(pid);
        }
    }
    out
}

#[test]
fn runner_over_its_deadline_is_a_timeout() {
    // The huge route table needs ~6 s to compile; with memory to spare and a
    // 1 s deadline the parent kills the runner.
    let h = Harness::start("  sandbox: { memory: 4GiB, deadline: 1s }\n");
    let load = h.load(2);
    let active = h.active();
    let mut seen = h.history().len();
    drop_in(&h, &example("dangerous", "huge-route-table"));
    // On a busy host the runner may get less than half the deadline on a
    // CPU; the gate then calls it `could_not_judge:deadline` (about the
    // machine, not the content) and retries with backoff. That is the gate
    // working as designed, so such verdicts are allowed on the way (the
    // active config must hold through them); the first verdict about the
    // content must be the timeout. A CI run on a quiet machine gets it at
    // once; the five-run loop with other builds beside it did not.
    let end = std::time::Instant::now() + Duration::from_secs(120);
    let v = loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        let new = h.wait_verdicts(seen, left);
        seen += new.len();
        assert_eq!(h.active(), active);
        match new
            .iter()
            .find(|r| r.verdict.code() != "could_not_judge:deadline")
        {
            Some(r) => break r.verdict.clone(),
            None => continue,
        }
    };
    assert_eq!(v.code(), "timeout", "{v:?}");
    assert!(v.sentence.contains("deadline"), "{}", v.sentence);
    assert_eq!(h.active(), active);
    let (ok, failed) = load.finish(&h);
    assert!(ok > 50);
    assert_eq!(failed, 0);
}

#[test]
fn runner_under_a_small_memory_limit_is_oom() {
    let h = Harness::start("  sandbox: { memory: 200MiB }\n");
    let load = h.load(2);
    let active = h.active();
    let seen = h.history().len();
    drop_in(&h, &example("dangerous", "huge-route-table"));
    let new = h.wait_verdicts(seen, Duration::from_secs(30));
    let v = &new.last().unwrap().verdict;
    assert_eq!(v.code(), "oom", "{v:?}");
    assert!(v.sentence.contains("200 MiB"), "{}", v.sentence);
    assert_eq!(h.active(), active);
    let (ok, failed) = load.finish(&h);
    assert!(ok > 50);
    assert_eq!(failed, 0);
}

#[test]
fn runner_killed_by_a_signal_is_crashed() {
    // A runner that holds 5 s before its replay, so the test can signal it.
    // (SIGABRT: a SIGSEGV sent by kill() is caught by Rust's stack-overflow
    // handler and does not kill.)
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("aegis-sandbox-hold");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nAEGIS_SANDBOX_TEST_HOLD_MS=5000 exec '{}' \"$@\"\n",
            runner().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Startup is judged by the holding runner too: 5 s.
    let h = Harness::start_with("", wrapper, |_| {});
    let load = h.load(2);
    let active = h.active();
    let seen = h.history().len();
    std::fs::write(h.path("routes.yaml"), welcome("never served")).unwrap();
    let start = Instant::now();
    let pid = loop {
        if let Some(p) = runner_children(h._state.path()).first() {
            break *p;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no runner started"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGABRT,
    )
    .unwrap();
    let new = h.wait_verdicts(seen, Duration::from_secs(20));
    let v = &new.last().unwrap().verdict;
    assert_eq!(v.code(), "crashed", "{v:?}");
    assert!(v.sentence.contains("SIGABRT"), "{}", v.sentence);
    assert_eq!(h.active(), active);
    assert_ne!(h.get("/").1.trim(), "never served");
    let (ok, failed) = load.finish(&h);
    assert!(ok > 50);
    assert_eq!(failed, 0);
}
