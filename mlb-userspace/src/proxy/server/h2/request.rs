//! A request's header block made into an `http::Request`, checked as RFC 9113 §8.2–8.3 asks
//! (pseudo-headers first and once each, lower-case names, no connection-specific headers).
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version, uri};

use super::decoder::Decoder;

/// Why a header block is not a request.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum BlockError {
    /// The block is not valid HPACK: the connection's decoding state is lost.
    Compression,
    /// Decoded, but more than the header list limit: answered 431.
    TooLarge,
    /// Decoded, but not a valid request (the stream is reset).
    Malformed(&'static str),
}

/// What a request's block says.
pub(super) struct Head {
    pub(super) request: Request<()>,
    /// The `content-length` it announces.
    pub(super) length: Option<u64>,
}

/// The fields of one block as they are decoded.
#[derive(Default)]
struct Fields {
    method: Option<Method>,
    scheme: Option<uri::Scheme>,
    authority: Option<Bytes>,
    path: Option<Bytes>,
    headers: HeaderMap,
    cookies: Option<BytesMut>,
    size: usize,
    regular_seen: bool,
    error: Option<BlockError>,
}

impl Fields {
    fn add(&mut self, name: &[u8], value: &[u8], max_list: usize, pseudo_allowed: bool) {
        // §4.3 of RFC 7541's accounting: 32 bytes of overhead per field.
        self.size += name.len() + value.len() + 32;
        if self.error.is_some() {
            return;
        }
        if self.size > max_list {
            self.error = Some(BlockError::TooLarge);
            return;
        }
        if let Err(why) = self.take(name, value, pseudo_allowed) {
            self.error = Some(BlockError::Malformed(why));
        }
    }

    fn take(
        &mut self,
        name: &[u8],
        value: &[u8],
        pseudo_allowed: bool,
    ) -> Result<(), &'static str> {
        if let Some(pseudo) = name.strip_prefix(b":") {
            if self.regular_seen || !pseudo_allowed {
                return Err("a pseudo-header after the regular ones, or in trailers");
            }
            // Method and scheme are made from the decoder's bytes, without a copy first (the
            // common ones are constants).
            let twice = match pseudo {
                b"method" => {
                    let method = Method::from_bytes(value).map_err(|_| "an invalid :method")?;
                    self.method.replace(method).is_some()
                }
                b"scheme" => {
                    let scheme = match value {
                        b"https" => uri::Scheme::HTTPS,
                        b"http" => uri::Scheme::HTTP,
                        other => uri::Scheme::try_from(other).map_err(|_| "an invalid :scheme")?,
                    };
                    self.scheme.replace(scheme).is_some()
                }
                b"authority" => self
                    .authority
                    .replace(Bytes::copy_from_slice(value))
                    .is_some(),
                b"path" => self.path.replace(Bytes::copy_from_slice(value)).is_some(),
                _ => return Err("an unknown pseudo-header"),
            };
            if twice {
                return Err("a pseudo-header twice");
            }
            return Ok(());
        }
        self.regular_seen = true;
        if name.iter().any(u8::is_ascii_uppercase) {
            return Err("an upper-case header name");
        }
        if connection_specific(name) || name == b"te" && value != b"trailers" {
            return Err("a connection-specific header");
        }
        if name == b"cookie" {
            // Cookie crumbs are joined for HTTP/1.1 backends (§8.2.3).
            let cookies = self.cookies.get_or_insert_with(BytesMut::new);
            if !cookies.is_empty() {
                cookies.extend_from_slice(b"; ");
            }
            cookies.extend_from_slice(value);
            return Ok(());
        }
        let name = HeaderName::from_bytes(name).map_err(|_| "an invalid header name")?;
        let value = HeaderValue::from_bytes(value).map_err(|_| "an invalid header value")?;
        self.headers.append(name, value);
        Ok(())
    }
}

/// Headers HTTP/2 does not carry (§8.2.2).
pub(super) fn connection_specific(name: &[u8]) -> bool {
    matches!(
        name,
        b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding" | b"upgrade"
    )
}

/// Decodes `block` into its fields.
fn decode(
    decoder: &mut Decoder,
    block: &[u8],
    max_list: usize,
    pseudo_allowed: bool,
) -> Result<Fields, BlockError> {
    let mut fields = Fields::default();
    decoder
        .decode(block, |name, value| {
            fields.add(name, value, max_list, pseudo_allowed);
        })
        .map_err(|_| BlockError::Compression)?;
    if let Some(e) = fields.error.take() {
        return Err(e);
    }
    if let Some(cookies) = fields.cookies.take() {
        let value = HeaderValue::from_maybe_shared(cookies.freeze())
            .map_err(|_| BlockError::Malformed("an invalid cookie"))?;
        fields.headers.insert(http::header::COOKIE, value);
    }
    Ok(fields)
}

/// The request a block of a new stream opens.
pub(super) fn request(
    decoder: &mut Decoder,
    block: &[u8],
    max_list: usize,
) -> Result<Head, BlockError> {
    let fields = decode(decoder, block, max_list, true)?;
    let method = fields.method.ok_or(BlockError::Malformed("no :method"))?;
    let uri = if method == Method::CONNECT {
        if fields.scheme.is_some() || fields.path.is_some() {
            return Err(BlockError::Malformed("CONNECT with :scheme or :path"));
        }
        let authority = fields
            .authority
            .ok_or(BlockError::Malformed("CONNECT without :authority"))?;
        let mut parts = uri::Parts::default();
        parts.authority = Some(authority_of(authority)?);
        Uri::from_parts(parts)
    } else {
        let path = fields.path.ok_or(BlockError::Malformed("no :path"))?;
        let scheme = fields.scheme.ok_or(BlockError::Malformed("no :scheme"))?;
        // An origin-form target, or `*` for OPTIONS (§8.3.1): anything else would be routed
        // by a path no prefix rule expects.
        let asterisk = &path[..] == b"*" && method == Method::OPTIONS;
        if !path.starts_with(b"/") && !asterisk {
            return Err(BlockError::Malformed("a :path neither absolute nor *"));
        }
        let mut parts = uri::Parts::default();
        parts.path_and_query = Some(
            uri::PathAndQuery::from_maybe_shared(path)
                .map_err(|_| BlockError::Malformed("an invalid :path"))?,
        );
        // A URI holds a scheme only beside an authority (the `host` header then names the
        // host, as hyper's HTTP/2 server leaves it).
        if let Some(authority) = fields.authority {
            parts.scheme = Some(scheme);
            parts.authority = Some(authority_of(authority)?);
        }
        Uri::from_parts(parts)
    }
    .map_err(|_| BlockError::Malformed("an invalid request target"))?;
    let length = match fields.headers.get(http::header::CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            std::str::from_utf8(v.as_bytes())
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(BlockError::Malformed("an invalid content-length"))?,
        ),
    };
    if fields
        .headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .count()
        > 1
    {
        return Err(BlockError::Malformed("several content-length headers"));
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_2;
    *request.headers_mut() = fields.headers;
    Ok(Head { request, length })
}

fn authority_of(authority: Bytes) -> Result<uri::Authority, BlockError> {
    uri::Authority::from_maybe_shared(authority)
        .map_err(|_| BlockError::Malformed("an invalid :authority"))
}

/// The trailers a block after a request's head carries.
pub(super) fn trailers(
    decoder: &mut Decoder,
    block: &[u8],
    max_list: usize,
) -> Result<HeaderMap, BlockError> {
    decode(decoder, block, max_list, false).map(|f| f.headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::server::h2::hpack;

    /// A block of `fields`, written as the response encoder writes (literals).
    fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, v) in fields {
            hpack::field(&mut out, n.as_bytes(), v.as_bytes(), false);
        }
        out
    }

    fn parse(fields: &[(&str, &str)]) -> Result<Head, BlockError> {
        let mut decoder = Decoder::new();
        request(&mut decoder, &block(fields), 16 * 1024)
    }

    const GET: [(&str, &str); 4] = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "app.example.com"),
        (":path", "/a?b=c"),
    ];

    #[test]
    fn a_request_has_its_method_target_and_headers_and_crumbs_are_joined() {
        let mut fields = GET.to_vec();
        fields.extend([
            ("cookie", "a=1"),
            ("accept", "*/*"),
            ("cookie", "b=2"),
            ("content-length", "3"),
        ]);
        let head = parse(&fields).expect("a request");
        let req = head.request;
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri().to_string(), "https://app.example.com/a?b=c");
        assert_eq!(req.version(), Version::HTTP_2);
        assert_eq!(req.headers()["cookie"], "a=1; b=2");
        assert_eq!(req.headers()["accept"], "*/*");
        assert_eq!(head.length, Some(3));
    }

    #[test]
    fn malformed_requests_are_refused_with_their_reason() {
        let cases: Vec<Vec<(&str, &str)>> = vec![
            vec![
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/"),
                (":method", "GET"),
            ],
            vec![(":scheme", "https"), (":path", "/")],
            vec![(":method", "GET"), (":scheme", "https")],
            vec![(":method", "GET"), (":scheme", "https"), (":path", "admin")],
            vec![(":method", "GET"), (":scheme", "https"), (":path", "")],
            vec![(":method", "GET"), (":scheme", "https"), (":path", "*")],
            vec![
                (":method", "GET"),
                ("accept", "*/*"),
                (":scheme", "https"),
                (":path", "/"),
            ],
            vec![
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/"),
                ("connection", "close"),
            ],
            vec![
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/"),
                ("te", "gzip"),
            ],
            vec![
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/"),
                ("Accept", "x"),
            ],
            vec![
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/"),
                (":status", "200"),
            ],
            vec![
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/"),
                ("content-length", "x"),
            ],
        ];
        for fields in cases {
            assert!(
                matches!(parse(&fields), Err(BlockError::Malformed(_))),
                "{fields:?}"
            );
        }
        let mut te = GET.to_vec();
        te.push(("te", "trailers"));
        assert!(parse(&te).is_ok());
    }

    #[test]
    fn a_list_over_the_limit_is_too_large_and_bad_hpack_a_compression_error() {
        let mut fields = GET.to_vec();
        let big = "x".repeat(20_000);
        fields.push(("x-big", &big));
        assert_eq!(parse(&fields).err(), Some(BlockError::TooLarge));
        let mut decoder = Decoder::new();
        // An index past both tables.
        assert_eq!(
            request(&mut decoder, &[0xff, 0x7f], 1024).err(),
            Some(BlockError::Compression)
        );
    }

    #[test]
    fn connect_takes_an_authority_only_and_trailers_no_pseudo_headers() {
        let head = parse(&[
            (":method", "CONNECT"),
            (":authority", "db.example.com:5432"),
        ])
        .unwrap();
        assert_eq!(head.request.uri().to_string(), "db.example.com:5432");
        let mut decoder = Decoder::new();
        let ok = trailers(&mut decoder, &block(&[("grpc-status", "0")]), 1024).unwrap();
        assert_eq!(ok["grpc-status"], "0");
        assert!(matches!(
            trailers(&mut decoder, &block(&[(":path", "/")]), 1024),
            Err(BlockError::Malformed(_))
        ));
    }
}
