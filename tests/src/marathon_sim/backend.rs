//! Real task backends: the sockets a simulated task listens on.
//!
//! Each TCP port answers HTTP/1.1 (`200`, body = task id + `"\n"`, header `X-Task-Id`; `503`
//! while the task is unhealthy; after `?delay_ms=N` milliseconds if asked) or, when the first
//! bytes are not an HTTP request line, echoes.
//! Each UDP port answers every datagram with the task id. Sockets may be created inside a
//! network namespace: a socket keeps the namespace it was created in, so a short-lived thread
//! enters the namespace, binds, and hands the sockets to tokio.
use std::{
    convert::Infallible,
    fs::File,
    io,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, task::JoinSet};

use super::{Agent, SimError, model::PortSpec};

/// Hands out candidate host ports from a range, like a Mesos agent's `ports` resource.
pub(crate) struct PortAllocator {
    first: u16,
    len: u32,
    next: AtomicU32,
}

impl PortAllocator {
    /// The cursor starts at a random offset so that several simulators (or processes) sharing a
    /// range rarely race for the same ports; a port already taken is skipped at bind time.
    pub(crate) fn new(range: std::ops::RangeInclusive<u16>) -> Self {
        let first = *range.start();
        let len = u32::from(range.end().saturating_sub(first)) + 1;
        PortAllocator {
            first,
            len,
            next: AtomicU32::new(rand::random::<u32>() % len),
        }
    }

    fn next(&self) -> u16 {
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.len;
        self.first + n as u16
    }
}

/// The sockets of one task port, bound but not yet served.
pub(crate) struct BoundPort {
    pub(crate) port: u16,
    tcp: Option<std::net::TcpListener>,
    udp: Option<std::net::UdpSocket>,
}

/// Binds one socket set per port spec on the agent, inside its namespace when it has one.
pub(crate) async fn bind_task_ports(
    agent: &Agent,
    specs: Vec<PortSpec>,
    alloc: Arc<PortAllocator>,
) -> Result<Vec<BoundPort>, SimError> {
    let address = agent.address;
    match agent.netns.clone() {
        None => bind_all(address, &specs, &alloc),
        Some(netns) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            // A dedicated thread, not a pooled one: setns changes the thread for good.
            std::thread::Builder::new()
                .name("sim-netns-bind".into())
                .spawn(move || {
                    let result = enter_netns(&netns)
                        .map_err(|source| SimError::Netns {
                            name: netns.clone(),
                            source,
                        })
                        .and_then(|()| bind_all(address, &specs, &alloc));
                    let _ = tx.send(result);
                })
                .map_err(|source| SimError::Netns {
                    name: agent.netns.clone().unwrap_or_default(),
                    source,
                })?;
            rx.await.map_err(|_| SimError::ShutDown)?
        }
    }
}

/// Allocates one port per spec like [`bind_task_ports`] but binds nothing (the simulator's
/// `bind_tasks: false`): the ports are reported, nothing listens on them.
pub(crate) fn reserve_task_ports(
    agent: &Agent,
    specs: &[PortSpec],
    alloc: &PortAllocator,
) -> Result<Vec<BoundPort>, SimError> {
    let mut reserved: Vec<BoundPort> = Vec::with_capacity(specs.len());
    for spec in specs {
        let port = match spec.fixed_port {
            Some(port) => port,
            None => (0..alloc.len)
                .map(|_| alloc.next())
                .find(|p| reserved.iter().all(|b| b.port != *p))
                .ok_or_else(|| SimError::Bind {
                    addr: SocketAddr::new(agent.address, 0),
                    source: io::Error::other("the task port range is exhausted"),
                })?,
        };
        reserved.push(BoundPort {
            port,
            tcp: None,
            udp: None,
        });
    }
    Ok(reserved)
}

/// Moves the calling thread into `/var/run/netns/<name>`.
fn enter_netns(name: &str) -> io::Result<()> {
    let file = File::open(format!("/var/run/netns/{name}"))?;
    // SAFETY: setns on a valid open namespace fd only changes this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn bind_all(
    address: IpAddr,
    specs: &[PortSpec],
    alloc: &PortAllocator,
) -> Result<Vec<BoundPort>, SimError> {
    let mut bound: Vec<BoundPort> = Vec::with_capacity(specs.len());
    for spec in specs {
        let port = if let Some(port) = spec.fixed_port {
            bind_one(address, port, spec).map_err(|source| SimError::Bind {
                addr: SocketAddr::new(address, port),
                source,
            })?
        } else {
            let mut last_err = None;
            let mut found = None;
            for _ in 0..alloc.len {
                let candidate = alloc.next();
                if bound.iter().any(|b| b.port == candidate) {
                    continue;
                }
                match bind_one(address, candidate, spec) {
                    Ok(b) => {
                        found = Some(b);
                        break;
                    }
                    Err(e) => last_err = Some(e),
                }
            }
            found.ok_or_else(|| SimError::Bind {
                addr: SocketAddr::new(address, 0),
                source: last_err
                    .unwrap_or_else(|| io::Error::other("the task port range is exhausted")),
            })?
        };
        bound.push(port);
    }
    Ok(bound)
}

fn bind_one(address: IpAddr, port: u16, spec: &PortSpec) -> io::Result<BoundPort> {
    let addr = SocketAddr::new(address, port);
    let tcp = if spec.tcp {
        Some(std::net::TcpListener::bind(addr)?)
    } else {
        None
    };
    let udp = if spec.udp {
        Some(std::net::UdpSocket::bind(addr)?)
    } else {
        None
    };
    Ok(BoundPort { port, tcp, udp })
}

/// What every connection of one task needs.
struct TaskCtx {
    task_id: String,
    healthy: Arc<AtomicBool>,
}

/// The running listeners of one task. Dropping it closes every listener and every connection
/// (the task's process is gone).
pub(crate) struct TaskBackend {
    tasks: JoinSet<()>,
}

impl TaskBackend {
    /// Starts serving the bound sockets. Must run inside a tokio runtime.
    pub(crate) fn start(
        task_id: &str,
        ports: Vec<BoundPort>,
        healthy: Arc<AtomicBool>,
    ) -> io::Result<TaskBackend> {
        let ctx = Arc::new(TaskCtx {
            task_id: task_id.to_string(),
            healthy,
        });
        let mut tasks = JoinSet::new();
        for bound in ports {
            if let Some(tcp) = bound.tcp {
                tcp.set_nonblocking(true)?;
                let listener = tokio::net::TcpListener::from_std(tcp)?;
                tasks.spawn(serve_tcp(listener, ctx.clone()));
            }
            if let Some(udp) = bound.udp {
                udp.set_nonblocking(true)?;
                let socket = tokio::net::UdpSocket::from_std(udp)?;
                tasks.spawn(serve_udp(socket, ctx.clone()));
            }
        }
        Ok(TaskBackend { tasks })
    }
}

impl TaskBackend {
    /// Closes every listener and waits until they are closed.
    pub(crate) async fn stop(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for TaskBackend {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

async fn serve_tcp(listener: tokio::net::TcpListener, ctx: Arc<TaskCtx>) {
    // Connections live in this set: aborting the listener task drops it and resets them all.
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, peer)) => {
                conns.spawn(serve_tcp_conn(stream, peer, ctx.clone()));
            }
            Err(e) => {
                tracing::debug!(task = %ctx.task_id, error = %e, "marathon-sim: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// How a connection's first bytes classify.
#[derive(Debug, PartialEq, Eq)]
enum Sniff {
    Http,
    Other,
    NeedMore,
}

const HTTP_METHODS: [&[u8]; 9] = [
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
];

fn sniff(first: &[u8]) -> Sniff {
    let mut need_more = false;
    for method in HTTP_METHODS {
        if first.starts_with(method) {
            return Sniff::Http;
        }
        if method.starts_with(first) {
            need_more = true;
        }
    }
    if need_more {
        Sniff::NeedMore
    } else {
        Sniff::Other
    }
}

/// Peeks (without consuming) until the first bytes say HTTP or not. A client that sends a
/// partial method and then waits is treated as a plain TCP client after a short grace.
async fn looks_like_http(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 8];
    let started = Instant::now();
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        match sniff(&buf[..n]) {
            Sniff::Http => return true,
            Sniff::Other => return false,
            Sniff::NeedMore if started.elapsed() > Duration::from_millis(200) => return false,
            Sniff::NeedMore => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

async fn serve_tcp_conn(mut stream: TcpStream, peer: SocketAddr, ctx: Arc<TaskCtx>) {
    if looks_like_http(&stream).await {
        let service = service_fn(move |req| answer_http(req, peer, ctx.clone()));
        if let Err(e) = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await
        {
            tracing::debug!(error = %e, "marathon-sim: backend HTTP connection ended");
        }
    } else {
        let (mut rd, mut wr) = stream.split();
        let _ = tokio::io::copy(&mut rd, &mut wr).await;
    }
}

async fn answer_http(
    req: Request<Incoming>,
    peer: SocketAddr,
    ctx: Arc<TaskCtx>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let seen = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let host = seen("host");
    let forwarded_for = seen("x-forwarded-for");
    let forwarded_proto = seen("x-forwarded-proto");
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".into(), |p| p.as_str().to_string());
    // Drain the request body so keep-alive connections stay in sync.
    let _ = req.into_body().collect().await;
    // `?delay_ms=N`: a slow answer (at most 10 s), for requests in flight during a stop.
    if let Some(ms) = query_delay_ms(&path) {
        tokio::time::sleep(Duration::from_millis(ms.min(10_000))).await;
    }
    let status = if ctx.healthy.load(Ordering::Relaxed) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut resp = Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .header("x-task-id", ctx.task_id.as_str())
        .header("x-seen-path", path)
        .header("x-seen-peer", peer.to_string());
    // What the backend saw of the proxy's request, so proxy tests can assert on it.
    if let Some(h) = host {
        resp = resp.header("x-seen-host", h);
    }
    if let Some(h) = forwarded_for {
        resp = resp.header("x-seen-forwarded-for", h);
    }
    if let Some(h) = forwarded_proto {
        resp = resp.header("x-seen-forwarded-proto", h);
    }
    let body = Full::new(Bytes::from(format!("{}\n", ctx.task_id)));
    Ok(resp
        .body(body)
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}

fn query_delay_ms(path: &str) -> Option<u64> {
    let (_, query) = path.split_once('?')?;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("delay_ms="))
        .and_then(|v| v.parse().ok())
}

async fn serve_udp(socket: tokio::net::UdpSocket, ctx: Arc<TaskCtx>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((_, peer)) => {
                let _ = socket.send_to(ctx.task_id.as_bytes(), peer).await;
            }
            Err(e) => {
                tracing::debug!(task = %ctx.task_id, error = %e, "marathon-sim: UDP recv failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_http_request_lines() {
        assert_eq!(sniff(b"GET / HT"), Sniff::Http);
        assert_eq!(sniff(b"OPTIONS "), Sniff::Http);
        assert_eq!(sniff(b"GE"), Sniff::NeedMore);
        assert_eq!(sniff(b"hello"), Sniff::Other);
        assert_eq!(sniff(b"GET/"), Sniff::Other);
    }
}
