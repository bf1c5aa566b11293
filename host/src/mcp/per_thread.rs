//! Sessions of their own, one per connection thread, with an upstream that names no
//! session.
//!
//! An upstream's shared session lives on one connection thread (`threads::Homes`), so
//! a call from a connection on another thread crosses to that thread and its answer
//! crosses back: two wake-ups of a sleeping thread a call (docs/performance-log.md,
//! "System calls a call"). A server that named no session at `initialize` cannot tell
//! one session of ours from another: whatever it keeps, it keeps for all of them
//! alike. So a second session with it, opened on the caller's thread, stands in for the
//! shared one there without the crossings. A server that names a session may keep state
//! in it (subscriptions, a browser, a shell); it keeps its one shared session, since a
//! second would split that state.
//!
//! A thread's session is opened in the background on the first call from that thread,
//! which takes the shared session meanwhile: no call waits for one to open or fails
//! because one could not. One that could not be opened is tried again after a pause.
//!
//! Generic over the session ([`Closable`]) so the bookkeeping is tested on its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

/// What [`PerThread`] needs of a session.
pub(super) trait Closable: Send + Sync + 'static {
    /// Its connection is gone: the next call needs another.
    fn is_closed(&self) -> bool;
    /// Ends it (one nobody else holds).
    fn close(self) -> BoxFuture<'static, ()>;
}

/// One connection thread's own session.
enum Slot<S> {
    Empty,
    /// Being opened by the opening with this ticket; only that one may fill the slot.
    Opening(u64),
    Live(Arc<S>),
    /// Opening failed (or its task ended without an answer) at this time.
    Failed(Instant),
}

struct Slots<S> {
    /// By connection thread, as `threads::current` numbers them.
    slots: Box<[Mutex<Slot<S>>]>,
    /// The next opening's ticket.
    tickets: AtomicU64,
}

impl<S> Slots<S> {
    fn slot(&self, i: usize) -> Option<std::sync::MutexGuard<'_, Slot<S>>> {
        self.slots
            .get(i)
            .map(|l| l.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The per-thread sessions of one upstream (see the module's documentation).
pub(super) struct PerThread<S> {
    /// Dropped with the upstream; an opening still under way then closes what it opened.
    slots: Arc<Slots<S>>,
    /// How long calls on a thread whose session could not be opened keep to the shared
    /// session before another is tried.
    retry_after: Duration,
}

impl<S: Closable> PerThread<S> {
    /// Room for a session on each of `threads` connection threads.
    pub(super) fn new(threads: usize, retry_after: Duration) -> Self {
        Self {
            slots: Arc::new(Slots {
                slots: (0..threads).map(|_| Mutex::new(Slot::Empty)).collect(),
                tickets: AtomicU64::new(0),
            }),
            retry_after,
        }
    }

    /// This connection thread's own session, if it is open and not broken. Never on
    /// `home` (the shared session's thread) or off the connection threads.
    pub(super) fn here(&self, home: Option<usize>) -> Option<Arc<S>> {
        let (_, slot) = self.slot_here(home)?;
        match &*slot {
            Slot::Live(s) if !s.is_closed() => Some(s.clone()),
            _ => None,
        }
    }

    /// Starts `open` in the background on this connection thread, where the session's
    /// own tasks then run, unless this thread's session is open, being opened, or failed
    /// within the pause; never on `home` or off the connection threads.
    pub(super) fn open_here(
        &self,
        home: Option<usize>,
        open: impl FnOnce() -> BoxFuture<'static, anyhow::Result<S>>,
    ) {
        let Some((i, mut slot)) = self.slot_here(home) else {
            return;
        };
        match &*slot {
            Slot::Live(s) if !s.is_closed() => return,
            Slot::Opening(_) => return,
            Slot::Failed(at) if at.elapsed() < self.retry_after => return,
            Slot::Live(_) | Slot::Empty | Slot::Failed(_) => {}
        }
        let ticket = self.slots.tickets.fetch_add(1, Ordering::Relaxed);
        *slot = Slot::Opening(ticket);
        drop(slot);
        let opening = Opening {
            slots: Arc::downgrade(&self.slots),
            i,
            ticket,
            done: false,
        };
        tokio::spawn(opening.run(open()));
    }

    /// This connection thread's index and slot; none on `home` or off the threads.
    fn slot_here(
        &self,
        home: Option<usize>,
    ) -> Option<(usize, std::sync::MutexGuard<'_, Slot<S>>)> {
        let i = crate::threads::current().filter(|&i| Some(i) != home)?;
        Some((i, self.slots.slot(i)?))
    }

    /// Forgets `broken` if it is one of these sessions, so its thread opens another;
    /// whether it was.
    pub(super) fn forget(&self, broken: &Arc<S>) -> bool {
        self.slots.slots.iter().any(|l| {
            let mut slot = l.lock().unwrap_or_else(|p| p.into_inner());
            let found = matches!(&*slot, Slot::Live(s) if Arc::ptr_eq(s, broken));
            if found {
                *slot = Slot::Empty;
            }
            found
        })
    }

    /// Takes every session out, for the caller to close. Openings under way lose their
    /// ticket, so they close what they open instead of keeping it.
    pub(super) fn take_all(&self) -> Vec<Arc<S>> {
        self.slots
            .slots
            .iter()
            .filter_map(|l| {
                let mut slot = l.lock().unwrap_or_else(|p| p.into_inner());
                match std::mem::replace(&mut *slot, Slot::Empty) {
                    Slot::Live(s) => Some(s),
                    Slot::Empty | Slot::Opening(_) | Slot::Failed(_) => None,
                }
            })
            .collect()
    }
}

/// One opening of slot `i`, which holds its `ticket` until the opening ends. Dropped
/// before it is `done` (the opening panicked, or its runtime shut down), it marks its
/// slot failed, so the thread tries again after the pause instead of waiting for it for
/// ever.
struct Opening<S> {
    slots: Weak<Slots<S>>,
    i: usize,
    ticket: u64,
    done: bool,
}

impl<S: Closable> Opening<S> {
    /// Waits for the session and puts it in its slot, unless the upstream went or the
    /// slot was emptied meanwhile ([`PerThread::take_all`]): the session is then closed.
    async fn run(mut self, open: BoxFuture<'static, anyhow::Result<S>>) {
        let result = open.await;
        self.done = true;
        let outcome = match result {
            Ok(s) => Slot::Live(Arc::new(s)),
            Err(_) => Slot::Failed(Instant::now()),
        };
        if let Slot::Live(unwanted) = self.settle(outcome)
            && let Ok(s) = Arc::try_unwrap(unwanted)
        {
            s.close().await;
        }
    }

    /// Puts `outcome` in the slot if the slot still waits for this opening; otherwise
    /// hands it back.
    fn settle(&self, outcome: Slot<S>) -> Slot<S> {
        let Some(slots) = self.slots.upgrade() else {
            return outcome;
        };
        let Some(mut slot) = slots.slot(self.i) else {
            return outcome;
        };
        if !matches!(*slot, Slot::Opening(t) if t == self.ticket) {
            return outcome;
        }
        std::mem::replace(&mut *slot, outcome)
    }
}

impl<S> Drop for Opening<S> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let Some(slots) = self.slots.upgrade() else {
            return;
        };
        if let Some(mut slot) = slots.slot(self.i)
            && matches!(*slot, Slot::Opening(t) if t == self.ticket)
        {
            *slot = Slot::Failed(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::threads::{ConnectionThreads, Flavor, Homes};
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    /// A session that counts its closing.
    struct Fake {
        broken: Arc<AtomicBool>,
        closed: Arc<AtomicUsize>,
    }

    impl Closable for Fake {
        fn is_closed(&self) -> bool {
            self.broken.load(Ordering::SeqCst)
        }
        fn close(self) -> BoxFuture<'static, ()> {
            self.closed.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {})
        }
    }

    /// Two connection threads and, for each, a key whose work runs there.
    fn two_threads() -> (ConnectionThreads, Homes, [String; 2]) {
        let threads = ConnectionThreads::start(2, Flavor::SingleThreaded).expect("threads start");
        let homes = threads.homes();
        let key_of = |i: usize| {
            (0..100)
                .map(|n| format!("key-{n}"))
                .find(|k| homes.index_of(k) == Some(i))
                .expect("a key for each thread")
        };
        let keys = [key_of(0), key_of(1)];
        (threads, homes, keys)
    }

    struct Opener {
        calls: Arc<AtomicUsize>,
        closed: Arc<AtomicUsize>,
        broken: Arc<AtomicBool>,
    }

    impl Opener {
        fn new() -> Self {
            Self {
                calls: Arc::default(),
                closed: Arc::default(),
                broken: Arc::default(),
            }
        }

        /// An opening that answers once `gate` is dropped or sent, with a session or,
        /// when `fail`, an error.
        fn open(
            &self,
            gate: tokio::sync::oneshot::Receiver<()>,
            fail: bool,
        ) -> impl FnOnce() -> BoxFuture<'static, anyhow::Result<Fake>> + Send + 'static {
            let (calls, closed, broken) =
                (self.calls.clone(), self.closed.clone(), self.broken.clone());
            move || {
                calls.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move {
                    let _ = gate.await;
                    if fail {
                        anyhow::bail!("refused");
                    }
                    Ok(Fake { broken, closed })
                })
            }
        }
    }

    /// Runs `f` with `per` on the thread of `key`.
    async fn on<T: Send + 'static>(
        homes: &Homes,
        key: &str,
        per: &Arc<PerThread<Fake>>,
        f: impl FnOnce(&PerThread<Fake>) -> T + Send + 'static,
    ) -> T {
        let per = per.clone();
        homes
            .run(key, async move { Ok(f(&per)) })
            .await
            .expect("ran on its thread")
    }

    /// Starts an opening on `key`'s thread, the shared session's home being thread 0
    /// (nothing starts where the slot says no). It answers, with a session or an error
    /// (`fail`), once the returned sender is used or dropped.
    async fn start(
        homes: &Homes,
        key: &str,
        per: &Arc<PerThread<Fake>>,
        opener: &Opener,
        fail: bool,
    ) -> tokio::sync::oneshot::Sender<()> {
        let (release, gate) = tokio::sync::oneshot::channel();
        let open = opener.open(gate, fail);
        on(homes, key, per, move |p| p.open_here(Some(0), open)).await;
        release
    }

    /// Whether `key`'s thread has a session of its own.
    async fn has(homes: &Homes, key: &str, per: &Arc<PerThread<Fake>>) -> bool {
        on(homes, key, per, |p| p.here(Some(0)).is_some()).await
    }

    /// Asks on thread `key` until its session is live, for at most 5 s.
    async fn live_on(homes: &Homes, key: &str, per: &Arc<PerThread<Fake>>) -> bool {
        for _ in 0..500 {
            if has(homes, key, per).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Waits up to 5 s for `count` to reach `want`.
    async fn reaches(count: &AtomicUsize, want: usize) -> bool {
        for _ in 0..500 {
            if count.load(Ordering::SeqCst) >= want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_thread_opens_its_own_session_once_in_the_background_and_the_home_none() {
        let (_threads, homes, [home, other]) = two_threads();
        let per = Arc::new(PerThread::<Fake>::new(2, Duration::from_secs(60)));
        let opener = Opener::new();
        let calls = || opener.calls.load(Ordering::SeqCst);

        // On the home thread, and off the connection threads: nothing is opened.
        let _held = start(&homes, &home, &per, &opener, false).await;
        let (_keep, gate) = tokio::sync::oneshot::channel();
        per.open_here(Some(0), opener.open(gate, false));
        assert_eq!(calls(), 0);
        assert!(per.here(Some(0)).is_none());

        // The other thread starts one opening, and has no session until it is done.
        let release = start(&homes, &other, &per, &opener, false).await;
        let _held = start(&homes, &other, &per, &opener, false).await;
        assert!(!has(&homes, &other, &per).await);
        assert_eq!(calls(), 1, "one opening at a time");
        release.send(()).expect("the opening waits");
        assert!(live_on(&homes, &other, &per).await);
        assert!(
            !has(&homes, &home, &per).await,
            "the home has none of its own"
        );

        // A broken session is not handed out, and the thread opens another.
        opener.broken.store(true, Ordering::SeqCst);
        assert!(!has(&homes, &other, &per).await);
        let _held = start(&homes, &other, &per, &opener, false).await;
        assert_eq!(calls(), 2);
    }

    #[tokio::test]
    async fn forgetting_or_taking_sessions_empties_their_slots() {
        let (_threads, homes, [_, other]) = two_threads();
        let per = Arc::new(PerThread::<Fake>::new(2, Duration::from_secs(60)));
        let opener = Opener::new();
        drop(start(&homes, &other, &per, &opener, false).await);
        assert!(live_on(&homes, &other, &per).await);
        let s = on(&homes, &other, &per, |p| p.here(Some(0)))
            .await
            .expect("live");
        let stranger = Arc::new(Fake {
            broken: Arc::default(),
            closed: Arc::default(),
        });
        assert!(!per.forget(&stranger), "not one of them");
        assert!(per.forget(&s));
        assert!(!has(&homes, &other, &per).await);

        drop(start(&homes, &other, &per, &opener, false).await);
        assert!(live_on(&homes, &other, &per).await);
        assert_eq!(per.take_all().len(), 1);
        assert!(!has(&homes, &other, &per).await);
    }

    /// An opening that ends after its sessions were taken, or after the upstream went,
    /// closes what it opened instead of keeping it.
    #[tokio::test]
    async fn a_session_opened_after_take_all_or_after_the_upstream_went_is_closed() {
        let (_threads, homes, [_, other]) = two_threads();
        let per = Arc::new(PerThread::<Fake>::new(2, Duration::from_secs(60)));
        let opener = Opener::new();
        let release = start(&homes, &other, &per, &opener, false).await;
        assert!(per.take_all().is_empty(), "nothing open yet");
        release.send(()).expect("the opening waits");
        assert!(
            reaches(&opener.closed, 1).await,
            "the late session is closed"
        );
        assert!(!has(&homes, &other, &per).await);

        // The thread may open one again afterwards.
        drop(start(&homes, &other, &per, &opener, false).await);
        assert!(live_on(&homes, &other, &per).await);

        // The upstream goes while a thread's session is being opened.
        let gone = Arc::new(PerThread::<Fake>::new(2, Duration::from_secs(60)));
        let release = start(&homes, &other, &gone, &opener, false).await;
        drop(gone);
        release.send(()).expect("the opening waits");
        assert!(
            reaches(&opener.closed, 2).await,
            "the orphaned session is closed"
        );
    }

    /// A failed opening is retried only after the pause; one whose task ended without an
    /// answer (a panic) counts as failed, not as still opening.
    #[tokio::test]
    async fn a_failed_or_panicked_opening_is_retried_after_the_pause() {
        let (_threads, homes, [_, other]) = two_threads();
        let opener = Opener::new();
        let calls = || opener.calls.load(Ordering::SeqCst);
        // Opens (failing at once) on `other` until `calls()` reaches `want`, at most `tries`
        // times, 10 ms apart.
        let open_until = |per: Arc<PerThread<Fake>>, want: usize, tries: usize| {
            let (homes, other, opener) = (homes.clone(), other.clone(), &opener);
            async move {
                for _ in 0..tries {
                    drop(start(&homes, &other, &per, opener, true).await);
                    if opener.calls.load(Ordering::SeqCst) >= want {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };

        // A long pause: one failure, then no second try however often calls come.
        let patient = Arc::new(PerThread::<Fake>::new(2, Duration::from_secs(60)));
        open_until(patient.clone(), 1, 500).await;
        assert_eq!(calls(), 1);
        open_until(patient.clone(), 2, 20).await;
        assert_eq!(calls(), 1, "not again within the pause");

        // No pause: the failed slot is tried again.
        let eager = Arc::new(PerThread::<Fake>::new(2, Duration::ZERO));
        open_until(eager.clone(), 3, 500).await;
        assert_eq!(calls(), 3, "tried again once failed");

        // A panicked opening leaves a failed slot, which is tried again (a slot left
        // opening would never be).
        let panicked = Arc::new(PerThread::<Fake>::new(2, Duration::ZERO));
        let boom = || -> BoxFuture<'static, anyhow::Result<Fake>> {
            Box::pin(async { panic!("the opening panicked") })
        };
        on(&homes, &other, &panicked, move |p| {
            p.open_here(Some(0), boom)
        })
        .await;
        open_until(panicked.clone(), 4, 500).await;
        assert_eq!(calls(), 4, "a panicked opening counts as failed");
    }
}
