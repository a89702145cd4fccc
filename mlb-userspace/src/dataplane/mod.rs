//! Dataplanes: what turns the desired state into forwarding.
//!
//! - [`xdp`]: loads and attaches the XDP program and programs its maps (plain TCP/UDP services,
//!   forwarded in the kernel).
//! - [`userspace_l4`]: the same services proxied by tokio, when XDP is not available or not
//!   wanted (`--dataplane userspace`).
//! - [`maglev`]: the consistent-hashing table both use to pick a backend for a new flow.
//!
//! The model hands every L4 dataplane the same typed changes ([`L4Change`]), computed by
//! [`diff_l4`]: a dataplane never rebuilds everything, it applies what changed.
use std::collections::BTreeMap;

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

/// The changes that turn `old` into `new`: upserts for new or changed services (in key order),
/// then removals.
pub fn diff_l4(
    old: &BTreeMap<L4ServiceKey, L4Service>,
    new: &BTreeMap<L4ServiceKey, L4Service>,
) -> Vec<L4Change> {
    let upserts = new
        .iter()
        .filter(|(key, svc)| old.get(key) != Some(svc))
        .map(|(_, svc)| L4Change::Upsert(svc.clone()));
    let removals = old
        .keys()
        .filter(|key| !new.contains_key(key))
        .map(|key| L4Change::Remove(*key));
    upserts.chain(removals).collect()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::model::{Backend, BackendId, BackendState, Protocol};

    fn service(port: u16, backends: &[&str]) -> L4Service {
        L4Service {
            key: L4ServiceKey {
                port,
                protocol: Protocol::Tcp,
            },
            app_id: format!("/app{port}"),
            bind_addr: None,
            backends: backends
                .iter()
                .map(|a| Backend {
                    id: BackendId((*a).to_owned()),
                    addr: a.parse::<SocketAddr>().unwrap(),
                    weight: 1,
                    state: BackendState::Active,
                })
                .collect(),
            health_check: None,
        }
    }

    fn state(services: &[L4Service]) -> BTreeMap<L4ServiceKey, L4Service> {
        services.iter().map(|s| (s.key, s.clone())).collect()
    }

    /// Applying the diff to the old state gives the new one; unchanged services produce nothing.
    #[test]
    fn diff_replays_to_the_new_state() {
        let a = state(&[
            service(80, &["198.18.2.11:80"]),
            service(81, &["198.18.2.12:81"]),
        ]);
        let b = state(&[
            service(80, &["198.18.2.11:80", "198.18.2.13:80"]),
            service(82, &["198.18.2.12:82"]),
        ]);
        let changes = diff_l4(&a, &b);
        assert_eq!(changes.len(), 3, "{changes:?}");
        let mut replay = a.clone();
        for change in &changes {
            match change {
                L4Change::Upsert(s) => {
                    replay.insert(s.key, s.clone());
                }
                L4Change::Remove(k) => {
                    replay.remove(k);
                }
            }
        }
        assert_eq!(replay, b);
        assert!(diff_l4(&b, &b).is_empty());
        assert_eq!(diff_l4(&b, &BTreeMap::new()).len(), 2);
    }
}
