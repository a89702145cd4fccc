//! mlb's XDP program.
//!
//! Every packet is parsed once into a [`parse::PacketMeta`]; the verdict is counted in the
//! per-CPU statistics. Anything the program does not understand is passed to the kernel
//! untouched, with the reason counted.
#![no_std]
#![no_main]

mod maps;
mod parse;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use mlb_common::stats::Counter;

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
    // No service table yet: every well-formed packet goes to the kernel.
    stats::count(Counter::PassNoService);
    xdp_action::XDP_PASS
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
