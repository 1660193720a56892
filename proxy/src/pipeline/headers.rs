//! Intermediary header semantics (RFC 9110 §7.6, RFC 9112): hop-by-hop
//! removal, `X-Forwarded-*` and `Via`, and the framing checks that hyper's
//! parser does not already make.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
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
    for name in &HOP_BY_HOP {
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

/// Appends the client to `X-Forwarded-For`, sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host`.
pub fn set_forwarded(headers: &mut HeaderMap, client: IpAddr, tls: bool, host: Option<&str>) {
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
    if !xff.is_empty() {
        xff.push_str(", ");
    }
    xff.push_str(&client.to_string());
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    match host.and_then(|h| HeaderValue::from_str(h).ok()) {
        Some(v) => {
            headers.insert(X_FORWARDED_HOST.clone(), v);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// Appends a `Via` entry (`1.1 aegis`).
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

/// Why a request's framing is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndChunked,
    #[error("Content-Length values differ or are invalid")]
    BadContentLength,
    #[error("Transfer-Encoding other than chunked")]
    BadTransferEncoding,
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
        set_forwarded(&mut h, "10.0.0.1".parse().unwrap(), true, Some("a.example"));
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
    }
}
