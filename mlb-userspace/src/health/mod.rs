//! Active health checks (marathon-lb's `check inter <interval> fall <n>` from the app's Marathon
//! `healthChecks`): TCP connect or HTTP `GET path` answering 2xx/3xx.
//!
//! Not tied to one dataplane: the HTTP proxy and the L4 dataplanes (through the controller) hand
//! [`HealthChecker::set_targets`] their backends and read the set of backends out of rotation
//! from the `watch` channel. A backend leaves rotation after `max_consecutive_failures` failed
//! checks in a row and comes back at its first passing check. Backends start healthy: an
//! unknown state fails open.
//!
//! - [`HealthTarget`] and the `targets_of_*` helpers: what to check, from the model's services;
//! - [`HealthChecker`]: one check loop per target, the unhealthy set published;
//! - [`ProbeError`]: why one check failed.
use std::{collections::HashSet, net::SocketAddr};

use crate::model::{Backend, BackendId, HealthCheck, HttpService, L4Service};

mod checker;
mod probe;

pub use checker::HealthChecker;
pub use probe::ProbeError;

/// Backends currently out of rotation.
pub type UnhealthySet = HashSet<BackendId>;

/// One backend to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthTarget {
    /// The backend; its state is published under this id.
    pub id: BackendId,
    /// Address probed: the backend's own address (`HealthCheck::port_index` is resolved by
    /// whoever builds the target; [`targets_of_http`] and [`targets_of_l4`] use the backend's
    /// address as it is).
    pub addr: SocketAddr,
    /// What to check and how often.
    pub check: HealthCheck,
}

/// Targets for every backend of HTTP services that define a health check.
pub fn targets_of_http<'a>(
    services: impl IntoIterator<Item = &'a HttpService>,
) -> Vec<HealthTarget> {
    targets(
        services
            .into_iter()
            .map(|s| (s.health_check.as_ref(), s.backends.as_slice())),
    )
}

/// Targets for every backend of L4 services that define a health check.
pub fn targets_of_l4<'a>(services: impl IntoIterator<Item = &'a L4Service>) -> Vec<HealthTarget> {
    targets(
        services
            .into_iter()
            .map(|s| (s.health_check.as_ref(), s.backends.as_slice())),
    )
}

fn targets<'a>(
    services: impl Iterator<Item = (Option<&'a HealthCheck>, &'a [Backend])>,
) -> Vec<HealthTarget> {
    services
        .filter_map(|(hc, backends)| hc.map(|hc| (hc, backends)))
        .flat_map(|(hc, backends)| {
            backends.iter().map(|b| HealthTarget {
                id: b.id.clone(),
                addr: b.addr,
                check: hc.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
