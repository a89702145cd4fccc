//! Counting into the per-CPU statistics arrays.
use mlb_common::stats::Counter;

use crate::maps::{BACKEND_STATS, SERVICE_STATS, STATS};

/// Adds one to `counter` on this CPU. Per-CPU slots need no atomic operation.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = STATS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer comes from the map lookup and is valid for this CPU.
        unsafe { *slot += 1 };
    }
}

/// Accounts one forwarded packet of `bytes` to a service slot and a backend.
#[inline(always)]
pub fn count_flow(service_slot: u32, backend: u32, bytes: u64, new_flow: bool) {
    let new = u64::from(new_flow);
    if let Some(s) = SERVICE_STATS.get_ptr_mut(service_slot) {
        // SAFETY: per-CPU element from the map lookup.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
            (*s).new_flows += new;
        }
    }
    if let Some(b) = BACKEND_STATS.get_ptr_mut(backend) {
        // SAFETY: per-CPU element from the map lookup.
        unsafe {
            (*b).packets += 1;
            (*b).bytes += bytes;
            (*b).new_flows += new;
        }
    }
}

/// Accounts a new flow dropped for want of a SNAT port to its service slot and backend, so the
/// agent can name them.
#[inline(always)]
pub fn count_snat_exhausted(service_slot: u32, backend: u32) {
    if let Some(s) = SERVICE_STATS.get_ptr_mut(service_slot) {
        // SAFETY: per-CPU element from the map lookup.
        unsafe { (*s).snat_exhausted += 1 };
    }
    if let Some(b) = BACKEND_STATS.get_ptr_mut(backend) {
        // SAFETY: per-CPU element from the map lookup.
        unsafe { (*b).snat_exhausted += 1 };
    }
}
