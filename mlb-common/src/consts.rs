//! Sizes and limits shared by the XDP program and the agent. Map sizes are defaults: the agent
//! may resize maps at load time (`EbpfLoader::set_max_entries`).

/// Version of the kernel ↔ user-space layout: map names, key and value layouts, counter indices,
/// state numbers. Bump it with any such change: an agent pins its maps under
/// `abi-<ABI_VERSION>` and refuses to adopt a datapath pinned with another version (the operator
/// replaces it with `mlb stop --detach`), so it never reads a map with the wrong types.
///
/// 1: the layout before this constant. 2: TCP state machine (`ct` states), several SNAT
/// addresses, hash secret and timeouts in `Config`, `FlowStats::snat_exhausted`, SNAT cursors,
/// churn counters. 3: `ServiceValue::flags` (source hash, ACL), the ACL trie, the ACL drop
/// counter. 4: the backend's TIME_WAIT recorded in `NatEntry` (`tw_*`), counter
/// `SnatPortTimeWait`. 5: direct server return (`Config::forwarding`, `encap_src_*`, DSR
/// counters); counters `PassTtlExceeded`, `IcmpErrorTranslated`, `PassIcmpNoFlow`,
/// `PassIcmpUnsupported`, `IcmpTooBigSent`. 6: the next hop cached in `NatEntry` (`hop_*`),
/// counter `HopLookedUp`.
pub const ABI_VERSION: u32 = 6;

/// Number of per-CPU counter slots in the global statistics array (see [`crate::stats::Counter`]).
pub const STATS_SLOTS: u32 = crate::stats::Counter::COUNT as u32;

/// Service slots (one per VIP × port × protocol). Each slot owns two Maglev tables.
pub const MAX_SERVICES: u32 = 64;

/// Entries of the ACL trie: address blocks of every service's allow-list, per VIP.
pub const MAX_ACL_ENTRIES: u32 = 4096;

/// Backend slots, shared by all services (a backend is an address:port).
pub const MAX_BACKENDS: u32 = 4096;

/// Default Maglev table size: prime, > 100 × backends per service for ≤ 1% imbalance.
pub const DEFAULT_RING_SIZE: u32 = 65537;

/// Maglev entries packed per ring map element (array elements are 8-byte aligned anyway).
pub const RING_ENTRIES_PER_ELEM: u32 = 2;

/// Connection-tracking entries (two per flow: one per direction).
pub const CT_MAX_ENTRIES: u32 = 262_144;

/// Ports a new flow's SNAT search tries, from its backend's cursor on, before giving up
/// (counted as exhaustion). The cursor walks the space in order, so the ports it tries next are
/// the ones handed out longest ago: under churn they are closed; only a space full of live flows
/// makes all of them busy. (The program probes under `bpf_loop`, so this costs the verifier
/// nothing; a probe of a busy port is one hash lookup.)
pub const SNAT_PORT_TRIES: u32 = 128;

/// SNAT addresses per family (`--snat-addr`, repeatable); each adds a whole port range.
pub const MAX_SNAT_ADDRS: usize = 8;

/// A flow's last-seen time is written at most this often (and at each state change): the two
/// halves are touched by different CPUs, and a write per packet would bounce their cache lines.
pub const TOUCH_INTERVAL_NS: u64 = 1_000_000_000;

/// A flow's cached next hop (`NatEntry::hop_*`) is timed in ticks of `2^HOP_TICK_SHIFT` ns
/// (about 1 ms; a `u32` of them wraps after 52 days).
pub const HOP_TICK_SHIFT: u32 = 20;

/// Ticks after which a cached next hop is looked up again (about 1 s): how long a route,
/// neighbour or MTU change may take to reach established flows. A TTL rather than
/// invalidation by the agent: nothing to miss, and one lookup per flow direction per second.
pub const HOP_TTL_TICKS: u32 = (1_000_000_000u64 >> HOP_TICK_SHIFT) as u32;

/// Devmap slots: interfaces the program may redirect to.
pub const MAX_INTERFACES: u32 = 64;

/// Backend index meaning "none" in Maglev tables.
pub const NO_BACKEND: u32 = u32::MAX;

/// Maglev tables per service slot: the live one, and the one the agent writes before a flip.
pub const TABLES_PER_SERVICE: u32 = 2;

/// Ring elements per table for a table of `ring_size` entries.
pub const fn ring_elems(ring_size: u32) -> u32 {
    ring_size.div_ceil(RING_ENTRIES_PER_ELEM)
}

/// Index of the first ring element of table `copy` (0 or 1) of `service_slot`.
pub const fn ring_table_base(service_slot: u32, copy: u32, ring_size: u32) -> u32 {
    (service_slot * TABLES_PER_SERVICE + copy) * ring_elems(ring_size)
}

/// Size of the ring map: every table of every service slot.
pub const fn ring_map_entries(ring_size: u32) -> u32 {
    ring_table_base(MAX_SERVICES, 0, ring_size)
}

/// XDP return codes (`enum xdp_action` of the kernel UAPI) as plain numbers, for user space and
/// tests comparing `BPF_PROG_TEST_RUN` results. Defined by [`crate::verdict::Verdict`].
pub mod xdp_action {
    use crate::verdict::Verdict;

    pub const XDP_ABORTED: u32 = Verdict::Aborted as u32;
    pub const XDP_DROP: u32 = Verdict::Drop as u32;
    pub const XDP_PASS: u32 = Verdict::Pass as u32;
    pub const XDP_TX: u32 = Verdict::Tx as u32;
    pub const XDP_REDIRECT: u32 = Verdict::Redirect as u32;
}
