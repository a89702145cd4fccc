//! mlb's own HTTP/1 server for the common request, without hyper's per-connection dispatcher.
//!
//! Most requests a load balancer sees are a head and nothing else (GET, HEAD, DELETE… with no
//! body, no upgrade). For those, the connection's own task reads into one reused buffer, parses
//! the head with `httparse`, calls the handler directly and writes the response head with the
//! first body bytes in one write ([`h1`]). Everything else — a request body, an upgrade,
//! `Expect`, CONNECT, anything malformed or too big — is handed, with the bytes already read,
//! to the hyper session of [`super::serve`], which serves (or refuses) it exactly as before;
//! once that session parks, the connection comes back here.
mod date;
pub(crate) mod h1;
pub(crate) mod h2;
mod request;
mod response;
