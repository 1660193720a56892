//! `/metrics` as a scraper sees it, from a real supervisor with two worker
//! processes and from a single process: every Aegis family there from the
//! start with HELP text, worker counters fresh at scrape time (not as of the
//! last health probe), each family in one group, and `promtool check
//! metrics` satisfied.

mod util;

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use util::Proxy;
use util::load::get_ok;

const ROUTES: &str = util::HELLO_ROUTES;

/// `GET /metrics` on the admin listener: the body.
fn scrape(p: &Proxy) -> String {
    let raw = util::raw(
        p.admin.unwrap(),
        b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    let (head, body) = raw.split_once("\r\n\r\n").expect("no HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// One sample: name, labels, value.
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once("=\"").unwrap();
                    (k.to_string(), v.trim_end_matches('"').to_string())
                })
                .collect();
            Sample {
                name: name.to_string(),
                labels,
                value: value.parse().unwrap(),
            }
        })
        .collect()
}

/// The sum of `name`'s samples whose labels include `with`.
fn sum(text: &str, name: &str, with: &[(&str, &str)]) -> f64 {
    samples(text)
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
        })
        .map(|s| s.value)
        .sum()
}

fn has(text: &str, name: &str, with: &[(&str, &str)]) -> bool {
    samples(text).iter().any(|s| {
        s.name == name
            && with
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
    })
}

/// Each family declared once (HELP and TYPE), its samples right after its
/// declaration and nowhere else: what the exposition format wants and what
/// `promtool` does not check.
fn assert_grouped(text: &str) {
    let mut kinds: HashMap<String, String> = HashMap::new();
    let mut helped: HashSet<String> = HashSet::new();
    let mut closed: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap().to_string();
            assert!(
                helped.insert(name.clone()),
                "second HELP for {name}:\n{text}"
            );
            if current.as_ref() != Some(&name) {
                if let Some(c) = current.take() {
                    closed.insert(c);
                }
                assert!(!closed.contains(&name), "{name} declared again:\n{text}");
                current = Some(name);
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                kinds.insert(name.to_string(), kind.to_string()).is_none(),
                "second TYPE for {name}:\n{text}"
            );
            if current.as_deref() != Some(name) {
                if let Some(c) = current.take() {
                    closed.insert(c);
                }
                assert!(!closed.contains(name), "{name} declared again:\n{text}");
                current = Some(name.to_string());
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = current.clone().unwrap_or_default();
            let ok = name == family
                || ["_bucket", "_sum", "_count"].iter().any(|s| {
                    name.strip_suffix(s) == Some(family.as_str())
                        && kinds
                            .get(&family)
                            .is_some_and(|k| k == "histogram" || k == "summary")
                });
            assert!(
                ok,
                "sample {line:?} outside its family (in {family:?}):\n{text}"
            );
        }
    }
    for name in kinds.keys() {
        assert!(helped.contains(name), "{name} has no HELP:\n{text}");
    }
}

/// `promtool check metrics` on `text`: fails the test on any problem, and
/// when promtool is not installed (never a silent pass).
fn promtool(text: &str) -> String {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => panic!(
            "promtool is not installed ({e}): install it with `apt-get install -y prometheus` \
             (or run .ci/install-deps)"
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {} {said}\non:\n{text}",
        out.status
    );
    said
}

/// The gate's families, there before any change of the config directory.
fn assert_gate_families(text: &str) {
    // The start-up judgement of the config directory is counted.
    assert_eq!(
        sum(text, "aegis_config_promotions_total", &[]),
        1.0,
        "{text}"
    );
    assert_eq!(
        sum(text, "aegis_config_candidates_total", &[]),
        1.0,
        "{text}"
    );
    for (name, reason) in [
        ("aegis_config_rejections_total", "invalid"),
        ("aegis_config_rejections_total", "regression:status"),
        ("aegis_config_rollbacks_total", "canary_5xx"),
        ("aegis_config_held_total", "held:blast_radius"),
    ] {
        assert!(
            has(text, name, &[("reason", reason)]),
            "{name}{{reason={reason}}} missing:\n{text}"
        );
        assert_eq!(sum(text, name, &[]), 0.0, "{name}");
    }
    for name in [
        "aegis_config_canary_state",
        "aegis_config_freezes_total",
        "aegis_gate_duration_seconds_count",
        "aegis_features_module_enabled",
    ] {
        assert!(has(text, name, &[]), "{name} missing:\n{text}");
    }
}

#[test]
fn supervised_metrics_are_fresh_grouped_and_valid() {
    // A probe interval no scrape in this test waits for: what the workers
    // served can only come from asking them at scrape time.
    let p = Proxy::start("workers: 2\nhealth: { interval: 60s }\n", ROUTES);

    let before = scrape(&p);
    assert_gate_families(&before);
    // Present, not asserted at 2: a start-up probe that timed out on a
    // loaded machine may have set it lower, until the next probe.
    assert!(has(&before, "aegis_workers_healthy", &[]), "{before}");
    assert!(
        has(
            &before,
            "aegis_worker_restarts_total",
            &[("reason", "hung")]
        ),
        "{before}"
    );
    for w in ["0", "1"] {
        // The data plane's families from each worker before any request.
        for name in [
            "aegis_request_duration_seconds_count",
            "aegis_feature_errors_total",
            "aegis_upstream_connections_total",
            "aegis_config_info",
        ] {
            assert!(
                has(&before, name, &[("worker", w)]),
                "{name} of worker {w}:\n{before}"
            );
        }
    }
    assert_eq!(sum(&before, "aegis_requests_total", &[]), 0.0);
    // The supervisor serves no traffic: no data-plane family of its own.
    assert!(
        !samples(&before)
            .iter()
            .any(|s| s.name.starts_with("aegis_request_duration")
                && !s.labels.contains_key("worker")),
        "{before}"
    );
    assert_grouped(&before);
    promtool(&before);

    let n = 40;
    for _ in 0..n {
        assert!(get_ok(p.http, "/"));
    }
    let after = scrape(&p);
    assert_eq!(
        sum(
            &after,
            "aegis_requests_total",
            &[("route", "hello"), ("status", "200")]
        ),
        f64::from(n),
        "{after}"
    );
    assert_eq!(
        sum(&after, "aegis_request_duration_seconds_count", &[]),
        f64::from(n),
        "{after}"
    );
    assert_grouped(&after);
    let said = promtool(&after);
    eprintln!("promtool check metrics (supervised): ok {said}");
}

#[test]
fn single_process_metrics_are_complete_and_valid() {
    let p = Proxy::start("", ROUTES);
    let before = scrape(&p);
    assert_gate_families(&before);
    for name in [
        "aegis_request_duration_seconds_count",
        "aegis_feature_errors_total",
        "aegis_tls_handshake_failures_total",
        "aegis_access_log_dropped_total",
        "aegis_config_info",
    ] {
        assert!(has(&before, name, &[]), "{name} missing:\n{before}");
    }
    assert!(!before.contains("worker=\""), "{before}");
    assert_grouped(&before);
    promtool(&before);

    let n = 25;
    for _ in 0..n {
        assert!(get_ok(p.http, "/"));
    }
    let after = scrape(&p);
    assert_eq!(
        sum(&after, "aegis_requests_total", &[("route", "hello")]),
        f64::from(n),
        "{after}"
    );
    assert_grouped(&after);
    promtool(&after);
}

/// The families a fleet compares across pods carry the config version:
/// per-route counters by status class and the duration histogram, each
/// version's own after a promotion; `aegis_config_info{version, sha256}`;
/// a verdict counter by version, result and reason.
#[test]
fn versioned_families_follow_promotion() {
    let two_routes = |body: &str| {
        format!(
            "routes:\n  - name: fail\n    match: {{ path_prefix: /fail }}\n    respond: {{ status: 503, body: \"no\\n\" }}\n  - name: hello\n    match: {{ path_prefix: / }}\n    respond: {{ status: 200, body: \"{body}\\n\" }}\n"
        )
    };
    let version = |p: &Proxy| {
        util::load::admin(p, "GET", "/admin/config")["version"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let p = Proxy::start("", &two_routes("one"));
    let v1 = version(&p);
    for _ in 0..10 {
        assert!(get_ok(p.http, "/"));
    }
    for _ in 0..4 {
        assert!(!get_ok(p.http, "/fail"));
    }
    p.write("routes.yaml", &two_routes("two"));
    let start = std::time::Instant::now();
    let v2 = loop {
        let v = version(&p);
        if v != v1 {
            break v;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "no promotion");
        std::thread::sleep(Duration::from_millis(50));
    };
    for _ in 0..6 {
        assert!(get_ok(p.http, "/"));
    }
    let text = scrape(&p);
    let count = |version: &str, route: &str, class: &str| {
        sum(
            &text,
            "aegis_route_requests_total",
            &[("version", version), ("route", route), ("class", class)],
        )
    };
    assert_eq!(count(&v1, "hello", "2xx"), 10.0, "{text}");
    assert_eq!(count(&v1, "fail", "5xx"), 4.0, "{text}");
    assert_eq!(count(&v2, "hello", "2xx"), 6.0, "{text}");
    // Registered at activation: "zero" is told from "not this version".
    assert!(
        has(
            &text,
            "aegis_route_requests_total",
            &[("version", &v2), ("route", "fail"), ("class", "5xx")]
        ),
        "{text}"
    );
    assert_eq!(count(&v2, "fail", "5xx"), 0.0);
    assert_eq!(
        sum(
            &text,
            "aegis_request_duration_seconds_count",
            &[("version", &v1)]
        ),
        14.0,
        "{text}"
    );
    assert_eq!(
        sum(
            &text,
            "aegis_request_duration_seconds_count",
            &[("version", &v2)]
        ),
        6.0,
        "{text}"
    );
    let info: Vec<_> = samples(&text)
        .into_iter()
        .filter(|s| s.name == "aegis_config_info")
        .collect();
    let of = |v: &str| {
        info.iter()
            .find(|s| s.labels.get("version").map(String::as_str) == Some(v))
    };
    let now = of(&v2).expect("no aegis_config_info for the new version");
    assert_eq!(now.value, 1.0);
    let sha = now.labels.get("sha256").unwrap();
    assert!(sha.len() == 64 && sha.starts_with(&v2), "{sha}");
    assert_eq!(of(&v1).expect("the old version").value, 0.0);
    assert_eq!(
        sum(
            &text,
            "aegis_config_verdicts_total",
            &[
                ("version", &v2),
                ("result", "accepted"),
                ("reason", "accept")
            ]
        ),
        1.0,
        "{text}"
    );

    // A rejected candidate is counted with its reason.
    p.write(
        "routes.yaml",
        "routes:\n  - name: broken\n    match: { path_prefix: / }\n",
    );
    let start = std::time::Instant::now();
    let text = loop {
        let text = scrape(&p);
        if has(
            &text,
            "aegis_config_verdicts_total",
            &[("result", "rejected"), ("reason", "invalid")],
        ) {
            break text;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        sum(
            &text,
            "aegis_config_verdicts_total",
            &[("result", "rejected"), ("reason", "invalid")]
        ),
        1.0,
        "{text}"
    );
    assert_grouped(&text);
    promtool(&text);
}
