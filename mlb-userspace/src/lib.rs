//! mlb: a Marathon load balancer with an XDP datapath for TCP/UDP and a hyper + rustls proxy for
//! HTTP and TLS.
//!
//! Data flows one way:
//!
//! ```text
//! Marathon ─/v2/apps, /v2/events─▶ marathon (watcher: parsed AppList updates, AppStore)
//!          ─▶ model (pure: DesiredState, explanations; full or incremental pass → changed keys)
//!          ─▶ controller (changed keys → typed L4Change / HttpChange)
//!          ─▶ dataplane::Dataplane::apply
//!               ├─ dataplane::xdp_l4 (XDP maps) or dataplane::userspace_l4 (tokio)
//!               └─ proxy (hyper + rustls routing table, swapped whole)
//! health: active checks, used by the proxy and (through the controller) the L4 dataplanes
//! admin: marathon-lb's endpoints, explain, status, metrics (reads what the controller publishes)
//! stats: HAProxy-shaped stats (CSV, HTML page) from the desired state and the dataplanes' counters
//! zdd: `mlb zdd`, marathon-lb's blue/green deployment driven by those stats
//! ```
//!
//! `options` turns the command line into each part's own configuration; `secret` keeps
//! credentials out of logs. The `mlb` binary (`src/bin/mlb/`) wires these modules together;
//! integration tests in `tests/` use them directly.
#![deny(unsafe_code)]

pub mod admin;
pub mod backend_setup;
pub mod compat;
pub mod controller;
pub mod dataplane;
pub mod health;
pub mod logging;
pub mod marathon;
pub mod model;
pub mod options;
pub mod overload;
pub mod proxy;
pub mod secret;
pub mod static_config;
pub mod stats;
pub mod timefmt;
pub mod zdd;
