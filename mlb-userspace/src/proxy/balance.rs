//! Backend selection: `HAPROXY_{n}_BALANCE` (roundrobin, leastconn, source), sticky cookies,
//! and the per-backend counters that outlive routing-table swaps.
use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    hash::{Hash, Hasher},
    net::IpAddr,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};

use tokio::sync::OwnedSemaphorePermit;

use crate::model::{Backend, BackendId, BackendState, Balance};

/// Counters of one backend, keyed by [`BackendId`] so they survive every table swap: a request
/// that started before the backend was removed still counts here until it ends.
#[derive(Debug, Default)]
pub struct BackendStats {
    in_flight: AtomicUsize,
    requests: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Responses by status class: 1xx to 5xx, then anything else.
    responses: [AtomicU64; 6],
}

/// A copy of a backend's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendCounters {
    /// Requests and tunnels open now.
    pub in_flight: u64,
    /// Requests sent to it (each redispatch attempt counts).
    pub requests: u64,
    /// Request body bytes sent to it (of requests with a `Content-Length`).
    pub bytes_in: u64,
    /// Response body bytes it sent back.
    pub bytes_out: u64,
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx, other.
    pub responses: [u64; 6],
}

impl BackendStats {
    /// Requests and tunnels now open to this backend.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a response of `status` from this backend.
    pub fn record_response(&self, status: u16) {
        let class = match status {
            100..=599 => usize::from(status / 100) - 1,
            _ => 5,
        };
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` request body bytes sent to this backend.
    pub fn record_bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` response body bytes received from this backend.
    pub fn record_bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    /// A copy of every counter.
    pub fn counters(&self) -> BackendCounters {
        BackendCounters {
            in_flight: self.in_flight() as u64,
            requests: self.requests.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            responses: std::array::from_fn(|i| self.responses[i].load(Ordering::Relaxed)),
        }
    }
}

/// Holds a backend's in-flight count up while a request (and its response body, or tunnel) is
/// alive.
#[derive(Debug)]
pub struct InFlightGuard(Arc<BackendStats>, Option<OwnedSemaphorePermit>);

impl InFlightGuard {
    /// Counts one more request on `stats` until dropped.
    pub fn new(stats: Arc<BackendStats>) -> Self {
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        stats.requests.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(stats, None)
    }

    /// Also holds the backend's `maxconn` slot until dropped.
    pub fn holding(mut self, slot: Option<OwnedSemaphorePermit>) -> Self {
        self.1 = slot;
        self
    }

    /// The counters it holds up.
    pub fn stats(&self) -> &BackendStats {
        &self.0
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every backend's counters, by [`BackendId`]: a cheap handle (clones share them) that the
/// proxy and its routing table's [`BackendSlot`]s hold, each slot making its backend's counters
/// at its first request. Entries of backends that left the table are kept while they still have
/// requests in flight (draining), then forgotten.
#[derive(Clone, Debug, Default)]
pub struct StatsRegistry(Arc<Mutex<Entries>>);

#[derive(Debug, Default)]
struct Entries {
    /// foldhash (randomly seeded per process), not SipHash: a full sync looks up 90,000 ids.
    stats: HashMap<BackendId, Arc<BackendStats>, foldhash::fast::RandomState>,
    /// Backends that left the table ([`StatsRegistry::release`]), forgotten once drained.
    released: HashSet<BackendId, foldhash::fast::RandomState>,
}

impl StatsRegistry {
    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The counters of `id`, created on first use.
    pub fn get(&self, id: &BackendId) -> Arc<BackendStats> {
        let mut entries = self.lock();
        if !entries.released.is_empty() {
            entries.released.remove(id);
        }
        entries.stats.entry(id.clone()).or_default().clone()
    }

    /// The counters of `id` if it has any (it is back in the table: no longer released).
    fn existing(&self, id: &BackendId) -> Option<Arc<BackendStats>> {
        let mut entries = self.lock();
        if !entries.released.is_empty() {
            entries.released.remove(id);
        }
        entries.stats.get(id).cloned()
    }

    /// The counters of `slot`'s backend, made for its first request. Counters a slot that
    /// already left the table makes (for a request that picked it just before) are released as
    /// they are made: forgotten once that request ends, unless the backend is back in the table.
    fn first_use(&self, slot: &BackendSlot) -> Arc<BackendStats> {
        let Entries { stats, released } = &mut *self.lock();
        let id = &slot.backend.id;
        let retired = slot.retired.load(Ordering::Relaxed);
        match stats.entry(id.clone()) {
            Entry::Occupied(known) => {
                if !retired && !released.is_empty() {
                    released.remove(id);
                }
                known.get().clone()
            }
            Entry::Vacant(new) => {
                if retired {
                    released.insert(id.clone());
                }
                new.insert(Arc::default()).clone()
            }
        }
    }

    /// `slot` left the table: its backend's counters are forgotten by
    /// [`StatsRegistry::prune_released`] once nothing is in flight on it, unless it comes back
    /// (a slot of it compiled again) first; counters the slot makes later are released too.
    pub fn release_slot(&self, slot: &BackendSlot) {
        let mut entries = self.lock();
        slot.retired.store(true, Ordering::Relaxed);
        if entries.stats.contains_key(&slot.backend.id) {
            entries.released.insert(slot.backend.id.clone());
        }
    }

    /// Forgets the released backends that have drained (the incremental [`Self::prune`]).
    pub fn prune_released(&self) {
        let Entries { stats, released } = &mut *self.lock();
        released.retain(|id| {
            let busy = stats.get(id).is_some_and(|s| s.in_flight() > 0);
            if !busy {
                stats.remove(id);
            }
            busy
        });
    }

    /// Forgets backends not in `keep` that have nothing in flight any more.
    pub fn prune(&self, keep: &HashSet<BackendId>) {
        let Entries { stats, released } = &mut *self.lock();
        stats.retain(|id, stats| keep.contains(id) || stats.in_flight() > 0);
        released.retain(|id| stats.contains_key(id) && !keep.contains(id));
    }

    /// The counters of every backend that has had a request (draining ones included); the
    /// others have none yet: all zero.
    pub fn counters(&self) -> Vec<(BackendId, BackendCounters)> {
        self.lock()
            .stats
            .iter()
            .map(|(id, s)| (id.clone(), s.counters()))
            .collect()
    }

    /// Requests and tunnels in flight to every backend.
    pub fn total_in_flight(&self) -> usize {
        self.lock().stats.values().map(|s| s.in_flight()).sum()
    }

    /// In-flight count of `id`, if it has had a request and not drained since it left.
    pub fn in_flight(&self, id: &BackendId) -> Option<usize> {
        self.lock().stats.get(id).map(|s| s.in_flight())
    }
}

/// A backend as the routing table holds it. What only a request needs is made at the first
/// one: a full sync at 10,000 apps compiles 90,000 slots, most of which a given proxy may never
/// route to (or not soon), and the counters, the authority and the cookie value of each would
/// hold ≈ 150 bytes more. Kept within [`SLOT_SIZE`].
#[derive(Debug)]
pub struct BackendSlot {
    /// The backend as the model gave it.
    pub backend: Backend,
    /// Its counters (shared, through `registry`, with every slot of the same backend).
    stats: OnceLock<Arc<BackendStats>>,
    registry: StatsRegistry,
    /// Set when the slot leaves the table ([`StatsRegistry::release_slot`]).
    retired: AtomicBool,
    /// Boxed: inline, the two would make every slot 72 bytes larger.
    text: OnceLock<Box<SlotText>>,
}

/// The most a [`BackendSlot`] takes: with the `Arc`'s two counts, 128 bytes, one of the
/// allocator's size classes (the next is 160).
pub const SLOT_SIZE: usize = 112;

/// The text a request to a backend needs, made once.
#[derive(Debug)]
struct SlotText {
    /// Its address as the authority of the URIs sent to it.
    authority: http::uri::Authority,
    /// Value of the sticky cookie that selects it: only sticky services need it.
    cookie: OnceLock<String>,
}

impl BackendSlot {
    /// The slot of `backend`, sharing the counters it has in `registry` (if any yet).
    pub fn new(backend: Backend, registry: &StatsRegistry) -> BackendSlot {
        let stats = OnceLock::new();
        if let Some(existing) = registry.existing(&backend.id) {
            let _ = stats.set(existing);
        }
        BackendSlot {
            backend,
            stats,
            registry: registry.clone(),
            retired: AtomicBool::new(false),
            text: OnceLock::new(),
        }
    }

    /// Its counters, made (in the registry) at the first call.
    pub fn stats(&self) -> &Arc<BackendStats> {
        self.stats.get_or_init(|| self.registry.first_use(self))
    }

    /// Requests and tunnels now open to it (0 before its first).
    pub fn in_flight(&self) -> usize {
        self.stats.get().map_or(0, |s| s.in_flight())
    }

    fn text(&self) -> &SlotText {
        self.text.get_or_init(|| {
            let authority = self
                .backend
                .addr
                .to_string()
                .parse()
                .expect("a socket address is a URI authority");
            Box::new(SlotText {
                authority,
                cookie: OnceLock::new(),
            })
        })
    }

    /// Its address as a URI authority.
    pub fn authority(&self) -> &http::uri::Authority {
        &self.text().authority
    }

    /// Value of the sticky cookie that selects this backend.
    pub fn cookie(&self) -> &str {
        self.text()
            .cookie
            .get_or_init(|| sticky_cookie_value(&self.backend.id))
    }
}

/// Name of the sticky-session cookie (marathon-lb's `cookie mesosphere_server_id insert`).
pub const STICKY_COOKIE: &str = "mesosphere_server_id";

/// Cookie value for a backend: 10 hex digits of a digest of its id (marathon-lb used 10 hex
/// digits of the server name's SHA-1), stable across restarts and across mlb instances.
pub fn sticky_cookie_value(id: &BackendId) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_str().as_bytes());
    digest.as_ref()[..5]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Picks backends for one service.
#[derive(Debug)]
pub struct Selector {
    /// `HAPROXY_{n}_BALANCE`.
    pub balance: Balance,
    /// The service's backends, in the model's order (sorted by id).
    pub backends: Vec<Arc<BackendSlot>>,
    next: AtomicUsize,
}

impl Selector {
    /// A selector over `backends` (in the table's deterministic order).
    pub fn new(balance: Balance, backends: Vec<Arc<BackendSlot>>) -> Self {
        Selector {
            balance,
            backends,
            next: AtomicUsize::new(0),
        }
    }

    /// The backend whose sticky cookie is `cookie`, if it may still take requests (active or
    /// draining, as HAProxy honours persistence on a draining server, and not failing its health
    /// check).
    pub fn by_cookie(
        &self,
        cookie: &str,
        unhealthy: &dyn Fn(&BackendId) -> bool,
    ) -> Option<&Arc<BackendSlot>> {
        self.backends
            .iter()
            .find(|b| b.cookie() == cookie && !unhealthy(&b.backend.id))
    }

    /// Picks a backend for a new request from `client`, skipping draining and unhealthy backends
    /// and those in `exclude` (already tried). `None`: no backend can take it (503).
    pub fn pick(
        &self,
        client: IpAddr,
        unhealthy: &dyn Fn(&BackendId) -> bool,
        exclude: &[BackendId],
    ) -> Option<&Arc<BackendSlot>> {
        // Walked twice rather than collected: a Vec per request cost an allocation.
        let eligible = || {
            self.backends.iter().filter(|b| {
                b.backend.state == BackendState::Active
                    && !unhealthy(&b.backend.id)
                    && !exclude.contains(&b.backend.id)
            })
        };
        let (count, total_weight) = eligible().fold((0, 0), |(n, w), b| (n + 1, w + weight(b)));
        if count == 0 {
            return None;
        }
        match self.balance {
            Balance::RoundRobin => {
                let n = self.next.fetch_add(1, Ordering::Relaxed) % total_weight;
                by_weight(eligible(), n)
            }
            Balance::LeastConn => {
                // Fewest in flight relative to weight; ties go to the first from a rotating
                // start, so that equal backends share the load.
                let start = self.next.fetch_add(1, Ordering::Relaxed) % count;
                eligible()
                    .enumerate()
                    .min_by_key(|(i, b)| {
                        let load = (b.in_flight() * 1000) / weight(b);
                        (load, (i + count - start) % count)
                    })
                    .map(|(_, b)| b)
            }
            Balance::Source => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                client.hash(&mut h);
                by_weight(eligible(), (h.finish() as usize) % total_weight)
            }
        }
    }
}

fn weight(b: &BackendSlot) -> usize {
    b.backend.weight.max(1) as usize
}

/// The backend owning position `n` when each backend owns `weight` consecutive positions
/// (the last one past the total).
fn by_weight<'a>(
    eligible: impl Iterator<Item = &'a Arc<BackendSlot>>,
    mut n: usize,
) -> Option<&'a Arc<BackendSlot>> {
    let mut last = None;
    for b in eligible {
        let w = weight(b);
        if n < w {
            return Some(b);
        }
        n -= w;
        last = Some(b);
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(id: &str, weight: u32, state: BackendState) -> Arc<BackendSlot> {
        let id = BackendId::from(id);
        let backend = Backend {
            id,
            addr: "127.0.0.1:1".parse().unwrap(),
            weight,
            state,
        };
        Arc::new(BackendSlot::new(backend, &StatsRegistry::default()))
    }

    const NONE_UNHEALTHY: &dyn Fn(&BackendId) -> bool = &|_| false;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn roundrobin_rotates_over_active_backends_only() {
        let sel = Selector::new(
            Balance::RoundRobin,
            vec![
                slot("a", 1, BackendState::Active),
                slot("d", 1, BackendState::Draining),
                slot("b", 1, BackendState::Active),
            ],
        );
        let picks: Vec<String> = (0..4)
            .map(|_| {
                sel.pick(ip("1.2.3.4"), NONE_UNHEALTHY, &[])
                    .unwrap()
                    .backend
                    .id
                    .to_string()
            })
            .collect();
        assert_eq!(picks, ["a", "b", "a", "b"]);
    }

    #[test]
    fn roundrobin_honours_weights_and_health() {
        let sel = Selector::new(
            Balance::RoundRobin,
            vec![
                slot("a", 2, BackendState::Active),
                slot("b", 1, BackendState::Active),
            ],
        );
        let picks: Vec<String> = (0..3)
            .map(|_| {
                sel.pick(ip("1.2.3.4"), NONE_UNHEALTHY, &[])
                    .unwrap()
                    .backend
                    .id
                    .to_string()
            })
            .collect();
        assert_eq!(picks, ["a", "a", "b"]);
        let a_down = |id: &BackendId| id.as_str() == "a";
        assert_eq!(
            sel.pick(ip("1.2.3.4"), &a_down, &[])
                .unwrap()
                .backend
                .id
                .as_str(),
            "b"
        );
        let all_down = |_: &BackendId| true;
        assert!(sel.pick(ip("1.2.3.4"), &all_down, &[]).is_none());
    }

    #[test]
    fn leastconn_rotates_over_equally_loaded_backends() {
        let slots: Vec<_> = ["a", "b", "c"]
            .map(|id| slot(id, 1, BackendState::Active))
            .into();
        let sel = Selector::new(Balance::LeastConn, slots);
        let picks: Vec<String> = (0..6)
            .map(|_| {
                let b = sel.pick(ip("1.2.3.4"), NONE_UNHEALTHY, &[]).unwrap();
                b.backend.id.as_str().to_owned()
            })
            .collect();
        assert_eq!(picks, ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn leastconn_prefers_the_idle_backend() {
        let a = slot("a", 1, BackendState::Active);
        let b = slot("b", 1, BackendState::Active);
        let sel = Selector::new(Balance::LeastConn, vec![a.clone(), b]);
        let _busy = [
            InFlightGuard::new(a.stats().clone()),
            InFlightGuard::new(a.stats().clone()),
        ];
        for _ in 0..4 {
            assert_eq!(
                sel.pick(ip("1.2.3.4"), NONE_UNHEALTHY, &[])
                    .unwrap()
                    .backend
                    .id
                    .as_str(),
                "b"
            );
        }
    }

    #[test]
    fn source_is_stable_per_client_and_spreads_clients() {
        let sel = Selector::new(
            Balance::Source,
            (0..4)
                .map(|i| slot(&format!("b{i}"), 1, BackendState::Active))
                .collect(),
        );
        let first = sel
            .pick(ip("10.0.0.7"), NONE_UNHEALTHY, &[])
            .unwrap()
            .backend
            .id
            .clone();
        for _ in 0..10 {
            assert_eq!(
                sel.pick(ip("10.0.0.7"), NONE_UNHEALTHY, &[])
                    .unwrap()
                    .backend
                    .id,
                first
            );
        }
        let distinct: HashSet<BackendId> = (0..64)
            .map(|i| {
                sel.pick(ip(&format!("10.0.1.{i}")), NONE_UNHEALTHY, &[])
                    .unwrap()
                    .backend
                    .id
                    .clone()
            })
            .collect();
        assert!(distinct.len() > 1);
    }

    #[test]
    fn exclude_skips_backends_already_tried() {
        let sel = Selector::new(
            Balance::RoundRobin,
            vec![
                slot("a", 1, BackendState::Active),
                slot("b", 1, BackendState::Active),
            ],
        );
        let tried = [BackendId::from("a")];
        for _ in 0..3 {
            assert_eq!(
                sel.pick(ip("1.2.3.4"), NONE_UNHEALTHY, &tried)
                    .unwrap()
                    .backend
                    .id
                    .as_str(),
                "b"
            );
        }
    }

    #[test]
    fn registry_keeps_draining_backends_until_idle() {
        let reg = StatsRegistry::default();
        let id = BackendId::from("gone");
        let guard = InFlightGuard::new(reg.get(&id));
        reg.prune(&HashSet::new());
        assert_eq!(reg.in_flight(&id), Some(1));
        drop(guard);
        reg.prune(&HashSet::new());
        assert_eq!(reg.in_flight(&id), None);
    }

    /// A slot of `id` (active, weight 1) compiled against `reg`.
    fn slot_in(reg: &StatsRegistry, id: &str) -> BackendSlot {
        let backend = Backend {
            id: BackendId::from(id),
            addr: "127.0.0.1:1".parse().unwrap(),
            weight: 1,
            state: BackendState::Active,
        };
        BackendSlot::new(backend, reg)
    }

    #[test]
    fn released_backends_are_forgotten_once_drained_unless_they_come_back() {
        let reg = StatsRegistry::default();
        let (gone, back) = (slot_in(&reg, "gone"), slot_in(&reg, "back"));
        let guard = InFlightGuard::new(gone.stats().clone());
        back.stats();
        reg.release_slot(&gone);
        reg.release_slot(&back);
        let back_again = slot_in(&reg, "back");
        reg.prune_released();
        assert_eq!(reg.in_flight(&gone.backend.id), Some(1), "still draining");
        assert_eq!(
            reg.in_flight(&back.backend.id),
            Some(0),
            "back in the table"
        );
        drop(guard);
        reg.prune_released();
        assert_eq!(reg.in_flight(&gone.backend.id), None);
        assert!(Arc::ptr_eq(back.stats(), back_again.stats()));
    }

    #[test]
    fn a_slot_stays_within_its_allocation_class() {
        assert!(
            size_of::<BackendSlot>() <= SLOT_SIZE,
            "{}",
            size_of::<BackendSlot>()
        );
        let slot = slot_in(&StatsRegistry::default(), "a");
        assert_eq!(slot.authority().as_str(), "127.0.0.1:1");
        assert_eq!(slot.cookie(), sticky_cookie_value(&slot.backend.id));
    }

    #[test]
    fn counters_are_made_at_the_first_request_and_shared_by_later_slots() {
        let reg = StatsRegistry::default();
        let first = slot_in(&reg, "a");
        assert_eq!(reg.in_flight(&first.backend.id), None, "no request yet");
        assert!(reg.counters().is_empty());
        let second = slot_in(&reg, "a");
        let guard = InFlightGuard::new(second.stats().clone());
        assert_eq!(first.in_flight(), 0, "made by the other slot");
        assert_eq!(first.stats().in_flight(), 1);
        assert_eq!(reg.counters().len(), 1);
        let third = slot_in(&reg, "a");
        assert_eq!(third.in_flight(), 1, "compiled after: shares them at once");
        drop(guard);
    }

    #[test]
    fn counters_a_retired_slot_makes_are_forgotten_once_its_request_ends() {
        let reg = StatsRegistry::default();
        let old = slot_in(&reg, "a");
        reg.release_slot(&old);
        reg.prune_released();
        let guard = InFlightGuard::new(old.stats().clone());
        reg.prune_released();
        assert_eq!(reg.in_flight(&old.backend.id), Some(1), "in flight");
        drop(guard);
        reg.prune_released();
        assert_eq!(reg.in_flight(&old.backend.id), None);
    }

    #[test]
    fn a_retired_slot_leaves_the_counters_of_the_backend_back_in_the_table() {
        let reg = StatsRegistry::default();
        let old = slot_in(&reg, "a");
        reg.release_slot(&old);
        let new = slot_in(&reg, "a");
        new.stats();
        old.stats();
        reg.prune_released();
        assert_eq!(reg.in_flight(&new.backend.id), Some(0));
        assert!(Arc::ptr_eq(old.stats(), new.stats()));
    }
}
