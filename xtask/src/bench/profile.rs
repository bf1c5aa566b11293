//! `cargo xtask bench profile <path>`: where the gateway's CPU goes on one benchmark
//! path, as docs/benchmarks.md's "where the time goes" tables give it.
//!
//! It builds the profiling build (the release build with symbols and line tables), runs
//! the path's benchmark on it (`bench proxy` or `bench mcp` with one target, docs left
//! alone), and records the gateway with `perf record` during the first seconds of the
//! high-concurrency measured phase, or of the concurrency-1 one with
//! `--concurrency-one` ([`start`], called by the load loop). Then it reads the samples
//! back (`perf script`) and charges each one to a layer: the kernel when the sample is
//! in it, else the innermost frame that belongs to a layer ([`LAYERS`]), so a copy, an
//! allocation or a JSON decode counts for whoever asked for it. Each layer's share of
//! the samples, times the CPU a request cost in that phase, is its rough cost a
//! request.

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// Which benchmark path to profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProfiledPath {
    /// A proxied GET (`bench proxy`, target `portcullis`), concurrency 64.
    Proxy,
    /// A proxied GET shaped by a plugin call (`bench proxy`, `portcullis-plugin-calls`).
    PluginCalls,
    /// A sessionless `tools/call` through `/v1/mcp` (`bench mcp`, `portcullis`),
    /// concurrency 32.
    Mcp,
    /// The same call in a session (`bench mcp`, `portcullis-session`).
    McpSession,
}

impl ProfiledPath {
    /// The benchmark that measures this path, and its target.
    fn bench_and_target(self) -> (&'static str, &'static str) {
        match self {
            Self::Proxy => ("proxy", "portcullis"),
            Self::PluginCalls => ("proxy", "portcullis-plugin-calls"),
            Self::Mcp => ("mcp", "portcullis"),
            Self::McpSession => ("mcp", "portcullis-session"),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ProfileArgs {
    /// The path to profile.
    #[arg(value_enum)]
    path: ProfiledPath,
    /// Seconds recorded, from the start of the measured phase (the phase runs five
    /// seconds longer, unless its request cap ends it first).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=60))]
    seconds: u64,
    /// Do not run `cargo build --profile profiling -p portcullis` first.
    #[arg(long)]
    no_build: bool,
    /// Keep `perf record`'s data in this file (else it goes with the temporary folder).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Record the concurrency-1 phase instead, where a request's latency is measured:
    /// there the cores idle between requests, so wake-ups weigh more than at load.
    #[arg(long)]
    concurrency_one: bool,
}

/// What `bench profile` asked of the benchmark it runs.
struct Recording {
    perf: PathBuf,
    /// The gateway binary to run instead of the release build.
    binary: PathBuf,
    data: PathBuf,
    seconds: u64,
    /// Whether the concurrency-1 phase is recorded, instead of the high-concurrency one.
    at_one: bool,
    /// Whether a phase has been recorded already (only the first is).
    taken: AtomicBool,
    /// The gateway's CPU a request over the recorded phase, in µs.
    cpu_us: Mutex<Option<f64>>,
}

static RECORDING: OnceLock<Recording> = OnceLock::new();

/// The binary a profiled benchmark runs, when `bench profile` asked for one.
pub fn binary() -> Option<PathBuf> {
    RECORDING.get().map(|r| r.binary.clone())
}

/// A `perf record` of the measured program, running; stopped if the phase fails.
pub struct Recorder(Option<Child>);

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts recording `servers` for a measured phase at `concurrency`, if `bench profile`
/// asked for it and no phase has been recorded yet. Only phases of the concurrency it
/// asked for are: above one, or exactly one with `--concurrency-one`.
pub fn start(servers: &[u32], concurrency: usize) -> Result<Option<Recorder>> {
    let Some(r) = RECORDING.get() else {
        return Ok(None);
    };
    if !records(r.at_one, concurrency) || servers.is_empty() {
        return Ok(None);
    }
    if r.taken.swap(true, Ordering::Relaxed) {
        return Ok(None);
    }
    let pids = servers
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let child = Command::new(&r.perf)
        // No build-id cache: it would keep a copy of every gateway build profiled, and
        // a cached copy (a hard link) changes when the file it was taken from is
        // overwritten, so a later report would unwind with the wrong binary.
        .args([
            "record",
            "--no-buildid-cache",
            "-e",
            "cpu-clock",
            "-F",
            "499",
        ])
        .args(["--call-graph", "dwarf,32768", "-p", &pids, "-o"])
        .arg(&r.data)
        .args(["--", "sleep", &r.seconds.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting `perf record`")?;
    eprintln!("bench: recording pid {pids} for {} s", r.seconds);
    Ok(Some(Recorder(Some(child))))
}

/// Whether a phase at `concurrency` is the one asked for: the concurrency-1 phase when
/// `at_one`, else a high-concurrency one.
fn records(at_one: bool, concurrency: usize) -> bool {
    (concurrency == 1) == at_one
}

/// Waits for the recording to end and keeps the phase's CPU a request (of the measured
/// program) for the report.
pub fn finish(recorder: Option<Recorder>, server_cpu_us: Option<f64>) -> Result<()> {
    let Some(child) = recorder.and_then(|mut r| r.0.take()) else {
        return Ok(());
    };
    let out = child
        .wait_with_output()
        .context("waiting for `perf record`")?;
    if !out.status.success() {
        bail!(
            "`perf record` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if let Some(r) = RECORDING.get() {
        *r.cpu_us.lock().unwrap_or_else(|p| p.into_inner()) = server_cpu_us;
    }
    Ok(())
}

/// The layers a sample is charged to, each by patterns on frame names, tried in this
/// order on each frame from the innermost out. Generic code (serde, the allocator,
/// `memcpy`, core and std, `http`, `bytes`) matches none, so it is charged to its
/// caller's layer.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "plugin: instantiating (binding the component's instances and imports, the slot)",
        &["InstancePre", "Instantiator"],
    ),
    (
        "plugin: dropping the store (resetting the slot's memory, tables and image)",
        &[
            "drop_in_place<wasmtime::runtime::store",
            "MemoryImageSlot",
            "decommit",
        ],
    ),
    (
        "plugin: the rest of a call (the store, the hook, its arguments and answer, the checks)",
        &["wasmtime", "portcullis::plugins"],
    ),
    ("rmcp (both stacks, their tasks and messages)", &["rmcp::"]),
    (
        "gateway: MCP (views, grants, names, routing)",
        &["portcullis::mcp"],
    ),
    (
        "gateway: the audit record, the metric, the request log",
        &["portcullis::audit", "portcullis::telemetry"],
    ),
    ("gateway: the other stages", &["portcullis::"]),
    ("hyper on both sides, hyper-util's pool", &["hyper"]),
    ("tokio's scheduling and I/O driver", &["tokio::"]),
];
const KERNEL: &str = "the kernel: socket calls, loopback TCP, wake-ups";
const UNRESOLVED: &str = "code without symbols (a plugin's compiled code, or callers perf lost)";
/// How many of [`LAYERS`], from the first, are a plugin call's.
const PLUGIN_LAYERS: usize = 3;
const OTHER: &str = "other";

/// Charges one sample, its frames innermost first (`perf script` lines: address,
/// symbol, then the object in brackets).
fn charge(frames: &[&str]) -> &'static str {
    let Some(leaf) = frames.first() else {
        return OTHER;
    };
    if leaf.contains("[kernel.kallsyms]") {
        return KERNEL;
    }
    let matches = |frame: &str, patterns: &[&str]| patterns.iter().any(|p| frame.contains(p));
    for frame in frames {
        let Some(i) = LAYERS.iter().position(|(_, p)| matches(frame, p)) else {
            continue;
        };
        if i >= PLUGIN_LAYERS {
            return LAYERS[i].0;
        }
        // Inside a plugin call the innermost frames are wasmtime's own, whichever step
        // they serve: the step is the outermost one on the stack, instantiating or
        // dropping the store, else the rest of the call.
        let step = (0..PLUGIN_LAYERS - 1)
            .find(|&j| frames.iter().any(|f| matches(f, LAYERS[j].1)))
            .unwrap_or(PLUGIN_LAYERS - 1);
        return LAYERS[step].0;
    }
    if leaf.contains("[unknown]") {
        return UNRESOLVED;
    }
    OTHER
}

/// Shares of the samples in `perf script` text, largest first, with the sample count.
fn shares(script: &str) -> (usize, Vec<(&'static str, usize)>) {
    let mut counts: HashMap<&'static str, usize> = HashMap::new();
    let mut total = 0;
    let mut frames: Vec<&str> = Vec::new();
    let mut tally = |frames: &mut Vec<&str>| {
        if !frames.is_empty() {
            total += 1;
            *counts.entry(charge(frames)).or_default() += 1;
            frames.clear();
        }
    };
    for line in script.lines() {
        if line.trim().is_empty() {
            tally(&mut frames);
        } else if line.starts_with([' ', '\t']) {
            frames.push(line.trim());
        }
    }
    tally(&mut frames);
    let mut sorted: Vec<_> = counts.into_iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    (total, sorted)
}

/// The report: each layer's share, and its rough cost a request when the phase's CPU a
/// request is known.
fn report(path: ProfiledPath, total: usize, shares: &[(&str, usize)], cpu: Option<f64>) -> String {
    let unit = match path {
        ProfiledPath::Proxy | ProfiledPath::PluginCalls => "request",
        ProfiledPath::Mcp | ProfiledPath::McpSession => "call",
    };
    let mut md = String::new();
    let _ = writeln!(
        md,
        "{total} samples; the gateway's CPU a {unit} over the phase: {}\n",
        cpu.map_or_else(|| "not measured".to_owned(), |c| format!("{c:.1} µs"))
    );
    let _ = writeln!(md, "| Where | Share of samples | about µs a {unit} |");
    let _ = writeln!(md, "|---|---:|---:|");
    let total = total.max(1) as f64;
    let row = |md: &mut String, name: &str, n: usize| {
        let share = n as f64 / total;
        let us = cpu.map_or_else(|| "—".to_owned(), |c| format!("{:.1}", share * c));
        let _ = writeln!(md, "| {name} | {:.1}% | {us} |", share * 100.0);
    };
    // Layers under half a percent are noise at these sample counts: folded into one.
    let (shown, small): (Vec<_>, Vec<_>) =
        shares.iter().partition(|(_, n)| *n as f64 / total >= 0.005);
    for (name, n) in shown {
        row(&mut md, name, n);
    }
    let rest: usize = small.iter().map(|(_, n)| n).sum();
    if rest as f64 / total >= 0.0005 {
        row(&mut md, "layers under 0.5% each", rest);
    }
    md
}

pub fn run(root: &Path, args: ProfileArgs) -> Result<()> {
    let perf = match super::find_executable("perf") {
        Some(perf) => perf,
        None => {
            super::apt_install("perf", &["linux-perf"]).map_err(anyhow::Error::msg)?;
            super::find_executable("perf")
                .context("perf was installed but is not on the PATH; install it by hand")?
        }
    };
    let binary = super::host::build_portcullis(root, "profiling", args.no_build)
        .map_err(anyhow::Error::msg)?;
    let tmp = tempfile::Builder::new()
        .prefix("portcullis-profile-")
        .tempdir()
        .context("creating temp dir")?;
    let data = args
        .data
        .clone()
        .unwrap_or_else(|| tmp.path().join("perf.data"));
    let recording = Recording {
        perf: perf.clone(),
        binary,
        data: data.clone(),
        seconds: args.seconds,
        at_one: args.concurrency_one,
        taken: AtomicBool::new(false),
        cpu_us: Mutex::new(None),
    };
    if RECORDING.set(recording).is_err() {
        bail!("a profile is already being recorded");
    }
    // The measured phase outlasts the recording by a few seconds.
    let duration = (args.seconds + 5).to_string();
    let (bench, target) = args.path.bench_and_target();
    let line = [
        bench,
        "--no-build",
        "--no-docs",
        "--duration",
        &duration,
        "--targets",
        target,
    ];
    if bench == "proxy" {
        super::proxy::run(root, With::<super::proxy::ProxyArgs>::parse_from(line).args)?;
    } else {
        super::mcp::run(root, With::<super::mcp::McpArgs>::parse_from(line).args)?;
    }
    let r = RECORDING.get().context("the recording was not set up")?;
    if !r.taken.load(Ordering::Relaxed) {
        bail!("the benchmark ended before the phase to profile was recorded");
    }
    eprintln!("bench: reading the samples back (perf script; this takes a minute)");
    let out = Command::new(perf)
        .args(["script", "-F", "comm,tid,ip,sym,dso", "-i"])
        .arg(&data)
        .stderr(Stdio::null())
        .output()
        .context("running `perf script`")?;
    if !out.status.success() {
        bail!("`perf script` failed ({})", out.status);
    }
    let script = String::from_utf8_lossy(&out.stdout);
    let (total, shares) = shares(&script);
    if total == 0 {
        bail!("`perf record` took no samples of the gateway");
    }
    let cpu = *r.cpu_us.lock().unwrap_or_else(|p| p.into_inner());
    println!("{}", report(args.path, total, &shares, cpu));
    // The temporary folder (and the data in it, unless --data) goes now.
    drop(tmp);
    Ok(())
}

/// A benchmark's arguments, parsed from a command line of `bench profile`'s making.
#[derive(Parser)]
struct With<A: clap::Args> {
    #[command(flatten)]
    args: A,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three samples as `perf script -F comm,tid,ip,sym,dso` prints them: one in the
    /// kernel, one whose leaf is generic code called by hyper, one in a plugin's store
    /// drop under the gateway's own frames.
    const SCRIPT: &str = "\
connections-0  8635 
\tffffffff8130f5d3 read_tsc ([kernel.kallsyms])
\t          10a974 __libc_recv (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t         1beb1bb hyper::proto::h1::io::Buffered<T,B>::poll_read_from_io (/x/portcullis)

connections-1  8636 
\t          1a2b3c __memmove_avx_unaligned_erms (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t          1a2b40 <bytes::BytesMut as bytes::buf::buf_mut::BufMut>::put_slice (/x/portcullis)
\t          1a2b50 hyper::proto::h1::role::Server::encode (/x/portcullis)
\t          1a2b60 portcullis::front::Front::hot::{{closure}} (/x/portcullis)

connections-1  8636 
\t          2a2b3c __memset_avx2_unaligned_erms (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t          2a2b40 wasmtime::runtime::vm::cow::MemoryImageSlot::clear_and_remain_ready (/x/portcullis)
\t          2a2b50 core::ptr::drop_in_place<wasmtime::runtime::store::Store<portcullis::plugins::runtime::State>> (/x/portcullis)
\t          2a2b60 portcullis::plugins::runtime::Runtime::call::{{closure}} (/x/portcullis)
";

    #[test]
    fn samples_are_charged_to_the_kernel_or_the_innermost_layer_that_owns_them() {
        let (total, shares) = shares(SCRIPT);
        assert_eq!(total, 3);
        let of = |name: &str| {
            shares
                .iter()
                .find(|(n, _)| n.starts_with(name))
                .map_or(0, |(_, c)| *c)
        };
        assert_eq!(of("the kernel"), 1);
        // The copy is hyper's, not the gateway's that called hyper.
        assert_eq!(of("hyper"), 1);
        assert_eq!(of("plugin: dropping the store"), 1);
        assert_eq!(of("gateway"), 0);
    }

    #[test]
    fn the_phase_recorded_is_the_concurrency_asked_for() {
        assert!(records(false, 64));
        assert!(!records(false, 1));
        assert!(records(true, 1));
        assert!(!records(true, 32));
    }

    #[test]
    fn inside_a_plugin_call_the_step_is_charged_not_wasmtimes_innermost_frame() {
        let instantiating = [
            "1 wasmtime::runtime::vm::instance::Instance::new (/x/portcullis)",
            "2 wasmtime::runtime::component::instance::InstancePre<T>::instantiate_async::{{closure}} (/x/portcullis)",
            "3 portcullis::plugins::runtime::Runtime::call::{{closure}} (/x/portcullis)",
        ];
        assert!(charge(&instantiating).starts_with("plugin: instantiating"));
        let calling = [
            "1 wasmtime::runtime::component::func::typed::TypedFunc<P,R>::call_raw (/x/portcullis)",
            "2 portcullis::plugins::runtime::run_one::{{closure}} (/x/portcullis)",
        ];
        assert!(charge(&calling).starts_with("plugin: the rest of a call"));
    }

    #[test]
    fn a_sample_without_symbols_or_layer_is_reported_as_such() {
        assert_eq!(charge(&["7f12 [unknown] ([unknown])"]), UNRESOLVED);
        assert_eq!(charge(&["7f12 __memmove (/usr/lib/libc.so.6)"]), OTHER);
        assert_eq!(charge(&[]), OTHER);
        // A drop outside wasmtime is not the plugin store's.
        assert_eq!(
            charge(&["1 <alloc::vec::Vec<T> as core::ops::drop::Drop>::drop (/x/portcullis)"]),
            OTHER
        );
    }

    #[test]
    fn the_report_gives_each_layers_share_and_its_cost_a_request() {
        let md = report(
            ProfiledPath::Proxy,
            4,
            &[
                ("the kernel: socket calls, loopback TCP, wake-ups", 3),
                ("tokio's scheduling and I/O driver", 1),
            ],
            Some(20.0),
        );
        assert!(
            md.contains("| the kernel: socket calls, loopback TCP, wake-ups | 75.0% | 15.0 |"),
            "{md}"
        );
        assert!(
            md.contains("| tokio's scheduling and I/O driver | 25.0% | 5.0 |"),
            "{md}"
        );
        assert!(md.contains("about µs a request"), "{md}");
        let folded = report(
            ProfiledPath::Mcp,
            1000,
            &[("other", 996), ("tokio", 2), ("rmcp", 2)],
            None,
        );
        assert!(
            folded.contains("| layers under 0.5% each | 0.4% | — |"),
            "{folded}"
        );
        assert!(!folded.contains("| tokio"), "{folded}");
        let unmeasured = report(ProfiledPath::Mcp, 1, &[("other", 1)], None);
        assert!(
            unmeasured.contains("| other | 100.0% | — |"),
            "{unmeasured}"
        );
    }
}
