//! The Maglev tables as the kernel holds them, read back from the maps (`/_mlb/xdp/tables`): so
//! that operators, and the fleet tests, can check that every instance behind one router
//! forwards a given flow hash to the same backend.
//!
//! Each service's live table is resolved from backend ids to backend addresses and summed up
//! in a fingerprint: equal fingerprints mean equal tables of addresses, whatever slot, table
//! copy or ids each instance happens to use. The fingerprint of the raw ids is shown too: it is
//! equal as well unless two backend addresses collided on one id (see [`super::ids`]).
use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
};

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use mlb_common::{
    consts::{MAX_BACKENDS, NO_BACKEND},
    maps::{self, BACKEND_ACTIVE, Backend as BpfBackend, ServiceKey, ServiceValue},
    net::IPPROTO_TCP,
};
use serde::Serialize;

use super::{XdpL4, words_addr};
use crate::dataplane::{maglev::stable_hash, xdp::XdpError};

/// Every programmed service's live Maglev table, as read from the maps.
#[derive(Clone, Debug, Serialize)]
pub struct TablesView {
    /// Slots per table (`--maglev-table-size`).
    pub table_size: u32,
    /// Over every service's key and table fingerprint: equal on instances that agree.
    pub fingerprint: String,
    /// By VIP, port and protocol.
    pub services: Vec<ServiceTable>,
}

/// One (VIP, port, protocol)'s live table.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceTable {
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: &'static str,
    /// Of the table as backend addresses.
    pub fingerprint: String,
    /// Of the table as the program's backend ids.
    pub id_fingerprint: String,
    /// Slots per backend address (`"none"`: no backend, the flow is dropped).
    pub slots: BTreeMap<String, u32>,
}

/// A 64-bit hash as 16 hex digits.
fn hex(h: u64) -> String {
    format!("{h:016x}")
}

impl XdpL4 {
    /// Reads every service's live table back from the maps. Costs one map read per two slots
    /// of each table (tens of milliseconds per service at the default size): for operators and
    /// tests, not for polling.
    pub fn tables_readback(&self) -> Result<TablesView, XdpError> {
        let addrs = self.backend_addrs()?;
        let services: Vec<(ServiceKey, ServiceValue)> = {
            let map: BpfHashMap<&MapData, ServiceKey, ServiceValue> =
                self.program.map(maps::SERVICES)?;
            map.iter().collect::<Result<_, _>>()?
        };
        let mut out = Vec::with_capacity(services.len());
        for (key, value) in services {
            let ids = self.read_table(value.slot, value.ring_copy & 1)?;
            out.push(service_table(&key, &ids, &addrs));
        }
        out.sort_by(|a, b| (a.vip, a.port, a.protocol).cmp(&(b.vip, b.port, b.protocol)));
        let summary: String = out
            .iter()
            .map(|s| format!("{} {} {} {}\n", s.vip, s.port, s.protocol, s.fingerprint))
            .collect();
        Ok(TablesView {
            table_size: self.config.ring_size,
            fingerprint: hex(stable_hash(b"mlb-tables\0", summary.as_bytes())),
            services: out,
        })
    }

    /// The address of every active backend id in the backends map.
    fn backend_addrs(&self) -> Result<HashMap<u32, SocketAddr>, XdpError> {
        let map: Array<&MapData, BpfBackend> = self.program.map(maps::BACKENDS)?;
        let mut out = HashMap::new();
        for id in 0..MAX_BACKENDS {
            let b = map.get(&id, 0)?;
            if b.flags & BACKEND_ACTIVE != 0 {
                let ip = words_addr(b.addr, b.family);
                out.insert(id, SocketAddr::new(ip, u16::from_be(b.port)));
            }
        }
        Ok(out)
    }
}

/// One table resolved to addresses: the sorted addresses it names, then each slot's index among
/// them, hashed.
fn service_table(key: &ServiceKey, ids: &[u32], addrs: &HashMap<u32, SocketAddr>) -> ServiceTable {
    let name = |id: u32| match (id, addrs.get(&id)) {
        (NO_BACKEND, _) => "none".to_owned(),
        (_, Some(a)) => a.to_string(),
        (_, None) => format!("unknown id {id}"),
    };
    let mut slots: BTreeMap<String, u32> = BTreeMap::new();
    let names: Vec<String> = ids.iter().map(|&id| name(id)).collect();
    for n in &names {
        *slots.entry(n.clone()).or_default() += 1;
    }
    let index: HashMap<&str, u32> = slots.keys().zip(0u32..).map(|(n, i)| (&**n, i)).collect();
    let mut bytes: Vec<u8> = slots
        .keys()
        .flat_map(|n| [n.as_bytes(), b"\n"])
        .flatten()
        .copied()
        .collect();
    bytes.extend(names.iter().flat_map(|n| index[n.as_str()].to_le_bytes()));
    let raw: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
    ServiceTable {
        vip: words_addr(key.addr, key.family),
        port: u16::from_be(key.port),
        protocol: if key.proto == IPPROTO_TCP {
            "tcp"
        } else {
            "udp"
        },
        fingerprint: hex(stable_hash(b"mlb-table\0", &bytes)),
        id_fingerprint: hex(stable_hash(b"mlb-table-ids\0", &raw)),
        slots,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlb_common::maps::FAMILY_V4;

    fn key() -> ServiceKey {
        ServiceKey {
            addr: super::super::addr_words("198.18.1.2".parse().unwrap()),
            port: 8080u16.to_be(),
            proto: IPPROTO_TCP,
            family: FAMILY_V4,
        }
    }

    /// The same table of addresses under other ids has the same fingerprint; another table of
    /// addresses a different one.
    #[test]
    fn table_fingerprint_is_of_addresses_not_ids() {
        let a: SocketAddr = "198.18.2.11:31000".parse().unwrap();
        let b: SocketAddr = "198.18.2.12:31001".parse().unwrap();
        let one = HashMap::from([(1, a), (2, b)]);
        let other = HashMap::from([(7, a), (3, b)]);
        let t1 = service_table(&key(), &[1, 2, 1, NO_BACKEND, 2], &one);
        let t2 = service_table(&key(), &[7, 3, 7, NO_BACKEND, 3], &other);
        assert_eq!(t1.fingerprint, t2.fingerprint);
        assert_ne!(t1.id_fingerprint, t2.id_fingerprint);
        assert_eq!(t1.slots, t2.slots);
        assert_eq!(t1.slots[&a.to_string()], 2);
        assert_eq!(t1.slots["none"], 1);
        let swapped = service_table(&key(), &[2, 1, 2, NO_BACKEND, 1], &one);
        assert_ne!(swapped.fingerprint, t1.fingerprint);
        assert_eq!(
            (t1.vip.to_string(), t1.port, t1.protocol),
            ("198.18.1.2".into(), 8080, "tcp")
        );
    }
}
