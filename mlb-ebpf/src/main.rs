//! mlb's XDP program: a full-NAT TCP/UDP load balancer.
//!
//! Per packet, one small step each: parse once ([`parse::parse_packet`]); find the packet's
//! tracked flow or start one for a service ([`flow::track_flow`]: Maglev picks the backend, a
//! SNAT port is reserved); decide where the rewritten packet goes ([`hop::next_hop`]: the
//! flow's cached next hop, or `bpf_fib_lookup` in [`forward::next_hop`]); and only then rewrite it ([`rewrite::rewrite_packet`]). Every read and
//! lookup comes before the first write (Katran's rule), so a packet that leaves early reaches the
//! kernel as it arrived, its reason counted.
//!
//! With `--forwarding dsr` a packet to a service skips connection tracking: Maglev picks its
//! backend every time and it leaves encapsulated ([`encap::forward_direct`]). The object also
//! holds the backends' half, `mlb_decap` ([`decap`]), loaded on its own by `mlb backend-setup`.
#![no_std]
#![no_main]
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys and values are passed by reference on purpose: by value they would be \
              copied onto the 512-byte BPF stack"
)]

mod acl;
mod csum;
mod decap;
mod encap;
mod exit;
mod flow;
mod forward;
mod hop;
mod icmp;
mod lookup;
mod maps;
mod mem;
mod parse;
mod rewrite;
mod snat;
mod stats;
mod tcpseq;
mod too_big;

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::xdp, programs::XdpContext};
use mlb_common::{maps::FORWARDING_DSR, stats::Counter, verdict::Verdict};

use crate::exit::Exit;

/// Entry point, attached to every interface mlb serves. Early exits become verdicts here, and
/// nowhere else.
#[xdp]
pub fn mlb_xdp(ctx: XdpContext) -> u32 {
    stats::count(Counter::Total);
    let verdict = try_mlb_xdp(&ctx).unwrap_or_else(Exit::into_verdict);
    stats::count(verdict.counter());
    verdict as u32
}

#[inline(always)]
fn try_mlb_xdp(ctx: &XdpContext) -> Result<Verdict, Exit> {
    let meta = parse::parse_packet(ctx)?;
    if meta.is_icmp() {
        return Ok(icmp::translate_error(ctx, &meta));
    }
    stats::count(meta.parsed_counter());
    let cfg = lookup::config()?;
    let scratch = maps::scratch()?;
    if cfg.forwarding == FORWARDING_DSR {
        return encap::forward_direct(ctx, &meta, scratch, cfg);
    }
    tcpseq::read_segment(ctx, &meta, scratch);
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let flow = flow::track_flow(&meta, scratch, cfg, now)?;
    let hop = hop::next_hop(ctx, &meta, &flow, &mut scratch.fib, now)?;
    // The decision is made: from here on the packet is written.
    rewrite::rewrite_packet(ctx, &meta, flow.nat, hop.macs())?;
    stats::count_flow(
        flow.nat.service_slot,
        flow.nat.backend,
        u64::from(meta.ip_len),
        flow.new,
    );
    Ok(hop.verdict())
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
