//! Clears and copies of small fixed-size values on the per-packet path, as word moves.
//!
//! Left to itself, the compiler turns a 64-byte struct clear, or an address copy between two
//! map values it cannot prove apart, into a call of `memset` or `memmove`, which for BPF are
//! loops of one byte per iteration: clearing the `bpf_fib_lookup` request alone took about 320
//! instructions, more than the rest of an established flow's packet. Volatile accesses keep
//! these as the word loads and stores they are written as.

/// Zeroes `value` one 32-bit word at a time.
///
/// # Safety
/// Every bit pattern of zeros must be a valid `T`, and `T`'s size a multiple of 4 with at least
/// 4-byte alignment.
#[inline(always)]
pub unsafe fn zero<T>(value: &mut T) {
    const { assert!(size_of::<T>().is_multiple_of(4) && align_of::<T>() >= 4) };
    let words = (value as *mut T).cast::<u32>();
    for i in 0..size_of::<T>() / 4 {
        // SAFETY: within `value`, aligned (asserted above).
        unsafe { words.add(i).write_volatile(0) };
    }
}

/// Copies an IPv6-sized address (IPv4 in the first word) word by word.
#[inline(always)]
pub fn copy_addr(dst: &mut [u32; 4], src: &[u32; 4]) {
    for (d, s) in dst.iter_mut().zip(src) {
        // SAFETY: both are references to valid, aligned words.
        unsafe { core::ptr::write_volatile(d, core::ptr::read_volatile(s)) };
    }
}
