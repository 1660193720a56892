//! A minimal HTTP/1.1 client connection for the load engine's hot path.
//!
//! Requests are serialized once (see [`crate::scenario::Prepared::wire`]) and
//! written as-is; responses are parsed in place with `httparse` and their
//! bodies counted and skipped without copying. This is what wrk does, and
//! it keeps the per-request cost of the load generator well below the
//! server's. HTTP/2 goes through hyper.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::report::ErrorKind;

const INITIAL_BUF: usize = 16 * 1024;
const MAX_HEAD: usize = 256 * 1024;
const MAX_HEADERS: usize = 100;

/// One keep-alive HTTP/1.1 connection.
pub struct H1Conn<S> {
    io: S,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    closed: bool,
}

enum BodyKind {
    Length(u64),
    Chunked,
    UntilClose,
}

fn io_error(e: &std::io::Error) -> ErrorKind {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => ErrorKind::Refused,
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
            ErrorKind::Reset
        }
        K::TimedOut => ErrorKind::Timeout,
        K::InvalidData => ErrorKind::Tls,
        _ => ErrorKind::Other,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> H1Conn<S> {
    pub fn new(io: S) -> Self {
        Self {
            io,
            buf: vec![0; INITIAL_BUF],
            pos: 0,
            end: 0,
            closed: false,
        }
    }

    /// False once the server asked to close (or closed) the connection.
    pub fn is_reusable(&self) -> bool {
        !self.closed
    }

    /// Reads more bytes; Ok(0) at end of stream.
    async fn fill(&mut self) -> Result<usize, ErrorKind> {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.pos > 0 {
                self.buf.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
            } else if self.buf.len() < MAX_HEAD {
                let len = self.buf.len() * 2;
                self.buf.resize(len, 0);
            } else {
                return Err(ErrorKind::Protocol);
            }
        }
        let Some(space) = self.buf.get_mut(self.end..) else {
            return Err(ErrorKind::Other);
        };
        let n = self.io.read(space).await.map_err(|e| io_error(&e))?;
        self.end += n;
        Ok(n)
    }

    /// Reads more bytes; end of stream is a reset.
    async fn fill_some(&mut self) -> Result<(), ErrorKind> {
        match self.fill().await? {
            0 => {
                self.closed = true;
                Err(ErrorKind::Reset)
            }
            _ => Ok(()),
        }
    }

    /// Skips `n` body bytes.
    async fn skip(&mut self, mut n: u64) -> Result<(), ErrorKind> {
        loop {
            let avail = (self.end - self.pos) as u64;
            let take = avail.min(n);
            self.pos += take as usize;
            n -= take;
            if n == 0 {
                return Ok(());
            }
            self.fill_some().await?;
        }
    }

    /// Sends one serialized request and reads the whole response.
    /// Returns the status and the number of body bytes.
    pub async fn round_trip(&mut self, wire: &[u8], head: bool) -> Result<(u16, u64), ErrorKind> {
        self.io.write_all(wire).await.map_err(|e| {
            self.closed = true;
            io_error(&e)
        })?;
        let result = self.read_response(head).await;
        if result.is_err() {
            self.closed = true;
        }
        result
    }

    async fn read_response(&mut self, head: bool) -> Result<(u16, u64), ErrorKind> {
        loop {
            let (status, kind, close) = self.read_head(head).await?;
            if (100..200).contains(&status) && status != 101 {
                continue; // 100 Continue and friends precede the real response.
            }
            if close {
                self.closed = true;
            }
            let bytes = match kind {
                BodyKind::Length(n) => {
                    self.skip(n).await?;
                    n
                }
                BodyKind::Chunked => self.skip_chunked().await?,
                BodyKind::UntilClose => {
                    self.closed = true;
                    let mut total = (self.end - self.pos) as u64;
                    self.pos = self.end;
                    loop {
                        let n = self.fill().await?;
                        if n == 0 {
                            break;
                        }
                        total += n as u64;
                        self.pos = self.end;
                    }
                    total
                }
            };
            return Ok((status, bytes));
        }
    }

    async fn read_head(&mut self, head: bool) -> Result<(u16, BodyKind, bool), ErrorKind> {
        loop {
            if self.pos < self.end {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut resp = httparse::Response::new(&mut headers);
                let data = self.buf.get(self.pos..self.end).unwrap_or_default();
                match resp.parse(data) {
                    Ok(httparse::Status::Complete(n)) => {
                        let status = resp.code.unwrap_or(0);
                        let mut length = None;
                        let mut chunked = false;
                        let mut close = resp.version == Some(0);
                        for h in resp.headers.iter() {
                            if h.name.eq_ignore_ascii_case("content-length") {
                                let v = std::str::from_utf8(h.value)
                                    .ok()
                                    .and_then(|v| v.trim().parse::<u64>().ok())
                                    .ok_or(ErrorKind::Protocol)?;
                                length = Some(v);
                            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                                chunked = h.value.rsplit(|b| *b == b',').next().is_some_and(|v| {
                                    v.trim_ascii().eq_ignore_ascii_case(b"chunked")
                                });
                            } else if h.name.eq_ignore_ascii_case("connection") {
                                if h.value.eq_ignore_ascii_case(b"close") {
                                    close = true;
                                } else if h.value.eq_ignore_ascii_case(b"keep-alive") {
                                    close = false;
                                }
                            }
                        }
                        self.pos += n;
                        let kind = if head || status == 204 || status == 304 || status < 200 {
                            BodyKind::Length(0)
                        } else if chunked {
                            BodyKind::Chunked
                        } else if let Some(n) = length {
                            BodyKind::Length(n)
                        } else {
                            BodyKind::UntilClose
                        };
                        return Ok((status, kind, close));
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => return Err(ErrorKind::Protocol),
                }
            }
            self.fill_some().await?;
        }
    }

    async fn skip_chunked(&mut self) -> Result<u64, ErrorKind> {
        let mut total = 0u64;
        loop {
            let data = self.buf.get(self.pos..self.end).unwrap_or_default();
            match httparse::parse_chunk_size(data) {
                Ok(httparse::Status::Complete((used, size))) => {
                    self.pos += used;
                    if size == 0 {
                        return self.skip_trailers().await.map(|()| total);
                    }
                    total += size;
                    self.skip(size.saturating_add(2)).await?;
                }
                Ok(httparse::Status::Partial) => self.fill_some().await?,
                Err(_) => return Err(ErrorKind::Protocol),
            }
        }
    }

    /// Skips trailer lines up to and including the final empty line.
    async fn skip_trailers(&mut self) -> Result<(), ErrorKind> {
        loop {
            let data = self.buf.get(self.pos..self.end).unwrap_or_default();
            match data.windows(2).position(|w| w == b"\r\n") {
                Some(0) => {
                    self.pos += 2;
                    return Ok(());
                }
                Some(i) => self.pos += i + 2,
                None => self.fill_some().await?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn exchange(
        response: &'static [u8],
        head: bool,
    ) -> (Result<(u16, u64), ErrorKind>, bool) {
        let (client, mut server) = tokio::io::duplex(64);
        let srv = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let _ = server.read(&mut buf).await;
            // Write in small pieces to exercise partial parsing.
            for piece in response.chunks(7) {
                server.write_all(piece).await.unwrap();
            }
            // Dropping `server` ends the stream.
        });
        let mut c = H1Conn::new(client);
        let r = c
            .round_trip(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", head)
            .await;
        srv.await.unwrap();
        (r, c.is_reusable())
    }

    #[tokio::test]
    async fn content_length() {
        let (r, reusable) =
            exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false).await;
        assert_eq!(r, Ok((200, 5)));
        assert!(reusable);
    }

    #[tokio::test]
    async fn chunked_with_trailers() {
        let (r, reusable) = exchange(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nx-t: 1\r\n\r\n",
            false,
        )
        .await;
        assert_eq!(r, Ok((201, 21)));
        assert!(reusable);
    }

    #[tokio::test]
    async fn close_and_continue() {
        let (r, reusable) = exchange(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 500 Oops\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno",
            false,
        )
        .await;
        assert_eq!(r, Ok((500, 2)));
        assert!(!reusable);
    }

    #[tokio::test]
    async fn head_has_no_body_and_truncation_is_reset() {
        let (r, _) = exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", true).await;
        assert_eq!(r, Ok((200, 0)));
        let (r, reusable) =
            exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort", false).await;
        assert_eq!(r, Err(ErrorKind::Reset));
        assert!(!reusable);
        let (r, _) = exchange(b"garbage\r\n\r\n", false).await;
        assert_eq!(r, Err(ErrorKind::Protocol));
    }
}
