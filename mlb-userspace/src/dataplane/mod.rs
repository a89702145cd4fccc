//! Dataplanes: what turns the desired state into forwarding.
//!
//! - [`xdp`]: loads and attaches the XDP program and programs its maps (plain TCP/UDP services,
//!   forwarded in the kernel).
pub mod xdp;
