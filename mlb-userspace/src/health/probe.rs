//! One health check of one backend.
use std::time::Duration;

use http_body_util::Empty;
use hyper::{Request, StatusCode, body::Bytes};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::HealthTarget;
use crate::model::HealthCheckKind;

/// Why one check failed (logged when a backend leaves rotation).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The TCP connection was refused or failed.
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(#[source] hyper::Error),
    /// The check's path is not a valid request target.
    #[error("bad path {path:?}: {source}")]
    BadPath {
        /// The path of the Marathon health check.
        path: String,
        /// Why it is not a request target.
        source: hyper::http::Error,
    },
    /// The backend answered with a status that is neither 2xx nor 3xx.
    #[error("GET {path} answered {status}")]
    Status {
        /// The path checked.
        path: String,
        /// What it answered.
        status: StatusCode,
    },
    /// No answer within the check's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// One check: a TCP connect, then for HTTP checks a `GET path` answering 2xx or 3xx, all within
/// the check's timeout.
pub(super) async fn probe(target: &HealthTarget) -> Result<(), ProbeError> {
    let check = async {
        let stream = TcpStream::connect(target.addr)
            .await
            .map_err(ProbeError::Connect)?;
        let HealthCheckKind::Http { path } = &target.check.kind else {
            return Ok(());
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ProbeError::Http)?;
        tokio::spawn(conn);
        let req = Request::get(if path.is_empty() { "/" } else { path.as_str() })
            .header(hyper::header::HOST, target.addr.to_string())
            .header(hyper::header::USER_AGENT, "mlb-health-check")
            .body(Empty::<Bytes>::new())
            .map_err(|source| ProbeError::BadPath {
                path: path.clone(),
                source,
            })?;
        let status = sender
            .send_request(req)
            .await
            .map_err(ProbeError::Http)?
            .status();
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(ProbeError::Status {
                path: path.clone(),
                status,
            })
        }
    };
    tokio::time::timeout(target.check.timeout.max(Duration::from_millis(10)), check)
        .await
        .map_err(|_| ProbeError::Timeout(target.check.timeout))?
}
