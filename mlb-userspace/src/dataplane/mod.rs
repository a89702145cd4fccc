//! Dataplanes: what turns the desired state into forwarding.
//!
//! - [`xdp`]: loads and attaches the XDP program and programs its maps (plain TCP/UDP services,
//!   forwarded in the kernel).
//! - [`userspace_l4`]: the same services proxied by tokio, when XDP is not available or not
//!   wanted (`--dataplane userspace`).
//! - [`maglev`]: the consistent-hashing table both use to pick a backend for a new flow.
//!
//! The controller hands every L4 dataplane the same typed changes ([`L4Change`]), one per
//! service that changed: a dataplane never rebuilds everything, it applies what changed.
use crate::model::{L4Service, L4ServiceKey};

pub mod host;
pub mod maglev;
pub mod userspace_l4;
pub mod xdp;
pub mod xdp_l4;

/// One change to the set of L4 (TCP/UDP) services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4Change {
    /// A service appeared, or its backends, bind address or health check changed. The dataplane
    /// compares with what it has and touches only what differs (e.g. the Maglev slots that move).
    Upsert(L4Service),
    /// A service disappeared: stop taking new flows for it.
    Remove(L4ServiceKey),
}

/// A dataplane for plain TCP/UDP services (XDP in the kernel, or the userspace proxy).
pub trait L4Dataplane {
    /// Applies `changes` in order. On error, the services the error names are left as they were
    /// and the rest are applied: one bad service never blocks the others.
    fn apply(&mut self, changes: &[L4Change]) -> Result<(), L4Error>;
}

/// A change a dataplane could not apply, naming the service.
#[derive(Debug, thiserror::Error)]
#[error("L4 service {service}: {reason}")]
pub struct L4Error {
    pub service: L4ServiceKey,
    pub reason: String,
}
