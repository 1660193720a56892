//! The gate's upstream check end to end (issue 14, item 1): a real `aegis
//! run`, real origins that answer 404 for a Host or path they do not serve
//! and take 50 ms on `/slow/`, a seed traffic sample, a candidate dropped in
//! the watched directory, and the verdict read from `/admin/verdicts`.
//!
//! Every bad candidate here replays clean in the sandbox (the stub connector
//! answers with the recorded status whatever the upstream would receive):
//! only the requests the gate sends to the real origins see them. The last
//! test shows that blind spot with the check turned off.

mod util;

use std::time::Duration;

use util::Proxy;
use util::load::{admin, wait_until};
use util::strict::StrictOrigin;

const HOST: &str = "shop.test";

/// `n` distinct recorded GETs to each of `/shop/`, `/slow/` and `/other/`.
fn sample(n: usize) -> String {
    let mut out = String::new();
    for (prefix, route) in [
        ("/shop/item", "shop"),
        ("/slow/item", "slow"),
        ("/other/item", "other"),
    ] {
        for i in 0..n {
            out.push_str(&format!(
                "{{\"method\":\"GET\",\"host\":\"{HOST}\",\"path\":\"{prefix}/{i}\",\"headers\":[[\"accept\",\"*/*\"]],\"client_ip\":\"198.51.100.{}\",\"status\":200,\"route\":\"{route}\"}}\n",
                i % 200 + 1
            ));
        }
    }
    out
}

/// The active routes: `/shop/` and `/slow/` to pool `shop`, `/other/` to
/// pool `other`; `edit` is added to the `shop` route, `slow_edit` to `slow`.
fn routes(shop: &StrictOrigin, other: &StrictOrigin, edit: &str, slow_edit: &str) -> String {
    format!(
        "upstreams:
  - name: shop
    endpoints: [\"{}\"]
  - name: other
    endpoints: [\"{}\"]
routes:
  - name: slow
    match: {{ path_prefix: /slow/ }}
    upstream: shop
{slow_edit}  - name: other
    match: {{ path_prefix: /other/ }}
    upstream: other
  - name: shop
    match: {{ path_prefix: /shop/ }}
    upstream: shop
{edit}",
        shop.addr, other.addr
    )
}

struct Site {
    _rt: tokio::runtime::Runtime,
    shop: StrictOrigin,
    other: StrictOrigin,
    proxy: Proxy,
}

fn start(settings: &str, n: usize) -> Site {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let shop = rt.block_on(StrictOrigin::start(HOST, &["/shop/", "/slow/"]));
    let other = rt.block_on(StrictOrigin::start(HOST, &["/other/"]));
    let proxy = Proxy::start_with(
        &format!("gate: {{ debounce: 50ms, canary_seconds: 0, bake_seconds: 0{settings} }}\n"),
        &[
            ("routes.yaml", &routes(&shop, &other, "", "")),
            ("sample.jsonl", &sample(n)),
        ],
    );
    Site {
        _rt: rt,
        shop,
        other,
        proxy,
    }
}

fn newest(p: &Proxy) -> serde_json::Value {
    admin(p, "GET", "/admin/verdicts")
        .as_array()
        .and_then(|v| v.first().cloned())
        .unwrap_or(serde_json::Value::Null)
}

/// Writes the candidate routes and waits for its verdict.
fn judge(site: &Site, routes_yaml: &str) -> serde_json::Value {
    let before = newest(&site.proxy)["id"].clone();
    site.proxy.write("routes.yaml", routes_yaml);
    wait_until(
        "a verdict on the candidate",
        Duration::from_secs(30),
        || newest(&site.proxy)["id"] != before,
    );
    let v = newest(&site.proxy);
    eprintln!("verdict: {v}");
    v
}

/// The kept report's upstream check of a verdict.
fn check_of(site: &Site, verdict: &serde_json::Value) -> serde_json::Value {
    let id = verdict["id"].as_str().unwrap();
    let path = site
        .proxy
        .state
        .path()
        .join("versions")
        .join(id)
        .join("report.json");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    report["upstream_check"].clone()
}

fn reason(v: &serde_json::Value) -> &str {
    v["verdict"]["reason"].as_str().unwrap_or("accept")
}

fn sentence(v: &serde_json::Value) -> &str {
    v["verdict"]["sentence"].as_str().unwrap_or("")
}

#[test]
fn a_host_the_upstream_refuses_is_rejected() {
    let site = start("", 5);
    let v = judge(
        &site,
        &routes(
            &site.shop,
            &site.other,
            "    host_rewrite: shop.internal\n",
            "",
        ),
    );
    assert_eq!(reason(&v), "upstream:status", "{v}");
    assert!(sentence(&v).contains("route shop"), "{v}");
    assert!(site.shop.checks() > 0);
}

#[test]
fn a_strip_prefix_that_strips_too_much_is_rejected() {
    let site = start("", 5);
    let v = judge(
        &site,
        &routes(&site.shop, &site.other, "    strip_prefix: /shop\n", ""),
    );
    assert_eq!(reason(&v), "upstream:status", "{v}");
    assert!(sentence(&v).contains("route shop"), "{v}");
}

#[test]
fn a_route_pointed_at_the_wrong_pool_is_rejected() {
    let site = start("", 5);
    let wrong = routes(&site.shop, &site.other, "", "").replace(
        "path_prefix: /shop/ }\n    upstream: shop",
        "path_prefix: /shop/ }\n    upstream: other",
    );
    let v = judge(&site, &wrong);
    assert_eq!(reason(&v), "upstream:status", "{v}");
    assert!(site.other.checks() > 0, "the candidate's pool was asked");
}

#[test]
fn a_timeout_shorter_than_the_upstream_takes_is_rejected() {
    let site = start("", 5);
    // The origin takes 50 ms on /slow/; the candidate waits 1 ms.
    let v = judge(
        &site,
        &routes(&site.shop, &site.other, "", "    timeout: 1ms\n"),
    );
    assert_eq!(reason(&v), "upstream:timeout", "{v}");
    assert!(sentence(&v).contains("route slow"), "{v}");
}

#[test]
fn a_good_change_is_promoted_after_being_checked() {
    let site = start("", 5);
    let v = judge(
        &site,
        &routes(
            &site.shop,
            &site.other,
            "    request_headers: { set: { x-shop-edge: \"1\" } }\n",
            "",
        ),
    );
    assert_eq!(reason(&v), "accept", "{v}");
    let check = check_of(&site, &v);
    // The five recorded /shop/ requests (and the route's synthesized
    // examples) differ by the added header: each pair sent once, both
    // answers alike.
    let checked = check["checked"].as_u64().unwrap();
    assert!(checked >= 5, "{check}");
    assert_eq!(check["worse"], 0, "{check}");
    assert_eq!(check["sent"].as_u64().unwrap(), 2 * checked, "{check}");
}

#[test]
fn the_check_sends_at_most_max_requests() {
    let site = start(", sandbox: { upstream_check: { max_requests: 6 } }", 40);
    let before = site.shop.hits() + site.other.hits();
    let v = judge(
        &site,
        &routes(
            &site.shop,
            &site.other,
            "    host_rewrite: shop.internal\n",
            "",
        ),
    );
    assert_eq!(reason(&v), "upstream:status", "{v}");
    let got = site.shop.hits() + site.other.hits() - before;
    let checks = site.shop.checks() + site.other.checks();
    eprintln!("origins got {got} requests, {checks} marked as checks");
    assert!(checks > 0 && checks <= 6, "{checks} check requests");
    assert!(got <= 6, "{got} requests reached the origins");
    let check = check_of(&site, &v);
    assert_eq!(check["sent"], checks as u64, "{check}");
    assert!(check["not_checked"].as_u64().unwrap() == 0, "{check}");
}

#[test]
fn without_the_check_the_sandbox_alone_promotes_a_refused_host() {
    // The blind spot the check closes: the same candidate as the first test,
    // judged by the replay only, is promoted.
    let site = start(", sandbox: { upstream_check: { enabled: false } }", 5);
    let v = judge(
        &site,
        &routes(
            &site.shop,
            &site.other,
            "    host_rewrite: shop.internal\n",
            "",
        ),
    );
    assert_eq!(reason(&v), "accept", "{v}");
    assert_eq!(site.shop.checks(), 0);
}
