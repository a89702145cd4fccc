//! The forwarding decision for a packet about to be rewritten: `bpf_fib_lookup` on the rewritten
//! addresses gives the egress interface and next-hop MACs; the same interface means `XDP_TX`,
//! another one `XDP_REDIRECT` through the devmap. Only reads and lookups happen here: the packet
//! is untouched until the decision is made, so a failed lookup passes the packet as it arrived;
//! a packet too big for the next hop is answered (`too_big.rs`).
use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup as FibParams,
    },
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use mlb_common::{maps::NatEntry, net::eth, stats::Counter, verdict::Verdict};

use crate::{
    exit::Exit,
    maps::TX_PORTS,
    mem::{self, copy_addr},
    parse::{Family, PacketMeta},
    stats::count,
    too_big,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Next-hop Ethernet addresses, in header order.
#[derive(Clone, Copy)]
pub struct Macs(pub [u8; 2 * eth::ALEN]);

impl Macs {
    /// The MACs of a successful `bpf_fib_lookup` answer.
    #[inline(always)]
    pub fn of(params: &FibParams) -> Macs {
        let mut macs = Macs([0; 2 * eth::ALEN]);
        macs.0[eth::DST..eth::DST + eth::ALEN].copy_from_slice(&params.dmac);
        macs.0[eth::SRC..eth::SRC + eth::ALEN].copy_from_slice(&params.smac);
        macs
    }
}

/// Where a rewritten packet goes.
#[derive(Clone, Copy)]
pub enum NextHop {
    /// Back out of the ingress interface.
    Tx(Macs),
    /// Out of another interface, already chosen with `bpf_redirect_map`.
    Redirect(Macs),
    /// To the kernel, which forwards the rewritten packet itself: it has the route but no
    /// neighbour entry yet (it resolves ARP/ND), or the egress interface is not in the devmap.
    /// The MACs stay as they arrived. Needs forwarding enabled on the interface.
    Kernel,
}

impl NextHop {
    #[inline(always)]
    pub fn verdict(self) -> Verdict {
        match self {
            NextHop::Tx(_) => Verdict::Tx,
            NextHop::Redirect(_) => Verdict::Redirect,
            NextHop::Kernel => Verdict::Pass,
        }
    }

    /// The MACs to write, if the program sends the packet itself.
    #[inline(always)]
    pub fn macs(&self) -> Option<&Macs> {
        match self {
            NextHop::Tx(m) | NextHop::Redirect(m) => Some(m),
            NextHop::Kernel => None,
        }
    }
}

/// Decides where the packet goes once rewritten by `nat` (then `tot_len` bytes from the IP
/// header on). No route: the packet is passed as it arrived. Inlined: `bpf_fib_lookup` needs
/// the program's context. `params` is scratch space.
///
/// Like a router, the program forwards no packet whose TTL (hop limit) would reach zero: it goes
/// to the kernel as it arrived, which answers as its own rules say (time exceeded, or local
/// delivery when the destination is one of its addresses). The flow was tracked all the same,
/// as Linux conntrack sees a packet before its router drops it.
#[inline(always)]
pub fn next_hop(
    ctx: &XdpContext,
    meta: &PacketMeta,
    nat: &NatEntry,
    tot_len: u16,
    params: &mut FibParams,
) -> Result<NextHop, Exit> {
    if meta.ttl <= 1 {
        return Err(Exit::Pass(Counter::PassTtlExceeded));
    }
    // SAFETY: all-zero is a valid (empty) request; its fields are 32-bit aligned words.
    unsafe { mem::zero(params) };
    params.family = match meta.family {
        Family::V4 => AF_INET,
        Family::V6 => AF_INET6,
    };
    params.l4_protocol = meta.proto;
    params.sport = nat.new_sport;
    params.dport = nat.new_dport;
    params.__bindgen_anon_1.tot_len = tot_len;
    params.ifindex = ctx.ingress_ifindex() as u32;
    match meta.family {
        Family::V4 => {
            params.__bindgen_anon_3.ipv4_src = nat.new_src[0];
            params.__bindgen_anon_4.ipv4_dst = nat.new_dst[0];
        }
        Family::V6 => {
            // SAFETY: writing the union's IPv6 member (the request's family says so).
            unsafe {
                copy_addr(&mut params.__bindgen_anon_3.ipv6_src, &nat.new_src);
                copy_addr(&mut params.__bindgen_anon_4.ipv6_dst, &nat.new_dst);
            }
        }
    }
    // SAFETY: `params` is valid for the call; its size is passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            params,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc == i64::from(BPF_FIB_LKUP_RET_FRAG_NEEDED) {
        // SAFETY: the kernel set the next hop's MTU with this answer.
        let mtu = unsafe { params.__bindgen_anon_1.mtu_result };
        // Encapsulated (direct server return), the packet grew by its outer header: the
        // sender must leave room for it.
        let grown = tot_len.saturating_sub(meta.ip_len);
        return Err(
            match too_big::answer(ctx, meta, mtu.saturating_sub(grown)) {
                // Unanswerable (no DF, ICMP): the kernel would not know what to do with a packet
                // meant to be encapsulated.
                Exit::Pass(_) if grown > 0 => Exit::Drop(Counter::DropEncapTooBig),
                exit => exit,
            },
        );
    }
    if rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        count(Counter::PassNoNeighbour);
        return Ok(NextHop::Kernel);
    }
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return Err(Exit::Pass(Counter::PassFibFailed));
    }
    Ok(
        out_of(ctx, params.ifindex, Macs::of(params)).unwrap_or_else(|| {
            count(Counter::PassRedirectFailed);
            NextHop::Kernel
        }),
    )
}

/// Out of `ifindex` with `macs`: back out of the interface the packet came in on, or
/// redirected through the devmap; `None` when the devmap has no such interface. Shared by the
/// full lookup and a flow's cached hop (`hop.rs`).
#[inline(always)]
pub fn out_of(ctx: &XdpContext, ifindex: u32, macs: Macs) -> Option<NextHop> {
    if ifindex == ctx.ingress_ifindex() as u32 {
        Some(NextHop::Tx(macs))
    } else if TX_PORTS.redirect(ifindex, 0).is_ok() {
        Some(NextHop::Redirect(macs))
    } else {
        None
    }
}
