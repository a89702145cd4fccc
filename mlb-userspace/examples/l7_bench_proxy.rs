//! The HTTP proxy alone, for `cargo xtask bench http`: one vhost service on one listener,
//! until SIGTERM or Ctrl-C. Not a way to run mlb (that is `mlb run`).
//!
//! `l7_bench_proxy [--ssl-certs <pem>] <listen addr> <vhost> <threads> <backend addr>...`
//!
//! With `--ssl-certs` (chain + key in one PEM, as `mlb run --ssl-certs`), the TLS vhost
//! frontend also listens on port 443 of the listen address.
use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use anyhow::{Context as _, Result, bail};
use mlb::{
    model::{Backend, BackendId, BackendState, Balance, HttpService, HttpServiceKey},
    proxy::{HttpProxy, ProxyConfig},
};

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let ssl_certs: Vec<PathBuf> = if args.first().map(String::as_str) == Some("--ssl-certs") {
        args.remove(0);
        if args.is_empty() {
            bail!("--ssl-certs needs a PEM file");
        }
        vec![PathBuf::from(args.remove(0))]
    } else {
        Vec::new()
    };
    if args.len() < 4 {
        bail!(
            "usage: l7_bench_proxy [--ssl-certs <pem>] <listen addr> <vhost> <threads> <backend addr>..."
        );
    }
    let listen: SocketAddr = args[0].parse().context("listen address")?;
    let vhost = args[1].to_ascii_lowercase();
    let threads: usize = args[2].parse().context("threads")?;
    let backends = args[3..]
        .iter()
        .enumerate()
        .map(|(i, a)| {
            Ok(Backend {
                id: BackendId(format!("bench.{i}:0")),
                addr: a.parse().context("backend address")?,
                weight: 1,
                state: BackendState::Active,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let config = ProxyConfig {
            http_addr: Some(listen),
            https_addr: (!ssl_certs.is_empty()).then(|| SocketAddr::new(listen.ip(), 443)),
            appid_addr: None,
            service_bind_ip: listen.ip(),
            ssl_certs,
            ..ProxyConfig::default()
        };
        let proxy = HttpProxy::start(config, tokio::runtime::Handle::current())?;
        let key = HttpServiceKey {
            app_id: "/bench".into(),
            port_index: 0,
        };
        let service = HttpService {
            key: key.clone(),
            service_port: 10000,
            vhosts: vec![vhost],
            paths: vec![],
            backends,
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
            weight: 0,
            health_check: None,
            tls_passthrough: false,
            tls: Default::default(),
        };
        let errors = proxy.apply(&BTreeMap::from([(key, service)]));
        if !errors.is_empty() {
            bail!("applying the bench service: {errors:?}");
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    })
}
