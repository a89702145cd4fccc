//! SNAT source ports for new flows.
//!
//! A port is taken by inserting the reply direction's entry under the key the backend's answers
//! will carry, with `BPF_NOEXIST`: the insert is the reservation, so two CPUs can never hand out
//! the same (backend, SNAT address, port).
use aya_ebpf::bindings::BPF_NOEXIST;
use mlb_common::{
    consts::SNAT_PORT_TRIES,
    maps::{Config, FlowKey, NatEntry},
    stats::Counter,
};

use crate::{exit::Exit, maps::CONNTRACK, stats::count};

/// Step between tries: a prime, so collisions do not retry neighbouring ports of one flow.
const PORT_STEP: u32 = 7919;

/// Reserves a SNAT port: tries up to [`SNAT_PORT_TRIES`] ports of the configured range, starting
/// at one derived from the flow hash, and records `reply` under `reply_key` with the first free
/// one (written into `reply_key.dport`). Returns the port, network order.
#[inline(always)]
pub fn reserve_snat_port(
    cfg: &Config,
    hash: u32,
    reply_key: &mut FlowKey,
    reply: &NatEntry,
) -> Result<u16, Exit> {
    let min = u32::from(cfg.snat_port_min);
    let range = u32::from(cfg.snat_port_max).saturating_sub(min) + 1;
    // A different mix of the hash than the Maglev slot's.
    let start = hash.rotate_left(16);
    for attempt in 0..SNAT_PORT_TRIES {
        let port = (min + start.wrapping_add(attempt.wrapping_mul(PORT_STEP)) % range) as u16;
        reply_key.dport = port.to_be();
        if CONNTRACK
            .insert(&*reply_key, reply, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            return Ok(reply_key.dport);
        }
        count(Counter::SnatPortCollision);
    }
    Err(Exit::Drop(Counter::DropSnatExhausted))
}
