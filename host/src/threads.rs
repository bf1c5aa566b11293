//! Connection threads: each accepted connection is served, from its first byte to its
//! close, by one of a few runtimes, one per core, each running its tasks on one thread
//! of its own. The tasks a request spawns (hyper's, rmcp's server task for an MCP
//! request) are spawned on that same runtime, so they run on that same thread. Work
//! that many connections share (an upstream MCP session) lives on one of these
//! runtimes too, picked by its key ([`Homes`]).
//!
//! Why not the one work-stealing runtime for everything: a call through `/v1/mcp`
//! passes several tasks on its way (rmcp's task for the request, the upstream client's
//! service loop and its transport worker, the egress connection), and on a
//! work-stealing runtime each hand-off between them could wake a parked worker on
//! another core, which then looked for work, stole it or went back to sleep. On the
//! 2-core benchmark machine that was most of an MCP call's CPU at concurrency 1
//! (docs/performance-log.md). Here a hand-off inside a connection is a queue push on the
//! same thread. What is given up is stealing: a connection stays on its runtime, so
//! connections are dealt to the runtimes in turn.
//!
//! Which runtime ([`Flavor`]): a few request paths wait on the vault in place (a config
//! save, a user's token read the first time, the OAuth callback). On the embedded store
//! that is a local read or a disk sync, and the lightest runtime, tokio's
//! single-threaded one, serves fastest. With a PostgreSQL vault the wait is a database
//! round trip, or seconds while the database is down, and waits with `block_in_place`
//! (`vault::postgres`), which hands the worker's queue of other connections to a fresh
//! thread first so only its own request waits; that takes tokio's multi-threaded
//! runtime, here with one worker, at about 2 µs more CPU per proxied request.
//!
//! The process's main runtime (multi-threaded) keeps the accept loop, start-up and the
//! background work started there (refreshes, reloads, watchers).

use std::cell::Cell;
use std::future::Future;
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tracing::Instrument as _;

thread_local! {
    /// This thread's connection runtime, by index; `None` on every other thread.
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// How many connection threads [`ConnectionThreads::per_core`] starts: one per core
/// the process may use (`available_parallelism`, which follows CPU affinity and cgroup
/// quotas).
pub fn per_core_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The connection runtime this code runs on (`0..per_core_count()`), if any: for state
/// kept per runtime, such as the egress client's connection pools.
pub fn current() -> Option<usize> {
    INDEX.with(Cell::get)
}

/// Where work that many connections share lives: an upstream MCP session serves every
/// caller of its connector, so it is opened on one of the connection runtimes, picked
/// by its key, not on the main runtime. A call from a connection on the same runtime
/// then never leaves its thread, and one from another crosses between two connection
/// threads, which costs less than waking the work-stealing runtime's workers
/// (docs/performance-log.md); with a server that names no session, the other threads
/// open sessions of their own (`mcp::per_thread`). Keys spread such work over the
/// runtimes. Empty (the default) when there are no connection threads: the work stays
/// where it starts.
#[derive(Clone, Default)]
pub struct Homes {
    runtimes: Arc<[Handle]>,
    /// Set once the runtimes are stopping: work asked for afterwards (a catalog refresh
    /// during the last seconds of shutdown) runs where it is awaited instead.
    stopped: Arc<AtomicBool>,
}

impl Homes {
    /// The runtime `key` lives on, the same for the same key for the life of the
    /// process; `None` without connection threads.
    pub fn for_key(&self, key: &str) -> Option<&Handle> {
        if self.stopped.load(Ordering::Acquire) {
            return None;
        }
        self.runtimes.get(self.index_of(key)?)
    }

    /// The index (as [`current`] numbers the runtimes) of the runtime `key` lives on;
    /// `None` without connection threads.
    pub fn index_of(&self, key: &str) -> Option<usize> {
        if self.runtimes.is_empty() {
            return None;
        }
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        // The remainder is below the runtime count, a `usize`.
        Some((h.finish() % self.runtimes.len() as u64) as usize)
    }

    /// How many connection runtimes there are (0 without connection threads).
    pub fn count(&self) -> usize {
        self.runtimes.len()
    }

    /// Runs `work` on `key`'s runtime and waits for it there, or here without
    /// connection threads (or once they are stopping). What `work` spawns stays on
    /// that runtime, and it runs in the caller's tracing span. Dropping the wait (a
    /// timeout) cancels `work`: it is aborted there, at its next await.
    pub async fn run<T: Send + 'static>(
        &self,
        key: &str,
        work: impl Future<Output = anyhow::Result<T>> + Send + 'static,
    ) -> anyhow::Result<T> {
        match self.for_key(key) {
            Some(home) => {
                tokio_util::task::AbortOnDropHandle::new(home.spawn(work.in_current_span()))
                    .await
                    .map_err(|e| anyhow::anyhow!("the work on its connection thread ended: {e}"))?
            }
            None => work.await,
        }
    }
}

/// Which tokio runtime each connection thread runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Single-threaded: the lightest. A request that waits in place holds every
    /// connection of its thread, so only where such waits are short (a local store).
    SingleThreaded,
    /// Multi-threaded with one worker: a wait in place (`block_in_place`) first hands the
    /// thread's other connections to a fresh thread (a vault on a database server).
    OneWorker,
}

/// One connection runtime: where its jobs go, and its owning thread's controls.
struct Lane {
    handle: Handle,
    /// Tells the owning thread to shut the runtime down, allowing this long.
    stop: oneshot::Sender<Duration>,
    /// Says the runtime has shut down (or the owning thread ended).
    ended: std::sync::mpsc::Receiver<()>,
}

/// The connection runtimes. [`ConnectionThreads::stop`] ends them and waits; dropped
/// without it (an early return, a panic), they end without being waited for.
pub struct ConnectionThreads {
    lanes: Vec<Lane>,
    next: AtomicUsize,
    /// Shared with every [`Homes`] handed out.
    stopped: Arc<AtomicBool>,
}

impl ConnectionThreads {
    /// [`per_core_count`] runtimes.
    pub fn per_core(flavor: Flavor) -> anyhow::Result<Self> {
        Self::start(per_core_count(), flavor)
    }

    /// Starts `count` runtimes (at least one).
    pub fn start(count: usize, flavor: Flavor) -> anyhow::Result<Self> {
        let mut this = Self {
            lanes: Vec::with_capacity(count.max(1)),
            next: AtomicUsize::new(0),
            stopped: Arc::default(),
        };
        for i in 0..count.max(1) {
            this.lanes.push(Lane::start(i, flavor)?);
        }
        Ok(this)
    }

    /// The runtimes, for work many connections share ([`Homes`]).
    pub fn homes(&self) -> Homes {
        Homes {
            runtimes: self.lanes.iter().map(|l| l.handle.clone()).collect(),
            stopped: self.stopped.clone(),
        }
    }

    /// Runs `job` (a connection's service) on the next runtime in turn.
    /// Should that runtime have ended (its thread panicked), the job runs on the
    /// caller's runtime instead, so no connection is dropped for it.
    pub fn run(&self, job: impl Future<Output = ()> + Send + 'static) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        let lane = &self.lanes[i];
        // The owner thread reports its end, or drops the channel when it panics.
        if lane.ended.try_recv() != Err(std::sync::mpsc::TryRecvError::Empty) {
            tracing::error!(
                thread = i,
                "a connection thread has ended; serving on the main runtime"
            );
            tokio::spawn(job);
            return;
        }
        lane.handle.spawn(job);
    }

    /// Ends the runtimes after the graceful shutdown: what still runs on them (a
    /// connection cut off, a task a request left) is cancelled, and they are waited
    /// for up to `grace` in all, so what those tasks log on the way out is written
    /// before the process exits.
    pub async fn stop(mut self, grace: Duration) {
        self.stopped.store(true, Ordering::Release);
        let deadline = Instant::now() + grace;
        let mut ended = Vec::with_capacity(self.lanes.len());
        for lane in self.lanes.drain(..) {
            let _ = lane.stop.send(grace);
            ended.push(lane.ended);
        }
        // Waiting on threads blocks, which async code must not do in place.
        let waited = tokio::task::spawn_blocking(move || {
            ended
                .iter()
                .filter(|e| {
                    let left = deadline.saturating_duration_since(Instant::now());
                    e.recv_timeout(left) == Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                })
                .count()
        })
        .await;
        match waited {
            Ok(0) => {}
            Ok(n) => tracing::warn!("{n} connection thread(s) still busy after {grace:?}"),
            Err(e) => tracing::warn!("waiting for the connection threads failed: {e}"),
        }
    }
}

impl Drop for ConnectionThreads {
    fn drop(&mut self) {
        // Dropped without `stop` (an early return): the runtimes end on their own
        // threads as their stop channels close; work asked for from now on stays home.
        self.stopped.store(true, Ordering::Release);
    }
}

impl Lane {
    /// Starts runtime `i` on a thread that owns it. The runtime is built on that thread,
    /// which reports whether it could: a runtime must not be dropped inside async code,
    /// as one built here and handed to a thread that failed to start would be.
    fn start(i: usize, flavor: Flavor) -> anyhow::Result<Self> {
        let (built_tx, built_rx) = std::sync::mpsc::sync_channel(1);
        let (stop, stop_rx) = oneshot::channel::<Duration>();
        let (ended_tx, ended) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name(format!("connections-{i}"))
            .spawn(move || {
                let mut builder = match flavor {
                    Flavor::SingleThreaded => tokio::runtime::Builder::new_current_thread(),
                    Flavor::OneWorker => {
                        let mut b = tokio::runtime::Builder::new_multi_thread();
                        b.worker_threads(1);
                        b
                    }
                };
                // Every thread of runtime `i` knows it: the worker, a thread that takes
                // the worker's place during a `block_in_place`, the blocking pool.
                let built = builder
                    .thread_name(format!("connections-{i}"))
                    .on_thread_start(move || INDEX.with(|index| index.set(Some(i))))
                    .enable_all()
                    .build();
                let runtime = match built {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = built_tx.send(Err(e));
                        return;
                    }
                };
                INDEX.with(|index| index.set(Some(i)));
                runtime.spawn(keep_a_timer_due());
                let _ = built_tx.send(Ok(runtime.handle().clone()));
                // A single-threaded runtime runs its tasks here, while this waits.
                let grace = runtime.block_on(stop_rx).unwrap_or(Duration::ZERO);
                runtime.shutdown_timeout(grace);
                let _ = ended_tx.send(());
            })
            .context("cannot start a connection thread")?;
        let handle = built_rx
            .recv()
            .context("a connection thread ended before its runtime started")?
            .context("cannot start a connection thread's runtime")?;
        Ok(Self {
            handle,
            stop,
            ended,
        })
    }
}

/// How far ahead a connection runtime always has a timer due (see [`keep_a_timer_due`]):
/// well under the server's wait for a request head
/// ([`crate::limits::HEADER_READ_TIMEOUT`]), the timer a kept-alive connection sets
/// after every answer. A request's timer set for less than this (an egress read
/// timeout configured that low, a provider's retry delay) can still wake the driver.
const TIMER_DUE_WITHIN: Duration = Duration::from_secs(10);

/// Keeps a timer due within [`TIMER_DUE_WITHIN`] on the runtime it runs on, so that
/// setting a request's timers does not wake that runtime's own thread.
///
/// tokio's time driver plans its next wake-up from its timer wheel when its thread goes
/// to sleep and after timers fire, and a timer set for earlier than that plan wakes the
/// driver (a write to its `eventfd`; on an idle thread, the next wait for events also
/// returns at once), even when the timer is set on the driver's own thread while it
/// is awake. A connection thread often slept with only its requests' upstream waits
/// set (the egress read timeout, 300 s by default), so every connection that then
/// finished an answer and set the server's 30 s header timer woke it: about three in
/// ten proxied requests at concurrency 64, every one at concurrency 1
/// (docs/performance-log.md). With this timer set, the plan is never later than 10 s
/// ahead, except in the moment between its firing and its being set again. The price:
/// at rest each period wakes the thread about three times, as the timer moves down the
/// wheel's levels.
async fn keep_a_timer_due() {
    loop {
        tokio::time::sleep(TIMER_DUE_WITHIN).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    /// Connections are dealt in turn, and everything a connection spawns runs on the
    /// thread that serves it.
    #[tokio::test]
    async fn jobs_are_dealt_in_turn_and_their_tasks_stay_on_their_thread() {
        for flavor in [Flavor::SingleThreaded, Flavor::OneWorker] {
            dealt_in_turn(flavor).await;
        }
    }

    async fn dealt_in_turn(flavor: Flavor) {
        let threads = ConnectionThreads::start(2, flavor).expect("threads start");
        assert_eq!(threads.lanes.len(), 2);
        assert_eq!(
            current(),
            None,
            "the test's own thread is no connection thread"
        );
        let (tx, mut rx) = mpsc::unbounded_channel();
        for job in 0..4 {
            let tx = tx.clone();
            threads.run(async move {
                let outer = std::thread::current().id();
                let inner = tokio::spawn(async { std::thread::current().id() })
                    .await
                    .expect("the spawned task ends");
                let name = std::thread::current().name().map(str::to_owned);
                let _ = tx.send((job, outer, inner, name, current()));
            });
        }
        drop(tx);
        let mut seen = Vec::new();
        while let Some(one) = rx.recv().await {
            seen.push(one);
        }
        seen.sort_by_key(|s| s.0);
        assert_eq!(seen.len(), 4);
        for (job, outer, inner, name, index) in &seen {
            assert_eq!(outer, inner, "job {job}'s task ran on another thread");
            assert_eq!(*index, Some(job % 2), "job {job} knows its thread");
            let expected = format!("connections-{}", job % 2);
            assert_eq!(name.as_deref(), Some(expected.as_str()));
        }
        assert_ne!(seen[0].1, seen[1].1, "two threads took turns");
        assert_eq!(seen[0].1, seen[2].1);
        threads.stop(Duration::from_secs(5)).await;
    }

    /// The `write` system calls this thread has made (Linux's per-thread I/O counters).
    #[cfg(target_os = "linux")]
    fn writes_by_this_thread() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").expect("/proc/thread-self/io");
        io.lines()
            .find_map(|l| l.strip_prefix("syscw:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("a syscw line")
    }

    /// Polls `f` once (which sets its timer) and returns whether it is still pending.
    #[cfg(target_os = "linux")]
    fn pending_once(f: std::pin::Pin<&mut impl Future>) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        f.poll(&mut cx).is_pending()
    }

    /// A connection that starts waiting for its next request head sets the server's
    /// header timer. On a connection thread that last slept with only a long timer set
    /// (a request waiting on its upstream), that must not wake the thread's own driver
    /// (a write to its `eventfd`): [`keep_a_timer_due`] keeps an earlier timer.
    #[cfg(target_os = "linux")] // counted from /proc; the eventfd is Linux's too
    #[tokio::test]
    async fn setting_a_request_timer_does_not_wake_the_threads_own_driver() {
        for flavor in [Flavor::SingleThreaded, Flavor::OneWorker] {
            let threads = ConnectionThreads::start(1, flavor).expect("threads start");
            let (told, mut writes) = mpsc::unbounded_channel();
            threads.run(async move {
                let upstream_wait = tokio::time::sleep(Duration::from_secs(300));
                tokio::pin!(upstream_wait);
                let set = pending_once(upstream_wait.as_mut());
                // The thread sleeps, and once this timer has fired, the driver plans its
                // next wake-up from the timers still set.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let before = writes_by_this_thread();
                let header = tokio::time::sleep(crate::limits::HEADER_READ_TIMEOUT);
                tokio::pin!(header);
                let set = set && pending_once(header.as_mut());
                let _ = told.send((set, writes_by_this_thread() - before));
            });
            let (set, writes) = writes.recv().await.expect("the job reports");
            assert!(set, "{flavor:?}: both timers are set");
            assert_eq!(
                writes, 0,
                "{flavor:?}: setting the timer wrote to the eventfd"
            );
            threads.stop(Duration::from_secs(5)).await;
        }
    }

    /// A request that waits in place (a vault call on PostgreSQL) holds only itself:
    /// the other connections dealt to the same runtime are served meanwhile.
    #[tokio::test]
    async fn a_wait_in_place_holds_only_its_own_connection() {
        let threads = ConnectionThreads::start(1, Flavor::OneWorker).expect("threads start");
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (waiting_tx, waiting) = oneshot::channel::<()>();
        let (done_tx, mut done) = mpsc::unbounded_channel();
        let waiter_done = done_tx.clone();
        threads.run(async move {
            tokio::task::block_in_place(|| {
                let _ = waiting_tx.send(());
                held.recv_timeout(Duration::from_secs(30))
            })
            .expect("released by the test");
            let _ = waiter_done.send("waiter");
        });
        // The second connection arrives while the first is waiting.
        waiting.await.expect("the first connection waits");
        threads.run(async move {
            let _ = done_tx.send("other");
        });
        let first = tokio::time::timeout(Duration::from_secs(10), done.recv())
            .await
            .expect("the other connection was served while the first waited");
        assert_eq!(first, Some("other"));
        release.send(()).expect("the waiter is waiting");
        assert_eq!(done.recv().await, Some("waiter"));
        threads.stop(Duration::from_secs(5)).await;
    }

    /// Work with the same key always lands on the same runtime, keys spread over the
    /// runtimes, and without connection threads the work runs where it is awaited.
    #[tokio::test]
    async fn homes_keep_a_key_on_one_runtime() {
        let threads = ConnectionThreads::start(2, Flavor::SingleThreaded).expect("threads start");
        let homes = threads.homes();
        let at = |key: &'static str| {
            let homes = homes.clone();
            async move {
                homes
                    .run(key, async { Ok(current()) })
                    .await
                    .expect("the work ran")
            }
        };
        let mut seen = std::collections::HashSet::new();
        let keys = [
            "github",
            "linear",
            "notion",
            "slack",
            "atlassian",
            "google",
            "zoom",
            "asana",
            "canva",
            "figma",
            "hubspot",
            "discord",
            "dropbox",
            "trello",
            "salesforce",
            "microsoft",
        ];
        for key in keys {
            let first = at(key).await;
            assert!(first.is_some(), "{key} ran on a connection thread");
            assert_eq!(at(key).await, first, "{key} moved");
            assert_eq!(
                homes.index_of(key),
                first,
                "{key}'s index names its runtime"
            );
            seen.insert(first);
        }
        assert_eq!(homes.count(), 2);
        assert_eq!(
            seen.len(),
            2,
            "sixteen keys all landed on one of two runtimes"
        );
        let none = Homes::default();
        assert!(none.for_key("github").is_none());
        assert_eq!((none.index_of("github"), none.count()), (None, 0));
        let here = none
            .run("github", async { Ok(current()) })
            .await
            .expect("the work ran");
        assert_eq!(
            here, None,
            "without threads the work runs where it is awaited"
        );

        // A wait given up (a timeout) cancels the work on its runtime, which drops
        // what it holds.
        let (held, dropped) = oneshot::channel::<()>();
        let (started_tx, started) = oneshot::channel::<()>();
        let wait = homes.run("github", async move {
            let _held = held;
            let _ = started_tx.send(());
            std::future::pending::<anyhow::Result<()>>().await
        });
        tokio::select! {
            _ = wait => panic!("the work never ends by itself"),
            _ = started => {}
        }
        tokio::time::timeout(Duration::from_secs(5), dropped)
            .await
            .expect("the running work was cancelled when its wait was dropped")
            .expect_err("the work ended only by being dropped");

        // Once the runtimes are stopping, work runs where it is awaited.
        threads.stop(Duration::from_secs(5)).await;
        let after = homes
            .run("github", async { Ok(current()) })
            .await
            .expect("the work ran after the stop");
        assert_eq!(after, None);
    }

    /// Stopping cancels what still runs there and waits for the threads, so a task's
    /// last words (its drop) happen before `stop` returns.
    #[tokio::test]
    async fn stop_cancels_what_runs_and_waits_for_it() {
        for flavor in [Flavor::SingleThreaded, Flavor::OneWorker] {
            stop_waits(flavor).await;
        }
    }

    async fn stop_waits(flavor: Flavor) {
        struct Flag(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                std::thread::sleep(Duration::from_millis(50));
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let threads = ConnectionThreads::start(1, flavor).expect("threads start");
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let flag = Flag(dropped.clone());
        threads.run(async move {
            let _flag = flag;
            let _ = started_tx.send(());
            std::future::pending::<()>().await;
        });
        started.await.expect("the job started");
        threads.stop(Duration::from_secs(5)).await;
        assert!(
            dropped.load(Ordering::SeqCst),
            "stop returned before the task was dropped"
        );
    }
}
