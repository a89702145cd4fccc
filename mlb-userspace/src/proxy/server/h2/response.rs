//! A response's head as an HTTP/2 header block, as hyper's HTTP/2 server would send it: no
//! connection-specific headers, a `date` and a `content-length` (from the body's exact size)
//! added when missing. A backend's raw head ([`RawHead`]) is encoded from its lines, without
//! a `HeaderMap` in between.
use http::{HeaderMap, StatusCode, response::Parts};

use super::{hpack, request::connection_specific};
use crate::proxy::raw_head::RawHead;

/// Appends the header block of a response head; `length`: the body's exact length, if it has
/// a body and the length is known. Connection-specific headers (RFC 9113 §8.2.2) are left out,
/// as hyper's server leaves them out. A 1xx from the handler is sent as a 500 without headers,
/// as the HTTP/1 servers do.
pub(super) fn head(parts: &Parts, length: Option<u64>, dst: &mut Vec<u8>) {
    if parts.status.is_informational() {
        hpack::status(dst, StatusCode::INTERNAL_SERVER_ERROR.as_u16());
        hpack::date(dst);
        return;
    }
    hpack::status(dst, parts.status.as_u16());
    let (mut date, mut has_length) = (false, false);
    if let Some(raw) = parts.extensions.get::<RawHead>() {
        (date, has_length) = (raw.has_date(), raw.has_length());
        for (name, value) in raw.fields() {
            hpack::field(dst, name, value, false);
        }
    }
    let mut note = |name: &[u8]| {
        date |= name == b"date";
        has_length |= name == b"content-length";
    };
    for (name, value) in &parts.headers {
        let name = name.as_str().as_bytes();
        if !connection_specific(name) {
            note(name);
            hpack::field(dst, name, value.as_bytes(), value.is_sensitive());
        }
    }
    if !date {
        hpack::date(dst);
    }
    if let (false, Some(len)) = (has_length, length) {
        let digits = itoa_u64(len);
        hpack::field(dst, b"content-length", digits.as_bytes(), false);
    }
}

/// Appends a trailers block.
pub(super) fn trailers(headers: &HeaderMap, dst: &mut Vec<u8>) {
    for (name, value) in headers {
        let name = name.as_str().as_bytes();
        if !connection_specific(name) {
            hpack::field(dst, name, value.as_bytes(), value.is_sensitive());
        }
    }
}

/// Decimal digits of a number, without an allocation.
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

fn itoa_u64(mut n: u64) -> Digits {
    let mut d = Digits {
        buf: [0; 20],
        start: 20,
    };
    loop {
        d.start -= 1;
        d.buf[d.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return d;
        }
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderValue, Response};

    use super::*;
    use crate::proxy::server::h2::hpack::decoded;

    #[test]
    fn a_head_has_its_fields_a_date_and_the_body_length_without_connection_headers() {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::NOT_FOUND;
        let h = response.headers_mut();
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        h.insert("connection", HeaderValue::from_static("close"));
        h.insert("x-app", HeaderValue::from_static("web"));
        let (parts, ()) = response.into_parts();
        let mut block = Vec::new();
        head(&parts, Some(12_345), &mut block);
        let fields = decoded(&block);
        let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [":status", "content-type", "x-app", "date", "content-length"]
        );
        assert_eq!(fields[0].1, "404");
        assert!(
            httpdate::parse_http_date(&fields[3].1).is_ok(),
            "{}",
            fields[3].1
        );
        assert_eq!(fields[4].1, "12345");
    }

    #[test]
    fn a_length_or_date_of_the_response_is_kept_and_not_added_twice() {
        let mut response = Response::new(());
        let h = response.headers_mut();
        h.insert(
            "date",
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        h.insert("content-length", HeaderValue::from_static("7"));
        let (parts, ()) = response.into_parts();
        let mut block = Vec::new();
        head(&parts, Some(7), &mut block);
        let fields = decoded(&block);
        assert_eq!(fields.len(), 3, "{fields:?}");
        assert_eq!(
            fields[1],
            ("date".into(), "Sun, 06 Nov 1994 08:49:37 GMT".into())
        );
    }

    #[test]
    fn digits_of_numbers() {
        for n in [0u64, 7, 10, 615, u64::MAX] {
            assert_eq!(itoa_u64(n).as_bytes(), n.to_string().as_bytes());
        }
    }
}
