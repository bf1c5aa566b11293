//! Lines written by one thread of their own: the log (stderr) and the audit file.
//!
//! A request that logged by writing stderr itself paid a system call on its own thread
//! for every line (with the audit trail in the log, one per proxied request: a fifth of
//! the proxy's CPU in `perf`). Here the request only queues the line; the writer thread
//! takes everything queued, writes it in one go and flushes, then gathers for a
//! millisecond before it waits again. Under load many lines share one write and the
//! writer wakes about a thousand times a second, not once per line (a wake-up costs the
//! queuing thread more than the write it saves); at rest a line is written at once.

use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

/// Lines waiting for the writer before [`Lines::send`] waits (and [`Lines::try_send`]
/// refuses).
const QUEUE: usize = 16_384;

/// How long the writer lets lines gather after a write before it waits for the next
/// one: while it does not wait, queuing a line wakes no thread.
const GATHER: Duration = Duration::from_millis(1);

/// What the writer thread is sent.
enum Msg {
    /// One whole line, its newline included.
    Line(Vec<u8>),
    /// Write what came before, then say so.
    Flush(std::sync::mpsc::Sender<()>),
}

/// Why a line was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full: the output is not keeping up.
    Full,
    /// The writer thread has stopped.
    Stopped,
}

/// A queue to one writer thread. Cheap to clone; the thread ends when every clone is
/// dropped, after writing what was queued.
#[derive(Clone, Debug)]
pub struct Lines {
    tx: SyncSender<Msg>,
}

impl Lines {
    /// Starts the thread `name` writing to `out`. `failed` hears each write that failed
    /// (the lines of that batch may be lost); it runs on the writer thread.
    pub fn spawn(
        name: &str,
        out: impl Write + Send + 'static,
        failed: impl Fn(&std::io::Error) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || write_lines(out, &rx, &failed))?;
        Ok(Self { tx })
    }

    /// Queues `line` (its newline included), waiting while the queue is full: for output
    /// that must not be lost, where a slow disk slows the callers down as a direct write
    /// would.
    pub fn send(&self, line: Vec<u8>) -> Result<(), Refused> {
        self.tx.send(Msg::Line(line)).map_err(|_| Refused::Stopped)
    }

    /// Queues `line` (its newline included) unless the queue is full.
    pub fn try_send(&self, line: Vec<u8>) -> Result<(), Refused> {
        self.tx.try_send(Msg::Line(line)).map_err(|e| match e {
            TrySendError::Full(_) => Refused::Full,
            TrySendError::Disconnected(_) => Refused::Stopped,
        })
    }

    /// Waits (up to `within`, even while the queue is full) until every line queued so
    /// far is written and flushed. Blocking. False when that did not happen in time, or
    /// the writer has stopped.
    pub fn flush(&self, within: Duration) -> bool {
        let until = Instant::now() + within;
        let (done, wait) = std::sync::mpsc::channel();
        let mut ask = Msg::Flush(done);
        loop {
            match self.tx.try_send(ask) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < until => {
                    ask = back;
                    std::thread::sleep(GATHER);
                }
                Err(_) => return false,
            }
        }
        wait.recv_timeout(until.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

/// The writer thread: everything queued is written, then flushed once the queue is
/// empty, then lines gather for [`GATHER`]. Each line is written whole, so a failed
/// write never glues two lines.
fn write_lines(out: impl Write, rx: &Receiver<Msg>, failed: &dyn Fn(&std::io::Error)) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut acks = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Line(line) => {
                    if let Err(e) = out.write_all(&line) {
                        failed(&e);
                    }
                }
                Msg::Flush(ack) => acks.push(ack),
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = out.flush() {
            failed(&e);
        }
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
        std::thread::sleep(GATHER);
    }
}

/// The log's output for `tracing_subscriber`: each event, formatted on the caller's
/// thread, is queued whole on drop.
#[derive(Clone, Debug)]
pub struct LogOutput(pub Lines);

/// One event being formatted.
pub struct Pending<'a> {
    lines: &'a Lines,
    buf: Vec<u8>,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogOutput {
    type Writer = Pending<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Pending {
            lines: &self.0,
            buf: Vec::new(),
        }
    }
}

impl Write for Pending<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            // A stopped writer (the process is ending) has nowhere to put it.
            let _ = self.lines.send(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// An output that records what reached it and how many writes it took.
    #[derive(Clone, Default)]
    struct Recorder {
        text: Arc<Mutex<Vec<u8>>>,
        writes: Arc<Mutex<usize>>,
        fail: bool,
    }

    impl Write for Recorder {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if self.fail {
                return Err(std::io::Error::other("disk full"));
            }
            *self.writes.lock().expect("lock") += 1;
            self.text.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn queued_lines_arrive_whole_in_order_and_share_writes() {
        let out = Recorder::default();
        let lines = Lines::spawn("test-lines", out.clone(), |_| {}).expect("spawn");
        for i in 0..1000 {
            lines
                .send(format!("line {i}\n").into_bytes())
                .expect("send");
        }
        assert!(lines.flush(Duration::from_secs(5)));
        let text = String::from_utf8(out.text.lock().expect("lock").clone()).expect("utf-8");
        let got: Vec<&str> = text.lines().collect();
        assert_eq!(got.len(), 1000);
        assert!(
            got.iter()
                .enumerate()
                .all(|(i, l)| *l == format!("line {i}"))
        );
        // Batched: far fewer writes than lines reached the output.
        assert!(*out.writes.lock().expect("lock") < 1000);
    }

    #[test]
    fn failed_writes_are_reported_and_the_writer_keeps_going() {
        let out = Recorder {
            fail: true,
            ..Recorder::default()
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let heard = seen.clone();
        let lines = Lines::spawn("test-lines", out, move |e| {
            heard.lock().expect("lock").push(e.to_string());
        })
        .expect("spawn");
        lines.send(b"one\n".to_vec()).expect("send");
        assert!(lines.flush(Duration::from_secs(5)));
        lines.try_send(b"two\n".to_vec()).expect("still running");
        assert!(lines.flush(Duration::from_secs(5)));
        let seen = seen.lock().expect("lock");
        assert!(!seen.is_empty());
        assert!(seen.iter().all(|e| e.contains("disk full")));
    }

    #[test]
    fn a_full_queue_refuses_try_send() {
        // A writer that never returns holds the thread; the queue then fills up.
        struct Stuck(std::sync::mpsc::Receiver<()>);
        impl Write for Stuck {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let _ = self.0.recv();
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                let _ = self.0.recv();
                Ok(())
            }
        }
        let (release, stuck) = std::sync::mpsc::channel();
        let lines = Lines::spawn("test-lines", Stuck(stuck), |_| {}).expect("spawn");
        // The writer drains into its 64 KiB buffer until a write or flush holds it.
        let refused = (0..QUEUE + 64 * 1024)
            .map(|_| lines.try_send(b"x\n".to_vec()))
            .find(Result::is_err);
        assert_eq!(refused, Some(Err(Refused::Full)));
        drop(release);
    }

    #[test]
    fn log_events_are_queued_whole() {
        use tracing_subscriber::fmt::MakeWriter as _;
        let out = Recorder::default();
        let log = LogOutput(Lines::spawn("test-log", out.clone(), |_| {}).expect("spawn"));
        {
            let mut w = log.make_writer();
            w.write_all(b"first half, ").expect("write");
            w.write_all(b"second half\n").expect("write");
        }
        assert!(log.0.flush(Duration::from_secs(5)));
        assert_eq!(
            out.text.lock().expect("lock").as_slice(),
            b"first half, second half\n"
        );
    }
}
