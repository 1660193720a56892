//! A read-side probe on HTTP/1 connections that notes, for each request head,
//! whether it carried both `Content-Length` and `Transfer-Encoding`.
//!
//! hyper resolves that case itself (chunked wins, the length is dropped
//! before the service sees the headers), which is RFC-compliant but hides an
//! attempt at request smuggling. The probe follows message framing over the
//! raw bytes (heads, fixed-length and chunked bodies) without buffering
//! bodies, and the listener tags the matching request with
//! [`crate::pipeline::AmbiguousFraming`] so the pipeline answers 400. It stops
//! following (and tags nothing further) on HTTP/2, upgrades, CONNECT, or
//! anything it cannot parse: hyper's own parser then stays the judge.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest head the probe follows (beyond it hyper rejects the request).
const MAX_HEAD: usize = 1 << 20;
/// Largest chunk-size or trailer line.
const MAX_LINE: usize = 16 << 10;

/// The verdicts of a connection, one per request head, in order.
#[derive(Debug, Clone, Default)]
pub struct Verdicts(Arc<Mutex<VecDeque<bool>>>);

impl Verdicts {
    /// Whether the next request on the connection had ambiguous framing.
    pub fn next_is_ambiguous(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
            .unwrap_or(false)
    }

    fn push(&self, ambiguous: bool) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() < 1024 {
            q.push_back(ambiguous);
        }
    }
}

#[derive(Debug)]
enum State {
    Head(Vec<u8>),
    Fixed(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    ChunkDataEnd(Vec<u8>),
    Trailers(Vec<u8>),
    Passthrough,
}

#[derive(Debug)]
struct Scanner {
    state: State,
    verdicts: Verdicts,
}

enum Next {
    Head,
    Fixed(u64),
    Chunked,
    Stop,
}

fn parse_head(head: &[u8]) -> (bool, Next) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or("");
    if request_line.contains("HTTP/2") || request_line.starts_with("CONNECT ") {
        return (false, Next::Stop);
    }
    let mut te: Vec<String> = Vec::new();
    let mut cl: Option<u64> = None;
    let mut cl_seen = false;
    let mut upgrade = false;
    for line in lines {
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return (false, Next::Stop);
        };
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim();
        match name.as_str() {
            "transfer-encoding" => te.push(value.to_ascii_lowercase()),
            "content-length" => {
                cl_seen = true;
                cl = value.split(',').next().and_then(|v| v.trim().parse().ok());
            }
            "upgrade" => upgrade = true,
            _ => {}
        }
    }
    let ambiguous = cl_seen && !te.is_empty();
    let next = if ambiguous || upgrade {
        Next::Stop
    } else if !te.is_empty() {
        let chunked = te
            .last()
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|t| t.trim() == "chunked");
        if chunked { Next::Chunked } else { Next::Stop }
    } else {
        match (cl_seen, cl) {
            (false, _) | (true, Some(0)) => Next::Head,
            (true, Some(n)) => Next::Fixed(n),
            (true, None) => Next::Stop,
        }
    };
    (ambiguous, next)
}

fn head_complete(buf: &[u8]) -> Option<usize> {
    // End of head: an empty line (CRLF CRLF, or bare LFs as httparse allows).
    let mut i = 0usize;
    while let Some(&b) = buf.get(i) {
        if b == b'\n' {
            match (buf.get(i.saturating_add(1)), buf.get(i.saturating_add(2))) {
                (Some(b'\n'), _) => return Some(i.saturating_add(2)),
                (Some(b'\r'), Some(b'\n')) => return Some(i.saturating_add(3)),
                _ => {}
            }
        }
        i = i.saturating_add(1);
    }
    None
}

impl Scanner {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let state = std::mem::replace(&mut self.state, State::Passthrough);
            self.state = match state {
                State::Passthrough => return,
                State::Head(mut buf) => {
                    if buf.is_empty() {
                        // Empty lines before a request line are allowed.
                        let skip = data
                            .iter()
                            .take_while(|b| **b == b'\r' || **b == b'\n')
                            .count();
                        data = data.get(skip..).unwrap_or(&[]);
                        if data.is_empty() {
                            self.state = State::Head(buf);
                            return;
                        }
                    }
                    let start = buf.len().saturating_sub(3);
                    buf.extend_from_slice(data);
                    match head_complete(buf.get(start..).unwrap_or(&[])) {
                        Some(end_rel) => {
                            let end = start.saturating_add(end_rel);
                            let (ambiguous, next) = parse_head(buf.get(..end).unwrap_or(&[]));
                            self.verdicts.push(ambiguous);
                            let consumed_from_data =
                                end.saturating_sub(buf.len().saturating_sub(data.len()));
                            data = data.get(consumed_from_data..).unwrap_or(&[]);
                            match next {
                                Next::Head => State::Head(Vec::new()),
                                Next::Fixed(n) => State::Fixed(n),
                                Next::Chunked => State::ChunkSize(Vec::new()),
                                Next::Stop => State::Passthrough,
                            }
                        }
                        None if buf.len() > MAX_HEAD => State::Passthrough,
                        None => {
                            data = &[];
                            State::Head(buf)
                        }
                    }
                }
                State::Fixed(n) => {
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(data.len());
                    data = data.get(take..).unwrap_or(&[]);
                    let left = n.saturating_sub(u64::try_from(take).unwrap_or(u64::MAX));
                    if left == 0 {
                        State::Head(Vec::new())
                    } else {
                        State::Fixed(left)
                    }
                }
                State::ChunkSize(mut line) => match take_line(&mut line, &mut data) {
                    None if line.len() > MAX_LINE => State::Passthrough,
                    None => State::ChunkSize(line),
                    Some(()) => {
                        let text = String::from_utf8_lossy(&line);
                        let size = text.split(';').next().map(str::trim).unwrap_or("");
                        match u64::from_str_radix(size, 16) {
                            Ok(0) => State::Trailers(Vec::new()),
                            Ok(n) => State::ChunkData(n),
                            Err(_) => State::Passthrough,
                        }
                    }
                },
                State::ChunkData(n) => {
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(data.len());
                    data = data.get(take..).unwrap_or(&[]);
                    let left = n.saturating_sub(u64::try_from(take).unwrap_or(u64::MAX));
                    if left == 0 {
                        State::ChunkDataEnd(Vec::new())
                    } else {
                        State::ChunkData(left)
                    }
                }
                State::ChunkDataEnd(mut line) => match take_line(&mut line, &mut data) {
                    None if line.len() > 2 => State::Passthrough,
                    None => State::ChunkDataEnd(line),
                    Some(()) => State::ChunkSize(Vec::new()),
                },
                State::Trailers(mut line) => match take_line(&mut line, &mut data) {
                    None if line.len() > MAX_LINE => State::Passthrough,
                    None => State::Trailers(line),
                    Some(()) => {
                        let empty = line.iter().all(|b| *b == b'\r');
                        if empty {
                            State::Head(Vec::new())
                        } else {
                            State::Trailers(Vec::new())
                        }
                    }
                },
            };
        }
    }
}

/// Moves bytes up to and including a `\n` from `data` into `line` (without
/// the `\n`). `Some` when the line is complete.
fn take_line(line: &mut Vec<u8>, data: &mut &[u8]) -> Option<()> {
    match data.iter().position(|b| *b == b'\n') {
        Some(pos) => {
            line.extend_from_slice(data.get(..pos).unwrap_or(&[]));
            *data = data.get(pos.saturating_add(1)..).unwrap_or(&[]);
            Some(())
        }
        None => {
            line.extend_from_slice(data);
            *data = &[];
            None
        }
    }
}

/// The I/O wrapper: reads pass through unchanged and feed the scanner.
pub struct FramingProbe<I> {
    inner: I,
    scanner: Scanner,
}

impl<I> FramingProbe<I> {
    pub fn new(inner: I) -> (Self, Verdicts) {
        let verdicts = Verdicts::default();
        (
            Self {
                inner,
                scanner: Scanner {
                    state: State::Head(Vec::new()),
                    verdicts: verdicts.clone(),
                },
            },
            verdicts,
        )
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FramingProbe<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r
            && let Some(new) = buf.filled().get(before..)
        {
            this.scanner.feed(new);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FramingProbe<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> Vec<bool> {
        let v = Verdicts::default();
        let mut s = Scanner {
            state: State::Head(Vec::new()),
            verdicts: v.clone(),
        };
        for c in chunks {
            s.feed(c);
        }
        let q = v.0.lock().unwrap();
        q.iter().copied().collect()
    }

    #[test]
    fn follows_pipelined_requests() {
        let raw = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX: y\r\n\r\nGET /c HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(scan(&[raw]), vec![false, false, true]);
        // The same bytes one at a time.
        let bytes: Vec<&[u8]> = raw.chunks(1).collect();
        assert_eq!(scan(&bytes), vec![false, false, true]);
    }

    #[test]
    fn stops_on_h2_preface() {
        assert_eq!(scan(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]), vec![false]);
    }
}
