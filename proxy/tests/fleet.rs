//! What a fleet manager reads from each node, against real `aegis run`
//! processes: `GET /ready` through the gate's states (ready after start,
//! not ready while a candidate is judged or on its canary, rejected content
//! ready by default but not with `require=accepted`, ready again when a good
//! file lands), and the Kubernetes manifests rendered and validated offline
//! (`deploy/kubernetes/validate.sh`).

mod util;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use util::Proxy;

fn routes(body: &str) -> String {
    format!(
        "routes:\n  - name: hello\n    match: {{ path_prefix: / }}\n    respond: {{ status: 200, body: \"{body}\\n\" }}\n"
    )
}

/// A routes file the gate rejects (`invalid`: the route has no action).
const INVALID: &str = "routes:\n  - name: broken\n    match: { path_prefix: / }\n";

/// `GET <path>` on the admin listener: status and body.
fn admin(p: &Proxy, path: &str, token: Option<&str>) -> (u16, String) {
    util::admin_status(p, path, token)
}

/// `GET /ready[?query]` on loopback without a token: status and JSON.
fn ready(p: &Proxy, query: &str) -> (u16, serde_json::Value) {
    let (status, body) = admin(p, &format!("/ready{query}"), None);
    // Before the gate registers (just after the listener line) the answer
    // is 503 `not ready: no gate`, as text.
    let v = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    (status, v)
}

/// Polls `/ready{query}` until it answers `status` in `state`; the JSON.
fn wait_ready(
    p: &Proxy,
    query: &str,
    status: u16,
    state: &str,
    limit: Duration,
) -> serde_json::Value {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < limit {
        let (s, v) = ready(p, query);
        if s == status && v["state"] == state {
            return v;
        }
        last = Some((s, v));
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("/ready{query} never answered {status} {state} in {limit:?}; last: {last:?}");
}

/// A sandbox runner that holds 4 s before its replay when the candidate's
/// files say `slow-sandbox` (a comment), and runs as usual otherwise: the
/// start-up judgement stays fast and one candidate is slow on purpose.
fn slow_runner(dir: &Path) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let real = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("aegis-sandbox");
    assert!(real.is_file(), "{} is not built", real.display());
    let wrapper = dir.join("aegis-sandbox-slow");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncand=\nprev=\nfor a in \"$@\"; do [ \"$prev\" = --candidate ] && cand=\"$a\"; prev=\"$a\"; done\n\
             if grep -qs slow-sandbox \"$cand\"/*.yaml; then export AEGIS_SANDBOX_TEST_HOLD_MS=4000; fi\n\
             exec '{}' \"$@\"\n",
            real.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
}

/// Starts `aegis run` on `aegis_yaml` + `routes_yaml` with the slow runner.
fn start(aegis_yaml: &str, routes_yaml: &str, tools: &Path) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let mut settings =
        String::from("listen: [\"127.0.0.1:0\"]\nadmin: \"127.0.0.1:0\"\naccess_log: \"off\"\n");
    if !aegis_yaml.contains("workers:") {
        settings.push_str("workers: 0\n");
    }
    settings.push_str(aegis_yaml);
    std::fs::write(dir.path().join("aegis.yaml"), settings).unwrap();
    std::fs::write(dir.path().join("routes.yaml"), routes_yaml).unwrap();
    let runner = slow_runner(tools);
    Proxy::try_spawn_in_env(
        dir,
        tempfile::tempdir().unwrap(),
        &[("AEGIS_SANDBOX", runner.as_os_str())],
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn ready_follows_judging_rejection_and_recovery() {
    let tools = tempfile::tempdir().unwrap();
    let p = start("", &routes("one"), tools.path());
    let first = wait_ready(&p, "", 200, "serving", Duration::from_secs(10));
    let v1 = first["serving"].as_str().unwrap().to_string();
    assert_eq!(first["on_disk"], v1.as_str());
    assert_eq!(first["ready"], true);

    // A slow candidate: not ready for as long as it is in the sandbox.
    p.write("routes.yaml", &format!("# slow-sandbox\n{}", routes("two")));
    let judging = wait_ready(&p, "", 503, "judging", Duration::from_secs(5));
    assert_eq!(judging["serving"], v1.as_str(), "{judging}");
    let two = wait_ready(&p, "", 200, "serving", Duration::from_secs(20));
    let v2 = two["serving"].as_str().unwrap().to_string();
    assert_ne!(v1, v2);
    assert_eq!(two["on_disk"], v2.as_str());

    // Rejected content: the node keeps v2 and is ready, unless acceptance
    // is required.
    p.write("routes.yaml", INVALID);
    let rejected = wait_ready(&p, "", 200, "rejected", Duration::from_secs(10));
    assert_eq!(rejected["serving"], v2.as_str(), "{rejected}");
    assert_eq!(rejected["on_disk_verdict"], "invalid", "{rejected}");
    let (status, strict) = ready(&p, "?require=accepted");
    assert_eq!(status, 503, "{strict}");
    assert_eq!(strict["state"], "rejected");
    assert_eq!(strict["require_accepted"], true);

    // A good file lands: ready again, even when acceptance is required.
    p.write("routes.yaml", &routes("three"));
    let three = wait_ready(
        &p,
        "?require=accepted",
        200,
        "serving",
        Duration::from_secs(20),
    );
    assert_ne!(three["serving"], v2.as_str());
}

#[test]
fn canary_keeps_the_node_not_ready_until_it_passes() {
    let tools = tempfile::tempdir().unwrap();
    let p = start(
        "workers: 2\ngate: { canary_seconds: 3, bake_seconds: 1 }\n",
        &routes("one"),
        tools.path(),
    );
    let first = wait_ready(&p, "", 200, "serving", Duration::from_secs(15));
    p.write("routes.yaml", &routes("two"));
    let canary = wait_ready(&p, "", 503, "canary", Duration::from_secs(10));
    assert_ne!(canary["candidate"], first["serving"], "{canary}");
    let candidate = canary["candidate"].as_str().unwrap().to_string();
    let done = wait_ready(&p, "", 200, "serving", Duration::from_secs(20));
    assert_eq!(done["serving"], candidate.as_str(), "{done}");
}

#[test]
fn require_accepted_setting_and_token() {
    let tools = tempfile::tempdir().unwrap();
    let token = tools.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let p = start(
        &format!(
            "gate: {{ require_accepted: true }}\nadmin_token_file: \"{}\"\n",
            token.display()
        ),
        &routes("one"),
        tools.path(),
    );
    // Without the token: the status and one line, nothing else; /healthz
    // still wants it.
    let start = Instant::now();
    loop {
        let (status, body) = admin(&p, "/ready", None);
        if status == 200 {
            assert_eq!(body, "ready: serving\n");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{status} {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(admin(&p, "/healthz", None).0, 401);

    p.write("routes.yaml", INVALID);
    let start = Instant::now();
    loop {
        let (status, body) = admin(&p, "/ready", None);
        if body == "not ready: rejected\n" {
            assert_eq!(status, 503);
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{status} {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The setting is the default; the query overrides it.
    let (status, body) = admin(&p, "/ready?require=any", Some("s3cret"));
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["state"], "rejected");
    assert_eq!(v["require_accepted"], false);
}

/// The manifests under deploy/kubernetes/ render with `kubectl kustomize`
/// and validate against the Kubernetes and Flagger schemas, offline. Fails
/// (never skips) when the tools are missing: `.ci/install-deps` installs
/// them.
#[test]
fn kubernetes_manifests_render_and_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = std::process::Command::new("bash")
        .arg(root.join("deploy/kubernetes/validate.sh"))
        .output()
        .expect("bash");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "validate.sh failed:\n{said}");
    assert!(said.contains("valid: staged"), "{said}");
    assert!(said.contains("valid: local-gate"), "{said}");
    eprintln!("{said}");
}
