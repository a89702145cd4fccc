//! The connection-tracking sweeper: forgets idle flows (the kernel's LRU only evicts when the
//! table is full) and the flows of dead backends, and frees the ids of dead backends nothing
//! refers to any more.
//!
//! Walking the whole table takes one syscall per entry, and the controller must be able to apply
//! changes meanwhile. So the sweeper walks and deletes through its own handle to the map, and
//! takes the dataplane lock only twice, briefly: first to declare drained backends dead and note
//! which backends are dead, last to forget the flows of backends still dead (the controller may
//! have revived one during the walk) and free their ids.
use std::{
    collections::HashSet,
    os::fd::AsFd as _,
    sync::{Arc, Mutex, MutexGuard},
};

use aya::maps::{HashMap as BpfHashMap, IterableMap as _, MapData};
use mlb_common::{
    ct::{CtTimeouts, backend_in_time_wait},
    maps::{self, FlowKey, NatEntry},
};

use tracing::{debug, warn};

use super::{CtStateCounts, XdpL4, ct_batch, monotonic_ns};
use crate::dataplane::xdp::XdpError;

type Conntrack = BpfHashMap<MapData, FlowKey, NatEntry>;

/// Sweeps the connection-tracking table of a shared [`XdpL4`].
pub struct ConntrackSweeper {
    dataplane: Arc<Mutex<XdpL4>>,
    /// The sweeper's own handle to the table, used without the lock.
    conntrack: Conntrack,
    /// The program's own timeouts: the sweeper deletes exactly what the program already
    /// treats as dead.
    timeouts: CtTimeouts,
    /// The table's size (`--conntrack-size`, or an adopted table's).
    capacity: u32,
}

/// What one walk over the table found.
#[derive(Default)]
struct Scan {
    /// Entries idle for longer than their timeout.
    idle: Vec<FlowKey>,
    /// Entries of backends that were dead when the sweep began, with that backend.
    of_dead: Vec<(FlowKey, u32)>,
    /// Backend ids that the entries that stay refer to.
    referenced: HashSet<u32>,
    /// Entries that stay, by TCP state.
    states: CtStateCounts,
    /// Entries walked.
    walked: u64,
}

impl ConntrackSweeper {
    pub fn new(dataplane: Arc<Mutex<XdpL4>>) -> Result<Self, XdpError> {
        let (conntrack, timeouts) = {
            let dp = lock(&dataplane)?;
            let conntrack = dp.program.hash_map_handle(maps::CONNTRACK)?;
            (conntrack, dp.config.timeouts.to_ct())
        };
        let capacity = conntrack.map().info()?.max_entries();
        Ok(ConntrackSweeper {
            dataplane,
            conntrack,
            timeouts,
            capacity,
        })
    }

    /// One sweep. Returns how many entries (flow directions) it deleted.
    pub fn sweep(&mut self) -> Result<usize, XdpError> {
        let dead = {
            let mut dp = lock(&self.dataplane)?;
            dp.expire_drained_backends()?;
            dp.dead_backend_ids()
        };
        let scan = self.scan(&dead, monotonic_ns());
        let mut deleted = delete(&mut self.conntrack, scan.idle);
        let mut dp = lock(&self.dataplane)?;
        let still_dead = dp.dead_backend_ids();
        deleted += delete(
            &mut self.conntrack,
            scan.of_dead
                .into_iter()
                .filter(|(_, backend)| still_dead.contains(backend))
                .map(|(key, _)| key)
                .collect(),
        );
        dp.free_unreferenced_backends(&scan.referenced)?;
        dp.ct_states = scan.states;
        dp.ct_entries = scan.walked.saturating_sub(deleted as u64);
        dp.ct_capacity = self.capacity;
        dp.report_snat_exhaustion()?;
        Ok(deleted)
    }

    fn scan(&self, dead: &HashSet<u32>, now_ns: u64) -> Scan {
        let mut scan = Scan::default();
        let fd = self.conntrack.map().fd().as_fd();
        let batched = ct_batch::for_each_entry(fd, |key, entry| {
            self.classify(&mut scan, dead, now_ns, key, entry);
        });
        match batched {
            Ok(()) => {}
            Err(e) if scan.walked > 0 => warn!("connection-tracking sweep cut short: {e}"),
            Err(e) => {
                // A kernel without batch operations: two system calls per entry.
                debug!("batched conntrack walk unavailable ({e}), walking entry by entry");
                // An entry deleted while the walk passes it: nothing to do.
                for (key, entry) in self.conntrack.iter().filter_map(Result::ok) {
                    self.classify(&mut scan, dead, now_ns, &key, &entry);
                }
            }
        }
        scan
    }

    /// Files one entry of the walk under what the sweep does with it.
    fn classify(
        &self,
        scan: &mut Scan,
        dead: &HashSet<u32>,
        now_ns: u64,
        key: &FlowKey,
        entry: &NatEntry,
    ) {
        scan.walked += 1;
        let expired = self
            .timeouts
            .expired(key.proto, entry.state, entry.last_seen_ns, now_ns);
        if expired {
            // A reply half recording the backend's TIME_WAIT stays (forwarding nothing)
            // until that is over: the SNAT search reads it before reusing the port.
            if !backend_in_time_wait(entry, now_ns) {
                scan.idle.push(*key);
            }
        } else if dead.contains(&entry.backend) {
            scan.of_dead.push((*key, entry.backend));
        } else {
            scan.referenced.insert(entry.backend);
            scan.states.add(key.proto, entry);
        }
    }
}

/// Deletes `keys`; returns how many were still there.
fn delete(conntrack: &mut Conntrack, keys: Vec<FlowKey>) -> usize {
    match ct_batch::delete_keys(conntrack.map().fd().as_fd(), &keys) {
        Ok(n) => n,
        Err(e) => {
            debug!("batched conntrack delete unavailable ({e}), deleting key by key");
            keys.iter()
                .filter(|key| conntrack.remove(key).is_ok())
                .count()
        }
    }
}

fn lock(dataplane: &Mutex<XdpL4>) -> Result<MutexGuard<'_, XdpL4>, XdpError> {
    dataplane.lock().map_err(|_| XdpError::Poisoned)
}
