//! The kernel ↔ user-space ABI of mlb.
//!
//! Everything the XDP program (`mlb-ebpf`) and the agent (`mlb-userspace`) must agree on lives
//! here: map names, sizes, the `#[repr(C)]` keys and values stored in maps, the verdicts and
//! counters, and the wire format of the packets ([`net`]). Types carry explicit padding and no
//! `bool`, so their layout is the same on both sides and `aya::Pod` is sound.
#![no_std]

pub mod consts;
pub mod ct;
pub mod encap;
pub mod hash;
pub mod maps;
pub mod net;
pub mod stats;
pub mod verdict;
