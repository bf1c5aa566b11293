//! `cargo xtask bench plugins`: the cost of shaping a request with each verified
//! provider plugin at concurrency 1 and 64, by a plugin call (fresh store, instantiate,
//! `shape-request`, drop) and as the proxy shapes it (by the plugin's routes where they
//! cover the path), and of classifying a successful answer as the proxy does; then the
//! gateway at rest with the four plugins of the resting-memory aim, at a first start
//! and from the compiled-code cache. Runs
//! `host/examples/plugin_bench.rs` and the gateway in release and writes the `plugins`
//! section of docs/benchmarks.md. The proxy-level cost (throughput with and without a
//! plugin) is measured by the `portcullis-plugin` and `portcullis-slack` targets of
//! `bench proxy`.

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
            "--bin",
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
        "- A call = fresh `Store` + instantiate from the pre-linked component (pooling \
         allocator, copy-on-write image) + `shape-request` + drop. As the proxy shapes = \
         by the plugin's routes where they cover the request (`routes` below: a prefix \
         match, no call; for a shared connection's kept context, which notes its routes \
         once found, where a user's context finds them in the plugin's route cache), else \
         by a call; a plugin without a `shape-request` hook is not asked at all. The request is a GET with a query. A 200 answer = how the proxy \
         classifies a successful JSON answer: not at all where the plugin's \
         `classify-statuses` leave 200 out or it has no `classify-response` hook, by its ok \
         marker where one matches (WIT 0.1.5, no call), else by a call; timed where it is \
         classified. {} shapings (and classifications) per row and way after a warm-up; \
         concurrent tasks yield between them. In-process, no network.\n",
        args.calls
    );
    let _ = writeln!(
        md,
        "| Provider | concurrency | a call: calls/s | p50 µs | p99 µs | mean µs | as the proxy shapes | calls/s | p50 µs | a 200 answer | p50 µs |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---|---:|---:|---|---:|");
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
        let way = if v["shapes_requests"].as_bool() == Some(false) {
            "no call (no `shape-request` hook)"
        } else if v["routes_cover"].as_bool() == Some(true) {
            "routes"
        } else {
            "a call"
        };
        let answer = match v["classifies_ok"].as_str() {
            Some("hook") => "not classified (no `classify-response` hook)",
            Some("statuses") => "not classified (`classify-statuses`)",
            Some("marker") => "ok marker",
            _ => "a call",
        };
        for l in v["levels"].as_array().into_iter().flatten() {
            let f = |w: &str, k: &str| l[w][k].as_f64().unwrap_or(f64::NAN);
            // Not measured where the proxy makes no call: shown as a dash, not as NaN.
            let (proxy_rate, proxy_p50) = if l["proxy"].is_object() {
                (
                    format!("{:.0}", f("proxy", "calls_per_sec")),
                    format!("{:.1}", f("proxy", "p50_us")),
                )
            } else {
                ("—".to_owned(), "—".to_owned())
            };
            let classify_p50 = if l["classify"].is_object() {
                format!("{:.2}", f("classify", "p50_us"))
            } else {
                "—".to_owned()
            };
            let _ = writeln!(
                md,
                "| {id} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {way} | {proxy_rate} | {proxy_p50} | {answer} | {classify_p50} |",
                l["concurrency"],
                f("call", "calls_per_sec"),
                f("call", "p50_us"),
                f("call", "p99_us"),
                f("call", "mean_us"),
            );
            eprintln!(
                "bench: {id} c={}: a call p50 {:.1} µs; as the proxy shapes ({way}) p50 {proxy_p50} µs; a 200 answer ({answer}) p50 {classify_p50} µs",
                l["concurrency"],
                f("call", "p50_us"),
            );
        }
    }
    super::check_interrupted()?;
    let gateway = super::target_dir(root).join("release/portcullis");
    md.push('\n');
    md.push_str(&at_rest(root, &gateway)?);
    if args.no_docs {
        print!("{md}");
    }
    super::update_docs(root, "plugins", &md, args.no_docs)
}

/// The verified plugins of the resting-memory aim (the first four providers).
const AT_REST_PLUGINS: [&str; 4] = ["salesforce", "atlassian", "slack", "google"];

/// The gateway at rest with [`AT_REST_PLUGINS`] in its registry: at a first start, which
/// compiles them, and at the next start in the same data folder, which maps them from
/// the compiled-code cache (every later start of a deployment).
fn at_rest(root: &Path, gateway: &Path) -> Result<String> {
    let tmp = tempfile::Builder::new()
        .prefix("portcullis-bench-")
        .tempdir()
        .context("creating temp dir")?;
    let registry = tmp.path().join("registry");
    for id in AT_REST_PLUGINS {
        super::host::copy_registry_entry(&root.join("registry").join(id), &registry.join(id))?;
    }
    let config = serde_json::json!({"identity": {"mode": "loopback"}});
    let dir = tmp.path().join("gateway");
    let mut rows = Vec::new();
    for start in [
        "first start (compiles them)",
        "next start (compiled-code cache)",
    ] {
        let (mut guard, _) =
            super::host::spawn_portcullis(gateway, &dir, &config, Some(&registry), &[])?;
        guard.stop();
        rows.push((start, guard.at_rest.take()));
    }
    let label = |start: &str| {
        format!(
            "Portcullis with the plugins {}, {start},",
            AT_REST_PLUGINS.join(", ")
        )
    };
    let labels: Vec<String> = rows.iter().map(|(start, _)| label(start)).collect();
    Ok(super::host::AtRest::lines(
        labels
            .iter()
            .map(String::as_str)
            .zip(rows.into_iter().map(|(_, r)| r)),
    ))
}
