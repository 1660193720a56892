//! Response compression (`compression` in aegis.yaml): gzip and brotli on
//! the way to the client, with nginx's `gzip` rules.
//!
//! [`compress`] decides from the response head and what the request said
//! ([`ClientEncoding`]) and, when it compresses, wraps the body in
//! [`CompressBody`], which compresses frame by frame: what the upstream has
//! sent is compressed as it arrives and flushed whenever the upstream makes
//! us wait, so a slow or streaming response is never held back whole and
//! nothing is buffered beyond the encoder's window.
//!
//! As nginx: only 200, 403 and 404 are compressed; a HEAD gets the headers
//! a GET would (`Content-Encoding`, no `Content-Length`: nginx's gzip
//! filter runs before `header_only` is set) and no body; HTTP/1.0 requests
//! are not (`gzip_http_version 1.1`); a request carrying `Via` is not unless
//! `proxied: any` (`gzip_proxied`); `Vary: Accept-Encoding` goes on every
//! response that could have been compressed, whether this client accepted
//! it or not; `Content-Length` and `Accept-Ranges` are dropped and a strong
//! `ETag` becomes weak. Unlike nginx, `Cache-Control: no-transform` is
//! honoured (RFC 9110 §7.7: a proxy must not transform such content).

use std::io::Write as _;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use aegis_engine::config::settings::{self, Proxied};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};

use super::body::{BoxError, ProxyBody, boxed};

/// Compressed output is handed on once this much is pending, even while the
/// upstream keeps sending.
const OUT_CHUNK: usize = 16 << 10;

/// brotli's window, log2: 256 KiB, about what a zlib stream holds, so one
/// compressed response costs the same memory whichever encoding it gets.
const BROTLI_LGWIN: u32 = 18;

/// What the request says about compression, taken before the request is
/// rewritten for the upstream.
#[derive(Debug, Clone, Default)]
pub struct ClientEncoding {
    accept: Option<HeaderValue>,
    head: bool,
    via: bool,
    http10: bool,
}

impl ClientEncoding {
    pub fn of<B>(req: &Request<B>) -> Self {
        Self::from_parts(req.method(), req.version(), req.headers())
    }

    pub fn from_parts(method: &Method, version: Version, headers: &HeaderMap) -> Self {
        Self {
            accept: headers.get(header::ACCEPT_ENCODING).cloned(),
            head: method == Method::HEAD,
            via: headers.contains_key(header::VIA),
            http10: version < Version::HTTP_11,
        }
    }
}

/// The compiled `compression` settings. `Copy`, as the rest of
/// [`super::PipelineSettings`]: each distinct settings block is compiled
/// once per process and kept (a handful over a process's life), so
/// swapping settings on a promotion copies a pointer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Compression(Option<&'static Policy>);

#[derive(Debug, PartialEq)]
struct Policy {
    gzip: bool,
    brotli: bool,
    level: u32,
    min_length: u64,
    /// `None`: `*`, any type (and none).
    types: Option<Vec<String>>,
    proxied_any: bool,
    vary: bool,
}

/// Compiled policies, one per distinct settings block seen.
static POLICIES: Mutex<Vec<&'static Policy>> = Mutex::new(Vec::new());

impl Compression {
    pub fn from_settings(c: &settings::Compression) -> Self {
        if !c.enabled() {
            return Self(None);
        }
        let types = if c.types.iter().any(|t| t == "*") {
            None
        } else {
            Some(c.types.iter().map(|t| t.to_ascii_lowercase()).collect())
        };
        let policy = Policy {
            gzip: c.gzip,
            brotli: c.brotli,
            level: c.level.clamp(1, 9),
            min_length: c.min_length.0,
            types,
            proxied_any: c.proxied == Proxied::Any,
            vary: c.vary,
        };
        let mut all = POLICIES.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = all.iter().find(|p| ***p == policy) {
            return Self(Some(*p));
        }
        let p: &'static Policy = Box::leak(Box::new(policy));
        all.push(p);
        Self(Some(p))
    }

    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }
}

/// A content coding Aegis produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    Brotli,
}

impl Encoding {
    fn token(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Brotli => "br",
        }
    }
}

/// The coding to use for `accept` (an `Accept-Encoding` value) among those
/// allowed: q-values honoured (`gzip;q=0` refuses gzip), `*` stands for a
/// coding not named, the higher q wins and brotli wins a tie.
pub fn negotiate(accept: &str, gzip: bool, brotli: bool) -> Option<Encoding> {
    let (mut q_gzip, mut q_br, mut q_star) = (None, None, None);
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        if coding.is_empty() {
            continue;
        }
        let mut q = 1000u32;
        for p in parts {
            if let Some((k, v)) = p.split_once('=')
                && k.trim().eq_ignore_ascii_case("q")
            {
                q = parse_q(v.trim()).unwrap_or(0);
            }
        }
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            q_gzip = Some(q_gzip.map_or(q, |o: u32| o.max(q)));
        } else if coding.eq_ignore_ascii_case("br") {
            q_br = Some(q_br.map_or(q, |o: u32| o.max(q)));
        } else if coding == "*" {
            q_star = Some(q);
        }
    }
    let g = if gzip {
        q_gzip.or(q_star).unwrap_or(0)
    } else {
        0
    };
    let b = if brotli {
        q_br.or(q_star).unwrap_or(0)
    } else {
        0
    };
    match (g, b) {
        (0, 0) => None,
        (g, b) if b >= g => Some(Encoding::Brotli),
        _ => Some(Encoding::Gzip),
    }
}

/// A q-value in thousandths (RFC 9110 §12.4.2: `0`, `1`, `0.xyz`, `1.000`).
fn parse_q(v: &str) -> Option<u32> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths = 0u32;
    for (i, b) in frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .enumerate()
    {
        let weight = [100u32, 10, 1].get(i).copied().unwrap_or(0);
        thousandths = thousandths.saturating_add(u32::from(b - b'0').saturating_mul(weight));
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// The response, compressed when the policy, the request and the response
/// allow it (see the module comment for the rules); otherwise as it was,
/// perhaps with `Vary: Accept-Encoding` added.
pub fn compress(
    policy: Compression,
    client: &ClientEncoding,
    mut resp: Response<ProxyBody>,
) -> Response<ProxyBody> {
    let Some(p) = policy.0 else {
        return resp;
    };
    if !eligible(p, &resp) {
        return resp;
    }
    if p.vary {
        add_vary(resp.headers_mut());
    }
    if client.http10 || (client.via && !p.proxied_any) {
        return resp;
    }
    let Some(encoding) = client
        .accept
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(|a| negotiate(a, p.gzip, p.brotli))
    else {
        return resp;
    };
    let h = resp.headers_mut();
    h.remove(header::CONTENT_LENGTH);
    h.remove(header::ACCEPT_RANGES);
    h.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(encoding.token()),
    );
    weaken_etag(h);
    if client.head {
        // No body to encode (an encoder would still write a header).
        return resp;
    }
    let encoder = Encoder::new(encoding, p.level);
    resp.map(|body| boxed(CompressBody::new(body, encoder)))
}

/// Status, encoding, transform, length and type: what makes a response one
/// that is compressed for a client that accepts it.
fn eligible(p: &Policy, resp: &Response<ProxyBody>) -> bool {
    if !matches!(
        resp.status(),
        StatusCode::OK | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
    ) {
        return false;
    }
    let h = resp.headers();
    if h.get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().trim_ascii().is_empty())
    {
        return false;
    }
    if h.get_all(header::CACHE_CONTROL).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
        })
    }) {
        return false;
    }
    let length = match h.get(header::CONTENT_LENGTH) {
        Some(v) => v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()),
        None => resp.body().size_hint().exact(),
    };
    if length.is_some_and(|n| n < p.min_length) {
        return false;
    }
    let Some(types) = &p.types else {
        return true;
    };
    let Some(ct) = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let media = ct.split(';').next().unwrap_or("").trim();
    types.iter().any(|t| match t.strip_suffix("/*") {
        Some(main) => media
            .split_once('/')
            .is_some_and(|(m, _)| m.eq_ignore_ascii_case(main)),
        None => media.eq_ignore_ascii_case(t),
    })
}

/// Appends `Vary: Accept-Encoding` unless the response already varies on it
/// (or on everything).
fn add_vary(h: &mut HeaderMap) {
    let present = h.get_all(header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|n| {
                let n = n.trim();
                n == "*" || n.eq_ignore_ascii_case("accept-encoding")
            })
        })
    });
    if !present {
        h.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// A strong ETag names the identity bytes; the compressed ones are only
/// semantically equal (nginx does the same). One that is not a quoted tag
/// is dropped.
fn weaken_etag(h: &mut HeaderMap) {
    let Some(v) = h.get(header::ETAG) else {
        return;
    };
    let b = v.as_bytes();
    if b.starts_with(b"W/") {
        return;
    }
    if b.starts_with(b"\"") {
        let mut weak = Vec::with_capacity(b.len().saturating_add(2));
        weak.extend_from_slice(b"W/");
        weak.extend_from_slice(b);
        if let Ok(w) = HeaderValue::from_bytes(&weak) {
            h.insert(header::ETAG, w);
            return;
        }
    }
    h.remove(header::ETAG);
}

/// A streaming encoder writing into a `Vec` the body drains.
enum Encoder {
    Gzip(Box<flate2::write::GzEncoder<Vec<u8>>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
}

impl Encoder {
    fn new(encoding: Encoding, level: u32) -> Self {
        match encoding {
            Encoding::Gzip => Encoder::Gzip(Box::new(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(level),
            ))),
            // brotli at quality q costs about what gzip does at q + 1.
            Encoding::Brotli => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                level.saturating_sub(1).max(1),
                BROTLI_LGWIN,
            ))),
        }
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Brotli(e) => e.write_all(data),
        }
    }

    /// Emits everything written so far (a sync flush).
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Brotli(e) => e.flush(),
        }
    }

    fn pending(&mut self) -> usize {
        match self {
            Encoder::Gzip(e) => e.get_mut().len(),
            Encoder::Brotli(e) => e.get_mut().len(),
        }
    }

    fn take(&mut self) -> Bytes {
        let out = match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Brotli(e) => e.get_mut(),
        };
        Bytes::from(std::mem::take(out))
    }

    /// Ends the stream; the last bytes.
    fn finish(self) -> std::io::Result<Bytes> {
        match self {
            Encoder::Gzip(e) => (*e).finish().map(Bytes::from),
            Encoder::Brotli(e) => Ok(Bytes::from(e.into_inner())),
        }
    }
}

/// A body compressed as it streams.
pub struct CompressBody {
    inner: ProxyBody,
    /// `None` once the stream is finished (or failed).
    encoder: Option<Encoder>,
    /// Input written since the last flush.
    dirty: bool,
    /// Trailers of the inner body, sent after the last compressed bytes.
    trailers: Option<HeaderMap>,
}

impl CompressBody {
    fn new(inner: ProxyBody, encoder: Encoder) -> Self {
        Self {
            inner,
            encoder: Some(encoder),
            dirty: false,
            trailers: None,
        }
    }
}

fn io_error(e: std::io::Error) -> BoxError {
    Box::new(e)
}

impl Body for CompressBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(enc) = this.encoder.as_mut() else {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => {
                    // The upstream makes us wait: what it sent so far goes
                    // to the client now, not when the next bytes come.
                    if this.dirty {
                        this.dirty = false;
                        if let Err(e) = enc.flush() {
                            this.encoder = None;
                            return Poll::Ready(Some(Err(io_error(e))));
                        }
                        let out = enc.take();
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if let Err(e) = enc.write(&data) {
                            this.encoder = None;
                            return Poll::Ready(Some(Err(io_error(e))));
                        }
                        this.dirty = true;
                        if enc.pending() >= OUT_CHUNK {
                            return Poll::Ready(Some(Ok(Frame::data(enc.take()))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            this.trailers = Some(t);
                        }
                        if let Some(out) = this.end() {
                            return Poll::Ready(Some(out));
                        }
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    this.encoder = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    if let Some(out) = this.end() {
                        return Poll::Ready(Some(out));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl CompressBody {
    /// Finishes the stream: the last compressed bytes, if any.
    fn end(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        let enc = self.encoder.take()?;
        match enc.finish() {
            Ok(out) if out.is_empty() => None,
            Ok(out) => Some(Ok(Frame::data(out))),
            Err(e) => Some(Err(io_error(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use http_body_util::BodyExt as _;

    use super::*;
    use crate::pipeline::full;

    fn policy(f: impl FnOnce(&mut settings::Compression)) -> Compression {
        let mut c = settings::Compression {
            gzip: true,
            brotli: true,
            ..Default::default()
        };
        f(&mut c);
        Compression::from_settings(&c)
    }

    fn client(accept: &str) -> ClientEncoding {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(accept).unwrap(),
        );
        ClientEncoding::from_parts(&Method::GET, Version::HTTP_11, &h)
    }

    fn html(body: &'static [u8]) -> Response<ProxyBody> {
        let mut r = Response::new(full(body));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        r
    }

    const PAGE: &[u8] = b"<html><body>hello hello hello hello hello hello hello</body></html>";

    fn encoding(r: &Response<ProxyBody>) -> Option<&str> {
        r.headers()
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap())
    }

    fn gunzip(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(b)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn unbrotli(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        brotli::Decompressor::new(b, 4096)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn q_values() {
        use Encoding::*;
        assert_eq!(negotiate("gzip", true, true), Some(Gzip));
        assert_eq!(negotiate("gzip, br", true, true), Some(Brotli));
        assert_eq!(negotiate("gzip, br", true, false), Some(Gzip));
        assert_eq!(negotiate("br;q=0.5, gzip", true, true), Some(Gzip));
        assert_eq!(negotiate("gzip;q=0", true, true), None);
        assert_eq!(negotiate("gzip;q=0.000", true, false), None);
        assert_eq!(negotiate("GZIP ; Q=0.001", true, false), Some(Gzip));
        assert_eq!(negotiate("identity", true, true), None);
        assert_eq!(negotiate("", true, true), None);
        assert_eq!(negotiate("*", true, false), Some(Gzip));
        assert_eq!(negotiate("*;q=0, gzip", true, true), Some(Gzip));
        assert_eq!(negotiate("gzip;q=0, *", true, false), None);
        assert_eq!(negotiate("x-gzip", true, false), Some(Gzip));
        assert_eq!(negotiate("gzip;q=2", true, false), None);
        assert_eq!(negotiate("gzip;q=1.0", true, false), Some(Gzip));
        assert_eq!(negotiate("br", true, false), None);
        assert_eq!(parse_q("0.5"), Some(500));
        assert_eq!(parse_q("0.0005"), None);
        assert_eq!(parse_q("1.001"), None);
    }

    #[test]
    fn off_by_default() {
        let p = Compression::from_settings(&settings::Compression::default());
        assert!(!p.enabled());
        let r = compress(p, &client("gzip"), html(PAGE));
        assert_eq!(encoding(&r), None);
        assert!(r.headers().get(header::VARY).is_none());
    }

    #[test]
    fn the_same_settings_share_one_policy() {
        let (a, b) = (policy(|_| {}), policy(|_| {}));
        assert!(std::ptr::eq(a.0.unwrap(), b.0.unwrap()));
        assert!(!std::ptr::eq(
            a.0.unwrap(),
            policy(|c| c.level = 9).0.unwrap()
        ));
    }

    #[test]
    fn skip_rules() {
        let p = policy(|_| {});
        let plain = |r: Response<ProxyBody>| {
            assert_eq!(encoding(&r), None);
            assert!(r.headers().contains_key(header::CONTENT_LENGTH));
        };
        // HEAD, as nginx 1.22: a GET's headers, and the body left alone.
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        let head = ClientEncoding::from_parts(&Method::HEAD, Version::HTTP_11, &h);
        let r = compress(p, &head, html(PAGE));
        assert_eq!(encoding(&r), Some("gzip"));
        assert!(r.headers().contains_key(header::VARY));
        assert!(!r.headers().contains_key(header::CONTENT_LENGTH));
        // HTTP/1.0.
        let old = ClientEncoding::from_parts(&Method::GET, Version::HTTP_10, &h);
        plain(compress(p, &old, html(PAGE)));
        // Statuses other than 200, 403, 404.
        for s in [101, 201, 204, 206, 301, 304, 500] {
            let mut r = html(PAGE);
            *r.status_mut() = StatusCode::from_u16(s).unwrap();
            plain(compress(p, &client("gzip"), r));
        }
        for s in [403, 404] {
            let mut r = html(PAGE);
            *r.status_mut() = StatusCode::from_u16(s).unwrap();
            assert_eq!(encoding(&compress(p, &client("gzip"), r)), Some("gzip"));
        }
        // Already encoded.
        let mut r = html(PAGE);
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
        let r = compress(p, &client("gzip"), r);
        assert_eq!(encoding(&r), Some("zstd"));
        // no-transform.
        let mut r = html(PAGE);
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=60, No-Transform"),
        );
        plain(compress(p, &client("gzip"), r));
        // Type not listed; no type.
        let mut r = html(PAGE);
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
        plain(compress(p, &client("gzip"), r));
        let mut r = html(PAGE);
        r.headers_mut().remove(header::CONTENT_TYPE);
        plain(compress(p, &client("gzip"), r));
        // Too short, by Content-Length and by the body's exact length.
        plain(compress(p, &client("gzip"), html(b"0123456789")));
        let mut r = Response::new(full(&b"0123456789"[..]));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        assert_eq!(encoding(&compress(p, &client("gzip"), r)), None);
        // Proxied (Via) with `proxied: off`, and with `any`.
        h.insert(header::VIA, HeaderValue::from_static("1.1 cdn"));
        let via = ClientEncoding::from_parts(&Method::GET, Version::HTTP_11, &h);
        let r = compress(p, &via, html(PAGE));
        assert_eq!(r.headers()[header::VARY], "Accept-Encoding");
        plain(r);
        let any = policy(|c| c.proxied = Proxied::Any);
        assert_eq!(encoding(&compress(any, &via, html(PAGE))), Some("gzip"));
        // Not accepted: plain, but Vary all the same (for caches).
        let r = compress(p, &client("identity"), html(PAGE));
        assert_eq!(r.headers()[header::VARY], "Accept-Encoding");
        plain(r);
        plain(compress(p, &ClientEncoding::default(), html(PAGE)));
        // vary: false.
        let nv = policy(|c| c.vary = false);
        let r = compress(nv, &client("gzip"), html(PAGE));
        assert!(!r.headers().contains_key(header::VARY));
        assert_eq!(encoding(&r), Some("gzip"));
    }

    #[test]
    fn types_wildcards() {
        let p = policy(|c| c.types = vec!["application/*".into(), "text/css".into()]);
        let typed = |t: &'static str| {
            let mut r = html(PAGE);
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(t));
            encoding(&compress(p, &client("gzip"), r)).map(str::to_string)
        };
        assert_eq!(typed("application/json").as_deref(), Some("gzip"));
        assert_eq!(typed("Text/CSS; charset=utf-8").as_deref(), Some("gzip"));
        assert_eq!(typed("text/html"), None);
        let any = policy(|c| c.types = vec!["*".into()]);
        let mut r = html(PAGE);
        r.headers_mut().remove(header::CONTENT_TYPE);
        assert_eq!(encoding(&compress(any, &client("gzip"), r)), Some("gzip"));
    }

    #[tokio::test]
    async fn headers_of_a_compressed_response() {
        let p = policy(|_| {});
        let mut r = html(PAGE);
        r.headers_mut()
            .insert(header::ETAG, HeaderValue::from_static("\"abc\""));
        r.headers_mut()
            .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        r.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Origin"));
        let r = compress(p, &client("gzip"), r);
        let h = r.headers();
        assert_eq!(h[header::CONTENT_ENCODING], "gzip");
        assert_eq!(h[header::ETAG], "W/\"abc\"");
        assert!(!h.contains_key(header::CONTENT_LENGTH));
        assert!(!h.contains_key(header::ACCEPT_RANGES));
        let vary: Vec<_> = h.get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["Origin", "Accept-Encoding"]);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(gunzip(&body), PAGE);
        // A weak ETag stays; Vary already naming Accept-Encoding is not doubled.
        let mut r = html(PAGE);
        r.headers_mut()
            .insert(header::ETAG, HeaderValue::from_static("W/\"x\""));
        r.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        let r = compress(p, &client("gzip"), r);
        assert_eq!(r.headers()[header::ETAG], "W/\"x\"");
        assert_eq!(r.headers().get_all(header::VARY).iter().count(), 1);
    }

    /// A body that yields its chunks one at a time with a `Pending` before
    /// each, as a slow upstream does, then trailers.
    struct Trickle {
        chunks: std::collections::VecDeque<Bytes>,
        ready: bool,
        trailers: bool,
    }

    impl Body for Trickle {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            if !self.ready {
                self.ready = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.ready = false;
            match self.chunks.pop_front() {
                Some(c) => Poll::Ready(Some(Ok(Frame::data(c)))),
                None if self.trailers => {
                    self.trailers = false;
                    let mut t = HeaderMap::new();
                    t.insert("x-sum", HeaderValue::from_static("1"));
                    Poll::Ready(Some(Ok(Frame::trailers(t))))
                }
                None => Poll::Ready(None),
            }
        }
    }

    fn big_input() -> Vec<u8> {
        (0..20_000u32)
            .flat_map(|i| format!("<p>line {i} of the page</p>\n").into_bytes())
            .collect()
    }

    async fn streamed(encoding: Encoding) -> (Vec<Bytes>, Option<HeaderMap>, Vec<u8>) {
        let input = big_input();
        let chunks = input.chunks(7000).map(Bytes::copy_from_slice).collect();
        let body = boxed(Trickle {
            chunks,
            ready: false,
            trailers: true,
        });
        let mut b = CompressBody::new(body, Encoder::new(encoding, 5));
        let (mut frames, mut trailers) = (Vec::new(), None);
        while let Some(f) = b.frame().await {
            let f = f.unwrap();
            match f.into_data() {
                Ok(d) => frames.push(d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        assert!(b.is_end_stream());
        (frames, trailers, input)
    }

    #[tokio::test]
    async fn a_streamed_body_is_compressed_frame_by_frame() {
        for enc in [Encoding::Gzip, Encoding::Brotli] {
            let (frames, trailers, input) = streamed(enc).await;
            // Output came while input was still arriving: one or more frames
            // per upstream wait, not one frame at the end.
            assert!(frames.len() > 20, "{enc:?}: {} frames", frames.len());
            let all: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
            assert!(all.len() < input.len() / 4, "{enc:?}: {}", all.len());
            let out = match enc {
                Encoding::Gzip => gunzip(&all),
                Encoding::Brotli => unbrotli(&all),
            };
            assert!(out == input, "{enc:?}: decompressed differs");
            assert_eq!(trailers.unwrap()["x-sum"], "1");
        }
    }

    #[tokio::test]
    async fn brotli_when_preferred() {
        let p = policy(|c| c.level = 9);
        let input = big_input();
        let mut r = Response::new(full(input.clone()));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        let r = compress(p, &client("gzip, deflate, br"), r);
        assert_eq!(encoding(&r), Some("br"));
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert!(unbrotli(&body) == input);
    }

    #[tokio::test]
    async fn an_empty_body_compresses_to_a_valid_stream() {
        let p = policy(|c| c.min_length = aegis_engine::config::units::Size(0));
        let mut r = Response::new(crate::pipeline::empty());
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        let r = compress(p, &client("gzip"), r);
        assert_eq!(encoding(&r), Some("gzip"));
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert!(gunzip(&body).is_empty());
    }
}
