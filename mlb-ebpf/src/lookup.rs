//! Read-only lookups in the maps the agent writes: the configuration, the service a packet is
//! addressed to, and the backend its Maglev table gives a new flow.
use mlb_common::{
    consts::{NO_BACKEND, RING_ENTRIES_PER_ELEM, ring_table_base},
    maps::{BACKEND_ACTIVE, BACKEND_DEAD, Backend, Config, ServiceKey, ServiceValue},
    stats::Counter,
};

use crate::{
    exit::Exit,
    maps::{BACKENDS, CONFIG, RINGS, SERVICES},
    parse::PacketMeta,
};

const NO_BACKEND_EXIT: Exit = Exit::Pass(Counter::PassNoBackend);

/// The agent's settings; until it has written them every packet passes.
#[inline(always)]
pub fn config() -> Result<&'static Config, Exit> {
    match CONFIG.get(0) {
        Some(cfg) if cfg.ready != 0 => Ok(cfg),
        _ => Err(Exit::Pass(Counter::PassNotReady)),
    }
}

/// The service the packet is addressed to. `key` is scratch space for the lookup key.
#[inline(always)]
pub fn lookup_service(
    meta: &PacketMeta,
    key: &mut ServiceKey,
) -> Result<&'static ServiceValue, Exit> {
    *key = ServiceKey {
        addr: meta.dst,
        port: meta.dport,
        proto: meta.proto,
        family: meta.family.code(),
    };
    // SAFETY: a map value, valid for this program run.
    unsafe { SERVICES.get(&*key) }.ok_or(Exit::Pass(Counter::PassNoService))
}

/// The backend (id and address) that the service's live Maglev table gives the flow `hash`: it
/// must be usable and of the packet's `family`.
#[inline(always)]
pub fn pick_backend(
    svc: &ServiceValue,
    ring_size: u32,
    hash: u32,
    family: u8,
) -> Result<(u32, &'static Backend), Exit> {
    if svc.backend_count == 0 || ring_size == 0 {
        return Err(NO_BACKEND_EXIT);
    }
    let entry = hash % ring_size;
    let index =
        ring_table_base(svc.slot, svc.ring_copy & 1, ring_size) + entry / RING_ENTRIES_PER_ELEM;
    let id = RINGS.get(index).map_or(NO_BACKEND, |elem| {
        elem.backends[(entry % RING_ENTRIES_PER_ELEM) as usize]
    });
    match BACKENDS.get(id) {
        Some(b)
            if b.flags & BACKEND_ACTIVE != 0
                && b.flags & BACKEND_DEAD == 0
                && b.family == family =>
        {
            Ok((id, b))
        }
        _ => Err(NO_BACKEND_EXIT),
    }
}

/// Whether the backend of a tracked flow was declared dead by the agent.
#[inline(always)]
pub fn backend_dead(backend: u32) -> bool {
    match BACKENDS.get(backend) {
        Some(b) => b.flags & BACKEND_DEAD != 0,
        None => true,
    }
}
