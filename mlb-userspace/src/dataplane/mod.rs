//! Dataplanes, and the one change contract between the controller and them.
//!
//! The model computes the desired state; the controller turns what changed into typed change
//! requests ([`L4Change`], [`HttpChange`]) and hands each dataplane its own through the one
//! [`Dataplane`] trait. A dataplane never rebuilds everything: it applies what changed, and says
//! what it could not apply with a [`DataplaneError`] naming the service. Tests drive the
//! dataplanes with the same requests the controller sends.
//!
//! - [`xdp`]: loads and attaches the XDP program; [`xdp_l4`] programs its maps (plain TCP/UDP
//!   services, forwarded in the kernel); [`xdp_pin`] keeps program, links and maps pinned in
//!   bpffs so that they outlive the agent and the next one adopts them.
//! - [`userspace_l4`]: the same services proxied by tokio, when XDP is not available or not
//!   wanted (`--dataplane userspace`).
//! - [`maglev`]: the consistent-hashing table both use to pick a backend for a new flow.
//! - The HTTP proxy (the `proxy` module) is the dataplane of [`HttpChange`]s.
use std::{error::Error as StdError, sync::Arc};

use crate::model::{HttpService, HttpServiceKey, L4Service, L4ServiceKey};

pub mod host;
pub mod maglev;
pub mod userspace_l4;
pub mod xdp;
pub mod xdp_l4;
pub mod xdp_pin;

/// One change to the set of L4 (TCP/UDP) services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4Change {
    /// A service appeared, or its backends, bind address or health check changed. The dataplane
    /// compares with what it has and touches only what differs (e.g. the Maglev slots that move).
    Upsert(L4Service),
    /// A service disappeared: stop taking new flows for it.
    Remove(L4ServiceKey),
}

impl L4Change {
    /// The service this change is about.
    pub fn key(&self) -> L4ServiceKey {
        match self {
            L4Change::Upsert(svc) => svc.key,
            L4Change::Remove(key) => *key,
        }
    }
}

/// One change to the set of HTTP services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpChange {
    /// A service appeared, or its routes, backends, TLS or options changed: the proxy puts it in
    /// place of the one with its key, if any. (Shared: a service is large, and the proxy keeps
    /// the one it is given rather than a copy.)
    Upsert(Arc<HttpService>),
    /// A service disappeared: stop routing new requests to it.
    Remove(HttpServiceKey),
}

impl HttpChange {
    /// The service this change is about.
    pub fn key(&self) -> &HttpServiceKey {
        match self {
            HttpChange::Upsert(svc) => &svc.key,
            HttpChange::Remove(key) => key,
        }
    }
}

/// A dataplane: something that forwards traffic as typed change requests tell it.
pub trait Dataplane: Send {
    /// The change requests it takes ([`L4Change`] or [`HttpChange`]).
    type Change;

    /// Applies `changes` in order (an upsert of an unknown service adds it; one equal to what
    /// the dataplane has changes nothing; a removal of an unknown service does nothing).
    ///
    /// On error, the problems met, each naming its service: a service named by an error is left
    /// as it was (L4) or not routed (HTTP), and everything else is applied, so one bad service
    /// never blocks the others. The HTTP proxy also reports the problems of earlier calls still
    /// in effect (a service port that still cannot be bound, a rejected auth label), so its
    /// answer replaces the previous one.
    fn apply(&mut self, changes: &[Self::Change]) -> Result<(), Vec<DataplaneError>>;
}

/// Applies each change with `apply_one`, logging and collecting every error instead of stopping
/// at the first (the L4 dataplanes' [`Dataplane::apply`]).
pub(crate) fn apply_each<C>(
    changes: &[C],
    mut apply_one: impl FnMut(&C) -> Result<(), DataplaneError>,
) -> Result<(), Vec<DataplaneError>> {
    let errors: Vec<DataplaneError> = changes
        .iter()
        .filter_map(|change| apply_one(change).err())
        .inspect(|e| tracing::warn!("{e}"))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// An error of a dataplane's own (a map write, a bind, a certificate), kept as the cause.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// A change a dataplane could not apply, or a problem it has with a service it was given.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// An L4 service could not be programmed; the dataplane keeps what it had for it.
    #[error("L4 service {service}: {source}")]
    L4 {
        /// The service.
        service: L4ServiceKey,
        /// Why.
        source: BoxError,
    },
    /// The HTTP proxy could not apply part of a change; the cause names the app, the listener
    /// or the certificate file concerned.
    #[error(transparent)]
    Http(BoxError),
}

impl DataplaneError {
    /// An L4 service's problem.
    pub fn l4(service: L4ServiceKey, source: impl Into<BoxError>) -> Self {
        DataplaneError::L4 {
            service,
            source: source.into(),
        }
    }

    /// The dataplane's own error, without the service named in front.
    pub fn cause(&self) -> &BoxError {
        match self {
            DataplaneError::L4 { source, .. } | DataplaneError::Http(source) => source,
        }
    }

    /// The L4 service concerned, if it is one.
    pub fn l4_service(&self) -> Option<L4ServiceKey> {
        match self {
            DataplaneError::L4 { service, .. } => Some(*service),
            DataplaneError::Http(_) => None,
        }
    }
}
