//! The allocator of mlb's binaries (mimalloc) and giving the memory it holds back to the OS.
//!
//! mimalloc keeps the pages a thread freed for a while (its purge delay) so that a busy thread
//! reuses them, and only purges pages whose delay has passed when the thread next allocates or
//! frees pages. A thread that goes quiet, e.g. a proxy thread whose connections all went idle,
//! never gets there: the buffers its connections freed stay resident. [`trim`] runs that
//! collection on the calling thread.
#![allow(
    unsafe_code,
    reason = "one call into mimalloc's C API, which the mimalloc crate does not wrap"
)]

unsafe extern "C" {
    /// mimalloc's collection of the calling thread's heap (`mimalloc.h`): frees its empty
    /// pages and purges, program-wide, the freed memory whose purge delay has passed (`force`:
    /// all of it, at once).
    fn mi_collect(force: bool);
}

/// Gives what the calling thread's mimalloc heap freed back to the OS, now (forced: waiting
/// for mimalloc's purge delay, 1 s, before a trim that itself comes every second would leave
/// an idle connection's freed buffers resident for up to 2 s). Cheap enough to run every
/// second on a busy thread: only wholly free pages are purged, and a busy thread takes new ones
/// back at the cost of a page fault each. Nothing to do, and harmless, on a thread that never
/// allocated through mimalloc.
pub fn trim() {
    // SAFETY: `mi_collect` takes no pointer and may be called from any thread at any time;
    // mimalloc is linked into every binary of this package (the `mimalloc` dependency).
    unsafe { mi_collect(true) }
}
