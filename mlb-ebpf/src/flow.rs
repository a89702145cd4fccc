//! Connection tracking: the entry of a packet's flow direction, found or created.
//!
//! A flow has two entries, one per direction, each saying how to rewrite its packets. A new flow
//! gets its backend from the service's Maglev table and a SNAT port; only map entries change
//! here, the packet is rewritten last (`rewrite.rs`).
use aya_ebpf::bindings::BPF_ANY;
use mlb_common::{
    maps::{
        CT_CLOSING, CT_ESTABLISHED, CT_SYN, Config, DIR_TO_BACKEND, DIR_TO_CLIENT, FAMILY_V4,
        FlowKey, NatEntry,
    },
    net::{IPPROTO_TCP, tcp},
    stats::Counter,
};

use crate::{
    exit::Exit,
    lookup::{backend_dead, lookup_service, pick_backend},
    maps::{CONNTRACK, Scratch},
    parse::PacketMeta,
    snat::reserve_snat_port,
    stats::count,
};

/// The tracked flow direction a packet belongs to.
pub struct Flow {
    /// How to rewrite the packet (a map value, used in place).
    pub nat: &'static NatEntry,
    /// This packet created the flow.
    pub new: bool,
}

/// The wire 5-tuple of a packet: the key of its flow direction.
#[inline(always)]
fn flow_key(meta: &PacketMeta) -> FlowKey {
    FlowKey {
        src: meta.src,
        dst: meta.dst,
        sport: meta.sport,
        dport: meta.dport,
        proto: meta.proto,
        family: meta.family.code(),
        _pad: [0; 2],
    }
}

/// The key of the other direction of the flow an entry rewrites into.
#[inline(always)]
fn peer_key(key: &FlowKey, entry: &NatEntry) -> FlowKey {
    FlowKey {
        src: entry.new_dst,
        dst: entry.new_src,
        sport: entry.new_dport,
        dport: entry.new_sport,
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    }
}

/// The flow of the packet: its tracked entry, or a new flow when it has none and is addressed to
/// a service. Leaves the packet's flow key in `scratch.key` (the key lives in the per-CPU
/// scratch map, not on the 512-byte stack).
#[inline(always)]
pub fn track_flow(
    meta: &PacketMeta,
    scratch: &mut Scratch,
    cfg: &Config,
    now: u64,
) -> Result<Flow, Exit> {
    scratch.key = flow_key(meta);
    if let Some(nat) = lookup_flow(meta, &scratch.key, now) {
        return Ok(Flow { nat, new: false });
    }
    create_flow(meta, scratch, cfg, now)?;
    // SAFETY: a map value, valid for this program run.
    let nat = unsafe { CONNTRACK.get(&scratch.key) }
        // Evicted between the insert and this lookup: the table is that full.
        .ok_or(Exit::Drop(Counter::DropConntrackFull))?;
    Ok(Flow { nat, new: true })
}

/// The tracked entry of `key`, touched, or `None` when the packet starts a new flow. A flow whose
/// backend the agent declared dead is forgotten, so it is re-balanced: the new backend has no
/// such connection and answers a TCP segment with a RST, and the client learns at once.
#[inline(always)]
fn lookup_flow(meta: &PacketMeta, key: &FlowKey, now: u64) -> Option<&'static NatEntry> {
    let entry = CONNTRACK.get_ptr_mut(key)?;
    // SAFETY: `entry` comes from the lookup and stays valid for this program run (RCU).
    let tracked = unsafe { &*entry };
    let to_backend = tracked.direction == DIR_TO_BACKEND;
    if to_backend && backend_dead(tracked.backend) {
        count(Counter::FlowBackendDead);
        forget_flow(key, tracked);
        return None;
    }
    touch_flow(entry, meta, now);
    count(if to_backend {
        Counter::FlowToBackend
    } else {
        Counter::FlowToClient
    });
    Some(tracked)
}

/// Forgets both directions of a tracked flow. A subprogram (its own stack frame); takes only
/// stack and map-value pointers.
#[inline(never)]
fn forget_flow(key: &FlowKey, entry: &NatEntry) {
    let _ = CONNTRACK.remove(key);
    let _ = CONNTRACK.remove(peer_key(key, entry));
}

/// Records activity on a tracked flow: last-seen time and TCP state.
#[inline(always)]
fn touch_flow(entry: *mut NatEntry, meta: &PacketMeta, now: u64) {
    // SAFETY: `entry` comes from a map lookup; fields are plain integers.
    unsafe {
        (*entry).last_seen_ns = now;
        if meta.proto == IPPROTO_TCP {
            if meta.tcp_flags & (tcp::FIN | tcp::RST) != 0 {
                (*entry).state = CT_CLOSING;
            } else if (*entry).state == CT_SYN && meta.tcp_flags & tcp::ACK != 0 {
                (*entry).state = CT_ESTABLISHED;
            }
        }
    }
}

#[inline(always)]
fn mix(h: u32, w: u32) -> u32 {
    (h ^ w)
        .wrapping_mul(0xCC9E_2D51)
        .rotate_left(15)
        .wrapping_mul(0x1B87_3593)
}

/// Mixes the 5-tuple into 32 bits (murmur3's finaliser over the words). Both the Maglev slot and
/// the SNAT port come from it, so the same flow always maps the same way.
#[inline(always)]
fn hash_flow(key: &FlowKey) -> u32 {
    let mut h: u32 = 0x9E37_79B9 ^ u32::from(key.proto);
    for i in 0..4 {
        h = mix(h, key.src[i]);
        h = mix(h, key.dst[i]);
    }
    h = mix(h, (u32::from(key.sport) << 16) | u32::from(key.dport));
    h ^= h >> 16;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^ (h >> 16)
}

/// Creates the flow of a packet addressed to a service: picks the backend from the service's
/// live Maglev table, reserves a SNAT port (which records the reply direction), then records
/// the forward direction under `scratch.key`.
///
/// A BPF subprogram of its own (not inlined): its stack frame is not live while the packet is
/// rewritten and forwarded, which keeps the program under the 512-byte stack limit. It takes
/// only stack and map-value pointers (no packet or context pointer), and keeps its large values
/// in `scratch`.
#[inline(never)]
fn create_flow(
    meta: &PacketMeta,
    scratch: &mut Scratch,
    cfg: &Config,
    now: u64,
) -> Result<(), Exit> {
    let svc = lookup_service(meta, &mut scratch.service_key)?;
    let hash = hash_flow(&scratch.key);
    let family = scratch.key.family;
    let (backend_id, backend) = pick_backend(svc, cfg.ring_size, hash, family)?;
    let snat = if family == FAMILY_V4 {
        &cfg.snat_v4
    } else {
        &cfg.snat_v6
    };
    let state = if meta.proto == IPPROTO_TCP && meta.tcp_flags & tcp::SYN != 0 {
        CT_SYN
    } else {
        CT_ESTABLISHED
    };
    scratch.reply = NatEntry {
        new_src: meta.dst,
        new_dst: meta.src,
        new_sport: meta.dport,
        new_dport: meta.sport,
        service_slot: svc.slot,
        backend: backend_id,
        direction: DIR_TO_CLIENT,
        state,
        _pad: [0; 2],
        last_seen_ns: now,
    };
    scratch.reply_key = FlowKey {
        src: backend.addr,
        dst: *snat,
        sport: backend.port,
        dport: 0,
        proto: meta.proto,
        family,
        _pad: [0; 2],
    };
    let snat_port = reserve_snat_port(cfg, hash, &mut scratch.reply_key, &scratch.reply)?;
    scratch.forward = NatEntry {
        new_src: *snat,
        new_dst: backend.addr,
        new_sport: snat_port,
        new_dport: backend.port,
        service_slot: svc.slot,
        backend: backend_id,
        direction: DIR_TO_BACKEND,
        state,
        _pad: [0; 2],
        last_seen_ns: now,
    };
    if CONNTRACK
        .insert(&scratch.key, &scratch.forward, u64::from(BPF_ANY))
        .is_err()
    {
        let _ = CONNTRACK.remove(&scratch.reply_key);
        return Err(Exit::Drop(Counter::DropConntrackFull));
    }
    count(Counter::FlowNew);
    Ok(())
}
