//! nginx's `error_page` as the route key `error_pages`, over real sockets:
//! a real `aegis run`, a real origin that fails on demand, and an upstream
//! address nobody listens on.

mod util;

use http::Request;
use util::*;

fn req(p: &Proxy, method: &str, path: &str) -> Request<TestBody> {
    request(p, method, "site.test", path, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_pages_answer_in_place_of_errors_as_nginx_does() {
    let failing = Backend::start("failing").await;
    failing.set_failing(true);
    // A port that was free a moment ago: connections are refused (502).
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let routes = format!(
        r#"
upstreams:
  - name: dead
    endpoints: ["{dead}"]
    passive: {{ max_fails: 0 }}
  - name: failing
    endpoints: ["{failing}"]
routes:
  - name: page
    match: {{ path: /50x.html }}
    respond: {{ status: 200, body: "sorry", headers: {{ content-type: text/html }} }}
  - name: keep
    match: {{ path_prefix: /keep }}
    upstream: dead
    error_pages: [{{ statuses: [502, 504], uri: /50x.html }}]
  - name: ok
    match: {{ path_prefix: /ok }}
    upstream: dead
    error_pages: [{{ statuses: [502], uri: /50x.html, status: 200 }}]
  - name: away
    match: {{ path_prefix: /away }}
    upstream: dead
    error_pages: [{{ statuses: [502], uri: "https://status.example/", status: 301 }}]
  - name: passed
    match: {{ path_prefix: /passed }}
    upstream: failing
    error_pages: [{{ statuses: [500], uri: /50x.html }}]
  - name: intercepted
    match: {{ path_prefix: /intercepted }}
    upstream: failing
    intercept_errors: true
    error_pages: [{{ statuses: [500], uri: /50x.html, status: target }}]
"#,
        failing = failing.addr,
    );
    let p = Proxy::start("", &routes);
    let c = client();

    // The error's status, the page's body and headers.
    let got = send(&c, req(&p, "GET", "/keep/x")).await;
    assert_eq!((got.status, got.text().as_str()), (502, "sorry"));
    assert_eq!(got.header("content-type").as_deref(), Some("text/html"));
    // A POST's page is fetched as a GET; a HEAD's as a HEAD.
    let got = send(&c, req(&p, "POST", "/keep/x")).await;
    assert_eq!((got.status, got.text().as_str()), (502, "sorry"));
    let got = send(&c, req(&p, "HEAD", "/keep/x")).await;
    assert_eq!((got.status, got.body.len()), (502, 0));
    // `=200`.
    let got = send(&c, req(&p, "GET", "/ok")).await;
    assert_eq!((got.status, got.text().as_str()), (200, "sorry"));
    // A URL: a redirect.
    let got = send(&c, req(&p, "GET", "/away")).await;
    assert_eq!(got.status, 301);
    assert_eq!(
        got.header("location").as_deref(),
        Some("https://status.example/")
    );
    // The upstream's own 500 passes, unless intercepted (`=`: the page's
    // status).
    let got = send(&c, req(&p, "GET", "/passed")).await;
    assert_eq!((got.status, got.text().as_str()), (500, "failing"));
    let got = send(&c, req(&p, "GET", "/intercepted")).await;
    assert_eq!((got.status, got.text().as_str()), (200, "sorry"));
}

#[test]
fn bad_error_pages_are_compile_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("aegis.yaml"), "listen: [\"127.0.0.1:0\"]\n").unwrap();
    std::fs::write(
        dir.path().join("routes.yaml"),
        "upstreams:\n  - name: a\n    endpoints: [\"127.0.0.1:9\"]\n\
         routes:\n  - name: r\n    match: { path_prefix: / }\n    upstream: a\n    \
         error_pages:\n      - { statuses: [200], uri: /x }\n      \
         - { statuses: [404], uri: nowhere }\n      \
         - { statuses: [404], uri: \"https://a.example/\", status: 200 }\n",
    )
    .unwrap();
    let (ok, text) = aegis_check(dir.path());
    assert!(!ok, "{text}");
    assert!(text.contains("routes[0].error_pages[0].statuses"), "{text}");
    assert!(text.contains("routes[0].error_pages[1].uri"), "{text}");
    assert!(text.contains("routes[0].error_pages[2].status"), "{text}");
}

#[test]
fn respond_444_closes_the_connection_without_an_answer() {
    let routes = "routes:\n  - name: drop\n    match: { path_prefix: /drop }\n    \
                  respond: { status: 444 }\n  - name: ok\n    match: { path_prefix: / }\n    \
                  respond: { status: 200, body: ok }\n";
    let p = Proxy::start("", routes);
    let answer = raw(
        p.http,
        b"GET /drop HTTP/1.1\r\nHost: a.test\r\n\r\n",
        std::time::Duration::from_secs(2),
    );
    assert_eq!(answer, "", "nginx's 444 sends nothing");
    // Other requests are served as usual.
    let answer = raw(
        p.http,
        b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        std::time::Duration::from_secs(2),
    );
    assert_eq!(status_of(&answer), 200, "{answer}");
}
