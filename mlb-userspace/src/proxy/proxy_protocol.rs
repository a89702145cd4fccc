//! The PROXY protocol (HAProxy's `send-proxy`/`send-proxy-v2` on `server` lines and
//! `accept-proxy` on `bind` lines): one header before the stream's first byte that carries the
//! client's and the listener's addresses across a proxy hop.
use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::model::tuning::ProxyProtocol;

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included (the specification's limit).
const V1_MAX: usize = 107;
/// The largest v2 header accepted (addresses plus TLVs such as the TLS ones).
const V2_MAX: usize = 16 + 512;

/// Why a PROXY header was refused (the connection is then closed).
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY protocol header (the frontend expects one: accept-proxy)")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// The header announcing a connection from `client` to `local`.
pub fn encode(version: ProxyProtocol, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (client, local) = same_family(client, local);
    match version {
        ProxyProtocol::V1 => {
            let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                client.ip(),
                local.ip(),
                client.port(),
                local.port()
            )
            .into_bytes()
        }
        ProxyProtocol::V2 => {
            let mut out = V2_SIGNATURE.to_vec();
            // Version 2, command PROXY; then family and transport: TCP over IPv4 or IPv6.
            out.push(0x21);
            let addresses = match (client.ip(), local.ip()) {
                (IpAddr::V4(c), IpAddr::V4(l)) => {
                    out.push(0x11);
                    [c.octets().to_vec(), l.octets().to_vec()].concat()
                }
                (c, l) => {
                    out.push(0x21);
                    [v6(c).octets().to_vec(), v6(l).octets().to_vec()].concat()
                }
            };
            let len = (addresses.len() + 4) as u16;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&addresses);
            out.extend_from_slice(&client.port().to_be_bytes());
            out.extend_from_slice(&local.port().to_be_bytes());
            out
        }
    }
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Both addresses in one family (an IPv4 client on a dual-stack listener is IPv4-mapped).
fn same_family(client: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let client = SocketAddr::new(client.ip().to_canonical(), client.port());
    let local = SocketAddr::new(local.ip().to_canonical(), local.port());
    if client.is_ipv4() == local.is_ipv4() {
        (client, local)
    } else {
        let map = |a: SocketAddr| SocketAddr::new(IpAddr::V6(v6(a.ip())), a.port());
        (map(client), map(local))
    }
}

/// Reads a v1 or v2 header from the start of `io`, byte-exact (nothing after it is consumed).
/// Returns the client's address, or `None` for a header that carries none (`UNKNOWN`, `LOCAL`:
/// health checks of the proxy in front).
pub async fn read<R: AsyncRead + Unpin>(
    io: &mut R,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut head = [0u8; 16];
    io.read_exact(&mut head[..6])
        .await
        .map_err(eof_is_missing)?;
    if &head[..6] == b"PROXY " {
        return read_v1(io).await;
    }
    if head[..6] != V2_SIGNATURE[..6] {
        return Err(ProxyHeaderError::Missing);
    }
    io.read_exact(&mut head[6..])
        .await
        .map_err(eof_is_missing)?;
    if head[..12] != V2_SIGNATURE || head[12] >> 4 != 2 {
        return Err(ProxyHeaderError::Malformed("bad v2 signature or version"));
    }
    let len = u16::from_be_bytes([head[14], head[15]]) as usize;
    if len > V2_MAX - 16 {
        return Err(ProxyHeaderError::Malformed("v2 header too long"));
    }
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    parse_v2(head[12] & 0x0f, head[13], &body)
}

fn eof_is_missing(e: std::io::Error) -> ProxyHeaderError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ProxyHeaderError::Missing
    } else {
        ProxyHeaderError::Io(e)
    }
}

async fn read_v1<R: AsyncRead + Unpin>(io: &mut R) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    // One byte at a time: the line has no length prefix, and bytes past it belong to the
    // stream (a TLS ClientHello, an HTTP request).
    let mut line = b"PROXY ".to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(ProxyHeaderError::Malformed("v1 line too long"));
        }
        line.push(io.read_u8().await?);
    }
    let text = std::str::from_utf8(&line[..line.len() - 2])
        .map_err(|_| ProxyHeaderError::Malformed("v1 line is not text"))?;
    parse_v1(text)
}

fn parse_v1(line: &str) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let words: Vec<&str> = line.split(' ').collect();
    match words.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        ["PROXY", "TCP4" | "TCP6", src, _dst, sport, _dport] => {
            let ip: IpAddr = src
                .parse()
                .map_err(|_| ProxyHeaderError::Malformed("v1 source address"))?;
            let port: u16 = sport
                .parse()
                .map_err(|_| ProxyHeaderError::Malformed("v1 source port"))?;
            Ok(Some(SocketAddr::new(ip, port)))
        }
        _ => Err(ProxyHeaderError::Malformed("v1 line")),
    }
}

fn parse_v2(command: u8, family: u8, body: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    if command == 0 {
        return Ok(None); // LOCAL: the proxy's own connection (a health check)
    }
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    match family >> 4 {
        1 if body.len() >= 12 => {
            let ip: [u8; 4] = body[..4].try_into().expect("4 bytes");
            Ok(Some(SocketAddr::new(IpAddr::from(ip), port(8))))
        }
        2 if body.len() >= 36 => {
            let ip: [u8; 16] = body[..16].try_into().expect("16 bytes");
            Ok(Some(SocketAddr::new(IpAddr::from(ip), port(32))))
        }
        0 => Ok(None),
        _ => Err(ProxyHeaderError::Malformed("v2 address family or length")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> (SocketAddr, SocketAddr) {
        (
            "198.18.0.7:40000".parse().unwrap(),
            "198.18.0.1:10001".parse().unwrap(),
        )
    }

    #[test]
    fn v1_header_is_haproxys_line() {
        let (c, l) = addrs();
        let h = encode(ProxyProtocol::V1, c, l);
        assert_eq!(h, b"PROXY TCP4 198.18.0.7 198.18.0.1 40000 10001\r\n");
    }

    #[tokio::test]
    async fn both_versions_round_trip_and_leave_the_stream_intact() {
        let (c, l) = addrs();
        let c6: SocketAddr = "[fd00::7]:40000".parse().unwrap();
        let l6: SocketAddr = "[fd00::1]:443".parse().unwrap();
        for v in [ProxyProtocol::V1, ProxyProtocol::V2] {
            for (client, local) in [(c, l), (c6, l6)] {
                let mut bytes = encode(v, client, local);
                bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
                let mut io = &bytes[..];
                assert_eq!(read(&mut io).await.unwrap(), Some(client), "{v:?}");
                assert_eq!(io, b"GET / HTTP/1.1\r\n");
            }
        }
    }

    #[tokio::test]
    async fn a_stream_without_header_or_with_a_bad_one_is_refused() {
        let mut io = &b"GET / HTTP/1.1\r\n\r\n"[..];
        assert!(matches!(
            read(&mut io).await,
            Err(ProxyHeaderError::Missing)
        ));
        let mut io = &b"PROXY TCP4 nonsense\r\n"[..];
        assert!(matches!(
            read(&mut io).await,
            Err(ProxyHeaderError::Malformed(_))
        ));
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        let mut io = &long[..];
        assert!(matches!(
            read(&mut io).await,
            Err(ProxyHeaderError::Malformed(_))
        ));
        let mut io = &b"PROXY UNKNOWN\r\nrest"[..];
        assert_eq!(read(&mut io).await.unwrap(), None);
    }
}
