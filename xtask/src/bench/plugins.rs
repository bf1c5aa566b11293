//! `cargo xtask bench plugins`: the cost of one provider-plugin call as the proxy makes
//! it (fresh store, instantiate, `shape-request`, drop) at concurrency 1 and 64, for
//! each verified provider. Runs `host/examples/plugin_bench.rs` in release and writes
//! the `plugins` section of docs/benchmarks.md. The proxy-level cost (throughput with
//! and without a plugin) is the `portcullis-plugin` target of `bench proxy`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::Args;

#[derive(Debug, Args)]
pub struct PluginsArgs {
    /// Calls measured per provider and concurrency level.
    #[arg(long, default_value_t = 40_000, value_parser = clap::value_parser!(u64).range(100..=5_000_000))]
    calls: u64,
    /// Do not update docs/benchmarks.md.
    #[arg(long)]
    no_docs: bool,
}

pub fn run(root: &Path, args: PluginsArgs) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(root)
        .args([
            "build",
            "--release",
            "-p",
            "portcullis",
            "--example",
            "plugin_bench",
        ])
        .status()
        .context("building the plugin benchmark")?;
    if !status.success() {
        bail!("building host/examples/plugin_bench.rs failed");
    }
    let bin = super::target_dir(root).join("release/examples/plugin_bench");
    let machine = super::MachineInfo::detect();
    let mut md = String::new();
    let _ = writeln!(md, "### Plugin call cost (`cargo xtask bench plugins`)\n");
    let _ = writeln!(md, "- Date: {}", super::utc_now_string());
    let _ = writeln!(
        md,
        "- Machine: {} × {}, Linux {}",
        machine.nproc, machine.cpu_model, machine.kernel
    );
    let _ = writeln!(
        md,
        "- One call = fresh `Store` + instantiate from the pre-linked component (pooling \
         allocator, copy-on-write image) + `shape-request` + drop, {} calls per row after a \
         warm-up; concurrent tasks yield between calls. In-process, no network.\n",
        args.calls
    );
    let _ = writeln!(
        md,
        "| Provider | concurrency | calls/s | p50 µs | p99 µs | mean µs |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    for id in crate::plugins::providers(root)? {
        let out = Command::new(&bin)
            .current_dir(root)
            .args(["registry", &id, &args.calls.to_string(), "1", "64"])
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        if !out.status.success() {
            bail!(
                "plugin_bench {id} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("plugin_bench {id} printed no JSON"))?;
        for l in v["levels"].as_array().into_iter().flatten() {
            let f = |k: &str| l[k].as_f64().unwrap_or(f64::NAN);
            let _ = writeln!(
                md,
                "| {id} | {} | {:.0} | {:.1} | {:.1} | {:.1} |",
                l["concurrency"],
                f("calls_per_sec"),
                f("p50_us"),
                f("p99_us"),
                f("mean_us")
            );
            eprintln!(
                "bench: {id} c={}: p50 {:.1} µs, {:.0} calls/s",
                l["concurrency"],
                f("p50_us"),
                f("calls_per_sec")
            );
        }
    }
    if args.no_docs {
        print!("{md}");
    }
    super::update_docs(root, "plugins", &md, args.no_docs)
}
