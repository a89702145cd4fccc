//! Direct server return (`--forwarding dsr`): every packet to a service goes to the backend
//! that the service's Maglev table gives its 5-tuple (or its client address), inside an outer
//! IP header from the load balancer to that backend (IPv4 in IPv4, IPv6 in IPv6). The backend
//! decapsulates it and answers the client itself, so replies never come back here.
//!
//! Nothing is tracked: the choice is recomputed for every packet, and every instance of a
//! fleet (same tables, same hash secret) computes the same one, so a flow the router moves to
//! another instance reaches the same backend, and an instance that dies takes no state with
//! it. The flip side: a change of the table moves the flows of the entries that changed (Maglev
//! keeps those few), where full NAT keeps a tracked flow on its backend.
use aya_ebpf::programs::XdpContext;
use mlb_common::{
    ct::is_opening_syn,
    encap::{outer_len, write_outer_ipv4, write_outer_ipv6},
    hash::{flow_hash, source_hash},
    maps::{Config, SVC_F_SOURCE_HASH},
    net::IPPROTO_TCP,
    stats::Counter,
    verdict::Verdict,
};

use crate::{
    acl::check_source,
    exit::Exit,
    flow::flow_key,
    forward,
    lookup::{lookup_service, pick_backend},
    maps::Scratch,
    parse::{Family, PacketMeta},
    rewrite,
    stats::{count, count_flow},
};

/// Encapsulates a packet addressed to a service to its backend and says where it goes.
/// Inlined: the rewrite needs the program's context.
#[inline(always)]
pub fn forward_direct(
    ctx: &XdpContext,
    meta: &PacketMeta,
    scratch: &mut Scratch,
    cfg: &Config,
) -> Result<Verdict, Exit> {
    choose_backend(meta, scratch, cfg)?;
    // Cannot overflow: `choose_backend` checked the outer header's length field.
    let encapsulated = meta.ip_len + outer_len(meta.family.code()) as u16;
    let hop = forward::next_hop(ctx, meta, &scratch.forward, encapsulated, &mut scratch.fib)?;
    // The decision is made: from here on the packet is written.
    rewrite::encapsulate(ctx, meta, &scratch.outer, hop.macs())?;
    count(Counter::DsrEncapsulated);
    let opens = meta.proto == IPPROTO_TCP && is_opening_syn(meta.tcp_flags);
    let fwd = &scratch.forward;
    count_flow(fwd.service_slot, fwd.backend, u64::from(meta.ip_len), opens);
    Ok(hop.verdict())
}

/// Picks the packet's backend and prepares its outer header in `scratch.outer`, and in
/// `scratch.forward` the outer addresses (for the route lookup), the service slot and the
/// backend id. A subprogram of its own (see `flow::prepare_flow`): only stack and map-value
/// pointers.
#[inline(never)]
fn choose_backend(meta: &PacketMeta, scratch: &mut Scratch, cfg: &Config) -> Result<(), Exit> {
    let svc = lookup_service(meta, &mut scratch.service_key)?;
    scratch.key = flow_key(meta);
    check_source(svc, &scratch.key.src, &mut scratch.acl_key)?;
    let hash = if svc.flags & SVC_F_SOURCE_HASH != 0 {
        source_hash(&scratch.key, &cfg.hash_secret)
    } else {
        flow_hash(&scratch.key, &cfg.hash_secret)
    };
    let (backend_id, backend) = pick_backend(svc, cfg.ring_size, hash, scratch.key.family)?;
    let fwd = &mut scratch.forward;
    fwd.new_dst = backend.addr;
    fwd.new_sport = meta.sport;
    fwd.new_dport = meta.dport;
    fwd.service_slot = svc.slot;
    fwd.backend = backend_id;
    // The agent gives a family's services backends only when that family has an outer source.
    let written = match meta.family {
        Family::V4 => {
            fwd.new_src = [cfg.encap_src_v4, 0, 0, 0];
            write_outer_ipv4(
                &mut scratch.outer,
                cfg.encap_src_v4,
                backend.addr[0],
                meta.ip_len,
            )
        }
        Family::V6 => {
            fwd.new_src = cfg.encap_src_v6;
            let (src, outer) = (&cfg.encap_src_v6, &mut scratch.outer);
            write_outer_ipv6(outer, src, &backend.addr, meta.ip_len, hash)
        }
    };
    written.ok_or(Exit::Drop(Counter::DropEncapTooBig))
}
