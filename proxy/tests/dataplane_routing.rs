//! Data plane over real sockets: routing, balancing, health, error paths,
//! intermediary headers, limits, framing attacks and config swaps. Each test
//! starts its own origins and its own `aegis run`.

mod util;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::Request;
use util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_path_routing_to_two_pools() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let routes = format!(
        r#"
upstreams:
  - name: pool-a
    endpoints: ["{}"]
  - name: pool-b
    endpoints: ["{}"]
routes:
  - name: api-host
    match: {{ host: api.test, path_prefix: "/" }}
    upstream: pool-a
  - name: b-path
    match: {{ path_prefix: "/b/" }}
    upstream: pool-b
    strip_prefix: "/b"
  - name: default
    match: {{ path_prefix: "/" }}
    upstream: pool-a
    request_headers: {{ set: {{ x-edit: "yes", x-real-ip: "$remote_addr", x-orig: "$scheme://$host$request_uri" }} }}
    response_headers: {{ set: {{ x-resp-edit: "1" }} }}
"#,
        a.addr, b.addr
    );
    let p = Proxy::start("", &routes);
    let c = client();
    let r = get(&c, &p.url("/b/thing?x=1"), Some("www.test")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.backend().as_deref(), Some("b"));
    assert_eq!(r.json()["path"], "/thing");
    assert_eq!(r.json()["query"], "x=1");
    let r = get(&c, &p.url("/b/thing"), Some("api.test")).await;
    assert_eq!(r.backend().as_deref(), Some("a"), "host wins over path");
    let r = get(&c, &p.url("/other"), Some("www.test")).await;
    assert_eq!(r.backend().as_deref(), Some("a"));
    assert_eq!(r.json()["headers"]["x-edit"][0], "yes");
    assert_eq!(r.json()["headers"]["x-real-ip"][0], "127.0.0.1");
    assert_eq!(r.json()["headers"]["x-orig"][0], "http://www.test/other");
    assert_eq!(r.header("x-resp-edit").as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_and_least_conn_spread() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let routes = format!(
        r#"
upstreams:
  - name: rr
    endpoints: ["{a}", "{b}"]
  - name: lc
    balance: least_conn
    endpoints: ["{a}", "{b}"]
routes:
  - name: rr
    match: {{ path_prefix: "/" }}
    upstream: rr
  - name: lc
    match: {{ path_prefix: "/lc/" }}
    upstream: lc
    strip_prefix: "/lc"
"#,
        a = a.addr,
        b = b.addr
    );
    let p = Proxy::start("", &routes);
    let c = client();
    let mut counts = std::collections::HashMap::new();
    for _ in 0..20 {
        let r = get(&c, &p.url("/x"), None).await;
        *counts.entry(r.backend().unwrap()).or_insert(0) += 1;
    }
    assert_eq!(counts.get("a"), Some(&10), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&10), "{counts:?}");

    // least_conn: with one long request in flight on one endpoint, the
    // following requests all go to the other one.
    let c2 = c.clone();
    let url = p.url("/lc/slow/1500");
    let slow = tokio::spawn(async move { get(&c2, &url, None).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let busy = if a.paths.lock().unwrap().iter().any(|p| p == "/slow/1500") {
        "a"
    } else {
        "b"
    };
    for _ in 0..6 {
        let r = get(&c, &p.url("/lc/y"), None).await;
        assert_ne!(
            r.backend().as_deref(),
            Some(busy),
            "least_conn sent to the busy endpoint"
        );
    }
    assert_eq!(slow.await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_dead_endpoint_out_and_bring_it_back() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let routes = format!(
        r#"
upstreams:
  - name: pool
    endpoints: ["{a}", "{b}"]
    health_check: {{ path: /health, interval: 100ms, timeout: 500ms, fall: 2, rise: 2 }}
routes:
  - name: all
    match: {{ path_prefix: "/" }}
    upstream: pool
"#,
        a = a.addr,
        b = b.addr
    );
    let p = Proxy::start("", &routes);
    let c = client();
    b.set_down(true);
    let gauge_down = format!("endpoint=\"{}\"}} 0", b.addr);
    assert!(
        eventually(Duration::from_secs(5), || async {
            admin_get(&p, "/metrics").await.text().contains(&gauge_down)
        })
        .await,
        "endpoint b never marked down"
    );
    for _ in 0..10 {
        assert_eq!(
            get(&c, &p.url("/x"), None).await.backend().as_deref(),
            Some("a")
        );
    }
    b.set_down(false);
    let gauge_up = format!("endpoint=\"{}\"}} 1", b.addr);
    assert!(
        eventually(Duration::from_secs(5), || async {
            admin_get(&p, "/metrics").await.text().contains(&gauge_up)
        })
        .await,
        "endpoint b never came back"
    );
    let mut saw_b = false;
    for _ in 0..6 {
        saw_b |= get(&c, &p.url("/x"), None).await.backend().as_deref() == Some("b");
    }
    assert!(saw_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_map_to_502_503_504() {
    let slow = Backend::start("slow").await;
    let good = Backend::start("good").await;
    // A port with nothing listening: bind, note, close.
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
  - name: slow
    endpoints: ["{slow}"]
    response_timeout: 300ms
    passive: {{ max_fails: 0 }}
  - name: checked-dead
    endpoints: ["{dead}"]
    health_check: {{ path: /health, interval: 100ms, timeout: 200ms, fall: 1, rise: 1 }}
  - name: retry
    endpoints: ["{dead}", "{good}"]
    balance: round_robin
    passive: {{ max_fails: 0 }}
routes:
  - name: dead-route
    match: {{ path_prefix: "/dead" }}
    upstream: dead
  - name: slow-body
    match: {{ path_prefix: "/slow-body/" }}
    upstream: slow
    strip_prefix: /slow-body
  - name: slow-route
    match: {{ path_prefix: "/slow" }}
    upstream: slow
  - name: none-route
    match: {{ path_prefix: "/none" }}
    upstream: checked-dead
  - name: retry-route
    match: {{ path_prefix: "/retry" }}
    upstream: retry
    strip_prefix: /retry
"#,
        slow = slow.addr,
        good = good.addr,
    );
    let p = Proxy::start("", &routes);
    let c = client();
    let r = get(&c, &p.url("/dead"), None).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("502"));
    let r = get(&c, &p.url("/slow/2000"), None).await;
    assert_eq!(r.status, 504);
    // A body that stalls longer than the timeout is cut off; one that pauses
    // less passes whole.
    let ok = get(&c, &p.url("/slow-body/stall/100"), None).await;
    assert_eq!(ok.text(), "part one part two");
    let resp = c
        .request(
            Request::get(p.url("/slow-body/stall/2000"))
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let started = std::time::Instant::now();
    assert!(
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .is_err()
    );
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&c, &p.url("/none"), None).await.status == 503
        })
        .await
    );
    // Connect failures go to the next endpoint, GET and POST alike (the
    // request never left).
    for _ in 0..4 {
        assert_eq!(get(&c, &p.url("/retry/x"), None).await.status, 200);
        let post = Request::post(p.url("/retry/upload"))
            .body(full("abc"))
            .unwrap();
        let r = send(&c, post).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "3");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_removed_and_forwarded_headers_set() {
    let a = Backend::start("a").await;
    let routes = format!(
        r#"
upstreams:
  - name: a
    endpoints: ["{}"]
routes:
  - name: r
    match: {{ path_prefix: "/" }}
    upstream: a
  - name: rewrite
    match: {{ path_prefix: "/rw" }}
    upstream: a
    host_rewrite: internal.svc
"#,
        a.addr
    );
    let p = Proxy::start("", &routes);
    let raw_req = "GET /echo HTTP/1.1\r\nHost: shop.test\r\nConnection: keep-alive, x-drop-me\r\nX-Drop-Me: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nX-Forwarded-For: 203.0.113.9\r\nX-Aegis-Score: 0\r\nX-Keep: 1\r\n\r\n";
    let c = client();
    let _ = c; // the raw socket lets us send arbitrary Connection tokens
    let text = raw(p.http, raw_req.as_bytes(), Duration::from_millis(800));
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let head_l = head.to_ascii_lowercase();
    assert!(head_l.starts_with("http/1.1 200"), "{head}");
    assert!(
        !head_l.contains("x-hop"),
        "response hop-by-hop leaked: {head}"
    );
    assert!(head_l.contains("via: 1.1 aegis"));
    let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    let h = &v["headers"];
    for gone in ["x-drop-me", "keep-alive", "proxy-connection", "connection"] {
        assert!(h.get(gone).is_none(), "{gone} reached the backend: {h}");
    }
    assert_eq!(h["te"][0], "trailers");
    assert_eq!(h["x-keep"][0], "1");
    assert_eq!(h["x-forwarded-for"][0], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "http");
    assert_eq!(h["x-forwarded-host"][0], "shop.test");
    assert_eq!(h["host"][0], "shop.test");
    assert_eq!(h["via"][0], "1.1 aegis");
    assert_eq!(h["x-aegis-score"][0], "0", "client score replaced by ours");
    let r = get(&client(), &p.url("/rw"), Some("shop.test")).await;
    assert_eq!(r.json()["headers"]["host"][0], "internal.svc");
    assert_eq!(r.json()["headers"]["x-forwarded-host"][0], "shop.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_413_431_429() {
    let a = Backend::start("a").await;
    let routes = format!(
        r#"
upstreams:
  - name: a
    endpoints: ["{}"]
rate_limits:
  - name: tight
    requests_per_second: 1
    burst: 2
routes:
  - name: small
    match: {{ path_prefix: "/small" }}
    upstream: a
    strip_prefix: /small
    max_request_body: 1KiB
  - name: limited
    match: {{ path_prefix: "/limited" }}
    upstream: a
    rate_limit: tight
  - name: r
    match: {{ path_prefix: "/" }}
    upstream: a
"#,
        a.addr
    );
    let p = Proxy::start("limits: { max_header_bytes: 4KiB }\n", &routes);
    let c = client();
    // Declared length over the limit: refused before the body is read.
    let r = send(
        &c,
        Request::post(p.url("/small"))
            .body(full(vec![b'x'; 2048]))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 413);
    // Chunked over the limit: refused while streaming.
    let chunked =
        "POST /small/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n"
            .to_string()
            + &"y".repeat(2048)
            + "\r\n0\r\n\r\n";
    let text = raw(p.http, chunked.as_bytes(), Duration::from_millis(800));
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    // Under the limit passes.
    let r = send(
        &c,
        Request::post(p.url("/small/upload"))
            .body(full(vec![b'x'; 512]))
            .unwrap(),
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, "512"));
    // Header bytes.
    let big = "v".repeat(5000);
    let r = send(
        &c,
        Request::get(p.url("/x"))
            .header("x-big", big)
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 431);
    // Rate limit: burst of 2, then 429 with Retry-After.
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let r = get(&c, &p.url("/limited"), None).await;
        if r.status == 429 {
            retry_after = r.header("retry-after");
        }
        statuses.push(r.status);
    }
    assert_eq!(&statuses[..3], &[200, 200, 429], "{statuses:?}");
    assert_eq!(retry_after.as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_attacks_get_400_and_never_reach_the_backend() {
    let a = Backend::start("a").await;
    let routes = format!(
        r#"
upstreams:
  - name: a
    endpoints: ["{}"]
routes:
  - name: r
    match: {{ path_prefix: "/" }}
    upstream: a
"#,
        a.addr
    );
    let p = Proxy::start("", &routes);
    let attacks: [&[u8]; 6] = [
        b"POST /cl-te HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        b"POST /te-cl HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n",
        b"POST /dup-cl HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"GET /fold HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n",
        b"POST /te-gzip HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\nPOST /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ];
    for (i, attack) in attacks.iter().enumerate() {
        let text = raw(p.http, attack, Duration::from_millis(600));
        assert!(
            text.contains("HTTP/1.1 400"),
            "attack {i} not refused: {text}"
        );
    }
    let paths = a.paths.lock().unwrap().clone();
    assert_eq!(
        paths,
        vec!["/second".to_string()],
        "only the honest request may pass"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_and_actions() {
    let a = Backend::start("a").await;
    let routes = format!(
        r#"
upstreams:
  - name: a
    endpoints: ["{}"]
routes:
  - name: up
    match: {{ path_prefix: "/" }}
    upstream: a
  - name: moved
    match: {{ path: "/old" }}
    redirect: {{ status: 301, location: "https://$host/new" }}
  - name: teapot
    match: {{ path: "/tea" }}
    respond: {{ status: 418, body: "short and stout", headers: {{ x-tea: "1" }} }}
"#,
        a.addr
    );
    let p = Proxy::start("", &routes);
    // Expect: 100-continue: the interim response comes before we send the body.
    let mut s = std::net::TcpStream::connect(p.http).unwrap();
    use std::io::{Read, Write};
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    let interim = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    s.write_all(b"hello").unwrap();
    let n = s.read(&mut buf).unwrap();
    let fin = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(
        fin.starts_with("HTTP/1.1 200") && fin.ends_with("5"),
        "{fin}"
    );
    // Expect with a body over the limit: 413 and no 100.
    let big = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        10 << 20
    );
    let text = raw(p.http, big.as_bytes(), Duration::from_millis(600));
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");

    let c = client();
    let r = get(&c, &p.url("/old"), Some("shop.test")).await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location").as_deref(),
        Some("https://shop.test/new")
    );
    let r = get(&c, &p.url("/tea"), None).await;
    assert_eq!((r.status, r.text().as_str()), (418, "short and stout"));
    assert_eq!(r.header("x-tea").as_deref(), Some("1"));
    let r = get(&c, &p.url("/a/../../etc"), None).await;
    assert_eq!(r.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feature_score_header_and_block() {
    let a = Backend::start("a").await;
    let routes = format!(
        r#"
upstreams:
  - name: a
    endpoints: ["{}"]
features:
  - name: curl
    weight: 0.4
    when: {{ header: user-agent, contains: curl }}
  - name: evil
    weight: 1.0
    when: {{ query: evil, present: true }}
scoring: {{ block_at: 1.0, header: x-bot-score }}
routes:
  - name: r
    match: {{ path_prefix: "/" }}
    upstream: a
"#,
        a.addr
    );
    let p = Proxy::start("", &routes);
    let c = client();
    let r = send(
        &c,
        Request::get(p.url("/x"))
            .header("user-agent", "curl/8")
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.json()["headers"]["x-bot-score"][0], "0.4");
    let r = get(&c, &p.url("/x?evil=1"), None).await;
    assert_eq!(r.status, 403);
    assert_eq!(a.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_swap_under_concurrent_requests_fails_none() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let routes = |pool: &str, tag: &str| {
        format!(
            r#"
upstreams:
  - name: a
    endpoints: ["{a}"]
  - name: b
    endpoints: ["{b}"]
routes:
  - name: r
    match: {{ path_prefix: "/" }}
    upstream: {pool}
    response_headers: {{ set: {{ x-tag: "{tag}" }} }}
"#,
            a = a.addr,
            b = b.addr
        )
    };
    // No bake window: this checks the swap itself, and a bake comparing
    // latency on a loaded test machine could roll a version back (another
    // `aegis: config` line) and make `reload` read the wrong one.
    let p = Arc::new(Proxy::start(
        "gate: { bake_seconds: 0 }\n",
        &routes("a", "v0"),
    ));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (p, stop, ok, bad) = (p.clone(), stop.clone(), ok.clone(), bad.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let path = if i % 2 == 0 { "/slow/50" } else { "/x" };
            while !stop.load(Ordering::SeqCst) {
                match c
                    .request(Request::get(p.url(path)).body(full("")).unwrap())
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        use http_body_util::BodyExt;
                        if r.into_body().collect().await.is_ok() {
                            ok.fetch_add(1, Ordering::SeqCst);
                        } else {
                            bad.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    _ => {
                        bad.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    let mut versions = std::collections::HashSet::new();
    for i in 1..=10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let pool = if i % 2 == 0 { "a" } else { "b" };
        p.write("routes.yaml", &routes(pool, &format!("v{i}")));
        let pp = p.clone();
        versions.insert(
            tokio::task::spawn_blocking(move || pp.reload())
                .await
                .unwrap(),
        );
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(versions.len(), 10);
    assert_eq!(
        bad.load(Ordering::SeqCst),
        0,
        "requests failed during swaps"
    );
    assert!(ok.load(Ordering::SeqCst) > 50);
    let r = get(&client(), &p.url("/x"), None).await;
    assert_eq!(r.header("x-tag").as_deref(), Some("v10"));
    assert_eq!(r.backend().as_deref(), Some("a"));
    assert!(b.hits() > 0);
}

/// nginx's `proxy_pass $var` from a `map`: the upstream is chosen per
/// request from the request's method and headers, through a chain of maps;
/// a value naming no upstream answers 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maps_choose_the_upstream_per_request() {
    let api = Backend::start("api").await;
    let ui = Backend::start("ui").await;
    let routes = format!(
        r#"
maps:
  - name: by_accept
    source: "$http_accept"
    exact: {{ "application/activity+json": "http://api" }}
    regex: [{{ regex: "(?i)^text/json", value: api }}]
    default: "http://ui"
  - name: pass
    source: "$request_method"
    exact: {{ POST: api }}
    default: "$by_accept"
  - name: raw_host
    source: "$uri"
    default: "$host"
upstreams:
  - name: api
    endpoints: ["{api}"]
  - name: ui
    endpoints: ["{ui}"]
routes:
  - name: by_host
    match: {{ path_prefix: /host/ }}
    upstream: "$raw_host"
  - name: site
    match: {{ path_prefix: / }}
    upstream: "$pass"
"#,
        api = api.addr,
        ui = ui.addr,
    );
    let p = Proxy::start("", &routes);
    let c = client();
    let send_to = |method: &str, path: &str, host: &str, accept: Option<&str>| {
        let accept: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
        request(&p, method, host, path, &accept)
    };
    let got = send(&c, send_to("GET", "/", "a.test", None)).await;
    assert_eq!(got.backend().as_deref(), Some("ui"));
    let got = send(&c, send_to("POST", "/", "a.test", None)).await;
    assert_eq!(got.backend().as_deref(), Some("api"));
    let got = send(
        &c,
        send_to("GET", "/", "a.test", Some("Application/Activity+JSON")),
    )
    .await;
    assert_eq!(got.backend().as_deref(), Some("api"));
    let got = send(&c, send_to("GET", "/", "a.test", Some("text/json"))).await;
    assert_eq!(got.backend().as_deref(), Some("api"));
    // A variable's value is checked per request: `ui` names an upstream,
    // `nowhere.test` none (502, as nginx without a resolver).
    let got = send(&c, send_to("GET", "/host/", "ui", None)).await;
    assert_eq!(got.backend().as_deref(), Some("ui"));
    let got = send(&c, send_to("GET", "/host/", "nowhere.test", None)).await;
    assert_eq!(got.status, 502);
}

/// nginx's `rewrite` over real sockets: a redirect with captures and the
/// query string, `break` changing the path sent upstream, `last` searching
/// the routes again, and a loop answered 500 after nginx's 10 cycles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_redirect_rewrite_and_search_again() {
    let app = Backend::start("app").await;
    let routes = format!(
        r#"
upstreams:
  - name: app
    endpoints: ["{app}"]
routes:
  - name: loop
    match: {{ path_prefix: /loop }}
    upstream: app
    rewrites: [{{ regex: "^/loop(.*)$", to: "/loop/$1", flag: last }}]
  - name: new
    match: {{ path_prefix: /new/ }}
    respond: {{ status: 200, body: "new" }}
  - name: site
    match: {{ path_prefix: / }}
    upstream: app
    rewrites:
      - {{ regex: "^(.+)/+$", to: "$1", flag: permanent }}
      - {{ regex: "^/old/(.*)$", to: "/new/$1", flag: last }}
      - {{ regex: "^/v1/(.*)$", to: "/api/$1", flag: break }}
"#,
        app = app.addr,
    );
    let p = Proxy::start("", &routes);
    let c = client();
    let got = get(&c, &p.url("/docs/?page=2"), Some("a.test")).await;
    assert_eq!(got.status, 301);
    assert_eq!(got.header("location").as_deref(), Some("/docs?page=2"));
    let got = get(&c, &p.url("/old/x"), Some("a.test")).await;
    assert_eq!((got.status, got.text().as_str()), (200, "new"));
    let got = get(&c, &p.url("/v1/users?id=7"), Some("a.test")).await;
    assert_eq!(got.status, 200);
    let echo = got.json();
    assert_eq!(echo["path"], "/api/users", "{echo}");
    assert_eq!(echo["query"], "id=7", "{echo}");
    let got = get(&c, &p.url("/plain"), Some("a.test")).await;
    assert_eq!(got.json()["path"], "/plain");
    let got = get(&c, &p.url("/loop"), Some("a.test")).await;
    assert_eq!(got.status, 500);
}
