//! Tests of the converter: one or more per directive, each checking the
//! generated YAML loads in the engine and, where it matters, that the
//! engine's `decide` routes requests the way nginx would.

use std::path::Path;

use aegis_engine::config::{ConfigSource, SourceFile, compile, parse_settings};
use aegis_engine::{CompiledConfig, DecideOptions, RequestHead, decide};
use http::{HeaderMap, Method};

use super::*;
use crate::model::ConfigSet;
use crate::parse::parse_str;

fn conv(text: &str) -> Conversion {
    let tree = parse_str(text, "nginx.conf", Path::new(".")).unwrap();
    convert(&tree, &Options::default())
}

fn files(set: &ConfigSet) -> Vec<SourceFile> {
    set.files("test")
        .into_iter()
        .map(|(name, text)| SourceFile { name, text })
        .collect()
}

/// Compiles the generated set with the engine; panics with the YAML when it
/// does not load.
fn compiled(c: &Conversion) -> CompiledConfig {
    let src = ConfigSource::from_files(Path::new("."), files(&c.set));
    let settings = parse_settings(&src).unwrap_or_else(|e| panic!("{e}\n{}", yaml(c)));
    compile(&src, &settings.limits).unwrap_or_else(|e| panic!("{e}\n{}", yaml(c)))
}

fn yaml(c: &Conversion) -> String {
    c.set
        .files("test")
        .into_iter()
        .map(|(n, t)| format!("--- {n}\n{t}"))
        .collect()
}

fn http(servers: &str) -> String {
    format!("events {{}}\nhttp {{\n{servers}\n}}\n")
}

/// What the engine does with `GET host path`: (route name, upstream, path
/// sent upstream or redirect location, status).
struct Got {
    route: Option<String>,
    upstream: Option<String>,
    upstream_path: Option<String>,
    location: Option<String>,
    status: Option<u16>,
}

fn get(cfg: &CompiledConfig, host: &str, path: &str) -> Got {
    get_on(cfg, 0, "http", host, path)
}

/// [`get`] on a local port (`match.ports`) and scheme.
fn get_on(cfg: &CompiledConfig, port: u16, scheme: &str, host: &str, path: &str) -> Got {
    let headers = HeaderMap::new();
    let (p, q) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let head = RequestHead {
        method: &Method::GET,
        scheme,
        host: Some(host),
        path: p,
        query: q,
        headers: &headers,
        client_ip: "127.0.0.1".parse().unwrap(),
        port,
    };
    let s = decide(cfg, &head, DecideOptions::default()).summary();
    Got {
        route: s.route.as_deref().map(str::to_string),
        upstream: s.upstream.as_deref().map(str::to_string),
        upstream_path: s.upstream_path,
        location: s.location,
        status: s.status,
    }
}

fn route<'a>(c: &'a Conversion, name_part: &str) -> &'a RouteOut {
    c.set
        .routes
        .iter()
        .find(|r| r.name.contains(name_part))
        .unwrap_or_else(|| panic!("no route with `{name_part}` in\n{}", yaml(c)))
}

fn finding<'a>(c: &'a Conversion, directive_part: &str) -> &'a Finding {
    c.findings
        .iter()
        .find(|f| f.directive.contains(directive_part))
        .unwrap_or_else(|| panic!("no finding for `{directive_part}` in {:#?}", c.findings))
}

fn no_finding(c: &Conversion, directive_part: &str) {
    assert!(
        !c.findings
            .iter()
            .any(|f| f.directive.contains(directive_part)),
        "unexpected finding for `{directive_part}`: {:#?}",
        c.findings
    );
}

const UP: &str = "upstream app { server 127.0.0.1:9001; server 127.0.0.1:9002; }\n";

// ------------------------------------------------------------------ upstream

#[test]
fn upstream_server_parameters() {
    let c = conv(&http(
        "upstream app {
            server 127.0.0.1:9001 weight=3 max_fails=2 fail_timeout=30s;
            server 127.0.0.1:9002 weight=1 max_fails=2 fail_timeout=30s;
            server 127.0.0.1:9003 backup max_fails=2 fail_timeout=30s;
            server 127.0.0.1:9004 down;
            server backend.internal;
            keepalive 16;
        }
        server { listen 8080; location / { proxy_pass http://app; } }",
    ));
    let cfg = compiled(&c);
    let pool = cfg.upstream("app").unwrap();
    let eps: Vec<(&str, u32, bool)> = pool
        .endpoints
        .iter()
        .map(|e| (e.address.as_str(), e.weight, e.backup))
        .collect();
    assert_eq!(
        eps,
        vec![
            ("127.0.0.1:9001", 3, false),
            ("127.0.0.1:9002", 1, false),
            ("127.0.0.1:9003", 1, true),
            ("backend.internal:80", 1, false),
        ]
    );
    assert_eq!(pool.max_fails, 2);
    assert_eq!(pool.fail_timeout, std::time::Duration::from_secs(30));
    // nginx's connect timeout default, not Aegis's 5s.
    assert_eq!(pool.connect_timeout, std::time::Duration::from_secs(60));
    // Differing max_fails across servers are listed.
    assert!(
        c.findings
            .iter()
            .any(|f| f.reason.contains("different max_fails"))
    );
}

#[test]
fn upstream_balancing_methods() {
    let cases = [
        ("least_conn;", Some(BalanceOut::LeastConn), None),
        (
            "ip_hash;",
            Some(BalanceOut::HashClientIp),
            Some(Impact::Differs),
        ),
        (
            "hash $remote_addr;",
            Some(BalanceOut::HashClientIp),
            Some(Impact::Differs),
        ),
        (
            "hash $http_x_user consistent;",
            Some(BalanceOut::HashHeader("x-user".into())),
            Some(Impact::Differs),
        ),
        (
            "hash $request_uri;",
            Some(BalanceOut::RoundRobin),
            Some(Impact::Dropped),
        ),
        ("random;", Some(BalanceOut::Random), None),
        (
            "random two least_conn;",
            Some(BalanceOut::Random),
            Some(Impact::Differs),
        ),
    ];
    for (directive, balance, impact) in cases {
        let c = conv(&http(&format!(
            "upstream app {{ {directive} server 127.0.0.1:9001; }}
             server {{ listen 8080; location / {{ proxy_pass http://app; }} }}"
        )));
        compiled(&c);
        let u = c.set.upstreams.iter().find(|u| u.name == "app").unwrap();
        assert_eq!(Some(u.balance.clone()), balance, "{directive}");
        let f = c
            .findings
            .iter()
            .find(|f| directive.starts_with(&f.directive));
        assert_eq!(f.map(|f| f.impact), impact, "{directive}: {:?}", c.findings);
    }
}

#[test]
fn unix_socket_upstream_is_dropped() {
    let c = conv(&http(
        "upstream app { server unix:/run/app.sock; }
         server { listen 8080; location / { proxy_pass http://app; } }",
    ));
    assert_eq!(finding(&c, "server unix:").impact, Impact::Dropped);
    assert!(c.dropped_anything());
}

// ------------------------------------------------------------------ server

#[test]
fn listen_addresses_and_workers() {
    let c = conv(&format!(
        "worker_processes 3;\nevents {{}}\nhttp {{ {UP}
        server {{ listen 8080; listen 127.0.0.1:8081; listen [::]:8082; server_name a.test; location / {{ proxy_pass http://app; }} }}
        }}"
    ));
    assert_eq!(
        c.set.settings.listen,
        vec!["0.0.0.0:8080", "127.0.0.1:8081", "[::]:8082"]
    );
    assert_eq!(c.set.settings.workers, Some(3));
    compiled(&c);
}

#[test]
fn server_names_exact_wildcard_dot_and_unsupported() {
    let c = conv(&http(&format!(
        "{UP}
        server {{ listen 80 default_server; location / {{ return 200 'default'; }} }}
        server {{ listen 80; server_name Example.COM www.example.com; location / {{ proxy_pass http://app; }} }}
        server {{ listen 80; server_name *.example.com; location / {{ return 200 'wild'; }} }}
        server {{ listen 80; server_name .example.org; location / {{ return 200 'org'; }} }}
        server {{ listen 80; server_name ~^(?<sub>.+)\\.example\\.net$ mail.*; location / {{ return 200 'x'; }} }}"
    )));
    let cfg = compiled(&c);
    assert_eq!(
        get(&cfg, "example.com", "/").upstream.as_deref(),
        Some("app")
    );
    assert_eq!(
        get(&cfg, "WWW.example.com:80", "/").upstream.as_deref(),
        Some("app")
    );
    assert!(
        get(&cfg, "a.example.com", "/")
            .route
            .unwrap()
            .starts_with("*.example.com")
    );
    assert!(
        get(&cfg, "a.b.example.com", "/")
            .route
            .unwrap()
            .starts_with("*.example.com")
    );
    assert!(
        get(&cfg, "example.org", "/")
            .route
            .unwrap()
            .starts_with("example.org")
    );
    assert!(
        get(&cfg, "x.example.org", "/")
            .route
            .unwrap()
            .starts_with("example.org")
    );
    // Unknown hosts reach the default server.
    assert!(
        get(&cfg, "unknown.test", "/")
            .route
            .unwrap()
            .starts_with("server@")
    );
    // One report entry per directive: both regex names of the line are in it.
    let regex: Vec<&Finding> = c
        .findings
        .iter()
        .filter(|f| f.directive.starts_with("server_name ~"))
        .collect();
    assert_eq!(regex.len(), 1, "{:#?}", c.findings);
    assert!(
        regex[0].reason.contains("regex server name") && regex[0].reason.contains("mail.*"),
        "{regex:#?}"
    );
    assert!(
        c.findings
            .iter()
            .any(|f| f.reason.contains("regex server name"))
    );
    assert!(
        c.findings
            .iter()
            .any(|f| f.reason.contains("wildcard `mail.*`"))
    );
}

#[test]
fn first_server_is_the_default_without_default_server() {
    let c = conv(&http(
        "server { listen 80; server_name first.test; location / { return 200 'first'; } }
         server { listen 80; server_name second.test; location / { return 200 'second'; } }",
    ));
    let cfg = compiled(&c);
    assert!(
        get(&cfg, "other.test", "/")
            .route
            .unwrap()
            .starts_with("first.test")
    );
    assert!(
        get(&cfg, "second.test", "/")
            .route
            .unwrap()
            .starts_with("second.test")
    );
}

#[test]
fn default_server_keeps_its_names_against_wildcards() {
    let c = conv(&http(
        "server { listen 80 default_server; server_name api.example.com; location / { return 200 'api'; } }
         server { listen 80; server_name *.example.com; location / { return 200 'wild'; } }",
    ));
    let cfg = compiled(&c);
    assert!(
        get(&cfg, "api.example.com", "/")
            .route
            .unwrap()
            .starts_with("api.example.com")
    );
    assert!(
        get(&cfg, "nope.test", "/")
            .route
            .unwrap()
            .starts_with("api.example.com")
    );
    assert!(
        get(&cfg, "b.example.com", "/")
            .route
            .unwrap()
            .starts_with("*.example.com")
    );
}

#[test]
fn conflicting_server_names_keep_the_first() {
    let c = conv(&http(
        "server { listen 80; server_name a.test; location / { return 200 'one'; } }
         server { listen 80; server_name a.test b.test; location / { return 200 'two'; } }",
    ));
    let cfg = compiled(&c);
    assert_eq!(finding(&c, "server_name a.test").impact, Impact::Ignored);
    assert!(
        get(&cfg, "a.test", "/")
            .route
            .unwrap()
            .contains("nginx.conf:3")
    );
    assert!(
        get(&cfg, "b.test", "/")
            .route
            .unwrap()
            .contains("nginx.conf:4")
    );
}

#[test]
fn servers_on_different_ports_are_served_per_port() {
    let c = conv(&http(
        "server { listen 8080; server_name a.test; location / { return 200 'a'; } }
         server { listen 8081; server_name b.test; location / { return 200 'b'; } }",
    ));
    assert_eq!(c.set.settings.listen, vec!["0.0.0.0:8080", "0.0.0.0:8081"]);
    let cfg = compiled(&c);
    let on = |port, host| get_on(&cfg, port, "http", host, "/").route.unwrap();
    // Each port answers with its own servers only; an unknown or foreign
    // name gets the port's default server, as nginx does.
    assert!(on(8080, "a.test").starts_with("a.test"));
    assert!(on(8080, "b.test").starts_with("a.test"));
    assert!(on(8081, "b.test").starts_with("b.test"));
    assert!(on(8081, "a.test").starts_with("b.test"));
    assert!(
        !c.findings
            .iter()
            .any(|f| f.reason.contains("also reachable"))
    );
    assert!(c.findings.iter().all(|f| f.impact != Impact::Dropped));
}

/// A temporary directory holding `site.crt` and `site.key`, a self-signed
/// certificate for `name`.
fn dir_with_certificate(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    std::fs::write(dir.path().join("site.crt"), cert.cert.pem()).unwrap();
    std::fs::write(
        dir.path().join("site.key"),
        cert.signing_key.serialize_pem(),
    )
    .unwrap();
    dir
}

/// The most common nginx layout: one name, a redirect on :80 and the site
/// on :443. Before per-port routes the import had to pick one server for
/// the name; now each port keeps its own.
#[test]
fn redirect_on_80_and_site_on_443_keep_their_own_ports() {
    let dir = dir_with_certificate("shop.test");
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        http(&format!(
            "{UP}
            server {{ listen 80; server_name shop.test; location /.well-known/ {{ return 200 'acme'; }} location / {{ return 301 https://$host$request_uri; }} }}
            server {{
                listen 443 ssl; server_name shop.test;
                ssl_certificate site.crt; ssl_certificate_key site.key;
                location / {{ proxy_pass http://app; }}
                location /.well-known/ {{ return 200 'site'; }}
            }}"
        )),
    )
    .unwrap();
    let c = crate::import(&conf, "off").unwrap();
    let out = dir.path().join("out");
    crate::write_set(&c, &conf, &out).unwrap();
    let src = ConfigSource::read_dir(&out, 1 << 20).unwrap();
    let settings = parse_settings(&src).unwrap();
    let cfg = compile(&src, &settings.limits).unwrap_or_else(|e| panic!("{e}\n{}", yaml(&c)));
    let http80 = get_on(&cfg, 80, "http", "shop.test", "/cart");
    assert_eq!(http80.status, Some(301), "{}", yaml(&c));
    assert_eq!(http80.location.as_deref(), Some("https://shop.test/cart"));
    assert_eq!(
        get_on(&cfg, 80, "http", "shop.test", "/.well-known/x")
            .route
            .unwrap()
            .split('|')
            .nth(1),
        Some("/.well-known/")
    );
    let https = get_on(&cfg, 443, "https", "shop.test", "/cart");
    assert_eq!(https.upstream.as_deref(), Some("app"), "{}", yaml(&c));
    // The certificate is carried for the name, and nothing is dropped for
    // the pair.
    assert_eq!(c.set.tls.len(), 1);
    assert!(
        !c.findings.iter().any(|f| f.reason.contains("per-listener")),
        "{:#?}",
        c.findings
    );
}

#[test]
fn ssl_listen_and_certificates() {
    let dir = dir_with_certificate("secure.test");
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        http(&format!(
            "{UP}
            server {{
                listen 443 ssl http2;
                server_name secure.test;
                ssl_certificate site.crt;
                ssl_certificate_key site.key;
                ssl_protocols TLSv1.2 TLSv1.3;
                location / {{ proxy_pass http://app; }}
            }}"
        )),
    )
    .unwrap();
    let c = crate::import(&conf, "off").unwrap();
    assert_eq!(c.set.settings.listen_tls, vec!["0.0.0.0:443"]);
    assert!(c.set.settings.listen.is_empty());
    assert_eq!(c.set.tls.len(), 1);
    assert!(c.set.tls[0].default);
    assert_eq!(finding(&c, "ssl_protocols").impact, Impact::Differs);
    let out = dir.path().join("out");
    let summary = crate::write_set(&c, &conf, &out).unwrap();
    assert!(summary.contains("1 certificates"), "{summary}");
    let tls = std::fs::read_to_string(out.join("tls.yaml")).unwrap();
    assert!(tls.contains("certs/0-site.crt"), "{tls}");
    assert!(
        std::fs::read_to_string(out.join("aegis.yaml"))
            .unwrap()
            .contains("tls_unknown_sni: default_certificate")
    );
}

#[test]
fn ssl_without_certificate_is_dropped() {
    let c = conv(&http(&format!(
        "{UP} server {{ listen 443 ssl; server_name s.test; location / {{ proxy_pass http://app; }} }}"
    )));
    assert!(
        c.findings
            .iter()
            .any(|f| f.reason.contains("without ssl_certificate"))
    );
    assert!(c.dropped_anything());
}

// ------------------------------------------------------------------ location

/// nginx's documented example (ngx_http_core_module, `location`), plus `~*`.
const ORDER: &str = "
    location = / { return 200 'A'; }
    location / { return 200 'B'; }
    location /documents/ { return 200 'C'; }
    location ^~ /images/ { return 200 'D'; }
    location ~* \\.(gif|jpg|jpeg)$ { return 200 'E'; }
    location ~ ^/documents/.*\\.PDF$ { return 200 'F'; }
";

#[test]
fn location_modifiers_follow_nginx_matching_order() {
    let c = conv(&http(&format!(
        "server {{ listen 80; server_name x.test; {ORDER} }}"
    )));
    let cfg = compiled(&c);
    let which = |path: &str| {
        let r = get(&cfg, "x.test", path).route.unwrap();
        let rest = r.split_once('|').unwrap().1;
        rest.rsplit_once('|').unwrap().0.to_string()
    };
    assert_eq!(which("/"), "=/");
    assert_eq!(which("/index.html"), "/");
    assert_eq!(which("/documents/document.html"), "/documents/");
    assert_eq!(which("/images/1.gif"), "^~/images/");
    assert_eq!(which("/documents/1.jpg"), "~(?i)\\.(gif|jpg|jpeg)$");
    assert_eq!(which("/documents/1.JPG"), "~(?i)\\.(gif|jpg|jpeg)$");
    assert_eq!(which("/documents/a.PDF"), "~^/documents/.*\\.PDF$");
    assert_eq!(which("/documents/a.pdf"), "/documents/");
    // Regexes in declaration order: the first that matches wins.
    let c = conv(&http(
        "server { listen 80; location ~ /a { return 200 '1'; } location ~ /ab { return 200 '2'; } }",
    ));
    let cfg = compiled(&c);
    assert!(get(&cfg, "x", "/ab").route.unwrap().contains("~/a|"));
}

#[test]
fn unsupported_regex_is_listed() {
    let c = conv(&http(
        "server { listen 80; location ~ ^/(?!admin) { return 200 'x'; } location / { return 200 'y'; } }",
    ));
    let f = finding(&c, "location ~ ^/(?!admin)");
    assert_eq!(f.impact, Impact::Dropped);
    assert!(f.reason.contains("lookaround"), "{}", f.reason);
    compiled(&c);
}

#[test]
fn nested_and_named_locations_and_static_files_are_listed() {
    let c = conv(&http(&format!(
        "{UP} server {{ listen 80;
            location /app/ {{ proxy_pass http://app; location ~ \\.js$ {{ root /nonexistent/srv; }} }}
            location @fallback {{ proxy_pass http://app; }}
            location /static/ {{ root /nonexistent/www; }}
        }}"
    )));
    // (Roots that do not exist here: the files stay listed, not served.)
    let cfg = compiled(&c);
    // The nested regex is a route of its own, tried only inside `/app/`
    // as nginx does (it serves files from a missing root: dropped).
    let nested = finding(&c, "location ~ \\.js$");
    assert_eq!(nested.impact, Impact::Dropped);
    let r = c
        .set
        .routes
        .iter()
        .find(|r| r.path == PathOut::Regex("\\.js$".into()))
        .unwrap();
    assert_eq!(
        r.inside,
        Some(crate::model::InsideOut::Prefix("/app/".into()))
    );
    assert!(
        yaml(&c).contains("inside_prefix: \"/app/\""),
        "{}",
        yaml(&c)
    );
    // Outside `/app/` the nested regex is not tried.
    assert_eq!(get(&cfg, "x", "/static/a.js").status, Some(404));
    assert!(
        get(&cfg, "x", "/static/a.js")
            .route
            .unwrap()
            .contains("/static/")
    );
    assert!(
        get(&cfg, "x", "/app/a.js")
            .route
            .unwrap()
            .contains("\\.js$")
    );
    // A named location nothing uses is listed as having no effect.
    let named = finding(&c, "location @fallback");
    assert_eq!(named.impact, Impact::Ignored);
    assert!(named.reason.contains("never used"), "{}", named.reason);
    assert!(
        c.findings
            .iter()
            .any(|f| f.reason.contains("serves files (`root`)"))
    );
    // The static location keeps its place: it answers 404 rather than
    // falling through to another route.
    assert_eq!(get(&cfg, "x", "/static/a.css").status, Some(404));
    assert_eq!(get(&cfg, "x", "/app/x").upstream.as_deref(), Some("app"));
}

// ------------------------------------------------------------------ proxy_pass

#[test]
fn proxy_pass_without_uri_passes_the_path_unchanged() {
    let c = conv(&http(&format!(
        "{UP} server {{ listen 80; location /api/ {{ proxy_pass http://app; }} }}"
    )));
    let cfg = compiled(&c);
    let g = get(&cfg, "x", "/api/users?id=1");
    assert_eq!(g.upstream.as_deref(), Some("app"));
    assert_eq!(g.upstream_path.as_deref(), Some("/api/users"));
}

#[test]
fn proxy_pass_with_uri_replaces_the_location_prefix() {
    let c = conv(&http(&format!(
        "{UP} server {{ listen 80;
            location /api/ {{ proxy_pass http://app/v1/; }}
            location /root/ {{ proxy_pass http://app/; }}
            location = /exact {{ proxy_pass http://app/other/; }}
            location /same/ {{ proxy_pass http://app/same/; }}
        }}"
    )));
    let cfg = compiled(&c);
    assert_eq!(
        get(&cfg, "x", "/api/users").upstream_path.as_deref(),
        Some("/v1/users")
    );
    assert_eq!(
        get(&cfg, "x", "/api/").upstream_path.as_deref(),
        Some("/v1/")
    );
    assert_eq!(
        get(&cfg, "x", "/root/a/b").upstream_path.as_deref(),
        Some("/a/b")
    );
    assert_eq!(
        get(&cfg, "x", "/exact").upstream_path.as_deref(),
        Some("/other/")
    );
    assert_eq!(
        get(&cfg, "x", "/same/q").upstream_path.as_deref(),
        Some("/same/q")
    );
    // Only nginx's implicit `proxy_redirect default` is listed.
    assert!(
        c.findings
            .iter()
            .all(|f| f.impact == Impact::Ignored || f.reason.contains("proxy_redirect default")),
        "{:#?}",
        c.findings
    );
}

#[test]
fn proxy_pass_uri_slash_mismatch_is_listed() {
    let c = conv(&http(&format!(
        "{UP} server {{ listen 80; location /api {{ proxy_pass http://app/v1; }} }}"
    )));
    compiled(&c);
    assert_eq!(
        finding(&c, "proxy_pass http://app/v1").impact,
        Impact::Differs
    );
}

#[test]
fn proxy_pass_to_an_address_makes_an_upstream() {
    let c = conv(&http(
        "server { listen 80; location / { proxy_pass http://127.0.0.1:9005; }
                  location /b/ { proxy_pass http://backend.internal/; } }",
    ));
    let cfg = compiled(&c);
    assert!(cfg.upstream("127.0.0.1-9005").is_some());
    let b = cfg.upstream("backend.internal-80").unwrap();
    assert_eq!(b.endpoints[0].address, "backend.internal:80");
    // nginx sends Host: $proxy_host.
    let r = route(&c, "|/b/|");
    match &r.action {
        ActionOut::Upstream { host_rewrite, .. } => {
            assert_eq!(host_rewrite.as_deref(), Some("backend.internal"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn proxy_pass_forms_that_cannot_be_carried() {
    for (pass, why) in [
        ("http://$backend", "variables"),
        ("https://app", "TLS to the upstream"),
        ("http://unix:/run/a.sock", "Unix-socket"),
    ] {
        let c = conv(&http(&format!(
            "{UP} server {{ listen 80; location / {{ proxy_pass {pass}; }} }}"
        )));
        let f = finding(&c, "proxy_pass");
        assert_eq!(f.impact, Impact::Dropped, "{pass}");
        assert!(f.reason.contains(why), "{pass}: {}", f.reason);
        compiled(&c);
    }
    let c = conv(&http(&format!(
        "{UP} server {{ listen 80; location ~ ^/x {{ proxy_pass http://app/y/; }} }}"
    )));
    assert!(finding(&c, "proxy_pass").reason.contains("regex location"));
}

#[test]
fn trailing_slash_locations_redirect_the_bare_path() {
    let c = conv(&http(&format!(
        "{UP} server {{ listen 80; location /api/ {{ proxy_pass http://app; }}
                        location /docs/ {{ proxy_pass http://app; }} location = /docs {{ return 200 'docs'; }} }}"
    )));
    let cfg = compiled(&c);
    let g = get(&cfg, "x", "/api");
    assert_eq!(
        (g.status, g.location.as_deref()),
        (Some(301), Some("/api/"))
    );
    assert_eq!(get(&cfg, "x", "/docs").status, Some(200));
}

// ------------------------------------------------------------------ headers

#[test]
fn proxy_set_header_host_and_static_values() {
    let c = conv(&http(&format!(
        "{UP} server {{ listen 80;
            proxy_set_header X-Env production;
            location /default/ {{ proxy_pass http://app; }}
            location /host/ {{ proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme; proxy_pass http://app; }}
            location /fixed/ {{ proxy_set_header Host api.internal; proxy_set_header Accept-Encoding \"\"; proxy_pass http://app; }}
            location /vars/ {{ proxy_set_header X-Real-IP $remote_addr; proxy_pass http://app; }}
        }}"
    )));
    compiled(&c);
    let up = |part: &str| match &route(&c, part).action {
        ActionOut::Upstream { host_rewrite, .. } => host_rewrite.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(up("/default/|").as_deref(), Some("app"));
    assert_eq!(up("/host/|"), None);
    assert_eq!(up("/fixed/|").as_deref(), Some("api.internal"));
    // Inherited from the server only where the location sets none.
    assert_eq!(
        route(&c, "/default/|").request_set,
        vec![("x-env".into(), "production".into())]
    );
    assert!(route(&c, "/host/|").request_set.is_empty());
    assert_eq!(
        route(&c, "/fixed/|").request_remove,
        vec!["accept-encoding".to_string()]
    );
    no_finding(&c, "X-Forwarded-For");
    no_finding(&c, "X-Forwarded-Proto");
    // Variables Aegis renders per request are carried over.
    no_finding(&c, "X-Real-IP");
    assert_eq!(
        route(&c, "/vars/|").request_set,
        vec![("x-real-ip".into(), "$remote_addr".into())]
    );
}

#[test]
fn request_header_with_unknown_variable_is_dropped() {
    let c = conv(&http(&format!(
        "{UP} server {{ listen 80; location / {{ proxy_set_header X-Id $connection; proxy_pass http://app; }} }}"
    )));
    let f = finding(&c, "X-Id");
    assert_eq!(f.impact, Impact::Dropped);
    assert!(f.reason.contains("$connection"), "{}", f.reason);
}

#[test]
fn request_id_is_carried_into_request_headers() {
    let c = conv(&http(&format!(
        "{UP} server {{ listen 80; location / {{ proxy_set_header X-Request-Id $request_id; proxy_pass http://app; }} }}"
    )));
    compiled(&c);
    no_finding(&c, "X-Request-Id");
    assert_eq!(
        route(&c, "|/|").request_set,
        vec![("x-request-id".into(), "$request_id".into())]
    );
}

#[test]
fn host_from_variables_is_dropped() {
    let c = conv(&http(&format!(
        "{UP} server {{ listen 80; location / {{ proxy_set_header Host $host:$server_port; proxy_pass http://app; }} }}"
    )));
    assert_eq!(finding(&c, "proxy_set_header Host").impact, Impact::Dropped);
}

#[test]
fn add_header_and_proxy_hide_header() {
    let c = conv(&http(&format!(
        "{UP} add_header X-Frame-Options DENY always;
        server {{ listen 80;
            location / {{ proxy_pass http://app; proxy_hide_header X-Powered-By; }}
            location /own/ {{ add_header Cache-Control no-store; add_header X-Id $request_id; add_header X-Cache $upstream_cache_status; proxy_pass http://app; }}
        }}"
    )));
    let cfg = compiled(&c);
    let root = route(&c, "|/|");
    assert_eq!(
        root.response_add,
        vec![("x-frame-options".into(), "DENY".into())]
    );
    assert_eq!(root.response_remove, vec!["x-powered-by".to_string()]);
    // A level with add_header of its own does not inherit.
    let own = route(&c, "/own/|");
    assert_eq!(
        own.response_add,
        vec![
            ("cache-control".into(), "no-store".into()),
            ("x-id".into(), "$request_id".into())
        ]
    );
    // Without `always`: nginx's statuses only, which the engine has.
    assert_eq!(own.response_always, Some(false));
    no_finding(&c, "add_header Cache-Control");
    // Variables Aegis has are rendered per response; others are dropped.
    no_finding(&c, "add_header X-Id");
    assert_eq!(finding(&c, "add_header X-Cache").impact, Impact::Dropped);
    no_finding(&c, "add_header X-Frame-Options");
    assert!(cfg.routes.iter().any(|r| !r.response_edits.is_empty()));
}

// ------------------------------------------------------------------ timeouts and limits

#[test]
fn proxy_timeouts() {
    let c = conv(&http(&format!(
        "{UP} proxy_connect_timeout 3s; server {{ listen 80;
            location / {{ proxy_read_timeout 90s; proxy_send_timeout 10s; proxy_pass http://app; }}
            location /fast/ {{ proxy_read_timeout 1500ms; proxy_pass http://app; }}
        }}"
    )));
    let cfg = compiled(&c);
    assert_eq!(
        cfg.upstream("app").unwrap().connect_timeout,
        std::time::Duration::from_secs(3)
    );
    let t = |part: &str| match &route(&c, part).action {
        ActionOut::Upstream { timeout_ms, .. } => *timeout_ms,
        _ => None,
    };
    assert_eq!(t("|/|"), Some(90_000));
    assert_eq!(t("/fast/|"), Some(1_500));
    assert_eq!(finding(&c, "proxy_send_timeout").impact, Impact::Differs);
    assert_eq!(parse_nginx_duration("1m30s"), Some(90_000));
    assert_eq!(parse_nginx_duration("75"), Some(75_000));
    assert_eq!(parse_nginx_duration("5x"), None);
}

#[test]
fn client_max_body_size() {
    let c = conv(&http(&format!(
        "{UP} client_max_body_size 10m; server {{ listen 80;
            location / {{ proxy_pass http://app; }}
            location /upload/ {{ client_max_body_size 0; proxy_pass http://app; }}
            location /small/ {{ client_max_body_size 1k; proxy_pass http://app; }}
            location /default/ {{ client_max_body_size 1m; proxy_pass http://app; }}
        }}"
    )));
    let cfg = compiled(&c);
    let body = |part: &str| {
        let name = &route(&c, part).name;
        cfg.routes
            .iter()
            .find(|r| *r.name == **name)
            .unwrap()
            .max_request_body
    };
    assert_eq!(body("|/|"), Some(10 << 20));
    assert!(body("/upload/|").unwrap() >= 1 << 40);
    assert_eq!(body("/small/|"), Some(1024));
    assert_eq!(body("/default/|"), None);
}

#[test]
fn limit_req_zone_and_limit_req() {
    let c = conv(&http(&format!(
        "{UP}
        limit_req_zone $binary_remote_addr zone=api:10m rate=10r/s;
        limit_req_zone $binary_remote_addr zone=slow:10m rate=30r/m;
        limit_req_zone $http_x_key zone=bykey:10m rate=1r/s;
        limit_req_status 429;
        server {{ listen 80;
            location /api/ {{ limit_req zone=api burst=20 nodelay; proxy_pass http://app; }}
            location /api2/ {{ limit_req zone=api burst=20 nodelay; proxy_pass http://app; }}
            location /slow/ {{ limit_req zone=slow; proxy_pass http://app; }}
            location /queued/ {{ limit_req zone=slow burst=5; proxy_pass http://app; }}
            location /key/ {{ limit_req zone=bykey; proxy_pass http://app; }}
        }}"
    )));
    compiled(&c);
    let rl = |name: &str| c.set.rate_limits.iter().find(|r| r.name == name).unwrap();
    assert_eq!((rl("api").requests_per_second, rl("api").burst), (10.0, 21));
    assert_eq!((rl("slow").requests_per_second, rl("slow").burst), (0.5, 1));
    assert_eq!(rl("slow-burst5").burst, 6);
    assert_eq!(route(&c, "/api/|").rate_limit.as_deref(), Some("api"));
    assert_eq!(route(&c, "/api2/|").rate_limit.as_deref(), Some("api"));
    assert_eq!(
        finding(&c, "limit_req_zone $http_x_key").impact,
        Impact::Dropped
    );
    assert_eq!(finding(&c, "limit_req zone=bykey").impact, Impact::Dropped);
    assert!(
        finding(&c, "limit_req zone=slow burst=5")
            .reason
            .contains("delays")
    );
    // limit_req_status 429 matches Aegis: nothing listed for api.
    no_finding(&c, "limit_req zone=api");
}

#[test]
fn limit_req_status_other_than_429_is_listed() {
    let c = conv(&http(&format!(
        "{UP} limit_req_zone $binary_remote_addr zone=z:1m rate=1r/s;
        server {{ listen 80; location / {{ limit_req zone=z; proxy_pass http://app; }} }}"
    )));
    assert!(finding(&c, "limit_req zone=z").reason.contains("503"));
}

// ------------------------------------------------------------------ return and rewrite

#[test]
fn return_redirects_and_fixed_answers() {
    let c = conv(&http(
        "default_type application/octet-stream;
        server { listen 80; server_name r.test;
            location = /go { return 301 https://$host$request_uri; }
            location = /temp { return https://example.com/x; }
            location = /moved { return 308 /new$uri; }
            location = /named { return 302 http://$server_name/n; }
            location = /health { default_type text/plain; return 200 'ok'; }
            location = /bin { return 200 'raw'; }
            location = /gone { return 410; }
            location = /args { return 302 /x?$args; }
            location = /close { return 444; }
        }",
    ));
    let cfg = compiled(&c);
    let g = get(&cfg, "r.test", "/go?a=1");
    assert_eq!(
        (g.status, g.location.as_deref()),
        (Some(301), Some("https://r.test/go?a=1"))
    );
    let g = get(&cfg, "r.test", "/temp");
    assert_eq!(
        (g.status, g.location.as_deref()),
        (Some(302), Some("https://example.com/x"))
    );
    assert_eq!(
        get(&cfg, "r.test", "/moved").location.as_deref(),
        Some("/new/moved")
    );
    assert_eq!(
        get(&cfg, "r.test", "/named").location.as_deref(),
        Some("http://r.test/n")
    );
    match &route(&c, "=/health").action {
        ActionOut::Respond {
            status,
            body,
            headers,
        } => {
            assert_eq!((*status, body.as_str()), (200, "ok"));
            assert_eq!(
                headers,
                &vec![("content-type".to_string(), "text/plain".to_string())]
            );
        }
        other => panic!("{other:?}"),
    }
    match &route(&c, "=/bin").action {
        ActionOut::Respond { headers, .. } => {
            assert_eq!(headers[0].1, "application/octet-stream")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(get(&cfg, "r.test", "/gone").status, Some(410));
    // `$args` is carried into the redirect template.
    no_finding(&c, "return 302 /x?$args");
    assert_eq!(
        get(&cfg, "r.test", "/args?a=1").location.as_deref(),
        Some("/x?a=1")
    );
    // 444: the engine closes the connection unanswered, as nginx.
    no_finding(&c, "return 444");
    assert_eq!(get(&cfg, "localhost", "/close").status, Some(444));
}

#[test]
fn server_level_return_answers_everything() {
    let c = conv(&http(&format!(
        "{UP} server {{ listen 80; server_name plain.test; return 301 https://$host$request_uri;
            location / {{ proxy_pass http://app; }} }}"
    )));
    let cfg = compiled(&c);
    for path in ["/", "/x", "/a.php"] {
        let g = get(&cfg, "plain.test", path);
        assert_eq!(g.status, Some(301), "{path}");
        assert_eq!(g.location, Some(format!("https://plain.test{path}")));
    }
    assert_eq!(finding(&c, "location /").impact, Impact::Ignored);
}

#[test]
fn simple_rewrites_become_redirect_routes() {
    let c = conv(&http(&format!(
        "{UP} server {{ listen 80; server_name w.test;
            rewrite ^/old-page$ /new-page permanent;
            rewrite ^/blog /articles? redirect;
            rewrite ^/(.*)/index\\.html$ /$1/ permanent;
            location / {{
                rewrite ^/legacy\\.html$ /modern? permanent;
                rewrite ^/x$ /y last;
                proxy_pass http://app;
            }}
            location ~ \\.php$ {{ proxy_pass http://app; }}
        }}"
    )));
    let cfg = compiled(&c);
    let g = get(&cfg, "w.test", "/old-page");
    assert_eq!(
        (g.status, g.location.as_deref()),
        (Some(301), Some("/new-page"))
    );
    assert_eq!(finding(&c, "rewrite ^/old-page$").impact, Impact::Differs); // query not appended
    let g = get(&cfg, "w.test", "/blog/2020/post");
    assert_eq!(
        (g.status, g.location.as_deref()),
        (Some(302), Some("/articles"))
    );
    assert_eq!(get(&cfg, "w.test", "/blog.php").status, Some(302));
    no_finding(&c, "rewrite ^/blog");
    assert_eq!(
        get(&cfg, "w.test", "/legacy.html").location.as_deref(),
        Some("/modern")
    );
    assert_eq!(finding(&c, "rewrite ^/(.*)/index").impact, Impact::Dropped);
    // An internal rewrite is carried (the route searches again).
    no_finding(&c, "rewrite ^/x$ /y last");
    assert_eq!(
        get(&cfg, "w.test", "/other").upstream.as_deref(),
        Some("app")
    );
}

#[test]
fn location_rewrite_applies_only_where_nginx_brings_the_request() {
    let c = conv(&http(&format!(
        "{UP} server {{ listen 80;
            location / {{ rewrite ^/a\\.php$ /b? permanent; rewrite ^/old/(.*)$ /new/$1 last; proxy_pass http://app; }}
            location ~ \\.php$ {{ proxy_pass http://app; }}
            location /new/ {{ return 200 new; }}
        }}"
    )));
    let cfg = compiled(&c);
    no_finding(&c, "rewrite");
    // `/a.php` is the regex location's in nginx: the rewrite of `location
    // /` never sees it.
    assert_eq!(get(&cfg, "x", "/a.php").upstream.as_deref(), Some("app"));
    assert_eq!(get(&cfg, "x", "/a.php").status, None);
    // `last`: the routes are searched again with the new path.
    assert_eq!(get(&cfg, "x", "/old/page").status, Some(200));
}

#[test]
fn rewrite_break_prefix_strip_idiom() {
    let c = conv(&http(&format!(
        "{UP} server {{ listen 80;
            location /api/ {{ rewrite ^/api/(.*)$ /$1 break; proxy_pass http://app; }}
        }}"
    )));
    let cfg = compiled(&c);
    assert_eq!(
        get(&cfg, "x", "/api/users/7").upstream_path.as_deref(),
        Some("/users/7")
    );
    assert!(!c.dropped_anything(), "{:#?}", c.findings);
}

// ------------------------------------------------------------------ the error listing

#[test]
fn findings_name_file_line_and_why() {
    let c = conv(&http(&format!(
        "{UP} gzip on;
        server {{ listen 80;
            location / {{
                proxy_pass http://app;
                proxy_cache my_cache;
                try_files $uri @app;
                satisfy any;
                frobnicate yes;
                proxy_buffering off;
                if ($http_x) {{ return 403; }}
            }}
        }}"
    )));
    let lines: Vec<String> = c.findings.iter().map(|f| f.to_string()).collect();
    let has = |s: &str| lines.iter().any(|l| l.contains(s));
    // `gzip on` at http level is carried (aegis.yaml `compression`).
    assert!(!has("`gzip on`"), "{lines:#?}");
    assert!(
        has("nginx.conf:8: dropped: `proxy_cache my_cache`: response caching"),
        "{lines:#?}"
    );
    assert!(
        has("nginx.conf:9: dropped: `try_files $uri @app`"),
        "{lines:#?}"
    );
    assert!(has("nginx.conf:10: dropped: `satisfy any`"), "{lines:#?}");
    assert!(
        has("nginx.conf:11: dropped: `frobnicate yes`: not understood by the importer"),
        "{lines:#?}"
    );
    assert!(has("nginx.conf:13: dropped: `if ($http_x)`"), "{lines:#?}");
    assert_eq!(finding(&c, "proxy_buffering").impact, Impact::Ignored);
    assert!(c.dropped_anything());
    // Sorted by file and line.
    let order: Vec<usize> = c.findings.iter().map(|f| f.at.line).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);
}

#[test]
fn a_clean_config_has_nothing_dropped() {
    let c = conv(&format!(
        "user nginx; worker_processes auto; pid /run/nginx.pid; error_log /var/log/nginx/error.log;
        events {{ worker_connections 1024; }}
        http {{
            sendfile on; tcp_nopush on; keepalive_timeout 65; access_log off;
            {UP}
            server {{ listen 80; server_name a.test;
                location / {{ proxy_pass http://app; proxy_http_version 1.1;
                    proxy_set_header Host $host; proxy_set_header Connection \"\"; }} }}
        }}"
    ));
    assert!(!c.dropped_anything(), "{:#?}", c.findings);
    assert_eq!(c.set.settings.workers, None);
    compiled(&c);
}

#[test]
fn site_file_without_http_block() {
    let c = conv(&format!(
        "{UP} server {{ listen 8080; location / {{ proxy_pass http://app; }} }}"
    ));
    assert_eq!(c.set.routes.len(), 1);
    compiled(&c);
}

#[test]
fn yaml_quotes_everything_that_could_be_retyped() {
    assert_eq!(crate::model::q("on"), "\"on\"");
    assert_eq!(crate::model::q("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
    let c = conv(&http(
        "server { listen 80; location = /yes { add_header X-Yes \"on: #1\" always; return 200 'no\\ttab \"q\"'; } }",
    ));
    let cfg = compiled(&c);
    let r = cfg
        .routes
        .iter()
        .find(|r| r.name.contains("=/yes"))
        .unwrap();
    assert_eq!(r.response_edits.add[0].1, "on: #1");
    match &r.action {
        aegis_engine::compiled::RouteAction::Respond { body, .. } => {
            assert_eq!(&**body, "no\ttab \"q\"")
        }
        _ => panic!(),
    }
}

#[test]
fn return_text_is_typed_by_extension_then_default_type() {
    let c = conv(&http(
        "types { text/plain txt; application/json json; }
        default_type application/octet-stream;
        server { listen 80;
            location = /robots.txt { return 200 'User-agent: *'; }
            location = /status.json { return 200 '{}'; }
            location = /page.html { return 200 'x'; }
            location / { return 200 'any'; }
        }",
    ));
    compiled(&c);
    let ct = |part: &str| match &route(&c, part).action {
        ActionOut::Respond { headers, .. } => headers[0].1.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(ct("=/robots.txt"), "text/plain");
    assert_eq!(ct("=/status.json"), "application/json");
    // A `types` block replaces nginx's built-in map.
    assert_eq!(ct("=/page.html"), "application/octet-stream");
    assert_eq!(ct("|/|"), "application/octet-stream");
    assert_eq!(finding(&c, "return 200 any").impact, Impact::Differs);
}

#[test]
fn single_server_upstreams_are_never_ejected() {
    let c = conv(&http(
        "upstream one { server 127.0.0.1:9001; server 127.0.0.1:9002 backup; }
         upstream two { server 127.0.0.1:9001 max_fails=0; server 127.0.0.1:9002 max_fails=0; }
         server { listen 80; location /a/ { proxy_pass http://one; } location /b/ { proxy_pass http://two; }
                  location / { proxy_pass http://127.0.0.1:9003; } }",
    ));
    let cfg = compiled(&c);
    assert_eq!(cfg.upstream("one").unwrap().max_fails, 0);
    assert_eq!(cfg.upstream("two").unwrap().max_fails, 0);
    assert_eq!(cfg.upstream("127.0.0.1-9003").unwrap().max_fails, 0);
}

#[test]
fn proxy_pass_to_an_upstream_that_was_dropped_is_dropped() {
    let c = conv(&http(
        "upstream app { server unix:/run/app.sock; }
         server { listen 80; location / { proxy_pass http://app; } }",
    ));
    compiled(&c);
    assert!(
        finding(&c, "proxy_pass http://app")
            .reason
            .contains("not carried over")
    );
    assert!(c.set.upstreams.is_empty());
}

/// GitLab's `error_page 418 = @workhorse; return 418;`: nginx never answers
/// the 418, the named location handles every request (issue 17's real-config
/// battery found these answering 418).
#[test]
fn error_page_to_named_location_with_return_is_the_named_action() {
    let c = conv(&http(&format!(
        "{UP} upstream wh {{ server 127.0.0.1:9003; }}
        server {{ listen 80; server_name git.example.com;
            location / {{ proxy_pass http://app; }}
            location ~ ^/[\\w\\.-]+/[\\w\\.-]+/gitlab-lfs/objects {{
                client_max_body_size 0;
                error_page 418 = @workhorse;
                return 418;
            }}
            location @workhorse {{ proxy_pass http://wh; }}
        }}"
    )));
    let cfg = compiled(&c);
    let g = get(&cfg, "git.example.com", "/group/repo/gitlab-lfs/objects/x");
    assert_eq!(g.upstream.as_deref(), Some("wh"), "{}", yaml(&c));
    assert_ne!(g.status, Some(418));
    // Carried exactly: neither listed, nor the named location.
    no_finding(&c, "error_page 418");
    no_finding(&c, "return 418");
    no_finding(&c, "location @workhorse");
    assert!(!c.dropped_anything(), "{:#?}", c.findings);
    // Without the error_page the return is carried as it is.
    let c = conv(&http(&format!(
        "{UP} server {{ listen 80;
            location / {{ proxy_pass http://app; }}
            location /x {{ return 418; }}
        }}"
    )));
    assert_eq!(get(&compiled(&c), "h", "/x").status, Some(418));
}

// --------------------------------------------------------------- compression

#[test]
fn gzip_directives_become_the_compression_setting() {
    let c = conv(&http(&format!(
        "{UP}
        gzip on;
        gzip_comp_level 6;
        gzip_min_length 256;
        gzip_types text/css application/json;
        gzip_proxied any;
        gzip_vary on;
        gzip_buffers 16 8k;
        server {{ listen 80; server_name a.test; location / {{ proxy_pass http://app; }} }}"
    )));
    let out = &c.set.settings.compression;
    assert!(out.gzip && !out.brotli);
    assert_eq!(out.level, Some(6));
    assert_eq!(out.min_length, Some(256));
    assert_eq!(out.types, vec!["text/css", "application/json"]);
    assert_eq!((out.proxied_any, out.vary), (Some(true), Some(true)));
    assert_eq!(finding_or_carried(&c, "gzip on"), Impact::Carried);
    assert_eq!(finding(&c, "gzip_buffers").impact, Impact::Ignored);
    // The written settings load, with nginx's text/html first.
    let settings = c
        .set
        .files("test")
        .into_iter()
        .find(|(n, _)| n == "aegis.yaml")
        .unwrap()
        .1;
    assert!(
        settings.contains("types: [\"text/html\", \"text/css\", \"application/json\"]")
            || settings.contains("types: [text/html, text/css, application/json]"),
        "{settings}"
    );
    let src = ConfigSource::from_files(Path::new("."), files(&c.set));
    let parsed = parse_settings(&src).unwrap_or_else(|e| panic!("{e}\n{settings}"));
    assert!(format!("{:?}", parsed).contains("gzip: true"), "{parsed:?}");
}

#[test]
fn gzip_in_a_server_applies_to_every_server_and_says_so() {
    let c = conv(&http(
        "server { listen 80; server_name a.test; gzip on; location / { return 200 'a'; } }",
    ));
    assert!(c.set.settings.compression.gzip);
    let f = finding(&c, "gzip on");
    assert_eq!(f.impact, Impact::Differs);
    assert!(f.reason.contains("every server"), "{}", f.reason);
}

/// The report entry of a directive, `Carried` when it has none.
fn finding_or_carried(c: &Conversion, directive_part: &str) -> Impact {
    c.report
        .iter()
        .find(|f| f.directive.contains(directive_part))
        .map_or(Impact::Carried, |f| f.impact)
}

// -------------------------------------------------------------- static files

#[test]
fn file_locations_become_static_routes_when_the_root_exists() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    std::fs::create_dir_all(dir.path().join("app")).unwrap();
    let c = conv(&http(&format!(
        "{UP} server {{ listen 80; server_name s.test; root {root}; index index.htm;
            location / {{ try_files $uri $uri/ /index.htm; }}
            location /assets/ {{ alias {root}/app/; expires 7d; }}
            location /api/ {{ proxy_pass http://app; }}
        }}"
    )));
    let cfg = compiled(&c);
    let root_route = route(&c, "|/|");
    assert_eq!(
        root_route.action,
        ActionOut::Static {
            root: Some(root.clone()),
            alias: None,
            index: vec!["index.htm".into()],
            try_files: vec!["$uri".into(), "$uri/".into(), "/index.htm".into()],
            etag: true,
        }
    );
    let assets = route(&c, "|/assets/|");
    assert!(
        matches!(&assets.action, ActionOut::Static { alias: Some(a), root: None, .. } if *a == format!("{root}/app/")),
        "{:?}",
        assets.action
    );
    assert_eq!(assets.expires.as_deref(), Some("7d"));
    assert!(get(&cfg, "s.test", "/api/x").upstream.is_some());
    assert!(
        get(&cfg, "s.test", "/x.css").route.unwrap().contains("|/|"),
        "{}",
        yaml(&c)
    );
    no_finding(&c, "try_files");
    no_finding(&c, "alias");
}

#[test]
fn try_files_to_a_named_location_serves_files_then_hands_over() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    // Discourse's shape: the root through a server-level constant `set`,
    // `etag off`, two locations falling back to one named location.
    let c = conv(&http(&format!(
        "{UP} server {{ listen 80; server_name s.test; set $public {root}; etag off;
            location / {{ root $public; try_files $uri $uri.html @app; }}
            location /f/ {{ root $public; try_files $uri @app; }}
            location @app {{ proxy_set_header X-Named yes; proxy_pass http://app; }}
        }}"
    )));
    let cfg = compiled(&c);
    let internal: Vec<&RouteOut> = c
        .set
        .routes
        .iter()
        .filter(|r| r.path == PathOut::Internal)
        .collect();
    assert_eq!(
        internal.len(),
        1,
        "one internal route per named location\n{}",
        yaml(&c)
    );
    let named = internal[0];
    assert!(
        matches!(named.action, ActionOut::Upstream { .. }),
        "{}",
        yaml(&c)
    );
    assert!(
        named
            .request_set
            .iter()
            .any(|(k, v)| k == "x-named" && v == "yes")
    );
    for part in ["|/|", "|/f/|"] {
        let r = route(&c, part);
        let ActionOut::Static {
            root: Some(r_root),
            try_files,
            etag,
            ..
        } = &r.action
        else {
            panic!("{part}: not static\n{}", yaml(&c));
        };
        assert_eq!(r_root, &root, "`$public` written with its value");
        assert_eq!(try_files.last(), Some(&format!("@{}", named.name)));
        assert!(!etag, "etag off is inherited");
    }
    assert!(yaml(&c).contains("internal: true"));
    // Requests are matched to the static routes, never to the named one.
    assert!(get(&cfg, "s.test", "/x").route.unwrap().contains("|/|"));
    assert!(get(&cfg, "s.test", "/f/x").route.unwrap().contains("|/f/|"));
    let entry = c
        .report
        .iter()
        .find(|f| f.directive == "try_files $uri $uri.html @app")
        .unwrap();
    assert_eq!(entry.impact, Impact::Carried, "{entry}");
    no_finding(&c, "set $public");
    no_finding(&c, "etag");
    assert!(!c.dropped_anything(), "{:#?}", c.findings);
}

#[test]
fn a_set_assigned_twice_is_not_a_constant() {
    let c = conv(&http(
        "server { listen 80; set $v /a; location / { set $v /b; return 200 $v; } }",
    ));
    assert_eq!(finding(&c, "set $v /a").impact, Impact::Dropped);
}

#[test]
fn file_locations_with_a_missing_root_are_still_listed() {
    let c = conv(&http(
        "server { listen 80; server_name s.test; root /nonexistent/aegis-test;
            location / { try_files $uri =404; } }",
    ));
    compiled(&c);
    assert_eq!(finding(&c, "try_files").impact, Impact::Dropped);
}

/// `decide` for `method path` from `client` (the status 403 of a denial).
fn from_client(cfg: &CompiledConfig, method: Method, path: &str, client: &str) -> Option<u16> {
    let headers = HeaderMap::new();
    let head = RequestHead {
        method: &method,
        scheme: "http",
        host: Some("localhost"),
        path,
        query: None,
        headers: &headers,
        client_ip: client.parse().unwrap(),
        port: 0,
    };
    decide(cfg, &head, DecideOptions::default())
        .summary()
        .status
}

#[test]
fn allow_deny_and_limit_except_become_route_access() {
    let c = conv(&http(
        "upstream app { server 127.0.0.1:3000; }
        server { listen 80;
            allow 10.0.0.0/8;
            deny all;
            location / { proxy_pass http://app; }
            location /open/ { allow all; proxy_pass http://app; }
            location /upload { limit_except GET { deny all; } proxy_pass http://app; }
            location = /moved { return 301 /new; }
        }",
    ));
    let cfg = compiled(&c);
    // Inherited from the server: 10/8 only.
    assert_eq!(from_client(&cfg, Method::GET, "/", "10.1.2.3"), None);
    assert_eq!(from_client(&cfg, Method::GET, "/", "192.0.2.1"), Some(403));
    // A level with its own rules replaces the server's (array inheritance).
    assert_eq!(from_client(&cfg, Method::GET, "/open/x", "192.0.2.1"), None);
    // limit_except GET: GET and HEAD pass under the server's rules, POST is
    // judged by the block's `deny all` (even from 10/8).
    assert_eq!(from_client(&cfg, Method::GET, "/upload", "10.1.2.3"), None);
    assert_eq!(from_client(&cfg, Method::HEAD, "/upload", "10.1.2.3"), None);
    assert_eq!(
        from_client(&cfg, Method::POST, "/upload", "10.1.2.3"),
        Some(403)
    );
    // `return` answers before nginx checks access.
    assert_eq!(
        from_client(&cfg, Method::GET, "/moved", "192.0.2.1"),
        Some(301)
    );
    assert_eq!(finding(&c, "deny all").impact, Impact::Ignored);
    assert!(!c.dropped_anything(), "{:#?}", c.findings);
}

#[test]
fn realip_directives_become_the_sets_real_ip() {
    let c = conv(&http(
        "set_real_ip_from 10.0.0.0/8;
        set_real_ip_from 192.168.1.1;
        real_ip_header X-Forwarded-For;
        real_ip_recursive on;
        upstream app { server 127.0.0.1:3000; }
        server { listen 80; location / { proxy_pass http://app; } }",
    ));
    let cfg = compiled(&c);
    let real = cfg.real_ip.as_ref().expect("real_ip carried");
    assert!(real.recursive);
    assert_eq!(real.header.as_str(), "x-forwarded-for");
    let mut h = HeaderMap::new();
    h.insert("x-forwarded-for", "203.0.113.5, 10.9.9.9".parse().unwrap());
    assert_eq!(
        cfg.client_ip("192.168.1.1".parse().unwrap(), &h),
        "203.0.113.5".parse::<std::net::IpAddr>().unwrap()
    );
    assert!(
        c.findings.iter().all(|f| f.impact == Impact::Ignored),
        "{:#?}",
        c.findings
    );
}

#[test]
fn proxy_redirect_default_and_pairs_become_location_rewrites() {
    let c = conv(&http(
        "upstream app { server 127.0.0.1:3000; }
        server { listen 80;
            location / { proxy_pass http://app; }
            location /one/ { proxy_pass http://127.0.0.1:3001/two/; }
            location /up { proxy_pass http://127.0.0.1:3002/; proxy_redirect http://127.0.0.1:3002 /up; }
            location /off { proxy_pass http://app; proxy_redirect off; }
        }",
    ));
    compiled(&c);
    let rw = |name: &str| match &route(&c, name).action {
        ActionOut::Upstream {
            location_rewrite, ..
        } => location_rewrite.clone(),
        a => panic!("{a:?}"),
    };
    let pair = |a: &str, b: &str| vec![(a.to_string(), b.to_string())];
    // nginx's implicit default: the proxied URL (with `/` when it has no
    // URI) becomes the location.
    assert_eq!(rw("|/|"), pair("http://app/", "/"));
    assert_eq!(rw("|/one/|"), pair("http://127.0.0.1:3001/two/", "/one/"));
    assert_eq!(rw("|/up|"), pair("http://127.0.0.1:3002", "/up"));
    assert!(rw("|/off|").is_empty());
    no_finding(&c, "proxy_redirect");
    assert!(c.report.iter().any(|f| {
        f.directive
            .starts_with("proxy_redirect http://127.0.0.1:3002")
            && f.impact == Impact::Carried
    }));
}

#[test]
fn error_page_lines_become_route_error_pages() {
    let c = conv(&http(
        "upstream app { server 127.0.0.1:3000; }
        server { listen 80;
            error_page 500 502 503 504 /50x.html;
            location / { proxy_pass http://app; proxy_intercept_errors on; }
            location /own/ { error_page 404 =200 /empty.html; error_page 502 https://status.example/; proxy_pass http://app; }
            location = /50x.html { return 200 sorry; }
        }",
    ));
    compiled(&c);
    let root = route(&c, "|/|");
    assert!(root.intercept_errors);
    assert_eq!(
        root.error_pages,
        vec![crate::model::ErrorPageOut {
            statuses: vec![500, 502, 503, 504],
            uri: "/50x.html".into(),
            status: None,
        }]
    );
    // A level with error_page lines of its own does not inherit.
    let own = route(&c, "/own/|");
    assert_eq!(own.error_pages.len(), 2);
    assert_eq!(own.error_pages[0].status.as_deref(), Some("200"));
    assert_eq!(own.error_pages[1].uri, "https://status.example/");
    assert!(!c.dropped_anything(), "{:#?}", c.findings);
}

#[test]
fn maps_that_choose_upstreams_are_carried() {
    let c = conv(&http(
        "upstream api { server 127.0.0.1:3000; }
        upstream ui { server 127.0.0.1:3001; }
        map $http_accept $by_accept {
            default \"http://ui\";
            \"application/activity+json\" \"http://api\";
            ~*^text/json \"http://api\";
        }
        map $request_method $pass {
            default $by_accept;
            POST \"http://api\";
        }
        server { listen 80; location / { proxy_pass $pass; } }",
    ));
    let cfg = compiled(&c);
    assert!(!c.dropped_anything(), "{:#?}", c.findings);
    let pick = |method: Method, accept: &str| {
        let mut headers = HeaderMap::new();
        if !accept.is_empty() {
            headers.insert("accept", accept.parse().unwrap());
        }
        let head = RequestHead {
            method: &method,
            scheme: "http",
            host: Some("localhost"),
            path: "/",
            query: None,
            headers: &headers,
            client_ip: "127.0.0.1".parse().unwrap(),
            port: 0,
        };
        decide(&cfg, &head, DecideOptions::default())
            .summary()
            .upstream
    };
    assert_eq!(pick(Method::GET, "").as_deref(), Some("ui"));
    assert_eq!(pick(Method::POST, "").as_deref(), Some("api"));
    assert_eq!(
        pick(Method::GET, "Application/Activity+JSON").as_deref(),
        Some("api")
    );
    assert_eq!(pick(Method::GET, "TEXT/json; x").as_deref(), Some("api"));
}

#[test]
fn a_php_app_is_left_out_as_fastcgi_and_its_files_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    // Nextcloud's shape: a FastCGI location, static locations falling back
    // to `/index.php$request_uri`, `index index.php`.
    let c = conv(&http(&format!(
        "upstream php {{ server 127.0.0.1:9000; }}
        server {{ listen 80; server_name s.test; root {root};
            index index.php index.html /index.php$request_uri;
            location ~ \\.php(?:$|/) {{
                rewrite ^/(?!index|remote) /index.php$request_uri;
                fastcgi_split_path_info ^(.+?\\.php)(/.*)$;
                fastcgi_pass php;
            }}
            location ~ \\.css$ {{ try_files $uri /index.php$request_uri; }}
            location / {{ try_files $uri $uri/ /index.php$request_uri; }}
        }}"
    )));
    let cfg = compiled(&c);
    let fastcgi = Some(crate::finding::LEFT_OUT[crate::finding::FASTCGI]);
    // The location, everything in it, the fallbacks and the index entry:
    // each a drop the report names as FastCGI, nothing else blocking.
    for part in [
        "location ~ \\.php",
        "fastcgi_pass php",
        "fastcgi_split_path_info",
        "rewrite ^/(?!index",
        "try_files $uri /index.php",
        "try_files $uri $uri/ /index.php",
        "index index.php",
    ] {
        let f = finding(&c, part);
        assert_eq!(f.impact, Impact::Dropped, "{f}");
        assert_eq!(crate::finding::left_out_feature(f), fastcgi, "{f}");
    }
    assert_eq!(
        c.blocking().count(),
        0,
        "{:#?}",
        c.blocking().collect::<Vec<_>>()
    );
    // A script is never served as a file: the PHP location keeps its place
    // with a 404 stand-in, and no index entry names a script.
    assert_eq!(get(&cfg, "s.test", "/index.php").status, Some(404));
    for part in ["|/|", "\\.css"] {
        let ActionOut::Static {
            index, try_files, ..
        } = &route(&c, part).action
        else {
            panic!("{part} is not static:\n{}", yaml(&c))
        };
        assert_eq!(index, &vec!["index.html".to_string()], "{}", yaml(&c));
        assert_eq!(try_files.last().map(String::as_str), Some("=404"));
    }
}

#[test]
fn a_proxy_pass_variable_only_set_assigns_is_left_out_scripting() {
    // Jitsi's websocket location: `$prefix` comes from `set` in other
    // locations.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    let c = conv(&http(&format!(
        "server {{ listen 80; server_name s.test; root {root};
            location = /ws {{ proxy_pass http://127.0.0.1:5280/ws?prefix=$prefix&$args; }}
            location ~ ^/([a-z]+)/ws {{ set $prefix $1; rewrite ^ /ws; }}
        }}"
    )));
    let f = finding(&c, "proxy_pass http://127.0.0.1:5280");
    assert_eq!(f.impact, Impact::Dropped);
    assert!(f.reason.contains("`$prefix`"), "{f}");
    assert_eq!(
        crate::finding::left_out_feature(f),
        Some(crate::finding::LEFT_OUT[crate::finding::SCRIPTING])
    );
    assert_eq!(
        c.blocking().count(),
        0,
        "{:#?}",
        c.blocking().collect::<Vec<_>>()
    );
}

#[test]
fn a_named_location_rewriting_to_one_path_and_a_regex_file_alias() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    std::fs::write(dir.path().join("index.html"), "home").unwrap();
    std::fs::write(dir.path().join("config.js"), "cfg").unwrap();
    // Jitsi's room names and per-room config.js.
    let c = conv(&http(&format!(
        "server {{ listen 80; server_name s.test; root {root};
            location ~ ^/([a-z]+)/config.js$ {{ alias {root}/config.js; }}
            location ~ ^/([a-z]+)$ {{ try_files $uri @root_path; }}
            location @root_path {{ rewrite ^/(.*)$ / break; }}
        }}"
    )));
    compiled(&c);
    assert_eq!(
        c.blocking().count(),
        0,
        "{:#?}",
        c.blocking().collect::<Vec<_>>()
    );
    let rooms = c
        .set
        .routes
        .iter()
        .find(|r| matches!(&r.action, ActionOut::Static { try_files, .. } if !try_files.is_empty()))
        .unwrap_or_else(|| panic!("no try_files route\n{}", yaml(&c)));
    let ActionOut::Static { try_files, .. } = &rooms.action else {
        unreachable!()
    };
    assert_eq!(
        try_files,
        &vec!["$uri".to_string(), "/".into(), "=404".into()]
    );
    // Carried (so not among the findings), as are the named location and
    // the alias.
    no_finding(&c, "rewrite ^/(.*)$ / break");
    no_finding(&c, "alias");
    assert!(
        c.set
            .routes
            .iter()
            .any(|r| matches!(&r.action, ActionOut::Static { alias: Some(a), .. } if a.ends_with("/config.js"))),
        "{}",
        yaml(&c)
    );
}
