//! Sending a rewritten packet on: `bpf_fib_lookup` gives the egress interface and next-hop MACs;
//! same interface → `XDP_TX`, another one → `XDP_REDIRECT` through the devmap. Without a
//! resolved neighbour the rewritten packet goes to the kernel, which forwards it and resolves
//! ARP/ND (this needs forwarding enabled on the interface).
use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
        xdp_action::{XDP_PASS, XDP_TX},
    },
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use mlb_common::{maps::NatEntry, stats::Counter};

use crate::{
    maps::{SCRATCH, TX_PORTS},
    parse::{Family, PacketMeta, ptr_at},
    stats::count,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Forwards the rewritten packet; returns the XDP action. Inlined: `bpf_fib_lookup` needs the
/// program's context.
#[inline(always)]
pub fn forward(ctx: &XdpContext, meta: &PacketMeta, nat: &NatEntry) -> u32 {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return XDP_PASS;
    };
    // SAFETY: this CPU's scratch element, used by this program run only; all-zero is a valid
    // (empty) request.
    let params = unsafe { &mut (*scratch).fib };
    *params = unsafe { core::mem::zeroed() };
    params.family = match meta.family {
        Family::V4 => AF_INET,
        Family::V6 => AF_INET6,
    };
    params.l4_protocol = meta.proto;
    params.sport = nat.new_sport;
    params.dport = nat.new_dport;
    params.__bindgen_anon_1.tot_len = meta.ip_len;
    let ingress = ctx.ingress_ifindex() as u32;
    params.ifindex = ingress;
    match meta.family {
        Family::V4 => {
            params.__bindgen_anon_3.ipv4_src = nat.new_src[0];
            params.__bindgen_anon_4.ipv4_dst = nat.new_dst[0];
        }
        Family::V6 => {
            params.__bindgen_anon_3.ipv6_src = nat.new_src;
            params.__bindgen_anon_4.ipv6_dst = nat.new_dst;
        }
    }
    // SAFETY: params lives on our stack for the duration of the call; its size is passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            params,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        count(Counter::PassNoNeighbour);
        return XDP_PASS;
    }
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        count(Counter::PassFibFailed);
        return XDP_PASS;
    }
    let Some(eth) = ptr_at::<[u8; 12]>(ctx, 0) else {
        return XDP_PASS;
    };
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&params.dmac);
    macs[6..].copy_from_slice(&params.smac);
    // SAFETY: `ptr_at` checked the 12 bytes are inside the packet.
    unsafe { core::ptr::write_unaligned(eth, macs) };
    if params.ifindex == ingress {
        return XDP_TX;
    }
    match TX_PORTS.redirect(params.ifindex, 0) {
        Ok(action) => action,
        Err(_) => {
            count(Counter::PassRedirectFailed);
            XDP_PASS
        }
    }
}
