//! Batched reads and deletes of the connection-tracking map (`BPF_MAP_LOOKUP_BATCH`,
//! `BPF_MAP_DELETE_BATCH`, Linux 5.6+): one system call per few thousand entries, where aya's
//! iterator makes two per entry and its `remove` one per key. The sweeper walks the whole table
//! every few seconds on the CPUs that also run the XDP program, so under connection churn (a
//! table of 100,000 entries and more) its per-entry cost is the datapath's.
use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

use mlb_common::maps::{FlowKey, NatEntry};

/// Entries per call (the lookup buffers: about 420 KiB).
const CHUNK: usize = 4096;

/// `enum bpf_cmd` values of the kernel UAPI.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The `batch` member of the kernel's `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Calls `f` with every entry of the map `fd`, a few thousand per system call. An error before
/// the first entry (a kernel without batch operations) leaves `f` uncalled, so the caller can
/// walk the map another way; one later ends the walk early.
pub fn for_each_entry(
    fd: BorrowedFd<'_>,
    mut f: impl FnMut(&FlowKey, &NatEntry),
) -> io::Result<()> {
    let mut keys = vec![FlowKey::default(); CHUNK];
    let mut values = vec![NatEntry::default(); CHUNK];
    // The position in the table: opaque to user space (a bucket index for hash maps).
    let (mut from, mut next) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw const from as u64 },
            out_batch: &raw mut next as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let got = (attr.count as usize).min(CHUNK);
        keys[..got]
            .iter()
            .zip(&values[..got])
            .for_each(|(k, v)| f(k, v));
        match result {
            Ok(()) => {}
            // The end of the table.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        }
        first = false;
        from = next;
    }
}

/// Deletes `keys` from the map `fd`; returns how many were there. Keys already gone are skipped.
pub fn delete_keys(fd: BorrowedFd<'_>, mut keys: &[FlowKey]) -> io::Result<usize> {
    let mut deleted = 0;
    while !keys.is_empty() {
        let take = keys.len().min(CHUNK);
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            count: take as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        let done = (attr.count as usize).min(take);
        deleted += done;
        match result {
            Ok(()) => keys = &keys[take..],
            // The key after the `done` deleted ones is gone already (the program or the LRU
            // took it): skip it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => keys = &keys[done + 1..],
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// One `bpf(2)` batch command.
#[expect(
    unsafe_code,
    reason = "bpf(2) batch commands have no safe wrapper in aya"
)]
fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid `bpf_attr` batch member for the size passed; the buffers it
    // points to hold `count` keys and values of the map's sizes and outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
