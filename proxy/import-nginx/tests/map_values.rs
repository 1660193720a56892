//! nginx `map` variables in `proxy_set_header`, `add_header` and `return`
//! targets: carried as Aegis maps and header/redirect templates, checked by
//! loading the result in the engine and rendering what nginx would send;
//! maps and uses Aegis cannot express stay dropped, each with its reason.

use std::path::Path;

use aegis_engine::config::{ConfigSource, SourceFile, compile, parse_settings};
use aegis_engine::{CompiledConfig, DecideOptions, Outcome, RequestHead, decide};
use aegis_import_nginx::{Conversion, Impact, Options, convert, parse::parse_str};
use http::{HeaderMap, Method};

fn conv(servers: &str) -> Conversion {
    let text = format!("events {{}}\nhttp {{\n{servers}\n}}\n");
    let tree = parse_str(&text, "nginx.conf", Path::new(".")).unwrap();
    convert(&tree, &Options::default())
}

fn yaml(c: &Conversion) -> String {
    c.set
        .files("test")
        .into_iter()
        .map(|(n, t)| format!("--- {n}\n{t}"))
        .collect()
}

fn compiled(c: &Conversion) -> CompiledConfig {
    let files = c
        .set
        .files("test")
        .into_iter()
        .map(|(name, text)| SourceFile { name, text })
        .collect();
    let src = ConfigSource::from_files(Path::new("."), files);
    let settings = parse_settings(&src).unwrap_or_else(|e| panic!("{e}\n{}", yaml(c)));
    compile(&src, &settings.limits).unwrap_or_else(|e| panic!("{e}\n{}", yaml(c)))
}

/// The report's entry for the directive starting with `text`.
fn entry<'a>(c: &'a Conversion, text: &str) -> &'a aegis_import_nginx::Finding {
    c.report
        .iter()
        .find(|f| f.directive.starts_with(text))
        .unwrap_or_else(|| panic!("no entry for `{text}` in {:#?}", c.report))
}

fn head<'a>(headers: &'a HeaderMap, path: &'a str, query: Option<&'a str>) -> RequestHead<'a> {
    RequestHead {
        method: &Method::GET,
        scheme: "http",
        host: Some("shop.test"),
        path,
        query,
        headers,
        client_ip: "192.0.2.1".parse().unwrap(),
        port: 0,
    }
}

/// Renders the decided route's request and response values with
/// variables for `head`.
fn rendered(cfg: &CompiledConfig, h: &RequestHead<'_>) -> (HeaderMap, HeaderMap) {
    let d = decide(cfg, h, DecideOptions::default());
    let route = d.route.expect("a route");
    let host = aegis_engine::decide::normalize_host(h.host.unwrap_or(""));
    let vars = aegis_engine::compiled::HeaderVars {
        method: h.method,
        scheme: h.scheme,
        host: &host,
        path: h.path,
        request_path: h.path,
        query: h.query,
        headers: h.headers,
        client_ip: h.client_ip,
        request_id: "",
        maps: &cfg.maps,
    };
    let mut req = HeaderMap::new();
    route.request_edits.apply_request(&mut req, &vars);
    let mut resp = HeaderMap::new();
    let r = route.response_edits.render(&vars);
    route
        .response_edits
        .apply_response(http::StatusCode::OK, &mut resp, &r);
    (req, resp)
}

/// Discourse's `$thescheme` and Nextcloud's `$asset_immutable`.
#[test]
fn maps_in_request_and_response_headers_are_carried() {
    let c = conv(
        "upstream app { server 127.0.0.1:3000; }
        map $http_x_forwarded_proto $thescheme {
            default $scheme;
            https https;
        }
        map $arg_v $asset_immutable {
            \"\" \"\";
            default \", immutable\";
        }
        server {
            listen 80;
            server_name shop.test;
            location / {
                proxy_set_header X-Forwarded-Proto $thescheme;
                proxy_set_header X-Agent \"$http_user_agent $request_method $arg_v\";
                add_header Cache-Control \"public, max-age=15778463$asset_immutable\";
                proxy_pass http://app;
            }
        }",
    );
    let cfg = compiled(&c);
    assert!(!c.dropped_anything(), "{:#?}", c.findings);
    for m in ["map $http_x_forwarded_proto", "map $arg_v"] {
        assert_eq!(entry(&c, m).impact, Impact::Carried, "{:#?}", c.report);
    }
    let mut headers = HeaderMap::new();
    let (req, resp) = rendered(&cfg, &head(&headers, "/a.css", None));
    assert_eq!(req["x-forwarded-proto"], "http");
    assert_eq!(resp["cache-control"], "public, max-age=15778463");
    headers.insert("x-forwarded-proto", "https".parse().unwrap());
    let (req, resp) = rendered(&cfg, &head(&headers, "/a.css", Some("v=2")));
    assert_eq!(req["x-forwarded-proto"], "https");
    assert_eq!(req["x-agent"], " GET 2");
    assert_eq!(resp["cache-control"], "public, max-age=15778463, immutable");
}

#[test]
fn maps_in_redirect_targets_are_carried() {
    let c = conv(
        "map $http_accept_language $lang {
            default en;
            ~^de de;
        }
        server {
            listen 80;
            server_name shop.test;
            location / { return 302 https://$host/$lang$request_uri; }
        }",
    );
    let cfg = compiled(&c);
    assert!(!c.dropped_anything(), "{:#?}", c.findings);
    let mut headers = HeaderMap::new();
    headers.insert("accept-language", "de-CH".parse().unwrap());
    let d = decide(
        &cfg,
        &head(&headers, "/x", Some("q=1")),
        DecideOptions::default(),
    );
    match d.outcome {
        Outcome::Redirect { location, .. } => assert_eq!(location, "https://shop.test/de/x?q=1"),
        o => panic!("{o:?}\n{}", yaml(&c)),
    }
}

/// What Aegis cannot express stays dropped, with the reason, once.
#[test]
fn maps_and_uses_aegis_cannot_express_are_dropped_with_the_reason() {
    let c = conv(
        "upstream app { server 127.0.0.1:3000; }
        map $http_x $with_cache { default \"$upstream_cache_status\"; }
        map $http_host $by_host { hostnames; default a; }
        map $remote_user $by_user { default a; }
        map $http_y $fine { default b; }
        server {
            listen 80;
            location / {
                proxy_set_header X-A $with_cache;
                proxy_set_header X-B $by_host;
                add_header X-C $by_user;
                add_header X-D \"$fine $upstream_cache_status\";
                add_header X-E \"$fine\";
                proxy_pass http://app;
            }
        }",
    );
    let cfg = compiled(&c);
    let dropped = |text: &str, why: &str| {
        let e = entry(&c, text);
        assert_eq!(e.impact, Impact::Dropped, "{text}: {e:?}");
        assert!(e.reason.contains(why), "{text}: {}", e.reason);
    };
    dropped("map $http_x", "$upstream_cache_status");
    dropped("map $http_host", "hostnames");
    dropped("map $remote_user", "$remote_user");
    dropped("proxy_set_header X-A", "$with_cache");
    dropped("add_header X-D", "$upstream_cache_status");
    assert_eq!(entry(&c, "map $http_y").impact, Impact::Carried);
    assert_eq!(entry(&c, "add_header X-E").impact, Impact::Carried);
    // Each directive is in the report once.
    for text in ["map $http_x", "proxy_set_header X-A", "add_header X-D"] {
        let n = c
            .report
            .iter()
            .filter(|f| f.directive.starts_with(text))
            .count();
        assert_eq!(n, 1, "{text}: {:#?}", c.report);
    }
    let headers = HeaderMap::new();
    let (_, resp) = rendered(&cfg, &head(&headers, "/", None));
    assert_eq!(resp["x-e"], "b");
    assert!(!resp.contains_key("x-d"));
}
