//! Benchmarks and the plumbing they share: interrupt handling, child-process guards,
//! machine description, and writing results into `docs/benchmarks.md`.
//!
//! Everything a benchmark starts (servers, proxies) is wrapped in a [`ChildGuard`] so it
//! is stopped on every exit path: normal return, `?` errors, panics, and Ctrl-C / SIGTERM
//! (which set a flag that the load loops and waits poll, so the stack unwinds through
//! the guards instead of the process dying with children left behind).

pub mod load;
pub mod plugins;
pub mod proxy;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
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
    Command::new("sh")
        .arg("-c")
        .arg(format!("kill -s {signal} {pid}"))
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
}

impl ChildGuard {
    pub fn new(name: impl Into<String>, child: Child, graceful_signal: &'static str) -> Self {
        Self {
            name: name.into(),
            child,
            graceful_signal,
        }
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

    /// Stops the process; idempotent.
    pub fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let pid = self.child.id();
        if send_signal(pid, self.graceful_signal) && self.wait_for_exit(Duration::from_secs(5)) {
            return;
        }
        if self.graceful_signal != "TERM"
            && send_signal(pid, "TERM")
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

/// What the numbers were measured on; benchmark results are meaningless without it.
#[derive(Debug, Clone)]
pub struct MachineInfo {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
}

impl MachineInfo {
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
    fn sample() -> Option<(u64, u64)> {
        let stat = fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is in user).
        let total: u64 = fields.iter().take(8).sum();
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        Some((total, idle))
    }
    let (t0, i0) = sample()?;
    thread::sleep(window);
    let (t1, i1) = sample()?;
    let total = t1.checked_sub(t0)?;
    let idle = i1.checked_sub(i0)?;
    (total > 0).then(|| (total.saturating_sub(idle)) as f64 / total as f64)
}

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
