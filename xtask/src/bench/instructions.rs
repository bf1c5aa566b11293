//! `cargo xtask bench instructions`: the instructions the gateway executes in user space
//! for one proxied request, counted by valgrind's callgrind tool, with and without a
//! provider plugin.
//!
//! The plugin aim allows a plugin 5% of the proxy's requests/s, but timed runs of one
//! build on these two shared cores move by ±10%, so `bench proxy` cannot settle it. An
//! instruction count can ([`super::callgrind`]): it is the same, to a fraction of a
//! percent, however busy the machine is. Each target is `bench proxy`'s (the same
//! config, request and upstream); its phases are bounded by request count, not time, so
//! every target counts the same requests.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use super::callgrind::{Counter, Tools};
use super::host::{build_portcullis, prepare_portcullis, spawn_portcullis_within, with_log_tail};
use super::load::{self, LoadSpec, Phase, Target};
use super::proxy::{self, TargetKind, Upstream};
use super::{MachineInfo, check_interrupted};

/// How long a phase may run under callgrind (some fifty times slower than natively)
/// before it is cut short, failing the target: a bound, not a measure.
const PHASE_CAP: Duration = Duration::from_secs(300);

/// How long a Portcullis under callgrind may take to answer `/healthz`: it compiles its
/// plugin there (some ten seconds for one).
const READY_UNDER_CALLGRIND: Duration = Duration::from_secs(180);

/// The longest deadline a plugin's `[limits] timeout_ms` may ask for.
const MAX_PLUGIN_TIMEOUT_MS: i64 = 1_000;

/// Options for `cargo xtask bench instructions`.
#[derive(Debug, Args)]
pub struct InstructionsArgs {
    /// Do not run `cargo build --release -p portcullis` first.
    #[arg(long)]
    no_build: bool,
    /// Count the profiling build instead (`cargo build --profile profiling`: the same
    /// code with symbols), so that `--keep`'s dumps name their functions.
    #[arg(long)]
    symbols: bool,
    /// Requests counted in each phase (each after half as many to warm up).
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(100..=1_000_000))]
    requests: u64,
    /// Concurrent connections in the second phase.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(2..=256))]
    concurrency_high: u64,
    /// Which targets to count, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "portcullis,portcullis-plugin,portcullis-slack,portcullis-plugin-calls"
    )]
    targets: Vec<Counted>,
    /// Do not update docs/benchmarks.md (it is only updated when every target ran).
    #[arg(long)]
    no_docs: bool,
    /// Run in this folder and keep it: each target's folder holds its callgrind dumps
    /// (`callgrind.out.1` the concurrency-1 phase, `.2` the other), for
    /// `callgrind_annotate`. Without it a temporary folder is used and removed.
    #[arg(long)]
    keep: Option<PathBuf>,
}

/// The Portcullis targets of `bench proxy`, which are the ones counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Counted {
    Portcullis,
    PortcullisPlugin,
    PortcullisSlack,
    PortcullisPluginCalls,
}

impl Counted {
    const ALL: [Self; 4] = [
        Self::Portcullis,
        Self::PortcullisPlugin,
        Self::PortcullisSlack,
        Self::PortcullisPluginCalls,
    ];

    fn proxy(self) -> TargetKind {
        match self {
            Self::Portcullis => TargetKind::Portcullis,
            Self::PortcullisPlugin => TargetKind::PortcullisPlugin,
            Self::PortcullisSlack => TargetKind::PortcullisSlack,
            Self::PortcullisPluginCalls => TargetKind::PortcullisPluginCalls,
        }
    }

    fn label(self) -> &'static str {
        self.proxy().label()
    }
}

/// Instructions a request, at concurrency 1 and at the high concurrency.
#[derive(Debug, Clone, Copy)]
struct Count {
    at_one: f64,
    at_high: f64,
}

pub fn run(root: &Path, args: InstructionsArgs) -> Result<()> {
    super::install_interrupt_handler()?;
    let machine = MachineInfo::detect();
    let tools = Tools::find()?;
    let bin = match args.symbols {
        true => build_portcullis(root, "profiling", args.no_build),
        false => prepare_portcullis(root, args.no_build),
    }
    .map_err(anyhow::Error::msg)?;
    check_interrupted()?;
    let tmp = tempfile::Builder::new()
        .prefix("portcullis-instructions-")
        .tempdir()
        .context("creating temp dir")?;
    let folder = match &args.keep {
        // Absolute: each Portcullis runs in a folder of its own.
        Some(keep) => {
            std::fs::create_dir_all(keep)
                .with_context(|| format!("creating {}", keep.display()))?;
            std::path::absolute(keep).with_context(|| format!("resolving {}", keep.display()))?
        }
        None => tmp.path().to_owned(),
    };
    let upstream = Upstream::start(1)?;
    let targets = super::unique(&args.targets);
    let mut results = Vec::new();
    for &kind in &targets {
        check_interrupted()?;
        eprintln!("bench: counting {}", kind.label());
        let outcome = count(root, &bin, &folder, &upstream, &tools, kind, &args);
        check_interrupted()?;
        super::record(&mut results, kind, kind.label(), outcome);
    }
    drop(upstream);
    let markdown = markdown(&machine, &tools, &args, &results);
    println!("{markdown}");
    let (failures, complete) = super::summary(&results, |k| k.label(), &Counted::ALL);
    super::publish(
        root,
        "instructions",
        &markdown,
        args.no_docs,
        &failures,
        complete,
    )
}

/// Counts one target: its Portcullis started under callgrind, checked to answer as the
/// upstream does, both phases counted. (It compiles its plugin there: wasmtime keys
/// compiled code by the CPU features it finds, and valgrind hides some, AVX-512 among
/// them, so no cache a native start filled would serve it.)
fn count(
    root: &Path,
    bin: &Path,
    tmp: &Path,
    upstream: &Upstream,
    tools: &Tools,
    kind: Counted,
    args: &InstructionsArgs,
) -> Result<Count> {
    let dir = tmp.join(format!("instructions-{kind:?}").to_lowercase());
    fresh(&dir)?;
    let plugin = match proxy::provider_of(kind.proxy(), root, tmp) {
        Some((registry, provider)) => Some((only(&registry?, provider, &dir)?, provider)),
        None => None,
    };
    let plugin = plugin.as_ref().map(|(r, p)| (r.as_path(), *p));
    let log = dir.join("stderr.log");
    let wrapper = tools.wrapper(&dir, bin)?;
    let (config, registry) = proxy::portcullis_config(upstream.addr, plugin);
    let (mut guard, addr) = spawn_portcullis_within(
        &wrapper,
        &dir,
        &config,
        registry,
        &[],
        READY_UNDER_CALLGRIND,
    )?;
    let counter = tools.counter(&dir, guard.pid());
    let target = proxy::proxied_target(kind.proxy(), addr);
    let counted = (|| -> Result<Count> {
        proxy::check_answer(&target)?;
        let at_one = per_request(&target, &counter, 1, args.requests)?;
        let high = usize::try_from(args.concurrency_high).unwrap_or(64);
        let at_high = per_request(&target, &counter, high, args.requests)?;
        if kind == Counted::PortcullisSlack {
            proxy::no_classify_calls(addr, "slack")?;
        }
        Ok(Count { at_one, at_high })
    })();
    guard.stop();
    counted.map_err(|e| with_log_tail(e, &log))
}

/// Makes `dir` an empty folder for a target's run: a fresh start as in `bench proxy`,
/// and no dump of an earlier run to misread. A folder that exists is emptied only if an
/// earlier run made it (it holds the wrapper script), so `--keep` never empties a
/// folder of anyone else's.
fn fresh(dir: &Path) -> Result<()> {
    if dir.exists() {
        if !dir.join(super::callgrind::WRAPPER).is_file() {
            bail!(
                "{} exists and is not the folder of an earlier `bench instructions` run; \
                 move it or choose another --keep folder",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    Ok(())
}

/// A registry in `dir` holding only `provider`'s entry of `registry`, its calls'
/// deadline raised to the most a plugin may ask for. Under callgrind, loading the
/// sixteen verified plugins takes minutes (each compiled and described at load, under
/// the tool), and the others take no part in the target's requests; a call runs some
/// fifty times slower there, past the 50 ms a verified plugin allows itself, and its
/// deadline changes no instruction it executes.
fn only(registry: &Path, provider: &str, dir: &Path) -> Result<PathBuf> {
    let entry = dir.join("registry").join(provider);
    super::host::copy_registry_entry(&registry.join(provider), &entry)?;
    let manifest = entry.join("plugin.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let raised = with_timeout(&text, MAX_PLUGIN_TIMEOUT_MS);
    let check: toml::Table = raised
        .parse()
        .with_context(|| format!("{} with its deadline raised", manifest.display()))?;
    if check
        .get("limits")
        .and_then(|l| l.get("timeout_ms"))
        .and_then(toml::Value::as_integer)
        != Some(MAX_PLUGIN_TIMEOUT_MS)
    {
        bail!("could not raise the deadline in {}", manifest.display());
    }
    std::fs::write(&manifest, raised).with_context(|| format!("writing {}", manifest.display()))?;
    Ok(dir.join("registry"))
}

/// A plugin manifest's text with `[limits] timeout_ms` set to `ms`: the line replaced, or
/// added under the table's header, or the table added.
fn with_timeout(manifest: &str, ms: i64) -> String {
    let setting = format!("timeout_ms = {ms}");
    let mut out = Vec::new();
    let (mut in_limits, mut set) = (false, false);
    for line in manifest.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_limits = trimmed == "[limits]";
            out.push(line.to_owned());
            if in_limits && !set {
                out.push(setting.clone());
                set = true;
            }
            continue;
        }
        let key = trimmed.split('=').next().unwrap_or_default().trim();
        if !(in_limits && key == "timeout_ms") {
            out.push(line.to_owned());
        }
    }
    if !set {
        out.push(format!("\n[limits]\n{setting}"));
    }
    out.join("\n") + "\n"
}

/// One phase of `requests` at `concurrency`, after half as many to warm the connections
/// up: the instructions counted over it a request. Fails unless every request counted
/// answered as it should.
fn per_request(
    target: &Target,
    counter: &Counter,
    concurrency: usize,
    requests: u64,
) -> Result<f64> {
    let phase = |max_requests| Phase {
        concurrency,
        max_requests,
        max_duration: PHASE_CAP,
    };
    let spec = LoadSpec {
        warmup: phase(requests / 2),
        measure: phase(requests),
        client_threads: 1,
        start_at: None,
    };
    let stats = load::run_counted(target, &spec, counter)?;
    if stats.reconnects > 0 {
        bail!(
            "at concurrency {concurrency}, {} connections were opened again during the counted phase (their set-up would be counted)",
            stats.reconnects
        );
    }
    if stats.ok != requests {
        bail!(
            "at concurrency {concurrency}, {} of {requests} requests answered as expected ({} other answers, {} errors; {})",
            stats.ok,
            stats.bad_status,
            stats.errors,
            stats.last_error.as_deref().unwrap_or("no error recorded")
        );
    }
    let instructions = stats.instructions.context("the phase was not counted")?;
    eprintln!(
        "bench:   c={concurrency}: {requests} requests, {:.0} instructions a request",
        instructions as f64 / requests as f64
    );
    Ok(instructions as f64 / requests as f64)
}

fn markdown(
    machine: &MachineInfo,
    tools: &Tools,
    args: &InstructionsArgs,
    results: &[super::TargetResult<Counted, Count>],
) -> String {
    let high = args.concurrency_high;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### Instructions a request (`cargo xtask bench instructions`)\n"
    );
    let _ = writeln!(md, "- Date: {}", super::utc_now_string());
    let _ = writeln!(
        md,
        "- Machine: {} × {} (nproc = {}), Linux {}",
        machine.nproc, machine.cpu_model, machine.nproc, machine.kernel
    );
    let _ = writeln!(
        md,
        "- Counted by: {} (callgrind), on the {}; each Portcullis \
         target of `bench proxy` (its config, request, upstream and provider), with only \
         its provider's plugin in the registry (`bench proxy` loads all sixteen)",
        tools.version,
        match args.symbols {
            true => "profiling build (the release build's code, with symbols)",
            false => "release build as shipped",
        }
    );
    let _ = writeln!(
        md,
        "- What is counted: every instruction the gateway's process executed in user \
         space, all its threads, from just before the first request of a measured phase \
         to just after its last answer (background work in between included). \
         Not counted: the kernel's work (its socket calls and wake-ups: about half the \
         gateway's CPU a request in the proxy table), cache misses and stalls"
    );
    let _ = writeln!(
        md,
        "- Phases per target: concurrency 1 for {r} requests, then concurrency {high} for \
         {r}, each after {w} warm-up requests on the same connections; every counted \
         request must answer 200 with the upstream's body\n",
        r = args.requests,
        w = args.requests / 2,
    );
    let _ = writeln!(
        md,
        "| Target | instructions a request (c=1) | vs Portcullis (c=1) | instructions a request (c={high}) | vs Portcullis (c={high}) |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    let base = results
        .iter()
        .find(|r| r.kind == Counted::Portcullis)
        .and_then(|r| r.outcome.as_ref().ok())
        .copied();
    for r in results {
        match &r.outcome {
            Ok(c) => {
                let vs = |now: f64, before: Option<f64>| match before {
                    Some(b) if r.kind != Counted::Portcullis && b > 0.0 => {
                        format!("{:+.0} ({:+.1}%)", now - b, (now / b - 1.0) * 100.0)
                    }
                    _ => "—".to_owned(),
                };
                let _ = writeln!(
                    md,
                    "| {} | {:.0} | {} | {:.0} | {} |",
                    r.kind.label(),
                    c.at_one,
                    vs(c.at_one, base.map(|b| b.at_one)),
                    c.at_high,
                    vs(c.at_high, base.map(|b| b.at_high)),
                );
            }
            Err(e) => {
                let _ = writeln!(md, "| {} | failed: {e} | | | |", r.kind.label());
            }
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugins_deadline_is_raised_wherever_its_manifest_sets_it_or_not() {
        let set =
            "id = \"g\"\n[limits]\nmax_memory_mb = 32\ntimeout_ms = 50\n[auth]\ntimeout_ms = 7\n";
        let raised: toml::Table = with_timeout(set, 1000).parse().expect("TOML");
        assert_eq!(raised["limits"]["timeout_ms"].as_integer(), Some(1000));
        assert_eq!(raised["limits"]["max_memory_mb"].as_integer(), Some(32));
        assert_eq!(raised["auth"]["timeout_ms"].as_integer(), Some(7));
        for text in ["id = \"g\"\n", "id = \"g\"\n[limits]\nmax_memory_mb = 32\n"] {
            let raised: toml::Table = with_timeout(text, 1000).parse().expect("TOML");
            assert_eq!(
                raised["limits"]["timeout_ms"].as_integer(),
                Some(1000),
                "{text}"
            );
        }
    }
}
