//! The TLS handshake load generator `bench http` runs in the client namespace (as the hidden
//! `cargo xtask bench tls-client`, from the release build: rustls and ring at -O0 would make
//! the client, not the load balancer, the limit).
//!
//! Neither `wrk` nor `h2load --h1` with `Connection: close` measures full handshakes: both
//! resume the session on reconnect. This client disables resumption, so that every connection
//! is a full handshake.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use clap::Args;
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
};

use super::http::VHOST;

/// Flags of the hidden `cargo xtask bench tls-client`.
#[derive(Args)]
pub struct TlsClientArgs {
    /// Server address (`ip:port`).
    #[arg(long)]
    addr: SocketAddr,
    /// How long to run.
    #[arg(long)]
    secs: u64,
    /// Concurrent connections (one thread each).
    #[arg(long, default_value_t = 32)]
    conns: u32,
}

/// What the client threads did.
#[derive(Default)]
struct Tally {
    handshakes: AtomicU64,
    errors: AtomicU64,
    /// The negotiated version, suite and key exchange group (of the first connection).
    suite: Mutex<String>,
}

/// `conns` threads, each connecting again and again until the time is up, every connection a
/// new rustls client without resumption (a full handshake), sending one `GET` with
/// `Connection: close` and reading the response to the end. Prints
/// `handshakes=N secs=S rate=R errors=E suite=…`. Fails on any error (a refused or broken
/// connection, a status other than 200).
pub fn run(args: &TlsClientArgs) -> Result<()> {
    let config = client_config()?;
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.secs);
    let threads: Vec<_> = (0..args.conns)
        .map(|_| {
            let (config, tally, addr) = (config.clone(), tally.clone(), args.addr);
            thread::spawn(move || connect_until(deadline, &config, addr, &tally))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let secs = start.elapsed().as_secs_f64();
    let n = tally.handshakes.load(Ordering::Relaxed);
    let e = tally.errors.load(Ordering::Relaxed);
    println!(
        "handshakes={n} secs={secs:.2} rate={:.1} errors={e} suite={}",
        n as f64 / secs,
        tally.suite.lock().expect("suite")
    );
    if e > 0 || n == 0 {
        bail!("{e} failed connections, {n} good");
    }
    Ok(())
}

/// A client without session resumption that accepts the bench's self-signed certificate.
pub(super) fn client_config() -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// One thread's connections until `deadline`; the first error is printed, all are counted.
fn connect_until(deadline: Instant, config: &Arc<ClientConfig>, addr: SocketAddr, tally: &Tally) {
    while Instant::now() < deadline {
        match one_request(config, addr) {
            Ok(suite) => {
                tally.handshakes.fetch_add(1, Ordering::Relaxed);
                let mut first = tally.suite.lock().expect("suite");
                if first.is_empty() {
                    *first = suite;
                }
            }
            Err(e) => {
                if tally.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("tls-client: {e:#}");
                }
            }
        }
    }
}

/// One connection: full handshake, `GET /`, the whole response; returns the negotiated
/// version, suite and key exchange group.
fn one_request(config: &Arc<ClientConfig>, addr: SocketAddr) -> Result<String> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
    let conn = ClientConnection::new(config.clone(), ServerName::try_from(VHOST)?)?;
    let mut tls = StreamOwned::new(conn, tcp);
    tls.write_all(
        format!("GET / HTTP/1.1\r\nHost: {VHOST}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut response = Vec::new();
    match tls.read_to_end(&mut response) {
        Ok(_) => {}
        // A peer that closes without close_notify after a complete response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    if !response.starts_with(b"HTTP/1.1 200") {
        bail!(
            "response: {:?}",
            String::from_utf8_lossy(&response[..response.len().min(80)])
        );
    }
    Ok(negotiated(&tls.conn))
}

/// `TLSv1_3/TLS13_AES_256_GCM_SHA384/X25519`-style description of a connection.
fn negotiated(conn: &ClientConnection) -> String {
    let suite = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}/{:?}", s.version().version, s.suite()))
        .unwrap_or_default();
    let group = conn
        .negotiated_key_exchange_group()
        .map(|g| format!("/{:?}", g.name()))
        .unwrap_or_default();
    format!("{suite}{group}")
}

/// Accepts any certificate (the bench's own self-signed one) and skips checking the server's
/// handshake signature: the server still does all of a full handshake's work (ECDHE, ECDSA
/// signature), and the client on cpu0 spends less than the server, so that the load balancer
/// on cpu1, not the client, runs out of CPU first.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_tls12_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
