//! Starting the programs a benchmark measures: a release `portcullis serve` with a
//! generated config, readiness polling, and the log tail that explains a failure.

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use hyper::StatusCode;

use super::ChildGuard;
use super::load;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a started Portcullis idles before its memory is read.
pub(super) const IDLE_SETTLE: Duration = Duration::from_secs(1);
/// How long an idle program is watched for the wake-ups and CPU it spends doing nothing.
const IDLE_WATCH: Duration = Duration::from_secs(2);

/// A started Portcullis before any load: time from spawn to its first 200 on
/// `/healthz`, and its memory after [`IDLE_SETTLE`] of idling.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct AtRest {
    pub ready_ms: u64,
    /// Resident memory (`VmRSS`).
    pub rss_kib: u64,
    /// Address space reserved (`VmSize`): what `ulimit -v` limits.
    pub address_space_kib: u64,
    /// Size of what had to be installed to run it: the binary, or a Python virtualenv.
    pub binary_bytes: u64,
    /// What [`Self::binary_bytes`] measured ("binary", "virtualenv").
    pub installed: &'static str,
    /// Idle, how often its threads were woken, per second (context switches).
    pub idle_wakeups_per_s: f64,
    /// Idle, the CPU it used, in percent of one core.
    pub idle_cpu_percent: f64,
}

impl AtRest {
    /// Reads a started program (`pid` and its worker processes) at rest: its memory
    /// now, then its wake-ups and CPU over [`IDLE_WATCH`].
    pub fn read(
        pid: u32,
        ready_ms: u64,
        binary_bytes: u64,
        installed: &'static str,
    ) -> Result<Self> {
        let (rss_kib, address_space_kib) = tree_memory_of(pid)?;
        let before = (tree_switches_of(pid), tree_cpu_of(pid)?);
        thread::sleep(IDLE_WATCH);
        let after = (tree_switches_of(pid), tree_cpu_of(pid)?);
        let secs = IDLE_WATCH.as_secs_f64();
        Ok(Self {
            ready_ms,
            rss_kib,
            address_space_kib,
            binary_bytes,
            installed,
            idle_wakeups_per_s: after.0.saturating_sub(before.0) as f64 / secs,
            idle_cpu_percent: after
                .1
                .since(&before.1)
                .map_or(0.0, |t| t.total().as_secs_f64() / secs * 100.0),
        })
    }
}

impl AtRest {
    /// Report lines, one per target label that has a measurement.
    pub fn lines<'a>(rows: impl IntoIterator<Item = (&'a str, Option<AtRest>)>) -> String {
        rows.into_iter()
            .filter_map(|(label, rest)| Some((label, rest?)))
            .map(|(label, r)| {
                format!(
                    "- {label} at rest: ready {} ms after start; idle RSS {:.1} MiB, address \
                     space {:.1} MiB, {:.0} wake-ups/s, {:.1}% of a core; {} {:.1} MiB.\n",
                    r.ready_ms,
                    r.rss_kib as f64 / 1024.0,
                    r.address_space_kib as f64 / 1024.0,
                    r.idle_wakeups_per_s,
                    r.idle_cpu_percent,
                    r.installed,
                    r.binary_bytes as f64 / (1024.0 * 1024.0),
                )
            })
            .collect()
    }
}

/// `VmRSS` and `VmSize` of a process, in KiB.
pub(super) fn memory_of(pid: u32) -> Result<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmSize:")?))
}

/// [`memory_of`] summed over a process and all its descendants (a server made of a
/// supervisor and worker processes), in KiB.
pub(super) fn tree_memory_of(pid: u32) -> Result<(u64, u64)> {
    let (mut rss, mut size) = memory_of(pid)?;
    for child in children_of(pid) {
        // A worker that exits between listing and reading is simply not counted.
        if let Ok((r, s)) = tree_memory_of(child) {
            rss += r;
            size += s;
        }
    }
    Ok((rss, size))
}

/// CPU time a process (or several) spent, split as `/proc` reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTime {
    /// In the program itself.
    pub user: Duration,
    /// In the kernel on its behalf (system calls, and the loopback network stack).
    pub system: Duration,
}

impl CpuTime {
    pub fn total(&self) -> Duration {
        self.user + self.system
    }

    /// What was spent from `earlier` to `self`; `None` if a counter went backwards (a
    /// worker process exited in between and took its share with it).
    pub fn since(&self, earlier: &Self) -> Option<Self> {
        Some(Self {
            user: self.user.checked_sub(earlier.user)?,
            system: self.system.checked_sub(earlier.system)?,
        })
    }
}

impl std::ops::Add for CpuTime {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            user: self.user + other.user,
            system: self.system + other.system,
        }
    }
}

/// Context switches (voluntary and not) of every thread of a process and of its
/// descendants so far: how often they were woken.
fn tree_switches_of(pid: u32) -> u64 {
    let own: u64 = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| fs::read_to_string(t.path().join("status")).ok())
                .map(|status| {
                    status
                        .lines()
                        .filter(|l| l.contains("ctxt_switches:"))
                        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                        .sum::<u64>()
                })
                .sum()
        })
        .unwrap_or_default();
    own + children_of(pid)
        .into_iter()
        .map(tree_switches_of)
        .sum::<u64>()
}

/// CPU time a process and all its descendants have spent so far. Workers that already
/// exited are not counted.
pub(super) fn tree_cpu_of(pid: u32) -> Result<CpuTime> {
    let mut total = cpu_of(pid)?;
    for child in children_of(pid) {
        if let Ok(t) = tree_cpu_of(child) {
            total = total + t;
        }
    }
    Ok(total)
}

/// CPU time (every thread) of one process, from `/proc/<pid>/stat`.
pub(super) fn cpu_of(pid: u32) -> Result<CpuTime> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let (user, system) =
        stat_ticks(&stat).with_context(|| format!("/proc/{pid}/stat has no CPU times"))?;
    let time = |ticks: u64| Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64);
    Ok(CpuTime {
        user: time(user),
        system: time(system),
    })
}

/// `utime` and `stime` of a `/proc/<pid>/stat` line, in clock ticks. The command name
/// may hold spaces and parentheses, so fields are counted after its last `)`: from
/// there they are the 12th and 13th (proc(5)).
fn stat_ticks(stat: &str) -> Option<(u64, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// The kernel's clock ticks per second for `/proc` times (`getconf CLK_TCK`; 100 on
/// every Linux this runs on, the fallback).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|t| t.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// The direct children of a process, from every one of its threads' `children` lists.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Appends the last lines of a child's log to an error, since "bad status" alone rarely
/// says why a proxy misbehaved.
pub fn with_log_tail(err: anyhow::Error, log: &Path) -> anyhow::Error {
    match log_tail(log, 15) {
        // The log lives in the temp dir, which is removed on exit, so inline the tail.
        Some(tail) => {
            let file = log.file_name().map(|f| f.to_string_lossy().into_owned());
            anyhow!(
                "{err:#}\n    last lines of its {}:\n{tail}",
                file.as_deref().unwrap_or("log")
            )
        }
        None => err,
    }
}

pub fn log_tail(path: &Path, lines: usize) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let all: Vec<&str> = text.lines().collect();
    if all.is_empty() {
        return None;
    }
    Some(all[all.len().saturating_sub(lines)..].join("\n"))
}

/// Starts a child from its `prepared` binary (a proxy listening at the address `start`
/// returns), runs `measure` against it, then stops it; a failure carries the last lines
/// of the child's `log`. A binary that could not be prepared fails this target only.
pub fn with_child<M>(
    prepared: &Option<Result<PathBuf, String>>,
    start: impl FnOnce(&Path) -> Result<(ChildGuard, SocketAddr)>,
    log: &Path,
    measure: impl FnOnce(SocketAddr, &mut ChildGuard) -> Result<M>,
) -> Result<M> {
    let bin = match prepared {
        Some(Ok(bin)) => bin,
        Some(Err(e)) => bail!("{e}"),
        None => bail!("not selected"),
    };
    let (mut guard, addr) = start(bin)?;
    let r = measure(addr, &mut guard);
    guard.stop();
    r.map_err(|e| with_log_tail(e, log))
}

/// A free loopback port. There is a small race between closing this listener and the
/// child binding it, acceptable for a benchmark on an otherwise idle box.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr().context("free port address")?.port())
}

/// Builds the release host (unless `no_build`) and returns its binary path; under
/// `bench profile`, the profiling build it prepared.
pub fn prepare_portcullis(root: &Path, no_build: bool) -> Result<PathBuf, String> {
    match super::profile::binary() {
        Some(bin) => Ok(bin),
        None => build_portcullis(root, "release", no_build),
    }
}

/// Builds the host in cargo profile `profile` (unless `no_build`) and returns its
/// binary path.
pub fn build_portcullis(root: &Path, profile: &str, no_build: bool) -> Result<PathBuf, String> {
    let bin = super::target_dir(root).join(profile).join("portcullis");
    let command = format!("cargo build --profile {profile} -p portcullis");
    if !no_build {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        eprintln!("bench: {command}");
        let status = super::run_interruptible(
            Command::new(cargo)
                .args(["build", "--profile", profile, "-p", "portcullis"])
                .current_dir(root),
            &command,
        )
        .map_err(|e| format!("{e:#}"))?;
        if !status.success() {
            return Err(format!(
                "`{command}` failed ({status}); see the compiler output above"
            ));
        }
    }
    if !bin.is_file() {
        return Err(format!(
            "{} does not exist; build it with `{command}` (or drop --no-build)",
            bin.display()
        ));
    }
    Ok(bin)
}

/// Where [`spawn_portcullis`] writes the config of a Portcullis in `dir`: a folder of its
/// own. Portcullis watches the config's folder (an editor saves by renaming into it), so
/// a log file beside the config would wake its watcher on every write the gateway logs,
/// which no deployment with its logs elsewhere pays.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("config").join("portcullis.json")
}

/// Writes `config` (at [`config_path`]), starts `portcullis serve` with `dir` for its
/// data and logs (`stderr.log`), and waits for `/healthz`. With `registry`, provider
/// plugins load from there; without, none do. `env` adds variables (a database URL, a
/// shared master key).
pub fn spawn_portcullis(
    bin: &Path,
    dir: &Path,
    config: &serde_json::Value,
    registry: Option<&Path>,
    env: &[(&str, String)],
) -> Result<(ChildGuard, SocketAddr)> {
    spawn_portcullis_within(bin, dir, config, registry, env, READY_TIMEOUT)
}

/// [`spawn_portcullis`], waiting up to `ready` for `/healthz` (a program started under a
/// tool such as valgrind starts many times slower).
pub fn spawn_portcullis_within(
    bin: &Path,
    dir: &Path,
    config: &serde_json::Value,
    registry: Option<&Path>,
    env: &[(&str, String)],
    ready: Duration,
) -> Result<(ChildGuard, SocketAddr)> {
    fs::create_dir_all(dir.join("data")).context("creating portcullis data dir")?;
    let config_path = config_path(dir);
    if let Some(folder) = config_path.parent() {
        fs::create_dir_all(folder).context("creating portcullis config dir")?;
    }
    fs::write(&config_path, serde_json::to_string_pretty(&config)?)
        .context("writing portcullis config")?;
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stdout = fs::File::create(dir.join("stdout.log")).context("creating stdout log")?;
    let stderr = fs::File::create(dir.join("stderr.log")).context("creating stderr log")?;
    let started = Instant::now();
    let mut cmd = Command::new(bin);
    match registry {
        Some(r) => cmd.env("PORTCULLIS_REGISTRY", r),
        None => cmd.env_remove("PORTCULLIS_REGISTRY"),
    };
    // Its own folder as the working directory: a Portcullis started without a registry
    // must not pick up `./registry` of the checkout the benchmark runs from.
    let child = cmd
        .current_dir(dir)
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env_remove("PORTCULLIS_MASTER_KEY")
        .env_remove("PORTCULLIS_DATABASE_URL")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut guard = ChildGuard::new("portcullis", child, "TERM");
    wait_ready_within(&mut guard, "portcullis", addr, "/healthz", true, ready)
        .map_err(|e| with_log_tail(e, &dir.join("stderr.log")))?;
    let ready_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    thread::sleep(IDLE_SETTLE);
    guard.at_rest = Some(AtRest::read(
        guard.pid(),
        ready_ms,
        fs::metadata(bin).map(|m| m.len()).unwrap_or_default(),
        "binary",
    )?);
    Ok((guard, addr))
}

/// Polls `path` until it answers (200 if `need_ok`, any status otherwise), the child
/// exits, or [`READY_TIMEOUT`] passes.
pub fn wait_ready(
    guard: &mut ChildGuard,
    name: &str,
    addr: SocketAddr,
    path: &str,
    need_ok: bool,
) -> Result<()> {
    wait_ready_within(guard, name, addr, path, need_ok, READY_TIMEOUT)
}

/// [`wait_ready`] with its own patience, for programs that start slowly.
pub fn wait_ready_within(
    guard: &mut ChildGuard,
    name: &str,
    addr: SocketAddr,
    path: &str,
    need_ok: bool,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        super::check_interrupted()?;
        if let Some(status) = guard.exited() {
            bail!("{name} exited during startup ({status})");
        }
        let last = match load::probe(addr, path) {
            Ok((status, _)) if !need_ok || status == StatusCode::OK => return Ok(()),
            Ok((status, _)) => format!("GET {path} returned {status}"),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("{name} not ready on {addr} after {timeout:?}: {last}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Copies a registry entry (`plugin.toml` and `plugin.wasm`) from `from` into the folder
/// `to`, which it creates.
pub fn copy_registry_entry(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for file in ["plugin.toml", "plugin.wasm"] {
        fs::copy(from.join(file), to.join(file))
            .with_context(|| format!("copying {}", from.join(file).display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_times_are_read_after_the_command_name_whatever_it_holds() {
        let line = "4242 (nginx: worker (x) 1) S 4241 4241 4241 0 -1 4194624 900 0 0 0 \
                    113 298 0 0 20 0 1 0 5000 100000 500 18446744073709551615";
        assert_eq!(stat_ticks(line), Some((113, 298)));
        assert_eq!(
            stat_ticks("4242 (x) S 1 2 3"),
            None,
            "a cut line has no times"
        );
        assert_eq!(stat_ticks("no command name"), None);
    }

    #[test]
    fn what_was_spent_is_the_difference_and_never_negative() {
        let ms = Duration::from_millis;
        let earlier = CpuTime {
            user: ms(30),
            system: ms(10),
        };
        let later = earlier
            + CpuTime {
                user: ms(20),
                system: ms(5),
            };
        let spent = later.since(&earlier).expect("counters went forward");
        assert_eq!(
            (spent.user, spent.system, spent.total()),
            (ms(20), ms(5), ms(25))
        );
        // A worker that exited took its share: the sum went back, nothing is reported.
        assert_eq!(earlier.since(&later), None);
        assert!(
            cpu_of(std::process::id()).is_ok(),
            "reads this process's own times"
        );
    }
}
