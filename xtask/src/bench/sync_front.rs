//! A fast front for the simulator in `bench sync`, so that the full sync measures mlb and not
//! the simulator (which renders 100,000 tasks as JSON values under its lock for every
//! `/v2/apps`, seconds on a loaded machine).
//!
//! Until [`Front::stale`] is called, a `GET /v2/apps…` is answered from a body rendered once by
//! the simulator beforehand (same state: nothing changes before the first kill), straight from
//! memory, then the connection is closed. Every other `GET` (`/v2/events`, per-app reads, full
//! reads once stale) is redirected to the simulator, which mlb follows as it follows Marathon's
//! leader redirects; anything else is piped to it byte for byte.
use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};

/// Largest request head read before deciding where a connection goes.
const MAX_HEAD: usize = 64 * 1024;
/// A client must send its request head within this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The front's address and switches; its threads live as long as the bench.
pub struct Front {
    addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    sim: SocketAddr,
    body: Vec<u8>,
    fresh: AtomicBool,
    served: AtomicUsize,
}

impl Front {
    /// Listens on a free loopback port; `body` is the simulator's current `/v2/apps`.
    pub fn start(sim: SocketAddr, body: Vec<u8>) -> Result<Front> {
        let listener = TcpListener::bind("127.0.0.1:0").context("front listener")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            sim,
            body,
            fresh: AtomicBool::new(true),
            served: AtomicUsize::new(0),
        });
        let st = Arc::clone(&state);
        thread::Builder::new()
            .name("sync-front".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let st = Arc::clone(&st);
                    let _ =
                        thread::Builder::new()
                            .name("sync-front-conn".into())
                            .spawn(move || {
                                let _ = serve(&st, conn);
                            });
                }
            })?;
        Ok(Front { addr, state })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The simulator's state is about to change: full reads go to it from now on.
    pub fn stale(&self) {
        self.state.fresh.store(false, Ordering::SeqCst);
    }

    /// How many full reads were answered from memory.
    pub fn served(&self) -> usize {
        self.state.served.load(Ordering::SeqCst)
    }
}

fn serve(st: &State, mut client: TcpStream) -> io::Result<()> {
    client.set_nodelay(true)?;
    client.set_read_timeout(Some(HEAD_TIMEOUT))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = client.read(&mut buf)?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    client.set_read_timeout(None)?;
    if st.fresh.load(Ordering::SeqCst) && is_full_read(&head) {
        write!(
            client,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            st.body.len()
        )?;
        client.write_all(&st.body)?;
        st.served.fetch_add(1, Ordering::SeqCst);
        return client.shutdown(Shutdown::Write);
    }
    if let Some(target) = get_target(&head) {
        // Sent to the simulator itself (mlb follows Marathon's redirects): a byte pipe through
        // this front would put two more thread wake-ups on the event stream's path, which on a
        // loaded machine showed up in the event latencies as the front's, not mlb's.
        write!(
            client,
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{}{target}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n",
            st.sim
        )?;
        return client.shutdown(Shutdown::Write);
    }
    let mut sim = TcpStream::connect_timeout(&st.sim, Duration::from_secs(5))?;
    sim.set_nodelay(true)?;
    sim.write_all(&head)?;
    let (mut sim_r, mut client_w) = (sim.try_clone()?, client.try_clone()?);
    let back = thread::spawn(move || {
        let _ = io::copy(&mut sim_r, &mut client_w);
        let _ = client_w.shutdown(Shutdown::Write);
    });
    let _ = io::copy(&mut client, &mut sim);
    let _ = sim.shutdown(Shutdown::Write);
    let _ = back.join();
    Ok(())
}

/// The request target of a `GET` (every read mlb makes).
fn get_target(head: &[u8]) -> Option<&str> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    (parts.next()? == "GET").then(|| parts.next()).flatten()
}

/// `GET /v2/apps` or `GET /v2/apps?…` (not one app's `/v2/apps/ID`).
fn is_full_read(head: &[u8]) -> bool {
    get_target(head).is_some_and(|target| target.split('?').next() == Some("/v2/apps"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_app_list_is_a_full_read() {
        assert!(is_full_read(
            b"GET /v2/apps?embed=apps.tasks HTTP/1.1\r\n\r\n"
        ));
        assert!(is_full_read(b"GET /v2/apps HTTP/1.1\r\n\r\n"));
        assert!(!is_full_read(b"GET /v2/apps/app-1 HTTP/1.1\r\n\r\n"));
        assert!(!is_full_read(b"POST /v2/apps HTTP/1.1\r\n\r\n"));
        assert!(!is_full_read(b"GET /v2/events HTTP/1.1\r\n\r\n"));
    }

    #[test]
    fn reads_are_redirected_with_their_target() {
        assert_eq!(
            get_target(b"GET /v2/events?plan-format=light HTTP/1.1\r\n\r\n"),
            Some("/v2/events?plan-format=light")
        );
        assert_eq!(get_target(b"POST /v2/tasks/delete HTTP/1.1\r\n\r\n"), None);
    }
}
