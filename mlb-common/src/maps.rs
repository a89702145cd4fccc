//! Map names and the `#[repr(C)]` keys and values stored in them.
//!
//! Addresses are stored as four `u32` words in network byte order exactly as they appear in the
//! packet (IPv4 in word 0, words 1–3 zero); ports likewise in network byte order. Every type has
//! explicit padding so its layout is identical on both sides.

/// Per-CPU array of `u64` counters indexed by [`crate::stats::Counter`].
pub const STATS: &str = "MLB_STATS";
/// Hash: [`ServiceKey`] → [`ServiceValue`].
pub const SERVICES: &str = "MLB_SERVICES";
/// Array of [`RingElem`]: two Maglev tables per service slot.
pub const RINGS: &str = "MLB_RINGS";
/// Array of [`Backend`], indexed by backend id.
pub const BACKENDS: &str = "MLB_BACKENDS";
/// LRU hash: [`FlowKey`] → [`NatEntry`], one entry per direction of each flow.
pub const CONNTRACK: &str = "MLB_CONNTRACK";
/// Array with one [`Config`].
pub const CONFIG: &str = "MLB_CONFIG";
/// Devmap (hash by ifindex): interfaces the program redirects to.
pub const TX_PORTS: &str = "MLB_TX_PORTS";
/// Per-CPU array of [`FlowStats`], indexed by service slot.
pub const SERVICE_STATS: &str = "MLB_SERVICE_STATS";
/// Per-CPU array of [`FlowStats`], indexed by backend id.
pub const BACKEND_STATS: &str = "MLB_BACKEND_STATS";
/// Array of `u32`, indexed by backend id: where the next SNAT port search for that backend
/// starts (an index into its SNAT addresses × ports).
pub const SNAT_CURSORS: &str = "MLB_SNAT_CURSORS";
/// LPM trie: (service slot, client address block) → `u32` 1. The source allow-lists of the
/// services with [`SVC_F_ACL`], one trie for all of them (see [`AclKey`]).
pub const ACL: &str = "MLB_ACL";

/// Every map the agent expects to find in the object (checked by a unit test).
pub const ALL: &[&str] = &[
    STATS,
    SERVICES,
    RINGS,
    BACKENDS,
    CONNTRACK,
    CONFIG,
    TX_PORTS,
    SERVICE_STATS,
    BACKEND_STATS,
    SNAT_CURSORS,
    ACL,
];

/// `family` values.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// A service: where clients send packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceKey {
    /// VIP, network order (IPv4 in word 0).
    pub addr: [u32; 4],
    /// Service port, network order.
    pub port: u16,
    /// [`crate::net::IPPROTO_TCP`] or [`crate::net::IPPROTO_UDP`].
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);

/// What the program needs to forward a service's packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// Service slot: index of its Maglev tables and statistics.
    pub slot: u32,
    /// Which of the slot's two tables is live (0 or 1). The agent writes the other one, then
    /// flips this: a packet never sees a half-written table.
    pub ring_copy: u32,
    /// Number of usable backends; 0 means packets are passed to the kernel (counted).
    pub backend_count: u32,
    /// `SVC_F_*` bits.
    pub flags: u32,
}

/// `ServiceValue::flags`: Maglev picks the backend of a new flow by a hash of the client
/// address only (`HAPROXY_{n}_BALANCE=source`): a client sticks to one backend.
pub const SVC_F_SOURCE_HASH: u32 = 1;
/// `ServiceValue::flags`: only clients whose address matches an [`ACL`] entry of the service's
/// slot may open flows (`HAPROXY_{n}_BACKEND_NETWORK_ALLOWED_ACL`); the others are dropped.
pub const SVC_F_ACL: u32 = 2;

/// The data part of an [`ACL`] trie key (the kernel's `bpf_lpm_trie_key` prefix length comes
/// before it): the service slot, big-endian so it is the first 32 bits matched, then the
/// client address block as stored everywhere (network order, IPv4 in word 0). An entry's prefix
/// length is 32 + the block's, so one trie holds every service's list and a lookup never
/// matches another slot's entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AclKey {
    pub slot_be: u32,
    pub addr: [u32; 4],
}
const _: () = assert!(core::mem::size_of::<AclKey>() == 20);

impl AclKey {
    /// Prefix length of an entry for an address block of `block_len` bits.
    pub const fn prefix_len(block_len: u32) -> u32 {
        32 + block_len
    }

    /// The lookup key of a client address for service `slot` (full length).
    pub const fn new(slot: u32, addr: [u32; 4]) -> Self {
        AclKey {
            slot_be: slot.to_be(),
            addr,
        }
    }
}

/// Two Maglev table entries (backend ids, [`crate::consts::NO_BACKEND`] for none).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RingElem {
    pub backends: [u32; crate::consts::RING_ENTRIES_PER_ELEM as usize],
}

/// `Backend::flags`: the backend is usable.
pub const BACKEND_ACTIVE: u32 = 1;
/// `Backend::flags`: the backend is dead: its established flows are re-balanced (the new backend,
/// which has no such connection, answers TCP with a RST).
pub const BACKEND_DEAD: u32 = 2;

/// A backend address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    pub addr: [u32; 4],
    /// Network order.
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
    /// `BACKEND_*` bits.
    pub flags: u32,
}

/// A flow direction as seen on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Network order.
    pub sport: u16,
    /// Network order.
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// `NatEntry::direction`: client → service, rewritten towards the backend.
pub const DIR_TO_BACKEND: u8 = 0;
/// `NatEntry::direction`: backend → SNAT address, rewritten back towards the client.
pub const DIR_TO_CLIENT: u8 = 1;

/// How to rewrite one direction of a tracked flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatEntry {
    /// New source address and port (network order).
    pub new_src: [u32; 4],
    /// New destination address and port (network order).
    pub new_dst: [u32; 4],
    pub new_sport: u16,
    pub new_dport: u16,
    /// Service slot (statistics).
    pub service_slot: u32,
    /// Backend id (statistics, dead-backend check).
    pub backend: u32,
    /// [`DIR_TO_BACKEND`] or [`DIR_TO_CLIENT`].
    pub direction: u8,
    /// `crate::ct::CT_*` state, the same in both halves of a flow.
    pub state: u8,
    /// `crate::ct::TW_*` flags: what `tw_rcv_nxt` and `tw_ts_recent` hold (reply half only).
    pub tw_flags: u8,
    pub _pad: u8,
    /// `bpf_ktime_get_ns()` of the last packet of either direction (refreshed at most every
    /// [`crate::consts::TOUCH_INTERVAL_NS`]) or of the last state change; both halves carry it.
    pub last_seen_ns: u64,
    /// When the backend closed first, the TIME_WAIT it keeps for this flow's 4-tuple (the
    /// reply half's key): the next sequence number it expects from the client (after the
    /// client's FIN) and the client's last TCP timestamp. A new flow may reuse the SNAT port
    /// only with a SYN that TIME_WAIT accepts (`crate::ct::time_wait_accepts_syn`).
    pub tw_rcv_nxt: u32,
    pub tw_ts_recent: u32,
    /// The next hop of this direction's packets, cached from `bpf_fib_lookup` so an
    /// established flow's packets skip the lookup: the egress interface (0: nothing cached).
    pub hop_ifindex: u32,
    /// The next hop's destination and source MACs, in header order (12 bytes as words).
    pub hop_macs: [u32; 3],
    /// The largest IP length (header on) the lookup found fits the hop's MTU: a longer packet
    /// is looked up again (and answered "too big" if it does not fit).
    pub hop_len: u16,
    pub _pad2: u16,
    /// When the hop was looked up, in [`crate::consts::HOP_TICK_SHIFT`] ticks of
    /// `bpf_ktime_get_ns()` (wrapping); it is looked up again after
    /// [`crate::consts::HOP_TTL_TICKS`], so route and neighbour changes reach flows.
    pub hop_at: u32,
}
const _: () = assert!(core::mem::size_of::<NatEntry>() == 88);

/// Global settings written by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// SNAT sources of IPv4 flows (network order, word 0) and of IPv6 flows; the first
    /// `snat_v4_count` / `snat_v6_count` are used. Each address adds a whole port range.
    pub snat_v4: [[u32; 4]; crate::consts::MAX_SNAT_ADDRS],
    pub snat_v6: [[u32; 4]; crate::consts::MAX_SNAT_ADDRS],
    pub snat_v4_count: u32,
    pub snat_v6_count: u32,
    /// SNAT port range, host order, inclusive.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// Maglev table size (prime).
    pub ring_size: u32,
    /// Non-zero once the agent has written this config; until then every packet passes.
    pub ready: u32,
    /// Key of the flow hash ([`crate::hash::flow_hash`]).
    pub hash_secret: [u32; 2],
    /// Idle timeouts by protocol and TCP state.
    pub timeouts: crate::ct::CtTimeouts,
    /// How packets reach backends: [`FORWARDING_NAT`] or [`FORWARDING_DSR`].
    pub forwarding: u32,
    /// Outer source of IPv4-in-IPv4 packets (DSR), network order; 0: none.
    pub encap_src_v4: u32,
    /// Outer source of IPv6-in-IPv6 packets (DSR); all zero: none.
    pub encap_src_v6: [u32; 4],
}

/// `Config::forwarding`: full NAT, flows tracked, backends answer the load balancer.
pub const FORWARDING_NAT: u32 = 0;
/// `Config::forwarding`: direct server return: every packet to a service is encapsulated to
/// the backend Maglev picks for its 5-tuple, nothing is tracked, backends answer clients
/// directly (see [`crate::encap`]).
pub const FORWARDING_DSR: u32 = 1;

/// Packets, bytes and new flows of a service or backend (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// New flows dropped because no SNAT port towards this backend was free.
    pub snat_exhausted: u64,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], Copy, with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for RingElem {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for NatEntry {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for FlowStats {}
    unsafe impl aya::Pod for AclKey {}
}
