//! Edge hardening, HTTP semantics (issue #16 items 3, 5–10, 12, 13, 17):
//! the real `aegis` binary between raw TCP clients (byte-level HTTP/1),
//! hyper's HTTP/2 client, a rustls client, and origins started here.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use util::*;

// Item 8: a missing, doubled or invalid Host is a 400, never forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_host_headers_get_400_and_never_reach_the_backend() {
    let a = Backend::start("a").await;
    let p = Proxy::start("", &one_route(a.addr, ""));
    let cases: [&[u8]; 6] = [
        b"GET /x HTTP/1.1\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: evil.example/x?\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: \r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a@b.example\r\n\r\n",
    ];
    for req in cases {
        let got = raw(p.http, req, Duration::from_secs(2));
        assert_eq!(
            status_of(&got),
            400,
            "{:?} -> {got}",
            String::from_utf8_lossy(req)
        );
    }
    assert_eq!(a.hits(), 0, "a bad Host reached the backend");
    // A good one passes, and is the one in X-Forwarded-Host; HTTP/1.0 may
    // omit it.
    let got = raw(
        p.http,
        b"GET /x HTTP/1.1\r\nHost: good.example:8080\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    );
    assert_eq!(status_of(&got), 200, "{got}");
    assert!(
        got.contains(r#""x-forwarded-host":["good.example:8080"]"#),
        "{got}"
    );
    let got = raw(p.http, b"GET /x HTTP/1.0\r\n\r\n", Duration::from_secs(2));
    assert_eq!(status_of(&got), 200, "{got}");
    assert!(!got.contains("x-forwarded-host"), "{got}");
}

// Item 9: the absolute-form target and `:authority` win over Host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_target_authority_wins_over_host() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let routes = format!(
        r#"
upstreams:
  - name: a
    endpoints: ["{}"]
  - name: b
    endpoints: ["{}"]
routes:
  - name: a
    match: {{ host: a.example, path_prefix: "/" }}
    upstream: a
  - name: b
    match: {{ host: b.example, path_prefix: "/" }}
    upstream: b
"#,
        a.addr, b.addr
    );
    let p = Proxy::start("", &routes);
    let got = raw(
        p.http,
        b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    );
    assert_eq!(status_of(&got), 200, "{got}");
    assert!(got.contains("x-backend: a"), "routed by Host: {got}");
    assert!(got.contains(r#""host":["a.example"]"#), "{got}");
    // Userinfo in an absolute URI is refused.
    let got = raw(
        p.http,
        b"GET http://user:pw@a.example/x HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    );
    assert_eq!(status_of(&got), 400, "{got}");

    // HTTP/2: `:authority` a.example, `host` b.example.
    let tcp = tokio::net::TcpStream::connect(p.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://a.example/h2")
        .header("host", "b.example")
        .body(full(""))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-backend"], "a", ":authority must win");
}

// Item 5: split HTTP/2 cookie fields reach an HTTP/1 upstream as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_cookie_fields_are_joined() {
    let a = Backend::start("a").await;
    let p = Proxy::start("", &one_route(a.addr, ""));
    let tcp = tokio::net::TcpStream::connect(p.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{}/c", p.http))
        .header("cookie", "session=abc")
        .header("cookie", "csrf=xyz")
        .body(full(""))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        echo["headers"]["cookie"],
        serde_json::json!(["session=abc; csrf=xyz"]),
        "{echo}"
    );
}

// Item 6: chunked wins; the stale Content-Length is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_length_with_chunked_loses_the_length() {
    let origin = origin::scripted(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let p = Proxy::start("", &one_route(origin, ""));
    let got = raw(
        p.http,
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    );
    assert_eq!(status_of(&got), 200, "{got}");
    let head = got.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(!head.contains("content-length: 100"), "{got}");
    assert!(got.contains("hello"), "{got}");
}

// Item 7: more than hyper's fixed 100 fields, well under max_header_bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_field_count_follows_max_header_bytes() {
    // The test Backend is hyper with its own limit of 100: a scripted origin.
    let origin =
        origin::scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            .await;
    let p = Proxy::start("", &one_route(origin, ""));
    let mut req = String::from("GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n");
    for i in 0..150 {
        req.push_str(&format!("x-f{i}: v\r\n"));
    }
    req.push_str("\r\n");
    assert!(req.len() < 4096);
    let got = raw(p.http, req.as_bytes(), Duration::from_secs(2));
    assert_eq!(status_of(&got), 200, "{got}");
    // Far more fields than the byte limit allows is still refused.
    let mut req = String::from("GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n");
    for i in 0..2100 {
        req.push_str(&format!("x-f{i}: v\r\n"));
    }
    req.push_str("\r\n");
    let got = raw(p.http, req.as_bytes(), Duration::from_secs(2));
    assert_eq!(status_of(&got), 431, "{got}");
}

// Item 12: transfer codings other than one `chunked` are a 501.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_transfer_codings_get_501() {
    let a = Backend::start("a").await;
    let p = Proxy::start("", &one_route(a.addr, ""));
    for te in ["gzip, chunked", "chunked, chunked"] {
        let req = format!(
            "POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        let got = raw(p.http, req.as_bytes(), Duration::from_secs(2));
        assert_eq!(status_of(&got), 501, "{te}: {got}");
    }
    assert_eq!(a.hits(), 0);
    let got = raw(
        p.http,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Duration::from_secs(2),
    );
    assert_eq!(status_of(&got), 200, "{got}");
    assert!(got.ends_with('5'), "{got}");
}

const WS_REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

// Item 13: upgrades only where the route says `websocket: true`; h2c never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_only_on_websocket_routes_and_never_h2c() {
    let a = Backend::start("a").await;
    let routes = format!(
        r#"
upstreams:
  - name: a
    endpoints: ["{}"]
routes:
  - name: ws
    match: {{ path_prefix: "/ws" }}
    upstream: a
    websocket: true
  - name: plain
    match: {{ path_prefix: "/" }}
    upstream: a
    strip_prefix: /plain
    add_prefix: /ws
"#,
        a.addr
    );
    let p = Proxy::start("", &routes);
    // The websocket route tunnels.
    let got = raw(p.http, WS_REQUEST, Duration::from_millis(800));
    assert_eq!(status_of(&got), 101, "{got}");
    // The same upgrade on a route without the key reaches the backend's
    // /ws as plain HTTP: no Upgrade header, no 101.
    let req = String::from_utf8_lossy(WS_REQUEST).replace("GET /ws ", "GET /plain ");
    let got = raw(p.http, req.as_bytes(), Duration::from_millis(800));
    assert_eq!(status_of(&got), 200, "{got}");
    assert!(!got.to_ascii_lowercase().contains("\"upgrade\""), "{got}");
    // h2c is never relayed, even on the websocket route.
    let got = raw(
        p.http,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
        Duration::from_millis(800),
    );
    assert_eq!(status_of(&got), 200, "{got}");
    let lower = got.to_ascii_lowercase();
    assert!(
        !lower.contains("\"upgrade\"") && !lower.contains("http2-settings"),
        "{got}"
    );
}

// The HTTP/2 settings docs/CONFIG.md names, as the server announces them:
// its SETTINGS frame and the WINDOW_UPDATE that opens the connection window.
#[test]
fn http2_settings_are_the_documented_ones() {
    let p = Proxy::start("", HELLO_ROUTES);
    let mut s = TcpStream::connect(p.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let mut settings: Option<Vec<(u16, u32)>> = None;
    let mut conn_window_increment = None;
    while settings.is_none() || conn_window_increment.is_none() {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).unwrap();
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).unwrap();
        match kind {
            // SETTINGS, not the ACK of ours.
            4 if flags & 1 == 0 => {
                settings = Some(
                    payload
                        .chunks(6)
                        .map(|c| {
                            (
                                u16::from_be_bytes([c[0], c[1]]),
                                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                            )
                        })
                        .collect(),
                );
            }
            8 if stream == 0 => {
                conn_window_increment = Some(
                    u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                        & 0x7fff_ffff,
                );
            }
            _ => {}
        }
    }
    let settings = settings.unwrap();
    let get = |id: u16| settings.iter().find(|(k, _)| *k == id).map(|(_, v)| *v);
    assert_eq!(get(0x3), Some(128), "MAX_CONCURRENT_STREAMS: {settings:?}");
    assert_eq!(
        get(0x4),
        Some(256 << 10),
        "INITIAL_WINDOW_SIZE: {settings:?}"
    );
    // The connection window starts at 65 535 (RFC 9113 §6.9.2).
    assert_eq!(conn_window_increment, Some((1 << 20) - 65_535));
}

// Item 10: a TLS connection that negotiated `h2` speaks HTTP/2 only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_h2_means_http2() {
    let a = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let der = make_cert(dir.path(), "a", &["a.test"]);
    let routes = format!(
        "tls:\n  - {{ server_names: [a.test], certificate: a.pem, key: a.key }}\n{}",
        one_route(a.addr, "")
    );
    let p = Proxy::start_in(
        dir,
        "listen_tls: [\"127.0.0.1:0\"]\n",
        &[("routes.yaml", &routes)],
    );
    let mut store = rustls::RootCertStore::empty();
    store.add(CertificateDer::from(der)).unwrap();
    let mk = |alpn: &[u8]| {
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store.clone())
        .with_no_client_auth();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    };
    let request = b"GET /x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    let answer = |alpn: &'static [u8]| {
        let connector = mk(alpn);
        async move {
            let tcp = tokio::net::TcpStream::connect(p.https.unwrap())
                .await
                .unwrap();
            let mut tls = connector
                .connect(ServerName::try_from("a.test").unwrap().to_owned(), tcp)
                .await
                .unwrap();
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
            tls.write_all(request).await.unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    let h1 = answer(b"http/1.1").await;
    assert_eq!(status_of(&h1), 200, "{h1}");
    let h2 = answer(b"h2").await;
    assert!(
        !h2.starts_with("HTTP/1.1"),
        "an h2 connection answered HTTP/1.1: {h2}"
    );
    assert_eq!(a.hits(), 1);
}

// Item 3: 408 on a head still incomplete at the header timeout; a silent
// connection is closed; the request-body idle timeout answers 408; a client
// that reads nothing is cut off after the send timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_time_out() {
    let a = Backend::start("a").await;
    let p = Proxy::start(
        "limits: { client_header_timeout: 1s, client_body_timeout: 1s, send_timeout: 1s }\n",
        &one_route(a.addr, ""),
    );
    // A trickled head.
    let started = Instant::now();
    let got = raw(
        p.http,
        b"GET /x HTTP/1.1\r\nHost: a\r\nX-Slow:",
        Duration::from_secs(5),
    );
    assert_eq!(status_of(&got), 408, "{got}");
    assert!(started.elapsed() < Duration::from_secs(4));
    // Nothing at all: closed, without an answer.
    let started = Instant::now();
    let got = raw(p.http, b"", Duration::from_secs(5));
    assert_eq!(got, "");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "idle connection kept open"
    );
    // A body that stops halfway.
    let started = Instant::now();
    let got = raw(
        p.http,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789",
        Duration::from_secs(5),
    );
    assert_eq!(status_of(&got), 408, "{got}");
    assert!(started.elapsed() < Duration::from_secs(4));
    // A client that never reads a 64 MiB response.
    let mut s = TcpStream::connect(p.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /bytes/67108864 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    assert!(
        total < 64 << 20,
        "the whole response waited for a client that did not read"
    );
}

// Item 17: `Bearer` is case-insensitive; a missing token stops the start
// before any data listener is bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_scheme_and_early_check() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let p = Proxy::start_in(
        dir,
        &format!("admin_token_file: {}\n", token.display()),
        &[("routes.yaml", "routes: []\n")],
    );
    let c = client();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let req = Request::get(format!("http://{}/admin/config", p.admin.unwrap()))
            .header("authorization", format!("{scheme} s3cret"))
            .body(full(""))
            .unwrap();
        assert_eq!(send(&c, req).await.status, 200, "{scheme}");
    }
    let req = Request::get(format!("http://{}/admin/config", p.admin.unwrap()))
        .header("authorization", "Basic s3cret")
        .body(full(""))
        .unwrap();
    assert_eq!(send(&c, req).await.status, 401);

    // Off loopback without a token: refused before listening.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("aegis.yaml"),
        "listen: [\"127.0.0.1:0\"]\nadmin: \"0.0.0.0:0\"\nadmin_token_env: AEGIS_TEST_NO_SUCH_TOKEN\naccess_log: \"off\"\nworkers: 0\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("routes.yaml"), "routes: []\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aegis"))
        .arg("run")
        .arg("--config-dir")
        .arg(dir.path())
        .arg("--state-dir")
        .arg(tempfile::tempdir().unwrap().path())
        .env_remove("AEGIS_TEST_NO_SUCH_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("token"), "{stderr}");
    assert!(
        !stderr.contains("listening http"),
        "bound before the token check: {stderr}"
    );
}

// Item 11: hyper 1.x cannot send a 1xx other than its own 100 Continue, so
// an upstream 103 is dropped (docs/CONFIG.md, "Edge behaviour"); what this
// checks is that the final response still arrives whole behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_early_hints_are_dropped_cleanly() {
    let origin = origin::scripted(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    )
    .await;
    let p = Proxy::start("", &one_route(origin, ""));
    let got = raw(
        p.http,
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    );
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.ends_with("ok"), "{got}");
}
