//! The HTTP proxy alone, for `cargo xtask bench http`: one vhost service on one listener,
//! until SIGTERM or Ctrl-C. Not a way to run mlb (that is `mlb run`).
//!
//! `l7_bench_proxy [--ssl-certs <pem>] <listen addr> <vhost> <threads> <backend addr>...`
//! (`threads` 0: the proxy shares a multi-thread runtime, as `mlb run` without `--threads`)
//!
//! With `--ssl-certs` (chain + key in one PEM, as `mlb run --ssl-certs`), the TLS vhost
//! frontend also listens on port 443 of the listen address.
use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::{Context as _, Result, bail};
use mlb::{
    dataplane::HttpChange,
    model::{Backend, BackendId, BackendState, HttpService},
    overload::{ConnGate, ConnLimits},
    proxy::{HttpProxy, ProxyConfig},
};

/// The allocator of the `mlb` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// As the `mlb` binary: freed memory goes back to the OS at once when the proxy trims.
fn release_freed() {
    // SAFETY: `mi_collect` only tidies mimalloc's own heaps and arenas; any thread may call it.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

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
                id: BackendId::from(format!("bench.{i}:0")),
                addr: a.parse().context("backend address")?,
                weight: 1,
                state: BackendState::Active,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    mlb::stats::memory::set_release_freed(release_freed);
    // The proxy serves connections on its own `threads` threads and this one only waits; with
    // 0, as `mlb run` without `--threads`, on this multi-thread runtime (a worker per CPU).
    let runtime = if threads == 0 {
        mlb::stats::memory::trimming_runtime()?
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    };
    runtime.block_on(async {
        let config = ProxyConfig {
            http_addr: Some(listen),
            https_addr: (!ssl_certs.is_empty()).then(|| SocketAddr::new(listen.ip(), 443)),
            appid_addr: None,
            service_bind_ip: listen.ip(),
            ssl_certs,
            threads,
            // As `mlb run`: the buffers of connections that went idle go back to the OS.
            trim_memory: Some(mlb::stats::memory::release_freed),
            // Room for `bench http --memory`'s 10,000 idle connections and the probes beside.
            conn_gate: ConnGate::new(ConnLimits {
                max_connections: 20_000,
                max_per_listener: 20_000,
                ..ConnLimits::default()
            }),
            ..ProxyConfig::default()
        };
        let proxy = HttpProxy::start(config, tokio::runtime::Handle::current())?;
        let service = HttpService {
            vhosts: vec![vhost],
            backends,
            ..HttpService::new("/bench", 0, 10000)
        };
        let errors = proxy.apply_changes(&[HttpChange::Upsert(Arc::new(service))]);
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
