//! The XDP datapath pinned in bpffs, so that it outlives the agent: a restarted, crashed or
//! upgraded `mlb` finds the program still forwarding with its conntrack, services, backends and
//! Maglev tables, adopts them, and replaces the program in place once it has resynced.
//!
//! Layout of `--bpffs-dir` (default [`DEFAULT_BPFFS_DIR`]):
//!
//! ```text
//! <dir>/abi-<N>/maps/<MAP>      every map of the program (MLB_CONNTRACK, MLB_SERVICES, ...)
//! <dir>/abi-<N>/links/<iface>   the bpf link attaching the program to an interface
//! <dir>/abi-<N>/program         the program the links run
//! ```
//!
//! `N` is [`ABI_VERSION`]: a map written by another layout is never read. An agent finding a
//! different `abi-*` directory refuses to start and says how to replace the datapath. While an
//! agent uses the directory it holds a lock on it, so a second agent (or `mlb stop --detach`)
//! cannot take the same maps from under it; the kernel drops the lock when the agent dies,
//! `kill -9` included.
use std::{
    ffi::CString,
    fs::{self, File, TryLockError},
    io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::maps::MapInfo;
use mlb_common::{
    consts::ABI_VERSION,
    maps::{
        self, Backend, Config, FlowKey, FlowStats, NatEntry, RingElem, ServiceKey, ServiceValue,
    },
};
use tracing::info;

/// Where the datapath is pinned unless `--bpffs-dir` says otherwise.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/mlb";

/// Where bpffs is usually mounted; mlb mounts it there when it is not.
const SYS_BPFFS: &str = "/sys/fs/bpf";

/// `statfs.f_type` of a bpf filesystem (`BPF_FS_MAGIC` in linux/magic.h).
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;

/// What went wrong with the pinned datapath.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("--bpffs-dir {dir}: {reason}")]
    Bpffs { dir: PathBuf, reason: String },
    #[error(
        "--bpffs-dir {dir} is in use by another running mlb (it holds the directory's lock): \
         stop that agent first, or give this one a --bpffs-dir of its own"
    )]
    Busy { dir: PathBuf },
    #[error(
        "the XDP datapath pinned in {dir} has the map layout {found}, this mlb has abi-{ours}, \
         so it cannot adopt it. Run `mlb stop --detach --bpffs-dir {dir}` (TCP/UDP traffic \
         through mlb stops until the new agent is up), then start this mlb"
    )]
    AbiMismatch {
        dir: PathBuf,
        found: String,
        ours: u32,
    },
    #[error(
        "pinned map {map} in {dir} has {what} {found}, this mlb expects {expected} (its layout \
         changed): run `mlb stop --detach --bpffs-dir {root}`, then start this mlb"
    )]
    MapLayout {
        map: &'static str,
        dir: PathBuf,
        root: PathBuf,
        what: &'static str,
        found: u32,
        expected: u32,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The pin directory of one agent, locked for as long as it lives.
#[derive(Debug)]
pub struct PinDir {
    root: PathBuf,
    abi: PathBuf,
    adopting: bool,
    /// Held open: the lock lasts as long as the file.
    _lock: File,
}

impl PinDir {
    /// Opens (creating it, and mounting bpffs on /sys/fs/bpf if needed) and locks `root`.
    /// Refuses a directory another agent holds, or one holding another map layout.
    pub fn open(root: &Path) -> Result<PinDir, PinError> {
        ensure_bpffs(root)?;
        fs::create_dir_all(root).map_err(io_err(root))?;
        let lock = lock(root)?;
        let abi_name = format!("abi-{ABI_VERSION}");
        let others = entries(root)?
            .into_iter()
            // Only layout markers: other names may be the kernel's (a bpffs root has
            // `maps.debug` and `progs.debug`).
            .filter(|e| e.starts_with("abi-") && *e != abi_name)
            .collect::<Vec<_>>();
        if !others.is_empty() {
            return Err(PinError::AbiMismatch {
                dir: root.to_owned(),
                found: others.join(", "),
                ours: ABI_VERSION,
            });
        }
        let abi = root.join(abi_name);
        let adopting = abi.join("maps").join(maps::CONFIG).exists();
        for sub in ["maps", "links"] {
            let dir = abi.join(sub);
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        let pins = PinDir {
            root: root.to_owned(),
            abi,
            adopting,
            _lock: lock,
        };
        if adopting {
            pins.check_map_layouts()?;
        }
        Ok(pins)
    }

    /// The directory given (`--bpffs-dir`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether a previous agent's maps are there to adopt.
    pub fn adopting(&self) -> bool {
        self.adopting
    }

    /// Where map `name` is pinned.
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.abi.join("maps").join(name)
    }

    /// Where the link attaching the program to `iface` is pinned.
    pub fn link_path(&self, iface: &str) -> PathBuf {
        self.abi.join("links").join(iface)
    }

    /// Where the program is pinned.
    pub fn program_path(&self) -> PathBuf {
        self.abi.join("program")
    }

    /// Interfaces with a pinned link.
    pub fn pinned_links(&self) -> Result<Vec<String>, PinError> {
        entries(&self.abi.join("links"))
    }

    /// Removes every pin (`--detach-on-exit`) while still holding the lock.
    pub fn remove(self) -> Result<Vec<String>, PinError> {
        remove_locked(&self.root)
    }

    /// Compares the key and value sizes of the pinned maps with this build's: a layout change
    /// that forgot to bump [`ABI_VERSION`] is refused, never read with the wrong types.
    fn check_map_layouts(&self) -> Result<(), PinError> {
        for &(map, key, value) in LAYOUTS {
            let path = self.map_path(map);
            if !path.exists() {
                continue;
            }
            let info = MapInfo::from_pin(&path).map_err(|e| PinError::Io {
                path: path.clone(),
                source: io::Error::other(e),
            })?;
            let sizes = [
                ("key size", info.key_size(), key),
                ("value size", info.value_size(), value),
            ];
            for (what, found, expected) in sizes {
                if found != expected {
                    return Err(PinError::MapLayout {
                        map,
                        dir: self.abi.clone(),
                        root: self.root.clone(),
                        what,
                        found,
                        expected,
                    });
                }
            }
        }
        Ok(())
    }
}

const fn size<T>() -> u32 {
    size_of::<T>() as u32
}

/// Key and value sizes of the maps whose types user space knows.
const LAYOUTS: &[(&str, u32, u32)] = &[
    (maps::STATS, size::<u32>(), size::<u64>()),
    (maps::SERVICES, size::<ServiceKey>(), size::<ServiceValue>()),
    (maps::RINGS, size::<u32>(), size::<RingElem>()),
    (maps::BACKENDS, size::<u32>(), size::<Backend>()),
    (maps::CONNTRACK, size::<FlowKey>(), size::<NatEntry>()),
    (maps::CONFIG, size::<u32>(), size::<Config>()),
    (maps::SERVICE_STATS, size::<u32>(), size::<FlowStats>()),
    (maps::BACKEND_STATS, size::<u32>(), size::<FlowStats>()),
];

/// Removes the pinned datapath (`mlb stop --detach`): unpinning its links detaches the program
/// from every interface, and the program and maps go with their last pin. Refused while an
/// agent holds the directory. Returns the interfaces it was attached to.
pub fn remove(root: &Path) -> Result<Vec<String>, PinError> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    let _lock = lock(root)?;
    remove_locked(root)
}

fn remove_locked(root: &Path) -> Result<Vec<String>, PinError> {
    let mut ifaces = Vec::new();
    for abi in entries(root)? {
        let links = root.join(&abi).join("links");
        if links.is_dir() {
            ifaces.extend(entries(&links)?);
        }
    }
    fs::remove_dir_all(root).map_err(io_err(root))?;
    Ok(ifaces)
}

/// Names in `dir`.
fn entries(dir: &Path) -> Result<Vec<String>, PinError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

fn lock(root: &Path) -> Result<File, PinError> {
    let file = File::open(root).map_err(io_err(root))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(PinError::Busy {
            dir: root.to_owned(),
        }),
        Err(TryLockError::Error(e)) => Err(io_err(root)(e)),
    }
}

/// Makes sure `root` is on a bpf filesystem: mounts one on /sys/fs/bpf when `root` is under it
/// and nothing is mounted there (as systemd does at boot); anywhere else the operator decides.
fn ensure_bpffs(root: &Path) -> Result<(), PinError> {
    let existing = root
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if fs_type(existing)? == BPF_FS_MAGIC {
        return Ok(());
    }
    let sys = Path::new(SYS_BPFFS);
    if root.starts_with(sys) && sys.is_dir() {
        mount_bpffs(sys)?;
        info!(path = SYS_BPFFS, "mounted a bpf filesystem");
        return Ok(());
    }
    Err(PinError::Bpffs {
        dir: root.to_owned(),
        reason: format!(
            "{} is not on a bpf filesystem: mount one (`mount -t bpf bpf <dir>`) or choose a \
             directory under {SYS_BPFFS}",
            existing.display()
        ),
    })
}

fn c_path(path: &Path) -> Result<CString, PinError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| io_err(path)(io::Error::other(e)))
}

#[expect(
    unsafe_code,
    reason = "statfs(2) has no safe wrapper in std; it only writes the struct we pass"
)]
fn fs_type(path: &Path) -> Result<u32, PinError> {
    let c = c_path(path)?;
    // SAFETY: an all-zero statfs is a valid value of this plain C struct.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a pointer to a statfs on our stack.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut buf) };
    if rc != 0 {
        return Err(io_err(path)(io::Error::last_os_error()));
    }
    // f_type's integer type differs between libc targets; every filesystem magic fits 32 bits
    // (one that does not is no bpffs).
    Ok(u32::try_from(buf.f_type).unwrap_or(0))
}

#[expect(unsafe_code, reason = "mount(2) has no safe wrapper in std")]
fn mount_bpffs(target: &Path) -> Result<(), PinError> {
    let c = c_path(target)?;
    let fstype = c"bpf";
    // SAFETY: NUL-terminated strings that outlive the call, no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            c.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(PinError::Bpffs {
            dir: target.to_owned(),
            reason: format!("mounting a bpf filesystem: {}", io::Error::last_os_error()),
        });
    }
    Ok(())
}
