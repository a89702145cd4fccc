//! mlb's own HTTP/2 server, seen from clients: bodies bigger than every flow-control window
//! both ways, many streams at once, and, frame by frame (h2c with prior knowledge on the
//! plain frontend), what it answers to malformed requests, too many streams, oversized heads,
//! broken HPACK and streams reset as fast as they open.
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly"
)]
mod l7_common;

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Full};
use l7_common::*;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// A proxy routing `www.example.com` to backend `www`.
async fn setup() -> (mlb::proxy::HttpProxy, TestBackend) {
    www_proxy(|c| c.max_header_bytes = 16 * 1024).await
}

/// A client speaking raw frames.
struct Raw {
    io: TcpStream,
    buf: Vec<u8>,
    decoder: loona_hpack::Decoder<'static>,
}

#[derive(Debug)]
struct RawFrame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let mut io = TcpStream::connect(addr).await.unwrap();
        io.write_all(PREFACE).await.unwrap();
        let mut raw = Raw {
            io,
            buf: Vec::new(),
            decoder: loona_hpack::Decoder::new(),
        };
        raw.send(SETTINGS, 0, 0, &[]).await;
        raw
    }

    async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let _ = self
            .io
            .write_all(&frame(kind, flags, stream, payload))
            .await;
    }

    /// A GET for `path` on `stream`, with `extra` fields.
    async fn get(&mut self, stream: u32, path: &str, extra: &[(&str, &str)]) {
        let block = head_block("GET", path, extra);
        // Past a frame's 16 KiB, the block goes on in CONTINUATION frames.
        let chunks: Vec<&[u8]> = block.chunks(16_384).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let kind = if i == 0 { HEADERS } else { CONTINUATION };
            let mut flags = if i == 0 { END_STREAM } else { 0 };
            if i + 1 == chunks.len() {
                flags |= END_HEADERS;
            }
            self.send(kind, flags, stream, chunk).await;
        }
    }

    /// The next frame (None: the connection closed, or nothing came for 10 s).
    async fn next(&mut self) -> Option<RawFrame> {
        loop {
            if self.buf.len() >= 9 {
                let len = usize::from(self.buf[0]) << 16
                    | usize::from(self.buf[1]) << 8
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let got = RawFrame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes(self.buf[5..9].try_into().unwrap()),
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Some(got);
                }
            }
            let mut chunk = [0u8; 16384];
            let n = tokio::time::timeout(Duration::from_secs(10), self.io.read(&mut chunk))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Frames until one on `stream` of `kind` (or a GOAWAY, or the end).
    async fn until(&mut self, stream: u32, kind: u8) -> Option<RawFrame> {
        while let Some(got) = self.next().await {
            if got.kind == GOAWAY || got.stream == stream && got.kind == kind {
                return Some(got);
            }
        }
        None
    }

    /// The error code of the RST_STREAM that comes on `stream` (`None`: a GOAWAY or the end
    /// came first).
    async fn reset_code(&mut self, stream: u32) -> Option<u32> {
        let got = self.until(stream, RST_STREAM).await?;
        (got.kind == RST_STREAM).then(|| error_code(&got))
    }

    /// The `:status` of the next response head on `stream`.
    async fn status(&mut self, stream: u32) -> Option<String> {
        let got = self.until(stream, HEADERS).await?;
        if got.kind != HEADERS {
            return None;
        }
        let mut status = None;
        self.decoder
            .decode_with_cb(&got.payload, |n, v| {
                if &n[..] == b":status" {
                    status = Some(String::from_utf8_lossy(&v).into_owned());
                }
            })
            .unwrap();
        status
    }
}

/// The client's connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A request head for `www.example.com` as an HPACK block, with `extra` fields.
fn head_block(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut fields = vec![
        (":method", method),
        (":scheme", "http"),
        (":authority", "www.example.com"),
        (":path", path),
    ];
    fields.extend_from_slice(extra);
    loona_hpack::Encoder::new().encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn error_code(got: &RawFrame) -> u32 {
    let at = if got.kind == GOAWAY { 4 } else { 0 };
    u32::from_be_bytes(got.payload[at..at + 4].try_into().unwrap())
}

#[tokio::test]
async fn bodies_bigger_than_every_window_go_both_ways_on_streams_side_by_side() {
    let (proxy, _www) = setup().await;
    let mut h2 = h2_over(
        TcpStream::connect(proxy.local_addr("http").unwrap())
            .await
            .unwrap(),
    )
    .await;
    // On one connection: 8 MiB up on each of 3 streams (past the 256 KiB stream and 1 MiB
    // connection windows), while 2 streams bring 8 MiB down each (past the client's windows).
    let ups: Vec<_> = (0..3)
        .map(|_| {
            let req = Request::post("http://www.example.com/sink")
                .body(Full::new(Bytes::from(vec![b'u'; 8 << 20])))
                .unwrap();
            h2.send_request(req)
        })
        .collect();
    let downs: Vec<_> = (0..2)
        .map(|_| h2.send_request(request("www.example.com", "/source?mb=8", true)))
        .collect();
    for down in downs {
        let body = tokio::time::timeout(
            Duration::from_secs(30),
            down.await.unwrap().into_body().collect(),
        )
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
        assert_eq!(body.len(), 8 << 20);
    }
    for up in ups {
        let got = read(up.await.unwrap()).await;
        assert_eq!(got.body, "received=8388608");
    }
}

/// A client may send its first request in the same packet as the preface (nothing in the
/// protocol makes it wait): it is answered without a further byte from the client.
#[tokio::test]
async fn a_request_sent_with_the_preface_is_answered() {
    let (proxy, _www) = setup().await;
    let mut io = TcpStream::connect(proxy.local_addr("http").unwrap())
        .await
        .unwrap();
    let block = head_block("GET", "/", &[]);
    let mut all = PREFACE.to_vec();
    all.extend(frame(SETTINGS, 0, 0, &[]));
    all.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
    io.write_all(&all).await.unwrap();
    let mut raw = Raw {
        io,
        buf: Vec::new(),
        decoder: loona_hpack::Decoder::new(),
    };
    assert_eq!(raw.status(1).await.as_deref(), Some("200"));
}

#[tokio::test]
async fn a_malformed_request_resets_its_stream_only() {
    let (proxy, _www) = setup().await;
    let mut raw = Raw::connect(proxy.local_addr("http").unwrap()).await;
    raw.get(1, "/", &[("connection", "keep-alive")]).await;
    assert_eq!(raw.reset_code(1).await, Some(0x1), "PROTOCOL_ERROR");
    raw.get(3, "/", &[]).await;
    assert_eq!(raw.status(3).await.as_deref(), Some("200"));
}

/// A request announcing a body it never sends (END_STREAM on its head) is refused: forwarded
/// as it is, the backend would wait for the body and take the next request for it.
#[tokio::test]
async fn a_content_length_without_a_body_is_refused_before_the_backend() {
    let (proxy, www) = setup().await;
    let mut raw = Raw::connect(proxy.local_addr("http").unwrap()).await;
    raw.get(1, "/", &[("content-length", "5")]).await;
    assert_eq!(raw.reset_code(1).await, Some(0x1), "PROTOCOL_ERROR");
    raw.get(3, "/", &[("content-length", "0")]).await;
    assert_eq!(raw.status(3).await.as_deref(), Some("200"));
    assert_eq!(
        www.count(),
        1,
        "only the second request reached the backend"
    );
}

#[tokio::test]
async fn a_head_over_the_header_list_limit_is_answered_431() {
    let (proxy, _www) = setup().await;
    let mut raw = Raw::connect(proxy.local_addr("http").unwrap()).await;
    let big = "x".repeat(12 * 1024);
    raw.get(1, "/", &[("x-a", &big), ("x-b", &big)]).await;
    assert_eq!(raw.status(1).await.as_deref(), Some("431"));
    raw.get(3, "/", &[]).await;
    assert_eq!(raw.status(3).await.as_deref(), Some("200"));
}

#[tokio::test]
async fn streams_past_the_limit_are_refused_and_the_others_served() {
    let (proxy, _www) = setup().await;
    let mut raw = Raw::connect(proxy.local_addr("http").unwrap()).await;
    for i in 0..101u32 {
        raw.get(1 + 2 * i, "/slow?ms=1000", &[]).await;
    }
    assert_eq!(raw.reset_code(201).await, Some(0x7), "REFUSED_STREAM");
    let mut answered = 0;
    while answered < 100 {
        let got = raw.next().await.expect("every admitted stream is answered");
        assert_ne!(got.kind, GOAWAY);
        if got.kind == DATA && got.flags & END_STREAM != 0 {
            answered += 1;
        }
    }
}

#[tokio::test]
async fn streams_reset_as_fast_as_they_open_end_the_connection() {
    let (proxy, _www) = setup().await;
    let mut raw = Raw::connect(proxy.local_addr("http").unwrap()).await;
    let mut goaway = None;
    for i in 0..1000u32 {
        let id = 1 + 2 * i;
        raw.get(id, "/slow?ms=1000", &[]).await;
        raw.send(RST_STREAM, 0, id, &8u32.to_be_bytes()).await;
    }
    while let Some(got) = raw.next().await {
        if got.kind == GOAWAY {
            goaway = Some(error_code(&got));
            break;
        }
    }
    assert_eq!(goaway, Some(0xb), "ENHANCE_YOUR_CALM");
    assert!(raw.next().await.is_none(), "and the connection is closed");
}

#[tokio::test]
async fn broken_hpack_and_oversized_frames_end_the_connection_with_their_error() {
    let (proxy, _www) = setup().await;
    let mut raw = Raw::connect(proxy.local_addr("http").unwrap()).await;
    raw.send(HEADERS, END_HEADERS | END_STREAM, 1, &[0xff, 0x7f])
        .await;
    let got = raw.until(0, GOAWAY).await.unwrap();
    assert_eq!(error_code(&got), 0x9, "COMPRESSION_ERROR");

    let mut raw = Raw::connect(proxy.local_addr("http").unwrap()).await;
    raw.send(DATA, 0, 1, &vec![0; 20_000]).await;
    let got = raw.until(0, GOAWAY).await.unwrap();
    assert_eq!(error_code(&got), 0x6, "FRAME_SIZE_ERROR");
}

#[tokio::test]
async fn the_server_grants_request_body_credit_as_the_backend_reads() {
    let (proxy, _www) = setup().await;
    let mut raw = Raw::connect(proxy.local_addr("http").unwrap()).await;
    let block = head_block("POST", "/sink", &[]);
    raw.send(HEADERS, END_HEADERS, 1, &block).await;
    // 1 MiB in 16 KiB frames: past the stream's 256 KiB window, so it is sent only as the
    // server gives credit back.
    let mut credit: i64 = 256 * 1024;
    let mut sent = 0usize;
    let total = 1 << 20;
    while sent < total {
        while credit >= 16384 && sent < total {
            let last = sent + 16384 == total;
            raw.send(DATA, if last { END_STREAM } else { 0 }, 1, &[b'd'; 16384])
                .await;
            credit -= 16384;
            sent += 16384;
        }
        if sent == total {
            break;
        }
        let got = raw.next().await.expect("credit is given back");
        if got.kind == WINDOW_UPDATE && got.stream == 1 {
            credit += i64::from(u32::from_be_bytes(got.payload[..4].try_into().unwrap()));
        }
    }
    assert_eq!(raw.status(1).await.as_deref(), Some("200"));
    let data = raw.until(1, DATA).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&data.payload), "received=1048576");
}

#[tokio::test]
async fn a_client_that_grants_no_credit_is_closed_after_the_client_timeout() {
    let proxy = start_proxy(Vec::new(), |c| c.timeouts.client = Duration::from_secs(1));
    let www = TestBackend::start("www").await;
    let mut svc = service("/www", &[&www]);
    svc.vhosts = vec!["www.example.com".into()];
    apply(&proxy, vec![svc]);
    let mut raw = Raw::connect(proxy.local_addr("http").unwrap()).await;
    // SETTINGS_INITIAL_WINDOW_SIZE 0: no stream may carry DATA until credit is granted.
    raw.send(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]).await;
    raw.get(1, "/source?mb=1", &[]).await;
    assert_eq!(raw.status(1).await.as_deref(), Some("200"));
    let started = std::time::Instant::now();
    let goaway = raw
        .until(0, GOAWAY)
        .await
        .expect("the connection is closed");
    assert_eq!(error_code(&goaway), 0x0, "NO_ERROR");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
    assert!(raw.next().await.is_none());
}

/// A stopping proxy (its listeners closed, as on SIGTERM after `--drain-delay`) sends GOAWAY,
/// serves the streams opened before it, not the later ones, then closes the connection.
#[tokio::test]
async fn a_stopping_proxy_sends_goaway_and_finishes_the_streams_it_has() {
    let (proxy, www) = setup().await;
    let mut raw = Raw::connect(proxy.local_addr("http").unwrap()).await;
    raw.get(1, "/slow?ms=700", &[]).await;
    wait_until("the stream in flight", || proxy.in_flight() == 1).await;

    proxy.close_listeners();
    let goaway = raw.until(0, GOAWAY).await.expect("a GOAWAY");
    let last_stream = u32::from_be_bytes(goaway.payload[0..4].try_into().unwrap());
    assert_eq!(
        (last_stream, error_code(&goaway)),
        (1, 0),
        "last stream 1, NO_ERROR"
    );
    // A stream the client opens once it has seen the GOAWAY is not served.
    raw.get(3, "/", &[]).await;
    let mut ended = false;
    while let Some(got) = raw.next().await {
        assert_ne!(got.stream, 3, "stream 3 is not answered");
        ended |= got.stream == 1 && got.kind == DATA && got.flags & END_STREAM != 0;
    }
    assert!(
        ended,
        "stream 1 is answered to its end, then the connection closes"
    );
    assert_eq!(www.count(), 1, "stream 3 does not reach the backend");
    wait_until("no client connection left", || {
        proxy.client_connections() == 0
    })
    .await;
}
