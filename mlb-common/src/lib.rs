//! The kernel ↔ user-space ABI of mlb.
//!
//! Everything the XDP program (`mlb-ebpf`) and the agent (`mlb-userspace`) must agree on lives
//! here: map names, sizes, and the `#[repr(C)]` keys and values stored in maps. Types carry
//! explicit padding and no `bool`, so their layout is the same on both sides and `aya::Pod` is
//! sound.
#![no_std]

pub mod consts;
pub mod maps;
pub mod stats;
