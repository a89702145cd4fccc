//! The Marathon watcher: keeps the event stream open, resyncs, and coalesces events into a
//! bounded number of [`MarathonUpdate`]s.
//!
//! - After every (re)connect and every `resync_interval`: one full `/v2/apps` read, sent as
//!   [`MarathonUpdate::Snapshot`]. Marathon has no event replay, so a reconnect must resync.
//! - The stream is read on a task of its own, always: Marathon drops subscribers that fall
//!   behind, so a slow `/v2/apps` read must never stop it. Events only mark apps dirty (a set
//!   bounded by the resync threshold). Dirty apps are re-read once the stream has been quiet for
//!   `coalesce_idle`, or at the latest `coalesce_max_delay` after the first dirty mark, and sent
//!   as one [`MarathonUpdate::Apps`], while the reader keeps marking the next batch. A quarter
//!   of the known apps dirty (at least `resync_threshold`) makes one full resync instead. A
//!   burst of N events thus costs at most one read per app per window.
//! - No byte for `stall_timeout` (Marathon's event bus has been seen to go silent while keeping
//!   the connection): reconnect at once. Other failures: reconnect after a jittered exponential
//!   backoff capped by `max_backoff`.
//! - A failed read is reported as [`MarathonUpdate::SyncFailed`]; the receiver keeps its last
//!   good state, and the read is retried.
//! - With `poll_interval`, no event stream: a full read every period.
//!
//! Wiring (in `main.rs`):
//!
//! ```ignore
//! let cfg = MarathonConfig::from_options(&opts)?;          // flags -> config (errors name the flag)
//! let watcher = MarathonWatcher::new(cfg)?;                // builds the HTTP client, no I/O yet
//! let resync = watcher.resync_trigger();                   // e.g. for SIGHUP
//! let (tx, mut rx) = tokio::sync::mpsc::channel(16);
//! tokio::spawn(watcher.run(tx, shutdown_rx).instrument(info_span!("marathon")));
//! while let Some(update) = rx.recv().await { /* Snapshot | Apps | SyncFailed */ }
//! ```
use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt as _;
use rand::Rng as _;
use serde_json::Value;
use tokio::{
    sync::{Notify, mpsc, watch},
    time::{Instant, sleep, sleep_until, timeout_at},
};
use tracing::{debug, info, warn};

use super::{
    MarathonError,
    client::{EventStream, MarathonClient},
    config::MarathonConfig,
    events::{EventAction, actions_for_logged},
    sse::SseParser,
    task_status::{TaskStatus, task_status},
    types::{AppList, parse_reread},
};

/// What the watcher tells the model. A full read comes parsed app by app (parsing 10,000 apps
/// is done here, from the body's bytes, not as `Value`s); re-read apps come as raw JSON. Either
/// way one malformed app is rejected alone.
#[derive(Clone, Debug, PartialEq)]
pub enum MarathonUpdate {
    /// Every app (a full read): replaces the previous state. Apps that did not parse are in
    /// [`AppList::invalid`].
    Snapshot(AppList),
    /// Some apps changed or disappeared since the last update.
    Apps {
        /// Re-read apps, parsed (the ones that did not parse name the field in
        /// [`AppList::invalid`]).
        changed: AppList,
        /// Ids of apps that no longer exist.
        removed: Vec<String>,
        /// When the first event that asked for these re-reads was read off the stream (`None`:
        /// not asked for by events).
        since: Option<std::time::Instant>,
        /// How long the re-read waited for Marathon's answers until these apps were in (of
        /// the latency since `since`, the share that is Marathon's, not mlb's).
        marathon: Duration,
    },
    /// Tasks changed state, as `status_update_event`s say (sent as soon as they are read, ahead
    /// of the re-read of their apps; see [`super::task_status`]).
    TaskStatuses {
        statuses: Vec<TaskStatus>,
        /// When the oldest of their events was read off the stream.
        since: std::time::Instant,
    },
    /// A read failed: keep the last good state. The watcher retries by itself.
    SyncFailed {
        /// The error, for logs and the status page.
        error: String,
    },
}

impl MarathonUpdate {
    /// What kind of update this is, for the controller's log.
    pub fn cause(&self) -> &'static str {
        match self {
            MarathonUpdate::Snapshot(_) => "full read",
            MarathonUpdate::Apps { .. } => "re-read",
            MarathonUpdate::TaskStatuses { .. } => "task status",
            MarathonUpdate::SyncFailed { .. } => "failed read",
        }
    }

    /// When the oldest event this update reflects was read off the stream: the start of
    /// mlb's own share of that event's latency (`None` for full reads and failures).
    pub fn since(&self) -> Option<std::time::Instant> {
        match self {
            MarathonUpdate::Apps { since, .. } => *since,
            MarathonUpdate::TaskStatuses { since, .. } => Some(*since),
            MarathonUpdate::Snapshot(_) | MarathonUpdate::SyncFailed { .. } => None,
        }
    }

    /// How long this update waited for Marathon's answers after its events (re-reads only).
    pub fn marathon_wait(&self) -> Duration {
        match self {
            MarathonUpdate::Apps { marathon, .. } => *marathon,
            _ => Duration::ZERO,
        }
    }

    /// A [`MarathonUpdate::Snapshot`] of app objects, each parsed as a full read parses it
    /// (tests, one-off reads).
    pub fn snapshot_from_values(apps: Vec<Value>) -> Self {
        MarathonUpdate::Snapshot(AppList::from_values(apps))
    }
}

/// Asks a running watcher for a full resync (SIGHUP, an admin endpoint).
#[derive(Clone, Debug, Default)]
pub struct ResyncTrigger(Arc<Notify>);

impl ResyncTrigger {
    /// Requests a full resync as soon as possible.
    pub fn request(&self) {
        self.0.notify_one();
    }
}

/// Initial reconnect backoff.
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// A connection that lived this long resets the backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(60);
/// First retry delay after a failed resync or re-read while connected.
const SYNC_RETRY: Duration = Duration::from_secs(1);

/// The watcher. Build with [`MarathonWatcher::new`], then spawn [`MarathonWatcher::run`].
#[derive(Debug)]
pub struct MarathonWatcher {
    client: MarathonClient,
    cfg: MarathonConfig,
    resync: ResyncTrigger,
    counters: Arc<WatcherCounters>,
}

/// Why a stream session ended.
enum SessionEnd {
    Shutdown,
    Stalled,
    Failed(MarathonError),
}

/// Jittered exponential backoff ("equal jitter": half fixed, half random, so it never
/// collapses to zero).
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Backoff {
            next: INITIAL_BACKOFF.min(max),
            max,
        }
    }

    fn next_wait(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = base / 2;
        half + half.mul_f64(rand::rng().random::<f64>())
    }

    fn reset(&mut self) {
        self.next = INITIAL_BACKOFF.min(self.max);
    }
}

/// Apps waiting to be re-read, and when.
#[derive(Default)]
struct Dirty {
    refresh: BTreeSet<String>,
    removed: BTreeSet<String>,
    resync: bool,
    first_at: Option<Instant>,
    flush_at: Option<Instant>,
}

impl Dirty {
    /// Marks what `action` names. Beyond `limit` apps the ids are dropped for one full resync:
    /// the set stays bounded however long a burst lasts.
    fn add(&mut self, action: EventAction, now: Instant, window: &Window, limit: usize) {
        match action {
            EventAction::Ignore => return,
            EventAction::Refresh(ids) => self.refresh.extend(ids),
            EventAction::Removed(id) => {
                self.removed.insert(id);
            }
            EventAction::Resync => self.resync = true,
        }
        if self.refresh.len() + self.removed.len() >= limit {
            self.resync = true;
        }
        if self.resync {
            self.refresh.clear();
            self.removed.clear();
        }
        let first = *self.first_at.get_or_insert(now);
        self.flush_at = Some((now + window.idle).min(first + window.max_delay));
    }

    fn take(&mut self) -> Dirty {
        std::mem::take(self)
    }
}

/// The coalescing window (see the module documentation).
#[derive(Clone, Copy)]
struct Window {
    idle: Duration,
    max_delay: Duration,
}

/// A full resync instead of per-app re-reads once this share of the known apps (at least
/// `resync_threshold`) is dirty: reading one app costs a request, reading them all one body.
const RESYNC_FRACTION: usize = 4;

/// Where the stream reader leaves what events marked dirty, for the session to re-read. The
/// reader never waits for the session, so the stream is read while apps are being re-read.
struct Inbox {
    dirty: Mutex<Dirty>,
    /// Signalled when the first app of a batch is marked.
    marked: Notify,
    /// Dirty apps that make one full resync instead (see [`RESYNC_FRACTION`]).
    limit: AtomicUsize,
    window: Window,
}

impl Inbox {
    fn new(cfg: &MarathonConfig) -> Self {
        Inbox {
            dirty: Mutex::default(),
            marked: Notify::new(),
            limit: AtomicUsize::new(cfg.resync_threshold.max(1)),
            window: Window {
                idle: cfg.coalesce_idle,
                max_delay: cfg.coalesce_max_delay,
            },
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Dirty> {
        // A panic while holding this lock cannot leave a half-updated set that matters: the
        // worst case is an app re-read once more.
        self.dirty
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn add_all(&self, actions: Vec<EventAction>, now: Instant) {
        if actions.is_empty() {
            return;
        }
        let limit = self.limit.load(Ordering::Relaxed);
        let mut dirty = self.lock();
        let was_empty = dirty.flush_at.is_none();
        for action in actions {
            dirty.add(action, now, &self.window, limit);
        }
        if was_empty && dirty.flush_at.is_some() {
            self.marked.notify_one();
        }
    }

    fn flush_at(&self) -> Option<Instant> {
        self.lock().flush_at
    }

    fn take(&self) -> Dirty {
        self.lock().take()
    }

    /// After a full read of `apps` apps: the share that makes a resync scales with them.
    fn set_known_apps(&self, apps: usize, threshold: usize) {
        let limit = threshold.max(apps / RESYNC_FRACTION).max(1);
        self.limit.store(limit, Ordering::Relaxed);
    }
}

/// What the watcher has done so far, for tests, the status page and benchmarks.
#[derive(Debug, Default)]
pub struct WatcherCounters {
    stream_connects: AtomicU64,
    full_syncs: AtomicU64,
    apps_reread: AtomicU64,
    events: AtomicU64,
}

impl WatcherCounters {
    /// Event streams opened (the first connection and every reconnect).
    pub fn stream_connects(&self) -> u64 {
        self.stream_connects.load(Ordering::Relaxed)
    }

    /// Full `/v2/apps` reads started (after each connect, periodic, requested, or because too
    /// many apps changed at once).
    pub fn full_syncs(&self) -> u64 {
        self.full_syncs.load(Ordering::Relaxed)
    }

    /// Single apps re-read because events named them.
    pub fn apps_reread(&self) -> u64 {
        self.apps_reread.load(Ordering::Relaxed)
    }

    /// Events read from the stream (relevant or not).
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }
}

impl MarathonWatcher {
    /// Builds the client from the configuration.
    pub fn new(cfg: MarathonConfig) -> Result<Self, MarathonError> {
        Ok(MarathonWatcher {
            client: MarathonClient::new(&cfg)?,
            cfg,
            resync: ResyncTrigger::default(),
            counters: Arc::default(),
        })
    }

    /// The running watcher's counters (connects, full reads, re-reads, events).
    pub fn counters(&self) -> Arc<WatcherCounters> {
        self.counters.clone()
    }

    /// A handle that requests a full resync of the running watcher.
    pub fn resync_trigger(&self) -> ResyncTrigger {
        self.resync.clone()
    }

    /// The client, for one-off reads.
    pub fn client(&self) -> &MarathonClient {
        &self.client
    }

    /// Watches Marathon until `shutdown` becomes true (or its sender is dropped, or `updates`
    /// is closed), sending updates as described in the module documentation.
    pub async fn run(
        self,
        updates: mpsc::Sender<MarathonUpdate>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        if *shutdown.borrow() {
            return;
        }
        let mut w = Running {
            client: self.client,
            cfg: self.cfg,
            resync: self.resync,
            counters: self.counters,
            updates,
        };
        match w.cfg.poll_interval {
            Some(every) => w.poll(every, &mut shutdown).await,
            None => w.follow_events(&mut shutdown).await,
        }
        debug!("Marathon watcher stopped");
    }
}

struct Running {
    client: MarathonClient,
    cfg: MarathonConfig,
    resync: ResyncTrigger,
    counters: Arc<WatcherCounters>,
    updates: mpsc::Sender<MarathonUpdate>,
}

/// Resolves when shutdown is requested (true, or the sender dropped).
async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

impl Running {
    /// Sends an update; false when the receiver is gone or shutdown came first.
    async fn send(&self, u: MarathonUpdate, shutdown: &mut watch::Receiver<bool>) -> bool {
        tokio::select! {
            biased;
            () = shutdown_requested(shutdown) => false,
            r = self.updates.send(u) => r.is_ok(),
        }
    }

    /// Full read; sends `Snapshot` or `SyncFailed`. Returns (how many apps were read when it
    /// worked, keep running).
    async fn full_sync(&self, shutdown: &mut watch::Receiver<bool>) -> (Option<usize>, bool) {
        WatcherCounters::bump(&self.counters.full_syncs, 1);
        let result = tokio::select! {
            biased;
            () = shutdown_requested(shutdown) => return (None, false),
            r = self.client.list_apps_timed() => r,
        };
        match result {
            Ok((list, times)) => {
                let apps = list.apps.len() + list.invalid.len();
                info!(
                    apps = list.apps.len(),
                    invalid = list.invalid.len(),
                    host = %self.client.current_host(),
                    bytes = times.bytes,
                    read_ms = times.read.as_secs_f64() * 1e3,
                    parse_ms = times.parse.as_secs_f64() * 1e3,
                    rss_mb = crate::stats::memory::rss_mb(),
                    "Marathon full sync"
                );
                (
                    Some(apps),
                    self.send(MarathonUpdate::Snapshot(list), shutdown).await,
                )
            }
            Err(e) => {
                warn!(error = %e, "Marathon full sync failed; keeping the last good state");
                let u = MarathonUpdate::SyncFailed {
                    error: e.to_string(),
                };
                (None, self.send(u, shutdown).await)
            }
        }
    }

    async fn poll(&mut self, every: Duration, shutdown: &mut watch::Receiver<bool>) {
        info!(every = ?every, "polling Marathon (no event stream)");
        loop {
            let (_, keep_running) = self.full_sync(shutdown).await;
            if !keep_running {
                return;
            }
            tokio::select! {
                biased;
                () = shutdown_requested(shutdown) => return,
                () = self.resync.0.notified() => {}
                () = sleep(every) => {}
            }
        }
    }

    async fn follow_events(&mut self, shutdown: &mut watch::Receiver<bool>) {
        let mut backoff = Backoff::new(self.cfg.max_backoff);
        loop {
            let opened = tokio::select! {
                biased;
                () = shutdown_requested(shutdown) => return,
                r = self.client.open_events() => r,
            };
            let wait = match opened {
                Ok(stream) => {
                    WatcherCounters::bump(&self.counters.stream_connects, 1);
                    info!(url = %stream.url, "Marathon event stream connected");
                    let started = Instant::now();
                    let end = self.session(stream, shutdown).await;
                    if started.elapsed() >= STABLE_CONNECTION {
                        backoff.reset();
                    }
                    match end {
                        SessionEnd::Shutdown => return,
                        SessionEnd::Stalled => {
                            warn!(after = ?self.cfg.stall_timeout, "Marathon event stream stalled; reconnecting now");
                            Duration::ZERO
                        }
                        SessionEnd::Failed(e) => {
                            let wait = backoff.next_wait();
                            warn!(error = %e, "Marathon event stream lost; reconnecting in {wait:?}");
                            wait
                        }
                    }
                }
                Err(e) => {
                    let wait = backoff.next_wait();
                    warn!(error = %e, "cannot open the Marathon event stream; retrying in {wait:?}");
                    // Status only: dropped when the receiver is behind, never blocks retrying.
                    let _ = self.updates.try_send(MarathonUpdate::SyncFailed {
                        error: e.to_string(),
                    });
                    wait
                }
            };
            if !self.wait_to_reconnect(wait, shutdown).await {
                return;
            }
        }
    }

    /// Waits `wait` before reconnecting the stream; meanwhile a requested resync (SIGHUP,
    /// `/_mlb_signal/hup`), or the periodic one falling due, reads `/v2/apps` at once rather
    /// than after the backoff. False on shutdown.
    async fn wait_to_reconnect(
        &self,
        wait: Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let reconnect_at = Instant::now() + wait;
        let mut resync_at = Instant::now() + self.cfg.resync_interval;
        loop {
            tokio::select! {
                biased;
                () = shutdown_requested(shutdown) => return false,
                () = sleep_until(reconnect_at) => return true,
                () = self.resync.0.notified() => {}
                () = sleep_until(resync_at) => {}
            }
            info!("resync while the event stream is down");
            if !self.full_sync(shutdown).await.1 {
                return false;
            }
            resync_at = Instant::now() + self.cfg.resync_interval;
        }
    }

    /// One connected stream: its reader runs on a task of its own (events only mark apps
    /// dirty, see [`Inbox`]) while this loop resyncs now and periodically and re-reads the
    /// dirty apps, so a slow read of Marathon never leaves the stream unread.
    async fn session(
        &mut self,
        stream: EventStream,
        shutdown: &mut watch::Receiver<bool>,
    ) -> SessionEnd {
        let inbox = Arc::new(Inbox::new(&self.cfg));
        let reader = tokio::spawn(read_stream(
            stream,
            inbox.clone(),
            self.updates.clone(),
            self.counters.clone(),
            self.cfg.stall_timeout,
        ));
        let _stop_reader = AbortOnDrop(reader.abort_handle());
        let mut reader = reader;
        // Per-app updates only make sense on top of a snapshot taken on this connection.
        let mut synced = false;
        let mut next_resync = Instant::now();
        let mut sync_retry = Backoff::new(self.cfg.max_backoff.min(self.cfg.resync_interval));
        sync_retry.next = SYNC_RETRY.min(sync_retry.max);
        loop {
            let flush_at = inbox.flush_at();
            tokio::select! {
                biased;
                () = shutdown_requested(shutdown) => return SessionEnd::Shutdown,
                end = &mut reader => return reader_end(end),
                () = self.resync.0.notified() => next_resync = Instant::now(),
                () = sleep_until(next_resync) => {
                    // Whatever is marked from now on comes after the read: it is re-read then.
                    drop(inbox.take());
                    let (read, keep_running) = self.full_sync(shutdown).await;
                    if !keep_running {
                        return SessionEnd::Shutdown;
                    }
                    if let Some(apps) = read {
                        synced = true;
                        inbox.set_known_apps(apps, self.cfg.resync_threshold);
                        sync_retry.next = SYNC_RETRY.min(sync_retry.max);
                        next_resync = Instant::now() + self.cfg.resync_interval;
                    } else {
                        next_resync = Instant::now() + sync_retry.next_wait();
                    }
                }
                () = inbox.marked.notified(), if flush_at.is_none() => {}
                () = sleep_until(flush_at.unwrap_or(next_resync)), if flush_at.is_some() => {
                    // More events may have pushed the flush later since this sleep began.
                    if inbox.flush_at().is_some_and(|at| at > Instant::now()) {
                        continue;
                    }
                    let batch = inbox.take();
                    if !synced {
                        continue; // the pending full resync covers these apps
                    }
                    if batch.resync {
                        debug!("coalesced events ask for a full resync");
                        next_resync = Instant::now();
                        continue;
                    }
                    match self.reread(batch, shutdown).await {
                        Ok(true) => {}
                        Ok(false) => return SessionEnd::Shutdown,
                        Err(e) => {
                            let u = MarathonUpdate::SyncFailed { error: e.to_string() };
                            warn!(error = %e, "re-reading Marathon apps failed; full resync scheduled");
                            if !self.send(u, shutdown).await {
                                return SessionEnd::Shutdown;
                            }
                            next_resync = next_resync.min(Instant::now() + sync_retry.next_wait());
                        }
                    }
                }
            }
        }
    }

    /// Re-reads the dirty apps (a bounded number at once) and sends them as `Apps` updates of
    /// at most [`REREAD_CHUNK`] apps, each as soon as its apps are read. `Ok(false)`: shutdown
    /// or the receiver is gone.
    async fn reread(
        &self,
        batch: Dirty,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool, MarathonError> {
        // Owned ids and client clones: borrowed ones make this future not provably `Send`
        // (rust-lang/rust#102211).
        WatcherCounters::bump(&self.counters.apps_reread, batch.refresh.len() as u64);
        let mut reads = futures_util::stream::iter(batch.refresh.iter().cloned())
            .map(|id| {
                let client = self.client.clone();
                async move {
                    // Parsed as soon as it arrives: a burst re-reads hundreds of apps, and
                    // their JSON trees held until the last one came were tens of megabytes.
                    let r = client.get_app(&id).await.map(|app| app.map(parse_reread));
                    (id, r)
                }
            })
            .buffered(self.cfg.reread_concurrency.max(1))
            .chunks(REREAD_CHUNK);
        let since = batch.first_at.map(Instant::into_std);
        let mut removed: Vec<String> = batch
            .removed
            .iter()
            .filter(|id| !batch.refresh.contains(*id)) // a later event may have re-created it
            .cloned()
            .collect();
        // The reads only progress while `reads` is polled: the time spent waiting on it is
        // Marathon's (the parse of each answer included, a fraction of a millisecond).
        let mut marathon = Duration::ZERO;
        loop {
            let waited = Instant::now();
            let results = tokio::select! {
                biased;
                () = shutdown_requested(shutdown) => return Ok(false),
                r = reads.next() => r,
            };
            marathon += waited.elapsed();
            // The apps removed go with the first part (or alone when none was re-read).
            let mut changed = Vec::new();
            match results {
                Some(results) => {
                    for (id, r) in results {
                        match r? {
                            Some(app) => changed.push(app),
                            None => removed.push(id),
                        }
                    }
                }
                None if removed.is_empty() => return Ok(true),
                None => {}
            }
            if changed.is_empty() && removed.is_empty() {
                continue;
            }
            // Parsed here, at the edge: the controller only ever sees typed apps.
            let changed = AppList::from_parsed(changed);
            let removed = std::mem::take(&mut removed);
            debug!(
                changed = changed.apps.len() + changed.invalid.len(),
                removed = removed.len(),
                "Marathon apps updated"
            );
            if !self
                .send(
                    MarathonUpdate::Apps {
                        changed,
                        removed,
                        since,
                        marathon,
                    },
                    shutdown,
                )
                .await
            {
                return Ok(false);
            }
        }
    }
}

/// Aborts the stream reader when its session ends, however it ends.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn reader_end(end: Result<SessionEnd, tokio::task::JoinError>) -> SessionEnd {
    match end {
        Ok(end) => end,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => SessionEnd::Failed(MarathonError::Stream {
            url: String::new(),
            reason: format!("event reader stopped: {e}"),
        }),
    }
}

/// The re-read apps of a burst go to the controller this many at a time: it applies each part
/// while the rest are read, so the previous versions of a few apps (and the model's and the
/// dataplanes' copies of them) are replaced at once instead of a burst's hundreds, which at
/// 10,000 apps raised the peak resident size by megabytes. Under the controller's big update
/// (`stats::memory::BIG_UPDATE`, 64): a part costs no forced walk of the allocator's heap, which
/// with 100 a part slowed a burst of 1,000 kills by about 0.2 s.
pub(super) const REREAD_CHUNK: usize = 60;

/// Task states waiting for room in the update channel, at most (the oldest go first).
const MAX_UNSENT_STATUSES: usize = 10_000;

/// Task states read and not yet sent, and when the oldest of them was read.
#[derive(Default)]
struct Unsent {
    statuses: Vec<TaskStatus>,
    since: Option<std::time::Instant>,
}

impl Unsent {
    fn add(&mut self, statuses: impl Iterator<Item = TaskStatus>, now: Instant) {
        let before = self.statuses.len();
        self.statuses.extend(statuses);
        if self.statuses.len() > before {
            self.since.get_or_insert(now.into_std());
        }
    }

    /// Whether task states wait to be sent.
    fn waiting(&self) -> bool {
        self.since.is_some()
    }

    /// Sends the task states if the channel has room; keeps them otherwise (bounded).
    fn send(&mut self, updates: &mpsc::Sender<MarathonUpdate>) {
        if !self.waiting() {
            return;
        }
        if let Ok(permit) = updates.try_reserve() {
            self.send_with(permit);
        } else {
            let excess = self.statuses.len().saturating_sub(MAX_UNSENT_STATUSES);
            self.statuses.drain(..excess);
        }
    }

    /// Sends the task states with room already reserved.
    fn send_with(&mut self, permit: mpsc::Permit<'_, MarathonUpdate>) {
        if let Some(since) = self.since.take() {
            let statuses = std::mem::take(&mut self.statuses);
            permit.send(MarathonUpdate::TaskStatuses { statuses, since });
        }
    }
}

/// Reads the event stream until it fails or stalls (no byte, keep-alives included, for
/// `stall_timeout`), marking in `inbox` the apps its events name, and sending the task states
/// of status updates on `updates` at once. It never waits on anything but the stream, so
/// Marathon never sees a slow consumer: states that find `updates` full wait (at most
/// [`MAX_UNSENT_STATUSES`]; the re-reads bring the others) and go as soon as it has room, while
/// the stream is read.
async fn read_stream(
    mut stream: EventStream,
    inbox: Arc<Inbox>,
    updates: mpsc::Sender<MarathonUpdate>,
    counters: Arc<WatcherCounters>,
    stall_timeout: Duration,
) -> SessionEnd {
    let mut parser = SseParser::default();
    let mut unsent = Unsent::default();
    let mut stall_at = Instant::now() + stall_timeout;
    loop {
        let read = tokio::select! {
            biased;
            read = timeout_at(stall_at, stream.chunk()) => read,
            // Not with the next chunk: after a burst the stream may stay quiet for long.
            Ok(permit) = updates.reserve(), if unsent.waiting() => {
                unsent.send_with(permit);
                continue;
            }
        };
        stall_at = Instant::now() + stall_timeout;
        let bytes = match read {
            Err(_) => return SessionEnd::Stalled,
            Ok(Err(e)) => return SessionEnd::Failed(e),
            Ok(Ok(None)) => {
                return SessionEnd::Failed(MarathonError::Stream {
                    url: stream.url.to_string(),
                    reason: "closed by the server".into(),
                });
            }
            Ok(Ok(Some(bytes))) => bytes,
        };
        let events = match parser.feed(&bytes) {
            Ok(ev) => ev,
            Err(e) => {
                return SessionEnd::Failed(MarathonError::Stream {
                    url: stream.url.to_string(),
                    reason: e.to_string(),
                });
            }
        };
        let now = Instant::now();
        WatcherCounters::bump(&counters.events, events.len() as u64);
        unsent.add(events.iter().filter_map(task_status), now);
        unsent.send(&updates);
        let mut actions = Vec::new();
        for ev in &events {
            for action in actions_for_logged(ev) {
                // The first link of an update's trail in the logs: event id and type → app,
                // then the re-read, the controller's recompute and the dataplanes' generation.
                debug!(event.id = ?ev.id, event.kind = %ev.event, ?action, "Marathon event");
                crate::stats::live::live().event_received();
                actions.push(action);
            }
        }
        inbox.add_all(actions, now);
    }
}
