//! Property tests: whatever bytes arrive as config, and whatever request
//! heads arrive as traffic, loading and deciding return; they never panic.

use std::path::Path;

use aegis_engine::config::{ConfigSource, Limits, SourceFile, compile, parse_settings};
use aegis_engine::{DecideOptions, RequestHead, decide};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::prelude::*;

fn source(name: &str, text: String) -> ConfigSource {
    ConfigSource::from_files(
        Path::new("."),
        vec![SourceFile {
            name: name.into(),
            text,
        }],
    )
}

/// YAML-ish text built from the config's own vocabulary, so the generator
/// reaches deep into the schema instead of failing at the first key.
fn yamlish() -> impl Strategy<Value = String> {
    let words = prop::sample::select(vec![
        "upstreams:",
        "routes:",
        "features:",
        "scoring:",
        "tls:",
        "rate_limits:",
        "- name: a",
        "- name: b",
        "name: x",
        "endpoints: [\"127.0.0.1:1\"]",
        "endpoints: []",
        "match:",
        "path_prefix: /",
        "path: /x",
        "path_regex: \"(a+)+$\"",
        "path_regex: \"[\"",
        "upstream: a",
        "upstream: zz",
        "respond: {status: 200}",
        "redirect: {status: 301, location: \"$host$request_uri\"}",
        "redirect: {status: 200, location: $x}",
        "host: \"*.e.com\"",
        "hosts: [a, \"*.*\"]",
        "methods: [GET, \"BAD METHOD\"]",
        "weight: 1e400",
        "weight: .nan",
        "when: {header: a, contains: b}",
        "when: {client_ip: [\"300.1.1.1/99\"]}",
        "block_at: -1",
        "balance: {hash: {header: \"x y\"}}",
        "balance: least_conn",
        "&a [*a, *a]",
        "*a",
        "{",
        "}",
        "[",
        "]",
        ":",
        "- ",
        "  ",
        "\n",
        "\n  ",
        "\n    ",
        "~",
        "null",
        "!!binary x",
        "'",
        "\"",
        "timeout: 5 days",
        "max_request_body: 99999999999999999999g",
        "strip_prefix: nope",
        "retries: -1",
    ]);
    prop::collection::vec(words, 0..60).prop_map(|ws| ws.concat())
}

fn request_parts() -> impl Strategy<Value = (String, Option<String>, String, Vec<(String, String)>)>
{
    (
        prop::sample::select(vec!["GET", "POST", "HEAD", "DELETE", "PATCH", "X-CUSTOM"])
            .prop_map(String::from),
        prop::option::of("[a-zA-Z0-9.*:\\[\\]-]{0,30}"),
        "(/|[a-z%.]{0,4}|\\.\\.){0,12}",
        prop::collection::vec(("[a-z-]{1,12}", "[ -~]{0,40}"), 0..6),
    )
}

const RICH: &str = r#"
upstreams:
  - { name: u, endpoints: ["127.0.0.1:9", { address: "[::1]:80", weight: 2 }], balance: { hash: client_ip } }
routes:
  - { name: a, match: { host: "*.example.com", path_prefix: /a, stop_regex: true }, upstream: u, strip_prefix: /a }
  - { name: b, match: { path_regex: "(?i)^/b/[0-9]+$" }, upstream: u, add_prefix: /x }
  - { name: c, match: { path: /, methods: [GET] }, redirect: { status: 302, location: "$scheme://$host$uri" } }
  - { name: d, match: { path_prefix: /, headers: [{ name: x-a, equals: "1" }] }, respond: { status: 418 } }
  - { name: e, match: { path_prefix: / }, upstream: u }
features:
  - { name: f1, weight: 0.5, when: { header: user-agent, regex: "bot|crawl" } }
  - { name: f2, weight: 0.7, when: { query: q, contains: "<" } }
  - { name: f3, weight: 0.1, when: { path_regex: "\\.\\." } }
  - { name: f4, weight: 0.1, when: { client_ip: ["::/0", "0.0.0.0/0"] } }
scoring: { block_at: 1.0 }
"#;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_yaml_never_panics(text in yamlish()) {
        let s = source("routes.yaml", text.clone());
        let _ = compile(&s, &Limits::default());
        let settings = source("aegis.yaml", text);
        let _ = parse_settings(&settings);
    }

    #[test]
    fn arbitrary_bytes_never_panic(text in "\\PC{0,300}") {
        let _ = compile(&source("x.yaml", text), &Limits::default());
    }

    #[test]
    fn arbitrary_request_heads_never_panic(
        (method, host, path, headers) in request_parts(),
        query in prop::option::of("[ -~]{0,40}"),
        v6 in any::<bool>(),
    ) {
        let config = compile(&source("r.yaml", RICH.to_string()), &Limits::default()).unwrap();
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let mut map = HeaderMap::new();
        for (k, v) in &headers {
            if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                map.append(k, v);
            }
        }
        let head = RequestHead {
            method: &method,
            scheme: "https",
            host: host.as_deref(),
            path: &path,
            query: query.as_deref(),
            headers: &map,
            client_ip: if v6 { "::1".parse().unwrap() } else { "10.0.0.1".parse().unwrap() },
            port: 0,
        };
        for opts in [DecideOptions::default(), DecideOptions { features_enabled: true, fail_closed: true }] {
            let d = decide(&config, &head, opts);
            let _ = d.upstream_path();
            let _ = d.summary();
        }
    }
}
