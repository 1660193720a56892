//! Aegis's own HTTP/1.1 server for the common request (issue 15).
//!
//! hyper's HTTP/1 server costs about a fifth of a proxied request's
//! instructions and five allocations (its header arrays, its header-read
//! timer, a read buffer it cannot reuse while a request holds slices of it).
//! This loop serves the requests that make up nearly all edge traffic in
//! the connection's own task, with one read buffer and one write buffer per
//! connection and the head parsed in place by `httparse`: header values and
//! the request target are slices of the read buffer.
//!
//! It serves only what it can serve exactly as hyper would: an HTTP/1.1
//! request that parses, has at most [`MAX_FIELDS`] fields, no
//! `Transfer-Encoding`, `Upgrade`, `Expect` or `TE`, is not CONNECT, and
//! whose whole body (one plain `Content-Length`) is already read. Anything
//! else — HTTP/1.0, an HTTP/2 preface, a malformed or oversized head, a
//! chunked or still-arriving body, an upgrade — is [`Served::HandOff`]: the
//! connection, with every byte read and not yet served, goes to hyper for
//! the rest of its life, behind the framing probe, so hyper's parser and
//! its error answers stay the judge of everything unusual.
//!
//! What hyper's server did is kept on this path: the header timeout (408
//! when a head was coming, a silent close when idle), the send timeout, a
//! `Date` header, the response framing rules (`Content-Length` for a body
//! of known size, chunked otherwise, none for HEAD, 204 and 304, trailers
//! only when a `Trailer` header names them), `Connection: close` honoured
//! both ways, the lame-duck close and the graceful stop.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use super::framing::H2_PREFACE;
use super::{Closing, answer_request_timeout};
use crate::codec::{
    content_length, digits, has_token, last_coding_is_chunked, push_decimal, push_header, push_hex,
};
use crate::pipeline::{BoxError, CloseWithoutAnswer, Connector, Pipeline, ProxyBody};

/// Fields a head may have on this path (hyper's own inline default); a
/// head with more goes to hyper, whose limit follows `max_header_bytes`.
pub const MAX_FIELDS: usize = 100;
/// Largest head this path reads before handing the connection to hyper
/// (which reads up to its `max_buf_size`). Offsets in it fit a `u16`.
const MAX_HEAD: usize = 16 << 10;
/// Longest request target this path takes (hyper answers 414 beyond its
/// own limit).
const MAX_TARGET: usize = 8 << 10;
/// Response bytes gathered in the write buffer before a write.
const WRITE_BATCH: usize = 16 << 10;

/// What a connection's own loop needs besides the stream and the pipeline.
pub struct ConnCtx<'a> {
    pub header_read_timeout: Duration,
    pub send_timeout: Duration,
    /// Plain listener or TLS without ALPN: an HTTP/2 preface may come.
    pub detect_h2: bool,
    pub closing: &'a Closing,
    /// The graceful stop: an idle connection closes at once.
    pub stop: &'a CancellationToken,
}

/// How a connection left this loop.
pub enum Served<I> {
    /// Closed (by either side, or on a timeout).
    Done,
    /// For hyper: the stream, the bytes read but not served (starting at a
    /// request head, or the HTTP/2 preface), and whether no request was
    /// served before it (only then may the connection still turn HTTP/2).
    HandOff(I, Bytes, bool),
}

impl<I> Served<I> {
    fn hand_off(io: I, read: Bytes, first: bool) -> Self {
        metrics::counter!("aegis_http1_handoffs_total").increment(1);
        Served::HandOff(io, read, first)
    }
}

/// Serves `io` until it closes or needs hyper.
pub async fn serve<C, I>(mut io: I, pipeline: &mut Pipeline<C>, ctx: &ConnCtx<'_>) -> Served<I>
where
    C: Connector,
    I: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut rbuf = BytesMut::with_capacity(8 << 10);
    let mut wbuf: Vec<u8> = Vec::with_capacity(8 << 10);
    let timer = tokio::time::sleep(ctx.header_read_timeout);
    tokio::pin!(timer);
    let mut first = true;
    loop {
        let (req, asked_close) =
            match read_request(&mut io, &mut rbuf, &mut timer, ctx, first).await {
                Ok(taken) => taken,
                Err(Leave::Done) => return Served::Done,
                Err(Leave::HandOff(read)) => {
                    return Served::hand_off(io, read.unwrap_or_else(|| rbuf.freeze()), first);
                }
            };
        first = false;
        let is_head = req.method() == Method::HEAD;
        // The outcome is the sandbox's; this loop does not attach it.
        let (resp, _) = pipeline.serve_outcome(req).await;
        // `respond: {status: 444}`: closed unanswered.
        if resp.extensions().get::<CloseWithoutAnswer>().is_some() {
            return Served::Done;
        }
        // `closing` is set before `stop` is cancelled (`drain`), and is one
        // atomic load where the token's check takes a lock.
        let close = asked_close || ctx.closing.is_set();
        let out = Out {
            wbuf: &mut wbuf,
            send_timeout: ctx.send_timeout,
        };
        if !respond(&mut io, out, resp, is_head, close).await {
            let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
            return Served::Done;
        }
    }
}

/// Why the loop stops reading requests.
enum Leave {
    Done,
    /// For hyper, with the bytes read when they have left the buffer.
    HandOff(Option<Bytes>),
}

/// Reads until `rbuf` starts with a whole request this path serves, within
/// the header timeout: the request, and whether it asked for a close.
async fn read_request<I>(
    io: &mut I,
    rbuf: &mut BytesMut,
    timer: &mut Pin<&mut Sleep>,
    ctx: &ConnCtx<'_>,
    first: bool,
) -> Result<(Request<Full<Bytes>>, bool), Leave>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    // The timer is armed for a deadline at or before this one and moved on
    // when it fires early: re-arming it for every request costs a timer
    // wheel update each time.
    let deadline = tokio::time::Instant::now() + ctx.header_read_timeout;
    loop {
        if !rbuf.is_empty() {
            if first && ctx.detect_h2 && is_h2_prefix(rbuf) {
                return Err(Leave::HandOff(None));
            }
            match take(rbuf) {
                Taken::Request(req, close) => return Ok((req, close)),
                Taken::Partial if rbuf.len() <= MAX_HEAD => {}
                Taken::Partial => return Err(Leave::HandOff(None)),
                Taken::HandOff(read) => return Err(Leave::HandOff(read)),
            }
        }
        if rbuf.capacity().saturating_sub(rbuf.len()) < 1024 {
            rbuf.reserve(4 << 10);
        }
        let idle = rbuf.is_empty();
        tokio::select! {
            biased;
            r = io.read_buf(rbuf) => match r {
                Ok(0) | Err(_) => return Err(Leave::Done),
                Ok(_) => {}
            },
            () = timer.as_mut() => {
                if tokio::time::Instant::now() < deadline {
                    timer.as_mut().reset(deadline);
                    continue;
                }
                if !idle {
                    // A head was coming: 408, as on hyper's path.
                    answer_request_timeout(io).await;
                }
                return Err(Leave::Done);
            }
            () = ctx.stop.cancelled(), if idle => return Err(Leave::Done),
        }
    }
}

fn is_h2_prefix(buf: &[u8]) -> bool {
    let n = buf.len().min(H2_PREFACE.len());
    buf.get(..n) == H2_PREFACE.get(..n)
}

/// A byte range of the read buffer (the head is at most [`MAX_HEAD`]).
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    start: u16,
    len: u16,
}

impl Span {
    fn of(part: &[u8], base: &[u8]) -> Option<Self> {
        let start = (part.as_ptr() as usize).checked_sub(base.as_ptr() as usize)?;
        Some(Self {
            start: u16::try_from(start).ok()?,
            len: u16::try_from(part.len()).ok()?,
        })
    }

    fn range(self) -> std::ops::Range<usize> {
        let start = usize::from(self.start);
        start..start.saturating_add(usize::from(self.len))
    }

    fn slice(self, all: &Bytes) -> Option<Bytes> {
        let r = self.range();
        (r.end <= all.len()).then(|| all.slice(r))
    }
}

/// A head this path serves, apart from its fields' offsets.
struct Meta {
    /// Bytes of the head, up to and including its empty line.
    len: usize,
    method: Method,
    target: Span,
    count: usize,
    /// The body's `Content-Length` (0 without one).
    body_len: usize,
    /// The request said `Connection: close`.
    close: bool,
}

/// The fields' (name, value) offsets, filled in place by [`head_of`].
type Fields = [(Span, Span); MAX_FIELDS];

// Returned once per request and matched at once: boxing the request to
// even the variants out would be an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Taken {
    /// The request (taken out of the buffer), and whether it asked for a
    /// close.
    Request(Request<Full<Bytes>>, bool),
    Partial,
    /// For hyper (see the module's list); the bytes when they have left
    /// the buffer.
    HandOff(Option<Bytes>),
}

/// Takes the request at the start of `rbuf` when it is whole and this path
/// serves it. Its parts are slices of what was read; bytes after it (a
/// pipelined request) stay in `rbuf`.
fn take(rbuf: &mut BytesMut) -> Taken {
    let mut spans: Fields = [(Span::default(), Span::default()); MAX_FIELDS];
    let meta = {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            rbuf,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Taken::Partial,
            Err(_) => return Taken::HandOff(None),
        };
        match head_of(&req, rbuf, len, &mut spans) {
            Some(meta) => meta,
            None => return Taken::HandOff(None),
        }
    };
    let Some(end) = meta
        .len
        .checked_add(meta.body_len)
        .filter(|e| *e <= rbuf.len())
    else {
        // A body still arriving: hyper follows it (and its timeout).
        return Taken::HandOff(None);
    };
    let all = rbuf.split().freeze();
    let Some(req) = build(&meta, &spans, &all, end) else {
        return Taken::HandOff(Some(all));
    };
    if let Some(rest) = all.get(end..).filter(|r| !r.is_empty()) {
        rbuf.extend_from_slice(rest);
    }
    Taken::Request(req, meta.close)
}

/// The parsed head when this path serves it, its fields' offsets written
/// to `spans`.
fn head_of(
    req: &httparse::Request<'_, '_>,
    buf: &[u8],
    len: usize,
    spans: &mut Fields,
) -> Option<Meta> {
    if len > MAX_HEAD || req.version != Some(1) {
        return None;
    }
    let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
    if method == Method::CONNECT {
        return None;
    }
    let path = req.path?;
    if path.len() > MAX_TARGET {
        return None;
    }
    let mut meta = Meta {
        len,
        method,
        target: Span::of(path.as_bytes(), buf)?,
        count: req.headers.len(),
        body_len: 0,
        close: false,
    };
    let mut length_seen = false;
    for (slot, h) in spans.iter_mut().zip(req.headers.iter()) {
        let name = h.name.as_bytes();
        if [&b"transfer-encoding"[..], b"upgrade", b"expect", b"te"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
        {
            return None;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            // One plain number; lists and repeats are hyper's to judge.
            if length_seen {
                return None;
            }
            length_seen = true;
            meta.body_len = usize::try_from(digits(h.value)?).ok()?;
        } else if name.eq_ignore_ascii_case(b"connection") {
            meta.close |= crate::codec::has_token_bytes(h.value, b"close");
        }
        *slot = (Span::of(name, buf)?, Span::of(h.value, buf)?);
    }
    Some(meta)
}

/// The request, its parts sliced from `all` (which holds the head and the
/// body up to `end`).
fn build(meta: &Meta, spans: &Fields, all: &Bytes, end: usize) -> Option<Request<Full<Bytes>>> {
    let uri = Uri::from_maybe_shared(meta.target.slice(all)?).ok()?;
    // Room for what the pipeline adds before forwarding (X-Forwarded-*,
    // X-Real-IP, Via) without growing the map.
    let mut headers = crate::codec::header_map(meta.count.saturating_add(6));
    for (name, value) in spans.get(..meta.count)? {
        let name = HeaderName::from_bytes(all.get(name.range())?).ok()?;
        let value = HeaderValue::from_maybe_shared(value.slice(all)?).ok()?;
        headers.append(name, value);
    }
    let body = if meta.body_len == 0 {
        Bytes::new()
    } else {
        (end <= all.len()).then(|| all.slice(meta.len..end))?
    };
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = meta.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Some(req)
}

/// The write side of a connection.
struct Out<'a> {
    wbuf: &'a mut Vec<u8>,
    send_timeout: Duration,
}

/// How a response body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// Until the connection closes (no length, no chunked possible).
    Close,
}

/// Writes `resp`; true when the connection may serve another request.
async fn respond<I>(
    io: &mut I,
    out: Out<'_>,
    resp: Response<ProxyBody>,
    is_head: bool,
    close: bool,
) -> bool
where
    I: AsyncWrite + Unpin,
{
    let (mut parts, mut body) = resp.into_parts();
    let Out { wbuf, send_timeout } = out;
    wbuf.clear();
    let Some((framing, close, trailers)) = encode_head(wbuf, &parts, &body, is_head, close) else {
        // A response hyper would also refuse (1xx, contradictory framing
        // headers): the connection closes without it.
        tracing::debug!(status = %parts.status, "response not sendable over HTTP/1.1");
        return false;
    };
    crate::codec::recycle(std::mem::take(&mut parts.headers));
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    if framing == Framing::Length(0) {
        drop(body);
        return write(io, send_timeout, wbuf, &[]).await.is_ok() && !close;
    }
    let mut trailer_map: Option<HeaderMap> = None;
    loop {
        let frame = match poll_now(&mut body).await {
            Some(frame) => frame,
            None => {
                if !wbuf.is_empty() {
                    if write(io, send_timeout, wbuf, &[]).await.is_err() {
                        return false;
                    }
                    wbuf.clear();
                }
                body.frame().await
            }
        };
        let frame = match frame {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                // hyper aborts the message too: the client sees it cut.
                tracing::debug!(error = %e, "response body failed");
                let _ = write(io, send_timeout, wbuf, &[]).await;
                return false;
            }
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailer_map = Some(t);
                }
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        let n = u64::try_from(data.len()).unwrap_or(u64::MAX);
        let data: &[u8] = match framing {
            Framing::Length(_) if n > left => {
                // More than the length said: send what it said, then close.
                let take = usize::try_from(left).unwrap_or(0);
                let _ = write(io, send_timeout, wbuf, data.get(..take).unwrap_or(&[])).await;
                return false;
            }
            Framing::Length(_) => {
                left = left.saturating_sub(n);
                &data
            }
            Framing::Chunked => {
                push_hex(wbuf, n);
                wbuf.extend_from_slice(b"\r\n");
                &data
            }
            Framing::Close => &data,
        };
        if wbuf.len().saturating_add(data.len()) <= WRITE_BATCH {
            wbuf.extend_from_slice(data);
        } else {
            if write(io, send_timeout, wbuf, data).await.is_err() {
                return false;
            }
            wbuf.clear();
        }
        if framing == Framing::Chunked {
            wbuf.extend_from_slice(b"\r\n");
        }
    }
    match framing {
        Framing::Chunked => {
            wbuf.extend_from_slice(b"0\r\n");
            if let (Some(names), Some(map)) = (&trailers, &trailer_map) {
                for (name, value) in map {
                    if names.contains(name) {
                        push_header(wbuf, name, value);
                    }
                }
            }
            wbuf.extend_from_slice(b"\r\n");
        }
        // Shorter than its length: the client must not take it as whole.
        Framing::Length(_) if left > 0 => {
            let _ = write(io, send_timeout, wbuf, &[]).await;
            return false;
        }
        Framing::Length(_) => {}
        Framing::Close => {
            let _ = write(io, send_timeout, wbuf, &[]).await;
            return false;
        }
    }
    write(io, send_timeout, wbuf, &[]).await.is_ok() && !close
}

/// The next body frame if it is ready now (`None`: not yet).
async fn poll_now(body: &mut ProxyBody) -> Option<Option<Result<Frame<Bytes>, BoxError>>> {
    poll_fn(|cx| {
        Poll::Ready(match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(frame) => Some(frame),
            Poll::Pending => None,
        })
    })
    .await
}

/// Writes `a` then `b` (one vectored write where the stream takes one),
/// within the send timeout. A write that completes at once, as nearly all
/// do, never arms the timer.
async fn write<I>(io: &mut I, send_timeout: Duration, a: &[u8], b: &[u8]) -> io::Result<()>
where
    I: AsyncWrite + Unpin,
{
    let sent = async {
        write_both(io, a, b).await?;
        io.flush().await
    };
    match tokio::time::timeout(send_timeout, sent).await {
        Ok(r) => r,
        Err(_) => {
            metrics::counter!("aegis_client_send_timeouts_total").increment(1);
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                super::framing::SendTimeout(send_timeout),
            ))
        }
    }
}

/// Writes `a` then `b`, both in one vectored write when the socket takes
/// them. Not `write_all_buf` over a chain: that sets up 64 I/O slices on
/// every call for the two there are.
async fn write_both<I>(io: &mut I, mut a: &[u8], mut b: &[u8]) -> io::Result<()>
where
    I: AsyncWrite + Unpin,
{
    while !a.is_empty() || !b.is_empty() {
        let n = if b.is_empty() {
            io.write(a).await?
        } else if a.is_empty() {
            io.write(b).await?
        } else {
            io.write_vectored(&[io::IoSlice::new(a), io::IoSlice::new(b)])
                .await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = a.get(from_a..).unwrap_or_default();
        let from_b = n.saturating_sub(from_a).min(b.len());
        b = b.get(from_b..).unwrap_or_default();
    }
    Ok(())
}

/// Writes the status line and headers as hyper's server does. Returns the
/// body's framing, whether the connection closes after it, and the
/// trailer names a `Trailer` header allows; `None` for a response that
/// cannot be sent.
fn encode_head(
    dst: &mut Vec<u8>,
    parts: &http::response::Parts,
    body: &ProxyBody,
    is_head: bool,
    mut close: bool,
) -> Option<(Framing, bool, Option<Vec<HeaderName>>)> {
    let status = parts.status;
    if status.is_informational() {
        return None;
    }
    let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>();
    if status == StatusCode::OK && reason.is_none() {
        dst.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        dst.extend_from_slice(b"HTTP/1.1 ");
        dst.extend_from_slice(status.as_str().as_bytes());
        dst.push(b' ');
        match reason {
            Some(r) => dst.extend_from_slice(r.as_bytes()),
            None => dst.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes()),
        }
        dst.extend_from_slice(b"\r\n");
    }
    let no_body_status = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let can_length = !no_body_status;
    let can_chunked = !is_head && !no_body_status;
    let headers = &parts.headers;
    let mut wrote_date = false;
    for (name, value) in headers {
        match *name {
            header::CONTENT_LENGTH
            | header::TRANSFER_ENCODING
            | header::CONNECTION
            | header::TRAILER => continue,
            header::DATE => wrote_date = true,
            _ => {}
        }
        push_header(dst, name, value);
    }
    // Connection: the response's own tokens, and `close` when this
    // connection ends after it.
    let mut conn = headers.get_all(header::CONNECTION).iter().peekable();
    if conn.peek().is_some() || close {
        dst.extend_from_slice(b"connection: ");
        let mut said_close = false;
        let mut sep = false;
        for v in conn {
            if sep {
                dst.extend_from_slice(b", ");
            }
            dst.extend_from_slice(v.as_bytes());
            said_close |= has_token(v, b"close");
            sep = true;
        }
        if close && !said_close {
            if sep {
                dst.extend_from_slice(b", ");
            }
            dst.extend_from_slice(b"close");
        }
        close |= said_close;
        dst.extend_from_slice(b"\r\n");
    }
    let mut trailers = None;
    let te = headers.get_all(header::TRANSFER_ENCODING);
    let length = headers.get(header::CONTENT_LENGTH);
    let mut framing = if can_chunked && te.iter().next().is_some() {
        if length.is_some() {
            return None;
        }
        dst.extend_from_slice(b"transfer-encoding: ");
        let mut last_chunked = false;
        for (i, v) in te.iter().enumerate() {
            if i > 0 {
                dst.extend_from_slice(b", ");
            }
            dst.extend_from_slice(v.as_bytes());
            last_chunked = last_coding_is_chunked(v);
        }
        if !last_chunked {
            dst.extend_from_slice(b", chunked");
        }
        dst.extend_from_slice(b"\r\n");
        Framing::Chunked
    } else if body.is_end_stream() {
        match length {
            // A HEAD answer keeps the length a GET would have had.
            Some(v) if is_head => {
                dst.extend_from_slice(b"content-length: ");
                dst.extend_from_slice(v.as_bytes());
                dst.extend_from_slice(b"\r\n");
            }
            _ if can_length && !is_head => dst.extend_from_slice(b"content-length: 0\r\n"),
            _ => {}
        }
        Framing::Length(0)
    } else if let Some(n) = body.size_hint().exact() {
        // The body knows its length: the header is trusted as hyper does.
        if can_length {
            dst.extend_from_slice(b"content-length: ");
            match length {
                Some(v) => dst.extend_from_slice(v.as_bytes()),
                None => push_decimal(dst, n),
            }
            dst.extend_from_slice(b"\r\n");
        }
        Framing::Length(n)
    } else if length.is_some() {
        let n = content_length(headers)?;
        if can_length {
            dst.extend_from_slice(b"content-length: ");
            push_decimal(dst, n);
            dst.extend_from_slice(b"\r\n");
        }
        Framing::Length(n)
    } else if can_chunked {
        dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    } else {
        Framing::Close
    };
    if framing == Framing::Chunked {
        let mut named = headers.get_all(header::TRAILER).iter().peekable();
        if named.peek().is_some() {
            dst.extend_from_slice(b"trailer: ");
            let mut names = Vec::new();
            for (i, v) in named.enumerate() {
                if i > 0 {
                    dst.extend_from_slice(b", ");
                }
                dst.extend_from_slice(v.as_bytes());
                names.extend(
                    v.as_bytes()
                        .split(|b| *b == b',')
                        .filter_map(|n| HeaderName::from_bytes(n.trim_ascii()).ok()),
                );
            }
            dst.extend_from_slice(b"\r\n");
            trailers = Some(names);
        }
    }
    if is_head || no_body_status {
        framing = Framing::Length(0);
    }
    if !wrote_date {
        dst.extend_from_slice(b"date: ");
        push_date(dst);
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
    Some((framing, close, trailers))
}

/// The current `Date` value, formatted once a second per thread.
fn push_date(dst: &mut Vec<u8>) {
    use std::cell::RefCell;
    use std::io::Write as _;
    thread_local! {
        static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [b' '; 29])) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            let mut w = &mut text[..];
            if write!(w, "{}", httpdate::HttpDate::from(now)).is_ok() {
                *at = secs;
            }
        }
        dst.extend_from_slice(&text[..]);
    });
}

/// A stream handed to hyper: the bytes this loop read and did not serve
/// come first, then the stream's own.
pub struct Rewind<I> {
    pre: Bytes,
    inner: I,
}

impl<I> Rewind<I> {
    pub fn new(inner: I, pre: Bytes) -> Self {
        Self { pre, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = buf.remaining().min(self.pre.len());
            if let Some(part) = self.pre.get(..n) {
                buf.put_slice(part);
            }
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
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

    fn take_from(raw: &[u8]) -> (Taken, BytesMut) {
        let mut buf = BytesMut::from(raw);
        let t = take(&mut buf);
        (t, buf)
    }

    #[test]
    fn serves_the_common_request() {
        let (t, rest) = take_from(
            b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\nGET /next",
        );
        let Taken::Request(req, close) = t else {
            panic!("not taken")
        };
        assert!(close);
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.headers().len(), 2);
        assert_eq!(req.headers()["host"], "x");
        assert!(req.body().is_end_stream());
        // The pipelined request's first bytes stay for the next read.
        assert_eq!(&rest[..], b"GET /next");
    }

    #[test]
    fn takes_a_body_by_its_length() {
        let (t, rest) =
            take_from(b"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET");
        let Taken::Request(req, close) = t else {
            panic!("not taken")
        };
        assert!(!close);
        assert_eq!(req.body().size_hint().exact(), Some(5));
        assert_eq!(&rest[..], b"GET");
        // Not all of it read yet: hyper follows it, nothing taken.
        let raw = b"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nhello";
        let (t, rest) = take_from(raw);
        assert!(matches!(t, Taken::HandOff(None)));
        assert_eq!(&rest[..], &raw[..]);
    }

    #[test]
    fn leaves_the_unusual_to_hyper() {
        for raw in [
            &b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nTE: trailers\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            let (t, rest) = take_from(raw);
            assert!(
                matches!(t, Taken::HandOff(None)),
                "{}",
                String::from_utf8_lossy(raw)
            );
            assert_eq!(&rest[..], raw, "bytes kept for hyper");
        }
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_FIELDS {
            many.push_str(&format!("x-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert!(matches!(take_from(many.as_bytes()).0, Taken::HandOff(None)));
        assert!(matches!(
            take_from(b"GET / HTTP/1.1\r\nHost").0,
            Taken::Partial
        ));
        assert!(is_h2_prefix(b"PRI * HT"));
        assert!(!is_h2_prefix(b"GET / HT"));
    }

    fn encoded(resp: Response<ProxyBody>, is_head: bool) -> (String, Framing, bool) {
        let (parts, body) = resp.into_parts();
        let mut dst = Vec::new();
        let (f, close, _) = encode_head(&mut dst, &parts, &body, is_head, false).unwrap();
        (String::from_utf8(dst).unwrap(), f, close)
    }

    #[test]
    fn frames_responses_as_hyper_does() {
        use crate::pipeline::{empty, full};
        let (h, f, _) = encoded(Response::new(full("hello")), false);
        assert!(h.starts_with("HTTP/1.1 200 OK\r\n"), "{h}");
        assert!(
            h.contains("content-length: 5\r\n") && h.contains("\r\ndate: "),
            "{h}"
        );
        assert_eq!(f, Framing::Length(5));
        // An empty answer says so; a HEAD one keeps the length it was given.
        let (h, f, _) = encoded(Response::new(empty()), false);
        assert!(h.contains("content-length: 0\r\n"), "{h}");
        assert_eq!(f, Framing::Length(0));
        let mut r = Response::new(empty());
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("42"));
        let (h, f, _) = encoded(r, true);
        assert!(h.contains("content-length: 42\r\n"), "{h}");
        assert_eq!(f, Framing::Length(0));
        // No length known: chunked; 204 gets neither.
        let (h, f, _) = encoded(Response::new(crate::pipeline::boxed(Unsized)), false);
        assert!(h.contains("transfer-encoding: chunked\r\n"), "{h}");
        assert_eq!(f, Framing::Chunked);
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        let (h, _, _) = encoded(r, false);
        assert!(
            !h.contains("content-length") && h.starts_with("HTTP/1.1 204 No Content\r\n"),
            "{h}"
        );
        // The response's own close ends the connection.
        let mut r = Response::new(empty());
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        let (h, _, close) = encoded(r, false);
        assert!(close && h.contains("connection: close\r\n"), "{h}");
    }

    /// A body whose length is not known in advance.
    struct Unsized;

    impl Body for Unsized {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(None)
        }
    }
}
