//! Aegis's own HTTP/1.1 server (`proxy/src/server/h1.rs`, issue 15) and its
//! hand-off to hyper: the real `aegis` binary, raw TCP clients, and the
//! test origin. The own loop serves the common request; a connection that
//! sends anything else (chunked or late bodies, HTTP/1.0, upgrades) goes to
//! hyper from that request on, with nothing lost at the boundary.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use util::*;

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// Reads from `s` until `n` responses' worth of `needle` arrived (or 5 s).
fn read_until(s: &mut TcpStream, needle: &str, n: usize) -> String {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline && count(&String::from_utf8_lossy(&out), needle) < n {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => out.extend_from_slice(&buf[..k]),
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// Pipelined in one write: a request the own loop serves, a chunked one it
// hands to hyper, and one hyper serves after it. All three are answered,
// in order, and each reached the origin once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_keeps_every_request_across_the_hand_off() {
    let a = Backend::start("a").await;
    let p = Proxy::start("", &one_route(a.addr, ""));
    let req = b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n\
POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
GET /third HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let got = raw(p.http, req, Duration::from_secs(3));
    assert_eq!(count(&got, "HTTP/1.1 200 OK\r\n"), 3, "{got}");
    assert_eq!(
        a.paths.lock().unwrap().clone(),
        ["/first", "/upload", "/third"],
        "{got}"
    );
    // The upload's answer is the byte count the origin received.
    let second = got.split("HTTP/1.1 200 OK\r\n").nth(2).unwrap();
    assert!(second.ends_with("\r\n\r\n5"), "{second}");
}

// Pipelined requests the own loop serves are answered in order on one
// connection, and a HEAD among them has no body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let a = Backend::start("a").await;
    let p = Proxy::start("", &one_route(a.addr, ""));
    let mut s = TcpStream::connect(p.http).unwrap();
    s.write_all(
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nHEAD /two HTTP/1.1\r\nHost: a\r\n\r\nGET /three HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .unwrap();
    let got = read_until(&mut s, "HTTP/1.1 200 OK\r\n", 3);
    assert_eq!(count(&got, "HTTP/1.1 200 OK\r\n"), 3, "{got}");
    assert_eq!(a.paths.lock().unwrap().clone(), ["/one", "/two", "/three"]);
    // The connection stays open for a fourth, sent after the answers.
    s.write_all(b"GET /four HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let more = read_until(&mut s, "HTTP/1.1 200 OK\r\n", 1);
    assert_eq!(count(&more, "HTTP/1.1 200 OK\r\n"), 1, "{more}");
    assert!(
        more.to_ascii_lowercase().contains("connection: close"),
        "{more}"
    );
    assert_eq!(a.paths.lock().unwrap().clone().len(), 4);
}

// A body that arrives after its head still reaches the origin whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_after_its_head_is_forwarded_whole() {
    let a = Backend::start("a").await;
    let p = Proxy::start("", &one_route(a.addr, ""));
    let mut s = TcpStream::connect(p.http).unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    s.write_all(b" world").unwrap();
    let got = read_until(&mut s, "\r\n\r\n11", 1);
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.ends_with("\r\n\r\n11"), "{got}");
    // A body in the same write as its head is the own loop's.
    let got = raw(
        p.http,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        Duration::from_secs(3),
    );
    assert!(got.ends_with("\r\n\r\n5"), "{got}");
}

// HTTP/1.0 keeps its semantics (hyper serves it): a 1.0 answer and a close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_is_answered_in_http10_and_closed() {
    let a = Backend::start("a").await;
    let p = Proxy::start("", &one_route(a.addr, ""));
    let start = Instant::now();
    let got = raw(
        p.http,
        b"GET /old HTTP/1.0\r\nHost: a\r\n\r\n",
        Duration::from_secs(3),
    );
    assert!(got.starts_with("HTTP/1.0 200 OK\r\n"), "{got}");
    assert!(start.elapsed() < Duration::from_secs(2), "not closed");
}

// The own loop's answers carry what hyper's did: a Date, a length, and a
// close when the client asked for one (then the connection ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_carry_date_length_and_close() {
    let a = Backend::start("a").await;
    let p = Proxy::start("", &one_route(a.addr, ""));
    let start = Instant::now();
    let got = raw(
        p.http,
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    );
    let head = got.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{got}");
    assert!(head.contains("\r\ndate: "), "{got}");
    assert!(head.contains("\r\nconnection: close"), "{got}");
    assert!(head.contains("\r\ncontent-length: "), "{got}");
    assert!(start.elapsed() < Duration::from_secs(2), "not closed");
}

// An HTTP/2 preface after an HTTP/1 request does not turn the connection
// into HTTP/2 (only a connection's first bytes may): hyper, serving the
// rest as HTTP/1, closes it without an HTTP/2 frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_preface_after_a_request_stays_http1() {
    let a = Backend::start("a").await;
    let p = Proxy::start("", &one_route(a.addr, ""));
    let got = raw(
        p.http,
        b"GET /x HTTP/1.1\r\nHost: a\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        Duration::from_secs(3),
    );
    assert_eq!(count(&got, "HTTP/1.1 200 OK\r\n"), 1, "{got:?}");
    assert!(!got.contains('\0'), "an HTTP/2 frame came back: {got:?}");
    // As a connection's first bytes, the preface is HTTP/2 (h2c).
    let got = raw(
        p.http,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        Duration::from_secs(1),
    );
    assert!(got.contains('\0'), "no HTTP/2 SETTINGS frame: {got:?}");
}
