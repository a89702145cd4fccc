//! mlb's XDP program: a full-NAT TCP/UDP load balancer.
//!
//! Per packet: parse once ([`parse::parse_packet`]); a packet of a tracked flow is rewritten
//! with its connection-tracking entry; a packet to a service starts a flow (Maglev picks the
//! backend, a SNAT port is reserved); anything else is passed to the kernel untouched, with the
//! reason counted. Rewritten packets are forwarded with `bpf_fib_lookup`.
#![no_std]
#![no_main]
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys and values are passed by reference on purpose: by value they would be \
              copied onto the 512-byte BPF stack"
)]

mod csum;
mod flow;
mod forward;
mod maps;
mod nat;
mod parse;
mod stats;

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_ktime_get_ns, macros::xdp, programs::XdpContext,
};
use mlb_common::{maps::DIR_TO_BACKEND, stats::Counter};

use crate::maps::{CONFIG, CONNTRACK, SCRATCH};

/// Entry point, attached to every interface mlb serves.
#[xdp]
pub fn mlb_xdp(ctx: XdpContext) -> u32 {
    stats::count(Counter::Total);
    let action = process_packet(&ctx);
    stats::count(verdict_counter(action));
    action
}

#[inline(always)]
fn process_packet(ctx: &XdpContext) -> u32 {
    let meta = match parse::parse_packet(ctx) {
        Ok(meta) => meta,
        Err(reason) => {
            stats::count(reason);
            return xdp_action::XDP_PASS;
        }
    };
    stats::count(meta.parsed_counter());
    let cfg = match CONFIG.get(0) {
        Some(cfg) if cfg.ready != 0 => cfg,
        _ => {
            stats::count(Counter::PassNotReady);
            return xdp_action::XDP_PASS;
        }
    };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // The key lives in the per-CPU scratch map, not on the 512-byte stack.
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: this CPU's scratch element, used by this program run only.
    let key = unsafe { &mut (*scratch).key };
    *key = flow::flow_key(&meta);

    // The tracked entry is used in place (a map-value pointer), never copied to the stack.
    let mut entry = CONNTRACK.get_ptr_mut(&*key);
    if let Some(e) = entry {
        // SAFETY: `e` comes from the lookup and stays valid for this program run (RCU).
        let tracked = unsafe { &*e };
        if tracked.direction == DIR_TO_BACKEND && flow::backend_dead(tracked.backend) {
            // Its backend is gone: re-balance. The new backend has no such connection and
            // answers a TCP segment with a RST, so the client learns at once.
            stats::count(Counter::FlowBackendDead);
            flow::forget_flow(key, tracked);
            entry = None;
        } else {
            flow::touch_flow(e, &meta, now);
            stats::count(if tracked.direction == DIR_TO_BACKEND {
                Counter::FlowToBackend
            } else {
                Counter::FlowToClient
            });
        }
    }
    let new_flow = entry.is_none();
    if new_flow {
        let verdict = flow::create_flow(&meta, key, cfg, now);
        if verdict != flow::FLOW_CREATED {
            return verdict;
        }
        entry = CONNTRACK.get_ptr_mut(&*key);
    }
    let Some(nat) = entry else {
        stats::count(Counter::DropConntrackFull);
        return xdp_action::XDP_DROP;
    };
    // SAFETY: map-value pointer from the lookup above.
    let nat = unsafe { &*nat };
    if nat::rewrite(ctx, &meta, nat) == 0 {
        return xdp_action::XDP_PASS;
    }
    stats::count_flow(
        nat.service_slot,
        nat.backend,
        u64::from(meta.ip_len),
        new_flow,
    );
    forward::forward(ctx, &meta, nat)
}

#[inline(always)]
const fn verdict_counter(action: u32) -> Counter {
    match action {
        xdp_action::XDP_PASS => Counter::VerdictPass,
        xdp_action::XDP_TX => Counter::VerdictTx,
        xdp_action::XDP_REDIRECT => Counter::VerdictRedirect,
        xdp_action::XDP_DROP => Counter::VerdictDrop,
        _ => Counter::VerdictAborted,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects a reachable panic; this loop only satisfies the compiler.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
