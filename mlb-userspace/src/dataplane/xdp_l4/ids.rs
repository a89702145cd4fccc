//! Backend ids (indices of the program's backends array) derived from the backend's address,
//! not from the order backends arrived in.
//!
//! The Maglev tables the program reads hold backend ids. Several mlb instances behind one ECMP
//! router must hold the same tables (a flow the router moves to another instance must reach the
//! same backend), and operators compare them: with ids allocated in arrival order, two instances
//! that saw the same tasks in another order (or one restarted and read them all at once) would
//! hold equal tables of *addresses* but different tables of *ids*. So a backend's id is its
//! address's stable hash modulo the array size, the next free id after it when taken (a
//! collision, ~N²/8,192 likely for N backends: only then can the ids of two instances differ,
//! never the addresses they resolve to).
use std::{collections::BTreeSet, net::SocketAddr};

use crate::dataplane::maglev::stable_hash;

/// The free ids of an array of `len` backends.
#[derive(Debug)]
pub(super) struct BackendIds {
    len: u32,
    free: BTreeSet<u32>,
}

impl BackendIds {
    /// Every id of `0..len` free.
    pub(super) fn new(len: u32) -> Self {
        BackendIds {
            len,
            free: (0..len).collect(),
        }
    }

    /// The id `addr` prefers: where it lands whatever else exists.
    pub(super) fn preferred(&self, addr: SocketAddr) -> u32 {
        let h = stable_hash(b"mlb-backend-id\0", addr.to_string().as_bytes());
        (h % u64::from(self.len.max(1))) as u32
    }

    /// Takes the id of a new backend at `addr`: the preferred one, or the next free one after it
    /// (wrapping). `None` when every id is taken.
    pub(super) fn take(&mut self, addr: SocketAddr) -> Option<u32> {
        let start = self.preferred(addr);
        let id = self
            .free
            .range(start..)
            .next()
            .or_else(|| self.free.range(..start).next())
            .copied()?;
        self.free.remove(&id);
        Some(id)
    }

    /// Marks `id` as used (adopted from a previous agent's maps).
    pub(super) fn mark_used(&mut self, id: u32) {
        self.free.remove(&id);
    }

    /// Gives `id` back.
    pub(super) fn release(&mut self, id: u32) {
        if id < self.len {
            self.free.insert(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: usize) -> SocketAddr {
        format!("198.18.2.{}:{}", 10 + i % 200, 31_000 + i)
            .parse()
            .unwrap()
    }

    /// Ids depend on the address only: any arrival order, and a restart that adopts some ids
    /// and takes the others, give each backend the same id (no collision among these).
    #[test]
    fn backend_ids_do_not_depend_on_arrival_order() {
        let addrs: Vec<SocketAddr> = (0..8).map(addr).collect();
        let mut forward = BackendIds::new(4096);
        let a: Vec<u32> = addrs.iter().map(|&x| forward.take(x).unwrap()).collect();
        let mut backward = BackendIds::new(4096);
        let mut b: Vec<u32> = addrs
            .iter()
            .rev()
            .map(|&x| backward.take(x).unwrap())
            .collect();
        b.reverse();
        assert_eq!(a, b);
        let mut restarted = BackendIds::new(4096);
        restarted.mark_used(a[3]);
        restarted.mark_used(a[5]);
        for (i, &x) in addrs.iter().enumerate() {
            if i != 3 && i != 5 {
                assert_eq!(restarted.take(x), Some(a[i]));
            }
        }
    }

    /// A taken preferred id moves the newcomer to the next free one, wrapping; a full array
    /// gives none, and a released id is taken again.
    #[test]
    fn backend_ids_probe_on_collision_and_wrap() {
        let mut ids = BackendIds::new(4);
        let x = addr(0);
        let p = ids.preferred(x);
        let got: Vec<u32> = (0..4).map(|_| ids.take(x).unwrap()).collect();
        assert_eq!(got, (0..4).map(|k| (p + k) % 4).collect::<Vec<_>>());
        assert_eq!(ids.take(x), None);
        ids.release(2);
        ids.release(99);
        assert_eq!(ids.take(addr(1)), Some(2));
    }
}
