//! Connection tracking: the entry of a packet's flow direction, found or created.
//!
//! A flow has two entries, one per direction, each saying how to rewrite its packets. They live
//! and die together: every packet checks that its entry's partner is still there and points
//! back (an LRU eviction of one half makes the other unusable), and both carry the flow's TCP
//! state and last-seen time. A flow idle past its state's timeout is dead here at once, not only
//! when the agent's sweeper comes by. Only a SYN opens a TCP flow; a SYN on a closed flow
//! (TIME_WAIT or CLOSED) replaces it. A new flow gets its backend from the service's Maglev
//! table (keyed flow hash) and a SNAT address and port; only map entries change here, the packet
//! is rewritten last (`rewrite.rs`).
use aya_ebpf::bindings::BPF_ANY;
use mlb_common::{
    consts::TOUCH_INTERVAL_NS,
    ct::{
        CT_CLOSE_WAIT, CT_ESTABLISHED, CT_FIN_WAIT, CT_SYN_SENT, CT_TIME_WAIT, TW_RECORDED,
        TW_TIMESTAMP, backend_in_time_wait, is_closed, is_opening_syn, next_tcp_state,
    },
    hash::{flow_hash, source_hash},
    maps::{Config, DIR_TO_BACKEND, DIR_TO_CLIENT, FlowKey, NatEntry, SVC_F_SOURCE_HASH},
    net::IPPROTO_TCP,
    stats::Counter,
};

use crate::{
    acl::check_source,
    exit::Exit,
    lookup::{backend_dead, lookup_service, pick_backend},
    maps::{CONNTRACK, Scratch},
    mem::copy_addr,
    parse::PacketMeta,
    snat::reserve_snat_port,
    stats::{count, count_snat_exhausted},
};

/// The tracked flow direction a packet belongs to.
pub struct Flow {
    /// How to rewrite the packet (a map value, used in place).
    pub nat: &'static NatEntry,
    /// This packet created the flow.
    pub new: bool,
    /// The flow direction's conntrack value (its cached next hop is written there); null for
    /// a new flow, whose `nat` is the scratch copy it was inserted from. (Not an `Option`: the
    /// program's stack is at its limit.)
    pub entry: *mut NatEntry,
}

/// The wire 5-tuple of a packet: the key of its flow direction.
#[inline(always)]
pub fn flow_key(meta: &PacketMeta) -> FlowKey {
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

/// Writes into `out` the key of the other direction of the flow `entry` (under `key`)
/// rewrites into. In place: a returned key would be one more 40-byte copy on the stack.
#[inline(always)]
pub fn set_peer_key(out: &mut FlowKey, key: &FlowKey, entry: &NatEntry) {
    copy_addr(&mut out.src, &entry.new_dst);
    copy_addr(&mut out.dst, &entry.new_src);
    out.sport = entry.new_dport;
    out.dport = entry.new_sport;
    out.proto = key.proto;
    out.family = key.family;
    out._pad = [0; 2];
}

/// Whether `peer` (the entry found under the peer key of `key`'s entry) is the other half of
/// `key`'s flow: it rewrites into `key`. Otherwise `key`'s own partner was evicted and its SNAT
/// port went to another flow.
#[inline(always)]
pub fn is_partner(key: &FlowKey, peer: &NatEntry) -> bool {
    peer.new_dst == key.src
        && peer.new_src == key.dst
        && peer.new_dport == key.sport
        && peer.new_sport == key.dport
}

/// The flow of the packet: its tracked entry, or a new flow when it has none, is addressed to a
/// service and may open one. Leaves the packet's flow key in `scratch.key` (keys live in the
/// per-CPU scratch map, not on the 512-byte stack).
#[inline(always)]
pub fn track_flow(
    meta: &PacketMeta,
    scratch: &mut Scratch,
    cfg: &Config,
    now: u64,
) -> Result<Flow, Exit> {
    scratch.key = flow_key(meta);
    if let Some(entry) = lookup_flow(meta, scratch, cfg, now) {
        // SAFETY: a conntrack value, valid for this program run (RCU).
        let nat = unsafe { &*entry };
        return Ok(Flow {
            nat,
            new: false,
            entry,
        });
    }
    prepare_flow(meta, scratch, cfg, now)?;
    open_flow(scratch)?;
    // The entry just inserted is this CPU's scratch copy: rewrite from it rather than look the
    // insert up again (one map operation less per new flow).
    let forward: *const NatEntry = &raw const scratch.forward;
    // SAFETY: a field of this CPU's scratch map value, valid for this program run; nothing
    // writes `forward` again before the packet is rewritten.
    let nat = unsafe { &*forward };
    Ok(Flow {
        nat,
        new: true,
        entry: core::ptr::null_mut(),
    })
}

/// The live tracked entry of `scratch.key`, its state and last-seen time updated, or `None` when
/// the packet has no live flow. Forgets a flow whose partner is gone, that is idle past its
/// timeout, whose backend the agent declared dead (re-balanced: a new backend, or the kernel,
/// answers a stray TCP segment with a RST), or that is closed and sees a new SYN.
///
/// A packet of an established flow that changes nothing (no state step, last-seen touched
/// less than [`TOUCH_INTERVAL_NS`] ago) is forwarded on its own half alone: the partner check
/// and both halves' updates wait for the next touch. An orphaned established half (its partner
/// evicted from the full LRU map) is therefore found within a second rather than at once; its
/// SNAT port cannot serve a new flow meanwhile anyway, since the backend still holds the old
/// connection's 4-tuple.
#[inline(always)]
fn lookup_flow(
    meta: &PacketMeta,
    scratch: &mut Scratch,
    cfg: &Config,
    now: u64,
) -> Option<*mut NatEntry> {
    let entry = CONNTRACK.get_ptr_mut(&scratch.key)?;
    // SAFETY: `entry` comes from the lookup and stays valid for this program run (RCU).
    let tracked = unsafe { &*entry };
    let end = end_of_flow(meta, tracked, cfg, now);
    if end.is_none() && unchanged(meta, tracked, now) {
        count_direction(tracked);
        return Some(entry);
    }
    set_peer_key(&mut scratch.peer_key, &scratch.key, tracked);
    let peer = match CONNTRACK.get_ptr_mut(&scratch.peer_key) {
        // SAFETY: as above.
        Some(p) if is_partner(&scratch.key, unsafe { &*p }) => p,
        _ => {
            count(Counter::FlowOrphan);
            let _ = CONNTRACK.remove(&scratch.key);
            return None;
        }
    };
    if let Some(reason) = end {
        count(reason);
        // SAFETY: as above.
        forget_dead_flow(
            &scratch.key,
            tracked,
            &scratch.peer_key,
            unsafe { &*peer },
            now,
        );
        return None;
    }
    update_flow(entry, peer, meta, scratch, now);
    count_direction(tracked);
    Some(entry)
}

/// Counts a forwarded packet of a tracked flow by its direction.
#[inline(always)]
fn count_direction(tracked: &NatEntry) {
    count(if tracked.direction == DIR_TO_BACKEND {
        Counter::FlowToBackend
    } else {
        Counter::FlowToClient
    });
}

/// Whether this packet leaves its established flow as it is: no TCP state step, and the
/// last-seen time needs no refresh yet (see [`update_flow`]).
#[inline(always)]
fn unchanged(meta: &PacketMeta, tracked: &NatEntry, now: u64) -> bool {
    tracked.state == CT_ESTABLISHED
        && (meta.proto != IPPROTO_TCP
            || next_tcp_state(CT_ESTABLISHED, tracked.direction, meta.tcp_flags) == CT_ESTABLISHED)
        && now.saturating_sub(tracked.last_seen_ns) < TOUCH_INTERVAL_NS
}

/// Why a tracked flow ends at this packet (the counter), if it does.
#[inline(always)]
fn end_of_flow(meta: &PacketMeta, tracked: &NatEntry, cfg: &Config, now: u64) -> Option<Counter> {
    let to_backend = tracked.direction == DIR_TO_BACKEND;
    if cfg
        .timeouts
        .expired(meta.proto, tracked.state, tracked.last_seen_ns, now)
    {
        Some(Counter::FlowExpired)
    } else if to_backend && backend_dead(tracked.backend) {
        Some(Counter::FlowBackendDead)
    } else if to_backend
        && meta.proto == IPPROTO_TCP
        && is_opening_syn(meta.tcp_flags)
        && is_closed(tracked.state)
    {
        Some(Counter::FlowReopened)
    } else {
        None
    }
}

/// Forgets both halves of a flow. A subprogram (its own stack frame); takes only stack and
/// map-value pointers.
#[inline(never)]
pub fn forget_flow(key: &FlowKey, peer: &FlowKey) {
    let _ = CONNTRACK.remove(key);
    let _ = CONNTRACK.remove(peer);
}

/// Forgets a dead flow (`key`'s entry `entry`, its partner `peer` under `peer_key`), but keeps
/// the reply half while the backend may hold the flow in TIME_WAIT: the SNAT search reads it
/// before giving the port to another client. (A half without its partner forwards nothing.)
#[inline(never)]
fn forget_dead_flow(
    key: &FlowKey,
    entry: &NatEntry,
    peer_key: &FlowKey,
    peer: &NatEntry,
    now: u64,
) {
    if entry.direction == DIR_TO_BACKEND || !backend_in_time_wait(entry, now) {
        let _ = CONNTRACK.remove(key);
    }
    if peer.direction == DIR_TO_BACKEND || !backend_in_time_wait(peer, now) {
        let _ = CONNTRACK.remove(peer_key);
    }
}

/// Records in the reply half `reply` what the backend's TIME_WAIT expects after the client's
/// FIN (`seg`: that FIN, read by `tcpseq.rs`), for the SNAT search; `TW_RECORDED` only when the
/// backend is known to be left in TIME_WAIT.
#[inline(always)]
fn record_client_fin(reply: &mut NatEntry, seg: &Scratch, time_wait: bool) {
    reply.tw_rcv_nxt = seg.seg_seq_end;
    reply.tw_ts_recent = seg.seg_ts;
    reply.tw_flags =
        if time_wait { TW_RECORDED } else { 0 } | if seg.seg_ts_ok != 0 { TW_TIMESTAMP } else { 0 };
}

/// The backend's FIN (`seg`) after the client's, recorded in `reply`: if it does not
/// acknowledge the client's FIN, the two crossed (typical of a client that closes as soon as it
/// has read a response while the server closes too). The backend then goes through CLOSING into
/// TIME_WAIT as if it had closed first, and refuses an older SYN just the same.
#[inline(always)]
fn note_backend_fin(reply: &mut NatEntry, seg: &Scratch) {
    let acked = (seg.seg_ack.wrapping_sub(reply.tw_rcv_nxt) as i32) >= 0;
    if !acked {
        reply.tw_flags |= TW_RECORDED;
    }
}

/// Moves the flow's TCP state on (in both halves, counted) and refreshes both halves' last-seen
/// time, at most once per [`TOUCH_INTERVAL_NS`] unless the state changed. When the client's
/// FIN answers the backend's, the backend enters TIME_WAIT: recorded in the reply half.
#[inline(always)]
fn update_flow(
    entry: *mut NatEntry,
    peer: *mut NatEntry,
    meta: &PacketMeta,
    seg: &Scratch,
    now: u64,
) {
    // SAFETY: both pointers come from map lookups; fields are plain integers. Another CPU may
    // write the same fields at once: the worst outcome is one stale state or timestamp.
    unsafe {
        let state = (*entry).state;
        let next = if meta.proto == IPPROTO_TCP {
            next_tcp_state(state, (*entry).direction, meta.tcp_flags)
        } else {
            state
        };
        if next != state {
            (*entry).state = next;
            (*peer).state = next;
            let to_backend = (*entry).direction == DIR_TO_BACKEND;
            // The reply half (`peer` for the client's packets, `entry` for the backend's)
            // carries what the backend's TIME_WAIT will expect.
            if to_backend && next == CT_TIME_WAIT && state == CT_CLOSE_WAIT {
                record_client_fin(&mut *peer, seg, true);
            } else if to_backend && next == CT_FIN_WAIT {
                record_client_fin(&mut *peer, seg, false);
            } else if !to_backend && state == CT_FIN_WAIT && next == CT_TIME_WAIT {
                note_backend_fin(&mut *entry, seg);
            }
            if let Some(c) = Counter::entering(next) {
                count(c);
            }
        } else if now.saturating_sub((*entry).last_seen_ns) < TOUCH_INTERVAL_NS {
            return;
        }
        (*entry).last_seen_ns = now;
        (*peer).last_seen_ns = now;
    }
}

/// Prepares the flow of a packet addressed to a service: picks the backend from the service's
/// live Maglev table (keyed flow hash, or client-address hash for `BALANCE=source`) and writes the reply entry and what is known of its key
/// into `scratch`. A client the service's allow-list refuses is dropped; a TCP segment other
/// than a bare SYN opens nothing.
///
/// BPF subprograms of their own (not inlined), this one and [`open_flow`]: their stack frames
/// are not live while the packet is rewritten and forwarded, nor at the same time as each other,
/// which keeps the program under the 512-byte stack limit. They take only stack and map-value
/// pointers (no packet or context pointer), and keep their large values in `scratch`, written
/// field by field (values built whole would be copied through the stack).
#[inline(never)]
fn prepare_flow(
    meta: &PacketMeta,
    scratch: &mut Scratch,
    cfg: &Config,
    now: u64,
) -> Result<(), Exit> {
    let svc = lookup_service(meta, &mut scratch.service_key)?;
    // Before the SYN check: a denied client's stray segments are dropped too, not answered.
    check_source(svc, &scratch.key.src, &mut scratch.acl_key)?;
    let tcp = meta.proto == IPPROTO_TCP;
    if tcp && !is_opening_syn(meta.tcp_flags) {
        return Err(Exit::Pass(Counter::PassTcpNotSyn));
    }
    let hash = if svc.flags & SVC_F_SOURCE_HASH != 0 {
        source_hash(&scratch.key, &cfg.hash_secret)
    } else {
        flow_hash(&scratch.key, &cfg.hash_secret)
    };
    let family = scratch.key.family;
    let (backend_id, backend) = pick_backend(svc, cfg.ring_size, hash, family)?;
    let reply = &mut scratch.reply;
    reply.new_src = meta.dst;
    reply.new_dst = meta.src;
    reply.new_sport = meta.dport;
    reply.new_dport = meta.sport;
    reply.service_slot = svc.slot;
    reply.backend = backend_id;
    reply.direction = DIR_TO_CLIENT;
    reply.state = if tcp { CT_SYN_SENT } else { CT_ESTABLISHED };
    reply.tw_flags = 0;
    reply._pad = 0;
    reply.last_seen_ns = now;
    reply.tw_rcv_nxt = 0;
    reply.tw_ts_recent = 0;
    clear_hop(reply);
    let reply_key = &mut scratch.reply_key;
    reply_key.src = backend.addr;
    reply_key.sport = backend.port;
    reply_key.proto = meta.proto;
    reply_key.family = family;
    reply_key._pad = [0; 2];
    Ok(())
}

/// No next hop cached yet (`hop.rs`), in an entry being built field by field.
#[inline(always)]
fn clear_hop(entry: &mut NatEntry) {
    entry.hop_ifindex = 0;
    entry.hop_macs = [0; 3];
    entry.hop_len = 0;
    entry._pad2 = 0;
    entry.hop_at = 0;
}

/// Opens the flow [`prepare_flow`] prepared: reserves a SNAT address and port (which records
/// the reply direction), then records the forward direction under `scratch.key`.
#[inline(never)]
fn open_flow(scratch: &mut Scratch) -> Result<(), Exit> {
    let (service_slot, backend_id) = (scratch.reply.service_slot, scratch.reply.backend);
    let snat_port = reserve_snat_port(scratch, backend_id)
        .inspect_err(|_| count_snat_exhausted(service_slot, backend_id))?;
    let (reply, reply_key, forward) = (&scratch.reply, &scratch.reply_key, &mut scratch.forward);
    forward.new_src = reply_key.dst;
    forward.new_dst = reply_key.src;
    forward.new_sport = snat_port;
    forward.new_dport = reply_key.sport;
    forward.service_slot = service_slot;
    forward.backend = backend_id;
    forward.direction = DIR_TO_BACKEND;
    forward.state = reply.state;
    forward.tw_flags = 0;
    forward._pad = 0;
    forward.last_seen_ns = reply.last_seen_ns;
    forward.tw_rcv_nxt = 0;
    forward.tw_ts_recent = 0;
    clear_hop(forward);
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
