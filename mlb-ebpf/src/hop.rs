//! The next hop of a tracked flow direction, cached in its conntrack entry (`NatEntry::hop_*`):
//! its packets skip `bpf_fib_lookup` (and the 64-byte request built for it) while the cached
//! answer is fresh ([`HOP_TTL_TICKS`], about 1 s) and the packet is no longer than one the
//! lookup let through. Any other packet takes the full lookup ([`forward::next_hop`]), whose
//! answer is recorded for the next ones. A new flow's first packet is looked up (its entry was
//! just inserted from a scratch copy).
//!
//! A TTL rather than invalidation: a route, neighbour or MTU change reaches an established flow
//! within a second, and nothing the agent could miss leaves a flow on a stale hop. Two CPUs may
//! record one direction at once (its packets on two receive queues): the fields are written one
//! by one, so a reader may mix two answers, both from lookups of the same flow a moment apart.
use aya_ebpf::{bindings::bpf_fib_lookup as FibParams, programs::XdpContext};
use mlb_common::{
    consts::{HOP_TICK_SHIFT, HOP_TTL_TICKS},
    maps::NatEntry,
    stats::Counter,
};

use crate::{
    exit::Exit,
    flow::Flow,
    forward::{self, Macs, NextHop},
    parse::PacketMeta,
    stats::count,
};

/// `now` in the ticks `hop_at` is kept in (wrapping).
#[inline(always)]
fn ticks(now: u64) -> u32 {
    (now >> HOP_TICK_SHIFT) as u32
}

/// Where the packet of `flow` goes: its flow's cached hop, or the answer of a full lookup,
/// recorded for the flow's next packets. `params` is scratch space.
#[inline(always)]
pub fn next_hop(
    ctx: &XdpContext,
    meta: &PacketMeta,
    flow: &Flow,
    params: &mut FibParams,
    now: u64,
) -> Result<NextHop, Exit> {
    // SAFETY: a non-null `entry` is the flow's conntrack value, valid for this program run
    // (RCU).
    if let Some(entry) = unsafe { flow.entry.as_ref() }
        && let Some(hop) = cached(ctx, meta, entry, now)
    {
        return Ok(hop);
    }
    count(Counter::HopLookedUp);
    let hop = forward::next_hop(ctx, meta, flow.nat, meta.ip_len, params)?;
    if let Some(macs) = hop.macs()
        && !flow.entry.is_null()
    {
        // On success the kernel wrote the egress interface into the request.
        record(flow.entry, macs, params.ifindex, meta.ip_len, now);
    }
    Ok(hop)
}

/// `entry`'s cached hop, if it is fresh and covers this packet. A packet whose TTL would
/// expire is left to the full path, which passes it on to the kernel.
#[inline(always)]
fn cached(ctx: &XdpContext, meta: &PacketMeta, entry: &NatEntry, now: u64) -> Option<NextHop> {
    let ifindex = entry.hop_ifindex;
    if ifindex == 0
        || meta.ttl <= 1
        || meta.ip_len > entry.hop_len
        || ticks(now).wrapping_sub(entry.hop_at) >= HOP_TTL_TICKS
    {
        return None;
    }
    // SAFETY: twelve bytes either way; every bit pattern is valid.
    let macs = Macs(unsafe { core::mem::transmute::<[u32; 3], [u8; 12]>(entry.hop_macs) });
    // `None` when the interface left the devmap: the full path counts it and passes the packet.
    forward::out_of(ctx, ifindex, macs)
}

/// Records a full lookup's answer (`macs` out of `ifindex`, carrying `ip_len` bytes) in
/// `entry`. A fresh answer for the same interface only grows the length it is known to carry
/// (a short segment then a full one cost two lookups, not one per full segment); otherwise it
/// starts a new period.
///
/// A subprogram of its own (not inlined): its locals stay off the main frame, which is at the
/// stack limit. Takes only map-value and stack pointers.
#[inline(never)]
fn record(entry: *mut NatEntry, macs: &Macs, ifindex: u32, ip_len: u16, now: u64) {
    let at = ticks(now);
    // SAFETY: `entry` is a conntrack value, valid for this program run; its fields are plain
    // integers (see the module comment on concurrent writers).
    let e = unsafe { &mut *entry };
    let fresh = e.hop_ifindex == ifindex && at.wrapping_sub(e.hop_at) < HOP_TTL_TICKS;
    if fresh {
        e.hop_len = e.hop_len.max(ip_len);
    } else {
        e.hop_len = ip_len;
        e.hop_at = at;
    }
    // SAFETY: twelve bytes either way.
    e.hop_macs = unsafe { core::mem::transmute::<[u8; 12], [u32; 3]>(macs.0) };
    e.hop_ifindex = ifindex;
}
