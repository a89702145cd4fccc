//! One request on a connection of its own: for `send-proxy`, whose PROXY header names one
//! client, so the connection cannot serve another.
use std::net::SocketAddr;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tracing::debug;

use super::{Attempt, Profile, RetryBody, backend_tls, error_chain, fixed_name};
use crate::{model::tuning::ProxyProtocol, proxy::proxy_protocol};

pub(super) async fn send(
    profile: &Profile,
    (version, client, local): (ProxyProtocol, SocketAddr, SocketAddr),
    addr: SocketAddr,
    req: Request<RetryBody>,
) -> Result<Response<Incoming>, Attempt> {
    let connect = |e: &dyn std::fmt::Display| Attempt::Connect(e.to_string());
    let mut tcp = tokio::time::timeout(profile.connect, TcpStream::connect(addr))
        .await
        .map_err(|_| connect(&"connect timeout"))?
        .map_err(|e| connect(&e))?;
    let _ = tcp.set_nodelay(true);
    tcp.write_all(&proxy_protocol::encode(version, client, local))
        .await
        .map_err(|e| connect(&e))?;
    match &profile.tls {
        None => exchange(TokioIo::new(tcp), req).await,
        Some(tls) => {
            let config = backend_tls::client_config(tls, profile.sni.is_some())
                .map_err(|e| Attempt::Failed(e.to_string()))?;
            let name = fixed_name(profile).unwrap_or_else(|| addr.ip().into());
            let handshake = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
            let stream = tokio::time::timeout(profile.connect, handshake)
                .await
                .map_err(|_| connect(&"TLS handshake timeout"))?
                .map_err(|e| connect(&e))?;
            exchange(TokioIo::new(stream), req).await
        }
    }
}

async fn exchange<I>(io: I, mut req: Request<RetryBody>) -> Result<Response<Incoming>, Attempt>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // On a bare connection the request line carries the origin form (`/path?query`).
    let origin = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    *req.uri_mut() = origin
        .parse()
        .map_err(|e| Attempt::Failed(format!("{e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|e| Attempt::Connect(error_chain(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(error = %e, "backend connection ended with an error");
        }
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| Attempt::Failed(error_chain(&e)))
}
