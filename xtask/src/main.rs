//! Developer tasks for the Portcullis workspace, run as `cargo xtask <task>`.
//!
//! Tasks live here rather than in shell scripts so they are portable, type-checked, and
//! can reuse the same Rust HTTP stack the gateway itself is built on. Each task is a
//! clap subcommand: `plugins` builds the registry; `bench proxy`, `bench plugins`,
//! `bench mcp`, `bench refresh` and `bench soak` measure the proxy, provider plugins, the
//! aggregated MCP endpoint, refresh storms and a long mixed workload, each in its own
//! module under `bench/`.

mod bench;
mod plugins;

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Portcullis developer tasks", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the provider plugins and write registry/ (or check it with --check).
    Plugins(plugins::PluginsArgs),
    /// Benchmarks (results are written to docs/benchmarks.md).
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// The minimal HTTP relay `bench proxy` measures as a floor (started by it).
    #[command(hide = true, name = "bench-relay")]
    BenchRelay(bench::relay::RelayArgs),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Proxy overhead: direct upstream vs. through Portcullis vs. through nginx.
    Proxy(bench::proxy::ProxyArgs),
    /// Provider-plugin call cost (instantiate + call + drop) per verified provider.
    Plugins(bench::plugins::PluginsArgs),
    /// MCP `tools/call`: direct to an upstream vs. through Portcullis's `/v1/mcp`.
    Mcp(bench::mcp::McpArgs),
    /// Refresh storms: many concurrent requests at a per-user token's expiry, one
    /// token request.
    Refresh(bench::refresh::RefreshArgs),
    /// A mixed workload for minutes (proxy, per-user refreshes, MCP, config reloads):
    /// failures and memory over time.
    Soak(bench::soak::SoakArgs),
    /// Where the gateway's CPU goes on one benchmark path: `perf record` during its
    /// high-concurrency phase (or its concurrency-1 one), each sample charged to a
    /// layer.
    Profile(bench::profile::ProfileArgs),
    /// Instructions the gateway executes in user space for a proxied request, with and
    /// without a provider plugin, counted under valgrind's callgrind tool.
    Instructions(bench::instructions::InstructionsArgs),
}

/// Set in the re-executed child so it does not re-execute again; also lets a developer
/// run benchmarks from a debug build on purpose.
const NO_REEXEC_ENV: &str = "XTASK_NO_REEXEC";

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    if matches!(cli.command, Command::Bench { .. })
        && cfg!(debug_assertions)
        && std::env::var_os(NO_REEXEC_ENV).is_none()
    {
        return reexec_release(&root);
    }
    match cli.command {
        Command::Plugins(args) => plugins::run(&root, args),
        Command::Bench { what } => match what {
            BenchCommand::Proxy(args) => bench::proxy::run(&root, args),
            BenchCommand::Plugins(args) => bench::plugins::run(&root, args),
            BenchCommand::Mcp(args) => bench::mcp::run(&root, args),
            BenchCommand::Refresh(args) => bench::refresh::run(&root, args),
            BenchCommand::Soak(args) => bench::soak::run(&root, args),
            BenchCommand::Profile(args) => bench::profile::run(&root, args),
            BenchCommand::Instructions(args) => bench::instructions::run(&root, args),
        },
        Command::BenchRelay(args) => bench::relay::run(args),
    }
}

/// The workspace root, derived from this crate's manifest location so tasks behave the
/// same no matter which directory `cargo xtask` is invoked from.
fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .context("xtask manifest directory has no parent")
}

/// Re-runs this invocation from a release build of xtask.
///
/// The `cargo xtask` alias builds xtask in the dev profile, where the load generator and
/// the in-process upstream (including the hyper code monomorphised into this crate) run
/// unoptimised: on a small machine that measured ~35% fewer requests/s for the same
/// upstream, and that CPU is taken from the proxy under test. Benchmarks therefore
/// always run optimised.
///
/// The child gets its own process group so a terminal Ctrl-C reaches only this parent,
/// which forwards it once as SIGTERM; the child then stops its servers cleanly.
fn reexec_release(root: &Path) -> Result<()> {
    use std::os::unix::process::CommandExt;

    eprintln!(
        "xtask: benchmarks run from an optimised build; re-running via \
         `cargo run --release -p xtask` (set {NO_REEXEC_ENV}=1 to skip)"
    );
    bench::install_interrupt_handler()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Process::new(cargo)
        .args([
            "run",
            "--release",
            "--quiet",
            "--package",
            "xtask",
            "--manifest-path",
        ])
        .arg(root.join("Cargo.toml"))
        .arg("--")
        .args(std::env::args_os().skip(1))
        .env(NO_REEXEC_ENV, "1")
        // Keep the caller's working directory so relative paths (`--out`) mean the same.
        .process_group(0)
        .spawn()
        .context("re-running xtask in release mode")?;
    let mut forwarded = false;
    loop {
        if let Some(status) = child.try_wait().context("waiting for release xtask")? {
            if status.success() {
                return Ok(());
            }
            // The child already printed its error; just propagate the exit code.
            std::process::exit(status.code().unwrap_or(1));
        }
        if bench::interrupted() && !forwarded {
            forwarded = true;
            bench::send_signal(child.id(), "TERM");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
