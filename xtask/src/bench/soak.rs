//! `cargo xtask bench soak`: a mixed workload held for minutes (ten by default), to
//! show that nothing fails and nothing grows: proxied requests on a static credential,
//! proxied requests on a per-user OAuth token that expires every few seconds (so the
//! user's token is refreshed all along), MCP `tools/call`s through `/v1/mcp`, and a
//! config reload every few seconds (the config file rewritten, as an operator's edit
//! or a deployment tool would).
//!
//! Each workload is a closed loop of its own (the load generator of the other
//! benchmarks, one thread each); the host's resident memory is sampled every
//! `--sample-secs`. Servers on the other side run in this process on loopback: the
//! upstream API and token endpoint of `bench refresh`, the MCP upstream of `bench mcp`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use axum::Router;
use bytes::Bytes;
use clap::Args;
use hyper::StatusCode;
use serde_json::json;

use super::host::{prepare_portcullis, spawn_portcullis, with_log_tail};
use super::load::{self, LoadSpec, Phase, Stats, Target};
use super::refresh::{self, ApiUpstream, TokenEndpoint};
use super::{MachineInfo, mcp};

/// The static-credential connector's token.
const STATIC_TOKEN: &str = "soak-static-token";
/// Per-user tokens live this long: refreshed about every 4 s.
const USER_TOKEN_LIFETIME_S: u64 = 5;
/// Closed-loop clients per workload.
const CONCURRENCY: usize = 8;

/// Options for `cargo xtask bench soak`.
#[derive(Debug, Args)]
pub struct SoakArgs {
    /// Do not run `cargo build --release -p portcullis` first.
    #[arg(long)]
    no_build: bool,
    /// How long the workload runs.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=240))]
    minutes: u64,
    /// Seconds between config reloads.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    reload_secs: u64,
    /// Seconds between memory samples.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    sample_secs: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Do not update docs/benchmarks.md.
    #[arg(long)]
    no_docs: bool,
}

/// One memory sample.
#[derive(Debug, serde::Serialize)]
struct Sample {
    at_s: u64,
    rss_kib: u64,
    refreshes: u64,
    reloads: u64,
}

#[derive(Debug, serde::Serialize)]
struct Workload {
    name: &'static str,
    stats: Stats,
}

pub fn run(root: &Path, args: SoakArgs) -> Result<()> {
    let bin = prepare_portcullis(root, args.no_build).map_err(anyhow::Error::msg)?;
    let busy = super::busy_before();
    let endpoint = Arc::new(TokenEndpoint::new(Duration::from_millis(20)));
    endpoint
        .lifetime_s
        .store(USER_TOKEN_LIFETIME_S, Ordering::SeqCst);
    let api = Arc::new(ApiUpstream::default());
    let token_server = refresh::serve(
        "soak-token-endpoint",
        Router::new()
            .route("/token", axum::routing::post(refresh::token))
            .with_state(endpoint.clone()),
    )?;
    let api_server = refresh::serve(
        "soak-api",
        Router::new()
            .fallback(refresh::upstream)
            .with_state(api.clone()),
    )?;
    let mcp_upstream = mcp::Upstream::start(1)?;
    let dir = tempfile::tempdir().context("temp dir")?;
    let (api_addr, token_addr, mcp_addr) = (api_server.addr, token_server.addr, mcp_upstream.addr);
    let config = move |generation: u64| {
        json!({
            "identity": {"mode": "loopback"},
            "egress": {"allow_loopback": true},
            "connectors": {"servers": {
                "api": {
                    "protocol": "http",
                    "url": format!("http://{api_addr}"),
                    "description": format!("static credential, config generation {generation}"),
                    "auth": {"type": "bearer_token", "secret": STATIC_TOKEN},
                },
                "user": refresh::per_user_connector(token_addr, api_addr),
                "bench": {
                    "protocol": "mcp",
                    "url": format!("http://{mcp_addr}/mcp"),
                    "auth": {"type": "bearer_token", "secret": mcp::SECRET},
                },
            }},
            "grants": [{
                "src": ["(loopback)"],
                "app": {"tailscale.com/cap/aperture": [{"role": "admin"}, {"connectors": ["api/**", "user/**", "bench/**"]}]},
            }],
        })
    };
    let (mut guard, addr) = spawn_portcullis(&bin, dir.path(), &config(0), None, &[])?;
    let log = dir.path().join("stderr.log");
    let result = (|| {
        mcp::wait_for_tool(&mut guard, addr)?;
        refresh::connect(addr, "user").context("connecting the soak user")?;
        soak(&args, addr, guard.pid(), dir.path(), &config, &endpoint)
    })()
    .map_err(|e| with_log_tail(e, &log));
    let exited = guard.exited();
    guard.stop();
    let (workloads, samples, reloads, last_description) = result?;
    if let Some(status) = exited {
        bail!("portcullis exited during the soak ({status})");
    }
    let md = markdown(
        &args,
        &workloads,
        &samples,
        reloads,
        &last_description,
        busy,
    );
    println!("{md}");
    let applied = last_description.ends_with(&format!("generation {reloads}"));
    if let Some(out) = &args.out {
        let text = serde_json::to_string_pretty(&json!({
            "settings": {"minutes": args.minutes, "reload_secs": args.reload_secs, "concurrency": CONCURRENCY},
            "workloads": workloads, "samples": samples, "reloads": reloads,
        }))?;
        std::fs::write(out, text + "\n").with_context(|| format!("writing {}", out.display()))?;
    }
    let failed: u64 = workloads
        .iter()
        .map(|w| w.stats.bad_status + w.stats.errors)
        .sum();
    if failed > 0 {
        bail!(
            "{failed} requests failed during the soak (see the table above); docs/benchmarks.md not updated"
        );
    }
    if !applied {
        bail!(
            "the host did not run the last of the {reloads} configs written (it reports \"{last_description}\"); docs/benchmarks.md not updated"
        );
    }
    super::update_docs(root, "soak", &md, args.no_docs)
}

type Outcome = (Vec<Workload>, Vec<Sample>, u64, String);

/// Runs the three workloads for `args.minutes` while reloading the config and sampling
/// memory; returns the workloads' stats, the samples, the number of reloads and the
/// static connector's description as the host reports it at the end.
fn soak(
    args: &SoakArgs,
    addr: SocketAddr,
    pid: u32,
    dir: &Path,
    config: &(dyn Fn(u64) -> serde_json::Value + Sync),
    endpoint: &TokenEndpoint,
) -> Result<Outcome> {
    let length = Duration::from_secs(args.minutes * 60);
    let spec = LoadSpec {
        warmup: Phase {
            concurrency: CONCURRENCY,
            max_requests: 1_000,
            max_duration: Duration::from_secs(1),
        },
        measure: Phase {
            concurrency: CONCURRENCY,
            max_requests: u64::MAX,
            max_duration: length,
        },
        client_threads: 1,
        start_at: None,
    };
    let targets = [
        (
            "proxy, static credential",
            Target::get("api", addr, "/v1/connectors/api/items?limit=10"),
        ),
        (
            "proxy, per-user OAuth (token refreshed every ~4 s)",
            Target::get("user", addr, "/v1/connectors/user/items"),
        ),
        (
            "MCP tools/call through /v1/mcp",
            Target::post(
                "mcp",
                addr,
                "/v1/mcp",
                mcp::call_body("bench_ping"),
                mcp::post_headers(None, None),
                Bytes::from_static(mcp::PONG_CONTENT.as_bytes()),
            ),
        ),
    ];
    for (name, target) in &targets {
        let (status, body) = load::probe_target(target)?;
        if status != StatusCode::OK {
            bail!(
                "{name}: the first request answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    let config_path = super::host::config_path(dir);
    let done = AtomicBool::new(false);
    let reloads = AtomicU64::new(0);
    let started = Instant::now();
    eprintln!(
        "bench: soak for {} min: {} workloads at concurrency {CONCURRENCY}, a reload every {} s",
        args.minutes,
        targets.len(),
        args.reload_secs
    );
    std::thread::scope(|scope| -> Result<Outcome> {
        // However this scope ends, the reloader must stop, or the scope never returns.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = Stop(&done);
        let loads: Vec<_> = targets
            .iter()
            .map(|(name, target)| scope.spawn(move || (*name, load::run(target, &spec))))
            .collect();
        // Reloads: the config file rewritten (written aside, then renamed over it).
        let reloader = scope.spawn(|| -> Result<()> {
            let mut generation = 0;
            let stopped = || done.load(Ordering::Relaxed) || super::interrupted();
            while !stopped() {
                sleep_unless(&done, Duration::from_secs(args.reload_secs));
                if stopped() {
                    break;
                }
                generation += 1;
                let aside = config_path.with_extension("json.new");
                std::fs::write(&aside, serde_json::to_string_pretty(&config(generation))?)
                    .context("writing the next config")?;
                std::fs::rename(&aside, &config_path).context("replacing the config")?;
                reloads.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        let mut samples = Vec::new();
        let sample = |samples: &mut Vec<Sample>| -> Result<()> {
            samples.push(Sample {
                at_s: started.elapsed().as_secs(),
                rss_kib: super::host::memory_of(pid)?.0,
                refreshes: endpoint.refreshes.load(Ordering::SeqCst),
                reloads: reloads.load(Ordering::Relaxed),
            });
            Ok(())
        };
        sample(&mut samples)?;
        while started.elapsed() < length && !super::interrupted() {
            sleep_unless(&done, Duration::from_secs(args.sample_secs).min(length));
            sample(&mut samples)?;
            let last = samples.last().map_or(0, |s| s.rss_kib);
            eprintln!(
                "bench:   {:>4} s: RSS {:.1} MiB, {} refreshes, {} reloads",
                started.elapsed().as_secs(),
                last as f64 / 1024.0,
                endpoint.refreshes.load(Ordering::SeqCst),
                reloads.load(Ordering::Relaxed)
            );
        }
        let mut workloads = Vec::new();
        for handle in loads {
            let (name, stats) = handle
                .join()
                .map_err(|_| anyhow::anyhow!("a load thread panicked"))?;
            workloads.push(Workload {
                name,
                stats: stats.context(name)?,
            });
        }
        done.store(true, Ordering::Relaxed);
        reloader
            .join()
            .map_err(|_| anyhow::anyhow!("the reload thread panicked"))??;
        sample(&mut samples)?;
        // The last reload is in force: the host reports its description.
        std::thread::sleep(Duration::from_secs(2));
        let (status, body) = load::probe(addr, "/api/connectors")?;
        if status != StatusCode::OK {
            bail!("GET /api/connectors answered {status} after the soak");
        }
        let listed: serde_json::Value =
            serde_json::from_slice(&body).context("GET /api/connectors")?;
        let description = listed["connectors"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["id"] == "api")
            .and_then(|c| c["description"].as_str())
            .unwrap_or_default()
            .to_owned();
        Ok((
            workloads,
            samples,
            reloads.load(Ordering::Relaxed),
            description,
        ))
    })
}

/// Sleeps `length`, waking early once `done` is set or an interrupt arrives.
fn sleep_unless(done: &AtomicBool, length: Duration) {
    let until = Instant::now() + length;
    while Instant::now() < until && !done.load(Ordering::Relaxed) && !super::interrupted() {
        std::thread::sleep(Duration::from_millis(100).min(until - Instant::now()));
    }
}

fn markdown(
    args: &SoakArgs,
    workloads: &[Workload],
    samples: &[Sample],
    reloads: u64,
    last_description: &str,
    busy: Option<f64>,
) -> String {
    let machine = MachineInfo::detect();
    let mut md = String::new();
    let _ = writeln!(md, "### Soak: mixed workload (`cargo xtask bench soak`)\n");
    md.push_str(&machine.header(&super::utc_now_string(), busy));
    let _ = writeln!(
        md,
        "- {} min, release build, three closed-loop workloads at once, {CONCURRENCY} \
         keep-alive connections each: proxied `GET`s on a static bearer token, proxied \
         `GET`s on a per-user OAuth token that lives {USER_TOKEN_LIFETIME_S} s (refreshed \
         about every 4 s all along, rotating refresh tokens), and MCP `tools/call`s \
         through `/v1/mcp` (sessionless). The config file is rewritten every {} s (the \
         static connector's description changes), which the host reloads. Upstreams, token \
         endpoint and MCP server run in the benchmark process on loopback.\n",
        args.minutes, args.reload_secs
    );
    let _ = writeln!(
        md,
        "| Workload | requests ok | failed | req/s | p50 µs | p99 µs | max ms |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    for w in workloads {
        let s = &w.stats;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} |",
            w.name,
            s.ok,
            s.bad_status + s.errors,
            s.rps,
            s.p50_us,
            s.p99_us,
            s.max_us / 1000.0
        );
    }
    let _ = writeln!(
        md,
        "\n| at s | RSS MiB | token refreshes so far | reloads so far |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|");
    for s in samples {
        let _ = writeln!(
            md,
            "| {} | {:.1} | {} | {} |",
            s.at_s,
            s.rss_kib as f64 / 1024.0,
            s.refreshes,
            s.reloads
        );
    }
    let failed: u64 = workloads
        .iter()
        .map(|w| w.stats.bad_status + w.stats.errors)
        .sum();
    // Growth after the first minute (the first samples include warm-up allocations).
    let settled = samples
        .iter()
        .find(|s| s.at_s >= 60)
        .or(samples.first())
        .map_or(0, |s| s.rss_kib);
    let last = samples.last().map_or(0, |s| s.rss_kib);
    let _ = writeln!(
        md,
        "\n- Failed requests: **{failed}**{}. Reloads: {reloads}; the host's last answer \
         named the config it ran as \"{last_description}\".",
        if failed == 0 {
            " (aim met)"
        } else {
            " (aim: none)"
        }
    );
    let _ = writeln!(
        md,
        "- Memory: {:.1} MiB after the first minute, {:.1} MiB at the end ({:+.1} MiB).",
        settled as f64 / 1024.0,
        last as f64 / 1024.0,
        (last as f64 - settled as f64) / 1024.0
    );
    md
}
