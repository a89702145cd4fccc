//! Empty library target: lets `cargo` treat `mlb-ebpf` as a normal dependency of
//! `mlb-userspace` (for rebuild tracking); the program itself is the `mlb-ebpf` binary.
#![no_std]
