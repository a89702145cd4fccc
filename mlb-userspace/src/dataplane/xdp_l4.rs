//! The XDP dataplane: turns [`L4Change`]s into map updates of the loaded XDP program.
//!
//! - Each service is exposed on every VIP of its family (or on its `bind_addr`): one service slot
//!   per (VIP, port, protocol), owning two Maglev tables. A change writes the *inactive* table —
//!   only the slots that differ from what that table already holds — then flips the service's
//!   `ring_copy`: a packet never sees a half-written table.
//! - Backends live in one array shared by all services, keyed by address. A backend no service
//!   uses any more is *draining*: its established flows go on for `drain_timeout`, then it is
//!   marked dead and those flows are re-balanced (the new backend answers TCP with a RST).
//! - [`ConntrackSweeper`] expires idle connection-tracking entries (the kernel LRU only evicts
//!   when full) and those of dead backends, and frees backend ids nothing refers to any more.
//!
//! Nothing is ever wiped and rebuilt: every change touches only the entries it concerns.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use aya::maps::{Array, DevMapHash, HashMap as BpfHashMap, MapData, PerCpuArray};
use mlb_common::{
    consts::{MAX_BACKENDS, MAX_SERVICES, MAX_SNAT_ADDRS, NO_BACKEND, ring_elems, ring_table_base},
    ct::{self, CtTimeouts},
    maps::{
        self, BACKEND_ACTIVE, BACKEND_DEAD, Backend as BpfBackend, Config, DIR_TO_BACKEND,
        FAMILY_V4, FAMILY_V6, FlowKey, FlowStats, NatEntry, RingElem, ServiceKey, ServiceValue,
    },
    net::{IPPROTO_TCP, IPPROTO_UDP},
};
use tracing::{debug, info, warn};

use super::{
    Dataplane, DataplaneError, L4Change, apply_each,
    maglev::{self, MaglevBackend},
    xdp::{XdpError, XdpProgram},
};
use crate::model::{BackendState, L4Service, L4ServiceKey, Protocol};

mod acl;
mod adopt;
mod ct_batch;
mod dsr;
mod hash_secret;
mod ids;
mod readback;
mod sweep;

use ids::BackendIds;

pub use dsr::Forwarding;
pub use hash_secret::HashSecret;
pub use sweep::ConntrackSweeper;

/// Settings of the XDP dataplane.
#[derive(Clone, Debug)]
pub struct XdpL4Config {
    /// Addresses services are exposed on (`--vip`).
    pub vips: Vec<IpAddr>,
    /// Source addresses of forwarded IPv4 flows (`--snat-addr`, at most [`MAX_SNAT_ADDRS`]);
    /// each adds a whole port range to every backend's SNAT space. None: IPv4 services get no
    /// backends.
    pub snat_v4: Vec<Ipv4Addr>,
    /// Source addresses of forwarded IPv6 flows.
    pub snat_v6: Vec<Ipv6Addr>,
    /// SNAT source ports, inclusive (`--snat-ports`).
    pub snat_ports: (u16, u16),
    /// Maglev table size (prime).
    pub ring_size: u32,
    /// How long a removed backend keeps its established flows before it is declared dead.
    pub drain_timeout: Duration,
    /// Idle time after which tracked flows are forgotten, by state.
    pub timeouts: FlowTimeouts,
    /// Key of the flow hash (`--hash-secret`, random by default).
    pub hash_secret: HashSecret,
    /// Full NAT or direct server return (`--forwarding`).
    pub forwarding: Forwarding,
}

/// Idle timeouts of tracked flows, by protocol and TCP state. The program applies them itself
/// (a dead flow's SNAT port is free at once); the sweeper deletes what they leave behind.
#[derive(Clone, Copy, Debug)]
pub struct FlowTimeouts {
    /// TCP handshake not completed (SYN_SENT, SYN_RECV): the longest a SYN flood holds a SNAT
    /// port. Each retransmitted SYN refreshes it.
    pub tcp_syn: Duration,
    /// Established TCP (marathon-lb's `timeout tunnel` is 3600 s).
    pub tcp_established: Duration,
    /// One side sent a FIN (FIN_WAIT, CLOSE_WAIT).
    pub tcp_half_closed: Duration,
    /// Both sides sent a FIN: how long the last ACK is still translated before the SNAT port
    /// serves another flow.
    pub tcp_time_wait: Duration,
    /// After a RST.
    pub tcp_closed: Duration,
    /// UDP "flows".
    pub udp: Duration,
}

impl Default for FlowTimeouts {
    /// Linux conntrack's and Cilium's shape with shorter closing states: a closed flow is
    /// translated for 2 s, where Linux keeps TIME_WAIT 120 s and Cilium closes in 10 s; its SNAT
    /// port serves a new flow after 0.25 s (`mlb_common::ct::CLOSED_PORT_GRACE_NS`).
    fn default() -> Self {
        FlowTimeouts {
            tcp_syn: Duration::from_secs(10),
            tcp_established: Duration::from_secs(3600),
            tcp_half_closed: Duration::from_secs(60),
            tcp_time_wait: Duration::from_secs(2),
            tcp_closed: Duration::from_secs(2),
            udp: Duration::from_secs(60),
        }
    }
}

impl FlowTimeouts {
    /// The program's form: whole seconds (saturating).
    pub fn to_ct(&self) -> CtTimeouts {
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        CtTimeouts {
            tcp_syn: secs(self.tcp_syn),
            tcp_established: secs(self.tcp_established),
            tcp_half_closed: secs(self.tcp_half_closed),
            tcp_time_wait: secs(self.tcp_time_wait),
            tcp_closed: secs(self.tcp_closed),
            udp: secs(self.udp),
        }
    }
}

/// Raw network-order words of an address, as the program stores them.
pub fn addr_words(ip: IpAddr) -> [u32; 4] {
    match ip {
        IpAddr::V4(v4) => [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            [w(0), w(4), w(8), w(12)]
        }
    }
}

/// The address back from raw words, given the family.
pub fn words_addr(words: [u32; 4], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
    } else {
        let mut o = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(o))
    }
}

fn family_of(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 }
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
    }
}

/// One programmed (VIP, port, protocol).
#[derive(Debug)]
struct ProgrammedService {
    /// The Marathon app it serves (for log lines).
    app_id: String,
    slot: u32,
    /// Live table (0 or 1).
    copy: u32,
    /// What each of the two tables holds (backend ids), to write only changed slots.
    tables: [Vec<u32>; 2],
    /// Backend ids this service's live table uses.
    backends: HashSet<u32>,
    /// `SVC_F_*` flags of the live service value.
    flags: u32,
    /// The slot's blocks in the ACL trie.
    acl: BTreeSet<acl::AclBlock>,
}

/// A backend id and who uses it.
#[derive(Debug)]
struct BackendSlot {
    addr: SocketAddr,
    id: u32,
    /// Services (VIP keys) whose live table contains it.
    users: usize,
    /// When the last user let go (draining since then).
    unused_since: Option<Instant>,
    dead: bool,
}

/// Per-backend counters of the XDP dataplane, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct XdpFlowStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// New flows dropped: no SNAT port towards this backend was free.
    pub snat_exhausted: u64,
}

impl XdpFlowStats {
    fn add(&mut self, v: &FlowStats) {
        self.packets += v.packets;
        self.bytes += v.bytes;
        self.new_flows += v.new_flows;
        self.snat_exhausted += v.snat_exhausted;
    }
}

/// What `/_mlb/xdp` shows: see [`XdpL4::snapshot`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct XdpSnapshot {
    /// Every program counter (summed over CPUs) by its name.
    pub counters: BTreeMap<&'static str, u64>,
    pub conntrack: CtStateCounts,
    /// Entries left in the connection-tracking table after the sweeper's last pass: both
    /// halves of every flow, and the reply halves kept while a backend holds a port in
    /// TIME_WAIT. At
    /// `conntrack_capacity` (`--conntrack-size`) the kernel evicts the least recently used.
    pub conntrack_entries: u64,
    pub conntrack_capacity: u32,
    pub backends: BTreeMap<SocketAddr, XdpFlowStats>,
}

/// SNAT ports towards one backend: held now, and there are in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnatOccupancy {
    pub backend: SocketAddr,
    pub used: u64,
    pub capacity: u64,
}

/// Tracked flows by state, as the sweeper's last walk found them (flows, not entries: each
/// flow is counted once, by its client → backend half).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CtStateCounts {
    pub syn_sent: u64,
    pub syn_recv: u64,
    pub established: u64,
    pub fin_wait: u64,
    pub close_wait: u64,
    pub time_wait: u64,
    pub closed: u64,
    pub udp: u64,
}

impl CtStateCounts {
    fn add(&mut self, proto: u8, entry: &NatEntry) {
        if entry.direction != DIR_TO_BACKEND {
            return;
        }
        let slot = match (proto, entry.state) {
            (IPPROTO_UDP, _) => &mut self.udp,
            (_, ct::CT_SYN_SENT) => &mut self.syn_sent,
            (_, ct::CT_SYN_RECV) => &mut self.syn_recv,
            (_, ct::CT_FIN_WAIT) => &mut self.fin_wait,
            (_, ct::CT_CLOSE_WAIT) => &mut self.close_wait,
            (_, ct::CT_TIME_WAIT) => &mut self.time_wait,
            (_, ct::CT_CLOSED) => &mut self.closed,
            _ => &mut self.established,
        };
        *slot += 1;
    }

    /// Every tracked flow.
    pub fn total(&self) -> u64 {
        self.syn_sent
            + self.syn_recv
            + self.established
            + self.fin_wait
            + self.close_wait
            + self.time_wait
            + self.closed
            + self.udp
    }
}

/// The XDP implementation of the L4 [`Dataplane`].
pub struct XdpL4 {
    program: XdpProgram,
    config: XdpL4Config,
    /// Model services as last applied, by key (to expand upserts and removals to VIP keys).
    applied: BTreeMap<L4ServiceKey, Vec<ServiceKey>>,
    services: HashMap<ServiceKey, ProgrammedService>,
    free_slots: Vec<u32>,
    backends: HashMap<SocketAddr, BackendSlot>,
    /// Free backend ids; a backend's id derives from its address (see [`ids`]).
    backend_ids: BackendIds,
    /// Services adopted from a previous agent's maps that no change has named yet.
    unconfirmed: BTreeSet<L4ServiceKey>,
    /// Flows by state at the sweeper's last walk.
    ct_states: CtStateCounts,
    /// Entries (flow directions) left after the sweeper's last pass, and the table's size.
    ct_entries: u64,
    ct_capacity: u32,
    /// SNAT-exhaustion drops per backend id already reported in the log.
    snat_exhausted_reported: HashMap<u32, u64>,
    /// When exhaustion was last logged (at most once per [`SNAT_EXHAUSTION_LOG_EVERY`]).
    snat_exhaustion_logged: Option<Instant>,
}

/// Exhaustion persists while a backend is overloaded: one warning per backend this often, with
/// the drops since the last one, keeps the log readable.
const SNAT_EXHAUSTION_LOG_EVERY: Duration = Duration::from_secs(30);

/// The program's global settings for `config`.
fn program_config(config: &XdpL4Config) -> Result<Config, XdpError> {
    if config.snat_v4.len() > MAX_SNAT_ADDRS || config.snat_v6.len() > MAX_SNAT_ADDRS {
        return Err(XdpError::TooManySnatAddrs {
            max: MAX_SNAT_ADDRS,
        });
    }
    let mut cfg = Config {
        snat_v4_count: config.snat_v4.len() as u32,
        snat_v6_count: config.snat_v6.len() as u32,
        snat_port_min: config.snat_ports.0,
        snat_port_max: config.snat_ports.1,
        ring_size: config.ring_size,
        ready: 1,
        hash_secret: config.hash_secret.words(),
        timeouts: config.timeouts.to_ct(),
        ..Config::default()
    };
    for (slot, addr) in cfg.snat_v4.iter_mut().zip(&config.snat_v4) {
        *slot = addr_words((*addr).into());
    }
    for (slot, addr) in cfg.snat_v6.iter_mut().zip(&config.snat_v6) {
        *slot = addr_words((*addr).into());
    }
    config.forwarding.write(&mut cfg);
    Ok(cfg)
}

impl XdpL4 {
    /// Takes over a loaded (and usually attached) program and writes its configuration. The
    /// program passes every packet until this is done.
    pub fn new(mut program: XdpProgram, config: XdpL4Config) -> Result<Self, XdpError> {
        maglev::validate_table_size(config.ring_size)?;
        let (min, max) = config.snat_ports;
        if min == 0 || min > max {
            return Err(XdpError::SnatPorts {
                first: min,
                last: max,
            });
        }
        let cfg = program_config(&config)?;
        let mut map: Array<&mut MapData, Config> = program.map_mut(maps::CONFIG)?;
        map.set(0, cfg, 0)?;
        Ok(XdpL4 {
            program,
            config,
            applied: BTreeMap::new(),
            services: HashMap::new(),
            free_slots: (0..MAX_SERVICES).rev().collect(),
            backends: HashMap::new(),
            backend_ids: BackendIds::new(MAX_BACKENDS),
            unconfirmed: BTreeSet::new(),
            ct_states: CtStateCounts::default(),
            ct_entries: 0,
            ct_capacity: 0,
            snat_exhausted_reported: HashMap::new(),
            snat_exhaustion_logged: None,
        })
    }

    /// Lets the program redirect packets out of `iface` (every interface it is attached to,
    /// and any other egress interface towards clients or backends).
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<(), XdpError> {
        let mut ports: DevMapHash<&mut MapData> = self.program.map_mut(maps::TX_PORTS)?;
        ports
            .insert(ifindex, ifindex, None, 0)
            .map_err(|source| XdpError::TxPort { ifindex, source })
    }

    /// The program (counters, attachments).
    pub fn program(&self) -> &XdpProgram {
        &self.program
    }

    /// The program, mutably (attach/detach).
    pub fn program_mut(&mut self) -> &mut XdpProgram {
        &mut self.program
    }

    /// Consumes the dataplane and returns its program (e.g. to detach it explicitly).
    pub fn into_program(self) -> XdpProgram {
        self.program
    }

    fn vip_keys(&self, svc: &L4Service) -> Vec<ServiceKey> {
        let addrs: Vec<IpAddr> = match svc.bind_addr {
            Some(a) => vec![a],
            None => self.config.vips.clone(),
        };
        addrs
            .into_iter()
            .map(|vip| ServiceKey {
                addr: addr_words(vip),
                port: svc.key.port.to_be(),
                proto: proto_number(svc.key.protocol),
                family: family_of(vip),
            })
            .collect()
    }

    fn upsert(&mut self, svc: &L4Service) -> Result<(), XdpError> {
        let keys = self.vip_keys(svc);
        if keys.is_empty() {
            return Err(XdpError::NoVip);
        }
        // VIP keys this service no longer uses (its bind address changed).
        if let Some(old) = self.applied.get(&svc.key).cloned() {
            for k in old.iter().filter(|k| !keys.contains(k)) {
                self.remove_vip(k)?;
            }
        }
        for key in &keys {
            self.program_vip(key, svc)?;
        }
        self.applied.insert(svc.key, keys);
        Ok(())
    }

    fn program_vip(&mut self, key: &ServiceKey, svc: &L4Service) -> Result<(), XdpError> {
        let forwarding = &self.config.forwarding;
        let reachable = forwarding
            .dsr_reaches(key.family)
            .unwrap_or(if key.family == FAMILY_V4 {
                !self.config.snat_v4.is_empty()
            } else {
                !self.config.snat_v6.is_empty()
            });
        // Backends of the VIP's family that take new connections; without a SNAT address (or,
        // in DSR mode, an outer source) of that family none can be reached.
        let members: Vec<(SocketAddr, u32)> = svc
            .backends
            .iter()
            .filter(|b| reachable && b.state == BackendState::Active)
            .filter(|b| family_of(b.addr.ip()) == key.family && b.weight > 0)
            .filter(|b| forwarding.port_ok(svc.key.port, b.addr.port()))
            .map(|b| (b.addr, b.weight))
            .collect();
        let off_port = svc
            .backends
            .iter()
            .filter(|b| !forwarding.port_ok(svc.key.port, b.addr.port()));
        if let Some(b) = off_port.clone().next() {
            warn!(
                app = svc.app_id,
                service_port = svc.key.port,
                backend = %b.addr,
                left_out = off_port.count(),
                "--forwarding dsr: backends not on the service port are left out (DSR delivers \
                 the client's packet unchanged: the task port must equal the service port)"
            );
        }
        let mut ids = Vec::with_capacity(members.len());
        for (addr, _) in &members {
            ids.push(self.backend_id(*addr)?);
        }
        let table = id_table(&members, &ids, self.config.ring_size)?;
        let new_users: HashSet<u32> = ids.iter().copied().collect();
        let flags = acl::service_flags(svc);
        let blocks = acl::service_blocks(svc, key.family);
        if let Some(p) = self.services.get(key)
            && p.tables[p.copy as usize] == table
            && p.backends == new_users
            && p.flags == flags
            && p.acl == blocks
        {
            // Already live as wanted (e.g. adopted from the previous agent): no write, no flip.
            return Ok(());
        }

        let (slot, copy, old_users, old_blocks) = if let Some(p) = self.services.get(key) {
            (p.slot, 1 - p.copy, p.backends.clone(), p.acl.clone())
        } else {
            let slot = self.free_slots.pop().ok_or(XdpError::SlotsFull {
                kind: "service",
                max: MAX_SERVICES,
            })?;
            (slot, 0, HashSet::new(), BTreeSet::new())
        };
        let previous = self
            .services
            .get(key)
            .map(|p| p.tables[copy as usize].clone())
            .unwrap_or_default();
        self.write_table(slot, copy, &previous, &table)?;
        self.add_acl_blocks(slot, &old_blocks, &blocks)?;
        let value = ServiceValue {
            slot,
            ring_copy: copy,
            backend_count: u32::try_from(members.len()).unwrap_or(u32::MAX),
            flags,
        };
        // The flip: one map update, seen whole by every packet after it.
        self.services_map()?.insert(key, value, 0)?;
        self.remove_acl_blocks(slot, &old_blocks, &blocks)?;

        for id in new_users.difference(&old_users) {
            self.retain_backend(*id);
        }
        for id in old_users.difference(&new_users) {
            self.release_backend(*id);
        }
        let entry = self
            .services
            .entry(*key)
            .or_insert_with(|| ProgrammedService {
                app_id: svc.app_id.clone(),
                slot,
                copy,
                tables: [Vec::new(), Vec::new()],
                backends: HashSet::new(),
                flags: 0,
                acl: BTreeSet::new(),
            });
        entry.copy = copy;
        entry.flags = flags;
        entry.acl = blocks;
        entry.app_id.clone_from(&svc.app_id);
        entry.tables[copy as usize] = table;
        entry.backends = new_users;
        debug!(vip = %words_addr(key.addr, key.family), port = svc.key.port, slot, copy, backends = members.len(), "XDP service programmed");
        Ok(())
    }

    /// Writes `table` into table `copy` of `slot`, touching only elements that differ from
    /// `previous` (what that table holds now; empty when unknown).
    fn write_table(
        &mut self,
        slot: u32,
        copy: u32,
        previous: &[u32],
        table: &[u32],
    ) -> Result<(), XdpError> {
        let elems = ring_elems(self.config.ring_size);
        let base = ring_table_base(slot, copy, self.config.ring_size);
        let mut rings: Array<&mut MapData, RingElem> = self.program.map_mut(maps::RINGS)?;
        let at = |t: &[u32], i: usize| t.get(i).copied().unwrap_or(NO_BACKEND);
        let mut written = 0usize;
        for e in 0..elems as usize {
            let new = RingElem {
                backends: [at(table, 2 * e), at(table, 2 * e + 1)],
            };
            let old = RingElem {
                backends: [at(previous, 2 * e), at(previous, 2 * e + 1)],
            };
            if previous.is_empty() || new != old {
                rings.set(base + e as u32, new, 0)?;
                written += 1;
            }
        }
        debug!(slot, copy, written, "Maglev table elements written");
        Ok(())
    }

    fn services_map(
        &mut self,
    ) -> Result<BpfHashMap<&mut MapData, ServiceKey, ServiceValue>, XdpError> {
        self.program.map_mut(maps::SERVICES)
    }

    fn backends_map(&mut self) -> Result<Array<&mut MapData, BpfBackend>, XdpError> {
        self.program.map_mut(maps::BACKENDS)
    }

    /// The backend id of `addr`, allocating and writing one if needed (and reviving a draining
    /// or dead one).
    fn backend_id(&mut self, addr: SocketAddr) -> Result<u32, XdpError> {
        if let Some(b) = self.backends.get_mut(&addr) {
            if b.dead {
                b.dead = false;
                let id = b.id;
                self.write_backend(id, addr, BACKEND_ACTIVE)?;
            }
            return Ok(self.backends[&addr].id);
        }
        let id = self.backend_ids.take(addr).ok_or(XdpError::SlotsFull {
            kind: "backend",
            max: MAX_BACKENDS,
        })?;
        self.write_backend(id, addr, BACKEND_ACTIVE)?;
        self.backends.insert(
            addr,
            BackendSlot {
                addr,
                id,
                users: 0,
                unused_since: None,
                dead: false,
            },
        );
        Ok(id)
    }

    fn write_backend(&mut self, id: u32, addr: SocketAddr, flags: u32) -> Result<(), XdpError> {
        let value = BpfBackend {
            addr: addr_words(addr.ip()),
            port: addr.port().to_be(),
            family: family_of(addr.ip()),
            _pad: 0,
            flags,
        };
        self.backends_map()?.set(id, value, 0)?;
        Ok(())
    }

    fn slot_by_id(&mut self, id: u32) -> Option<&mut BackendSlot> {
        self.backends.values_mut().find(|b| b.id == id)
    }

    fn retain_backend(&mut self, id: u32) {
        if let Some(b) = self.slot_by_id(id) {
            b.users += 1;
            b.unused_since = None;
        }
    }

    fn release_backend(&mut self, id: u32) {
        if let Some(b) = self.slot_by_id(id) {
            b.users = b.users.saturating_sub(1);
            if b.users == 0 {
                b.unused_since = Some(Instant::now());
            }
        }
    }

    fn remove_vip(&mut self, key: &ServiceKey) -> Result<(), XdpError> {
        let Some(p) = self.services.remove(key) else {
            return Ok(());
        };
        match self.services_map()?.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(e.into()),
        }
        for id in &p.backends {
            self.release_backend(*id);
        }
        // The slot's next user must not inherit its allow-list.
        self.remove_acl_blocks(p.slot, &p.acl, &BTreeSet::new())?;
        // Tables of the slot are rewritten in full by its next user.
        self.free_slots.push(p.slot);
        Ok(())
    }

    /// Declares backends that have been draining for longer than the drain timeout dead, so
    /// their remaining flows are re-balanced.
    pub fn expire_drained_backends(&mut self) -> Result<Vec<SocketAddr>, XdpError> {
        let timeout = self.config.drain_timeout;
        let expired: Vec<(SocketAddr, u32)> = self
            .backends
            .values()
            .filter(|b| !b.dead && b.users == 0)
            .filter(|b| b.unused_since.is_some_and(|t| t.elapsed() >= timeout))
            .map(|b| (b.addr, b.id))
            .collect();
        for (addr, id) in &expired {
            self.write_backend(*id, *addr, BACKEND_ACTIVE | BACKEND_DEAD)?;
            if let Some(b) = self.backends.get_mut(addr) {
                b.dead = true;
            }
            info!(backend = %addr, "drain timeout over: backend dead, its remaining flows are re-balanced");
        }
        Ok(expired.into_iter().map(|(a, _)| a).collect())
    }

    /// Ids of the backends declared dead.
    fn dead_backend_ids(&self) -> HashSet<u32> {
        self.backends
            .values()
            .filter(|b| b.dead)
            .map(|b| b.id)
            .collect()
    }

    /// Frees the ids of dead backends that no service uses and no live flow refers to: they can
    /// serve other backends.
    fn free_unreferenced_backends(&mut self, referenced: &HashSet<u32>) -> Result<(), XdpError> {
        let freeable: Vec<SocketAddr> = self
            .backends
            .values()
            .filter(|b| b.dead && b.users == 0 && !referenced.contains(&b.id))
            .map(|b| b.addr)
            .collect();
        for addr in freeable {
            if let Some(b) = self.backends.remove(&addr) {
                self.write_backend(b.id, addr, BACKEND_DEAD)?;
                self.backend_ids.release(b.id);
            }
        }
        Ok(())
    }

    /// Packets, bytes, new flows and SNAT-exhaustion drops per backend address, summed over
    /// CPUs.
    pub fn backend_stats(&self) -> Result<BTreeMap<SocketAddr, XdpFlowStats>, XdpError> {
        let map: PerCpuArray<&MapData, FlowStats> = self.program.map(maps::BACKEND_STATS)?;
        let mut out = BTreeMap::new();
        for b in self.backends.values() {
            let mut sum = XdpFlowStats::default();
            map.get(&b.id, 0)?.iter().for_each(|v| sum.add(v));
            out.insert(b.addr, sum);
        }
        Ok(out)
    }

    /// Flows open now per backend address: tracked client-to-backend entries not closing (the
    /// sweeper expires idle ones). One pass over the connection table.
    pub fn backend_open_flows(&self) -> Result<HashMap<SocketAddr, u64>, XdpError> {
        let ct: BpfHashMap<&MapData, FlowKey, NatEntry> = self.program.map(maps::CONNTRACK)?;
        let mut by_id: HashMap<u32, u64> = HashMap::new();
        for (_, entry) in ct.iter().filter_map(Result::ok) {
            if entry.direction == DIR_TO_BACKEND && !mlb_common::ct::is_closed(entry.state) {
                *by_id.entry(entry.backend).or_default() += 1;
            }
        }
        Ok(self
            .backends
            .values()
            .filter_map(|b| by_id.get(&b.id).map(|n| (b.addr, *n)))
            .collect())
    }

    /// Everything that explains the datapath without bpftool: the program's counters by name,
    /// tracked flows by state, per-backend traffic and SNAT-exhaustion drops.
    pub fn snapshot(&self) -> Result<XdpSnapshot, XdpError> {
        let counters = self.program.counters()?;
        Ok(XdpSnapshot {
            counters: counters.named().collect(),
            conntrack: self.ct_states,
            conntrack_entries: self.ct_entries,
            conntrack_capacity: self.ct_capacity,
            backends: self.backend_stats()?,
        })
    }

    /// Tracked flows by state, as the conntrack sweeper last counted them.
    pub fn conntrack_states(&self) -> CtStateCounts {
        self.ct_states
    }

    /// Logs every backend whose new flows were dropped for want of a SNAT port since the last
    /// report, naming the services that use it and what to do; at most once per
    /// [`SNAT_EXHAUSTION_LOG_EVERY`]. Called by the sweeper.
    pub fn report_snat_exhaustion(&mut self) -> Result<(), XdpError> {
        if self
            .snat_exhaustion_logged
            .is_some_and(|at| at.elapsed() < SNAT_EXHAUSTION_LOG_EVERY)
        {
            return Ok(());
        }
        let map: PerCpuArray<&MapData, FlowStats> = self.program.map(maps::BACKEND_STATS)?;
        let mut grown = Vec::new();
        for b in self.backends.values() {
            let total: u64 = map.get(&b.id, 0)?.iter().map(|v| v.snat_exhausted).sum();
            let seen = self.snat_exhausted_reported.entry(b.id).or_insert(0);
            if total > *seen {
                grown.push((b.id, b.addr, total - *seen));
                *seen = total;
            }
        }
        for (id, backend, dropped) in grown {
            let services: Vec<String> = self
                .services
                .iter()
                .filter(|(_, p)| p.backends.contains(&id))
                .map(|(k, p)| {
                    format!(
                        "{} ({}:{})",
                        p.app_id,
                        words_addr(k.addr, k.family),
                        u16::from_be(k.port)
                    )
                })
                .collect();
            warn!(
                %backend,
                services = %services.join(", "),
                dropped,
                "SNAT ports towards this backend exhausted: new flows dropped; widen \
                 --snat-ports, add --snat-addr, or shorten the TCP timeouts"
            );
            self.snat_exhaustion_logged = Some(Instant::now());
        }
        Ok(())
    }

    /// The tracked flow direction of wire 5-tuple `key`, if any (how its packets are rewritten).
    pub fn conntrack_entry(&self, key: &FlowKey) -> Result<Option<NatEntry>, XdpError> {
        let ct: BpfHashMap<&MapData, FlowKey, NatEntry> = self.program.map(maps::CONNTRACK)?;
        match ct.get(key, 0) {
            Ok(entry) => Ok(Some(entry)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// SNAT ports held towards each backend (one per tracked client-to-backend half, closing
    /// ones included: a port is free again only once its entry goes) against the ports there
    /// are towards it (SNAT addresses of its family × the port range). One pass over the
    /// connection table.
    pub fn snat_occupancy(&self) -> Result<Vec<SnatOccupancy>, XdpError> {
        let ct: BpfHashMap<&MapData, FlowKey, NatEntry> = self.program.map(maps::CONNTRACK)?;
        let mut used: HashMap<u32, u64> = HashMap::new();
        for (_, entry) in ct.iter().filter_map(Result::ok) {
            if entry.direction == DIR_TO_BACKEND {
                *used.entry(entry.backend).or_default() += 1;
            }
        }
        let (min, max) = self.config.snat_ports;
        let range = u64::from(max.saturating_sub(min)) + 1;
        Ok(self
            .backends
            .values()
            .map(|b| {
                let addrs = if b.addr.is_ipv4() {
                    self.config.snat_v4.len()
                } else {
                    self.config.snat_v6.len()
                };
                SnatOccupancy {
                    backend: b.addr,
                    used: used.get(&b.id).copied().unwrap_or(0),
                    capacity: addrs as u64 * range,
                }
            })
            .collect())
    }

    /// Number of tracked flow directions (two per flow).
    pub fn conntrack_entries(&self) -> Result<usize, XdpError> {
        let ct: BpfHashMap<&MapData, FlowKey, NatEntry> = self.program.map(maps::CONNTRACK)?;
        Ok(ct.keys().filter(Result::is_ok).count())
    }
}

impl Dataplane for XdpL4 {
    type Change = L4Change;

    fn apply(&mut self, changes: &[L4Change]) -> Result<(), Vec<DataplaneError>> {
        apply_each(changes, |change| {
            self.unconfirmed.remove(&change.key());
            self.apply_one(change)
        })
    }
}

impl XdpL4 {
    fn apply_one(&mut self, change: &L4Change) -> Result<(), DataplaneError> {
        match change {
            L4Change::Upsert(svc) => self
                .upsert(svc)
                .map_err(|reason| DataplaneError::l4(svc.key, reason)),
            L4Change::Remove(key) => {
                let vips = self.applied.remove(key).unwrap_or_default();
                vips.iter()
                    .try_for_each(|k| self.remove_vip(k))
                    .map_err(|e| DataplaneError::l4(*key, e))
            }
        }
    }
}

/// The Maglev table of `members` (address, weight) as the program reads it: each slot the
/// backend id (`ids[i]` of `members[i]`) or [`NO_BACKEND`]. Keyed by address, so it depends on
/// the set of members and their ids, never on their order.
fn id_table(
    members: &[(SocketAddr, u32)],
    ids: &[u32],
    ring_size: u32,
) -> Result<Vec<u32>, maglev::MaglevError> {
    let names: Vec<String> = members.iter().map(|(a, _)| a.to_string()).collect();
    let maglev_input: Vec<MaglevBackend<'_>> = names
        .iter()
        .zip(members)
        .map(|(name, (_, weight))| MaglevBackend {
            key: name,
            weight: *weight,
        })
        .collect();
    Ok(maglev::build_table(&maglev_input, ring_size)?
        .into_iter()
        .map(|i| {
            if i == maglev::NO_BACKEND {
                NO_BACKEND
            } else {
                ids[i as usize]
            }
        })
        .collect())
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    #[expect(
        unsafe_code,
        reason = "clock_gettime writes only into the timespec we pass"
    )]
    // SAFETY: a valid pointer to a timespec on our stack.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_words_round_trip_in_network_order() {
        for ip in ["198.18.1.2", "fd00:198:18:1::2"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(words_addr(addr_words(ip), family_of(ip)), ip);
        }
        // The first byte on the wire is the first byte in memory.
        let w = addr_words("198.18.1.2".parse().unwrap());
        assert_eq!(w[0].to_ne_bytes(), [198, 18, 1, 2]);
    }

    /// Two instances that learn the same backends in any order (one of them restarted and
    /// adopting part of its ids) program bit-identical tables: ids and slots alike.
    #[test]
    fn id_tables_do_not_depend_on_arrival_order() {
        let members: Vec<(SocketAddr, u32)> = (0..7)
            .map(|i| {
                let addr = format!("198.18.2.{}:{}", 11 + i % 3, 31_000 + 7 * i);
                (addr.parse().unwrap(), (i % 3 + 1) as u32)
            })
            .collect();
        let table_in = |order: &[usize], ids: &mut BackendIds| {
            let ordered: Vec<(SocketAddr, u32)> = order.iter().map(|&i| members[i]).collect();
            let taken: Vec<u32> = ordered.iter().map(|(a, _)| ids.take(*a).unwrap()).collect();
            id_table(&ordered, &taken, 16_381).unwrap()
        };
        let first = table_in(&[0, 1, 2, 3, 4, 5, 6], &mut BackendIds::new(MAX_BACKENDS));
        for order in [
            [6, 5, 4, 3, 2, 1, 0],
            [3, 0, 6, 1, 5, 2, 4],
            [2, 4, 6, 0, 1, 3, 5],
        ] {
            let again = table_in(&order, &mut BackendIds::new(MAX_BACKENDS));
            assert!(again == first, "order {order:?} built another table");
        }
        // A restarted instance adopts the ids of some backends from the pinned maps, then
        // takes the others' in yet another order.
        let mut adopted = BackendIds::new(MAX_BACKENDS);
        let mut fresh = BackendIds::new(MAX_BACKENDS);
        let ids: Vec<u32> = members
            .iter()
            .map(|(a, _)| fresh.take(*a).unwrap())
            .collect();
        adopted.mark_used(ids[1]);
        adopted.mark_used(ids[5]);
        let mut taken = ids.clone();
        for i in [6, 0, 4, 2, 3] {
            taken[i] = adopted.take(members[i].0).unwrap();
        }
        assert!(id_table(&members, &taken, 16_381).unwrap() == first);
        assert!(first.iter().all(|&id| id != NO_BACKEND));
    }
}
