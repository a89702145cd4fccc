//! The steps that turn one service port into services, and their typed outcomes. The chain
//! itself is [`super::build`]'s `evaluate_port`: read labels → service port → selected by this
//! instance → not reserved → resolve mode ([`super::mode`]) → validate → backends
//! ([`super::backends`]) → claim the port → build the services. Each step either passes or
//! [`Stop`]s the chain.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use crate::model::{
    Backend, Balance, DesiredState, HealthCheck, HttpService, HttpServiceKey, L4Service,
    L4ServiceKey, ModelOptions, Protocol, Tuning,
    groups::{GroupMismatch, check_groups},
    labels::{LabelError, PortLabels},
    ports::ProtocolError,
};

/// Why the chain stopped before the port was exposed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The app asks for something mlb refuses: listed in [`DesiredState::rejected`].
    Rejected(PortRejection),
    /// Nothing is wrong; this instance just does not expose the port (now).
    NotExposed(NotExposed),
}

impl From<PortRejection> for Stop {
    fn from(r: PortRejection) -> Self {
        Stop::Rejected(r)
    }
}

impl From<NotExposed> for Stop {
    fn from(r: NotExposed) -> Self {
        Stop::NotExposed(r)
    }
}

/// A service port mlb refuses to expose. `index` is the `{n}` of the port's labels; the app id
/// is on the [`crate::model::Rejected`] entry that carries the text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortRejection {
    #[error(transparent)]
    Label(#[from] LabelError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(
        "no service port: the auto-assignment range {min}-{max} is exhausted (set HAPROXY_{index}_PORT or widen --min/--max-serv-port-ip-per-task)"
    )]
    RangeExhausted { index: usize, min: u16, max: u16 },
    #[error("service port {port} is one of mlb's own listeners")]
    Reserved { port: u16 },
    #[error("HTTP service on a {} port: HTTP needs tcp", protocol_list(protocols))]
    HttpNeedsTcp { protocols: Vec<Protocol> },
    #[error(
        "label MLB_{index}_TLS_PASSTHROUGH=true needs HAPROXY_{index}_VHOST (passthrough routes by SNI)"
    )]
    PassthroughNeedsVhost { index: usize },
    /// Another app (first in app-id order) has this port and protocol.
    #[error("service port {port}/{protocol} is already used by {owner} port {owner_index}")]
    Taken {
        port: u16,
        protocol: Protocol,
        owner: String,
        owner_index: usize,
    },
}

fn protocol_list(protocols: &[Protocol]) -> String {
    protocols
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Why a valid service port is not exposed by this instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NotExposed {
    Group(GroupMismatch),
    /// `--strict-mode` and no `HAPROXY_{index}_ENABLED=true`.
    NotEnabled {
        index: usize,
    },
    /// `HAPROXY_{index}_ENABLED=false`.
    Disabled {
        index: usize,
    },
    NoTasks,
    NoHealthyTask,
    NoRoutableTask,
}

impl fmt::Display for NotExposed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotExposed::Group(g) => g.fmt(f),
            NotExposed::NotEnabled { index } => write!(
                f,
                "not enabled: --strict-mode is on and HAPROXY_{index}_ENABLED is not true"
            ),
            NotExposed::Disabled { index } => write!(f, "disabled by HAPROXY_{index}_ENABLED"),
            NotExposed::NoTasks => f.write_str("no tasks"),
            NotExposed::NoHealthyTask => f.write_str("no healthy task (--health-check)"),
            NotExposed::NoRoutableTask => f.write_str("no routable task (see the excluded tasks)"),
        }
    }
}

/// The port number (`HAPROXY_{n}_PORT` already applied), or a rejection when auto-assignment
/// ran out of ports (the only way a port has none).
pub(crate) fn service_port(
    port: Option<u16>,
    index: usize,
    range: Option<(u16, u16)>,
) -> Result<u16, PortRejection> {
    port.ok_or_else(|| {
        let (min, max) = range.unwrap_or_default();
        PortRejection::RangeExhausted { index, min, max }
    })
}

/// Whether this instance exposes the port: its groups, then `ENABLED` (which `--strict-mode`
/// requires to be true).
pub(crate) fn check_selected(
    opts: &ModelOptions,
    groups: &[String],
    enabled: Option<bool>,
    index: usize,
) -> Result<(), NotExposed> {
    check_groups(&opts.groups, groups).map_err(NotExposed::Group)?;
    match (opts.strict_mode, enabled) {
        (true, Some(true)) | (false, None | Some(true)) => Ok(()),
        (true, _) => Err(NotExposed::NotEnabled { index }),
        (false, Some(false)) => Err(NotExposed::Disabled { index }),
    }
}

/// A port mlb itself listens on (80, 443, the admin port…) is refused rather than fought over.
pub(crate) fn check_not_reserved(reserved: &BTreeSet<u16>, port: u16) -> Result<(), PortRejection> {
    if reserved.contains(&port) {
        Err(PortRejection::Reserved { port })
    } else {
        Ok(())
    }
}

/// Refuses what mlb cannot serve in the port's mode; returns warnings about labels that have
/// no effect, or another one, in it.
pub(crate) fn validate(
    index: usize,
    http: bool,
    labels: &PortLabels,
    protocols: &[Protocol],
) -> Result<Vec<String>, PortRejection> {
    if http {
        Ok(validate_http(index, labels, protocols)?
            .into_iter()
            .collect())
    } else {
        validate_tcp(index, labels)
    }
}

fn validate_http(
    index: usize,
    labels: &PortLabels,
    protocols: &[Protocol],
) -> Result<Option<String>, PortRejection> {
    if !protocols.contains(&Protocol::Tcp) {
        return Err(PortRejection::HttpNeedsTcp {
            protocols: protocols.to_vec(),
        });
    }
    if labels.tls_passthrough && labels.vhosts.is_empty() {
        return Err(PortRejection::PassthroughNeedsVhost { index });
    }
    Ok((!labels.paths.is_empty() && labels.vhosts.is_empty())
        .then(|| format!("label HAPROXY_{index}_PATH has no effect without HAPROXY_{index}_VHOST")))
}

fn validate_tcp(index: usize, labels: &PortLabels) -> Result<Vec<String>, PortRejection> {
    let mut warnings = Vec::new();
    if labels.balance == Balance::LeastConn {
        // Maglev spreads new flows by hash in the kernel, where no connection count is
        // affordable per packet; both L4 dataplanes pick backends the same way.
        warnings.push(format!(
            "label HAPROXY_{index}_BALANCE=leastconn on a tcp-mode port: mlb balances tcp and \
             udp ports by consistent hash (Maglev) of the connection, evenly but not by least \
             connections; use source to keep each client on one backend"
        ));
    }
    if !labels.http_only_labels.is_empty() {
        let names: Vec<String> = labels
            .http_only_labels
            .iter()
            .map(|l| format!("HAPROXY_{index}_{l}"))
            .collect();
        warnings.push(format!(
            "labels {} have no effect in tcp mode",
            names.join(", ")
        ));
    }
    Ok(warnings)
}

/// The path prefixes an HTTP port routes on: only with a vhost (a path alone routes nothing).
pub(crate) fn routed_paths(http: bool, labels: &PortLabels) -> Vec<String> {
    if http && !labels.vhosts.is_empty() {
        labels.paths.clone()
    } else {
        Vec::new()
    }
}

/// Which app took each exposed (port, protocol), first in app-id order, and which ports more
/// than one app wanted (the incremental model re-evaluates everything when one of those moves).
#[derive(Clone, Debug, Default)]
pub(crate) struct Claims {
    /// (port, protocol) → (app id, service-port index).
    pub owners: BTreeMap<(u16, Protocol), (String, usize)>,
    /// Ports an app was refused because another app had them.
    pub contested: BTreeSet<(u16, Protocol)>,
}

impl Claims {
    /// Takes every (port, protocol) of `wanted` for the app's port `index`, or none of them
    /// when one is taken (the first taken one is named, and marked contested).
    pub fn claim(
        &mut self,
        wanted: &[(u16, Protocol)],
        app_id: &str,
        index: usize,
    ) -> Result<(), PortRejection> {
        for w in wanted {
            if let Some((owner, owner_index)) = self.owners.get(w) {
                self.contested.insert(*w);
                return Err(PortRejection::Taken {
                    port: w.0,
                    protocol: w.1,
                    owner: owner.clone(),
                    owner_index: *owner_index,
                });
            }
        }
        for w in wanted {
            self.owners.insert(*w, (app_id.to_owned(), index));
        }
        Ok(())
    }
}

/// A port every step accepted: what its services are built from.
pub(crate) struct ExposedPort<'a> {
    pub app_id: &'a str,
    pub index: usize,
    pub service_port: u16,
    /// Served by the HTTP proxy (its tcp side), with the other protocols as L4 services.
    pub http: bool,
    /// tcp mode with a certificate: the proxy terminates TLS and forwards plain TCP.
    pub tcp_tls: bool,
    pub protocols: &'a [Protocol],
    pub labels: &'a PortLabels,
    pub paths: &'a [String],
    pub backends: Vec<Backend>,
    pub check: Option<HealthCheck>,
    pub tuning: Tuning,
}

impl ExposedPort<'_> {
    /// The protocols served as L4 services: all of them, but tcp when the port is HTTP.
    fn l4_protocols(&self) -> impl Iterator<Item = Protocol> + '_ {
        self.protocols
            .iter()
            .copied()
            .filter(|p| !(self.http && *p == Protocol::Tcp))
    }

    /// The (port, protocol) pairs the port occupies: the HTTP side first.
    pub fn wanted(&self) -> Vec<(u16, Protocol)> {
        let http = self.http.then_some((self.service_port, Protocol::Tcp));
        http.into_iter()
            .chain(self.l4_protocols().map(|p| (self.service_port, p)))
            .collect()
    }

    /// Puts the port's HTTP service and L4 services into `state`.
    pub fn insert_into(self, state: &mut DesiredState) {
        for key in self.l4_protocols().map(|protocol| L4ServiceKey {
            port: self.service_port,
            protocol,
        }) {
            state.l4.insert(key, self.l4_service(key));
        }
        if self.http {
            let svc = self.http_service();
            state.http.insert(svc.key.clone(), std::sync::Arc::new(svc));
        }
    }

    fn l4_service(&self, key: L4ServiceKey) -> L4Service {
        L4Service {
            key,
            app_id: self.app_id.to_owned(),
            bind_addr: self.labels.bind_addr,
            backends: self.backends.clone(),
            // A TCP connect or HTTP check says nothing about a UDP service.
            health_check: self.check.clone().filter(|_| key.protocol == Protocol::Tcp),
            tuning: Box::new(self.tuning.clone()),
            balance: self.labels.balance,
            allowed_networks: self.labels.allowed_networks.clone(),
        }
    }

    fn http_service(self) -> HttpService {
        let l = self.labels;
        HttpService {
            key: HttpServiceKey {
                app_id: self.app_id.to_owned(),
                port_index: self.index,
            },
            service_port: self.service_port,
            // In tcp mode a vhost routes nothing (marathon-lb ignored it too).
            vhosts: if self.tcp_tls {
                Vec::new()
            } else {
                l.vhosts.clone()
            },
            paths: self.paths.to_vec(),
            backends: self.backends,
            balance: self.tuning.balance.unwrap_or(l.balance),
            sticky: l.sticky,
            redirect_to_https: l.redirect_to_https,
            use_hsts: l.use_hsts,
            ssl_certs: l.ssl_certs.clone(),
            bind_addr: l.bind_addr,
            auth: l.auth.clone(),
            allowed_networks: l.allowed_networks.clone(),
            proxypass_path: l.proxypass_path.clone(),
            revproxy_path: l.revproxy_path.clone(),
            redirect_root_to: l.redirect_root_to.clone(),
            weight: l.weight,
            health_check: self.check,
            tls_passthrough: l.tls_passthrough,
            tls: l.tls.clone(),
            tuning: Tuning::shared(self.tuning),
            tcp_tls: self.tcp_tls,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{BackendId, BackendState, labels::port_labels};

    fn labels(pairs: &[(&str, &str)]) -> PortLabels {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        port_labels(&map, 0).0.unwrap()
    }

    fn groups(g: &[&str]) -> Vec<String> {
        g.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn selection_checks_groups_then_enabled() {
        let mut opts = ModelOptions::new(groups(&["external"]));
        let ext = groups(&["external"]);
        assert_eq!(check_selected(&opts, &ext, None, 0), Ok(()));
        assert!(matches!(
            check_selected(&opts, &groups(&["internal"]), Some(true), 0),
            Err(NotExposed::Group(_))
        ));
        let disabled = check_selected(&opts, &ext, Some(false), 2).unwrap_err();
        assert_eq!(disabled.to_string(), "disabled by HAPROXY_2_ENABLED");
        opts.strict_mode = true;
        assert_eq!(check_selected(&opts, &ext, Some(true), 0), Ok(()));
        for enabled in [None, Some(false)] {
            assert_eq!(
                check_selected(&opts, &ext, enabled, 1)
                    .unwrap_err()
                    .to_string(),
                "not enabled: --strict-mode is on and HAPROXY_1_ENABLED is not true"
            );
        }
    }

    #[test]
    fn a_missing_port_means_the_auto_assignment_range_ran_out() {
        assert_eq!(service_port(Some(10000), 0, None), Ok(10000));
        assert_eq!(
            service_port(None, 3, Some((10050, 10060)))
                .unwrap_err()
                .to_string(),
            "no service port: the auto-assignment range 10050-10060 is exhausted (set HAPROXY_3_PORT or widen --min/--max-serv-port-ip-per-task)"
        );
        assert_eq!(
            check_not_reserved(&[80, 443].into(), 443),
            Err(PortRejection::Reserved { port: 443 })
        );
        assert_eq!(check_not_reserved(&[80].into(), 10000), Ok(()));
    }

    #[test]
    fn validation_refuses_what_the_mode_cannot_serve() {
        let tcp = [Protocol::Tcp];
        let vhost = labels(&[("HAPROXY_0_VHOST", "a.example"), ("HAPROXY_0_PATH", "/x")]);
        assert_eq!(validate(0, true, &vhost, &tcp), Ok(vec![]));
        assert_eq!(
            validate(0, true, &vhost, &[Protocol::Udp])
                .unwrap_err()
                .to_string(),
            "HTTP service on a udp port: HTTP needs tcp"
        );
        let passthrough = labels(&[("MLB_0_TLS_PASSTHROUGH", "true")]);
        assert_eq!(
            validate(0, true, &passthrough, &tcp),
            Err(PortRejection::PassthroughNeedsVhost { index: 0 })
        );
        let path = labels(&[("HAPROXY_0_PATH", "/x")]);
        assert_eq!(
            validate(0, true, &path, &tcp).unwrap(),
            ["label HAPROXY_0_PATH has no effect without HAPROXY_0_VHOST"]
        );
        assert_eq!(
            validate(0, false, &path, &tcp).unwrap(),
            ["labels HAPROXY_0_PATH have no effect in tcp mode"]
        );
        let cert = labels(&[("HAPROXY_0_SSL_CERT", "/c.pem")]);
        assert_eq!(
            validate(0, false, &cert, &tcp),
            Ok(vec![]),
            "TLS over tcp is served"
        );
        let acl = labels(&[("HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL", "10.0.0.0/8")]);
        assert_eq!(validate(0, false, &acl, &tcp), Ok(vec![]));
        let leastconn = labels(&[("HAPROXY_0_BALANCE", "leastconn")]);
        let warned = validate(0, false, &leastconn, &tcp).unwrap();
        assert!(
            warned.len() == 1 && warned[0].contains("HAPROXY_0_BALANCE=leastconn"),
            "{warned:?}"
        );
        assert_eq!(validate(0, true, &leastconn, &tcp), Ok(vec![]));
        let source = labels(&[("HAPROXY_0_BALANCE", "source")]);
        assert_eq!(validate(0, false, &source, &tcp), Ok(vec![]));
        assert_eq!(validate(0, false, &labels(&[]), &tcp), Ok(vec![]));
    }

    #[test]
    fn a_port_is_claimed_whole_or_not_at_all() {
        let mut claims = Claims::default();
        let udp = [(10000, Protocol::Udp)];
        claims.claim(&udp, "/dns", 0).unwrap();
        let both = [(10000, Protocol::Tcp), (10000, Protocol::Udp)];
        let refused = claims.claim(&both, "/web", 1).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "service port 10000/udp is already used by /dns port 0"
        );
        assert_eq!(claims.owners.len(), 1, "tcp was not taken either");
        assert_eq!(claims.contested, [(10000, Protocol::Udp)].into());
        claims.claim(&both[..1], "/web", 1).unwrap();
        assert_eq!(
            claims.owners.get(&(10000, Protocol::Tcp)),
            Some(&("/web".to_owned(), 1))
        );
    }

    #[test]
    fn an_http_port_with_udp_becomes_an_http_service_and_a_udp_service() {
        let l = labels(&[("HAPROXY_0_VHOST", "a.example"), ("HAPROXY_0_PATH", "/api")]);
        let paths = routed_paths(true, &l);
        let backend = Backend {
            id: BackendId::from("t:0"),
            addr: "198.18.4.1:31000".parse().unwrap(),
            weight: 1,
            state: BackendState::Active,
        };
        let check = HealthCheck {
            kind: crate::model::HealthCheckKind::Tcp,
            port_index: 0,
            interval: std::time::Duration::from_secs(1),
            timeout: std::time::Duration::from_secs(1),
            max_consecutive_failures: 2,
        };
        let port = ExposedPort {
            app_id: "/quic",
            index: 0,
            service_port: 10443,
            http: true,
            tcp_tls: false,
            protocols: &[Protocol::Tcp, Protocol::Udp],
            labels: &l,
            paths: &paths,
            backends: vec![backend.clone()],
            check: Some(check.clone()),
            tuning: Tuning::default(),
        };
        assert_eq!(
            port.wanted(),
            [(10443, Protocol::Tcp), (10443, Protocol::Udp)]
        );
        let mut state = DesiredState::default();
        port.insert_into(&mut state);
        let keys: Vec<String> = state.l4.keys().map(ToString::to_string).collect();
        assert_eq!(keys, ["10443/udp"]);
        let udp = state.l4.values().next().unwrap();
        assert_eq!(udp.health_check, None, "a TCP check says nothing about UDP");
        let http = state.http.values().next().unwrap();
        assert_eq!(
            (
                http.service_port,
                &http.paths,
                &http.backends,
                &http.health_check
            ),
            (
                10443,
                &vec!["/api".to_owned()],
                &vec![backend],
                &Some(check)
            )
        );
        assert!(routed_paths(true, &labels(&[("HAPROXY_0_PATH", "/api")])).is_empty());
        assert!(routed_paths(false, &l).is_empty());
    }
}
