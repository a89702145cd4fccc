//! What changed between two versions of a service map, and the typed HTTP change.
//!
//! The model reports changed services by key ([`changed_keys`] after a full pass, directly after
//! an incremental one); the controller turns each key into an [`crate::dataplane::L4Change`] or
//! an [`HttpChange`], so a dataplane never rebuilds everything.
use std::collections::{BTreeMap, BTreeSet};

use crate::model::{HttpService, HttpServiceKey};

/// One change to the set of HTTP services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpChange {
    /// A service appeared. (Boxed: a service is large and changes travel in `Vec`s.)
    Add(Box<HttpService>),
    /// A service's routes, backends, TLS or options changed; the proxy swaps it in whole.
    Update(Box<HttpService>),
    /// A service disappeared: stop routing new requests to it.
    Remove(HttpServiceKey),
}

/// Keys whose value differs between `old` and `new`: added, changed or removed.
pub fn changed_keys<K: Ord + Clone, V: PartialEq>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
) -> BTreeSet<K> {
    new.iter()
        .filter(|(k, v)| old.get(k) != Some(v))
        .map(|(k, _)| k)
        .chain(old.keys().filter(|k| !new.contains_key(k)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Added, changed and removed keys are reported, unchanged ones are not; replaying the
    /// changed keys from `new` onto `old` gives `new`.
    #[test]
    fn changed_keys_are_exactly_the_difference() {
        let old: BTreeMap<u16, &str> = [(1, "a"), (2, "b"), (3, "c")].into();
        let new: BTreeMap<u16, &str> = [(1, "a"), (2, "B"), (4, "d")].into();
        let keys = changed_keys(&old, &new);
        assert_eq!(keys, [2, 3, 4].into());
        let mut replay = old.clone();
        for k in &keys {
            match new.get(k) {
                Some(v) => replay.insert(*k, *v),
                None => replay.remove(k),
            };
        }
        assert_eq!(replay, new);
        assert!(changed_keys(&new, &new).is_empty());
        assert_eq!(changed_keys(&new, &BTreeMap::new()), [1, 2, 4].into());
    }
}
