//! Response compression through a real `aegis run`: gzip and brotli for the
//! clients that ask, the plain body for the others, and the responses that
//! are never compressed (other types, short bodies, `proxied: off`).

mod util;

use std::convert::Infallible;
use std::io::Read as _;
use std::net::SocketAddr;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use util::*;

/// 100 KB of HTML that compresses well, but not to nothing.
fn page() -> Vec<u8> {
    let mut p = b"<html><body>\n".to_vec();
    let mut i = 0u32;
    while p.len() < 100_000 {
        p.extend_from_slice(
            format!("<p id=\"p{i}\">paragraph {i}, {}</p>\n", i * 7919 % 1000).as_bytes(),
        );
        i += 1;
    }
    p.truncate(100_000);
    p
}

/// An origin: `/page` the HTML page (with a strong ETag and Accept-Ranges),
/// `/png` the same bytes as `image/png`, `/tiny` ten bytes of HTML.
async fn origin() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let (ct, body) = match req.uri().path() {
                        "/png" => ("image/png", page()),
                        "/tiny" => ("text/html", b"0123456789".to_vec()),
                        _ => ("text/html; charset=utf-8", page()),
                    };
                    let r = Response::builder()
                        .header("content-type", ct)
                        .header("etag", "\"v1\"")
                        .header("accept-ranges", "bytes")
                        .body(full(body))
                        .unwrap();
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn routes(backend: SocketAddr) -> String {
    let long = "x".repeat(200);
    format!(
        r#"
upstreams:
  - name: a
    endpoints: ["{backend}"]
routes:
  - name: local
    match: {{ path_prefix: "/local" }}
    respond: {{ status: 200, body: "{long}", headers: {{ content-type: text/html }} }}
  - name: r
    match: {{ path_prefix: "/" }}
    upstream: a
"#
    )
}

async fn fetch(c: &Client, p: &Proxy, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut b = Request::get(p.url(path));
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    send(c, b.body(full("")).unwrap()).await
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .expect("a gzip stream");
    out
}

fn unbrotli(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(b, 4096)
        .read_to_end(&mut out)
        .expect("a brotli stream");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_and_brotli_for_clients_that_ask() {
    let o = origin().await;
    let p = Proxy::start(
        "compression: { gzip: true, brotli: true, level: 5, proxied: any }\n",
        &routes(o),
    );
    let c = client();
    let want = page();

    let r = fetch(&c, &p, "/page", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding").as_deref(), Some("gzip"));
    assert_eq!(r.header("vary").as_deref(), Some("Accept-Encoding"));
    assert_eq!(r.header("etag").as_deref(), Some("W/\"v1\""));
    assert_eq!(r.header("content-length"), None);
    assert_eq!(r.header("accept-ranges"), None);
    assert!(r.body.len() < want.len() / 3, "{} bytes", r.body.len());
    assert!(gunzip(&r.body) == want, "gunzipped body differs");

    // HEAD: the headers a GET gets (nginx's gzip filter runs before it
    // knows the answer is headers only), and no body at all.
    let head = Request::head(p.url("/page"))
        .header("accept-encoding", "gzip")
        .body(full(""))
        .unwrap();
    let r = send(&c, head).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding").as_deref(), Some("gzip"));
    assert_eq!(r.header("vary").as_deref(), Some("Accept-Encoding"));
    assert_eq!(r.header("content-length"), None);
    assert!(r.body.is_empty(), "{} bytes", r.body.len());

    // Both accepted: brotli is preferred; gzip refused by q=0: brotli.
    for ae in ["gzip, deflate, br", "gzip;q=0, br"] {
        let r = fetch(&c, &p, "/page", &[("accept-encoding", ae)]).await;
        assert_eq!(r.header("content-encoding").as_deref(), Some("br"), "{ae}");
        assert!(unbrotli(&r.body) == want, "{ae}: unbrotli'd body differs");
    }

    // Identity, or nothing asked: the plain body with its length (and Vary,
    // for the caches in front).
    for h in [
        &[("accept-encoding", "identity")][..],
        &[][..],
        &[("accept-encoding", "gzip;q=0")][..],
    ] {
        let r = fetch(&c, &p, "/page", h).await;
        assert_eq!(r.header("content-encoding"), None, "{h:?}");
        assert_eq!(
            r.header("content-length").as_deref(),
            Some("100000"),
            "{h:?}"
        );
        assert_eq!(
            r.header("vary").as_deref(),
            Some("Accept-Encoding"),
            "{h:?}"
        );
        assert_eq!(r.header("etag").as_deref(), Some("\"v1\""), "{h:?}");
        assert!(r.body == want);
    }

    // Not a listed type, too short: as the origin sent them.
    let r = fetch(&c, &p, "/png", &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("content-length").as_deref(), Some("100000"));
    assert!(r.body == want);
    let r = fetch(&c, &p, "/tiny", &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(&r.body[..], b"0123456789");

    // A HEAD of a compressible page: see `gzip_and_brotli_for_clients_that_ask`
    // (nginx 1.22 answers it with `Content-Encoding: gzip`, as the
    // real-config battery shows).

    // A `respond` body long enough is compressed too.
    let r = fetch(&c, &p, "/local", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.header("content-encoding").as_deref(), Some("gzip"));
    assert_eq!(gunzip(&r.body), "x".repeat(200).into_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brotli_only_when_enabled() {
    let o = origin().await;
    let p = Proxy::start("compression: { gzip: true }\n", &routes(o));
    let c = client();
    let r = fetch(&c, &p, "/page", &[("accept-encoding", "br")]).await;
    assert_eq!(r.header("content-encoding"), None);
    let r = fetch(&c, &p, "/page", &[("accept-encoding", "br, gzip")]).await;
    assert_eq!(r.header("content-encoding").as_deref(), Some("gzip"));
    assert!(gunzip(&r.body) == page());
}

/// `proxied: off` (the default, nginx's `gzip_proxied off`): a request that
/// came through another proxy (`Via`) gets the plain body, whichever route
/// answers; the same request without `Via` is compressed, from the upstream
/// and from a `respond` route alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_off_leaves_requests_through_proxies_alone() {
    let o = origin().await;
    let p = Proxy::start("compression: { gzip: true }\n", &routes(o));
    let c = client();
    for path in ["/page", "/local"] {
        let via = [("accept-encoding", "gzip"), ("via", "1.1 cdn.example")];
        let r = fetch(&c, &p, path, &via).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), None, "{path}");
        assert_eq!(
            r.header("vary").as_deref(),
            Some("Accept-Encoding"),
            "{path}"
        );
        let r = fetch(&c, &p, path, &[("accept-encoding", "gzip")]).await;
        assert_eq!(
            r.header("content-encoding").as_deref(),
            Some("gzip"),
            "{path}"
        );
    }
}

/// Without a `compression` block nothing changes: the default is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default() {
    let o = origin().await;
    let p = Proxy::start("", &routes(o));
    let c = client();
    let r = fetch(&c, &p, "/page", &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("vary"), None);
    assert_eq!(r.header("content-length").as_deref(), Some("100000"));
}
