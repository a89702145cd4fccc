//! A connection's last response leaves with its end: when the fast path knows a response is
//! the connection's last (`Connection: close`, HTTP/1.0), it holds the bytes it writes next
//! (`TCP_CORK`) until it shuts the connection down, so the response, a TLS `close_notify` and
//! the FIN go out in one segment, and the client answers all of them with one ACK (a FIN is
//! never held back by the cork). Two segments per closed connection fewer than writing, then
//! shutting down: the response's own ACK and the lone FIN.
//!
//! Only right before the last write: a cork held while a body streams would keep each partial
//! segment back for up to 200 ms.
use tokio::net::TcpStream;

use super::listeners::Prefixed;
use crate::overload::Guarded;

/// A client connection whose last bytes can wait for its FIN.
pub(crate) trait LastSegment {
    /// Holds what is written from now on until the connection is shut down (or closed).
    fn hold_until_shutdown(&self);
}

impl LastSegment for TcpStream {
    fn hold_until_shutdown(&self) {
        // Without it the response and the FIN simply go in two segments.
        let _ = socket2::SockRef::from(self).set_tcp_cork(true);
    }
}

impl<S: LastSegment> LastSegment for Guarded<S> {
    fn hold_until_shutdown(&self) {
        self.get_ref().hold_until_shutdown();
    }
}

impl<S: LastSegment> LastSegment for Prefixed<S> {
    fn hold_until_shutdown(&self) {
        self.get_ref().hold_until_shutdown();
    }
}

impl<S: LastSegment> LastSegment for Box<S> {
    fn hold_until_shutdown(&self) {
        (**self).hold_until_shutdown();
    }
}

impl<S: LastSegment> LastSegment for tokio_rustls::server::TlsStream<S> {
    fn hold_until_shutdown(&self) {
        self.get_ref().0.hold_until_shutdown();
    }
}
