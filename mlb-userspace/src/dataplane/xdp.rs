//! Loading, attaching and reading the XDP program.
//!
//! The object is built from `mlb-ebpf` by `build.rs` and embedded in the binary, so the agent and
//! its program always match.
//!
//! Two ways to hold the program:
//! - [`XdpProgram::load`]: maps and links owned by this process; dropping it detaches the program
//!   from every interface (tests, tools).
//! - [`XdpProgram::load_pinned`] (`mlb run`): maps, links and program pinned in a [`PinDir`], so
//!   they outlive the agent and traffic keeps flowing while it restarts. The next agent loads
//!   its program over the same maps and adopts the pinned links, which keep running the previous
//!   program until [`XdpProgram::replace_adopted`] switches them atomically (`bpf_link_update`).
use std::{fs, os::fd::AsFd as _, path::PathBuf};

use aya::{
    Ebpf, Pod,
    maps::{HashMap, IterableMap as _, Map, MapData, MapError, PerCpuArray},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use mlb_common::{
    consts::{CT_MAX_ENTRIES, DEFAULT_RING_SIZE, ring_map_entries},
    maps,
    stats::Counter,
};
use tracing::{info, warn};

use super::xdp_pin::{PinDir, PinError};

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

/// The embedded XDP object (`mlb version` prints its hash; empty in `AYA_BUILD_SKIP` builds).
pub fn embedded_object() -> &'static [u8] {
    OBJECT
}

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
    #[error("XDP configuration: at most {max} --snat-addr per address family")]
    TooManySnatAddrs { max: usize },
    #[error("XDP configuration: --snat-ports {first}-{last}: need 1 <= first <= last")]
    SnatPorts { first: u16, last: u16 },
    #[error("XDP configuration: {0}")]
    TableSize(#[from] crate::dataplane::maglev::MaglevError),
    #[error("XDP redirect map: inserting ifindex {ifindex}: {source}")]
    TxPort {
        ifindex: u32,
        #[source]
        source: aya::maps::xdp::XdpMapError,
    },
    #[error("adopting the pinned XDP link {path}: {source}")]
    AdoptLink {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("all {max} XDP {kind} slots are in use")]
    SlotsFull { kind: &'static str, max: u32 },
    #[error("no VIP to expose it on (give --vip, or a HAPROXY_{{n}}_BIND_ADDR)")]
    NoVip,
    #[error(
        "the pinned Maglev tables have {pinned} slots, --maglev-table-size asks for {wanted}: \
         start with --maglev-table-size {pinned}, or run `mlb stop --detach` first (TCP/UDP \
         traffic through mlb stops until the new agent is up)"
    )]
    PinnedTableSize { pinned: u32, wanted: u32 },
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error("pinning the XDP link of {iface} at {path}: {reason}")]
    PinLink {
        iface: String,
        path: PathBuf,
        reason: String,
    },
}

/// The loaded program and the interfaces it is attached to.
pub struct XdpProgram {
    ebpf: Ebpf,
    attached: Vec<(String, Attachment)>,
    /// Where maps, links and program are pinned (`load_pinned`).
    pins: Option<PinDir>,
}

/// How the program is attached to one interface.
enum Attachment {
    /// By a link this process owns: detached when the program is dropped.
    Owned(XdpLinkId),
    /// By a link pinned in bpffs, which outlives the process. `current` is false for a link
    /// adopted from a previous agent: it runs that agent's program until
    /// [`XdpProgram::replace_adopted`].
    Pinned { mode: AttachMode, current: bool },
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
        Self::load_object(opts, None)
    }

    /// Loads the embedded object over the maps pinned in `pins` (creating and pinning those
    /// that are not there yet): conntrack, services, backends and Maglev tables of a previous
    /// agent are kept as they are. A pinned map keeps the size it was created with.
    pub fn load_pinned(opts: LoadOptions, pins: PinDir) -> Result<Self, XdpError> {
        let mut program = Self::load_object(opts, Some(pins))?;
        if program.pins.as_ref().is_some_and(|p| !p.adopting()) {
            program.pin_program()?;
        }
        Ok(program)
    }

    fn load_object(opts: LoadOptions, pins: Option<PinDir>) -> Result<Self, XdpError> {
        let mut loader = aya::EbpfLoader::new();
        loader
            .map_max_entries(maps::RINGS, ring_map_entries(opts.ring_size))
            .map_max_entries(maps::CONNTRACK, opts.conntrack_size);
        if let Some(pins) = &pins {
            for name in maps::ALL {
                loader.map_pin_path(name, pins.map_path(name));
            }
        }
        let mut ebpf = loader.load(OBJECT)?;
        for name in maps::ALL {
            if ebpf.map(name).is_none() {
                return Err(XdpError::MissingMap(name));
            }
        }
        program_mut(&mut ebpf)?.load()?;
        Ok(Self {
            ebpf,
            attached: Vec::new(),
            pins,
        })
    }

    /// The pin directory, when the program is pinned.
    pub fn pins(&self) -> Option<&PinDir> {
        self.pins.as_ref()
    }

    /// Pins this process's program (replacing a previous agent's pin).
    fn pin_program(&mut self) -> Result<(), XdpError> {
        let Some(path) = self.pins.as_ref().map(PinDir::program_path) else {
            return Ok(());
        };
        remove_pin(&path)?;
        program_mut(&mut self.ebpf)?
            .pin(&path)
            .map_err(|e| XdpError::PinLink {
                iface: "(program)".into(),
                path,
                reason: e.to_string(),
            })
    }

    /// Attaches the program to `iface`. Native mode is the fast path; skb (generic) mode works
    /// on any device.
    ///
    /// Pinned, a link a previous agent pinned for `iface` is adopted as it is (still running
    /// that agent's program, see [`XdpProgram::replace_adopted`]); otherwise a new link is
    /// created and pinned.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<(), XdpError> {
        let Some(pins) = &self.pins else {
            let link = self.attach_link(iface, mode)?;
            self.attached
                .push((iface.to_owned(), Attachment::Owned(link)));
            return Ok(());
        };
        let path = pins.link_path(iface);
        let current = if pins.adopting() && path.exists() {
            info!(
                iface,
                "adopted the pinned XDP link: the running program keeps forwarding"
            );
            false
        } else {
            remove_pin(&path)?;
            self.attach_pinned(iface, mode, path)?;
            true
        };
        self.attached
            .push((iface.to_owned(), Attachment::Pinned { mode, current }));
        Ok(())
    }

    /// A new link of this program on `iface`, pinned at `path`.
    fn attach_pinned(
        &mut self,
        iface: &str,
        mode: AttachMode,
        path: PathBuf,
    ) -> Result<(), XdpError> {
        let id = self.attach_link(iface, mode)?;
        let link = program_mut(&mut self.ebpf)?.take_link(id)?;
        let pin_error = |reason: String| XdpError::PinLink {
            iface: iface.to_owned(),
            path: path.clone(),
            reason,
        };
        let fd = FdLink::try_from(link).map_err(|e| {
            pin_error(format!(
                "the kernel attached XDP without a bpf link (Linux >= 5.9 needed): {e}"
            ))
        })?;
        let _pinned: PinnedLink = fd.pin(&path).map_err(|e| pin_error(e.to_string()))?;
        Ok(())
    }

    /// Switches every adopted link to this process's program, each in one atomic
    /// `bpf_link_update` (no packet meets an interface without a program), then pins this
    /// program. A link that no longer works (its interface was recreated meanwhile) is replaced
    /// by a new one. Returns the interfaces switched.
    pub fn replace_adopted(&mut self) -> Result<Vec<String>, XdpError> {
        let Some(pins) = &self.pins else {
            return Ok(Vec::new());
        };
        let adopted: Vec<(String, AttachMode, PathBuf)> = self
            .attached
            .iter()
            .filter_map(|(iface, a)| match a {
                Attachment::Pinned {
                    mode,
                    current: false,
                } => Some((iface.clone(), *mode, pins.link_path(iface))),
                _ => None,
            })
            .collect();
        for (iface, mode, path) in &adopted {
            if let Err(e) = self.update_link(path) {
                warn!(
                    iface,
                    "the adopted XDP link could not be updated ({e}); attaching anew"
                );
                remove_pin(path)?;
                self.attach_pinned(iface, *mode, path.clone())?;
            }
            for (i, a) in &mut self.attached {
                if i == iface {
                    *a = Attachment::Pinned {
                        mode: *mode,
                        current: true,
                    };
                }
            }
        }
        self.pin_program()?;
        Ok(adopted.into_iter().map(|(iface, _, _)| iface).collect())
    }

    /// Points the link pinned at `path` to this program (`bpf_link_update`).
    fn update_link(&mut self, path: &PathBuf) -> Result<(), XdpError> {
        let fd: FdLink = PinnedLink::from_pin(path)
            .map_err(|source| XdpError::AdoptLink {
                path: path.clone(),
                source: Box::new(source),
            })?
            .into();
        let link = XdpLink::try_from(fd).map_err(|source: LinkError| XdpError::AdoptLink {
            path: path.clone(),
            source: Box::new(source),
        })?;
        let program = program_mut(&mut self.ebpf)?;
        let id = program.attach_to_link(link)?;
        // The link stays pinned; this process's descriptor of it is not needed any more.
        drop(program.take_link(id)?);
        Ok(())
    }

    /// Removes the pinned link of `iface`, which a previous agent attached and this one does not
    /// want: the kernel detaches it when its last reference goes.
    pub fn unpin_link(&self, iface: &str) -> Result<(), XdpError> {
        match &self.pins {
            Some(pins) => remove_pin(&pins.link_path(iface)),
            None => Ok(()),
        }
    }

    /// Detaches the program from every interface and removes every pin (`--detach-on-exit`).
    /// Returns the interfaces it was attached to.
    pub fn detach_all(mut self) -> Result<Vec<String>, XdpError> {
        let ifaces: Vec<String> = self.interfaces().map(str::to_owned).collect();
        for iface in &ifaces {
            self.detach(iface)?;
        }
        let pins = self.pins.take();
        drop(self);
        if let Some(pins) = pins {
            pins.remove()?;
        }
        Ok(ifaces)
    }

    fn attach_link(&mut self, iface: &str, mode: AttachMode) -> Result<XdpLinkId, XdpError> {
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
        Ok(link)
    }

    /// Detaches the program from `iface` (no-op if it is not attached there). A pinned link is
    /// unpinned: the kernel detaches it when its last reference goes.
    pub fn detach(&mut self, iface: &str) -> Result<(), XdpError> {
        if let Some(pos) = self.attached.iter().position(|(i, _)| i == iface) {
            match self.attached.remove(pos).1 {
                Attachment::Owned(link) => program_mut(&mut self.ebpf)?.detach(link)?,
                Attachment::Pinned { .. } => {
                    if let Some(pins) = &self.pins {
                        remove_pin(&pins.link_path(iface))?;
                    }
                }
            }
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

/// Removes the pin at `path`, if there is one.
fn remove_pin(path: &PathBuf) -> Result<(), XdpError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(PinError::Io {
            path: path.clone(),
            source: e,
        }
        .into()),
        _ => Ok(()),
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
