//! Connection tracking and new-flow creation: service lookup, Maglev backend choice, SNAT port
//! allocation. Only the map entries change here; the packet is rewritten by `nat.rs`.
use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use mlb_common::{
    consts::{NO_BACKEND, SNAT_PORT_TRIES},
    maps::{
        BACKEND_ACTIVE, BACKEND_DEAD, CT_CLOSING, CT_ESTABLISHED, CT_SYN, Config, DIR_TO_BACKEND,
        DIR_TO_CLIENT, FAMILY_V4, FAMILY_V6, FlowKey, NatEntry, ServiceKey,
    },
    stats::Counter,
};

use crate::{
    maps::{BACKENDS, CONNTRACK, RINGS, SCRATCH, SERVICES},
    parse::{Family, IPPROTO_TCP, PacketMeta},
    stats::count,
};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Why a packet is not forwarded: the XDP action to return (the reason is already counted).
pub type Verdict = u32;

#[inline(always)]
pub fn family_code(meta: &PacketMeta) -> u8 {
    match meta.family {
        Family::V4 => FAMILY_V4,
        Family::V6 => FAMILY_V6,
    }
}

/// The wire 5-tuple of a packet.
#[inline(always)]
pub fn flow_key(meta: &PacketMeta) -> FlowKey {
    FlowKey {
        src: meta.src,
        dst: meta.dst,
        sport: meta.sport,
        dport: meta.dport,
        proto: meta.proto,
        family: family_code(meta),
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

/// Whether the backend of a tracked flow was declared dead by the agent.
#[inline(always)]
pub fn backend_dead(backend: u32) -> bool {
    match BACKENDS.get(backend) {
        Some(b) => b.flags & BACKEND_DEAD != 0,
        None => true,
    }
}

/// Forgets both directions of a tracked flow. A subprogram (its own stack frame); takes only
/// stack and map-value pointers.
#[inline(never)]
pub fn forget_flow(key: &FlowKey, entry: &NatEntry) {
    let _ = CONNTRACK.remove(key);
    let _ = CONNTRACK.remove(peer_key(key, entry));
}

/// Records activity on a tracked flow: last-seen time and TCP state.
#[inline(always)]
pub fn touch_flow(entry: *mut NatEntry, meta: &PacketMeta, now: u64) {
    // SAFETY: `entry` comes from a map lookup; fields are plain integers.
    unsafe {
        (*entry).last_seen_ns = now;
        if meta.proto == IPPROTO_TCP {
            if meta.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                (*entry).state = CT_CLOSING;
            } else if (*entry).state == CT_SYN && meta.tcp_flags & TCP_ACK != 0 {
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

/// [`create_flow`] made the flow and wrote its entry.
pub const FLOW_CREATED: u32 = u32::MAX;

/// Creates a flow for a packet addressed to a service: picks the backend from the service's live
/// Maglev table, reserves a SNAT port (the reply key must be unused), and records both
/// directions. Returns [`FLOW_CREATED`] (the caller then finds the entry under its key) or
/// the XDP action for a packet that cannot start a flow (its reason counted).
///
/// A BPF subprogram of its own (not inlined): its stack frame is not live while the packet is
/// rewritten and forwarded, which keeps the program under the 512-byte stack limit. It takes
/// only stack pointers and scalars (no packet or context pointer), as subprograms must.
#[inline(never)]
pub fn create_flow(meta: &PacketMeta, key: &FlowKey, cfg: &Config, now: u64) -> Verdict {
    use aya_ebpf::bindings::xdp_action::{XDP_DROP, XDP_PASS};

    // Large values live in the per-CPU scratch map and are used through references into maps:
    // this subprogram's frame adds to the caller's within the 512-byte stack limit.
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        count(Counter::PassNotReady);
        return XDP_PASS;
    };
    // SAFETY: this CPU's scratch element, used by this program run only.
    let scratch = unsafe { &mut *scratch };
    scratch.service_key = ServiceKey {
        addr: meta.dst,
        port: meta.dport,
        proto: meta.proto,
        family: key.family,
    };
    // SAFETY: map value, valid for this program run.
    let Some(svc) = (unsafe { SERVICES.get(&scratch.service_key) }) else {
        count(Counter::PassNoService);
        return XDP_PASS;
    };
    let ring_size = cfg.ring_size;
    if svc.backend_count == 0 || ring_size == 0 {
        count(Counter::PassNoBackend);
        return XDP_PASS;
    }
    let hash = hash_flow(key);
    let slot = hash % ring_size;
    let elems = ring_size.div_ceil(2);
    let index = (svc.slot * 2 + (svc.ring_copy & 1)) * elems + slot / 2;
    let backend_id = match RINGS.get(index) {
        Some(elem) if slot & 1 == 0 => elem.backends[0],
        Some(elem) => elem.backends[1],
        None => NO_BACKEND,
    };
    let backend = match BACKENDS.get(backend_id) {
        Some(b) if b.flags & BACKEND_ACTIVE != 0 && b.flags & BACKEND_DEAD == 0 => b,
        _ => {
            count(Counter::PassNoBackend);
            return XDP_PASS;
        }
    };
    if backend.family != key.family {
        count(Counter::PassNoBackend);
        return XDP_PASS;
    }
    let snat = if key.family == FAMILY_V4 {
        &cfg.snat_v4
    } else {
        &cfg.snat_v6
    };
    let state = if meta.proto == IPPROTO_TCP && meta.tcp_flags & TCP_SYN != 0 {
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
    let min = u32::from(cfg.snat_port_min);
    let range = u32::from(cfg.snat_port_max).saturating_sub(min) + 1;
    // A different mix of the hash than the Maglev slot's, stepping by a prime on collision.
    let start = hash.rotate_left(16);
    let mut snat_port: u16 = 0;
    scratch.reply_key = FlowKey {
        src: backend.addr,
        dst: *snat,
        sport: backend.port,
        dport: 0,
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    };
    for attempt in 0..SNAT_PORT_TRIES {
        let port = (min + start.wrapping_add(attempt.wrapping_mul(7919)) % range) as u16;
        let port_be = port.to_be();
        scratch.reply_key.dport = port_be;
        if CONNTRACK
            .insert(&scratch.reply_key, &scratch.reply, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            snat_port = port_be;
            break;
        }
        count(Counter::SnatPortCollision);
    }
    if snat_port == 0 {
        count(Counter::DropSnatExhausted);
        return XDP_DROP;
    }
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
        .insert(key, &scratch.forward, u64::from(BPF_ANY))
        .is_err()
    {
        let _ = CONNTRACK.remove(&scratch.reply_key);
        count(Counter::DropConntrackFull);
        return XDP_DROP;
    }
    count(Counter::FlowNew);
    FLOW_CREATED
}
