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
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use super::{
    ProxyError,
    auth::Authenticator,
    balance::{BackendSlot, Selector, StatsRegistry, sticky_cookie_value},
};
use crate::model::{HttpService, HttpServiceKey};

/// One HTTP service as the proxy serves it.
#[derive(Debug)]
pub struct Service {
    /// What the model asked for.
    pub spec: HttpService,
    /// Backend selection over the service's backends.
    pub selector: Selector,
    /// Basic auth, when `HAPROXY_{n}_AUTH` is set and valid.
    pub auth: Option<Arc<Authenticator>>,
    /// Path prefixes to match (`-i` removed), lowercased when `paths_ignore_case`.
    paths: Vec<String>,
    /// `HAPROXY_{n}_PATH` had `-i`: prefixes match case-insensitively.
    paths_ignore_case: bool,
}

impl Service {
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
}

/// Immutable routing table; see the module docs for the rules.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Vhost services by host, each list in match order (weight, then key).
    by_host: HashMap<String, Vec<Arc<Service>>>,
    by_app_id: HashMap<String, Arc<Service>>,
    by_port: BTreeMap<u16, Arc<Service>>,
    passthrough: HashMap<String, Arc<Service>>,
}

impl RouteTable {
    /// Builds the table for `services`. Backend counters come from (and stay in) `registry`, so
    /// they survive the swap. Services with a bad auth label are left out (named in the errors);
    /// the rest are routed.
    pub fn build(
        services: &BTreeMap<HttpServiceKey, HttpService>,
        registry: &mut StatsRegistry,
    ) -> (RouteTable, Vec<ProxyError>) {
        let mut errors = Vec::new();
        let mut built: Vec<Arc<Service>> = Vec::new();
        let mut keep = HashSet::new();
        for spec in services.values() {
            let auth = match spec.auth.as_ref().map(Authenticator::new).transpose() {
                Ok(a) => a.map(Arc::new),
                Err(reason) => {
                    errors.push(ProxyError::Auth {
                        app_id: spec.key.app_id.clone(),
                        port_index: spec.key.port_index,
                        reason,
                    });
                    continue;
                }
            };
            let backends = spec
                .backends
                .iter()
                .map(|b| {
                    keep.insert(b.id.clone());
                    Arc::new(BackendSlot {
                        cookie: sticky_cookie_value(&b.id),
                        stats: registry.get(&b.id),
                        backend: b.clone(),
                    })
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
            built.push(Arc::new(Service {
                selector: Selector::new(spec.balance, backends),
                auth,
                paths,
                paths_ignore_case,
                spec: spec.clone(),
            }));
        }
        registry.prune(&keep);

        let mut table = RouteTable::default();
        // Stable sort: equal weights keep the (app id, port index) order of the BTreeMap.
        let mut by_weight = built.clone();
        by_weight.sort_by_key(|s| std::cmp::Reverse(s.spec.weight));
        for svc in &by_weight {
            // A passthrough service's backends speak TLS: plain HTTP is never forwarded to them,
            // but `:80` may still redirect to `:443` for them.
            let plain_http = !svc.spec.tls_passthrough || svc.spec.redirect_to_https;
            for host in &svc.spec.vhosts {
                let host = normalize_host(host);
                if plain_http {
                    table
                        .by_host
                        .entry(host.clone())
                        .or_default()
                        .push(svc.clone());
                }
                if svc.spec.tls_passthrough {
                    table.passthrough.entry(host).or_insert_with(|| svc.clone());
                }
            }
        }
        // :9091 and service ports: the first service port of each app, in service-port order.
        let mut by_port_order = built;
        by_port_order.sort_by_key(|s| s.spec.service_port);
        for svc in by_port_order {
            table
                .by_app_id
                .entry(svc.spec.key.app_id.to_ascii_lowercase())
                .or_insert_with(|| svc.clone());
            table.by_port.entry(svc.spec.service_port).or_insert(svc);
        }
        (table, errors)
    }

    /// The service for a request on a vhost frontend: the first (highest weight) service that
    /// has `host` (already normalised with [`normalize_host`]) as a vhost and a matching path.
    pub fn lookup_vhost(&self, host: &str, path: &str) -> Option<&Arc<Service>> {
        self.by_host
            .get(host)?
            .iter()
            .find(|svc| svc.matches_path(path))
    }

    /// Whether some service has `host` as a vhost (whatever the path).
    pub fn has_host(&self, host: &str) -> bool {
        self.by_host.contains_key(host)
    }

    /// The service for an `X-Marathon-App-Id` value.
    pub fn lookup_app_id(&self, app_id: &str) -> Option<&Arc<Service>> {
        self.by_app_id.get(&app_id.trim().to_ascii_lowercase())
    }

    /// The service of a service-port listener.
    pub fn lookup_port(&self, port: u16) -> Option<&Arc<Service>> {
        self.by_port.get(&port)
    }

    /// The TLS-passthrough service for a ClientHello SNI name.
    pub fn lookup_passthrough(&self, sni: &str) -> Option<&Arc<Service>> {
        self.passthrough.get(&sni.to_ascii_lowercase())
    }

    /// Whether any service uses TLS passthrough (so `:443` must peek at ClientHellos).
    pub fn has_passthrough(&self) -> bool {
        !self.passthrough.is_empty()
    }

    /// One service per service port, in port order.
    pub fn port_services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.by_port.values()
    }
}

/// A Host header value as routing compares it: lowercase, without `:port`, without a trailing
/// dot; IPv6 literals keep their brackets.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let without_port = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        host.split(':').next().unwrap_or(host)
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Backend, BackendId, BackendState, Balance, BasicAuth};

    fn svc(app: &str, port: u16, vhosts: &[&str], paths: &[&str], weight: i32) -> HttpService {
        HttpService {
            key: HttpServiceKey {
                app_id: app.into(),
                port_index: 0,
            },
            service_port: port,
            vhosts: vhosts.iter().map(|s| s.to_string()).collect(),
            paths: paths.iter().map(|s| s.to_string()).collect(),
            backends: vec![Backend {
                id: BackendId(format!("{app}.task:0")),
                addr: "127.0.0.1:1".parse().unwrap(),
                weight: 1,
                state: BackendState::Active,
            }],
            balance: Balance::RoundRobin,
            sticky: false,
            redirect_to_https: false,
            use_hsts: false,
            ssl_certs: vec![],
            bind_addr: None,
            auth: None,
            allowed_networks: vec![],
            proxypass_path: None,
            revproxy_path: None,
            redirect_root_to: None,
            weight,
            health_check: None,
            tls_passthrough: false,
            tls: Default::default(),
        }
    }

    fn table(services: Vec<HttpService>) -> RouteTable {
        let map = services.into_iter().map(|s| (s.key.clone(), s)).collect();
        let (t, errors) = RouteTable::build(&map, &mut StatsRegistry::default());
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
        let (t, errors) = RouteTable::build(&map, &mut StatsRegistry::default());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("/bad"), "{}", errors[0]);
        assert!(t.lookup_vhost("good.com", "/").is_some());
        assert!(t.lookup_vhost("bad.com", "/").is_none());
    }
}
