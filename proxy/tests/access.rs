//! nginx's `allow`/`deny`, `limit_except`, realip, `proxy_redirect` and `$request_id`, as
//! the route keys `access`, `limit_except`, `location_rewrite` and the hot
//! key `real_ip`, over real sockets: a real `aegis run` in front of a real
//! origin, clients on loopback (127.0.0.1 is the only address a test can
//! connect from, so other client addresses arrive through `real_ip`).

mod util;

use http::Request;
use util::*;

fn req(p: &Proxy, method: &str, host: &str, path: &str, xff: Option<&str>) -> Request<TestBody> {
    let xff: Vec<(&str, &str)> = xff.map(|x| ("x-forwarded-for", x)).into_iter().collect();
    request(p, method, host, path, &xff)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_rules_limit_except_and_real_ip_decide_who_is_served() {
    let app = Backend::start("app").await;
    let routes = format!(
        r#"
real_ip:
  from: ["127.0.0.1"]
  header: X-Forwarded-For
  recursive: true
upstreams:
  - name: app
    endpoints: ["{app}"]
routes:
  - name: admin
    match: {{ path_prefix: /admin/ }}
    upstream: app
    access: [{{ allow: "10.0.0.0/8" }}, {{ deny: all }}]
  - name: upload
    match: {{ path_prefix: /upload }}
    upstream: app
    limit_except: {{ methods: [GET], access: [{{ deny: all }}] }}
  - name: site
    match: {{ path_prefix: / }}
    upstream: app
    access: [{{ deny: "203.0.113.0/24" }}]
    request_headers: {{ set: {{ x-real-ip: "$remote_addr" }} }}
"#,
        app = app.addr,
    );
    let p = Proxy::start("", &routes);
    let c = client();

    // The peer is trusted, so the client is the rightmost untrusted
    // X-Forwarded-For address: 198.51.100.1 passes the site's rules, and
    // is what the upstream is told.
    let got = send(&c, req(&p, "GET", "a.test", "/x", Some("198.51.100.1"))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let echo = got.json();
    assert_eq!(echo["headers"]["x-real-ip"][0], "198.51.100.1", "{echo}");
    assert_eq!(
        echo["headers"]["x-forwarded-for"][0], "198.51.100.1, 198.51.100.1",
        "nginx's $proxy_add_x_forwarded_for: the header, then the client"
    );
    // From the denied network: 403, and the upstream never sees it.
    let hits = app.hits();
    let got = send(
        &c,
        req(&p, "GET", "a.test", "/x", Some("203.0.113.7, 127.0.0.1")),
    )
    .await;
    assert_eq!(got.status, 403);
    assert_eq!(app.hits(), hits);
    // Without the header the client is the peer itself.
    assert_eq!(
        send(&c, req(&p, "GET", "a.test", "/x", None)).await.status,
        200
    );

    // First matching rule wins; no rule matching the peer: the final deny.
    let inside = send(&c, req(&p, "GET", "a.test", "/admin/", Some("10.2.3.4"))).await;
    assert_eq!(inside.status, 200);
    let outside = send(&c, req(&p, "GET", "a.test", "/admin/", None)).await;
    assert_eq!(outside.status, 403);

    // limit_except GET: GET and HEAD pass, other methods are denied.
    for (method, want) in [("GET", 200), ("HEAD", 200), ("POST", 403), ("DELETE", 403)] {
        let got = send(&c, req(&p, method, "a.test", "/upload", None)).await;
        assert_eq!(got.status, want, "{method}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn location_rewrite_turns_upstream_redirects_into_client_addresses() {
    let origin = util::origin::scripted(
        b"HTTP/1.1 302 Found\r\nLocation: http://app.internal/login?next=%2F\r\n\
          Refresh: 3; url=http://app.internal/done\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    let elsewhere = util::origin::scripted(
        b"HTTP/1.1 302 Found\r\nLocation: http://other.example/x\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    let routes = format!(
        r#"
upstreams:
  - name: app
    endpoints: ["{origin}"]
  - name: other
    endpoints: ["{elsewhere}"]
routes:
  - name: other
    match: {{ path_prefix: /other }}
    upstream: other
    location_rewrite: [{{ from: "http://app.internal/", to: "/" }}]
  - name: app
    match: {{ path_prefix: / }}
    upstream: app
    location_rewrite: [{{ from: "http://app.internal/", to: "/" }}]
"#
    );
    let p = Proxy::start("", &routes);
    let c = client();
    let got = send(&c, req(&p, "GET", "site.test", "/", None)).await;
    assert_eq!(got.status, 302);
    // Made absolute with the client's host and the (non-default) port, as
    // nginx's `proxy_redirect default` and `port_in_redirect` do.
    assert_eq!(
        got.header("location").as_deref(),
        Some(format!("http://site.test:{}/login?next=%2F", p.http.port()).as_str())
    );
    assert_eq!(got.header("refresh").as_deref(), Some("3; url=/done"));
    // A Location no rule matches passes unchanged.
    let got = send(&c, req(&p, "GET", "site.test", "/other", None)).await;
    assert_eq!(
        got.header("location").as_deref(),
        Some("http://other.example/x")
    );
}

#[test]
fn bad_access_rules_are_compile_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("aegis.yaml"), "listen: [\"127.0.0.1:0\"]\n").unwrap();
    std::fs::write(
        dir.path().join("routes.yaml"),
        "upstreams:\n  - name: a\n    endpoints: [\"127.0.0.1:9\"]\n\
         routes:\n  - name: r\n    match: { path_prefix: / }\n    upstream: a\n    \
         access: [{ allow: \"10.0.0.300/8\" }]\n    \
         limit_except: { methods: [] }\n\
         real_ip: { from: [\"nonsense\"] }\n",
    )
    .unwrap();
    let (ok, text) = aegis_check(dir.path());
    assert!(!ok, "{text}");
    assert!(text.contains("routes[0].access[0]"), "{text}");
    assert!(text.contains("routes[0].limit_except.methods"), "{text}");
    assert!(text.contains("real_ip.from[0]"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_fresh_for_every_request() {
    let app = Backend::start("app").await;
    let routes = util::one_route(
        app.addr,
        "    request_headers: { set: { x-request-id: \"$request_id\" } }\n",
    );
    let p = Proxy::start("", &routes);
    let c = client();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let echo = send(&c, req(&p, "GET", "a.test", "/", None)).await.json();
        let id = echo["headers"]["x-request-id"][0]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        assert!(!seen.contains(&id), "{id} twice");
        seen.push(id);
    }
}
