//! The process's own memory, for the logs of full syncs: at 10,000 apps a full read, the model
//! and the dataplanes each hold tens of megabytes, and the resident size after each step says
//! which one grew.

/// Resident set size in MiB (`/proc/self/statm`); 0 where it cannot be read (not Linux).
pub fn rss_mb() -> f64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0.0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // Pages of 4 KiB: the page size of every platform mlb is built for (x86-64, aarch64 Linux
    // with 4 KiB pages); statm counts in pages.
    (pages * 4096) as f64 / f64::from(1u32 << 20)
}

/// How the process's allocator gives freed memory back to the OS at once, set by the binary
/// (which chooses the allocator; the library has no `unsafe`).
static RELEASE_FREED: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets what [`release_freed`] does (once; later calls are ignored).
pub fn set_release_freed(release: fn()) {
    let _ = RELEASE_FREED.set(release);
}

/// Gives the memory freed so far back to the OS at once. mlb's allocator (mimalloc) keeps freed
/// pages for a second before returning them, and a full sync of 10,000 apps frees tens of
/// megabytes (the `/v2/apps` body, the parse's scratch, the previous state) in less than that:
/// without this they stay resident beside what the next step allocates (at 10,000 apps the
/// RSS after the parse is 70 MB with it, 124 MB without). Costs a walk of the allocator's
/// heap: for full syncs, not for each event.
pub fn release_freed() {
    if let Some(release) = RELEASE_FREED.get() {
        release();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rss_grows_with_touched_memory() {
        let before = super::rss_mb();
        assert!(before > 0.0);
        // 64 MiB written, so really resident.
        let block = vec![1u8; 64 << 20];
        let after = super::rss_mb();
        assert!(after - before > 32.0, "{before} → {after}");
        drop(block);
    }
}
