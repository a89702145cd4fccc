//! Every map of the XDP program, sized by `mlb_common::consts` (the agent may resize them at load
//! time). User space finds them by the names in `mlb_common::maps`.
use aya_ebpf::{
    bindings::bpf_fib_lookup,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
};
use mlb_common::{
    consts::{
        CT_MAX_ENTRIES, DEFAULT_RING_SIZE, MAX_ACL_ENTRIES, MAX_BACKENDS, MAX_INTERFACES,
        MAX_SERVICES, STATS_SLOTS, ring_map_entries,
    },
    encap::OUTER_MAX,
    maps::{
        AclKey, Backend, Config, FlowKey, FlowStats, NatEntry, RingElem, ServiceKey, ServiceValue,
    },
};

use crate::exit::Exit;

/// Global counters, one `u64` per [`mlb_common::stats::Counter`], per CPU.
#[map(name = "MLB_STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_SLOTS, 0);

/// The services: (VIP, port, protocol) → slot and live Maglev table.
#[map(name = "MLB_SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(MAX_SERVICES * 2, 0);

/// Two Maglev tables per service slot, packed two entries per element.
#[map(name = "MLB_RINGS")]
pub static RINGS: Array<RingElem> = Array::with_max_entries(ring_map_entries(DEFAULT_RING_SIZE), 0);

/// Backend addresses by backend id.
#[map(name = "MLB_BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Connection tracking, one entry per direction of each flow. Shared (not per-CPU): the two
/// directions of a flow arrive on different interfaces and so on different CPUs.
#[map(name = "MLB_CONNTRACK")]
pub static CONNTRACK: LruHashMap<FlowKey, NatEntry> =
    LruHashMap::with_max_entries(CT_MAX_ENTRIES, 0);

/// Settings written by the agent (one element).
#[map(name = "MLB_CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Interfaces the program may redirect to, keyed by ifindex.
#[map(name = "MLB_TX_PORTS")]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_INTERFACES, 0);

/// Per-service packets, bytes and new flows, per CPU.
#[map(name = "MLB_SERVICE_STATS")]
pub static SERVICE_STATS: PerCpuArray<FlowStats> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// Per-backend packets, bytes and new flows, per CPU.
#[map(name = "MLB_BACKEND_STATS")]
pub static BACKEND_STATS: PerCpuArray<FlowStats> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Per backend id, where its next SNAT port search starts. Shared by all CPUs and written
/// without atomics: two CPUs that race start at the same port, one of them collides and moves
/// on (the insert, not the cursor, is the reservation).
#[map(name = "MLB_SNAT_CURSORS")]
pub static SNAT_CURSORS: Array<u32> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Source allow-lists of the services flagged `SVC_F_ACL`: (slot, client block) → 1.
#[map(name = "MLB_ACL")]
pub static ACL: LpmTrie<AclKey, u32> = LpmTrie::with_max_entries(MAX_ACL_ENTRIES, 0);

/// Per-CPU scratch space for values too large for the 512-byte BPF stack (Katran keeps its
/// packet description in such a map too). Only ever used within one program run.
#[repr(C)]
pub struct Scratch {
    /// The wire 5-tuple of the packet being processed (the conntrack key).
    pub key: FlowKey,
    /// The key of the other half of a flow being looked at.
    pub peer_key: FlowKey,
    /// The service a new flow is addressed to.
    pub service_key: ServiceKey,
    /// The `bpf_fib_lookup` request and answer.
    pub fib: bpf_fib_lookup,
    /// The reply-direction entry and key of a flow being created.
    pub reply: NatEntry,
    pub reply_key: FlowKey,
    /// The forward-direction entry of a flow being created.
    pub forward: NatEntry,
    /// SNAT search of a flow being created: its first slot, and the slot found (`u32::MAX`
    /// while none is).
    pub snat_start: u32,
    pub snat_slot: u32,
    /// The ACL trie key of a new flow's client.
    pub acl_key: Key<AclKey>,
    /// The first attempt whose port was refused for the backend's TIME_WAIT (`u32::MAX`:
    /// none), and whether a last probe takes that port anyway (non-zero).
    pub snat_refused: u32,
    pub snat_take_refused: u32,
    /// The packet's TCP sequence number, the one after it and its timestamp, when it is a
    /// SYN or FIN (`tcpseq.rs`); `seg_ts_ok` is 0 when it has no timestamp (or is neither).
    pub seg_seq: u32,
    pub seg_seq_end: u32,
    pub seg_ts: u32,
    pub seg_ts_ok: u32,
    /// The acknowledgement number of that SYN or FIN (0 if it has no ACK flag).
    pub seg_ack: u32,
    /// The outer header of a packet being encapsulated (direct server return).
    pub outer: [u8; OUTER_MAX],
}

/// One [`Scratch`] per CPU.
#[map(name = "MLB_SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's [`Scratch`]. Its lookup cannot fail (one element per CPU); if it did, that is a
/// bug, and the packet is aborted.
#[inline(always)]
pub fn scratch() -> Result<&'static mut Scratch, Exit> {
    let p = SCRATCH.get_ptr_mut(0).ok_or(Exit::Aborted)?;
    // SAFETY: this CPU's element of a per-CPU array, used by this program run only.
    Ok(unsafe { &mut *p })
}
