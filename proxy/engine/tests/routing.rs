//! Routing precedence, request by request: the rules of `route_table`'s
//! module doc, which follow nginx's server_name and location order.

use std::path::Path;

use aegis_engine::config::{ConfigSource, Limits, SourceFile, compile};
use aegis_engine::{CompiledConfig, DecideOptions, Outcome, RequestHead, decide};
use http::{HeaderMap, Method};

fn config(yaml: &str) -> CompiledConfig {
    let source = ConfigSource::from_files(
        Path::new("."),
        vec![SourceFile {
            name: "routes.yaml".into(),
            text: yaml.into(),
        }],
    );
    compile(&source, &Limits::default()).unwrap_or_else(|d| panic!("{d}"))
}

struct Req<'a> {
    method: Method,
    host: &'a str,
    path: &'a str,
    headers: HeaderMap,
}

fn get<'a>(host: &'a str, path: &'a str) -> Req<'a> {
    Req {
        method: Method::GET,
        host,
        path,
        headers: HeaderMap::new(),
    }
}

fn route(c: &CompiledConfig, r: &Req<'_>) -> Option<String> {
    let (path, query) = r
        .path
        .split_once('?')
        .map_or((r.path, None), |(p, q)| (p, Some(q)));
    let head = RequestHead {
        method: &r.method,
        scheme: "http",
        host: Some(r.host),
        path,
        query,
        headers: &r.headers,
        client_ip: "127.0.0.1".parse().unwrap(),
        port: 0,
    };
    decide(c, &head, DecideOptions::default())
        .route
        .map(|r| r.name.to_string())
}

const NGINX_ORDER: &str = r#"
upstreams:
  - { name: u, endpoints: ["127.0.0.1:9"] }
routes:
  - { name: root,        match: { path_prefix: / },                          upstream: u }
  - { name: exact-root,  match: { path: / },                                 upstream: u }
  - { name: docs,        match: { path_prefix: /docs/ },                     upstream: u }
  - { name: images-stop, match: { path_prefix: /images/, stop_regex: true }, upstream: u }
  - { name: jpg,         match: { path_regex: "\\.(gif|jpg|jpeg)$" },        upstream: u }
  - { name: jpg-nocase,  match: { path_regex: "(?i)\\.png$" },               upstream: u }
  - { name: docs-pdf,    match: { path_regex: "^/docs/.*\\.pdf$" },          upstream: u }
  - { name: docs-any,    match: { path_regex: "^/docs/" },                   upstream: u }
"#;

#[test]
fn nginx_location_order() {
    let c = config(NGINX_ORDER);
    let r = |p| route(&c, &get("example.com", p));
    // nginx docs example: `= /` beats everything for `/`.
    assert_eq!(r("/").as_deref(), Some("exact-root"));
    // Longest prefix, no regex matches.
    assert_eq!(r("/index.html").as_deref(), Some("root"));
    // Regex beats a plain prefix, declaration order among regexes.
    assert_eq!(r("/docs/a.pdf").as_deref(), Some("docs-pdf"));
    assert_eq!(r("/docs/readme").as_deref(), Some("docs-any"));
    assert_eq!(r("/docs/x.jpg").as_deref(), Some("jpg"));
    // ^~ stops the regex search.
    assert_eq!(r("/images/1.gif").as_deref(), Some("images-stop"));
    // Case-insensitive regex (nginx ~*).
    assert_eq!(r("/a/B.PNG").as_deref(), Some("jpg-nocase"));
    assert_eq!(r("/a/b.JPG").as_deref(), Some("root"));
}

/// Discourse's shape: regexes nested in `location /` and in a regex.
const NESTED: &str = r#"
upstreams:
  - { name: u, endpoints: ["127.0.0.1:9"] }
routes:
  - { name: top-re,      match: { path_regex: "\\.css$" },                                 upstream: u }
  - { name: root,        match: { path_prefix: / },                                          upstream: u }
  - { name: root-assets, match: { path_regex: "^/assets/", inside_prefix: / },             upstream: u }
  - { name: api,         match: { path_prefix: /api/ },                                      upstream: u }
  - { name: uploads,     match: { path_regex: "^/uploads/" },                                upstream: u }
  - { name: uploads-img, match: { path_regex: "\\.png$", inside_regex: "^/uploads/" },     upstream: u }
"#;

#[test]
fn nested_regexes_keep_nginx_order() {
    // Also past the number of regexes tried one by one (one RegexSet pass).
    let filler: String = (0..20)
        .map(|i| {
            format!(
                "  - {{ name: f{i}, match: {{ path_regex: \"^/filler{i}$\" }}, upstream: u }}\n"
            )
        })
        .collect();
    for yaml in [NESTED.to_string(), format!("{NESTED}{filler}")] {
        nested_order(&config(&yaml));
    }
}

fn nested_order(c: &CompiledConfig) {
    let r = |p| route(c, &get("example.com", p));
    // Inside the longest prefix: before a top-level regex declared earlier.
    assert_eq!(r("/assets/a.css").as_deref(), Some("root-assets"));
    // Not tried when another prefix is the longest.
    assert_eq!(r("/api/assets/x").as_deref(), Some("api"));
    assert_eq!(r("/api/x.css").as_deref(), Some("top-re"));
    // Inside a regex: only when the outer one matched, and before it.
    assert_eq!(r("/uploads/a.png").as_deref(), Some("uploads-img"));
    assert_eq!(r("/uploads/a.txt").as_deref(), Some("uploads"));
    assert_eq!(r("/other/a.png").as_deref(), Some("root"));
    // `inside_*` without `path_regex`, or both: compile errors.
    for bad in [
        "routes:\n  - { name: x, match: { path_prefix: /, inside_prefix: / }, respond: { status: 200 } }\n",
        "routes:\n  - { name: x, match: { path_regex: a, inside_prefix: /, inside_regex: b }, respond: { status: 200 } }\n",
    ] {
        let source = ConfigSource::from_files(
            Path::new("."),
            vec![SourceFile {
                name: "routes.yaml".into(),
                text: bad.into(),
            }],
        );
        let err = compile(&source, &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("routes[0].match"), "{err}");
    }
}

const HOSTS: &str = r#"
upstreams:
  - { name: u, endpoints: ["127.0.0.1:9"] }
routes:
  - { name: any,          match: { path_prefix: / },                                  upstream: u }
  - { name: exact,        match: { host: api.example.com, path_prefix: / },          upstream: u }
  - { name: exact-admin,  match: { host: api.example.com, path_prefix: /admin },     upstream: u }
  - { name: wild,         match: { host: "*.example.com", path_prefix: / },          upstream: u }
  - { name: wild-deeper,  match: { host: "*.eu.example.com", path_prefix: / },       upstream: u }
  - { name: multi,        match: { hosts: [a.test, b.test], path: /only },            upstream: u }
"#;

#[test]
fn host_groups_exact_then_longest_wildcard_then_any() {
    let c = config(HOSTS);
    let r = |h, p| route(&c, &get(h, p));
    assert_eq!(r("api.example.com", "/x").as_deref(), Some("exact"));
    assert_eq!(
        r("API.Example.com:8443", "/admin/users").as_deref(),
        Some("exact-admin")
    );
    assert_eq!(r("www.example.com", "/").as_deref(), Some("wild"));
    assert_eq!(r("a.b.example.com", "/").as_deref(), Some("wild"));
    assert_eq!(r("x.eu.example.com", "/").as_deref(), Some("wild-deeper"));
    // `*.example.com` does not match `example.com` itself (as in nginx).
    assert_eq!(r("example.com", "/").as_deref(), Some("any"));
    assert_eq!(r("other.org", "/").as_deref(), Some("any"));
    assert_eq!(r("", "/").as_deref(), Some("any"));
    // A host group is a server block: no fall-through to the any-host routes.
    assert_eq!(r("a.test", "/only").as_deref(), Some("multi"));
    assert_eq!(r("b.test", "/elsewhere"), None);
}

const CONDITIONS: &str = r#"
upstreams:
  - { name: u, endpoints: ["127.0.0.1:9"] }
routes:
  - name: canary
    match: { path_prefix: /app, headers: [{ name: x-canary, equals: "1" }] }
    upstream: u
  - name: app-write
    match: { path_prefix: /app, methods: [POST, PUT] }
    upstream: u
  - name: app
    match: { path_prefix: /app }
    upstream: u
  - name: debug-only
    match: { path_prefix: /app/debug, headers: [{ name: x-debug, present: true }] }
    upstream: u
  - name: no-cookie
    match: { path: /landing, headers: [{ name: cookie, present: false }] }
    upstream: u
  - name: read-only
    match: { path: /ro, methods: [GET] }
    upstream: u
"#;

#[test]
fn methods_and_headers_at_one_key_and_across_prefixes() {
    let c = config(CONDITIONS);
    let mut canary = get("h", "/app/x");
    canary.headers.insert("x-canary", "1".parse().unwrap());
    assert_eq!(route(&c, &canary).as_deref(), Some("canary"));
    let mut post = get("h", "/app/x");
    post.method = Method::POST;
    assert_eq!(route(&c, &post).as_deref(), Some("app-write"));
    assert_eq!(route(&c, &get("h", "/app/x")).as_deref(), Some("app"));
    // A longer prefix whose conditions fail gives way to a shorter one.
    assert_eq!(route(&c, &get("h", "/app/debug/1")).as_deref(), Some("app"));
    let mut dbg = get("h", "/app/debug/1");
    dbg.headers.insert("x-debug", "yes".parse().unwrap());
    assert_eq!(route(&c, &dbg).as_deref(), Some("debug-only"));
    assert_eq!(
        route(&c, &get("h", "/landing")).as_deref(),
        Some("no-cookie")
    );
    let mut with_cookie = get("h", "/landing");
    with_cookie.headers.insert("cookie", "a=b".parse().unwrap());
    assert_eq!(route(&c, &with_cookie), None);
    // HEAD is served by a GET route; DELETE is not.
    let mut head = get("h", "/ro");
    head.method = Method::HEAD;
    assert_eq!(route(&c, &head).as_deref(), Some("read-only"));
    let mut delete = get("h", "/ro");
    delete.method = Method::DELETE;
    assert_eq!(route(&c, &delete), None);
}

#[test]
fn normalized_paths_cannot_dodge_a_route() {
    let c = config(
        r#"
upstreams:
  - { name: u, endpoints: ["127.0.0.1:9"] }
routes:
  - { name: admin,  match: { path_prefix: /admin }, respond: { status: 403 } }
  - { name: public, match: { path_prefix: / },      upstream: u }
"#,
    );
    for p in [
        "/admin",
        "/public/../admin/x",
        "//admin",
        "/./admin",
        "/x/%2e%2e/admin",
    ] {
        assert_eq!(route(&c, &get("h", p)).as_deref(), Some("admin"), "{p}");
    }
    let head = RequestHead {
        method: &Method::GET,
        scheme: "http",
        host: None,
        path: "/../etc/passwd",
        query: None,
        headers: &HeaderMap::new(),
        client_ip: "127.0.0.1".parse().unwrap(),
        port: 0,
    };
    assert!(matches!(
        decide(&c, &head, DecideOptions::default()).outcome,
        Outcome::BadPath
    ));
}

#[test]
fn actions_rewrites_redirects_and_scoring() {
    let c = config(
        r#"
upstreams:
  - { name: api, endpoints: ["127.0.0.1:9"] }
routes:
  - { name: api, match: { path_prefix: /api/ }, upstream: api, strip_prefix: /api, add_prefix: /v2 }
  - { name: plain, match: { path_prefix: /plain/ }, upstream: api, strip_prefix: /plain/ }
  - { name: old, match: { path_prefix: /old }, redirect: { status: 301, location: "https://$host/new$request_uri" } }
  - { name: hello, match: { path: /hello }, respond: { status: 201, body: hi } }
features:
  - { name: curl, weight: 0.6, when: { header: user-agent, contains: curl } }
  - { name: bad-net, weight: 0.5, when: { client_ip: ["10.0.0.0/8"] } }
scoring: { block_at: 1.0 }
"#,
    );
    let head = |path: &'static str,
                query: Option<&'static str>,
                headers: &'static HeaderMap,
                ip: &str| RequestHead {
        method: &Method::GET,
        scheme: "http",
        host: Some("Example.com"),
        path,
        query,
        headers,
        client_ip: ip.parse().unwrap(),
        port: 0,
    };
    let empty: &'static HeaderMap = Box::leak(Box::new(HeaderMap::new()));
    let d = decide(
        &c,
        &head("/api/users", None, empty, "1.2.3.4"),
        DecideOptions::default(),
    );
    assert_eq!(d.upstream_path(), "/v2/users");
    let d = decide(
        &c,
        &head("/plain/x", None, empty, "1.2.3.4"),
        DecideOptions::default(),
    );
    assert_eq!(d.upstream_path(), "/x");
    let d = decide(
        &c,
        &head("/old/page", Some("a=1"), empty, "1.2.3.4"),
        DecideOptions::default(),
    );
    match d.outcome {
        Outcome::Redirect { status, location } => {
            assert_eq!(status.as_u16(), 301);
            assert_eq!(location, "https://example.com/new/old/page?a=1");
        }
        other => panic!("{other:?}"),
    }
    let d = decide(
        &c,
        &head("/hello", None, empty, "1.2.3.4"),
        DecideOptions::default(),
    );
    assert_eq!(d.summary().status, Some(201));
    assert_eq!(d.score(), Some(0.0));

    let curl: &'static HeaderMap = Box::leak(Box::new({
        let mut h = HeaderMap::new();
        h.insert("user-agent", "curl/8".parse().unwrap());
        h
    }));
    let d = decide(
        &c,
        &head("/hello", None, curl, "1.2.3.4"),
        DecideOptions::default(),
    );
    assert!(!d.is_blocked());
    let d = decide(
        &c,
        &head("/hello", None, curl, "10.1.1.1"),
        DecideOptions::default(),
    );
    assert!(d.is_blocked(), "0.6 + 0.5 >= 1.0");
    assert_eq!(d.summary().status, Some(403));
    assert_eq!(d.summary().route.as_deref(), Some("hello"));
    // The kill switch: the module off, nothing is scored or blocked.
    let off = DecideOptions {
        features_enabled: false,
        fail_closed: false,
    };
    let d = decide(&c, &head("/hello", None, curl, "10.1.1.1"), off);
    assert!(!d.is_blocked());
    assert_eq!(d.score(), None);
}

#[test]
fn scoring_failure_fails_open_or_closed() {
    let c = config(
        r#"
routes:
  - { name: r, match: { path_prefix: / }, respond: { status: 200 } }
features:
  - { name: ua, weight: 0.1, when: { header: user-agent, contains: bot } }
scoring: { block_at: 1.0 }
"#,
    );
    let mut h = HeaderMap::new();
    h.insert("user-agent", "x".repeat(20_000).parse().unwrap());
    let head = RequestHead {
        method: &Method::GET,
        scheme: "http",
        host: None,
        path: "/",
        query: None,
        headers: &h,
        client_ip: "127.0.0.1".parse().unwrap(),
        port: 0,
    };
    let open = decide(&c, &head, DecideOptions::default());
    assert!(!open.is_blocked());
    assert!(open.summary().scoring_failed);
    let closed = decide(
        &c,
        &head,
        DecideOptions {
            features_enabled: true,
            fail_closed: true,
        },
    );
    assert!(closed.is_blocked());
}

#[test]
fn every_error_is_reported_with_its_place() {
    let source = ConfigSource::from_files(
        Path::new("."),
        vec![
            SourceFile {
                name: "a.yaml".into(),
                text: "upstreams:\n  - name: app\n    endpoints: [\"127.0.0.1:9001\"]\n".into(),
            },
            SourceFile {
                name: "b.yaml".into(),
                text: concat!(
                    "upstreams:\n",
                    "  - name: app\n",
                    "    endpoints: [\"nope\"]\n",
                    "routes:\n",
                    "  - name: r1\n",
                    "    match: { path_regex: \"(unclosed\" }\n",
                    "    upstream: app\n",
                    "  - name: r2\n",
                    "    upstream: missing\n",
                    "  - name: r3\n",
                    "    respond: { status: 200 }\n",
                    "    upstream: app\n",
                )
                .into(),
            },
            SourceFile {
                name: "c.yaml".into(),
                text: "routes:\n  - name: x\n    mach: {}\n".into(),
            },
        ],
    );
    let errors = compile(&source, &Limits::default())
        .unwrap_err()
        .to_string();
    let lines: Vec<&str> = errors.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("b.yaml:2:") && l.contains("already defined at a.yaml:2:")),
        "{errors}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("b.yaml:6:")
            && l.contains("routes[0].match.path_regex: invalid regex")),
        "{errors}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("b.yaml:9:")
            && l.contains("routes[1].upstream: no upstream named `missing`")),
        "{errors}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("routes[2]: a route needs exactly one action")),
        "{errors}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("c.yaml:3:") && l.contains("unknown field `mach`")),
        "{errors}"
    );
}

#[test]
fn ten_thousand_routes_compile_and_route() {
    let mut yaml =
        String::from("upstreams:\n  - { name: u, endpoints: [\"127.0.0.1:9\"] }\nroutes:\n");
    for i in 0..10_000 {
        yaml.push_str(&format!(
            "  - {{ name: r{i}, match: {{ host: h{}.example.com, path_prefix: /p{i}/ }}, upstream: u }}\n",
            i % 100
        ));
    }
    let c = config(&yaml);
    assert_eq!(c.routes.len(), 10_000);
    assert_eq!(
        route(&c, &get("h42.example.com", "/p4242/x")).as_deref(),
        Some("r4242")
    );
    assert_eq!(route(&c, &get("h42.example.com", "/p4243/x")), None);
}

#[test]
fn request_header_variables() {
    use aegis_engine::compiled::HeaderVars;
    let c = config(
        r#"
upstreams:
  - { name: u, endpoints: ["127.0.0.1:9"] }
routes:
  - name: r
    match: { path_prefix: / }
    upstream: u
    request_headers:
      set: { x-real-ip: "$remote_addr", x-orig: "$scheme://$host$request_uri", x-static: plain }
      add: { x-trace: "ip=$remote_addr" }
"#,
    );
    let mut h = HeaderMap::new();
    let headers = HeaderMap::new();
    let vars = HeaderVars {
        method: &Method::GET,
        request_id: "",
        scheme: "https",
        host: "example.com",
        path: "/a",
        request_path: "/a",
        query: Some("q=1"),
        headers: &headers,
        client_ip: "192.0.2.7".parse().unwrap(),
        maps: &c.maps,
    };
    c.routes[0].request_edits.apply_request(&mut h, &vars);
    assert_eq!(h["x-real-ip"], "192.0.2.7");
    assert_eq!(h["x-orig"], "https://example.com/a?q=1");
    assert_eq!(h["x-static"], "plain");
    assert_eq!(h["x-trace"], "ip=192.0.2.7");
    let bad = ConfigSource::from_files(
        Path::new("."),
        vec![SourceFile {
            name: "r.yaml".into(),
            text: "routes:\n  - name: r\n    respond: { status: 200 }\n    response_headers: { set: { x-a: \"$remote_addr$nope\" } }\n".into(),
        }],
    );
    let e = compile(&bad, &Limits::default()).unwrap_err().to_string();
    assert!(
        e.contains("unknown variable `$nope`") && e.contains("a map's name"),
        "{e}"
    );
}

// ------------------------------------------------------------ per-port routes

const PER_PORT_SETTINGS: &str = r#"
listen: ["127.0.0.1:80", "127.0.0.1:8081"]
listen_tls: ["127.0.0.1:443"]
"#;

/// nginx's most common layout: one `server_name` on :80 (a redirect to
/// https) and on :443 (the site), plus a default server per port and a
/// route every port shares.
const PER_PORT: &str = r#"
upstreams:
  - { name: u, endpoints: ["127.0.0.1:9"] }
routes:
  - name: to-https
    match: { host: shop.example, path_prefix: /, ports: [80] }
    redirect: { status: 301, location: "https://$host$request_uri" }
  - { name: site, match: { host: shop.example, path_prefix: /, ports: [443] }, upstream: u }
  - { name: api,  match: { host: shop.example, path_prefix: /api/, ports: [443] }, upstream: u }
  - { name: default-80, match: { path_prefix: /, ports: [80, 8081] }, respond: { status: 444 } }
  - { name: health, match: { path: /healthz }, respond: { status: 200 } }
"#;

fn per_port_config() -> CompiledConfig {
    let source = ConfigSource::from_files(
        Path::new("."),
        vec![
            SourceFile {
                name: "aegis.yaml".into(),
                text: PER_PORT_SETTINGS.into(),
            },
            SourceFile {
                name: "routes.yaml".into(),
                text: PER_PORT.into(),
            },
        ],
    );
    compile(&source, &Limits::default()).unwrap_or_else(|d| panic!("{d}"))
}

fn route_on(c: &CompiledConfig, port: u16, scheme: &str, host: &str, path: &str) -> Option<String> {
    let headers = HeaderMap::new();
    let head = RequestHead {
        method: &Method::GET,
        scheme,
        host: Some(host),
        path,
        query: None,
        headers: &headers,
        client_ip: "127.0.0.1".parse().unwrap(),
        port,
    };
    decide(c, &head, DecideOptions::default())
        .route
        .map(|r| r.name.to_string())
}

#[test]
fn routes_are_chosen_per_listen_port_as_nginx_picks_servers() {
    let c = per_port_config();
    let on = |port, host, path| route_on(&c, port, "http", host, path);
    // The same name on two ports: each port gets its own server's routes.
    assert_eq!(
        on(80, "shop.example", "/api/x").as_deref(),
        Some("to-https")
    );
    assert_eq!(on(443, "shop.example", "/api/x").as_deref(), Some("api"));
    assert_eq!(on(443, "shop.example", "/").as_deref(), Some("site"));
    // An unknown name goes to the port's default server, not another port's.
    assert_eq!(on(80, "other.example", "/").as_deref(), Some("default-80"));
    assert_eq!(on(8081, "shop.example", "/").as_deref(), Some("default-80"));
    assert_eq!(on(443, "other.example", "/"), None);
    // A route that names no port serves on every port.
    for port in [80, 443, 8081] {
        assert_eq!(
            on(port, "other.example", "/healthz").as_deref(),
            Some("health")
        );
    }
    // A port unknown to the request (old samples, followed redirects) is
    // matched as the first listener of its scheme.
    assert_eq!(
        route_on(&c, 0, "https", "shop.example", "/api/x").as_deref(),
        Some("api")
    );
    assert_eq!(
        route_on(&c, 0, "http", "shop.example", "/api/x").as_deref(),
        Some("to-https")
    );
    // Examples carry the route's port, so the gate replays them there.
    let site = c.routes.iter().find(|r| &*r.name == "site").unwrap();
    assert_eq!(site.examples[0].port, Some(443));
}

#[test]
fn a_route_on_a_port_nobody_listens_on_is_an_error() {
    let source = ConfigSource::from_files(
        Path::new("."),
        vec![
            SourceFile {
                name: "aegis.yaml".into(),
                text: PER_PORT_SETTINGS.into(),
            },
            SourceFile {
                name: "routes.yaml".into(),
                text:
                    "routes:\n  - { name: r, match: { ports: [8443] }, respond: { status: 200 } }\n"
                        .into(),
            },
        ],
    );
    let e = compile(&source, &Limits::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("routes[0].match.ports: no listener on port 8443"),
        "{e}"
    );
}
