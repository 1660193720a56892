//! The runner's half of the upstream check: with `--upstream-check N` it
//! leaves in its report the upstream requests both configs would send
//! (rewritten head, pool, endpoint, timeouts), only for pairs that differ,
//! only for safe requests to pools and endpoints the baseline has, and at
//! most N distinct requests. It sends nothing itself (it has no network):
//! `proxy/tests/gate_upstream.rs` drives the gate that does.

use std::path::Path;
use std::process::Command;

const BASE: &str = "upstreams:
  - name: app
    endpoints: [\"127.0.0.1:9\"]
  - name: new
    endpoints: [\"127.0.0.1:9\"]
routes:
  - name: app
    match: { path_prefix: /app/ }
    upstream: app
  - name: local
    match: { path_prefix: /local/ }
    respond: { status: 200, body: hi }
";

fn sample(dir: &Path) -> std::path::PathBuf {
    let mut t = String::new();
    for i in 0..20 {
        t.push_str(&format!(
            "{{\"method\":\"GET\",\"host\":\"shop.test\",\"path\":\"/app/{i}\",\"headers\":[],\"client_ip\":\"198.51.100.1\",\"status\":200,\"route\":\"app\"}}\n"
        ));
    }
    // Not safe to send, or nothing to send: a POST, a GET with a body, a
    // redacted path, a local answer, and a duplicate.
    t.push_str("{\"method\":\"POST\",\"host\":\"shop.test\",\"path\":\"/app/p\",\"headers\":[],\"client_ip\":\"198.51.100.1\",\"status\":200,\"route\":\"app\"}\n");
    t.push_str("{\"method\":\"GET\",\"host\":\"shop.test\",\"path\":\"/app/b\",\"headers\":[],\"client_ip\":\"198.51.100.1\",\"body_len\":10,\"status\":200,\"route\":\"app\"}\n");
    t.push_str("{\"method\":\"GET\",\"host\":\"shop.test\",\"path\":\"/app/reset-password/aaaaaaaaaaaa\",\"headers\":[],\"client_ip\":\"198.51.100.1\",\"redacted\":[\"path:2\"],\"status\":200,\"route\":\"app\"}\n");
    t.push_str("{\"method\":\"GET\",\"host\":\"shop.test\",\"path\":\"/local/x\",\"headers\":[],\"client_ip\":\"198.51.100.1\",\"status\":200,\"route\":\"local\"}\n");
    t.push_str("{\"method\":\"GET\",\"host\":\"shop.test\",\"path\":\"/app/0\",\"headers\":[],\"client_ip\":\"198.51.100.1\",\"status\":200,\"route\":\"app\"}\n");
    let p = dir.join("sample.jsonl");
    std::fs::write(&p, t).unwrap();
    p
}

fn plan(candidate_routes: &str, max: u64) -> serde_json::Value {
    let base = tempfile::tempdir().unwrap();
    let cand = tempfile::tempdir().unwrap();
    std::fs::write(base.path().join("routes.yaml"), BASE).unwrap();
    std::fs::write(cand.path().join("routes.yaml"), candidate_routes).unwrap();
    let sample = sample(base.path());
    let out = Command::new(env!("CARGO_BIN_EXE_aegis-sandbox"))
        .args(["--candidate", cand.path().to_str().unwrap()])
        .args(["--baseline", base.path().to_str().unwrap()])
        .args(["--sample", sample.to_str().unwrap()])
        .args(["--min-recorded", "0", "--no-probe"])
        .args(["--upstream-check", &max.to_string()])
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(
        r["outcome"],
        "replayed",
        "{r}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    r["upstream_plan"].clone()
}

#[test]
fn the_plan_holds_the_rewritten_requests_of_both_sides() {
    let cand = BASE.replace(
        "    upstream: app\n",
        "    upstream: app\n    host_rewrite: app.internal\n    strip_prefix: /app\n    timeout: 1ms\n",
    );
    let p = plan(&cand, 50);
    // 20 distinct GETs qualify (the duplicate once); the POST, the body,
    // the redacted path and the local answer do not.
    assert_eq!(p["eligible"], 21, "{p}");
    let pairs = p["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 20, "{p}");
    let first = &pairs[0];
    assert_eq!(first["route"], "app");
    assert_eq!(first["baseline"]["target"], "/app/0");
    assert_eq!(first["candidate"]["target"], "/0");
    let host = |side: &serde_json::Value| {
        side["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0] == "host")
            .map(|h| h[1].as_str().unwrap().to_string())
    };
    assert_eq!(host(&first["baseline"]).as_deref(), Some("shop.test"));
    assert_eq!(host(&first["candidate"]).as_deref(), Some("app.internal"));
    assert_eq!(first["candidate"]["response_timeout_ms"], 1);
    assert_eq!(first["baseline"]["response_timeout_ms"], 60_000);
    assert_eq!(first["candidate"]["endpoint"], "127.0.0.1:9");
}

#[test]
fn the_plan_is_capped_and_skips_what_does_not_change() {
    let cand = BASE.replace(
        "    upstream: app\n",
        "    upstream: app\n    host_rewrite: app.internal\n",
    );
    let p = plan(&cand, 7);
    // 7 requests: three whole pairs (a fourth would need 8).
    assert_eq!(p["pairs"].as_array().unwrap().len(), 3, "{p}");
    assert_eq!(p["over_cap"], 17, "{p}");
    // The same config: nothing to send.
    let p = plan(BASE, 50);
    assert_eq!(p["pairs"].as_array().unwrap().len(), 0, "{p}");
    assert_eq!(p["identical"], 21, "{p}");
}

#[test]
fn the_plan_never_names_an_endpoint_the_baseline_does_not_use() {
    let cand = BASE.replace(
        "  - name: app\n    endpoints: [\"127.0.0.1:9\"]",
        "  - name: app\n    endpoints: [\"192.0.2.7:80\"]",
    );
    let p = plan(&cand, 50);
    assert_eq!(p["pairs"].as_array().unwrap().len(), 0, "{p}");
}

#[test]
fn a_changed_health_check_path_is_planned_as_its_own_pair() {
    let with_check = |path: &str| {
        BASE.replace(
            "  - name: app\n    endpoints: [\"127.0.0.1:9\"]\n",
            &format!(
                "  - name: app\n    endpoints: [\"127.0.0.1:9\"]\n    health_check: {{ path: {path} }}\n"
            ),
        )
    };
    // The baseline checks /healthz, the candidate a typo of it; nothing
    // else differs, so the health check is the only pair.
    let base = tempfile::tempdir().unwrap();
    let cand = tempfile::tempdir().unwrap();
    std::fs::write(base.path().join("routes.yaml"), with_check("/healthz")).unwrap();
    std::fs::write(cand.path().join("routes.yaml"), with_check("/helthz")).unwrap();
    let sample = sample(base.path());
    let out = Command::new(env!("CARGO_BIN_EXE_aegis-sandbox"))
        .args(["--candidate", cand.path().to_str().unwrap()])
        .args(["--baseline", base.path().to_str().unwrap()])
        .args(["--sample", sample.to_str().unwrap()])
        .args([
            "--min-recorded",
            "0",
            "--no-probe",
            "--upstream-check",
            "50",
        ])
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let pairs = r["upstream_plan"]["pairs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(pairs.len(), 1, "{r}");
    assert_eq!(pairs[0]["route"], "health:app");
    assert_eq!(pairs[0]["baseline"]["target"], "/healthz");
    assert_eq!(pairs[0]["candidate"]["target"], "/helthz");
}
