//! Typed changes between two [`DesiredState`]s, per service.
//!
//! L4 (TCP/UDP) changes come from [`crate::dataplane::diff_l4`]; this module adds the HTTP
//! services and a [`diff`] over the whole state, so the controller hands each dataplane only what
//! changed (a dataplane never rebuilds everything).
use std::collections::BTreeMap;

use crate::{
    dataplane::{L4Change, diff_l4},
    model::{DesiredState, HttpService, HttpServiceKey},
};

/// One change to the set of HTTP services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpChange {
    /// A service appeared. (Boxed: a service is large and changes travel in `Vec`s.)
    Add(Box<HttpService>),
    /// A service's routes, backends, TLS or options changed; the proxy swaps it in whole.
    Update(Box<HttpService>),
    /// A service disappeared: stop routing new requests to it.
    Remove(HttpServiceKey),
}

/// One change to the desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// For the TCP/UDP dataplane.
    L4(L4Change),
    /// For the HTTP proxy.
    Http(HttpChange),
}

/// The HTTP changes that turn `old` into `new`: adds and updates in key order, then removals.
pub fn diff_http(
    old: &BTreeMap<HttpServiceKey, HttpService>,
    new: &BTreeMap<HttpServiceKey, HttpService>,
) -> Vec<HttpChange> {
    let upserts = new.iter().filter_map(|(key, svc)| match old.get(key) {
        None => Some(HttpChange::Add(Box::new(svc.clone()))),
        Some(prev) if prev != svc => Some(HttpChange::Update(Box::new(svc.clone()))),
        Some(_) => None,
    });
    let removals = old
        .keys()
        .filter(|key| !new.contains_key(key))
        .map(|key| HttpChange::Remove(key.clone()));
    upserts.chain(removals).collect()
}

/// Every change that turns `old` into `new`: the L4 changes ([`diff_l4`]), then the HTTP ones
/// ([`diff_http`]). Rejections and warnings are not changes: they do not touch a dataplane.
pub fn diff(old: &DesiredState, new: &DesiredState) -> Vec<Change> {
    diff_l4(&old.l4, &new.l4)
        .into_iter()
        .map(Change::L4)
        .chain(
            diff_http(&old.http, &new.http)
                .into_iter()
                .map(Change::Http),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::model::{Backend, BackendId, BackendState, L4Service, L4ServiceKey, Protocol};

    fn backend(addr: &str) -> Backend {
        Backend {
            id: BackendId(format!("task-{addr}:0")),
            addr: addr.parse::<SocketAddr>().unwrap(),
            weight: 1,
            state: BackendState::Active,
        }
    }

    fn http(app: &str, port: u16, vhost: &str, backends: &[&str]) -> HttpService {
        HttpService {
            key: HttpServiceKey {
                app_id: app.into(),
                port_index: 0,
            },
            service_port: port,
            vhosts: vec![vhost.into()],
            paths: vec![],
            backends: backends.iter().map(|a| backend(a)).collect(),
            balance: Default::default(),
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
            weight: 0,
            health_check: None,
            tls_passthrough: false,
            tls: Default::default(),
        }
    }

    fn l4(port: u16, backends: &[&str]) -> L4Service {
        L4Service {
            key: L4ServiceKey {
                port,
                protocol: Protocol::Udp,
            },
            app_id: format!("/dns{port}"),
            bind_addr: None,
            backends: backends.iter().map(|a| backend(a)).collect(),
            health_check: None,
        }
    }

    fn state(http_services: &[HttpService], l4_services: &[L4Service]) -> DesiredState {
        DesiredState {
            l4: l4_services.iter().map(|s| (s.key, s.clone())).collect(),
            http: http_services
                .iter()
                .map(|s| (s.key.clone(), s.clone()))
                .collect(),
            ..Default::default()
        }
    }

    fn replay(mut s: DesiredState, changes: &[Change]) -> DesiredState {
        for change in changes {
            match change {
                Change::L4(L4Change::Upsert(svc)) => {
                    s.l4.insert(svc.key, svc.clone());
                }
                Change::L4(L4Change::Remove(key)) => {
                    s.l4.remove(key);
                }
                Change::Http(HttpChange::Add(svc)) => {
                    assert!(s.http.insert(svc.key.clone(), (**svc).clone()).is_none());
                }
                Change::Http(HttpChange::Update(svc)) => {
                    assert!(s.http.insert(svc.key.clone(), (**svc).clone()).is_some());
                }
                Change::Http(HttpChange::Remove(key)) => {
                    assert!(s.http.remove(key).is_some());
                }
            }
        }
        s
    }

    /// Applying `diff(a, b)` to `a` gives `b`; an unchanged service produces no change; diffing
    /// to the empty state tears everything down.
    #[test]
    fn diff_replays_to_the_new_state() {
        let a = state(
            &[
                http("/web", 10000, "a.example", &["198.18.0.1:31000"]),
                http("/old", 10001, "old.example", &["198.18.0.2:31001"]),
                http("/same", 10002, "same.example", &["198.18.0.3:31002"]),
            ],
            &[l4(53, &["198.18.0.9:31053"])],
        );
        let b = state(
            &[
                http(
                    "/web",
                    10000,
                    "a.example",
                    &["198.18.0.1:31000", "198.18.0.4:31004"],
                ),
                http("/new", 10003, "new.example", &["198.18.0.5:31003"]),
                http("/same", 10002, "same.example", &["198.18.0.3:31002"]),
            ],
            &[l4(54, &["198.18.0.9:31054"])],
        );
        let changes = diff(&a, &b);
        let http_changes: Vec<_> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Http(h) => Some(h),
                Change::L4(_) => None,
            })
            .collect();
        assert!(matches!(http_changes[0], HttpChange::Add(s) if s.key.app_id == "/new"));
        assert!(matches!(http_changes[1], HttpChange::Update(s) if s.key.app_id == "/web"));
        assert!(matches!(http_changes[2], HttpChange::Remove(k) if k.app_id == "/old"));
        assert_eq!(http_changes.len(), 3, "unchanged /same must not appear");
        assert_eq!(replay(a.clone(), &changes), b);
        assert!(diff(&b, &b).is_empty());
        let teardown = diff(&b, &DesiredState::default());
        assert_eq!(teardown.len(), 4);
        assert_eq!(replay(b, &teardown), DesiredState::default());
    }
}
