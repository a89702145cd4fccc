//! A fingerprint of the state the dataplanes were given (`/_mlb/status`'s `fingerprint`): equal
//! on every mlb instance that serves the same services with the same backends, so operators (and
//! the fleet tests) see at a glance whether a fleet agrees.
//!
//! It covers the L4 services as the L4 dataplane accepted them (after mlb's own health checks
//! took failing backends out), and the HTTP services. The Maglev tables are a fixed function of
//! a service's backends and weights (`dataplane::maglev`) and the table size, which is folded
//! in: equal fingerprints mean equal tables. (`/_mlb/xdp/tables` reads the XDP tables back.)
//!
//! Kept up to date per changed service, never recomputed over the whole state: each service
//! contributes a keyed hash of its serialized form, and the fingerprint is their sum, so a
//! change costs the hash of the services it touches.
use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    dataplane::maglev::{StableHasher, stable_hash},
    model::{HttpService, HttpServiceKey, L4Service, L4ServiceKey},
};

/// Per-service digests and their sum.
#[derive(Debug, Default)]
pub(super) struct Fingerprint {
    l4: BTreeMap<L4ServiceKey, u64>,
    http: BTreeMap<HttpServiceKey, u64>,
    sum: u64,
    /// Folded in at the end (the Maglev table size).
    salt: u64,
}

/// The digest of one service: its kind and serialized form (which includes its key), hashed as
/// it is written (a full sync digests 10,000 services: no buffer for each).
fn digest(kind: &[u8], svc: &impl Serialize) -> u64 {
    let mut h = StableHasher::new(kind);
    // Serializing model types to JSON cannot fail (no maps with non-string keys), and the
    // hasher takes every byte.
    let _ = serde_json::to_writer(&mut h, svc);
    h.finish()
}

/// Replaces the digest under `key` by `new` in `map`, keeping `sum` up to date.
fn replace<K: Ord>(map: &mut BTreeMap<K, u64>, sum: &mut u64, key: K, new: Option<u64>) {
    let old = match new {
        Some(d) => map.insert(key, d),
        None => map.remove(&key),
    };
    *sum = sum
        .wrapping_sub(old.unwrap_or(0))
        .wrapping_add(new.unwrap_or(0));
}

impl Fingerprint {
    /// Folds the Maglev table size in (instances with other sizes build other tables).
    pub(super) fn set_table_size(&mut self, size: u32) {
        self.salt = stable_hash(b"mlb-maglev-size\0", &size.to_le_bytes());
    }

    /// The L4 service under `key` is now `svc` (`None`: gone).
    pub(super) fn l4(&mut self, key: L4ServiceKey, svc: Option<&L4Service>) {
        let d = svc.map(|s| digest(b"l4\0", s));
        replace(&mut self.l4, &mut self.sum, key, d);
    }

    /// The HTTP service under `key` is now `svc` (`None`: gone).
    pub(super) fn http(&mut self, key: &HttpServiceKey, svc: Option<&HttpService>) {
        let d = svc.map(|s| digest(b"http\0", s));
        replace(&mut self.http, &mut self.sum, key.clone(), d);
    }

    /// 16 hex digits.
    pub(super) fn value(&self) -> String {
        let mut bytes = self.sum.to_le_bytes().to_vec();
        bytes.extend(self.salt.to_le_bytes());
        format!("{:016x}", stable_hash(b"mlb-state\0", &bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Backend, BackendId, BackendState, Protocol};

    fn svc(port: u16, backends: &[&str]) -> L4Service {
        let key = L4ServiceKey {
            port,
            protocol: Protocol::Tcp,
        };
        L4Service {
            backends: backends
                .iter()
                .map(|a| Backend {
                    id: BackendId::from(format!("task-{a}")),
                    addr: a.parse().unwrap(),
                    weight: 1,
                    state: BackendState::Active,
                })
                .collect(),
            ..L4Service::new(key, format!("/app{port}"))
        }
    }

    /// Services applied in any order, through any history, give the same fingerprint; any
    /// difference in a backend, a service or the table size gives another.
    #[test]
    fn fingerprint_depends_on_the_state_not_its_history() {
        let a = svc(10001, &["198.18.2.11:31000", "198.18.2.12:31001"]);
        let b = svc(10002, &["198.18.2.11:31002"]);
        let mut one = Fingerprint::default();
        one.set_table_size(65_537);
        one.l4(a.key, Some(&a));
        one.l4(b.key, Some(&b));
        let mut two = Fingerprint::default();
        two.set_table_size(65_537);
        let old = svc(10002, &["198.18.2.13:31009"]);
        two.l4(old.key, Some(&old));
        let gone = svc(10003, &["198.18.2.13:31010"]);
        two.l4(gone.key, Some(&gone));
        two.l4(b.key, Some(&b));
        two.l4(a.key, Some(&a));
        two.l4(gone.key, None);
        assert_eq!(one.value(), two.value());

        let moved = svc(10001, &["198.18.2.11:31000", "198.18.2.12:31003"]);
        two.l4(moved.key, Some(&moved));
        assert_ne!(one.value(), two.value());
        two.l4(a.key, Some(&a));
        assert_eq!(one.value(), two.value());
        two.set_table_size(16_381);
        assert_ne!(one.value(), two.value());
        assert_ne!(Fingerprint::default().value(), one.value());
    }
}
