//! Thread per core: the proxy's connections are served by `threads` threads, each running its
//! own single-threaded tokio runtime, with its own accept loop on every listening address
//! (`SO_REUSEPORT`: the kernel spreads new connections over them) and its own pool of backend
//! connections. A connection stays on the thread that accepted it from accept to close, and so
//! do the backend connections it uses: no task is woken across threads, no pool is shared
//! (HAProxy's threads, Pingora's and Sōzu's workers do the same).
//!
//! With no threads asked for, everything runs on the runtime the proxy was started on, as one
//! worker (tests, embedding).
use std::{cell::Cell, io};

use tokio::{
    runtime::Handle,
    sync::oneshot,
    task::JoinHandle,
    time::{MissedTickBehavior, interval},
};

use crate::stats::memory::{TRIM_EVERY, own_thread_runtime};

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
    /// The memory trimming task on the caller's runtime, ended with the workers (it would
    /// outlive the proxy).
    trims: Vec<JoinHandle<()>>,
}

impl Workers {
    /// `threads` threads with a runtime each; for 0, the runtime of `handle` alone. `trim`
    /// runs on each proxy thread as it goes idle, at most every [`TRIM_EVERY`] (the
    /// mechanism of `mlb run`'s own runtime); on the caller's runtime, which the proxy did
    /// not build, a task runs it every [`TRIM_EVERY`].
    pub(crate) fn start(
        threads: usize,
        handle: &Handle,
        trim: Option<fn()>,
    ) -> io::Result<Workers> {
        let mut workers = Workers {
            handles: Vec::with_capacity(threads.max(1)),
            stops: Vec::with_capacity(threads),
            trims: Vec::new(),
        };
        if threads == 0 {
            workers.handles.push(handle.clone());
            if let Some(trim) = trim {
                workers.trims.push(handle.spawn(trim_every(trim)));
            }
        }
        for index in 0..threads {
            let (handle, stop) = spawn_worker(index, trim)?;
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
        for trim in &self.trims {
            trim.abort();
        }
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
    }
}

/// Runs `trim` every [`TRIM_EVERY`] (a late tick is not made up for: a trim is never urgent).
async fn trim_every(trim: fn()) {
    let mut every = interval(TRIM_EVERY);
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        trim();
    }
}

/// One thread with a current-thread runtime that runs until its stop sender is dropped, and
/// runs `trim` as it goes idle.
fn spawn_worker(index: usize, trim: Option<fn()>) -> io::Result<(Handle, oneshot::Sender<()>)> {
    own_thread_runtime(format!("mlb-http-{index}"), trim, move || {
        WORKER.with(|w| w.set(index));
    })
}

#[cfg(test)]
mod tests {
    use std::{thread, time::Duration};

    use super::*;

    #[tokio::test]
    async fn each_thread_knows_its_worker_and_stops_with_the_workers() {
        let workers = Workers::start(2, &Handle::current(), None).unwrap();
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

    /// Threads [`record_trim`] ran on, per test (each test has its own thread names).
    static TRIMMED_ON: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

    fn record_trim() {
        let name = thread::current().name().unwrap_or_default().to_owned();
        TRIMMED_ON.lock().unwrap().push(name);
    }

    fn trims_on(name: &str) -> usize {
        TRIMMED_ON
            .lock()
            .unwrap()
            .iter()
            .filter(|n| *n == name)
            .count()
    }

    #[tokio::test]
    async fn every_serving_thread_trims_its_memory() {
        let workers = Workers::start(2, &Handle::current(), Some(record_trim)).unwrap();
        // A thread trims the first time it goes idle: at once, as it waits for connections.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while trims_on("mlb-http-0") == 0 || trims_on("mlb-http-1") == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "a thread never trimmed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(workers);
    }

    #[test]
    fn the_callers_runtime_trims_every_second_until_the_proxy_is_gone() {
        let name = "trim-test-callers-runtime";
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let counted = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                runtime.block_on(async {
                    let workers = Workers::start(0, &Handle::current(), Some(record_trim));
                    // Ticks at 0, 1 and 2 s.
                    tokio::time::sleep(TRIM_EVERY * 5 / 2).await;
                    let while_running = trims_on(name);
                    drop(workers.unwrap());
                    tokio::time::sleep(TRIM_EVERY * 5).await;
                    (while_running, trims_on(name))
                })
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(counted, (3, 3));
    }

    #[tokio::test]
    async fn no_threads_means_the_callers_runtime() {
        let workers = Workers::start(0, &Handle::current(), None).unwrap();
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
