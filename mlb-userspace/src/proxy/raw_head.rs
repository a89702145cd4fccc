//! A backend's HTTP/1.1 response head kept as the header lines to forward, for a response
//! nothing edits on its way to an HTTP/1.1 client of mlb's own server: those lines are
//! written out as they came (names in lower case, hop-by-hop headers left out), instead of
//! being parsed into a `HeaderMap` only to be written out again. Whoever needs the headers
//! as a map ([`materialize`]) gets the map the backend client would have made.
//!
//! The response carries it as an extension, its `HeaderMap` empty: the backend client makes
//! one only for a request whose response headers no rule touches (`Outgoing::raw_response`),
//! and the hyper server's path materializes it. Other responses get a map made of the same
//! forwarded headers ([`Fields::forwarded_map`]): hop-by-hop ones are left out as it is built.
use std::ops::Range;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response};

use super::{head::SharedHead, headers::visible_ascii};

/// `Connection` tokens looked at; a head with more is made into a map instead (rare).
const MAX_TOKENS: usize = 8;

/// The fields of a head its framing and connection depend on, found in one pass over it.
pub(crate) struct Fields<'h> {
    /// The first `Transfer-Encoding` value.
    pub(crate) transfer_encoding: Option<&'h [u8]>,
    /// The `Content-Length` value (there is one at most).
    pub(crate) content_length: Option<&'h [u8]>,
    /// The tokens `Connection` lists (of values `HeaderValue::to_str` reads: as
    /// `has_token` and `strip_hop_by_hop`).
    tokens: [&'h [u8]; MAX_TOKENS],
    listed: usize,
}

impl<'h> Fields<'h> {
    /// `None` for a head out of the common case — a `TE`, several `Content-Length`s, many
    /// `Connection` tokens, a name a `HeaderName` cannot hold — which is made into a map.
    pub(crate) fn of(headers: &[httparse::Header<'h>]) -> Option<Fields<'h>> {
        let mut fields = Fields {
            transfer_encoding: None,
            content_length: None,
            tokens: [&[]; MAX_TOKENS],
            listed: 0,
        };
        for h in headers {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"connection") {
                if visible_ascii(h.value) {
                    for token in h.value.split(|&b| b == b',') {
                        *fields.tokens.get_mut(fields.listed)? = token.trim_ascii();
                        fields.listed += 1;
                    }
                }
            } else if name.eq_ignore_ascii_case(b"content-length") {
                if fields.content_length.replace(h.value).is_some() {
                    return None;
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                fields.transfer_encoding = fields.transfer_encoding.or(Some(h.value));
            } else if name.eq_ignore_ascii_case(b"te") || name.len() > u16::MAX as usize {
                return None;
            }
        }
        Some(fields)
    }

    /// A header named `name` is forwarded: it is not hop-by-hop (RFC 9110 §7.6.1), nor one
    /// `Connection` lists.
    fn forwards(&self, name: &[u8]) -> bool {
        !hop_by_hop(name) && !self.lists(name)
    }

    /// The headers a proxy forwards (as [`RawHead::of`] keeps their lines) as a map, for a
    /// response that goes through hyper's server: made without the hop-by-hop ones, instead
    /// of put into the map and taken out again by `strip_hop_by_hop`.
    pub(crate) fn forwarded_map(
        &self,
        head: &SharedHead<'_>,
        headers: &[httparse::Header<'_>],
        length: &Length,
    ) -> Result<HeaderMap, String> {
        head.map(headers, |name| {
            self.forwards(name) && !(length.dropped && name.eq_ignore_ascii_case(b"content-length"))
        })
    }

    /// `Connection` lists `token` (in any case).
    pub(crate) fn lists(&self, token: &[u8]) -> bool {
        self.tokens[..self.listed]
            .iter()
            .any(|t| t.eq_ignore_ascii_case(token))
    }
}

/// The header lines of a response head to forward as they are.
#[derive(Clone, Debug)]
pub(crate) struct RawHead {
    /// `name: value\r\n` lines, names in lower case, in the backend's order.
    lines: Bytes,
    /// Where the `content-length` line is in `lines`, and its value.
    length: Option<(Range<usize>, u64)>,
    /// A `date` line is among them.
    date: bool,
}

/// What a response's framing decided about its `Content-Length`.
pub(crate) struct Length {
    /// The value announced (if the framing has one).
    pub(crate) value: Option<u64>,
    /// The header goes (it stood beside a `Transfer-Encoding`).
    pub(crate) dropped: bool,
}

impl RawHead {
    /// The lines of `headers` a proxy forwards: all but the hop-by-hop ones (RFC 9110 §7.6.1,
    /// those `Connection` lists, and a dropped `Content-Length`).
    /// `head` is the buffer `headers` were parsed from: a line already in the form kept
    /// (`name: value` and CRLF) is copied whole.
    pub(crate) fn of(
        head: &[u8],
        headers: &[httparse::Header<'_>],
        fields: &Fields<'_>,
        length: &Length,
    ) -> RawHead {
        let size = headers
            .iter()
            .map(|h| h.name.len() + h.value.len() + 4)
            .sum();
        let mut lines = Vec::with_capacity(size);
        let (mut at, mut date) = (None, false);
        for h in headers {
            let name = h.name.as_bytes();
            if !fields.forwards(name) {
                continue;
            }
            let start = lines.len();
            if name.eq_ignore_ascii_case(b"content-length") {
                if length.dropped {
                    continue;
                }
                // Unparsed only on a response without a body (HEAD, 204, 304), which keeps
                // the header as the backend sent it.
                line(&mut lines, head, h);
                at = Some((start..lines.len(), length.value.unwrap_or(0)));
                continue;
            }
            date |= name.eq_ignore_ascii_case(b"date");
            line(&mut lines, head, h);
        }
        RawHead {
            lines: Bytes::from(lines),
            length: at,
            date,
        }
    }

    /// Writes the lines into `dst`, the `content-length` one only `with_length`; whether a
    /// `date` was among them, and the length written (if it was).
    pub(crate) fn write(&self, dst: &mut Vec<u8>, with_length: bool) -> (bool, Option<u64>) {
        match &self.length {
            Some((_, len)) if with_length => {
                dst.extend_from_slice(&self.lines);
                (self.date, Some(*len))
            }
            Some((at, _)) => {
                dst.extend_from_slice(&self.lines[..at.start]);
                dst.extend_from_slice(&self.lines[at.end..]);
                (self.date, None)
            }
            None => {
                dst.extend_from_slice(&self.lines);
                (self.date, None)
            }
        }
    }
}

/// Headers that describe one hop and are never forwarded (`TE` aside): those of
/// `strip_hop_by_hop`, compared without a `HeaderName`.
fn hop_by_hop(name: &[u8]) -> bool {
    let is = |hop: &[u8]| name.eq_ignore_ascii_case(hop);
    match name.len() {
        7 => is(b"trailer") || is(b"upgrade"),
        10 => is(b"connection") || is(b"keep-alive"),
        16 => is(b"proxy-connection"),
        17 => is(b"transfer-encoding"),
        19 => is(b"proxy-authorization"),
        _ => false,
    }
}

/// Appends `name: value\r\n`, the name in lower case (as a `HeaderName` has it). Most
/// backends write their lines in just that form: then the line is copied from `head` whole
/// (one copy, not four), and its name lower-cased in place.
fn line(dst: &mut Vec<u8>, head: &[u8], h: &httparse::Header<'_>) {
    let (name, value) = (h.name.as_bytes(), h.value);
    let start = dst.len();
    if let Some(whole) = verbatim(head, name, value) {
        dst.extend_from_slice(whole);
    } else {
        dst.extend_from_slice(name);
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value);
        dst.extend_from_slice(b"\r\n");
    }
    dst[start..start + name.len()].make_ascii_lowercase();
}

/// The line of `head` that `name` and `value` (slices of it) make, if it reads exactly
/// `name: value\r\n`. Found from the slices' addresses: `httparse` points into `head`.
fn verbatim<'h>(head: &'h [u8], name: &[u8], value: &[u8]) -> Option<&'h [u8]> {
    let base = head.as_ptr() as usize;
    let start = (name.as_ptr() as usize).checked_sub(base)?;
    let colon = start + name.len();
    let value_at = (value.as_ptr() as usize).checked_sub(base)?;
    let end = value_at + value.len() + 2;
    let line = head.get(start..end)?;
    (value_at == colon + 2
        && line[name.len()..name.len() + 2] == *b": "
        && line[line.len() - 2..] == *b"\r\n")
        .then_some(line)
}

impl RawHead {
    /// The forwarded fields as (lower-case name, value) ranges of [`RawHead::lines`], in the
    /// backend's order.
    fn ranges(&self) -> impl Iterator<Item = (Range<usize>, Range<usize>)> + '_ {
        let lines = &self.lines;
        let mut rest = 0;
        std::iter::from_fn(move || {
            loop {
                // Each line ends in CRLF, and no name or value holds a LF (`httparse`
                // refuses them), nor a name a colon.
                let lf = memchr::memchr(b'\n', &lines[rest..])?;
                let line = rest..rest + lf.checked_sub(1)?;
                rest += lf + 1;
                if let Some(colon) = memchr::memchr(b':', &lines[line.clone()]) {
                    let name = line.start..line.start + colon;
                    return Some((name, line.start + colon + 2..line.end));
                }
            }
        })
    }

    /// A `date` is among the fields.
    pub(crate) fn has_date(&self) -> bool {
        self.date
    }

    /// A `content-length` is among the fields.
    pub(crate) fn has_length(&self) -> bool {
        self.length.is_some()
    }

    /// The forwarded fields as (lower-case name, value), in the backend's order: what an
    /// HTTP/2 response head is encoded from. None is connection-specific: those are left out
    /// when the head is made.
    pub(crate) fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.ranges()
            .map(|(name, value)| (&self.lines[name], &self.lines[value]))
    }
}

/// Turns a response's raw head, if it has one, into its `HeaderMap` (the one the backend
/// client would have made, hop-by-hop headers already gone), for code that reads or edits
/// headers.
pub(crate) fn materialize<B>(response: &mut Response<B>) {
    let Some(raw) = response.extensions_mut().remove::<RawHead>() else {
        return;
    };
    let headers = response.headers_mut();
    for (name, value) in raw.ranges() {
        // Made of bytes `httparse` accepted as a name and a value: both are valid.
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&raw.lines[name]),
            HeaderValue::from_maybe_shared(raw.lines.slice(value)),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::*;
    use crate::proxy::{head::header_slots, upstream::strip_hop_by_hop};

    /// The headers of `head` as the proxy had them before: a map, hop-by-hop ones stripped.
    fn as_map(head: &[u8]) -> HeaderMap {
        let mut slots = header_slots();
        let mut parsed = httparse::Response::new(&mut []);
        let config = httparse::ParserConfig::default();
        let parsing = config.parse_response_with_uninit_headers(&mut parsed, head, &mut slots);
        assert!(parsing.unwrap().is_complete());
        let mut map = HeaderMap::new();
        for h in &*parsed.headers {
            let name = HeaderName::from_bytes(h.name.as_bytes()).unwrap();
            map.append(name, HeaderValue::from_bytes(h.value).unwrap());
        }
        strip_hop_by_hop(&mut map, false);
        map
    }

    /// `head`'s raw head, as the backend client makes it for a GET.
    fn raw(head: &[u8], length: Option<u64>) -> Option<RawHead> {
        let mut slots = header_slots();
        let mut parsed = httparse::Response::new(&mut []);
        let config = httparse::ParserConfig::default();
        let parsing = config.parse_response_with_uninit_headers(&mut parsed, head, &mut slots);
        assert!(parsing.unwrap().is_complete());
        let length = Length {
            value: length,
            dropped: false,
        };
        let fields = Fields::of(parsed.headers)?;
        Some(RawHead::of(head, parsed.headers, &fields, &length))
    }

    const HEAD: &[u8] =
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Mon, 07 Dec 2026 07:00:00 GMT\r\n\
        Connection: keep-alive, X-Private\r\nSet-Cookie: a=1\r\nX-Private: secret\r\n\
        Keep-Alive: timeout=5\r\nTrailer: x\r\nUpgrade: h2c\r\nSet-Cookie: b=2\r\n\
        Proxy-Connection: close\r\nContent-Length: 5\r\nX-Obs: caf\xc3\xa9\r\n\r\n";

    #[test]
    fn lines_are_the_headers_left_after_the_hop_by_hop_ones() {
        let raw = raw(HEAD, Some(5)).unwrap();
        let mut with_length = Vec::new();
        assert_eq!(raw.write(&mut with_length, true), (true, Some(5)));
        assert_eq!(
            with_length,
            b"server: nginx\r\ndate: Mon, 07 Dec 2026 07:00:00 GMT\r\nset-cookie: a=1\r\n\
              set-cookie: b=2\r\ncontent-length: 5\r\nx-obs: caf\xc3\xa9\r\n"
        );
        let mut without = Vec::new();
        assert_eq!(raw.write(&mut without, false), (true, None));
        assert_eq!(
            without,
            b"server: nginx\r\ndate: Mon, 07 Dec 2026 07:00:00 GMT\r\nset-cookie: a=1\r\n\
              set-cookie: b=2\r\nx-obs: caf\xc3\xa9\r\n"
        );
    }

    #[test]
    fn lines_in_other_forms_are_written_in_the_one_form() {
        let head: &[u8] =
            b"HTTP/1.1 200 OK\r\nServer:nginx\r\nX-Pad:   a b  \r\nX-Lf: c\nX-Ok: d\r\n\r\n";
        let mut slots = header_slots();
        let mut parsed = httparse::Response::new(&mut []);
        let config = httparse::ParserConfig::default();
        config
            .parse_response_with_uninit_headers(&mut parsed, head, &mut slots)
            .unwrap();
        let mut want = Vec::new();
        for h in parsed.headers.iter() {
            want.extend_from_slice(h.name.to_ascii_lowercase().as_bytes());
            want.extend_from_slice(b": ");
            want.extend_from_slice(h.value);
            want.extend_from_slice(b"\r\n");
        }
        let mut out = Vec::new();
        raw(head, None).unwrap().write(&mut out, true);
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&want)
        );
        assert!(out.starts_with(b"server: nginx\r\nx-pad: "), "{out:?}");
        assert!(out.ends_with(b"x-lf: c\r\nx-ok: d\r\n"), "{out:?}");
    }

    /// Heads of the common case: hop-by-hop headers, some named by `Connection`, one by a
    /// `Connection` value that is not text (which names nothing).
    const HEADS: [&[u8]; 4] = [
        HEAD,
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nConnection: Date, x-y\r\nDate: x\r\nx-z: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: \xff, x-y\r\nx-y: kept\r\n\r\n",
    ];

    /// `head`'s forwarded headers as the map the backend client makes for hyper's server.
    fn forwarded_map(head: &[u8], dropped: bool) -> HeaderMap {
        let mut slots = header_slots();
        let mut parsed = httparse::Response::new(&mut []);
        let config = httparse::ParserConfig::default();
        let parsing = config.parse_response_with_uninit_headers(&mut parsed, head, &mut slots);
        let len = parsing.unwrap().unwrap();
        let fields = Fields::of(parsed.headers).unwrap();
        let length = Length {
            value: None,
            dropped,
        };
        let shared = SharedHead::copy(head, len);
        fields
            .forwarded_map(&shared, parsed.headers, &length)
            .unwrap()
    }

    #[test]
    fn the_forwarded_map_is_the_map_the_proxy_made_before() {
        for head in HEADS {
            assert_eq!(
                forwarded_map(head, false),
                as_map(head),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
        // Beside a `Transfer-Encoding`, the `Content-Length` goes as well.
        let head =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\nx: 1\r\n\r\n";
        let map = forwarded_map(head, true);
        assert_eq!(map.len(), 1);
        assert_eq!(map["x"], "1");
    }

    #[test]
    fn materialized_it_is_the_map_the_proxy_made_before() {
        for head in HEADS {
            let mut response = Response::new(());
            let raw = raw(head, None).unwrap();
            response.extensions_mut().insert(raw);
            materialize(&mut response);
            assert!(response.extensions().get::<RawHead>().is_none());
            assert_eq!(
                *response.headers(),
                as_map(head),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn heads_out_of_the_common_case_are_left_to_a_map() {
        for head in [
            &b"HTTP/1.1 200 OK\r\nte: trailers\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nContent-Length: 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nconnection: a, b, c, d\r\nconnection: e, f, g, h, i\r\n\r\n",
        ] {
            assert!(
                raw(head, Some(5)).is_none(),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }
}
