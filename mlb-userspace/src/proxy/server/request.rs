//! A request head for the fast path: parsed with `httparse` under hyper's limits, and taken
//! only when it is a request the fast path serves just as hyper would.
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version, header};

use crate::proxy::{
    head::{SharedHead, header_slots},
    headers::has_token,
    upstream::FORWARDED_HEADERS,
};
/// Longest request target hyper takes (above: 414).
const MAX_URI: usize = u16::MAX as usize - 1;

/// What the start of a connection's buffer holds.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "returned once per request and taken apart at once: boxing would cost an allocation"
)]
pub(super) enum Parsed {
    /// A whole head of a request without a body: its length in the buffer, and whether the
    /// client keeps the connection open after the response.
    Request {
        req: Request<()>,
        len: usize,
        keep_alive: bool,
    },
    /// The start of a head: more bytes are needed.
    Partial,
    /// Anything else (a body, an upgrade, `Expect`, CONNECT, malformed, too many headers):
    /// for hyper's session, which serves or refuses it as it always has.
    Other,
}

/// Parses the head at the start of `buf`.
pub(super) fn parse(buf: &[u8]) -> Parsed {
    let mut slots = header_slots();
    let mut parsed = httparse::Request::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_request_with_uninit_headers(&mut parsed, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let head = SharedHead::copy(buf, len);
    match build(&parsed, |part| head.slice(part)) {
        Some((req, keep_alive)) => Parsed::Request {
            req,
            len,
            keep_alive,
        },
        None => Parsed::Other,
    }
}

/// The request of a parsed head, if the fast path serves it.
fn build(
    parsed: &httparse::Request<'_, '_>,
    slice: impl Fn(&[u8]) -> Bytes,
) -> Option<(Request<()>, bool)> {
    let method = Method::from_bytes(parsed.method?.as_bytes()).ok()?;
    let path = parsed.path?;
    if method == Method::CONNECT || path.len() > MAX_URI {
        return None;
    }
    let uri = Uri::from_maybe_shared(slice(path.as_bytes())).ok()?;
    let (version, mut keep_alive) = match parsed.version? {
        1 => (Version::HTTP_11, true),
        _ => (Version::HTTP_10, false),
    };
    // Room for the `X-Forwarded-*` headers the proxy adds: the map does not grow per request.
    let mut headers = HeaderMap::with_capacity(parsed.headers.len() + FORWARDED_HEADERS);
    let (mut close, mut length) = (false, false);
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_maybe_shared(slice(h.value)).ok()?;
        match name {
            header::TRANSFER_ENCODING | header::EXPECT | header::UPGRADE => return None,
            header::CONTENT_LENGTH if value != "0" => return None,
            // Repeats of the same length are dropped, as hyper does.
            header::CONTENT_LENGTH if std::mem::replace(&mut length, true) => continue,
            header::CONNECTION => {
                // Once any line asks to close, a later `keep-alive` does not undo it.
                if close || has_token(&value, "close") {
                    (close, keep_alive) = (true, false);
                } else if !keep_alive {
                    keep_alive = has_token(&value, "keep-alive");
                }
            }
            _ => {}
        }
        headers.append(name, value);
    }
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Some((req, keep_alive))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::head::MAX_HEADERS;

    fn request(raw: &str) -> (Request<()>, usize, bool) {
        match parse(raw.as_bytes()) {
            Parsed::Request {
                req,
                len,
                keep_alive,
            } => (req, len, keep_alive),
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    #[test]
    fn a_get_is_parsed_with_its_headers() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\n\r\nGET /next";
        let (req, len, keep_alive) = request(raw);
        assert_eq!(len, raw.find("GET /next").unwrap());
        assert!(keep_alive);
        assert_eq!(
            (req.method(), req.version()),
            (&Method::GET, Version::HTTP_11)
        );
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.headers()["host"], "x");
        let xa: Vec<_> = req.headers().get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        for (raw, want) in [
            ("GET / HTTP/1.1\r\n\r\n", true),
            ("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false),
            (
                "GET / HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
                false,
            ),
            ("GET / HTTP/1.0\r\n\r\n", false),
            ("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
            ("HEAD / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", true),
        ] {
            assert_eq!(request(raw).2, want, "{raw:?}");
        }
    }

    #[test]
    fn anything_but_a_plain_bodyless_request_is_left_to_hyper() {
        for raw in [
            "POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\n\r\n",
            "BAD\r\n\r\n",
        ] {
            assert!(matches!(parse(raw.as_bytes()), Parsed::Other), "{raw:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("h{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(parse(raw.as_bytes()), Parsed::Other));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Partial
        ));
    }
}
