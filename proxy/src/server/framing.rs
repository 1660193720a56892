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

/// Reads one head over its bytes, without copying or allocating: names are
/// compared case-insensitively in place, values are borrowed slices.
fn parse_head(head: &[u8]) -> (bool, Next) {
    let mut lines = head
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().unwrap_or(&[]);
    if request_line.windows(6).any(|w| w == b"HTTP/2") || request_line.starts_with(b"CONNECT ") {
        return (false, Next::Stop);
    }
    // The last Transfer-Encoding line (its last coding decides), whether
    // any was seen, and the first Content-Length value.
    let mut te_last: Option<&[u8]> = None;
    let mut cl: Option<u64> = None;
    let mut cl_seen = false;
    for line in lines {
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return (false, Next::Stop);
        };
        let name = line.get(..colon).unwrap_or(&[]).trim_ascii();
        let value = line
            .get(colon.saturating_add(1)..)
            .unwrap_or(&[])
            .trim_ascii();
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te_last = Some(value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            cl_seen = true;
            cl = value
                .split(|b| *b == b',')
                .next()
                .and_then(|v| std::str::from_utf8(v.trim_ascii()).ok())
                .and_then(|v| v.parse().ok());
        }
    }
    let ambiguous = cl_seen && te_last.is_some();
    // An upgrade request is followed like any other: only the routes with
    // `websocket: true` switch protocols (and then no request follows),
    // while a refused upgrade leaves the connection HTTP; stopping at an
    // `Upgrade:` header would let one such header blind the probe to the
    // requests after it.
    let next = if ambiguous {
        Next::Stop
    } else if let Some(te) = te_last {
        let chunked = te
            .rsplit(|b| *b == b',')
            .next()
            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
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
                    if buf.is_empty()
                        && let Some(end) = head_complete(data)
                    {
                        // The whole head in this read (the common case): read
                        // in place, nothing copied.
                        let (ambiguous, next) = parse_head(data.get(..end).unwrap_or(&[]));
                        self.verdicts.push(ambiguous);
                        data = data.get(end..).unwrap_or(&[]);
                        self.state = match next {
                            Next::Head => State::Head(buf),
                            Next::Fixed(n) => State::Fixed(n),
                            Next::Chunked => State::ChunkSize(Vec::new()),
                            Next::Stop => State::Passthrough,
                        };
                        continue;
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

impl Scanner {
    /// Bytes of a request head have arrived and its end has not.
    fn head_pending(&self) -> bool {
        matches!(&self.state, State::Head(buf) if !buf.is_empty())
    }
}

/// The HTTP/2 connection preface: what hyper's protocol detection waits
/// for, with no timer of its own.
pub(super) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Shared with the listener: whether the connection stopped in the middle
/// of a request head (for the 408 after hyper's header timeout).
#[derive(Debug, Clone, Default)]
pub struct HeadState(Arc<std::sync::atomic::AtomicBool>);

impl HeadState {
    pub fn pending(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The write side gave up: the client read nothing for `send_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("client read nothing for {0:?}")]
pub struct SendTimeout(pub std::time::Duration);

/// The I/O wrapper: reads pass through unchanged and feed the scanner.
/// It also keeps two clocks hyper does not: until the protocol is known
/// (nothing but a prefix of the HTTP/2 preface has arrived, hyper's
/// detection has no timeout) a read fails after the header timeout, and a
/// write blocked for `send_timeout` fails the connection.
pub struct FramingProbe<I> {
    inner: I,
    scanner: Scanner,
    head: HeadState,
    /// Bytes read while they are still a prefix of the HTTP/2 preface.
    sniffed: usize,
    sniffing: bool,
    /// The detection phase timed out: every read is end of input.
    eof: bool,
    sniff_timer: Pin<Box<tokio::time::Sleep>>,
    send_timeout: std::time::Duration,
    write_timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<I> FramingProbe<I> {
    /// A probe with no timers (tests).
    pub fn new(inner: I) -> (Self, Verdicts) {
        let (p, v, _) = Self::with_timeouts(
            inner,
            std::time::Duration::from_secs(86_400),
            std::time::Duration::from_secs(86_400),
        );
        (p, v)
    }

    /// A probe whose detection phase ends after `header_timeout` and whose
    /// writes fail after blocking for `send_timeout`.
    pub fn with_timeouts(
        inner: I,
        header_timeout: std::time::Duration,
        send_timeout: std::time::Duration,
    ) -> (Self, Verdicts, HeadState) {
        let verdicts = Verdicts::default();
        let head = HeadState::default();
        (
            Self {
                inner,
                scanner: Scanner {
                    state: State::Head(Vec::new()),
                    verdicts: verdicts.clone(),
                },
                head: head.clone(),
                sniffed: 0,
                sniffing: true,
                eof: false,
                sniff_timer: Box::pin(tokio::time::sleep(header_timeout)),
                send_timeout,
                write_timer: None,
            },
            verdicts,
            head,
        )
    }

    fn sniff(&mut self, new: &[u8]) {
        if !self.sniffing {
            return;
        }
        let end = self.sniffed.saturating_add(new.len());
        let is_prefix = H2_PREFACE
            .get(self.sniffed..end.min(H2_PREFACE.len()))
            .is_some_and(|p| new.get(..p.len()) == Some(p));
        if !is_prefix || end >= H2_PREFACE.len() {
            self.sniffing = false;
        }
        self.sniffed = end;
    }

    /// Polls the write clock after the inner write returned `Pending`.
    fn write_blocked(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let limit = self.send_timeout;
        let timer = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                metrics::counter!("aegis_client_send_timeouts_total").increment(1);
                Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, SendTimeout(limit)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

use std::future::Future as _;

impl<I: AsyncRead + Unpin> AsyncRead for FramingProbe<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        if this.eof {
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &r {
            Poll::Ready(Ok(())) => {
                if let Some(new) = buf.filled().get(before..) {
                    this.sniff(new);
                    this.scanner.feed(new);
                    this.head.0.store(
                        this.scanner.head_pending(),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
            }
            // Nothing that picks a protocol within the header timeout: end
            // of input, closed without an answer.
            Poll::Pending if this.sniffing && this.sniff_timer.as_mut().poll(cx).is_ready() => {
                this.sniffing = false;
                this.eof = true;
                return Poll::Ready(Ok(()));
            }
            _ => {}
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
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Pending => this.write_blocked(cx).map(Err),
            r => {
                this.write_timer = None;
                r
            }
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.write_blocked(cx).map(Err),
            r => {
                this.write_timer = None;
                r
            }
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Pending => this.write_blocked(cx).map(Err),
            r => r,
        }
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.write_blocked(cx).map(Err),
            r => {
                this.write_timer = None;
                r
            }
        }
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Innermost wrapper of a connection's stream: when hyper drops its I/O
/// (a connection that ended with an error), the stream goes to a slot the
/// listener still holds, so it can answer the 408 hyper does not send on
/// its header timeout.
pub struct HandBack<I> {
    inner: Option<I>,
    slot: Arc<Mutex<Option<I>>>,
}

impl<I> HandBack<I> {
    pub fn new(inner: I) -> (Self, Arc<Mutex<Option<I>>>) {
        let slot = Arc::new(Mutex::new(None));
        (
            Self {
                inner: Some(inner),
                slot: slot.clone(),
            },
            slot,
        )
    }
}

impl<I> Drop for HandBack<I> {
    fn drop(&mut self) {
        if let Some(i) = self.inner.take()
            && Arc::strong_count(&self.slot) > 1
        {
            *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(i);
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "stream handed back")
}

impl<I: AsyncRead + Unpin> AsyncRead for HandBack<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.inner.as_mut() {
            Some(i) => Pin::new(i).poll_read(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for HandBack<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.inner.as_mut() {
            Some(i) => Pin::new(i).poll_write(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner.as_mut() {
            Some(i) => Pin::new(i).poll_flush(cx),
            None => Poll::Ready(Err(gone())),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner.as_mut() {
            Some(i) => Pin::new(i).poll_shutdown(cx),
            None => Poll::Ready(Err(gone())),
        }
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.inner.as_mut() {
            Some(i) => Pin::new(i).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(gone())),
        }
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.is_write_vectored())
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
