//! Adopting the datapath a previous agent left pinned: its bookkeeping (service slots and their
//! Maglev tables, backend ids and who uses them) is read back from the maps, so that the first
//! apply after a restart compares with what the kernel really holds and writes only what
//! differs. Services the new agent is not told about by its first resync are removed then.
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::Instant,
};

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use mlb_common::{
    consts::{MAX_BACKENDS, NO_BACKEND, ring_elems, ring_table_base},
    maps::{
        self, BACKEND_ACTIVE, BACKEND_DEAD, Backend as BpfBackend, Config, RingElem, ServiceKey,
        ServiceValue,
    },
    net::{IPPROTO_TCP, IPPROTO_UDP},
};
use tracing::info;

use super::{BackendSlot, ProgrammedService, XdpL4, XdpL4Config, words_addr};
use crate::{
    dataplane::xdp::{XdpError, XdpProgram},
    model::{L4ServiceKey, Protocol},
};

impl XdpL4 {
    /// Takes over a program loaded over a previous agent's pinned maps: checks they were built
    /// for the same Maglev table size, writes the configuration, and rebuilds the bookkeeping
    /// from the maps. Until [`XdpL4::finish_adoption`], every adopted service keeps forwarding
    /// as it was.
    pub fn adopt(program: XdpProgram, config: XdpL4Config) -> Result<Self, XdpError> {
        let previous = {
            let map: Array<&MapData, Config> = program.map(maps::CONFIG)?;
            map.get(&0, 0)?
        };
        if previous.ready != 0 && previous.ring_size != config.ring_size {
            return Err(XdpError::PinnedTableSize {
                pinned: previous.ring_size,
                wanted: config.ring_size,
            });
        }
        let mut dp = XdpL4::new(program, config)?;
        dp.adopt_services()?;
        dp.adopt_backends()?;
        info!(
            services = dp.services.len(),
            backends = dp.backends.len(),
            "adopted the pinned XDP tables"
        );
        Ok(dp)
    }

    fn adopt_services(&mut self) -> Result<(), XdpError> {
        let services: Vec<(ServiceKey, ServiceValue)> = {
            let map: BpfHashMap<&MapData, ServiceKey, ServiceValue> =
                self.program.map(maps::SERVICES)?;
            map.iter().collect::<Result<_, _>>()?
        };
        let mut used_slots = HashSet::new();
        let acl_blocks = self.read_acl_blocks()?;
        for (key, value) in services {
            let copy = value.ring_copy & 1;
            let tables = [
                self.read_table(value.slot, 0)?,
                self.read_table(value.slot, 1)?,
            ];
            let backends = tables[copy as usize]
                .iter()
                .copied()
                .filter(|id| *id != NO_BACKEND)
                .collect();
            used_slots.insert(value.slot);
            self.services.insert(
                key,
                ProgrammedService {
                    // Not in the maps: known again at the first upsert after the resync.
                    app_id: "(adopted)".to_owned(),
                    slot: value.slot,
                    copy,
                    tables,
                    backends,
                    flags: value.flags,
                    acl: acl_blocks
                        .iter()
                        .filter(|(slot, _)| *slot == value.slot)
                        .map(|(_, block)| *block)
                        .collect(),
                },
            );
            if let Some(l4_key) = l4_key(&key) {
                self.applied.entry(l4_key).or_default().push(key);
                self.unconfirmed.insert(l4_key);
            }
        }
        self.free_slots.retain(|s| !used_slots.contains(s));
        Ok(())
    }

    /// Table `copy` of `slot`, one backend id per Maglev entry.
    pub(super) fn read_table(&self, slot: u32, copy: u32) -> Result<Vec<u32>, XdpError> {
        let ring_size = self.config.ring_size;
        let base = ring_table_base(slot, copy, ring_size);
        let rings: Array<&MapData, RingElem> = self.program.map(maps::RINGS)?;
        let mut table = Vec::with_capacity(ring_size as usize);
        for e in 0..ring_elems(ring_size) {
            table.extend(rings.get(&(base + e), 0)?.backends);
        }
        table.truncate(ring_size as usize);
        Ok(table)
    }

    /// Backends marked active in the map, with the services whose live table uses them; one no
    /// service uses is draining again from now (its drain timer restarts).
    fn adopt_backends(&mut self) -> Result<(), XdpError> {
        let mut users: HashMap<u32, usize> = HashMap::new();
        for svc in self.services.values() {
            for id in &svc.backends {
                *users.entry(*id).or_default() += 1;
            }
        }
        let map: Array<&MapData, BpfBackend> = self.program.map(maps::BACKENDS)?;
        for id in 0..MAX_BACKENDS {
            let b = map.get(&id, 0)?;
            if b.flags & BACKEND_ACTIVE == 0 {
                continue;
            }
            // An id in use is never handed out again, even if its address repeats.
            self.backend_ids.mark_used(id);
            let addr = SocketAddr::new(words_addr(b.addr, b.family), u16::from_be(b.port));
            let users = users.get(&id).copied().unwrap_or(0);
            let dead = b.flags & BACKEND_DEAD != 0;
            self.backends.entry(addr).or_insert(BackendSlot {
                addr,
                id,
                users,
                unused_since: (users == 0 && !dead).then(Instant::now),
                dead,
            });
        }
        Ok(())
    }

    /// After the first resync: removes the adopted services nothing upserted since
    /// [`XdpL4::adopt`] (they are gone from Marathon and the static config). Returns them.
    pub fn finish_adoption(&mut self) -> Result<Vec<L4ServiceKey>, XdpError> {
        let stale: Vec<L4ServiceKey> = std::mem::take(&mut self.unconfirmed).into_iter().collect();
        for key in &stale {
            for vip in self.applied.remove(key).unwrap_or_default() {
                self.remove_vip(&vip)?;
            }
        }
        Ok(stale)
    }
}

/// The model's key of a programmed VIP key.
fn l4_key(key: &ServiceKey) -> Option<L4ServiceKey> {
    let protocol = match key.proto {
        IPPROTO_TCP => Protocol::Tcp,
        IPPROTO_UDP => Protocol::Udp,
        _ => return None,
    };
    Some(L4ServiceKey {
        port: u16::from_be(key.port),
        protocol,
    })
}
