//! Origins written against raw sockets, for what hyper's server will not
//! send (a stale Content-Length beside chunked, a 103) or for a connection
//! dropped without an answer.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads one request head (through the blank line) into `got`; false when
/// the client closed first.
async fn read_head(s: &mut TcpStream, got: &mut Vec<u8>) -> bool {
    let mut buf = vec![0u8; 16384];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// Accepts forever, handing each connection to `serve`.
async fn accept_each<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve(s));
        }
    });
    addr
}

/// An origin that answers every request with `answer`, then closes.
pub async fn scripted(answer: &'static [u8]) -> SocketAddr {
    accept_each(move |mut s| async move {
        let mut got = Vec::new();
        if read_head(&mut s, &mut got).await {
            let _ = s.write_all(answer).await;
            let _ = s.shutdown().await;
        }
    })
    .await
}

/// A keep-alive origin: `GET /close` drops the connection without an
/// answer (what passive health counts as a failure), anything else is a
/// 200 `ok`.
pub async fn flaky() -> SocketAddr {
    accept_each(|mut s| async move {
        let mut got = Vec::new();
        while read_head(&mut s, &mut got).await {
            if got.starts_with(b"GET /close") {
                return;
            }
            got.clear();
            let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            if s.write_all(ok).await.is_err() {
                return;
            }
        }
    })
    .await
}
