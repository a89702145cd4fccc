//! Incremental Internet checksum updates (RFC 1624: HC' = ~(~HC + ~m + m')).
//!
//! Values are the raw 16-bit words as loaded from the packet: one's-complement sums are the same
//! whichever byte order every word is read in, so no byte swapping is needed.

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum as u16
}

/// Checksum after one 16-bit word changed from `old` to `new`.
#[inline(always)]
pub fn replace2(csum: u16, old: u16, new: u16) -> u16 {
    let sum = u32::from(!csum) + u32::from(!old) + u32::from(new);
    !fold(sum)
}

/// Checksum after one 32-bit word changed from `old` to `new`.
#[inline(always)]
pub fn replace4(csum: u16, old: u32, new: u32) -> u16 {
    let sum = u32::from(!csum)
        + u32::from(!(old as u16))
        + u32::from(!((old >> 16) as u16))
        + u32::from(new as u16)
        + u32::from((new >> 16) as u16);
    !fold(sum)
}

/// The one's-complement sum of several word changes (RFC 1624's `~m + m'` terms), for when the
/// same changes are covered by more than one checksum (a quoted packet's addresses count in its
/// own checksums and in the ICMP checksum around it).
#[derive(Clone, Copy)]
pub struct Delta(u32);

impl Delta {
    #[inline(always)]
    pub fn new() -> Delta {
        Delta(0)
    }

    /// Records that one 16-bit word changed from `old` to `new`.
    #[inline(always)]
    pub fn word2(&mut self, old: u16, new: u16) {
        self.0 = u32::from(fold(self.0)) + u32::from(!old) + u32::from(new);
    }

    /// `csum` after the recorded changes.
    #[inline(always)]
    pub fn apply(self, csum: u16) -> u16 {
        !fold(u32::from(!csum) + u32::from(fold(self.0)))
    }
}
