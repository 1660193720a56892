//! Intermediary header semantics (RFC 9110 §7.6, RFC 9112): hop-by-hop
//! removal, `X-Forwarded-*` and `Via`, and the framing checks that hyper's
//! parser does not already make.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

const HOP_COUNT: usize = 6;

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Names a `Connection` header may list that are never removed on its word,
/// because framing or routing depends on them and we set them ourselves.
fn protected(name: &HeaderName) -> bool {
    name == header::HOST || name == header::CONTENT_LENGTH
}

/// Removes hop-by-hop headers and those named in `Connection`. With
/// `keep_upgrade`, `Upgrade` and a `Connection: upgrade` survive (the request
/// or 101 response of an upgrade). `TE: trailers` survives on requests when
/// `keep_te_trailers` is set, since it tells the origin the client can take
/// trailers.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool, keep_te_trailers: bool) {
    // One pass over the names present: a request without hop-by-hop headers
    // (the common keep-alive case) costs no hashed remove at all.
    let mut present = [false; HOP_COUNT];
    for name in headers.keys() {
        for (seen, hop) in present.iter_mut().zip(&HOP_BY_HOP) {
            if name == hop {
                *seen = true;
            }
        }
    }
    if !present.contains(&true) {
        return;
    }
    let mut listed: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        if let Ok(s) = value.to_str() {
            for token in s.split(',') {
                let token = token.trim();
                if token.is_empty() {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes())
                    && !protected(&name)
                {
                    listed.push(name);
                }
            }
        }
    }
    let upgrade = if keep_upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    let te_trailers = keep_te_trailers
        && headers.get_all(header::TE).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
        });
    for name in &listed {
        headers.remove(name);
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, seen)| *seen) {
        headers.remove(name);
    }
    if let Some(up) = upgrade {
        headers.insert(header::UPGRADE, up);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// True when the message asks for a protocol upgrade (`Connection: upgrade`
/// and an `Upgrade` header).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        })
}

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Appends the client (its address as a value, [`ip_value`]) to
/// `X-Forwarded-For`, sets `X-Forwarded-Proto` and `X-Forwarded-Host`.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: HeaderValue,
    tls: bool,
    host: Option<&HeaderValue>,
) {
    let mut xff = String::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(s) = v.to_str() {
            let s = s.trim();
            if !s.is_empty() {
                if !xff.is_empty() {
                    xff.push_str(", ");
                }
                xff.push_str(s);
            }
        }
    }
    let value = if xff.is_empty() {
        // The common case, no proxy in front: the client's entry as it is.
        Some(client)
    } else {
        xff.push_str(", ");
        // An address is ASCII digits, dots and colons.
        xff.push_str(client.to_str().unwrap_or(""));
        HeaderValue::from_str(&xff).ok()
    };
    if let Some(v) = value {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    match host {
        Some(v) => {
            headers.insert(X_FORWARDED_HOST.clone(), v.clone());
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// Appends a `Via` entry (`1.1 aegis`).
/// `client` as a header value. IPv4 (nearly every client) is written digit
/// by digit into a stack buffer; IPv6 goes through `Display`.
pub fn ip_value(client: IpAddr) -> HeaderValue {
    let v4 = match client {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => {
            return HeaderValue::from_str(&v6.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        }
    };
    let mut buf = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        let digits = [octet / 100, octet / 10 % 10, octet % 10];
        let skip = if octet >= 100 {
            0
        } else if octet >= 10 {
            1
        } else {
            2
        };
        let dot = (i > 0).then_some(b'.');
        for b in dot
            .into_iter()
            .chain(digits.iter().skip(skip).map(|d| b'0' + d))
        {
            if let Some(slot) = buf.get_mut(len) {
                *slot = b;
                len += 1;
            }
        }
    }
    HeaderValue::from_bytes(buf.get(..len).unwrap_or_default())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

pub fn append_via(headers: &mut HeaderMap, version: http::Version) {
    let v = match version {
        http::Version::HTTP_09 => "0.9 aegis",
        http::Version::HTTP_10 => "1.0 aegis",
        http::Version::HTTP_2 => "2.0 aegis",
        http::Version::HTTP_3 => "3.0 aegis",
        _ => "1.1 aegis",
    };
    headers.append(header::VIA, HeaderValue::from_static(v));
}

/// Why a request's authority (`Host`, absolute-form target, `:authority`)
/// is refused with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("no Host header")]
    Missing,
    #[error("more than one Host header")]
    Duplicate,
    #[error("invalid Host value")]
    Invalid,
    #[error("userinfo in the request target")]
    Userinfo,
}

/// True when `v` is a valid `uri-host [ ":" port ]` (RFC 9110 §7.2, RFC
/// 3986 §3.2.2): a reg-name of unreserved, sub-delims and pct-encoded
/// characters, or an IP literal in brackets, then an optional port of
/// digits. Empty is invalid; so are spaces, `/`, `?`, `#` and `@`.
pub fn valid_host(v: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = v.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|b| *b == b']') else {
            return false;
        };
        let (lit, after) = rest.split_at(end);
        let after = after.get(1..).unwrap_or(&[]);
        let lit_ok = !lit.is_empty()
            && lit
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.' | b'v' | b'V'));
        if !lit_ok {
            return false;
        }
        match after {
            [] => return true,
            [b':', port @ ..] => (&b"x"[..], port),
            _ => return false,
        }
    } else {
        match v.iter().rposition(|b| *b == b':') {
            Some(i) => (
                v.get(..i).unwrap_or(&[]),
                v.get(i.saturating_add(1)..).unwrap_or(&[]),
            ),
            None => (v, &[][..]),
        }
    };
    if host.is_empty() || !port.iter().all(u8::is_ascii_digit) || port.len() > 5 {
        return false;
    }
    // A `:` left in the host means a second colon: not a port.
    host.iter().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    })
}

/// The authority a request is for, validated (RFC 9112 §3.2, RFC 9113
/// §8.3.1). The request target's authority wins over `Host`: an HTTP/1
/// absolute-form target (`GET http://a.example/ HTTP/1.1`, where §3.2.2
/// says a server MUST ignore `Host`) and HTTP/2's `:authority` (which
/// hyper puts in the URI) alike. Userinfo in it is refused. Otherwise the
/// single `Host` header: none on HTTP/1.1, two, or an invalid value is a
/// 400. HTTP/1.0 may omit it (`Ok(None)`), and so may HTTP/2 without
/// `:authority`.
///
/// The value is the `Host` header's own (a reference count on the request's
/// bytes, no copy) unless the authority came in the target; either way it is
/// a valid host, so visible ASCII.
pub fn request_authority(
    version: http::Version,
    uri: &http::Uri,
    headers: &HeaderMap,
) -> Result<Option<HeaderValue>, HostError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Duplicate);
    }
    if let Some(auth) = uri.authority() {
        let a = auth.as_str();
        if a.contains('@') {
            return Err(HostError::Userinfo);
        }
        if !valid_host(a.as_bytes()) {
            return Err(HostError::Invalid);
        }
        return HeaderValue::from_str(a)
            .map(Some)
            .map_err(|_| HostError::Invalid);
    }
    match first {
        Some(v) if valid_host(v.as_bytes()) => Ok(Some(v.clone())),
        Some(_) => Err(HostError::Invalid),
        None if version == http::Version::HTTP_11 => Err(HostError::Missing),
        None => Ok(None),
    }
}

/// RFC 9113 §8.2.3: an HTTP/2 client may split `cookie` into several
/// fields; an HTTP/1.1 upstream must get them as one, joined with `"; "`.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(_), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let joined: Vec<u8> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// The `Upgrade` a request may pass on: only `websocket`, only on a route
/// with `websocket: true`. `h2c` (RFC 7540 §3.2, gone from RFC 9113) is
/// never relayed: it would open a raw HTTP/2 tunnel to the backend past
/// the proxy's routing and limits.
pub fn upgrade_allowed(headers: &HeaderMap, route_allows: bool) -> bool {
    route_allows
        && wants_upgrade(headers)
        && headers.get(header::UPGRADE).is_some_and(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .all(|t| t.trim_ascii().eq_ignore_ascii_case(b"websocket"))
        })
        && headers.get_all(header::UPGRADE).iter().count() == 1
}

/// Why a request's framing is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndChunked,
    #[error("Content-Length values differ or are invalid")]
    BadContentLength,
    #[error("Transfer-Encoding other than chunked")]
    BadTransferEncoding,
    /// Codings other than one `chunked` (`gzip, chunked`, `chunked,
    /// chunked`): nginx and RFC 9112 §6.1 answer 501.
    #[error("Transfer-Encoding other than a single chunked")]
    UnsupportedTransferEncoding,
}

impl FramingError {
    /// 501 for a transfer coding we do not implement, 400 otherwise.
    pub fn status(self) -> http::StatusCode {
        match self {
            FramingError::UnsupportedTransferEncoding => http::StatusCode::NOT_IMPLEMENTED,
            _ => http::StatusCode::BAD_REQUEST,
        }
    }
}

/// Checks what hyper lets through: it resolves `Content-Length` together with
/// `Transfer-Encoding` silently (the transport layer reports that case with
/// [`crate::pipeline::AmbiguousFraming`]) and HTTP/2 carries its own framing,
/// so this is the belt to those braces.
pub fn check_framing(headers: &HeaderMap) -> Result<(), FramingError> {
    let mut length: Option<u64> = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Err(FramingError::BadContentLength);
            }
            let n: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(FramingError::BadContentLength)?;
            match length {
                Some(prev) if prev != n => return Err(FramingError::BadContentLength),
                _ => length = Some(n),
            }
        }
    }
    let te: Vec<&HeaderValue> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    if !te.is_empty() {
        if length.is_some() {
            return Err(FramingError::LengthAndChunked);
        }
        let last = te
            .last()
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.rsplit(',').next())
            .map(str::trim);
        if !last.is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            return Err(FramingError::BadTransferEncoding);
        }
        let codings = te
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .filter(|t| !t.trim_ascii().is_empty())
            .count();
        if codings != 1 {
            return Err(FramingError::UnsupportedTransferEncoding);
        }
    }
    Ok(())
}

/// Total bytes of header names and values (what `limits.max_header_bytes`
/// bounds), counting `": "` and CRLF per line as on the wire.
pub fn header_bytes(headers: &HeaderMap) -> u64 {
    headers.iter().fold(0u64, |acc, (name, value)| {
        let line = name
            .as_str()
            .len()
            .saturating_add(value.len())
            .saturating_add(4);
        acc.saturating_add(u64::try_from(line).unwrap_or(u64::MAX))
    })
}

/// Where the client reached us: what a relative `Location` is made
/// absolute with.
pub struct ClientOrigin<'a> {
    pub scheme: &'a str,
    /// The Host the client sent (port included or not).
    pub host: Option<&'a str>,
    /// The local port (0: unknown).
    pub port: u16,
}

/// nginx `proxy_redirect`: the first `(from, to)` whose `from` starts the
/// upstream's `Location` (or the URL of its `Refresh`) replaces that
/// prefix with `to`. A rewritten `Location` left relative is made absolute
/// with the client's scheme, host and, when not the scheme's default, the
/// local port, as nginx's header filter does (`absolute_redirect`,
/// `port_in_redirect`).
pub fn rewrite_location(
    headers: &mut HeaderMap,
    rules: &[(String, String)],
    origin: &ClientOrigin<'_>,
) {
    if let Some(v) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok())
        && let Some(mut new) = rewrite_prefix(v, rules)
    {
        if new.starts_with('/') && !new.starts_with("//") {
            let host = aegis_engine::decide::normalize_host(origin.host.unwrap_or(""));
            if !host.is_empty() {
                let default_port = match origin.scheme {
                    "https" => 443,
                    _ => 80,
                };
                let port = if origin.port == 0 || origin.port == default_port {
                    String::new()
                } else {
                    format!(":{}", origin.port)
                };
                new = format!("{}://{host}{port}{new}", origin.scheme);
            }
        }
        if let Ok(v) = HeaderValue::from_str(&new) {
            headers.insert(header::LOCATION, v);
        }
    }
    let refresh = HeaderName::from_static("refresh");
    if let Some(v) = headers.get(&refresh).and_then(|v| v.to_str().ok()) {
        let at = v
            .to_ascii_lowercase()
            .find("url=")
            .map(|i| i.saturating_add(4));
        if let Some(at) = at
            && let (Some(head), Some(url)) = (v.get(..at), v.get(at..))
            && let Some(new) = rewrite_prefix(url, rules)
            && let Ok(v) = HeaderValue::from_str(&format!("{head}{new}"))
        {
            headers.insert(refresh, v);
        }
    }
}

fn rewrite_prefix(value: &str, rules: &[(String, String)]) -> Option<String> {
    rules.iter().find_map(|(from, to)| {
        value
            .strip_prefix(from.as_str())
            .map(|rest| format!("{to}{rest}"))
    })
}

/// A route's header values with variables, rendered for one request.
#[derive(Debug, Default)]
pub struct RenderedEdits {
    pub request: Vec<aegis_engine::compiled::RenderedHeader>,
    /// Applied to the response (nginx's `add_header` sees the request's
    /// variables, so they are rendered while the request is at hand).
    pub response: Vec<aegis_engine::compiled::RenderedHeader>,
}

/// Renders the values with variables (`$remote_addr`, a map's `$name`…)
/// of `route`'s request edits (when `request`) and response edits, from
/// the request as `decide` saw it. A route without such values costs two
/// checks and no allocation.
pub fn render_edits(
    config: &aegis_engine::CompiledConfig,
    route: &aegis_engine::compiled::CompiledRoute,
    req: &aegis_engine::RequestHead<'_>,
    request: bool,
) -> RenderedEdits {
    let req_edits = &route.request_edits;
    let resp_edits = &route.response_edits;
    let want_request = request && req_edits.has_vars();
    if !want_request && !resp_edits.has_vars() {
        return RenderedEdits::default();
    }
    let host = aegis_engine::decide::normalize_host(req.host.unwrap_or(""));
    let path = aegis_engine::decide::normalize_path(req.path);
    let request_id = if (want_request && req_edits.uses_request_id) || resp_edits.uses_request_id {
        aegis_engine::compiled::request_id()
    } else {
        String::new()
    };
    let vars = aegis_engine::compiled::HeaderVars {
        method: req.method,
        scheme: req.scheme,
        host: &host,
        path: path.as_deref().unwrap_or(req.path),
        request_path: req.path,
        query: req.query,
        headers: req.headers,
        client_ip: req.client_ip,
        request_id: &request_id,
        maps: &config.maps,
    };
    RenderedEdits {
        request: if want_request {
            req_edits.render(&vars)
        } else {
            Vec::new()
        },
        response: resp_edits.render(&vars),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_listed() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret, host".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("host", "a".parse().unwrap());
        h.insert("te", "trailers, gzip".parse().unwrap());
        h.insert("x-other", "1".parse().unwrap());
        strip_hop_by_hop(&mut h, false, true);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert_eq!(h.get("host").unwrap(), "a");
        assert_eq!(h.get("x-other").unwrap(), "1");
    }

    #[test]
    fn ip_values_match_display() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.0.1",
            "127.0.0.1",
            "192.168.100.255",
            "255.255.255.255",
            "99.9.100.10",
            "::1",
            "2001:db8::7",
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(addr), ip, "{ip}");
        }
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(ip_value(mapped), "::ffff:10.1.2.3");
    }

    #[test]
    fn nothing_to_strip_keeps_everything() {
        let mut h = HeaderMap::new();
        h.insert("host", "a".parse().unwrap());
        h.insert("x-other", "1".parse().unwrap());
        strip_hop_by_hop(&mut h, false, true);
        assert_eq!(h.len(), 2);
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        strip_hop_by_hop(&mut h, false, true);
        assert_eq!(h.len(), 2);
        assert!(h.get("transfer-encoding").is_none());
    }

    #[test]
    fn keeps_upgrade_when_asked() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true, false);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
    }

    #[test]
    fn forwarded_headers_append() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        set_forwarded(
            &mut h,
            ip_value("10.0.0.1".parse().unwrap()),
            true,
            Some(&HeaderValue::from_static("a.example")),
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "1.2.3.4, 10.0.0.1");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "a.example");
    }

    #[test]
    fn framing_checks() {
        let mut h = HeaderMap::new();
        h.append("content-length", "5".parse().unwrap());
        assert!(check_framing(&h).is_ok());
        h.append("content-length", "5".parse().unwrap());
        assert!(check_framing(&h).is_ok());
        h.append("content-length", "6".parse().unwrap());
        assert_eq!(check_framing(&h), Err(FramingError::BadContentLength));
        let mut h = HeaderMap::new();
        h.append("content-length", "5".parse().unwrap());
        h.append("transfer-encoding", "chunked".parse().unwrap());
        assert_eq!(check_framing(&h), Err(FramingError::LengthAndChunked));
        let mut h = HeaderMap::new();
        h.append("transfer-encoding", "chunked, gzip".parse().unwrap());
        assert_eq!(check_framing(&h), Err(FramingError::BadTransferEncoding));
        for te in [
            &["gzip, chunked"][..],
            &["chunked, chunked"],
            &["gzip", "chunked"],
        ] {
            let mut h = HeaderMap::new();
            for v in te {
                h.append("transfer-encoding", v.parse().unwrap());
            }
            assert_eq!(
                check_framing(&h),
                Err(FramingError::UnsupportedTransferEncoding),
                "{te:?}"
            );
        }
    }

    #[test]
    fn hosts() {
        for ok in [
            "a.example",
            "a.example:8080",
            "[::1]:80",
            "[::1]",
            "x_y-1",
            "127.0.0.1:1",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "evil.example/x?",
            "a@b",
            ":80",
            "a:b",
            "a:80:80",
            "[::1",
            "a#",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn cookies_joined() {
        let mut h = HeaderMap::new();
        h.append("cookie", "session=abc".parse().unwrap());
        h.append("cookie", "csrf=xyz".parse().unwrap());
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h.get("cookie").unwrap(), "session=abc; csrf=xyz");
    }

    #[test]
    fn proxy_redirect_rewrites_location_and_refresh() {
        let rules = vec![
            ("http://backend/".to_string(), "/".to_string()),
            ("http://127.0.0.1:8083".to_string(), "/upload".to_string()),
        ];
        let origin = ClientOrigin {
            scheme: "http",
            host: Some("Example.com:8080"),
            port: 8080,
        };
        let mut h = HeaderMap::new();
        h.insert(
            header::LOCATION,
            HeaderValue::from_static("http://backend/login?x=1"),
        );
        h.insert(
            "refresh",
            HeaderValue::from_static("5; url=http://127.0.0.1:8083/done"),
        );
        rewrite_location(&mut h, &rules, &origin);
        assert_eq!(h[header::LOCATION], "http://example.com:8080/login?x=1");
        assert_eq!(h["refresh"], "5; url=/upload/done");
        // The default port is left out; a Location no rule matches is kept.
        let tls = ClientOrigin {
            scheme: "https",
            host: Some("example.com"),
            port: 443,
        };
        h.insert(
            header::LOCATION,
            HeaderValue::from_static("http://backend/a"),
        );
        rewrite_location(&mut h, &rules, &tls);
        assert_eq!(h[header::LOCATION], "https://example.com/a");
        h.insert(header::LOCATION, HeaderValue::from_static("http://other/a"));
        rewrite_location(&mut h, &rules, &tls);
        assert_eq!(h[header::LOCATION], "http://other/a");
    }
}
