//! The model: pure functions from Marathon apps (or a static config) to the [`DesiredState`] the
//! dataplanes implement. No async, no I/O, no clock reads: everything here is table-tested.
//!
//! - [`labels`]: `HAPROXY_*` labels → typed settings; [`ports`]: service ports and task
//!   endpoints; [`groups`]: `--group` matching; [`health`]: task state, readiness, Marathon
//!   health with a last-known cache; [`deployment`]: zero-downtime deployment groups;
//!   [`explain`]: why each app is (not) exposed; [`tuning`]: timeouts, header edits and limits
//!   from `MLB_{n}_*` labels and the HAProxy directives of template labels ([`directives`]).
//! - One service port goes through small steps (`port_steps`): its mode and health check
//!   (`mode`), its backends ([`backends`]), then its port claim and services.
//! - Entry points: [`desired_state`] and [`explain::explain`].
use std::{collections::BTreeSet, net::IpAddr, time::SystemTime};

use crate::marathon::types::{App, AppList};

pub mod backends;
pub(crate) mod build;
pub mod deployment;
pub mod directives;
pub mod explain;
pub mod explanations;
pub mod groups;
pub mod health;
pub mod incremental;
pub mod labels;
mod mode;
pub(crate) mod port_steps;
pub mod ports;
pub mod state;
pub mod tuning;
pub mod tuning_labels;

#[cfg(test)]
mod tests;

pub use build::{ModelError, ModelOptions};
pub use health::HealthCache;
pub use state::*;
pub use tuning::Tuning;

/// Computes what mlb should expose from Marathon's apps. Invalid apps (bad JSON, labels, ports)
/// become [`Rejected`] entries naming the app and field; they never affect other apps. Returns
/// the health cache to pass to the next call (it keeps the last known health of each task, so
/// a Marathon leader failover, which drops every health result, does not empty the backends).
/// `now` only ages the cache.
pub fn desired_state(
    apps: &AppList,
    opts: &ModelOptions,
    health: &HealthCache,
    now: SystemTime,
) -> (DesiredState, HealthCache) {
    let eval = build::evaluate(&apps.refs(), opts, health, now);
    (eval.state, eval.health)
}

/// Agent host names that are not addresses: the caller resolves them (DNS is I/O) and passes
/// the results in [`ModelOptions::host_addrs`].
pub fn hosts_to_resolve<'a>(apps: impl IntoIterator<Item = &'a App>) -> BTreeSet<String> {
    apps.into_iter()
        .filter(|a| ports::networking_mode(a) != ports::NetworkingMode::Container)
        .flat_map(|a| &a.tasks)
        .filter(|t| !t.host.is_empty() && t.host.parse::<IpAddr>().is_err())
        .map(|t| t.host.to_string())
        .collect()
}
