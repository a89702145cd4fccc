//! Loading, attaching and reading the XDP program.
//!
//! The object is built from `mlb-ebpf` by `build.rs` and embedded in the binary, so the agent and
//! its program always match. Links are owned by [`XdpProgram`]: dropping it detaches the program
//! from every interface, so an agent that exits never leaves a program attached by accident.
use std::os::fd::AsFd as _;

use aya::{
    Ebpf, Pod,
    maps::{HashMap, IterableMap as _, Map, MapData, MapError, PerCpuArray},
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use mlb_common::{
    consts::{CT_MAX_ENTRIES, DEFAULT_RING_SIZE, ring_map_entries},
    maps,
    stats::Counter,
};

/// How the program is attached to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) mode: the fast path.
    #[default]
    Native,
    /// Generic (skb) mode: works on any device, slower; a fallback.
    Skb,
}

/// The XDP object, built from `mlb-ebpf` for this binary.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mlb-ebpf"));

/// Name of the XDP entry point in the object.
pub const PROGRAM_NAME: &str = "mlb_xdp";

/// What went wrong with the XDP dataplane.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the XDP object has no program {PROGRAM_NAME} (build mismatch)")]
    MissingProgram,
    #[error("the XDP object has no map {0} (build mismatch)")]
    MissingMap(&'static str),
    #[error("XDP program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("attaching XDP to {iface} in {mode:?} mode: {source}{hint}")]
    Attach {
        iface: String,
        mode: AttachMode,
        #[source]
        source: aya::programs::ProgramError,
        hint: &'static str,
    },
    #[error("XDP map: {0}")]
    Map(#[from] MapError),
    #[error("duplicating the descriptor of XDP map {map}: {source}")]
    MapHandle {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the XDP dataplane lock is poisoned (a thread panicked while holding it)")]
    Poisoned,
    #[error("XDP configuration: {0}")]
    Config(String),
}

/// The loaded program and the interfaces it is attached to.
pub struct XdpProgram {
    ebpf: Ebpf,
    attached: Vec<(String, XdpLinkId)>,
}

/// Map sizes chosen at load time.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Maglev table size (prime): sizes the ring map.
    pub ring_size: u32,
    /// Connection-tracking entries (two per flow).
    pub conntrack_size: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            ring_size: DEFAULT_RING_SIZE,
            conntrack_size: CT_MAX_ENTRIES,
        }
    }
}

impl XdpProgram {
    /// Loads the embedded object into the kernel (verifier included) with default map sizes;
    /// attaches nothing yet.
    pub fn load() -> Result<Self, XdpError> {
        Self::load_with(LoadOptions::default())
    }

    /// Loads the embedded object with the given map sizes.
    pub fn load_with(opts: LoadOptions) -> Result<Self, XdpError> {
        let mut ebpf = aya::EbpfLoader::new()
            .map_max_entries(maps::RINGS, ring_map_entries(opts.ring_size))
            .map_max_entries(maps::CONNTRACK, opts.conntrack_size)
            .load(OBJECT)?;
        for name in maps::ALL {
            if ebpf.map(name).is_none() {
                return Err(XdpError::MissingMap(name));
            }
        }
        program_mut(&mut ebpf)?.load()?;
        Ok(Self {
            ebpf,
            attached: Vec::new(),
        })
    }

    /// Attaches the program to `iface`. Native mode is the fast path; skb (generic) mode works
    /// on any device.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<(), XdpError> {
        let xdp_mode = match mode {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        };
        let link = program_mut(&mut self.ebpf)?
            .attach(iface, xdp_mode)
            .map_err(|source| XdpError::Attach {
                iface: iface.to_owned(),
                mode,
                hint: match mode {
                    AttachMode::Native => {
                        " (if the driver has no native XDP, try --xdp-mode skb; if another XDP \
                         program owns the interface, detach it or stop the other mlb)"
                    }
                    AttachMode::Skb => "",
                },
                source,
            })?;
        self.attached.push((iface.to_owned(), link));
        Ok(())
    }

    /// Detaches the program from `iface` (no-op if it is not attached there).
    pub fn detach(&mut self, iface: &str) -> Result<(), XdpError> {
        if let Some(pos) = self.attached.iter().position(|(i, _)| i == iface) {
            let (_, link) = self.attached.remove(pos);
            program_mut(&mut self.ebpf)?.detach(link)?;
        }
        Ok(())
    }

    /// Map `name` as the typed view `M` (`Array<&MapData, V>`, `HashMap<&MapData, K, V>`, ...).
    pub(crate) fn map<'a, M>(&'a self, name: &'static str) -> Result<M, XdpError>
    where
        M: TryFrom<&'a Map, Error = MapError>,
    {
        let map = self.ebpf.map(name).ok_or(XdpError::MissingMap(name))?;
        Ok(M::try_from(map)?)
    }

    /// Map `name` as the writable typed view `M` (`Array<&mut MapData, V>`, ...).
    pub(crate) fn map_mut<'a, M>(&'a mut self, name: &'static str) -> Result<M, XdpError>
    where
        M: TryFrom<&'a mut Map, Error = MapError>,
    {
        let map = self.ebpf.map_mut(name).ok_or(XdpError::MissingMap(name))?;
        Ok(M::try_from(map)?)
    }

    /// A hash map of the program through a handle of its own (a duplicated descriptor): whoever
    /// holds it uses the map without borrowing the program, or any lock around it.
    pub(crate) fn hash_map_handle<K: Pod, V: Pod>(
        &self,
        name: &'static str,
    ) -> Result<HashMap<MapData, K, V>, XdpError> {
        let view: HashMap<&MapData, K, V> = self.map(name)?;
        let fd = view
            .map()
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| XdpError::MapHandle { map: name, source })?;
        let owned = Map::from_map_data(MapData::from_fd(fd)?)?;
        Ok(HashMap::try_from(owned)?)
    }

    /// Interfaces the program is attached to.
    pub fn interfaces(&self) -> impl Iterator<Item = &str> {
        self.attached.iter().map(|(i, _)| i.as_str())
    }

    /// The loaded program, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn program(&self) -> Result<&Xdp, XdpError> {
        self.ebpf
            .program(PROGRAM_NAME)
            .ok_or(XdpError::MissingProgram)?
            .try_into()
            .map_err(XdpError::Program)
    }

    /// The global counters, summed over all CPUs, in [`Counter`] order.
    pub fn counters(&self) -> Result<Counters, XdpError> {
        let stats: PerCpuArray<&MapData, u64> = self.map(maps::STATS)?;
        let mut values = [0u64; Counter::COUNT];
        for (i, value) in values.iter_mut().enumerate() {
            let index = u32::try_from(i).expect("counter index fits u32");
            *value = stats.get(&index, 0)?.iter().sum();
        }
        Ok(Counters(values))
    }
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, XdpError> {
    ebpf.program_mut(PROGRAM_NAME)
        .ok_or(XdpError::MissingProgram)?
        .try_into()
        .map_err(XdpError::Program)
}

/// A snapshot of the global counters, summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters(pub [u64; Counter::COUNT]);

impl Default for Counters {
    fn default() -> Self {
        Counters([0; Counter::COUNT])
    }
}

impl Counters {
    /// The value of one counter.
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }

    /// How much each counter grew since `earlier`.
    #[must_use]
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut out = [0u64; Counter::COUNT];
        for (i, v) in out.iter_mut().enumerate() {
            *v = self.0[i].saturating_sub(earlier.0[i]);
        }
        Counters(out)
    }

    /// `(name, value)` pairs, for logs and the admin API.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Counter::ALL.iter().map(|(c, name)| (*name, self.get(*c)))
    }
}

#[cfg(test)]
mod tests {
    use aya_obj::Object;

    use super::*;

    /// Every map name user space relies on exists in the embedded object.
    #[test]
    fn object_has_every_map_and_the_program() {
        let obj = Object::parse(OBJECT).expect("embedded object parses");
        for name in maps::ALL {
            assert!(
                obj.maps.contains_key(*name),
                "map {name} missing from the object"
            );
        }
        assert!(obj.programs.contains_key(PROGRAM_NAME));
    }
}
