//! Benchmarks and the plumbing they share: interrupt handling, child-process guards,
//! machine description, and writing results into `docs/benchmarks.md`.
//!
//! Everything a benchmark starts (servers, proxies) is wrapped in a [`ChildGuard`] so it
//! is stopped on every exit path: normal return, `?` errors, panics, and Ctrl-C / SIGTERM
//! (which set a flag that the load loops and waits poll, so the stack unwinds through
//! the guards instead of the process dying with children left behind).

mod callgrind;
mod contextforge;
pub mod host;
pub mod instructions;
pub mod load;
pub mod mcp;
pub mod plugins;
mod postgres;
pub mod profile;
pub mod proxy;
pub mod refresh;
pub mod relay;
pub mod soak;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// True once Ctrl-C or SIGTERM was received. Long-running loops poll this.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Returns an error if an interrupt was received, so callers can bail with `?`.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Replaces the default "die immediately" reaction to SIGINT/SIGTERM with setting a
/// flag, so child-process guards get to run. A second signal exits at once, as an
/// escape hatch if something does not notice the flag.
pub fn install_interrupt_handler() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building signal runtime")?;
    // Register the handlers before returning so there is no window where a signal
    // still has its default effect.
    let (mut int, mut term) = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    })?;
    thread::Builder::new()
        .name("xtask-signals".into())
        .spawn(move || {
            rt.block_on(async move {
                loop {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                    if INTERRUPTED.swap(true, Ordering::Relaxed) {
                        eprintln!("xtask: second interrupt, exiting without cleanup");
                        std::process::exit(130);
                    }
                    eprintln!("xtask: interrupted, cleaning up (interrupt again to force)");
                }
            });
        })
        .context("spawning signal thread")?;
    Ok(())
}

/// Installs the first of `packages` apt-get can install, for `what` (a one-command
/// reproduction on a fresh Debian box); says why not when this is not root or not Debian.
pub fn apt_install(what: &str, packages: &[&str]) -> Result<(), String> {
    if !is_root() {
        let first = packages.first().copied().unwrap_or(what);
        let others = match packages.get(1..) {
            Some(rest) if !rest.is_empty() => format!(" (or {})", rest.join(" or ")),
            _ => String::new(),
        };
        return Err(format!(
            "{what} is not installed and this is not root, so it cannot be installed \
             automatically; run `sudo apt-get install {first}`{others}"
        ));
    }
    if find_executable("apt-get").is_none() {
        return Err(format!(
            "{what} is not installed and apt-get is not available; install {what}"
        ));
    }
    eprintln!("bench: {what} not found, installing it with apt-get");
    let apt = |args: &[&str]| {
        run_interruptible(
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdin(Stdio::null())
                // Keep stdout for the results table only.
                .stdout(Stdio::from(std::io::stderr())),
            "apt-get",
        )
        .map(|s| s.success())
        .unwrap_or(false)
    };
    if !apt(&["-q", "update"]) {
        eprintln!("bench: apt-get update failed, trying to install anyway");
    }
    for package in packages {
        if apt(&["-q", "install", "-y", "--no-install-recommends", package]) {
            return Ok(());
        }
    }
    Err(format!(
        "could not install {what} with apt-get install {}; install it by hand",
        packages.join(" or ")
    ))
}

/// Runs a command to completion, polling so an interrupt kills it instead of waiting
/// for it (e.g. a long `cargo build` or `apt-get`).
pub fn run_interruptible(cmd: &mut Command, what: &str) -> Result<ExitStatus> {
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {what}"))?
        {
            return Ok(status);
        }
        if interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("interrupted while running {what}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Sends a signal by name (`TERM`, `QUIT`, ...) to a process. Goes through `sh`'s
/// `kill` builtin because the workspace forbids `unsafe` (so no direct `libc::kill`)
/// and a shell is always present where nginx is.
pub fn send_signal(pid: u32, signal: &str) -> bool {
    kill(&pid.to_string(), signal)
}

/// `kill -s signal -- target`: a pid, or `-pid` for a process group.
fn kill(target: &str, signal: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("kill -s {signal} -- {target}"))
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Owns a spawned server process and stops it when dropped: first with its graceful
/// signal, then escalating to SIGTERM and finally SIGKILL if it does not exit in time.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    /// Signal that asks this program to shut down gracefully (`QUIT` for nginx,
    /// `TERM` for Portcullis).
    graceful_signal: &'static str,
    /// What the program cost before any load, where it was measured (Portcullis).
    pub at_rest: Option<host::AtRest>,
    /// The child leads a process group of its own (workers it forks), signalled whole.
    group: bool,
    /// Other processes answering the same target (replicas behind one balancer): what
    /// they spend is charged to the target with this one's.
    pub replicas: Vec<u32>,
}

impl ChildGuard {
    pub fn new(name: impl Into<String>, child: Child, graceful_signal: &'static str) -> Self {
        Self {
            name: name.into(),
            child,
            graceful_signal,
            at_rest: None,
            group: false,
            replicas: Vec::new(),
        }
    }

    /// A child spawned with `process_group(0)` that forks workers (a Python server's
    /// supervisor): signals go to the whole group, so no worker outlives the benchmark
    /// even if the supervisor has to be killed.
    pub fn new_group(name: impl Into<String>, child: Child, graceful_signal: &'static str) -> Self {
        let mut guard = Self::new(name, child, graceful_signal);
        guard.group = true;
        guard
    }

    /// Where signals go: the pid, or its group.
    fn target(&self) -> String {
        match self.group {
            true => format!("-{}", self.child.id()),
            false => self.child.id().to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every process answering the target: this one and its [`Self::replicas`] (their
    /// worker processes are found from these).
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.pid())
            .chain(self.replicas.iter().copied())
            .collect()
    }

    /// `Some(status)` if the process already exited (used to fail fast during startup).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn wait_for_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.exited().is_some()
    }

    /// Stops the process (and its group); idempotent.
    pub fn stop(&mut self) {
        self.stop_leader();
        if self.group {
            // Workers that outlived their supervisor.
            kill(&self.target(), "KILL");
        }
    }

    fn stop_leader(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let (pid, target) = (self.child.id(), self.target());
        if kill(&target, self.graceful_signal) && self.wait_for_exit(Duration::from_secs(5)) {
            return;
        }
        if self.graceful_signal != "TERM"
            && kill(&target, "TERM")
            && self.wait_for_exit(Duration::from_secs(3))
        {
            return;
        }
        eprintln!("xtask: {} (pid {pid}) did not stop, killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Finds an executable on `PATH` (plus the sbin directories, which a non-login root
/// shell sometimes lacks but where Debian installs nginx).
pub fn find_executable(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(Into::into))
        .map(|dir| dir.join(name))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// True if this process runs with effective UID 0 (read from /proc to avoid `unsafe`).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// A loopback server on its own thread and tokio runtime, so it neither shares a
/// scheduler with the load generator nor needs an external program. Stopped (and its
/// thread joined) on drop.
#[derive(Debug)]
pub struct ServerThread {
    pub addr: std::net::SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ServerThread {
    /// Binds a free loopback port and runs `serve(listener, shutdown)` on `threads`
    /// worker threads (1 = a current-thread runtime); `serve` returns once `shutdown`
    /// fires.
    pub fn start<F, Fut>(name: &str, threads: usize, serve: F) -> Result<Self>
    where
        F: FnOnce(tokio::net::TcpListener, tokio::sync::oneshot::Receiver<()>) -> Fut
            + Send
            + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .with_context(|| format!("binding {name}"))?;
        listener
            .set_nonblocking(true)
            .with_context(|| format!("configuring {name}"))?;
        let addr = listener.local_addr().context("local address")?;
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let what = name.to_owned();
        let thread = thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let rt = if threads <= 1 {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                } else {
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(threads)
                        .enable_all()
                        .build()
                };
                let rt = match rt {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::Error::from(e).context(what)));
                        return;
                    }
                };
                rt.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => {
                            let _ = ready_tx.send(Ok(()));
                            serve(l, shutdown_rx).await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(anyhow::Error::from(e).context(what)));
                        }
                    }
                });
                // Dropping the runtime here cancels all connection tasks.
            })
            .with_context(|| format!("spawning {name}"))?;
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow::anyhow!("{name} did not start"))??;
        Ok(Self {
            addr,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Options every load benchmark takes, flattened into its own (which adds the
/// high-concurrency settings, whose defaults differ per benchmark, and its targets).
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Do not run `cargo build --release -p portcullis` first.
    #[arg(long)]
    pub no_build: bool,
    /// Wall-clock cap in seconds for each measured phase.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub duration: u64,
    /// Requests in the concurrency-1 latency phase (capped by --duration).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: u64,
    /// Warm-up seconds before each measured phase (results discarded).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=60))]
    pub warmup: u64,
    /// Tokio worker threads for the load generator (1 = current-thread runtime).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub client_threads: u64,
    /// Tokio worker threads for the upstream server (1 = current-thread runtime).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub upstream_threads: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Do not update docs/benchmarks.md (it is only updated when every target ran).
    #[arg(long)]
    pub no_docs: bool,
}

impl LoadArgs {
    /// The concurrency-1 phase, and the phase at concurrency `high` capped at
    /// `requests_high` requests; each after its warm-up.
    pub fn specs(&self, high: u64, requests_high: u64) -> (load::LoadSpec, load::LoadSpec) {
        // Warm-ups are bounded by time; the request caps only keep them short.
        let phase = |concurrency: u64, requests: u64, warmup_cap: u64| load::LoadSpec {
            warmup: load::Phase {
                concurrency: usize::try_from(concurrency).unwrap_or(1),
                max_requests: requests.min(warmup_cap),
                max_duration: Duration::from_secs(self.warmup),
            },
            measure: load::Phase {
                concurrency: usize::try_from(concurrency).unwrap_or(1),
                max_requests: requests,
                max_duration: Duration::from_secs(self.duration),
            },
            client_threads: usize::try_from(self.client_threads).unwrap_or(1),
            start_at: None,
        };
        (
            phase(1, self.requests, 2_000),
            phase(high, requests_high, 100_000),
        )
    }

    /// The upstream's worker threads.
    pub fn upstream_threads(&self) -> usize {
        usize::try_from(self.upstream_threads).unwrap_or(1)
    }

    /// The report lines on phases and on sharing the machine (`what`: "requests", "calls").
    pub fn method_lines(&self, high: u64, requests_high: u64, what: &str, nproc: usize) -> String {
        let plural = |n: u64| if n == 1 { "" } else { "s" };
        format!(
            "- Phases per target: {w}s warm-up, then concurrency 1 for {} {what} (max {}s); \
             {w}s warm-up, then concurrency {high} for {}s (max {requests_high} {what})\n\
             - **Caveat:** the load generator ({} thread{}), the upstream ({} thread{}) and \
             the proxy all share the same {nproc} cores, so absolute numbers are \
             pessimistic; compare rows with each other, not with other machines. At \
             concurrency 1 the cores idle between requests, so on a VM each hop also pays a \
             wake-up (tens of µs): an idle machine shows *higher* c=1 latency than a busy \
             one.\n",
            self.requests,
            self.duration,
            self.duration,
            self.client_threads,
            plural(self.client_threads),
            self.upstream_threads,
            plural(self.upstream_threads),
            w = self.warmup,
        )
    }

    /// The settings as JSON, for `--out`.
    pub fn settings(&self, high: u64, requests_high: u64) -> serde_json::Value {
        serde_json::json!({"duration_s": self.duration, "requests": self.requests,
                           "concurrency_high": high, "requests_high": requests_high,
                           "warmup_s": self.warmup, "client_threads": self.client_threads,
                           "upstream_threads": self.upstream_threads})
    }

    /// Prints the report, writes `--out`, updates the `section` of docs/benchmarks.md
    /// when `complete` (every target measured), and fails if any target did.
    pub fn finish(
        &self,
        root: &Path,
        section: &str,
        markdown: &str,
        json: &serde_json::Value,
        failures: &[String],
        complete: bool,
    ) -> Result<()> {
        println!("{markdown}");
        if let Some(out) = &self.out {
            let text = serde_json::to_string_pretty(json).context("serialising results")?;
            fs::write(out, text + "\n").with_context(|| format!("writing {}", out.display()))?;
            eprintln!("bench: wrote {}", out.display());
        }
        publish(root, section, markdown, self.no_docs, failures, complete)
    }
}

/// Writes `markdown` into docs/benchmarks.md when every target ran and none failed
/// (unless `no_docs`), then fails if any target did.
pub fn publish(
    root: &Path,
    section: &str,
    markdown: &str,
    no_docs: bool,
    failures: &[String],
    complete: bool,
) -> Result<()> {
    if no_docs || (complete && failures.is_empty()) {
        update_docs(root, section, markdown, no_docs)?;
    } else {
        eprintln!(
            "bench: docs/benchmarks.md not updated (needs every target measured successfully)"
        );
    }
    if !failures.is_empty() {
        bail!("some targets failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

/// Measurements for one target, or why it could not be measured.
#[derive(Debug)]
pub struct TargetResult<K, M> {
    pub kind: K,
    pub outcome: Result<M, String>,
}

/// Records one target's outcome, saying at once when it failed.
pub fn record<K, M>(
    results: &mut Vec<TargetResult<K, M>>,
    kind: K,
    label: &str,
    outcome: Result<M>,
) {
    if let Err(e) = &outcome {
        eprintln!("bench: {label} FAILED: {e:#}");
    }
    results.push(TargetResult {
        kind,
        outcome: outcome.map_err(|e| format!("{e:#}")),
    });
}

/// The failures as `label: error` lines, and whether every `required` target ran.
pub fn summary<K: PartialEq, M>(
    results: &[TargetResult<K, M>],
    label: impl Fn(&K) -> &'static str,
    required: &[K],
) -> (Vec<String>, bool) {
    let failures = results
        .iter()
        .filter_map(|r| {
            let e = r.outcome.as_ref().err()?;
            Some(format!("{}: {e}", label(&r.kind)))
        })
        .collect();
    let complete = required
        .iter()
        .all(|k| results.iter().any(|r| r.kind == *k));
    (failures, complete)
}

/// `targets` without repeats, in their first order.
pub fn unique<T: PartialEq + Copy>(targets: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(targets.len());
    for t in targets {
        if !out.contains(t) {
            out.push(*t);
        }
    }
    out
}

/// CPU busy fraction before measuring above which results are flagged as skewed.
pub const BUSY_WARN: f64 = 0.15;

/// Samples how busy the CPUs are just before measuring, warning when other work runs.
pub fn busy_before() -> Option<f64> {
    let busy = cpu_busy_fraction(Duration::from_secs(1));
    if let Some(b) = busy
        && b > BUSY_WARN
    {
        eprintln!(
            "bench: WARNING: the CPUs were {:.0}% busy before starting; other work on this \
             machine will skew the results",
            b * 100.0
        );
    }
    busy
}

/// What the numbers were measured on; benchmark results are meaningless without it.
#[derive(Debug, Clone)]
pub struct MachineInfo {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
}

impl MachineInfo {
    /// The report lines naming the date, this machine and how busy it was.
    pub fn header(&self, date: &str, busy: Option<f64>) -> String {
        format!(
            "- Date: {date}\n- Machine: {} × {} (nproc = {}), Linux {}; CPU {} busy in the \
             second before measuring{}\n",
            self.nproc,
            self.cpu_model,
            self.nproc,
            self.kernel,
            busy.map_or_else(|| "?".to_string(), |b| format!("{:.0}%", b * 100.0)),
            if busy.is_some_and(|b| b > BUSY_WARN) {
                " — **other work was running, results are skewed**"
            } else {
                ""
            }
        )
    }

    pub fn detect() -> Self {
        let nproc = thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let cpu_model = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".to_string());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".to_string());
        Self {
            nproc,
            cpu_model,
            kernel,
        }
    }
}

/// Fraction (0..=1) of all CPU time spent busy during `window`, from /proc/stat.
///
/// Sampled right before measuring: the benchmark shares a small machine, and a build
/// or another benchmark running at the same time silently skews every number. (The
/// load average lags by minutes, e.g. it is still high right after our own build.)
pub fn cpu_busy_fraction(window: Duration) -> Option<f64> {
    let t0 = CpuTicks::now()?;
    thread::sleep(window);
    let t1 = CpuTicks::now()?;
    let total = t1.total.checked_sub(t0.total)?;
    let idle = t1.idle.checked_sub(t0.idle)?;
    (total > 0).then(|| (total.saturating_sub(idle)) as f64 / total as f64)
}

/// The machine's CPU time so far, from the first line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy)]
pub struct CpuTicks {
    total: u64,
    idle: u64,
    /// Time the hypervisor gave to other guests while this one wanted to run.
    steal: u64,
}

impl CpuTicks {
    pub fn now() -> Option<Self> {
        Self::parse(&fs::read_to_string("/proc/stat").ok()?)
    }

    fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is in user).
        let field = |i: usize| fields.get(i).copied().unwrap_or(0);
        Some(Self {
            total: fields.iter().take(8).sum(),
            idle: field(3) + field(4),
            steal: field(7),
        })
    }

    /// The share of the machine's CPU time since `self` that was stolen; warns when it
    /// is enough to skew a benchmark.
    pub fn steal_since(&self) -> Option<f64> {
        let now = Self::now()?;
        let total = now.total.checked_sub(self.total)?;
        let share =
            (total > 0).then(|| now.steal.saturating_sub(self.steal) as f64 / total as f64)?;
        if share > STEAL_WARN {
            eprintln!(
                "bench: WARNING: the hypervisor took {:.1}% of this VM's CPU time during the \
                 run; its rows are not comparable with a quiet run's",
                share * 100.0
            );
        }
        Some(share)
    }

    /// The report line for [`Self::steal_since`]'s share.
    pub fn steal_line(share: Option<f64>) -> String {
        match share {
            Some(s) if s > STEAL_WARN => format!(
                "- VM steal time during the run: {:.1}% of the CPU time — **the hypervisor ran \
                 other guests, results are skewed**\n",
                s * 100.0
            ),
            Some(s) => format!(
                "- VM steal time during the run: {:.1}% of the CPU time\n",
                s * 100.0
            ),
            None => String::new(),
        }
    }
}

/// Steal time above which a run's numbers are flagged (a quiet VM here shows under 0.5%).
const STEAL_WARN: f64 = 0.02;

/// Current UTC time as `YYYY-MM-DD HH:MM UTC`, without pulling in a date crate.
pub fn utc_now_string() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    // d is in 1..=31 and m in 1..=12 by construction.
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

/// The cargo target folder (`CARGO_TARGET_DIR` or `<root>/target`).
pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .unwrap_or_else(|| root.join("target"))
}

/// Writes `markdown` into the `section` of docs/benchmarks.md, unless `--no-docs`.
pub fn update_docs(root: &Path, section: &str, markdown: &str, no_docs: bool) -> Result<()> {
    if no_docs {
        eprintln!("bench: --no-docs given, docs/benchmarks.md not updated");
    } else {
        let path = write_docs_section(root, section, markdown)?;
        eprintln!("bench: updated {}", path.display());
    }
    Ok(())
}

/// Replaces the text between `<!-- bench:NAME:start -->` and `<!-- bench:NAME:end -->`
/// in `docs/benchmarks.md`, creating the file (or appending the marked section) if
/// needed. Only the marked region is touched so hand-written prose around it, and other
/// benchmarks' sections, survive re-runs.
pub fn write_docs_section(root: &Path, name: &str, body: &str) -> Result<std::path::PathBuf> {
    let path = root.join("docs").join("benchmarks.md");
    let start = format!("<!-- bench:{name}:start -->");
    let end = format!("<!-- bench:{name}:end -->");
    let existing = match fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::from(
            "# Benchmarks\n\n\
             Generated by `cargo xtask bench ...`; edit only outside the \
             `<!-- bench:... -->` markers, the regions between them are rewritten on \
             every run.\n",
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let section = format!("{start}\n{}\n{end}", body.trim_end());
    let updated = match (existing.find(&start), existing.find(&end)) {
        (Some(s), Some(e)) if s < e => {
            format!("{}{section}{}", &existing[..s], &existing[e + end.len()..])
        }
        (None, None) => format!("{}\n\n{section}\n", existing.trim_end()),
        _ => bail!(
            "{} has unbalanced {start} / {end} markers; fix them by hand",
            path.display()
        ),
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&path, updated).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_read_idle_and_steal_from_the_first_line() {
        let stat = "cpu  100 5 50 800 20 0 5 20 0 0\ncpu0 50 2 25 400 10 0 2 10 0 0\n";
        let t = CpuTicks::parse(stat).expect("a /proc/stat line");
        assert_eq!((t.total, t.idle, t.steal), (1000, 820, 20));
        assert!(CpuTicks::parse("intr 1 2 3").is_none());
        assert!(CpuTicks::steal_line(Some(0.05)).contains("skewed"));
        assert!(!CpuTicks::steal_line(Some(0.001)).contains("skewed"));
        assert_eq!(CpuTicks::steal_line(None), "");
    }

    #[test]
    fn unique_keeps_first_order() {
        assert_eq!(unique(&[3, 1, 3, 2, 1]), vec![3, 1, 2]);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn docs_section_replaced_only_between_markers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write_docs_section(root, "x", "one").expect("create");
        let text = fs::read_to_string(root.join("docs/benchmarks.md")).expect("read");
        assert!(text.starts_with("# Benchmarks"));
        let edited = text.replace("# Benchmarks", "# Benchmarks\n\nhand-written") + "\ntrailer\n";
        fs::write(root.join("docs/benchmarks.md"), edited).expect("write");
        write_docs_section(root, "x", "two").expect("replace");
        write_docs_section(root, "y", "other").expect("append");
        let text = fs::read_to_string(root.join("docs/benchmarks.md")).expect("read");
        assert!(text.contains("hand-written"));
        assert!(text.contains("<!-- bench:x:start -->\ntwo\n<!-- bench:x:end -->\n\ntrailer"));
        assert!(!text.contains("one"));
        assert!(text.contains("<!-- bench:y:start -->\nother\n<!-- bench:y:end -->"));
    }
}
