//! Config files stay inside the config directory (issue 13, item 8), with a
//! real `aegis run` serving traffic: a config file symlinked to a secret
//! outside the directory is refused without a byte of the secret reaching
//! the admin API or the state directory, and a `tls` entry whose path climbs
//! out to a perfectly valid certificate is rejected by name. In both cases
//! the version already active keeps serving, with no failed request.

mod util;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use util::{Backend, Proxy, admin_get, eventually};

/// Recognisable, and shaped like the first line of /etc/shadow.
const SECRET: &str = "root:$6$aegis-containment-canary-7f3a9c:19000:0:99999:7:::";
const MARKER: &str = "aegis-containment-canary-7f3a9c";

const SETTINGS: &str = "gate: { debounce: 50ms, canary_seconds: 0, bake_seconds: 0 }\n";

fn routes_to(backend: &Backend, body: Option<&str>) -> String {
    let mut s = format!(
        "upstreams:\n  - name: app\n    endpoints: [\"{}\"]\nroutes:\n  - name: site\n    match: {{ path_prefix: / }}\n    upstream: app\n",
        backend.addr
    );
    if let Some(b) = body {
        s.push_str(&format!(
            "  - name: extra\n    match: {{ path: /extra }}\n    respond: {{ status: 200, body: \"{b}\" }}\n"
        ));
    }
    s
}

/// Clients sending `GET /` until stopped; a request counts as served when
/// the old version's upstream answered it.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(p: &Proxy, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let url = p.url("/");
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok, failed, url) =
                    (stop.clone(), ok.clone(), failed.clone(), url.clone());
                tokio::spawn(async move {
                    let client = util::client();
                    while !stop.load(Ordering::Relaxed) {
                        let req = http::Request::get(&url).body(util::full("")).unwrap();
                        let served = match client.request(req).await {
                            Ok(r) => {
                                r.status() == 200
                                    && r.headers().get("x-backend").is_some_and(|v| v == "old")
                            }
                            Err(_) => false,
                        };
                        let n = if served { &ok } else { &failed };
                        n.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

async fn text(p: &Proxy, path: &str) -> String {
    admin_get(p, path).await.text()
}

async fn verdict_count(p: &Proxy) -> usize {
    admin_get(p, "/admin/verdicts")
        .await
        .json()
        .as_array()
        .map_or(0, Vec::len)
}

async fn version(p: &Proxy) -> String {
    admin_get(p, "/admin/config").await.json()["version"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Every regular file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                todo.push(e.path());
            } else if meta.is_file() {
                let bytes = std::fs::read(e.path()).unwrap_or_default();
                if String::from_utf8_lossy(&bytes).contains(needle) {
                    hits.push(e.path().display().to_string());
                }
            }
        }
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_symlinked_outside_is_refused_and_leaks_nothing() {
    let old = Backend::start("old").await;
    let p = Proxy::start_with(SETTINGS, &[("routes.yaml", &routes_to(&old, None))]);
    let v0 = version(&p).await;
    let load = Load::start(&p, 4);

    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("shadow");
    std::fs::write(&secret, format!("{SECRET}\ndaemon:*:19000:0:99999:7:::\n")).unwrap();
    std::os::unix::fs::symlink(&secret, p.path().join("leak.yaml")).unwrap();

    // The refusal names the file and why: in a verdict, or as the gate's
    // could-not-judge state, depending on how the gate files a refused read.
    let refused = eventually(Duration::from_secs(15), || async {
        let seen = text(&p, "/admin/verdicts").await + &text(&p, "/admin/config").await;
        seen.contains("leak.yaml") && seen.contains("outside the config directory")
    })
    .await;
    let verdicts = text(&p, "/admin/verdicts").await;
    let config = text(&p, "/admin/config").await;
    assert!(refused, "no refusal of leak.yaml:\n{verdicts}\n{config}");
    // Looks after the first one do not read it either.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let verdicts = text(&p, "/admin/verdicts").await;
    let config = text(&p, "/admin/config").await;
    assert!(
        !verdicts.contains(MARKER),
        "the secret is in /admin/verdicts:\n{verdicts}"
    );
    assert!(
        !config.contains(MARKER),
        "the secret is in /admin/config:\n{config}"
    );
    let copies = files_containing(p.state.path(), MARKER);
    assert!(
        copies.is_empty(),
        "the secret is in the state directory: {copies:?}"
    );
    assert_eq!(
        version(&p).await,
        v0,
        "a version with leak.yaml was promoted"
    );

    // `aegis check` reads the directory the same way: a located error, no content.
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_aegis"))
        .args(["check", "--static-only", "--config-dir"])
        .arg(p.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{said}");
    let located = format!("{}: resolves to ", p.path().join("leak.yaml").display());
    assert!(said.contains(&located), "{said}");
    assert!(said.contains("outside the config directory"), "{said}");
    assert!(!said.contains(MARKER), "{said}");

    // The gate is not stuck on it: without the link, a change promotes.
    std::fs::remove_file(p.path().join("leak.yaml")).unwrap();
    p.write("routes.yaml", &routes_to(&old, Some("after the leak")));
    let promoted = eventually(Duration::from_secs(20), || async {
        version(&p).await != v0
    })
    .await;
    assert!(
        promoted,
        "no promotion after the link went: {}",
        text(&p, "/admin/config").await
    );

    let (ok, failed) = load.finish().await;
    assert!(ok > 50, "{ok} served");
    assert_eq!(failed, 0, "{failed} requests failed ({ok} served)");
    assert!(files_containing(p.state.path(), MARKER).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_path_climbing_out_is_rejected_by_name() {
    let old = Backend::start("old").await;
    let p = Proxy::start_with(SETTINGS, &[("routes.yaml", &routes_to(&old, None))]);
    let v0 = version(&p).await;
    let before = verdict_count(&p).await;
    let load = Load::start(&p, 4);

    // A valid certificate and key outside the config directory, named by a
    // path that climbs out of it (and out of the gate's copy of the set,
    // wherever that is kept) and down to them.
    let outside = tempfile::tempdir().unwrap();
    util::make_cert(outside.path(), "outside", &["a.test"]);
    let up = |f: &str| {
        let abs = outside.path().join(f).display().to_string();
        format!("{}{}", "../".repeat(40), abs.trim_start_matches('/'))
    };
    let cert = up("outside.pem");
    p.write(
        "tls.yaml",
        &format!(
            "tls:\n  - server_names: [a.test]\n    certificate: \"{cert}\"\n    key: \"{}\"\n",
            up("outside.key")
        ),
    );

    let judged = eventually(Duration::from_secs(20), || async {
        verdict_count(&p).await > before
    })
    .await;
    let verdicts = admin_get(&p, "/admin/verdicts").await.json();
    assert!(judged, "tls.yaml was not judged: {verdicts}");
    // Newest first.
    let rec = verdicts[0].clone();
    assert_eq!(rec["verdict"]["accepted"], false, "{rec}");
    let sentence = rec["verdict"]["sentence"].as_str().unwrap_or_default();
    let expected =
        format!("tls.yaml:2:5: tls[0].certificate: `{cert}` leaves the config directory");
    assert!(sentence.contains(&expected), "{sentence}");
    assert!(
        sentence.contains("tls_dirs"),
        "the way out is not named: {sentence}"
    );
    assert!(!sentence.contains("BEGIN"), "{sentence}");

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(version(&p).await, v0, "the candidate was promoted");
    let (ok, failed) = load.finish().await;
    assert!(ok > 50, "{ok} served");
    assert_eq!(failed, 0, "{failed} requests failed ({ok} served)");
}
