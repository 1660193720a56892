//! HTTP/1.1 codec pieces shared by the upstream client
//! ([`crate::upstream::h1`]) and the client-facing server
//! ([`crate::server::h1`]): header lines, numbers, and the framing headers'
//! values.

use std::cell::RefCell;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Header maps kept for reuse, per thread. A request's map is built by the
/// server and dropped once its head is written upstream; a response's is
/// built by the upstream client and dropped once its head is written to the
/// client: each is two allocations a request could do without.
const POOLED_MAPS: usize = 64;
/// Capacity of a pooled map (24 entries), and the most a map may have to be
/// kept: a map that grew for an unusually large head is not.
const POOLED_CAPACITY: usize = 16;
const KEPT_CAPACITY: usize = 48;

thread_local! {
    static MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map for at least `capacity` fields, from the pool when one
/// there is large enough.
pub(crate) fn header_map(capacity: usize) -> HeaderMap {
    if capacity <= POOLED_CAPACITY
        && let Some(map) = MAPS.with_borrow_mut(Vec::pop)
    {
        return map;
    }
    HeaderMap::with_capacity(capacity.max(POOLED_CAPACITY))
}

/// Gives `map` back to this thread's pool (cleared; its values, which may
/// hold a connection's read buffer, are dropped now).
pub(crate) fn recycle(mut map: HeaderMap) {
    let cap = map.capacity();
    if !(POOLED_CAPACITY..=KEPT_CAPACITY).contains(&cap) {
        return;
    }
    map.clear();
    MAPS.with_borrow_mut(|maps| {
        if maps.len() < POOLED_MAPS {
            maps.push(map);
        }
    });
}

pub(crate) fn push_header(dst: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    let (name, value) = (name.as_str().as_bytes(), value.as_bytes());
    dst.reserve(name.len().saturating_add(value.len()).saturating_add(4));
    dst.extend_from_slice(name);
    dst.push(b':');
    dst.push(b' ');
    dst.extend_from_slice(value);
    dst.push(b'\r');
    dst.push(b'\n');
}

pub(crate) fn push_decimal(dst: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i = i.saturating_sub(1);
        if let Some(d) = digits.get_mut(i) {
            *d = b"0123456789"
                .get((n % 10) as usize)
                .copied()
                .unwrap_or(b'0');
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    dst.extend_from_slice(digits.get(i..).unwrap_or_default());
}

pub(crate) fn push_hex(dst: &mut Vec<u8>, mut n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i = i.saturating_sub(1);
        if let (Some(d), Some(h)) = (digits.get_mut(i), HEX.get((n & 0xf) as usize)) {
            *d = *h;
        }
        n >>= 4;
        if n == 0 || i == 0 {
            break;
        }
    }
    dst.extend_from_slice(digits.get(i..).unwrap_or_default());
}

/// Whether a comma-separated header value lists `token`.
pub(crate) fn has_token(value: &HeaderValue, token: &[u8]) -> bool {
    has_token_bytes(value.as_bytes(), token)
}

/// [`has_token`] over a field value still in the read buffer.
pub(crate) fn has_token_bytes(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether the last transfer coding of the last Transfer-Encoding line is
/// `chunked`.
pub(crate) fn is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .is_some_and(last_coding_is_chunked)
}

pub(crate) fn last_coding_is_chunked(value: &HeaderValue) -> bool {
    value
        .as_bytes()
        .rsplit(|b| *b == b',')
        .next()
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// The Content-Length, when every value (and every list element) is the
/// same valid number; `None` when absent, differing or invalid.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut found: Option<u64> = None;
    let mut any = false;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        any = true;
        found = Some(content_length_value(value, found)?);
    }
    found.filter(|_| any)
}

/// One Content-Length line (maybe a list) checked against the value seen
/// so far: the length when all agree and are numbers.
pub(crate) fn content_length_value(value: &HeaderValue, seen: Option<u64>) -> Option<u64> {
    let mut found = seen;
    for part in value.as_bytes().split(|b| *b == b',') {
        let n = digits(part.trim_ascii())?;
        if found.is_some_and(|f| f != n) {
            return None;
        }
        found = Some(n);
    }
    found
}

pub(crate) fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |acc, b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_reused_empty() {
        let mut m = header_map(4);
        m.insert(header::HOST, HeaderValue::from_static("a"));
        let cap = m.capacity();
        recycle(m);
        let again = header_map(4);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), cap);
        // Too large a head gets a map of its own, and is not kept.
        let big = header_map(200);
        assert!(big.capacity() >= 200);
        recycle(big);
        assert!(header_map(4).capacity() < 200);
    }

    #[test]
    fn numbers() {
        let mut v = Vec::new();
        push_decimal(&mut v, 0);
        v.push(b' ');
        push_decimal(&mut v, 18_446_744_073_709_551_615);
        v.push(b' ');
        push_hex(&mut v, 0x1a2b);
        assert_eq!(v, b"0 18446744073709551615 1a2b");
    }

    #[test]
    fn content_lengths() {
        let mut h = HeaderMap::new();
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert_eq!(content_length(&h), Some(5));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("5, 5"));
        assert_eq!(content_length(&h), Some(5));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("6"));
        assert_eq!(content_length(&h), None);
        let mut h = HeaderMap::new();
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("-1"));
        assert_eq!(content_length(&h), None);
    }
}
