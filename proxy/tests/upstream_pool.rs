//! The upstream keep-alive pool against origins on raw sockets that count
//! the connections they accept: reuse across sequential requests, an origin
//! that closes an idle connection between requests, a chunked response with
//! trailers relayed and its connection reused after it.

mod util;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use util::*;

/// Reads one request head (through the blank line); false when the peer
/// closed first. Bytes past the head stay in `got` for the next one.
async fn read_head(s: &mut TcpStream, got: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 16384];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            got.drain(..end + 4);
            return true;
        }
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// An origin answering every request with `answer` on a keep-alive
/// connection; with `close_after`, it closes each connection after that
/// many answers (without saying so in the answer). Returns the address and
/// the count of connections that carried a request (the gate's reachability
/// probe at startup connects without one).
async fn origin(
    answer: &'static [u8],
    close_after: Option<usize>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut served = 0;
                while read_head(&mut s, &mut got).await {
                    if served == 0 {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                    served += 1;
                    if close_after == Some(served) {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_reuse_one_upstream_connection() {
    let (addr, accepted) = origin(OK, None).await;
    let proxy = Proxy::start("", &one_route(addr, ""));
    let c = client();
    for i in 0..20 {
        let got = get(&c, &proxy.url(&format!("/n{i}")), None).await;
        assert_eq!(
            (got.status, got.text().as_str()),
            (200, "ok"),
            "request {i}"
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "20 sequential requests should share one pooled upstream connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_closing_an_idle_connection_does_not_fail_the_next_request() {
    // Each connection answers once, keep-alive by the answer, then closes:
    // the pooled connection is dead when the next request comes.
    let (addr, accepted) = origin(OK, Some(1)).await;
    let proxy = Proxy::start("", &one_route(addr, ""));
    let c = client();
    for i in 0..5 {
        let got = get(&c, &proxy.url(&format!("/n{i}")), None).await;
        assert_eq!(
            (got.status, got.text().as_str()),
            (200, "ok"),
            "request {i}"
        );
        // Time for the close to arrive before the next request.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        5,
        "one fresh connection per request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_response_with_trailers_is_relayed_and_the_connection_reused() {
    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc123\r\n\r\n";
    let (addr, accepted) = origin(CHUNKED, None).await;
    let proxy = Proxy::start("", &one_route(addr, ""));
    let req = "GET /t HTTP/1.1\r\nHost: t.test\r\nTE: trailers\r\n\r\n";
    for i in 0..3 {
        let answer = tokio::task::spawn_blocking({
            let http = proxy.http;
            move || raw(http, req.as_bytes(), Duration::from_millis(700))
        })
        .await
        .unwrap();
        let lower = answer.to_ascii_lowercase();
        assert!(answer.starts_with("HTTP/1.1 200"), "request {i}: {answer}");
        assert!(
            lower.contains("transfer-encoding: chunked"),
            "request {i}: {answer}"
        );
        assert!(
            lower.contains("5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc123\r\n\r\n"),
            "request {i}: body and trailer not relayed: {answer:?}"
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the connection is handed back after the trailers"
    );
}

// The lean upstream client (proxy/src/upstream/h1.rs): what it adds over
// the cases above.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_responses_are_skipped_and_the_connection_reused() {
    const ANSWER: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let (addr, accepted) = origin(ANSWER, None).await;
    let proxy = Proxy::start("", &one_route(addr, ""));
    let c = client();
    for i in 0..5 {
        let got = get(&c, &proxy.url(&format!("/n{i}")), None).await;
        assert_eq!(
            (got.status, got.text().as_str()),
            (200, "ok"),
            "request {i}"
        );
        assert!(got.header("link").is_none(), "1xx headers leaked: {i}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delimited_body_is_relayed_whole_and_the_connection_not_reused() {
    // No length, no chunking: the body ends when the origin closes (it
    // does after each answer).
    const ANSWER: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nread until the close";
    let (addr, accepted) = origin(ANSWER, Some(1)).await;
    let proxy = Proxy::start("", &one_route(addr, ""));
    let c = client();
    for i in 0..3 {
        let got = get(&c, &proxy.url(&format!("/n{i}")), None).await;
        assert_eq!(
            (got.status, got.text().as_str()),
            (200, "read until the close"),
            "request {i}"
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "never reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_overfull_heads_answer_502() {
    let huge: &'static [u8] = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
            "a".repeat(70 * 1024)
        )
        .into_bytes()
        .into_boxed_slice(),
    );
    let mut many = String::from("HTTP/1.1 200 OK\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("Content-Length: 2\r\n\r\nok");
    let many: &'static [u8] = Box::leak(many.into_bytes().into_boxed_slice());
    let cases: [(&str, &'static [u8]); 5] = [
        ("malformed", b"HTTP/1.1 200 OK\r\nNot A Header\r\n\r\nok"),
        ("not http", b"SSH-2.0-OpenSSH_9.2\r\n\r\n"),
        (
            "bad status",
            b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
        ),
        ("oversized", huge),
        ("overfull", many),
    ];
    for (name, answer) in cases {
        let (addr, _) = origin(answer, None).await;
        let proxy = Proxy::start("", &one_route(addr, ""));
        let got = get(&client(), &proxy.url("/x"), None).await;
        assert_eq!(got.status, 502, "{name}: {}", got.text());
    }
}

/// An origin that reads each request whole (its body by Content-Length or
/// to the last chunk), keeps the raw bytes, and answers `ok`.
async fn recording_origin() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut got: Vec<u8> = Vec::new();
                let mut buf = [0u8; 16384];
                loop {
                    let complete = got
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .and_then(|end| {
                            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                            let body = &got[end + 4..];
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length: "))
                                .and_then(|v| v.trim().parse::<usize>().ok());
                            if head.contains("transfer-encoding: chunked") {
                                body.windows(5)
                                    .position(|w| w == b"0\r\n\r\n")
                                    .map(|p| end + 4 + p + 5)
                            } else {
                                let n = len.unwrap_or(0);
                                (body.len() >= n).then_some(end + 4 + n)
                            }
                        });
                    if let Some(total) = complete {
                        let req: Vec<u8> = got.drain(..total).collect();
                        log.lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&req).into_owned());
                        if s.write_all(OK).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_keep_their_framing_and_stream() {
    let (addr, seen) = recording_origin().await;
    let proxy = Proxy::start("", &one_route(addr, ""));
    let c = client();
    // A body of known length: Content-Length, as the client sent it.
    let req = http::Request::post(proxy.url("/sized"))
        .body(full("hello"))
        .unwrap();
    let got = send(&c, req).await;
    assert_eq!((got.status, got.text().as_str()), (200, "ok"));
    // A streamed body of unknown length (a pause between its parts):
    // chunked, each part its own chunk.
    let req = http::Request::post(proxy.url("/streamed"))
        .body(http_body_util::BodyExt::boxed_unsync(Stalling::new(
            Duration::from_millis(100),
        )))
        .unwrap();
    let got = send(&c, req).await;
    assert_eq!((got.status, got.text().as_str()), (200, "ok"));
    // A GET without a body: no framing header at all.
    let got = get(&c, &proxy.url("/plain"), None).await;
    assert_eq!(got.status, 200);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    let lower: Vec<String> = seen.iter().map(|r| r.to_ascii_lowercase()).collect();
    assert!(
        lower[0].starts_with("post /sized http/1.1\r\n"),
        "{}",
        seen[0]
    );
    assert!(
        lower[0].contains("\r\ncontent-length: 5\r\n"),
        "{}",
        seen[0]
    );
    assert!(!lower[0].contains("transfer-encoding"), "{}", seen[0]);
    assert!(seen[0].ends_with("\r\n\r\nhello"), "{}", seen[0]);
    assert!(
        lower[1].contains("\r\ntransfer-encoding: chunked\r\n"),
        "{}",
        seen[1]
    );
    assert!(!lower[1].contains("content-length"), "{}", seen[1]);
    assert!(
        seen[1].ends_with("\r\n\r\n9\r\npart one \r\n8\r\npart two\r\n0\r\n\r\n"),
        "{:?}",
        seen[1]
    );
    assert!(
        lower[2].starts_with("get /plain http/1.1\r\n"),
        "{}",
        seen[2]
    );
    assert!(
        !lower[2].contains("content-length") && !lower[2].contains("transfer-encoding"),
        "{}",
        seen[2]
    );
}
