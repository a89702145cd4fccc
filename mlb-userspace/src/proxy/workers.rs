//! Thread per core: the proxy's connections are served by `threads` threads, each running its
//! own single-threaded tokio runtime, with its own accept loop on every listening address
//! (`SO_REUSEPORT`: the kernel spreads new connections over them) and its own pool of backend
//! connections. A connection stays on the thread that accepted it from accept to close, and so
//! do the backend connections it uses: no task is woken across threads, no pool is shared
//! (HAProxy's threads, Pingora's and Sōzu's workers do the same).
//!
//! With no threads asked for, everything runs on the runtime the proxy was started on, as one
//! worker (tests, embedding).
use std::{cell::Cell, io, thread};

use tokio::{runtime::Handle, sync::oneshot};

thread_local! {
    /// Which worker this thread is (0 outside the proxy's threads).
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Index of the worker running the caller, to pick its per-thread state.
pub(crate) fn current() -> usize {
    WORKER.with(Cell::get)
}

/// The runtimes connections are served on: one per proxy thread, or the caller's one.
pub(crate) struct Workers {
    handles: Vec<Handle>,
    /// Dropped (or sent) to stop each thread's runtime; empty for the caller's runtime.
    stops: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// `threads` threads with a runtime each; for 0, the runtime of `handle` alone.
    pub(crate) fn start(threads: usize, handle: &Handle) -> io::Result<Workers> {
        if threads == 0 {
            return Ok(Workers {
                handles: vec![handle.clone()],
                stops: Vec::new(),
            });
        }
        let mut workers = Workers {
            handles: Vec::with_capacity(threads),
            stops: Vec::with_capacity(threads),
        };
        for index in 0..threads {
            let (handle, stop) = spawn_worker(index)?;
            workers.handles.push(handle);
            workers.stops.push(stop);
        }
        Ok(workers)
    }

    /// The runtimes, one per worker (index = [`current`] on its thread).
    pub(crate) fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// Whether connections are spread over several threads (each listening address then has
    /// one `SO_REUSEPORT` socket per thread).
    pub(crate) fn len(&self) -> usize {
        self.handles.len()
    }
}

/// Dropping the workers stops their threads: their connections end with them.
impl Drop for Workers {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
    }
}

/// One thread with a current-thread runtime that runs until its stop sender is dropped.
fn spawn_worker(index: usize) -> io::Result<(Handle, oneshot::Sender<()>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    thread::Builder::new()
        .name(format!("mlb-http-{index}"))
        .spawn(move || {
            WORKER.with(|w| w.set(index));
            // Sent or dropped: either way the proxy is gone.
            let _ = runtime.block_on(stopped);
        })?;
    Ok((handle, stop))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_thread_knows_its_worker_and_stops_with_the_workers() {
        let workers = Workers::start(2, &Handle::current()).unwrap();
        assert_eq!(workers.len(), 2);
        let mut seen = Vec::new();
        for handle in workers.handles() {
            let (index, name) = handle
                .spawn(async { (current(), thread::current().name().map(str::to_owned)) })
                .await
                .unwrap();
            seen.push(index);
            assert_eq!(name, Some(format!("mlb-http-{index}")));
        }
        assert_eq!(seen, [0, 1]);
        let handle = workers.handles()[1].clone();
        let (tx, rx) = oneshot::channel::<()>();
        let pending = handle.spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await;
        });
        drop(workers);
        // The runtime is shut down: its tasks are dropped.
        assert!(rx.await.is_err());
        assert!(pending.await.unwrap_err().is_cancelled());
    }

    #[tokio::test]
    async fn no_threads_means_the_callers_runtime() {
        let workers = Workers::start(0, &Handle::current()).unwrap();
        assert_eq!(workers.len(), 1);
        let here = thread::current().id();
        let there = workers.handles()[0]
            .spawn(async { thread::current().id() })
            .await
            .unwrap();
        // A current-thread test runtime: the task ran on this very thread.
        assert_eq!(here, there);
    }
}
