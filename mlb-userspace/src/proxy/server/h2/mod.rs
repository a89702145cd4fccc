//! mlb's own HTTP/2 server (RFC 9113): one task per connection, no task per stream.
//!
//! hyper's HTTP/2 server (over the `h2` crate) spawns a task per stream, shares every stream's
//! state behind a lock between that task and the connection's, and builds a `HeaderMap` of
//! every response only to encode it again. Here the connection's task does it all: it reads
//! frames, runs each stream's handler as a future of its own set (woken one by one, as tasks
//! would be), encodes each response head straight from the backend's header lines, and writes
//! every frame made in one pass with one write.
//!
//! Limits, as an operator of HAProxy or Envoy expects them: [`MAX_STREAMS`] streams at once
//! (more are refused), header lists up to the proxy's `max_header_bytes` (a bigger one is
//! answered 431), request bodies held at most a stream window each and a connection window in
//! all, frames no bigger than 16 KiB, writes paused while the client does not read (so PING
//! and SETTINGS floods cannot grow a buffer), and a connection whose client keeps resetting
//! streams or sending empty frames ("glitches", as HAProxy names them) more than it completes
//! requests is closed with ENHANCE_YOUR_CALM.
mod conn;
mod decoder;
mod frame;
mod hpack;
mod recv_body;
mod request;
mod response;

pub(crate) use conn::serve;
pub(crate) use recv_body::RecvBody;

/// Streams open at once on a connection (HAProxy's `tune.h2.max-concurrent-streams`).
const MAX_STREAMS: usize = 100;
/// The receive window of each stream (its request body's credit).
const STREAM_WINDOW: u32 = 256 * 1024;
/// The receive window of the connection (every request body's credit together).
const CONN_WINDOW: u32 = 1024 * 1024;
/// Frames waiting to be written past which no more are made (no frame read, no body polled)
/// until the client reads.
const WRITE_HIGH: usize = 128 * 1024;
/// Glitches a connection may have before its ratio to completed requests is checked.
const GLITCH_ALLOWANCE: u64 = 200;
