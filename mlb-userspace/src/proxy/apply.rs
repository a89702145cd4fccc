//! Applying [`HttpChange`]s to the running proxy, in small steps: net the changes, release the
//! backends that leave, recompile the services that changed into a new table, then certificates,
//! the table swap, listeners and health checks for the service ports concerned.
use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::{info, warn};

use super::{
    HttpProxy, ProxyError,
    balance::StatsRegistry,
    lock,
    router::{self, RouteIndex, RouteTable, Service},
};
use crate::{
    dataplane::HttpChange,
    health::{self, HealthTarget},
    model::{BackendId, HttpService, HttpServiceKey},
};

/// The services the proxy has been given, kept to apply changes to them.
#[derive(Default)]
pub(super) struct Current {
    /// The routed services (compiled) and the index the tables are made from.
    pub(super) routes: RouteIndex,
    /// Services not routed because their auth label is unusable, with why.
    rejected: BTreeMap<HttpServiceKey, (HttpService, String)>,
}

impl Current {
    /// The service of `key` as last given, routed or not.
    fn spec(&self, key: &HttpServiceKey) -> Option<&HttpService> {
        match self.routes.service(key) {
            Some(svc) => Some(&svc.spec),
            None => self.rejected.get(key).map(|(spec, _)| spec),
        }
    }

    /// The problems that stand whatever the batch: the services whose auth label is unusable.
    fn rejections(&self) -> impl Iterator<Item = ProxyError> + '_ {
        let error = |(key, (_, reason)): (&HttpServiceKey, &(HttpService, String))| {
            router::auth_error(key, reason.clone())
        };
        self.rejected.iter().map(error)
    }
}

/// The net change of each key (`None`: removed), the last change of a key winning.
type NetChanges<'a> = BTreeMap<&'a HttpServiceKey, Option<&'a Arc<HttpService>>>;

/// The changes that change something, each key once.
fn net_changes<'a>(current: &Current, changes: &'a [HttpChange]) -> NetChanges<'a> {
    let mut net = NetChanges::new();
    for change in changes {
        match change {
            HttpChange::Upsert(svc) => net.insert(&svc.key, Some(svc)),
            HttpChange::Remove(key) => net.insert(key, None),
        };
    }
    net.retain(|key, new| current.spec(key) != new.map(|n| &**n));
    net
}

/// Health targets to stop and to start.
#[derive(Default)]
struct HealthDelta {
    removed: Vec<BackendId>,
    added: Vec<HealthTarget>,
}

/// Releases the stats of backends leaving their service, before any is taken: one moving to
/// another service in this batch is kept by it, not forgotten. Stops the checks of the old
/// versions of changed services.
fn release_leaving(
    current: &Current,
    net: &NetChanges<'_>,
    registry: &StatsRegistry,
    health: &mut HealthDelta,
) {
    for (key, new) in net {
        let Some(old) = current.spec(key) else {
            continue;
        };
        let staying: HashSet<&BackendId> = new
            .map(|n| n.backends.iter().map(|b| &b.id).collect())
            .unwrap_or_default();
        // A rejected service (no route) has no slots and so no counters.
        let slots = current
            .routes
            .service(key)
            .map(|svc| &svc.selector.backends);
        for slot in slots.into_iter().flatten() {
            if !staying.contains(&slot.backend.id) {
                registry.release_slot(slot);
            }
        }
        if old.health_check.is_some() {
            health
                .removed
                .extend(old.backends.iter().map(|b| b.id.clone()));
        }
    }
}

/// Compiles the upserted services (a bad auth label leaves the service out, rejected) and
/// updates the route index. Returns the service ports whose service changed.
fn recompile(
    current: &mut Current,
    net: &NetChanges<'_>,
    registry: &StatsRegistry,
    health: &mut HealthDelta,
    errors: &mut Vec<ProxyError>,
) -> HashSet<u16> {
    let mut upserts = Vec::new();
    let mut removals = Vec::new();
    for (&key, &new) in net {
        let Some(spec) = new else {
            current.rejected.remove(key);
            removals.push(key.clone());
            continue;
        };
        health.added.extend(health::targets_of_http([&**spec]));
        let previous = current.routes.service(key).map(Arc::as_ref);
        match Service::compile(spec, registry, previous) {
            Ok(svc) => {
                current.rejected.remove(key);
                upserts.push(Arc::new(svc));
            }
            Err(reason) => {
                errors.push(router::auth_error(key, reason.clone()));
                let rejected = ((**spec).clone(), reason);
                current.rejected.insert(key.clone(), rejected);
                removals.push(key.clone());
            }
        }
    }
    if net.is_empty() {
        return HashSet::new();
    }
    current.routes.update(upserts, removals)
}

impl HttpProxy {
    /// Applies `changes`; see [`HttpProxy::apply_changes`].
    pub(super) fn apply_locked(
        &self,
        current: &mut Current,
        changes: &[HttpChange],
    ) -> Vec<ProxyError> {
        let guard = self.handle.enter();
        let net = net_changes(current, changes);
        let mut errors = Vec::new();
        let mut health = HealthDelta::default();
        let old_table = current.routes.table().clone();
        let started = Instant::now();
        let dirty_ports = {
            let registry = &self.registry;
            release_leaving(current, &net, registry, &mut health);
            let dirty = recompile(current, &net, registry, &mut health, &mut errors);
            registry.prune_released();
            dirty
        };
        let compile_time = started.elapsed();
        let compiled_rss = crate::stats::memory::rss_mb_if_big(net.len());
        let table = current.routes.table().clone();
        let mut ports: Vec<u16> = dirty_ports.iter().copied().collect();
        ports.sort_unstable();
        // Certificate files are read on the caller's runtime, not the proxy's: off a worker of
        // a multi-thread one first (`block_in_place`), at once on a thread of its own (the
        // control thread's current-thread runtime, which must not `block_in_place`).
        drop(guard);
        errors.extend(self.update_tls(&table, &ports));
        let _guard = self.handle.enter();
        lock(&self.health).update_targets(health.removed, health.added);
        if !net.is_empty() {
            self.shared.table.store(table.clone());
        }
        let started = Instant::now();
        errors.extend(self.update_listeners(&old_table, &table, &ports, &dirty_ports));
        let listeners_time = started.elapsed();
        for e in &errors {
            warn!(error = %e, "HTTP proxy configuration problem");
        }
        if !net.is_empty() {
            let services = current.routes.len();
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            info!(
                services,
                changed = net.len(),
                compile_ms = ms(compile_time),
                listeners_ms = ms(listeners_time),
                compiled_rss_mb = compiled_rss,
                rss_mb = crate::stats::memory::rss_mb_if_big(net.len()),
                "HTTP routing table swapped"
            );
        }
        // The standing problems: the auth labels rejected (this batch's among them), then the
        // rest of this batch's.
        let batch = errors
            .into_iter()
            .filter(|e| !matches!(e, ProxyError::Auth { .. }));
        current.rejections().chain(batch).collect()
    }

    /// Certificates and TLS options of the service ports whose service changed.
    fn update_tls(&self, table: &RouteTable, ports: &[u16]) -> Vec<ProxyError> {
        let tls_service = |port| {
            table
                .lookup_port(port)
                .filter(|s| !s.spec.ssl_certs.is_empty())
                .cloned()
        };
        let services: Vec<_> = ports.iter().map(|&p| (p, tls_service(p))).collect();
        let certs = &self.shared.certs;
        let mut errors = certs.update_service_certs(
            services
                .iter()
                .map(|(p, s)| (*p, s.as_ref().map(|s| s.spec.ssl_certs.clone()))),
        );
        errors.extend(
            certs.update_port_options(
                services
                    .iter()
                    .map(|(p, s)| (*p, s.as_ref().map(|s| s.spec.tls.clone()))),
            ),
        );
        errors
            .into_iter()
            .map(|e| name_the_label(e, &services))
            .collect()
    }

    /// Opens, moves and closes the listeners of the service ports whose service changed, and
    /// retries the ones that could not be bound before.
    fn update_listeners(
        &self,
        old_table: &RouteTable,
        table: &RouteTable,
        ports: &[u16],
        dirty_ports: &HashSet<u16>,
    ) -> Vec<ProxyError> {
        let bind_ip = self.shared.config.service_bind_ip;
        let addr = |s: &Arc<Service>| {
            SocketAddr::new(s.spec.bind_addr.unwrap_or(bind_ip), s.spec.service_port)
        };
        let mut listeners = lock(&self.listeners);
        let mut errors = Vec::new();
        for &port in ports {
            let old = old_table.lookup_port(port).map(addr);
            let new = table.lookup_port(port);
            let new = new.map(|s| (addr(s), s.spec.key.app_id.as_str()));
            errors.extend(listeners.update_service_port(&self.shared, old, new));
        }
        errors.extend(listeners.retry_failed(&self.shared, dirty_ports));
        listeners.start_pending(&self.shared);
        errors
    }
}

/// A certificate error of a file an app's `HAPROXY_{n}_SSL_CERT` names, said as such (the
/// operator must know which app and label to fix).
fn name_the_label(
    error: ProxyError,
    services: &[(u16, Option<std::sync::Arc<super::router::Service>>)],
) -> ProxyError {
    let ProxyError::Cert { path, reason } = error else {
        return error;
    };
    let owner = services
        .iter()
        .filter_map(|(_, s)| s.as_ref())
        .find(|s| s.spec.ssl_certs.iter().any(|c| path.starts_with(c)));
    match owner {
        Some(s) => ProxyError::LabelCert {
            app_id: s.spec.key.app_id.clone(),
            port_index: s.spec.key.port_index,
            path,
            reason,
        },
        None => ProxyError::Cert { path, reason },
    }
}
