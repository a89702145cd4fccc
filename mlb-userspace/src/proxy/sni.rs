//! Reading the server name (SNI) of a TLS ClientHello without terminating TLS, for passthrough
//! on `:443`.
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// A TLS record header is 5 bytes; a record body at most 16 KiB (+ slack for ciphertext).
const RECORD_HEADER: usize = 5;
const MAX_RECORD: usize = 16 * 1024 + 2048;

/// What the first bytes of a connection say.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// A ClientHello naming this server (lowercased).
    Sni(String),
    /// A ClientHello without SNI, or bytes that are not a ClientHello (left to rustls to judge).
    NoSni,
}

/// Reads the first TLS record from `stream` (within `timeout`) and returns what it says with
/// every byte read, which the caller must replay to whoever handles the connection.
pub async fn read_client_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> std::io::Result<(Hello, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut header = [0u8; RECORD_HEADER];
        stream.read_exact(&mut header).await?;
        buf.extend_from_slice(&header);
        if header[0] != 22 {
            return Ok(());
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len > MAX_RECORD {
            return Ok(());
        }
        let mut body = vec![0; len];
        stream.read_exact(&mut body).await?;
        buf.extend_from_slice(&body);
        Ok::<(), std::io::Error>(())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no ClientHello in time",
            ));
        }
    }
    let hello = parse_sni(&buf).map_or(Hello::NoSni, |s| Hello::Sni(s.to_ascii_lowercase()));
    Ok((hello, buf))
}

/// The SNI host name in a TLS record holding a ClientHello, if any.
pub fn parse_sni(record: &[u8]) -> Option<String> {
    let mut r = Reader(record);
    if r.u8()? != 22 {
        return None; // not a handshake record
    }
    r.skip(2)?; // record version
    let len = usize::from(r.u16()?);
    let mut r = Reader(r.take(len)?);
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    let hs_len = r.u24()?;
    // A ClientHello split over several records is cut here: its SNI is then not seen.
    let mut r = Reader(r.take(hs_len.min(r.0.len()))?);
    r.skip(2 + 32)?; // client version, random
    let sid = usize::from(r.u8()?);
    r.skip(sid)?;
    let suites = usize::from(r.u16()?);
    r.skip(suites)?;
    let comp = usize::from(r.u8()?);
    r.skip(comp)?;
    let ext_len = usize::from(r.u16()?);
    let mut exts = Reader(r.take(ext_len)?);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let len = usize::from(exts.u16()?);
        let data = exts.take(len)?;
        if ty != 0 {
            continue;
        }
        let mut list = Reader(data);
        let list_len = usize::from(list.u16()?);
        let mut list = Reader(list.take(list_len)?);
        while !list.0.is_empty() {
            let kind = list.u8()?;
            let name_len = usize::from(list.u16()?);
            let name = list.take(name_len)?;
            if kind == 0 {
                return std::str::from_utf8(name).ok().map(str::to_owned);
            }
        }
    }
    None
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A real ClientHello, as rustls writes it for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut conn =
            rustls::ClientConnection::new(Arc::new(config), name.to_owned().try_into().unwrap())
                .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn finds_the_sni_of_a_rustls_client_hello() {
        assert_eq!(
            parse_sni(&client_hello("secure.example.com")).as_deref(),
            Some("secure.example.com")
        );
    }

    #[test]
    fn garbage_and_truncated_input_give_none() {
        assert_eq!(parse_sni(b"GET / HTTP/1.1\r\n\r\n"), None);
        let hello = client_hello("a.example.com");
        for cut in [0, 5, 20, 60] {
            assert_eq!(parse_sni(&hello[..cut]), None);
        }
    }

    #[tokio::test]
    async fn read_client_hello_returns_the_bytes_to_replay() {
        let hello = client_hello("x.example.com");
        let mut input: &[u8] = &hello;
        let (what, bytes) = read_client_hello(&mut input, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(what, Hello::Sni("x.example.com".into()));
        assert_eq!(bytes, hello);
    }
}
