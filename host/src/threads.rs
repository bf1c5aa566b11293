//! Connection threads: each accepted connection is served, from its first byte to its
//! close, by one of a few threads, one per core, each running a single-threaded tokio
//! runtime of its own. The tasks a request spawns (hyper's, rmcp's server task for an
//! MCP request, an upstream MCP session the request opens) are spawned on that same
//! thread.
//!
//! Why not the one work-stealing runtime for everything: a call through `/v1/mcp`
//! passes several tasks on its way (rmcp's task for the request, the upstream client's
//! service loop and its transport worker, the egress connection), and on a
//! work-stealing runtime each hand-off between them could wake a parked worker on
//! another core, which then looked for work, stole it or went back to sleep. On the
//! 2-core benchmark machine that was most of an MCP call's CPU at concurrency 1
//! (docs/benchmarks.md). Here a hand-off inside a connection is a queue push on the
//! same thread. What is given up is stealing: a connection stays on its thread, so
//! connections are dealt to the threads in turn.
//!
//! The process's main runtime (multi-threaded) keeps the accept loop, start-up and the
//! background work started there (refreshes, reloads, watchers). Most blocking work of a
//! request goes to `spawn_blocking`; what a request does in place (a few vault calls)
//! holds the thread's other connections, which is why `app` starts these threads only
//! with the embedded store (docs/architecture.md, "Threads").

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context as _;
use tokio::sync::mpsc;

thread_local! {
    /// This thread's index among the connection threads; `None` on every other thread.
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// How many connection threads [`ConnectionThreads::per_core`] starts: one per core
/// the process may use (`available_parallelism`, which follows CPU affinity and cgroup
/// quotas).
pub fn per_core_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The connection thread this code runs on (`0..per_core_count()`), if any: for state
/// kept per thread, such as the egress client's connection pools.
pub fn current() -> Option<usize> {
    INDEX.with(Cell::get)
}

/// A connection's whole service, run on one thread.
type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The connection threads; dropping this lets each end once its queue is empty, which
/// cuts off connections still open (call it after the graceful shutdown).
pub struct ConnectionThreads {
    queues: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
}

impl ConnectionThreads {
    /// [`per_core_count`] threads.
    pub fn per_core() -> anyhow::Result<Self> {
        Self::start(per_core_count())
    }

    /// Starts `count` threads (at least one).
    pub fn start(count: usize) -> anyhow::Result<Self> {
        let mut queues = Vec::with_capacity(count.max(1));
        for i in 0..count.max(1) {
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            // The runtime is built on its own thread, which says whether that worked: a
            // runtime must not be dropped inside async code, as one built here and
            // handed to a thread that failed to start would be.
            let (built_tx, built_rx) = std::sync::mpsc::sync_channel(1);
            std::thread::Builder::new()
                .name(format!("connections-{i}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = built_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = built_tx.send(Ok(()));
                    INDEX.with(|index| index.set(Some(i)));
                    runtime.block_on(async move {
                        while let Some(job) = rx.recv().await {
                            tokio::spawn(job);
                        }
                    });
                })
                .context("cannot start a connection thread")?;
            built_rx
                .recv()
                .context("a connection thread ended before its runtime started")?
                .context("cannot start a connection thread's runtime")?;
            queues.push(tx);
        }
        Ok(Self {
            queues,
            next: AtomicUsize::new(0),
        })
    }

    /// Runs `job` (a connection's service) on the next thread in turn. Should that
    /// thread have ended (a panic outside any task), the job runs on the caller's
    /// runtime instead, so no connection is dropped for it.
    pub fn run(&self, job: impl Future<Output = ()> + Send + 'static) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        if let Err(mpsc::error::SendError(job)) = self.queues[i].send(Box::pin(job)) {
            tracing::error!(
                thread = i,
                "a connection thread has ended; serving on the main runtime"
            );
            tokio::spawn(job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connections are dealt in turn, and everything a connection spawns runs on the
    /// thread that serves it.
    #[tokio::test]
    async fn jobs_are_dealt_in_turn_and_their_tasks_stay_on_their_thread() {
        let threads = ConnectionThreads::start(2).expect("threads start");
        assert_eq!(threads.queues.len(), 2);
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
                assert_eq!(current(), Some(job % 2), "job {job} knows its thread");
                let _ = tx.send((job, outer, inner, name));
            });
        }
        drop(tx);
        let mut seen = Vec::new();
        while let Some(one) = rx.recv().await {
            seen.push(one);
        }
        seen.sort_by_key(|s| s.0);
        assert_eq!(seen.len(), 4);
        for (job, outer, inner, name) in &seen {
            assert_eq!(outer, inner, "job {job}'s task ran on another thread");
            let expected = format!("connections-{}", job % 2);
            assert_eq!(name.as_deref(), Some(expected.as_str()));
        }
        assert_ne!(seen[0].1, seen[1].1, "two threads took turns");
        assert_eq!(seen[0].1, seen[2].1);
    }
}
