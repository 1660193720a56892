//! A lean HTTP/1.1 client for upstream requests (issue 15, item 3).
//!
//! The request head is serialized into the connection's write buffer and
//! written at once; the response head is parsed in place with `httparse`
//! and its header values are slices of the connection's read buffer, as are
//! the body frames. Everything is driven by the task that awaits the
//! response and then polls its body: no connection task, no channel, no
//! spawn per request. The connection itself is a [`Conn`], kept in the
//! endpoint's idle list between requests.
//!
//! Requests asking for an upgrade go through hyper's client instead (the
//! pipeline relays upgrades with hyper's `OnUpgrade`, which only hyper can
//! make); see `super::send_once`.
//!
//! What hyper's client did is kept: framing headers added only when the
//! request has none (`content-length` for a body of known size, `chunked`
//! otherwise, no body for GET/HEAD/CONNECT of unknown size), request
//! trailers sent only when a `Trailer` header names them, 1xx responses
//! other than 101 skipped, no body for HEAD, 204 and 304, chunked when
//! `Transfer-Encoding` ends in `chunked`, close-delimited otherwise or
//! without a length, differing or invalid `Content-Length` values refused.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::codec::{
    content_length, content_length_value, has_token, is_chunked, last_coding_is_chunked,
    push_decimal, push_header, push_hex,
};
use crate::pipeline::{BoxError, ProxyBody};

/// Largest response head accepted (status line and headers). nginx's
/// `proxy_buffer_size` default is 4 or 8 KiB; hyper's limit was its read
/// buffer (about 400 KiB).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header lines in a response head or trailer section (hyper's
/// default).
pub const MAX_HEADERS: usize = 100;
/// Largest trailer section, and longest chunk-size line with its
/// extensions (hyper's limits).
const MAX_TRAILERS: usize = 16 * 1024;
const MAX_CHUNK_LINE: usize = 16 * 1024;
/// Bytes asked of the socket per read.
const READ_SIZE: usize = 8 * 1024;

/// One upstream connection: the socket and its two buffers, kept across
/// requests.
pub struct Conn {
    io: TcpStream,
    /// Bytes read and not consumed yet; empty between requests.
    buf: BytesMut,
    /// The request head (and chunk framing) being written.
    wbuf: Vec<u8>,
    /// Where each header's name and value lie in a parsed head (kept to
    /// save zeroing an array on every response).
    spans: Vec<[usize; 4]>,
    /// The header names of the last response, by position, as the upstream
    /// spelled them: a server sends the same names in the same order on
    /// every response, so a name is one comparison and a clone (a
    /// reference count for a non-standard name) instead of a parse, and a
    /// non-standard name is not copied again.
    names: Vec<(Box<[u8]>, HeaderName)>,
}

/// How many header positions `Conn::names` remembers.
const NAME_MEMO: usize = 16;

impl Conn {
    pub fn new(io: TcpStream) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            wbuf: Vec::new(),
            spans: Vec::new(),
            names: Vec::new(),
        }
    }

    /// The header name at position `i` of a response head, from the memo
    /// when the upstream sent the same bytes there last time.
    fn header_name(&mut self, i: usize, raw: &[u8]) -> Option<HeaderName> {
        if let Some((seen, name)) = self.names.get(i)
            && **seen == *raw
        {
            return Some(name.clone());
        }
        let name = HeaderName::from_bytes(raw).ok()?;
        if i < NAME_MEMO {
            let entry = (Box::from(raw), name.clone());
            if let Some(slot) = self.names.get_mut(i) {
                *slot = entry;
            } else if self.names.len() == i {
                self.names.push(entry);
            }
        }
        Some(name)
    }

    /// Whether an idle connection can carry a request: nothing unread,
    /// and the peer has neither closed it nor sent anything since (a
    /// non-blocking read; no system call when the reactor saw nothing).
    pub fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// The socket, for hyper's client (an upgrade request), when nothing
    /// is left unread on it.
    pub fn into_io(self) -> Option<TcpStream> {
        self.buf.is_empty().then_some(self.io)
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity().saturating_sub(self.buf.len()) < READ_SIZE / 2 {
            self.buf.reserve(READ_SIZE);
        }
        loop {
            match self.io.try_read_buf(&mut self.buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.io.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// What the upstream sent that is not HTTP/1.1 as we take it.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("malformed response head: {0}")]
    Parse(httparse::Error),
    #[error("invalid response header")]
    Header,
    #[error("invalid Content-Length in the response")]
    ContentLength,
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    TransferEncoding10,
    #[error("invalid chunk framing in the response body")]
    Chunk,
    #[error("invalid or oversized trailers in the response body")]
    Trailers,
    #[error("connection closed before the response head")]
    ClosedBeforeHead,
    #[error("connection closed before the end of the response body")]
    IncompleteBody,
}

/// The request body did not match its declared length.
#[derive(Debug, thiserror::Error)]
#[error("request body {0} its Content-Length")]
pub struct BodyLengthMismatch(&'static str);

/// Why a request got no response head.
pub enum SendError {
    /// Nothing of it was written (the connection failed at once): it comes
    /// back whole.
    NotSent {
        request: Box<Request<ProxyBody>>,
        source: io::Error,
    },
    /// The client's request body failed.
    ClientBody(BoxError),
    /// The connection or the upstream's answer failed.
    Upstream(BoxError),
}

enum WriteError {
    Body(BoxError),
    Io(io::Error),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Body bytes still to send.
    Length(u64),
    Chunked,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    Head,
    Length(u64),
    Chunked(Chunk),
    Close,
    Done,
    Failed,
}

/// One request and its response on one connection, from the first byte
/// written to the last byte read.
struct Exchange {
    conn: Conn,
    /// The request head, until any of it is written (to give the request
    /// back whole if the connection fails first).
    parts: Option<http::request::Parts>,
    body: Option<ProxyBody>,
    /// Whether `body` is sent at all (hyper sent none for a GET of unknown
    /// length, for one).
    send_body: bool,
    framing: Framing,
    trailer_names: Option<Vec<HeaderName>>,
    /// Start of the unwritten part of `conn.wbuf`.
    wpos: usize,
    /// Body bytes to write after `conn.wbuf[wpos..]`.
    data: Option<Bytes>,
    /// A chunk's data was queued; its CRLF goes before the next chunk line.
    crlf: bool,
    /// Something is left to write.
    writing: bool,
    wrote: bool,
    write_err: Option<io::Error>,
    is_head: bool,
    read: Read,
    keep_alive: bool,
    /// A body failure to report on the next poll.
    deferred: Option<BoxError>,
}

impl Exchange {
    fn new(mut conn: Conn, req: Request<ProxyBody>) -> Self {
        let (parts, body) = req.into_parts();
        let (framing, send_body, trailer_names) = encode_head(&parts, &body, &mut conn.wbuf);
        Self {
            conn,
            is_head: parts.method == Method::HEAD,
            parts: Some(parts),
            body: Some(body),
            send_body,
            framing,
            trailer_names,
            wpos: 0,
            data: None,
            crlf: false,
            writing: true,
            wrote: false,
            write_err: None,
            read: Read::Head,
            keep_alive: false,
            deferred: None,
        }
    }

    /// Queues one request body frame.
    fn queue_frame(&mut self, frame: Frame<Bytes>) -> Result<(), BoxError> {
        let data = match frame.into_data() {
            Ok(d) => d,
            Err(frame) => {
                return self.queue_end(frame.into_trailers().ok());
            }
        };
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.framing {
            Framing::Length(rem) => {
                let n = u64::try_from(data.len()).unwrap_or(u64::MAX);
                if n > *rem {
                    return Err(Box::new(BodyLengthMismatch("longer than")));
                }
                *rem = rem.saturating_sub(n);
            }
            Framing::Chunked => {
                self.reset_wbuf();
                if self.crlf {
                    self.conn.wbuf.extend_from_slice(b"\r\n");
                }
                push_hex(
                    &mut self.conn.wbuf,
                    u64::try_from(data.len()).unwrap_or(u64::MAX),
                );
                self.conn.wbuf.extend_from_slice(b"\r\n");
                self.crlf = true;
            }
        }
        self.data = Some(data);
        Ok(())
    }

    /// Queues the end of the request body, with its trailers if any.
    fn queue_end(&mut self, trailers: Option<HeaderMap>) -> Result<(), BoxError> {
        self.body = None;
        match self.framing {
            Framing::Length(0) => Ok(()),
            Framing::Length(_) => Err(Box::new(BodyLengthMismatch("shorter than"))),
            Framing::Chunked => {
                self.reset_wbuf();
                let w = &mut self.conn.wbuf;
                if self.crlf {
                    w.extend_from_slice(b"\r\n");
                }
                self.crlf = false;
                w.extend_from_slice(b"0\r\n");
                if let (Some(t), Some(allowed)) = (trailers, &self.trailer_names) {
                    for (name, value) in &t {
                        if allowed.contains(name) && valid_trailer(name) {
                            push_header(w, name, value);
                        }
                    }
                }
                w.extend_from_slice(b"\r\n");
                Ok(())
            }
        }
    }

    fn reset_wbuf(&mut self) {
        if self.wpos >= self.conn.wbuf.len() {
            self.conn.wbuf.clear();
            self.wpos = 0;
        }
    }

    /// Writes what is queued and what the request body yields; ready when
    /// all of the request is written.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        loop {
            let small = self.conn.wbuf.get(self.wpos..).unwrap_or_default();
            if small.is_empty() && self.data.is_none() {
                if !self.send_body {
                    self.body = None;
                }
                let Some(body) = self.body.as_mut() else {
                    self.writing = false;
                    return Poll::Ready(Ok(()));
                };
                let queued = match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => self.queue_end(None),
                    Poll::Ready(Some(Err(e))) => {
                        self.body = None;
                        Err(e)
                    }
                    Poll::Ready(Some(Ok(frame))) => self.queue_frame(frame).and_then(|()| {
                        if self.body.as_ref().is_some_and(|b| b.is_end_stream()) {
                            self.queue_end(None)
                        } else {
                            Ok(())
                        }
                    }),
                };
                if let Err(e) = queued {
                    self.writing = false;
                    return Poll::Ready(Err(WriteError::Body(e)));
                }
                continue;
            }
            let io = Pin::new(&mut self.conn.io);
            let res = match &self.data {
                Some(d) if !small.is_empty() => {
                    io.poll_write_vectored(cx, &[IoSlice::new(small), IoSlice::new(d)])
                }
                Some(d) => io.poll_write(cx, d),
                None => io.poll_write(cx, small),
            };
            let n = match ready!(res) {
                Ok(0) => {
                    self.writing = false;
                    return Poll::Ready(Err(WriteError::Io(io::ErrorKind::WriteZero.into())));
                }
                Ok(n) => n,
                Err(e) => {
                    self.writing = false;
                    return Poll::Ready(Err(WriteError::Io(e)));
                }
            };
            if !self.wrote {
                self.wrote = true;
                // Sent: the head is not needed again (no retry after this).
                if let Some(parts) = self.parts.take() {
                    crate::codec::recycle(parts.headers);
                }
            }
            let from_small = n.min(small.len());
            self.wpos = self.wpos.saturating_add(from_small);
            let rest = n.saturating_sub(from_small);
            if rest > 0
                && let Some(d) = self.data.as_mut()
            {
                d.advance(rest.min(d.len()));
            }
            if self.data.as_ref().is_some_and(Bytes::is_empty) {
                self.data = None;
            }
        }
    }

    /// Writes the request and reads up to the final response head.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<Response<()>, SendError>> {
        loop {
            if self.writing {
                match self.poll_write(cx) {
                    Poll::Ready(Ok(())) | Poll::Pending => {}
                    Poll::Ready(Err(WriteError::Body(e))) => {
                        return Poll::Ready(Err(SendError::ClientBody(e)));
                    }
                    Poll::Ready(Err(WriteError::Io(e))) => {
                        if !self.wrote
                            && let (Some(parts), Some(body)) = (self.parts.take(), self.body.take())
                        {
                            return Poll::Ready(Err(SendError::NotSent {
                                request: Box::new(Request::from_parts(parts, body)),
                                source: e,
                            }));
                        }
                        // An answer may be waiting all the same (an early
                        // response, then a close): read on.
                        self.body = None;
                        self.write_err = Some(e);
                    }
                }
            }
            if !self.conn.buf.is_empty()
                && let Some(head) = self.parse_head().map_err(upstream)?
            {
                return Poll::Ready(Ok(head));
            }
            match ready!(self.conn.poll_fill(cx)) {
                Ok(0) => {
                    let err: BoxError = match self.write_err.take() {
                        Some(e) => Box::new(e),
                        None => Box::new(ProtocolError::ClosedBeforeHead),
                    };
                    return Poll::Ready(Err(SendError::Upstream(err)));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(SendError::Upstream(Box::new(e)))),
            }
        }
    }

    /// Parses the final response head from the read buffer, skipping 1xx
    /// heads; `None` until the buffer holds a whole head.
    fn parse_head(&mut self) -> Result<Option<Response<()>>, ProtocolError> {
        loop {
            if self.conn.buf.is_empty() {
                return Ok(None);
            }
            let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
            let mut spans = std::mem::take(&mut self.conn.spans);
            spans.clear();
            let mut res = httparse::Response::new(&mut []);
            let bytes: &[u8] = &self.conn.buf;
            let len = match httparse::ParserConfig::default()
                .parse_response_with_uninit_headers(&mut res, bytes, &mut slots)
            {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => {
                    if bytes.len() >= MAX_HEAD {
                        return Err(ProtocolError::HeadTooLarge);
                    }
                    return Ok(None);
                }
                Err(e) => return Err(ProtocolError::Parse(e)),
            };
            if len > MAX_HEAD {
                return Err(ProtocolError::HeadTooLarge);
            }
            let code = res.code.unwrap_or(0);
            let status = StatusCode::from_u16(code)
                .map_err(|_| ProtocolError::Parse(httparse::Error::Status))?;
            let version = if res.version == Some(1) {
                Version::HTTP_11
            } else {
                Version::HTTP_10
            };
            let reason = res
                .reason
                .filter(|r| Some(*r) != status.canonical_reason())
                .map(|r| Bytes::copy_from_slice(r.as_bytes()));
            let base = bytes.as_ptr() as usize;
            let count = res.headers.len();
            for h in res.headers.iter() {
                let n0 = (h.name.as_ptr() as usize)
                    .checked_sub(base)
                    .ok_or(ProtocolError::Header)?;
                let v0 = (h.value.as_ptr() as usize)
                    .checked_sub(base)
                    .ok_or(ProtocolError::Header)?;
                spans.push([
                    n0,
                    n0.checked_add(h.name.len()).ok_or(ProtocolError::Header)?,
                    v0,
                    v0.checked_add(h.value.len()).ok_or(ProtocolError::Header)?,
                ]);
            }
            let head = self.conn.buf.split_to(len).freeze();
            let built = self.build_head(&head, &spans, count, status, version, reason);
            self.conn.spans = spans;
            match built {
                Ok(Some(resp)) => return Ok(Some(resp)),
                Ok(None) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The response from a parsed head (`None` for a 1xx to skip), and the
    /// body framing it announces.
    fn build_head(
        &mut self,
        head: &Bytes,
        spans: &[[usize; 4]],
        count: usize,
        status: StatusCode,
        version: Version,
        reason: Option<Bytes>,
    ) -> Result<Option<Response<()>>, ProtocolError> {
        let code = status.as_u16();
        if (100..200).contains(&code) && code != 101 {
            // 100 Continue, 102, 103 Early Hints: not forwarded (hyper
            // dropped them too); the final head follows.
            return Ok(None);
        }
        // Room for what the pipeline adds (Via, the configured response
        // headers) without growing the map.
        let mut headers = crate::codec::header_map(count.saturating_add(4));
        let mut keep_alive = version == Version::HTTP_11;
        let mut saw_close = false;
        // Framing, seen on the way (no lookups afterwards): whether a
        // Transfer-Encoding came and its last coding is chunked, and
        // the Content-Length (`Some(None)` when values differ or are
        // not numbers).
        let mut te: Option<bool> = None;
        let mut cl: Option<Option<u64>> = None;
        for (i, &[n0, n1, v0, v1]) in spans.iter().take(count).enumerate() {
            let name = head
                .get(n0..n1)
                .and_then(|n| self.conn.header_name(i, n))
                .ok_or(ProtocolError::Header)?;
            if v0 > v1 || v1 > head.len() {
                return Err(ProtocolError::Header);
            }
            let value = HeaderValue::from_maybe_shared(head.slice(v0..v1))
                .map_err(|_| ProtocolError::Header)?;
            if name == header::CONNECTION {
                if saw_close || has_token(&value, b"close") {
                    saw_close = true;
                    keep_alive = false;
                } else if !keep_alive {
                    keep_alive = has_token(&value, b"keep-alive");
                }
            } else if name == header::TRANSFER_ENCODING {
                te = Some(last_coding_is_chunked(&value));
            } else if name == header::CONTENT_LENGTH {
                cl = Some(match cl {
                    None => content_length_value(&value, None),
                    Some(Some(prev)) => content_length_value(&value, Some(prev)),
                    Some(None) => None,
                });
            }
            headers.append(name, value);
        }
        let read = if code == 101 {
            // Never asked for on this path: the pipeline answers 502,
            // and the connection is not reused.
            keep_alive = false;
            Read::Done
        } else if code == 204 || code == 304 || self.is_head {
            Read::Done
        } else if let Some(chunked) = te {
            if version == Version::HTTP_10 {
                return Err(ProtocolError::TransferEncoding10);
            }
            if chunked {
                Read::Chunked(Chunk::Size)
            } else {
                keep_alive = false;
                Read::Close
            }
        } else if let Some(cl) = cl {
            match cl.ok_or(ProtocolError::ContentLength)? {
                0 => Read::Done,
                n => Read::Length(n),
            }
        } else {
            keep_alive = false;
            Read::Close
        };
        self.read = read;
        self.keep_alive = keep_alive;
        let mut resp = Response::new(());
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        *resp.headers_mut() = headers;
        if let Some(r) = reason
            && let Ok(r) = hyper::ext::ReasonPhrase::try_from(r)
        {
            resp.extensions_mut().insert(r);
        }
        Ok(Some(resp))
    }

    /// Keeps writing a request body the upstream answered before it ended
    /// (the answer may stream while it does); a failure only means the
    /// connection is not reused.
    fn drive_write(&mut self, cx: &mut Context<'_>) {
        if self.writing
            && let Poll::Ready(Err(_)) = self.poll_write(cx)
        {
            self.body = None;
            self.keep_alive = false;
        }
    }

    /// The next body frame. A failure is reported one poll late: the
    /// server side then writes out what it has of the response first (a
    /// head and the bytes that came, as hyper's client channel did), and
    /// the client sees the cut where the upstream made it.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(e) = self.deferred.take() {
            return Poll::Ready(Some(Err(e)));
        }
        match self.poll_body_now(cx) {
            Poll::Ready(Some(Err(e))) => {
                self.deferred = Some(e);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            other => other,
        }
    }

    fn poll_body_now(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.drive_write(cx);
        loop {
            let data_left = match self.read {
                Read::Done | Read::Failed | Read::Head => return Poll::Ready(None),
                Read::Length(rem) | Read::Chunked(Chunk::Data(rem)) => rem,
                Read::Close => {
                    if self.conn.buf.is_empty() {
                        match ready!(self.conn.poll_fill(cx)) {
                            Ok(0) => {
                                self.read = Read::Done;
                                return Poll::Ready(None);
                            }
                            Ok(_) => {}
                            Err(e) => return Poll::Ready(Some(Err(self.fail(e)))),
                        }
                    }
                    let all = self.conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(all))));
                }
                Read::Chunked(Chunk::Size) => {
                    let buf = &self.conn.buf;
                    match buf.iter().position(|b| *b == b'\n') {
                        Some(lf) => {
                            let size = buf.get(..lf).and_then(chunk_size);
                            let Some(size) = size else {
                                return Poll::Ready(Some(Err(self.fail(ProtocolError::Chunk))));
                            };
                            self.conn.buf.advance(lf.saturating_add(1));
                            self.read = if size == 0 {
                                Read::Chunked(Chunk::Trailers)
                            } else {
                                Read::Chunked(Chunk::Data(size))
                            };
                            continue;
                        }
                        None if buf.len() > MAX_CHUNK_LINE => {
                            return Poll::Ready(Some(Err(self.fail(ProtocolError::Chunk))));
                        }
                        None => {
                            if let Err(e) = ready!(self.fill_body(cx)) {
                                return Poll::Ready(Some(Err(e)));
                            }
                            continue;
                        }
                    }
                }
                Read::Chunked(Chunk::DataEnd) => {
                    match self.conn.buf.get(..2) {
                        Some(b"\r\n") => {
                            self.conn.buf.advance(2);
                            self.read = Read::Chunked(Chunk::Size);
                        }
                        Some(_) => {
                            return Poll::Ready(Some(Err(self.fail(ProtocolError::Chunk))));
                        }
                        None => {
                            if let Err(e) = ready!(self.fill_body(cx)) {
                                return Poll::Ready(Some(Err(e)));
                            }
                        }
                    }
                    continue;
                }
                Read::Chunked(Chunk::Trailers) => {
                    if self.conn.buf.starts_with(b"\r\n") {
                        self.conn.buf.advance(2);
                        self.read = Read::Done;
                        return Poll::Ready(None);
                    }
                    let end = self.conn.buf.len() >= 2
                        && self.conn.buf.windows(4).any(|w| w == b"\r\n\r\n");
                    if !end {
                        if self.conn.buf.len() > MAX_TRAILERS {
                            return Poll::Ready(Some(Err(self.fail(ProtocolError::Trailers))));
                        }
                        if let Err(e) = ready!(self.fill_body(cx)) {
                            return Poll::Ready(Some(Err(e)));
                        }
                        continue;
                    }
                    return match parse_trailers(&self.conn.buf) {
                        Some((len, trailers)) => {
                            self.conn.buf.advance(len);
                            self.read = Read::Done;
                            Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                        }
                        None => Poll::Ready(Some(Err(self.fail(ProtocolError::Trailers)))),
                    };
                }
            };
            if self.conn.buf.is_empty() {
                if let Err(e) = ready!(self.fill_body(cx)) {
                    return Poll::Ready(Some(Err(e)));
                }
                continue;
            }
            let avail = self.conn.buf.len();
            let take = usize::try_from(data_left).map_or(avail, |r| r.min(avail));
            let bytes = self.conn.buf.split_to(take).freeze();
            let left = data_left.saturating_sub(u64::try_from(take).unwrap_or(u64::MAX));
            self.read = match (self.read, left) {
                (Read::Length(_), 0) => Read::Done,
                (Read::Length(_), n) => Read::Length(n),
                (_, 0) => Read::Chunked(Chunk::DataEnd),
                (_, n) => Read::Chunked(Chunk::Data(n)),
            };
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
    }

    /// Reads more of a body that needs more: the end of the stream is an
    /// error here.
    fn fill_body(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match ready!(self.conn.poll_fill(cx)) {
            Ok(0) => Poll::Ready(Err(self.fail(ProtocolError::IncompleteBody))),
            Ok(_) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(self.fail(e))),
        }
    }

    fn fail(&mut self, e: impl Into<BoxError>) -> BoxError {
        self.read = Read::Failed;
        self.keep_alive = false;
        e.into()
    }

    /// The connection, when this exchange ended cleanly and it can carry
    /// another: the whole response read, keep-alive, all of the request
    /// written, nothing more sent.
    fn reusable(self) -> Option<Conn> {
        (self.read == Read::Done
            && self.keep_alive
            && !self.writing
            && self.write_err.is_none()
            && self.conn.buf.is_empty())
        .then_some(self.conn)
    }
}

/// Sends `req` on `conn` and reads up to the final response head.
pub async fn send(
    conn: Conn,
    req: Request<ProxyBody>,
) -> Result<(Response<()>, ResponseBody), SendError> {
    let mut exch = Exchange::new(conn, req);
    let head = poll_fn(|cx| exch.poll_head(cx)).await?;
    Ok((head, ResponseBody { exch: Some(exch) }))
}

/// The response body, read off the connection as it is polled.
pub struct ResponseBody {
    exch: Option<Exchange>,
}

impl ResponseBody {
    /// The connection for the idle list, when the body ended cleanly and
    /// the connection can be reused; `None` otherwise (and it is closed).
    pub fn take_conn(&mut self) -> Option<Conn> {
        self.exch.take().and_then(Exchange::reusable)
    }

    /// Closes the connection now (the body failed or timed out).
    pub fn discard(&mut self) {
        self.exch = None;
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut().exch.as_mut() {
            Some(e) => e.poll_body(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.exch.as_ref().is_none_or(|e| match e.read {
            Read::Done => true,
            Read::Failed => e.deferred.is_none(),
            _ => false,
        })
    }

    fn size_hint(&self) -> SizeHint {
        match self.exch.as_ref().map(|e| e.read) {
            Some(Read::Length(n)) => SizeHint::with_exact(n),
            Some(Read::Done) | None => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

fn upstream(e: ProtocolError) -> SendError {
    SendError::Upstream(Box::new(e))
}

/// Serializes the request line and headers into `dst` (cleared first) and
/// decides the body's framing as hyper's client did. Returns the framing,
/// whether the body is sent, and the trailer names a chunked body may carry.
fn encode_head(
    parts: &http::request::Parts,
    body: &ProxyBody,
    dst: &mut Vec<u8>,
) -> (Framing, bool, Option<Vec<HeaderName>>) {
    enum Add {
        Nothing,
        Chunked,
        Length(u64),
    }
    let headers = &parts.headers;
    dst.clear();
    dst.reserve(64usize.saturating_add(headers.len().saturating_mul(40)));
    dst.extend_from_slice(parts.method.as_str().as_bytes());
    dst.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    dst.extend_from_slice(target.as_bytes());
    dst.extend_from_slice(b" HTTP/1.1\r\n");

    let (framing, send_body, skip_te, skip_cl, add) = if body.is_end_stream() {
        (Framing::Length(0), false, true, false, Add::Nothing)
    } else if headers.contains_key(header::TRANSFER_ENCODING) {
        let add = if is_chunked(headers) {
            Add::Nothing
        } else {
            Add::Chunked
        };
        (Framing::Chunked, true, false, true, add)
    } else if let Some(n) = content_length(headers) {
        (Framing::Length(n), true, false, false, Add::Nothing)
    } else {
        match body.size_hint().exact() {
            None if matches!(parts.method, Method::GET | Method::HEAD | Method::CONNECT) => {
                (Framing::Length(0), false, false, false, Add::Nothing)
            }
            None => (Framing::Chunked, true, false, true, Add::Chunked),
            Some(n) => (Framing::Length(n), true, false, true, Add::Length(n)),
        }
    };
    for (name, value) in headers {
        if (skip_te && name == header::TRANSFER_ENCODING)
            || (skip_cl && name == header::CONTENT_LENGTH)
        {
            continue;
        }
        push_header(dst, name, value);
    }
    match add {
        Add::Nothing => {}
        Add::Chunked => dst.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Add::Length(n) => {
            dst.extend_from_slice(b"content-length: ");
            push_decimal(dst, n);
            dst.extend_from_slice(b"\r\n");
        }
    }
    dst.extend_from_slice(b"\r\n");
    let trailer_names = (framing == Framing::Chunked && headers.contains_key(header::TRAILER))
        .then(|| {
            headers
                .get_all(header::TRAILER)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|s| s.split(','))
                .filter_map(|s| HeaderName::from_bytes(s.trim().as_bytes()).ok())
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty());
    (framing, send_body, trailer_names)
}

/// The size of a chunk from its size line (without the LF): hex digits,
/// optional whitespace and extensions, then CR.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r")?;
    let n = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let (hex, rest) = line.split_at_checked(n)?;
    if hex.is_empty() {
        return None;
    }
    let size = hex.iter().try_fold(0u64, |acc, b| {
        let d = char::from(*b).to_digit(16)?;
        acc.checked_mul(16)?.checked_add(u64::from(d))
    })?;
    let rest = rest.trim_ascii_start();
    if !rest.is_empty() && !rest.starts_with(b";") {
        return None;
    }
    Some(size)
}

/// A trailer section ending in an empty line at the start of `buf`: its
/// length and fields.
fn parse_trailers(buf: &[u8]) -> Option<(usize, HeaderMap)> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (len, fields) = match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(done)) => done,
        _ => return None,
    };
    if len > MAX_TRAILERS {
        return None;
    }
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(f.value).ok()?;
        map.append(name, value);
    }
    Some((len, map))
}

/// Fields that may not travel in request trailers (hyper's list).
fn valid_trailer(name: &HeaderName) -> bool {
    !matches!(
        *name,
        header::AUTHORIZATION
            | header::CACHE_CONTROL
            | header::CONTENT_ENCODING
            | header::CONTENT_LENGTH
            | header::CONTENT_RANGE
            | header::CONTENT_TYPE
            | header::HOST
            | header::MAX_FORWARDS
            | header::SET_COOKIE
            | header::TRAILER
            | header::TRANSFER_ENCODING
            | header::TE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"1a\r"), Some(26));
        assert_eq!(chunk_size(b"0\r"), Some(0));
        assert_eq!(chunk_size(b"FF;ext=1\r"), Some(255));
        assert_eq!(chunk_size(b"10 ;x\r"), Some(16));
        assert_eq!(chunk_size(b"\r"), None);
        assert_eq!(chunk_size(b"1g\r"), None);
        assert_eq!(chunk_size(b"1a"), None, "no CR");
        assert_eq!(chunk_size(b"fffffffffffffffff\r"), None, "overflow");
    }

    /// The name memo follows a server whose names change between responses
    /// on one connection: a name moved, a new one, another spelling, more
    /// headers than the memo holds, then fewer.
    #[tokio::test]
    async fn header_names_follow_each_response_on_a_kept_connection() {
        use http_body_util::BodyExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let heads: Vec<Vec<(String, &str)>> = vec![
            vec![("X-Backend".into(), "a"), ("Content-Length".into(), "2")],
            vec![("Content-Length".into(), "2"), ("X-Backend".into(), "b")],
            vec![("x-other".into(), "c"), ("CONTENT-length".into(), "2")],
            (0..20)
                .map(|i| (format!("x-h{i}"), "v"))
                .chain([("Content-Length".to_string(), "2")])
                .collect(),
            vec![("X-Backend".into(), "e"), ("Content-Length".into(), "2")],
        ];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let wire: Vec<Vec<u8>> = heads
            .iter()
            .map(|h| {
                let mut r = b"HTTP/1.1 200 OK\r\n".to_vec();
                for (n, v) in h {
                    r.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
                }
                r.extend_from_slice(b"\r\nok");
                r
            })
            .collect();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            for resp in wire {
                // One request head per response (no bodies are sent).
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    assert!(n > 0, "client closed early");
                    got.extend_from_slice(&buf[..n]);
                }
                s.write_all(&resp).await.unwrap();
            }
        });
        let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap());
        for want in &heads {
            let req = Request::builder()
                .uri("/")
                .header(header::HOST, "x")
                .body(crate::pipeline::body::empty())
                .unwrap();
            let Ok((head, mut body)) = send(conn, req).await else {
                panic!("the exchange failed");
            };
            let got: Vec<(String, String)> = head
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap().to_string()))
                .collect();
            let mut expected: Vec<(String, String)> = want
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
                .collect();
            let mut got_sorted = got.clone();
            got_sorted.sort();
            expected.sort();
            assert_eq!(got_sorted, expected);
            let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(&data[..], b"ok");
            assert!(body.frame().await.is_none());
            conn = body.take_conn().expect("the connection is kept");
        }
        server.await.unwrap();
    }
}
