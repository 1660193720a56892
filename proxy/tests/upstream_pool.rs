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
