//! The process's own memory, for the logs of full syncs: at 10,000 apps a full read, the model
//! and the dataplanes each hold tens of megabytes, and the resident size after each step says
//! which one grew.

/// Resident set size in MiB (`/proc/self/statm`); 0 where it cannot be read (not Linux).
pub fn rss_mb() -> f64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0.0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // Pages of 4 KiB: the page size of every platform mlb is built for (x86-64, aarch64 Linux
    // with 4 KiB pages); statm counts in pages.
    (pages * 4096) as f64 / f64::from(1u32 << 20)
}

/// Updates of this many changes on are big (a full sync's steps, a burst): the RSS after them
/// is logged and the memory they freed is given back ([`release_freed`]). Both cost a read of
/// `/proc` or a walk of the heap, which a one-task event should not pay.
pub const BIG_UPDATE: usize = 64;

/// [`rss_mb`] for an update of `changes` changes, when it is worth logging.
pub fn rss_mb_if_big(changes: usize) -> Option<f64> {
    (changes >= BIG_UPDATE).then(rss_mb)
}

/// How the process's allocator gives freed memory back to the OS at once, set by the binary
/// (which chooses the allocator; the library has no `unsafe`).
static RELEASE_FREED: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets what [`release_freed`] does (once; later calls are ignored).
pub fn set_release_freed(release: fn()) {
    let _ = RELEASE_FREED.set(release);
}

/// Gives the memory freed so far back to the OS at once. mlb's allocator (mimalloc) keeps freed
/// pages for a second before returning them, and a full sync of 10,000 apps frees tens of
/// megabytes (the `/v2/apps` body, the parse's scratch, the previous state) in less than that:
/// without this they stay resident beside what the next step allocates (at 10,000 apps the
/// RSS after the parse is 70 MB with it, 124 MB without). Costs a walk of the allocator's
/// heap: for full syncs and [`BIG_UPDATE`]s, not for each event.
pub fn release_freed() {
    if let Some(release) = RELEASE_FREED.get() {
        release();
    }
}

/// How often each runtime thread gives back what it freed (see [`trim_each_thread`]).
pub const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

thread_local! {
    /// When this thread last ran its trim (`None`: never).
    static LAST_TRIM: std::cell::Cell<Option<std::time::Instant>> =
        const { std::cell::Cell::new(None) };
}

/// Makes every thread of the runtime `builder` builds run `trim` when it goes idle, at most once
/// per [`TRIM_EVERY`] on each thread. mimalloc keeps a thread's freed pages in that thread's
/// heap and only one thread can give them back; a once-a-second task of a multi-thread runtime
/// runs on one thread at a time, so the others' pages (the buffers of connections that went
/// idle) would stay resident. Parking is when a thread has just finished its work: trimming
/// there costs nothing while it serves and, rate-limited, little when it parks often.
pub fn trim_each_thread(
    builder: &mut tokio::runtime::Builder,
    trim: fn(),
) -> &mut tokio::runtime::Builder {
    builder.on_thread_park(move || trim_if_due(trim))
}

/// Runs `trim` unless this thread ran it less than [`TRIM_EVERY`] ago.
fn trim_if_due(trim: fn()) {
    let now = std::time::Instant::now();
    let due = LAST_TRIM.with(|last| match last.get() {
        Some(at) if now.duration_since(at) < TRIM_EVERY => false,
        _ => {
            last.set(Some(now));
            true
        }
    });
    if due {
        trim();
    }
}

/// The runtime `mlb run` serves on (a worker thread per CPU), every thread of it trimming what
/// it freed with [`release_freed`] as it goes idle.
pub fn trimming_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    trim_each_thread(&mut builder, release_freed)
        .enable_all()
        .build()
}

/// A thread of its own, named `name`, running a current-thread runtime until the returned
/// sender is sent or dropped; `trim` (e.g. [`release_freed`]) runs as it goes idle, and
/// `on_start` on the thread before anything else. For the control plane and each proxy worker:
/// mimalloc reuses a freed block at once only on the thread whose heap it came from, and a task
/// of the multi-thread runtime allocates on whichever worker it runs, so each of a burst's
/// updates put the new services on pages beside the ones it freed on the other worker's heap
/// (which only that worker can reuse).
pub fn own_thread_runtime(
    name: String,
    trim: Option<fn()>,
    on_start: impl FnOnce() + Send + 'static,
) -> std::io::Result<(tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>)> {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    if let Some(trim) = trim {
        trim_each_thread(&mut builder, trim);
    }
    let runtime = builder.enable_all().build()?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new().name(name).spawn(move || {
        on_start();
        // Sent or dropped: either way its owner is done with it.
        let _ = runtime.block_on(stopped);
    })?;
    Ok((handle, stop))
}

#[cfg(test)]
mod tests {
    use std::{
        sync::Mutex,
        thread::{self, ThreadId},
        time::Duration,
    };

    use super::*;

    /// Threads the trims of the test named by the thread name ran on.
    static TRIMMED: Mutex<Vec<(String, ThreadId)>> = Mutex::new(Vec::new());

    fn record_trim() {
        let me = thread::current();
        let name = me.name().unwrap_or_default().to_owned();
        TRIMMED.lock().unwrap().push((name, me.id()));
    }

    fn trims_on(name: &str) -> Vec<ThreadId> {
        let trimmed = TRIMMED.lock().unwrap();
        trimmed
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, id)| *id)
            .collect()
    }

    #[test]
    fn every_thread_of_a_multi_thread_runtime_trims_its_memory() {
        let name = "trim-test-each-worker";
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        let runtime = trim_each_thread(&mut builder, record_trim)
            .worker_threads(3)
            .thread_name(name)
            .enable_all()
            .build()
            .unwrap();
        // Work on every worker (a barrier holds each task until all three run at once), then
        // idle: each thread has to trim what it freed, not just the one a timer wakes.
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(3));
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let barrier = barrier.clone();
                runtime.spawn(async move {
                    let _ = std::hint::black_box(vec![1u8; 1 << 20]);
                    barrier.wait().await;
                    thread::current().id()
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let ran_on: Vec<ThreadId> = runtime.block_on(async {
            let mut ids = Vec::new();
            for task in tasks {
                ids.push(task.await.unwrap());
            }
            ids
        });
        let mut trimmed = trims_on(name);
        while !ran_on.iter().all(|id| trimmed.contains(id)) {
            assert!(
                std::time::Instant::now() < deadline,
                "{ran_on:?} vs {trimmed:?}"
            );
            thread::sleep(Duration::from_millis(10));
            trimmed = trims_on(name);
        }
    }

    #[test]
    fn a_thread_that_parks_often_trims_once_a_second() {
        let name = "trim-test-rate";
        let counts = thread::Builder::new()
            .name(name.to_owned())
            .spawn(|| {
                let mut builder = tokio::runtime::Builder::new_current_thread();
                let runtime = trim_each_thread(&mut builder, record_trim)
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    // Twenty parks in well under a second: one trim.
                    for _ in 0..20 {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    let quick = trims_on(name).len();
                    // The next park a second later trims again.
                    tokio::time::sleep(TRIM_EVERY + Duration::from_millis(100)).await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    (quick, trims_on(name).len())
                })
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(counts, (1, 2));
    }

    #[test]
    fn an_own_thread_runtime_runs_every_task_on_its_thread_until_stopped() {
        let name = "own-thread-test";
        let (handle, stop) =
            own_thread_runtime(name.to_owned(), Some(release_freed), || {}).unwrap();
        let caller = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ran_on: Vec<(Option<String>, ThreadId)> = caller.block_on(async {
            let tasks: Vec<_> = (0..3)
                .map(|_| {
                    handle.spawn(async {
                        tokio::task::yield_now().await;
                        let me = thread::current();
                        (me.name().map(str::to_owned), me.id())
                    })
                })
                .collect();
            let mut ran_on = Vec::new();
            for task in tasks {
                ran_on.push(task.await.unwrap());
            }
            ran_on
        });
        assert_ne!(ran_on[0].1, thread::current().id());
        assert!(
            ran_on
                .iter()
                .all(|r| *r == (Some(name.to_owned()), ran_on[0].1)),
            "{ran_on:?}"
        );
        // Stopped: its runtime is gone, a task given to it now is cancelled, never run.
        drop(stop);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let late = caller.block_on(handle.spawn(async {}));
            if late.is_err_and(|e| e.is_cancelled()) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "still running");
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn rss_grows_with_touched_memory() {
        let before = super::rss_mb();
        assert!(before > 0.0);
        // 64 MiB written, so really resident.
        let block = vec![1u8; 64 << 20];
        let after = super::rss_mb();
        assert!(after - before > 32.0, "{before} → {after}");
        drop(block);
    }
}
