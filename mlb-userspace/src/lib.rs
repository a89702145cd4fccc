//! mlb: a Marathon load balancer with an XDP datapath for TCP/UDP and a hyper + rustls proxy for
//! HTTP and TLS.
//!
//! Data flows one way: Marathon → model (pure) → diff → dataplanes. The `mlb` binary
//! (`main.rs`) wires these modules together; integration tests in `tests/` use them directly.
#![deny(unsafe_code)]

pub mod admin;
pub mod controller;
pub mod dataplane;
pub mod diff;
pub mod logging;
pub mod marathon;
pub mod model;
pub mod options;
pub mod proxy;
pub mod static_config;
