//! The routing table: which service a request goes to, built once per configuration and
//! swapped in whole. Pure (no I/O), so every marathon-lb routing rule is unit-tested here.
//!
//! - vhost frontends (`:80`, `:443`): Host (lowercase, port stripped) then `path_beg` prefixes,
//!   services ordered by `HAPROXY_{n}_BACKEND_WEIGHT` (highest first), equal weights in
//!   (app id, port index) order, as marathon-lb sorted its ACL blocks;
//! - `:9091`: the `X-Marathon-App-Id` header (case-insensitive), first service port of each app;
//! - service ports: the service bound to that port;
//! - `:443` passthrough: the ClientHello SNI of `MLB_{n}_TLS_PASSTHROUGH` services.
use std::{
    borrow::{Borrow, Cow},
    cmp::{Ordering, Reverse},
    collections::{BTreeMap, HashMap, HashSet},
    hash::{BuildHasher, Hash},
    sync::{Arc, OnceLock},
};

use prometheus_client::metrics::histogram::Histogram;

use super::{
    ProxyError,
    auth::Authenticator,
    balance::{BackendSlot, Selector, StatsRegistry},
};
use crate::{
    model::{HttpService, HttpServiceKey},
    stats::live::live,
};

/// One HTTP service as the proxy serves it. Compiled once per version of the service: a table
/// built after another service changed shares it.
#[derive(Debug)]
pub struct Service {
    /// What the model asked for.
    pub spec: Arc<HttpService>,
    /// Backend selection over the service's backends.
    pub selector: Selector,
    /// Basic auth, when `HAPROXY_{n}_AUTH` is set and valid.
    pub auth: Option<Arc<Authenticator>>,
    /// Path prefixes to match (`-i` removed), lowercased when `paths_ignore_case`.
    paths: Vec<String>,
    /// `HAPROXY_{n}_PATH` had `-i`: prefixes match case-insensitively.
    paths_ignore_case: bool,
    /// The vhosts, normalised ([`normalize_host`]), without duplicates: the table's keys.
    hosts: Vec<Arc<str>>,
    /// The app id, lowercase: the `:9091` key.
    app_key: Arc<str>,
    /// marathon-lb's stats name of the service (`<app>_<port>`).
    pub stats_name: String,
    /// Its request-duration histogram, fetched at its first request (a service never requested
    /// shows none), then recorded into without a lookup.
    request_duration: OnceLock<Histogram>,
}

impl Service {
    /// Compiles `spec`. Backend counters come from (and stay in) `registry`, so they survive
    /// table swaps; backends `previous` (the service's last version) already had are reused as
    /// they were. `Err`: why the `HAPROXY_{n}_AUTH` label is unusable ([`auth_error`] names the
    /// app); the service must not be routed.
    pub fn compile(
        spec: &Arc<HttpService>,
        registry: &StatsRegistry,
        previous: Option<&Service>,
    ) -> Result<Service, String> {
        let auth = spec
            .auth
            .as_ref()
            .map(Authenticator::new)
            .transpose()?
            .map(Arc::new);
        let old: HashMap<_, _> = previous
            .map(|p| {
                p.selector
                    .backends
                    .iter()
                    .map(|slot| (&slot.backend.id, slot))
                    .collect()
            })
            .unwrap_or_default();
        let backends = spec
            .backends
            .iter()
            .map(|b| match old.get(&b.id) {
                Some(slot) if slot.backend == *b => Arc::clone(slot),
                _ => Arc::new(BackendSlot::new(b.clone(), registry)),
            })
            .collect();
        let paths_ignore_case = spec.paths.iter().any(|p| p == "-i");
        let paths = spec
            .paths
            .iter()
            .filter(|p| *p != "-i")
            .map(|p| {
                if paths_ignore_case {
                    p.to_ascii_lowercase()
                } else {
                    p.clone()
                }
            })
            .collect();
        let mut hosts: Vec<Arc<str>> = Vec::with_capacity(spec.vhosts.len());
        for host in &spec.vhosts {
            let host = normalize_host(host);
            if !hosts.iter().any(|h| **h == *host) {
                hosts.push(Arc::from(&*host));
            }
        }
        Ok(Service {
            selector: Selector::new(spec.balance, backends),
            auth,
            paths,
            paths_ignore_case,
            hosts,
            app_key: spec.key.app_id.to_ascii_lowercase().into(),
            stats_name: crate::stats::proxy_name(&spec.key.app_id, spec.service_port),
            request_duration: OnceLock::new(),
            spec: Arc::clone(spec),
        })
    }

    /// A request to one of its backends got its response headers after `elapsed`.
    pub fn record_request(&self, elapsed: std::time::Duration) {
        self.request_duration
            .get_or_init(|| live().request_duration(self.stats_name.clone()))
            .observe(elapsed.as_secs_f64());
    }

    /// Whether `path` starts with one of the service's prefixes (always, when it has none).
    pub fn matches_path(&self, path: &str) -> bool {
        if self.paths.is_empty() {
            return true;
        }
        if self.paths_ignore_case {
            let lower = path.to_ascii_lowercase();
            self.paths.iter().any(|p| lower.starts_with(p.as_str()))
        } else {
            self.paths.iter().any(|p| path.starts_with(p.as_str()))
        }
    }

    /// Whether `host` (normalised) is one of the service's vhosts.
    pub fn has_vhost(&self, host: &str) -> bool {
        self.spec.vhosts.iter().any(|v| v == host)
    }

    /// Whether plain HTTP requests may be routed to it on the vhost frontends. A passthrough
    /// service's backends speak TLS: plain HTTP is never forwarded to them, but `:80` may still
    /// redirect to `:443` for them.
    fn plain_http(&self) -> bool {
        !self.spec.tls_passthrough || self.spec.redirect_to_https
    }
}

/// The error of a service whose `HAPROXY_{n}_AUTH` label cannot be used.
pub fn auth_error(key: &HttpServiceKey, reason: String) -> ProxyError {
    ProxyError::Auth {
        app_id: key.app_id.clone(),
        port_index: key.port_index,
        reason,
    }
}

/// Number of shards of each [`RouteTable`] map: a new table copies only the shards a change
/// touches (with 9,000 services, about 140 entries each) and shares the others.
const SHARDS: usize = 64;

/// The route maps' hasher: foldhash (randomly seeded per process), not SipHash, which cost
/// every request a few hundred instructions twice (shard, then entry). Keys come from
/// Marathon; clients only look them up, so they cannot fill a map with colliding keys.
type RouteHasher = foldhash::fast::RandomState;

/// A hash map split in shards shared between successive tables (copy on write per shard).
#[derive(Clone, Debug)]
struct ShardedMap<K, V> {
    hasher: RouteHasher,
    shards: Vec<Arc<HashMap<K, V, RouteHasher>>>,
    len: usize,
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap {
            hasher: RouteHasher::default(),
            shards: (0..SHARDS).map(|_| Arc::new(HashMap::default())).collect(),
            len: 0,
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> ShardedMap<K, V> {
    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        (self.hasher.hash_one(key) >> 58) as usize % SHARDS
    }

    fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[self.shard(key)].get(key)
    }

    fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Sets (`Some`) or removes (`None`) the entry of `key`.
    fn set(&mut self, key: K, value: Option<V>) {
        let i = self.shard(&key);
        let shard = &mut self.shards[i];
        match value {
            Some(v) => {
                if Arc::make_mut(shard).insert(key, v).is_none() {
                    self.len += 1;
                }
            }
            None => {
                if shard.contains_key(&key) && Arc::make_mut(shard).remove(&key).is_some() {
                    self.len -= 1;
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Immutable routing table; see the module docs for the rules. Made by [`RouteIndex::update`]
/// (or [`RouteTable::build`]), which shares whatever did not change with the previous table.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    /// Vhost services by host, each list in match order (weight, then key).
    by_host: ShardedMap<Arc<str>, Arc<[Arc<Service>]>>,
    by_app_id: ShardedMap<Arc<str>, Arc<Service>>,
    by_port: ShardedMap<u16, Arc<Service>>,
    passthrough: ShardedMap<Arc<str>, Arc<Service>>,
}

impl RouteTable {
    /// Builds the table for `services` from scratch (see [`RouteIndex`] for the incremental
    /// way). Services with a bad auth label are left out (named in the errors); the rest are
    /// routed.
    pub fn build(
        services: &BTreeMap<HttpServiceKey, HttpService>,
        registry: &StatsRegistry,
    ) -> (RouteTable, Vec<ProxyError>) {
        let mut errors = Vec::new();
        let mut compiled = Vec::new();
        for spec in services.values() {
            match Service::compile(&Arc::new(spec.clone()), registry, None) {
                Ok(svc) => compiled.push(Arc::new(svc)),
                Err(reason) => errors.push(auth_error(&spec.key, reason)),
            }
        }
        let keep: HashSet<_> = compiled
            .iter()
            .flat_map(|s| s.selector.backends.iter().map(|b| b.backend.id.clone()))
            .collect();
        registry.prune(&keep);
        let mut index = RouteIndex::default();
        index.update(compiled, []);
        ((**index.table()).clone(), errors)
    }

    /// The service for a request on a vhost frontend: the first (highest weight) service that
    /// has `host` (already normalised with [`normalize_host`]) as a vhost and a matching path.
    pub fn lookup_vhost(&self, host: &str, path: &str) -> Option<&Arc<Service>> {
        self.by_host
            .get(host)?
            .iter()
            .find(|svc| svc.matches_path(path))
    }

    /// The basic-auth rules a request for `host` and `path` must pass, whichever service it is
    /// routed to: as marathon-lb's `http-request auth ... if host_X [path_X] !auth_X` lines,
    /// an app's auth applies to every request for its vhost (and its paths, if it has any),
    /// also those another app on the same vhost serves.
    pub fn vhost_auth<'a>(
        &'a self,
        host: &str,
        path: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Authenticator>> + 'a {
        self.by_host
            .get(host)
            .into_iter()
            .flat_map(|list| list.iter())
            .filter(move |svc| svc.matches_path(path))
            .filter_map(|svc| svc.auth.as_ref())
    }

    /// Whether some service has `host` as a vhost (whatever the path).
    pub fn has_host(&self, host: &str) -> bool {
        self.by_host.contains_key(host)
    }

    /// The service for an `X-Marathon-App-Id` value.
    pub fn lookup_app_id(&self, app_id: &str) -> Option<&Arc<Service>> {
        self.by_app_id
            .get(app_id.trim().to_ascii_lowercase().as_str())
    }

    /// The service of a service-port listener.
    pub fn lookup_port(&self, port: u16) -> Option<&Arc<Service>> {
        self.by_port.get(&port)
    }

    /// The TLS-passthrough service for a ClientHello SNI name.
    pub fn lookup_passthrough(&self, sni: &str) -> Option<&Arc<Service>> {
        self.passthrough.get(sni.to_ascii_lowercase().as_str())
    }

    /// Whether any service uses TLS passthrough (so `:443` must peek at ClientHellos).
    pub fn has_passthrough(&self) -> bool {
        !self.passthrough.is_empty()
    }
}

/// The services claiming one table entry, the winner first (by the entry's [`Rank`]). Almost
/// every entry has one claimant: a sorted vector, not a map (at 9,000 services a `BTreeMap` per
/// host, app id and port held 14 MB of mostly empty nodes).
#[derive(Debug, Default)]
struct Claimants(Vec<Arc<Service>>);

/// How the claimants of an entry are ordered (the first wins); equal means the same service key.
type Rank = fn(&Service, &Service) -> Ordering;

/// Vhosts: highest weight first, then key order.
fn host_rank(a: &Service, b: &Service) -> Ordering {
    (Reverse(a.spec.weight), &a.spec.key).cmp(&(Reverse(b.spec.weight), &b.spec.key))
}

/// `:9091` app ids: the lowest service port of the app first.
fn app_id_rank(a: &Service, b: &Service) -> Ordering {
    (a.spec.service_port, &a.spec.key).cmp(&(b.spec.service_port, &b.spec.key))
}

/// Service ports: the first key.
fn port_rank(a: &Service, b: &Service) -> Ordering {
    a.spec.key.cmp(&b.spec.key)
}

impl Claimants {
    /// Adds `svc`, in place of the claimant of the same rank (its previous version).
    fn insert(&mut self, svc: &Arc<Service>, rank: Rank) {
        match self.0.binary_search_by(|c| rank(c, svc)) {
            Ok(i) => self.0[i] = svc.clone(),
            Err(i) => self.0.insert(i, svc.clone()),
        }
    }

    /// Drops the claimant of `svc`'s rank.
    fn remove(&mut self, svc: &Service, rank: Rank) {
        if let Ok(i) = self.0.binary_search_by(|c| rank(c, svc)) {
            self.0.remove(i);
        }
    }

    fn first(&self) -> Option<&Arc<Service>> {
        self.0.first()
    }

    fn iter(&self) -> impl Iterator<Item = &Arc<Service>> + Clone {
        self.0.iter()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Adds `svc` to the claimants of `entry` in `map`.
fn claim<K: Hash + Eq>(map: &mut HashMap<K, Claimants>, entry: K, svc: &Arc<Service>, rank: Rank) {
    map.entry(entry).or_default().insert(svc, rank);
}

/// Drops `svc` from the claimants of `entry` in `map` (and the entry once nobody claims it).
fn unclaim<K: Hash + Eq>(map: &mut HashMap<K, Claimants>, entry: &K, svc: &Service, rank: Rank) {
    if let Some(c) = map.get_mut(entry) {
        c.remove(svc, rank);
        if c.is_empty() {
            map.remove(entry);
        }
    }
}

/// The routed services and, for every host, app id and port, which of them claim it: enough to
/// recompute just the table entries a change touches. Owned by the proxy (mutable), while each
/// [`RouteTable`] it produces is immutable.
#[derive(Debug, Default)]
pub struct RouteIndex {
    services: BTreeMap<HttpServiceKey, Arc<Service>>,
    /// Vhost claimants in match order ([`host_rank`]).
    hosts: HashMap<Arc<str>, Claimants>,
    /// `:9091` claimants ([`app_id_rank`]).
    app_ids: HashMap<Arc<str>, Claimants>,
    /// Service-port claimants ([`port_rank`]).
    ports: HashMap<u16, Claimants>,
    table: Arc<RouteTable>,
}

impl RouteIndex {
    /// The current table.
    pub fn table(&self) -> &Arc<RouteTable> {
        &self.table
    }

    /// The routed (compiled) service of `key`.
    pub fn service(&self, key: &HttpServiceKey) -> Option<&Arc<Service>> {
        self.services.get(key)
    }

    /// The routed services, in key order.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// Number of routed services.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether no service is routed.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Routes each of `upserts` in place of the service with its key (if any), stops routing
    /// `removals`, and makes the new table: only the entries of the hosts, app ids and ports of
    /// the services concerned are recomputed, every other entry (and every other service) is
    /// shared with the previous table. Returns the service ports whose entry was recomputed.
    pub fn update(
        &mut self,
        upserts: impl IntoIterator<Item = Arc<Service>>,
        removals: impl IntoIterator<Item = HttpServiceKey>,
    ) -> HashSet<u16> {
        let mut dirty = Dirty::default();
        for key in removals {
            if let Some(old) = self.services.remove(&key) {
                self.unlink(&old, &mut dirty);
            }
        }
        for svc in upserts {
            if let Some(old) = self.services.insert(svc.spec.key.clone(), svc.clone()) {
                self.unlink(&old, &mut dirty);
            }
            self.link(&svc, &mut dirty);
        }
        let mut table = (*self.table).clone();
        for host in dirty.hosts {
            let claimants = self.hosts.get(&host);
            let all = claimants.into_iter().flat_map(Claimants::iter);
            let plain: Arc<[Arc<Service>]> =
                all.clone().filter(|s| s.plain_http()).cloned().collect();
            let passthrough = all.clone().find(|s| s.spec.tls_passthrough).cloned();
            table
                .by_host
                .set(host.clone(), (!plain.is_empty()).then_some(plain));
            table.passthrough.set(host, passthrough);
        }
        for app in dirty.app_ids {
            let first = self.app_ids.get(&app).and_then(Claimants::first).cloned();
            table.by_app_id.set(app, first);
        }
        for &port in &dirty.ports {
            let first = self.ports.get(&port).and_then(Claimants::first).cloned();
            table.by_port.set(port, first);
        }
        self.table = Arc::new(table);
        dirty.ports
    }

    fn link(&mut self, svc: &Arc<Service>, dirty: &mut Dirty) {
        for host in &svc.hosts {
            claim(&mut self.hosts, host.clone(), svc, host_rank);
            dirty.hosts.insert(host.clone());
        }
        claim(&mut self.app_ids, svc.app_key.clone(), svc, app_id_rank);
        dirty.app_ids.insert(svc.app_key.clone());
        claim(&mut self.ports, svc.spec.service_port, svc, port_rank);
        dirty.ports.insert(svc.spec.service_port);
    }

    fn unlink(&mut self, svc: &Arc<Service>, dirty: &mut Dirty) {
        for host in &svc.hosts {
            unclaim(&mut self.hosts, host, svc, host_rank);
            dirty.hosts.insert(host.clone());
        }
        unclaim(&mut self.app_ids, &svc.app_key, svc, app_id_rank);
        dirty.app_ids.insert(svc.app_key.clone());
        unclaim(&mut self.ports, &svc.spec.service_port, svc, port_rank);
        dirty.ports.insert(svc.spec.service_port);
    }
}

/// Table entries to recompute.
#[derive(Default)]
struct Dirty {
    hosts: HashSet<Arc<str>>,
    app_ids: HashSet<Arc<str>>,
    ports: HashSet<u16>,
}

/// A Host header value as routing compares it: lowercase, without `:port`, without a trailing
/// dot; IPv6 literals keep their brackets. Borrowed when it is in lower case already (as
/// clients send it): routing a request makes no copy of its host.
pub fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = host.trim();
    let without_port = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        host.split(':').next().unwrap_or(host)
    };
    let host = without_port.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{Backend, BackendId, BackendState, BasicAuth};

    /// A service with one backend and marathon-lb's defaults.
    pub(crate) fn svc(
        app: &str,
        port: u16,
        vhosts: &[&str],
        paths: &[&str],
        weight: i32,
    ) -> HttpService {
        HttpService {
            vhosts: vhosts
                .iter()
                .map(std::string::ToString::to_string)
                .collect(),
            paths: paths.iter().map(std::string::ToString::to_string).collect(),
            backends: vec![Backend {
                id: BackendId::from(format!("{app}.task:0")),
                addr: "127.0.0.1:1".parse().unwrap(),
                weight: 1,
                state: BackendState::Active,
            }],
            weight,
            ..HttpService::new(app, 0, port)
        }
    }

    fn table(services: Vec<HttpService>) -> RouteTable {
        let map = services.into_iter().map(|s| (s.key.clone(), s)).collect();
        let (t, errors) = RouteTable::build(&map, &StatsRegistry::default());
        assert!(errors.is_empty(), "{errors:?}");
        t
    }

    fn app_of(t: &RouteTable, host: &str, path: &str) -> Option<String> {
        t.lookup_vhost(&normalize_host(host), path)
            .map(|s| s.spec.key.app_id.clone())
    }

    #[test]
    fn host_is_case_insensitive_and_port_stripped() {
        let t = table(vec![svc(
            "/web",
            10000,
            &["www.example.com", "example.com"],
            &[],
            0,
        )]);
        assert_eq!(
            app_of(&t, "WWW.Example.COM:8080", "/").as_deref(),
            Some("/web")
        );
        assert_eq!(app_of(&t, "example.com.", "/x").as_deref(), Some("/web"));
        assert_eq!(app_of(&t, "other.com", "/"), None);
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        // A host in lower case already is not copied.
        assert!(matches!(
            normalize_host("example.com.:80"),
            Cow::Borrowed("example.com")
        ));
    }

    #[test]
    fn path_prefixes_and_weights_pick_the_route() {
        let t = table(vec![
            svc("/root", 10000, &["a.com"], &[], 0),
            svc("/api", 10001, &["a.com"], &["/api", "/v2"], 1),
            svc("/api-beta", 10002, &["a.com"], &["/api/beta"], 3),
        ]);
        assert_eq!(
            app_of(&t, "a.com", "/api/beta/x").as_deref(),
            Some("/api-beta")
        );
        assert_eq!(app_of(&t, "a.com", "/api/x").as_deref(), Some("/api"));
        assert_eq!(app_of(&t, "a.com", "/v2").as_deref(), Some("/api"));
        assert_eq!(app_of(&t, "a.com", "/other").as_deref(), Some("/root"));
    }

    #[test]
    fn equal_weights_keep_app_id_order() {
        let t = table(vec![
            svc("/b", 10001, &["a.com"], &[], 0),
            svc("/a", 10000, &["a.com"], &[], 0),
        ]);
        assert_eq!(app_of(&t, "a.com", "/").as_deref(), Some("/a"));
    }

    #[test]
    fn path_with_dash_i_is_case_insensitive() {
        let t = table(vec![svc("/p", 10000, &["a.com"], &["-i", "/Admin"], 0)]);
        assert_eq!(app_of(&t, "a.com", "/ADMIN/x").as_deref(), Some("/p"));
        assert_eq!(app_of(&t, "a.com", "/user"), None);
    }

    #[test]
    fn app_id_and_port_lookups_take_the_first_port_of_each_app() {
        let mut second = svc("/Tweeter", 10001, &[], &[], 0);
        second.key.port_index = 1;
        let t = table(vec![svc("/Tweeter", 10000, &[], &[], 0), second]);
        assert_eq!(
            t.lookup_app_id("/tweeter").unwrap().spec.service_port,
            10000
        );
        assert_eq!(t.lookup_port(10001).unwrap().spec.key.port_index, 1);
        assert!(t.lookup_app_id("/other").is_none());
    }

    #[test]
    fn passthrough_services_are_found_by_sni() {
        let mut p = svc("/tls", 10000, &["secure.example.com"], &[], 0);
        p.tls_passthrough = true;
        let t = table(vec![p, svc("/web", 10001, &["web.example.com"], &[], 0)]);
        assert!(t.has_passthrough());
        assert!(t.lookup_passthrough("SECURE.example.com").is_some());
        assert!(t.lookup_passthrough("web.example.com").is_none());
        assert!(
            t.lookup_vhost("secure.example.com", "/").is_none(),
            "plain HTTP never goes to TLS backends"
        );
    }

    /// Updating the index recomputes the entries shared with other services: match order
    /// after a weight change, the port and app id handed to the next claimant on removal.
    #[test]
    fn index_updates_recompute_shared_entries() {
        let registry = StatsRegistry::default();
        let compile = |s: &HttpService| {
            Arc::new(Service::compile(&Arc::new(s.clone()), &registry, None).unwrap())
        };
        let mut index = RouteIndex::default();
        let (a, mut b) = (
            svc("/a", 10000, &["x.com"], &[], 0),
            svc("/b", 10000, &["X.com", "y.com"], &[], 0),
        );
        index.update([compile(&a), compile(&b)], []);
        let first = index.table().clone();
        let app = |t: &RouteTable, host| app_of(t, host, "/");
        assert_eq!(app(&first, "x.com").as_deref(), Some("/a"));
        assert_eq!(first.lookup_port(10000).unwrap().spec.key.app_id, "/a");

        b.weight = 5;
        let dirty = index.update([compile(&b)], []);
        assert_eq!(dirty, HashSet::from([10000]));
        let t = index.table().clone();
        assert_eq!(
            app(&t, "x.com").as_deref(),
            Some("/b"),
            "higher weight first"
        );
        assert_eq!(t.lookup_port(10000).unwrap().spec.key.app_id, "/a");
        assert_eq!(
            app(&first, "x.com").as_deref(),
            Some("/a"),
            "old table intact"
        );

        index.update([], [a.key.clone()]);
        let t = index.table().clone();
        assert_eq!(t.lookup_port(10000).unwrap().spec.key.app_id, "/b");
        assert!(t.lookup_app_id("/a").is_none());
        assert_eq!(app(&t, "y.com").as_deref(), Some("/b"));
        index.update([], [b.key.clone()]);
        assert!(!index.table().has_host("x.com") && index.is_empty());
    }

    #[test]
    fn bad_auth_label_drops_only_that_service() {
        let mut bad = svc("/bad", 10000, &["bad.com"], &[], 0);
        bad.auth = Some(BasicAuth {
            realm: "r".into(),
            user: "u".into(),
            password_hash: "plaintext".into(),
        });
        let good = svc("/good", 10001, &["good.com"], &[], 0);
        let map = [bad, good]
            .into_iter()
            .map(|s| (s.key.clone(), s))
            .collect();
        let (t, errors) = RouteTable::build(&map, &StatsRegistry::default());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("/bad"), "{}", errors[0]);
        assert!(t.lookup_vhost("good.com", "/").is_some());
        assert!(t.lookup_vhost("bad.com", "/").is_none());
    }
}
