//! SNAT source addresses and ports for new flows.
//!
//! A port is taken by inserting the reply direction's entry under the key the backend's answers
//! will carry, with `BPF_NOEXIST`: the insert is the reservation, so two CPUs can never hand out
//! the same (backend, SNAT address, port). The search space of a backend is every SNAT address of
//! the family times the port range, walked in order from the backend's cursor: the next ports
//! tried are those handed out longest ago, which under churn belong to closed flows. A port held
//! by a flow that is over (closed, idle past its timeout, or half of one) is reclaimed on the
//! spot, unless the
//! backend closed that flow first and still holds it in TIME_WAIT, where it would refuse this
//! SYN (older timestamp or sequence number: `mlb_common::ct::time_wait_accepts_syn`): the client
//! would lose a second to a retransmission. Such a port is passed over; only when every port
//! tried is busy or refused does the first refused one serve (the backend's answer then gets
//! the client to reset that TIME_WAIT, and its retransmitted SYN gets through).
//!
//! The search runs under `bpf_loop`: the verifier checks one probe once, whatever the number of
//! probes (an unrolled loop of them exceeds its budget).
use core::ffi::c_void;

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::generated::bpf_loop};
use mlb_common::{
    consts::{MAX_SNAT_ADDRS, SNAT_PORT_TRIES},
    ct::{CtTimeouts, port_reusable_for_syn},
    maps::{Config, FAMILY_V4, FlowKey, NatEntry},
    stats::Counter,
};

use crate::{
    exit::Exit,
    flow::{forget_flow, is_partner, set_peer_key},
    lookup,
    maps::{self, CONNTRACK, SNAT_CURSORS, Scratch},
    stats::count,
};

const EXHAUSTED: Exit = Exit::Drop(Counter::DropSnatExhausted);

/// `Scratch::snat_slot` while no port is found, `Scratch::snat_refused` while no port was
/// refused for the backend's TIME_WAIT.
const NOT_FOUND: u32 = u32::MAX;

/// What one probe found at its port.
enum Probe {
    Taken,
    /// A live flow holds it.
    Busy,
    /// Free here, but the backend's TIME_WAIT would refuse this SYN.
    Refused,
}

/// Reserves a SNAT address and port towards `backend_id` for the flow whose reply entry is
/// `scratch.reply`: records it under `scratch.reply_key` (its `dst` and `dport` become the
/// chosen address and port, network order; its other fields must be set). Returns the port.
#[inline(always)]
pub fn reserve_snat_port(scratch: &mut Scratch, backend_id: u32) -> Result<u16, Exit> {
    let cursor = SNAT_CURSORS.get_ptr_mut(backend_id).ok_or(Exit::Aborted)?;
    // SAFETY: an array element from the lookup; a racing writer only costs a collision.
    scratch.snat_start = unsafe { *cursor };
    scratch.snat_slot = NOT_FOUND;
    scratch.snat_refused = NOT_FOUND;
    scratch.snat_take_refused = 0;
    // SAFETY: `probe` has the callback signature bpf_loop expects; it finds its state in this
    // CPU's scratch map, so the context pointer is null.
    unsafe {
        bpf_loop(
            SNAT_PORT_TRIES,
            probe as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    // The probes wrote their results through their own pointer to this CPU's scratch; to the
    // compiler `scratch` is an exclusive reference that nothing was given, so without volatile
    // reads it would reuse the values from before the loop.
    // SAFETY: plain reads of fields of a valid reference.
    let (mut slot, refused) = unsafe {
        (
            core::ptr::read_volatile(&scratch.snat_slot),
            core::ptr::read_volatile(&scratch.snat_refused),
        )
    };
    if slot == NOT_FOUND && refused != NOT_FOUND {
        scratch.snat_take_refused = 1;
        probe(u64::from(refused), core::ptr::null_mut());
        // SAFETY: as above.
        slot = unsafe { core::ptr::read_volatile(&scratch.snat_slot) };
    }
    if slot == NOT_FOUND {
        return Err(EXHAUSTED);
    }
    // (`reply_key.dport`, which the caller reads next, was not written before the loop:
    // nothing stale to reuse.)
    // SAFETY: as above.
    let port = unsafe { core::ptr::read_volatile(&scratch.reply_key.dport) };
    // SAFETY: as above.
    unsafe { *cursor = slot.wrapping_add(1) };
    Ok(port)
}

/// One probe of the search: 0 to go on, 1 to stop (found, or nothing can be found).
extern "C" fn probe(attempt: u64, _ctx: *mut c_void) -> i64 {
    let (Ok(scratch), Ok(cfg)) = (maps::scratch(), lookup::config()) else {
        return 1;
    };
    match try_slot(scratch, cfg, attempt as u32) {
        Ok(Probe::Taken) => 1,
        Ok(Probe::Busy) => {
            count(Counter::SnatPortCollision);
            0
        }
        Ok(Probe::Refused) => {
            count(Counter::SnatPortTimeWait);
            if scratch.snat_refused == NOT_FOUND {
                scratch.snat_refused = attempt as u32;
            }
            0
        }
        Err(_) => 1,
    }
}

/// Tries slot `start + attempt` of the backend's search space (SNAT address × port).
#[inline(always)]
fn try_slot(scratch: &mut Scratch, cfg: &Config, attempt: u32) -> Result<Probe, Exit> {
    let (addrs, addr_count) = if scratch.reply_key.family == FAMILY_V4 {
        (&cfg.snat_v4, cfg.snat_v4_count)
    } else {
        (&cfg.snat_v6, cfg.snat_v6_count)
    };
    let min = u32::from(cfg.snat_port_min);
    let range = u32::from(cfg.snat_port_max).saturating_sub(min) + 1;
    let space = range * addr_count.clamp(1, MAX_SNAT_ADDRS as u32);
    if attempt >= space {
        // Every slot of a small space tried.
        return Err(EXHAUSTED);
    }
    // Checked: a division the compiler cannot prove safe leaves a panic path, which the
    // verifier rejects.
    let slot = scratch
        .snat_start
        .wrapping_add(attempt)
        .checked_rem(space)
        .ok_or(EXHAUSTED)?;
    let index = slot.checked_div(range).ok_or(EXHAUSTED)?;
    let addr = addrs.get(index as usize).ok_or(EXHAUSTED)?;
    for (word, value) in scratch.reply_key.dst.iter_mut().zip(addr) {
        *word = *value;
    }
    scratch.reply_key.dport = ((min + slot - index * range) as u16).to_be();
    // SAFETY: a map value, valid for this program run.
    let found = match unsafe { CONNTRACK.get(&scratch.reply_key) } {
        None if take(&scratch.reply_key, &scratch.reply) => Probe::Taken,
        None => Probe::Busy,
        Some(held) => reclaim(scratch, held, &cfg.timeouts),
    };
    if matches!(found, Probe::Taken) {
        scratch.snat_slot = slot;
    }
    Ok(found)
}

/// Inserts `reply` under `key` if the key is free. (Looked up first: an LRU insert takes a free
/// node, evicting some entry if needed, before it finds the key taken.)
#[inline(always)]
fn take(key: &FlowKey, reply: &NatEntry) -> bool {
    CONNTRACK.insert(key, reply, u64::from(BPF_NOEXIST)).is_ok()
}

/// Takes the port of `scratch.reply_key` over for `scratch.reply` from the flow holding it
/// (`held`, its reply half) if that flow is over (closed by FINs or a RST, idle past its
/// state's timeout, or a half whose partner is gone) and its backend would accept this SYN (or
/// `scratch.snat_take_refused` says to take it anyway). Both halves of the old flow go.
///
/// A closed flow's port serves after a short grace ([`CtTimeouts::holds_port`]): the backend's
/// socket is then gone or in TIME_WAIT, which the SYN check covers. The backend's TIME_WAIT is
/// checked first, on the entry at hand, so a refused port costs no lookup of its partner.
#[inline(always)]
fn reclaim(scratch: &mut Scratch, held: &NatEntry, timeouts: &CtTimeouts) -> Probe {
    let (key, reply, peer) = (&scratch.reply_key, &scratch.reply, &mut scratch.peer_key);
    let now = reply.last_seen_ns;
    let tsval = (scratch.seg_ts_ok != 0).then_some(scratch.seg_ts);
    let refused = !port_reusable_for_syn(held, now, scratch.seg_seq, tsval);
    if refused && scratch.snat_take_refused == 0 {
        return Probe::Refused;
    }
    set_peer_key(peer, key, held);
    // SAFETY: as above.
    let partner = unsafe { CONNTRACK.get(&*peer) }.is_some_and(|p| is_partner(key, p));
    if partner && timeouts.holds_port(key.proto, held.state, held.last_seen_ns, now) {
        return Probe::Busy;
    }
    if partner {
        forget_flow(key, peer);
    } else {
        let _ = CONNTRACK.remove(key);
    }
    count(Counter::SnatPortReclaimed);
    // NOEXIST again: another CPU may have taken the port meanwhile.
    if take(key, reply) {
        Probe::Taken
    } else {
        Probe::Busy
    }
}
