//! Cost of shaping one request with a provider plugin, two ways: by a plugin call (a
//! fresh store, instantiate, call, drop), and as the proxy does it (by the plugin's
//! routes where they cover the path, else by a call; a plugin without a
//! `shape-request` hook is not asked at all, so that way is not measured for it). Run
//! by `cargo xtask bench plugins` (release build); prints one JSON object.
//!
//! `plugin_bench <registry-dir> <plugin-id> <calls-per-level> <concurrency>...`

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::plugins::{Plugins, types};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, id, calls, levels @ ..] = args.as_slice() else {
        anyhow::bail!("usage: plugin_bench <registry-dir> <plugin-id> <calls> <concurrency>...");
    };
    let calls: usize = calls.parse()?;
    let levels: Vec<usize> = levels.iter().map(|l| l.parse()).collect::<Result<_, _>>()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let plugins = Plugins::open(
            Some(dir.into()),
            std::env::var_os("PC_CACHE").map(Into::into),
            None,
        )
        .await?;
        let plugin = plugins
            .get(id)
            .ok_or_else(|| anyhow::anyhow!("plugin {id} did not load from {dir}"))?;
        // What a configured connector carries: each input (its default, or a value an
        // operator would set, such as Trello's API key) and a discovered instance URL.
        let mut variables: Vec<(String, String)> = plugin
            .defaults
            .inputs
            .iter()
            .map(|i| {
                let value = i
                    .default_value
                    .clone()
                    .unwrap_or_else(|| "bench0123456789".into());
                (i.name.clone(), value)
            })
            .collect();
        variables.push((
            "instance_url".into(),
            "https://acme.my.salesforce.com".into(),
        ));
        let ctx = types::Context {
            connector: "bench".into(),
            base_url: plugin.defaults.api_url.clone(),
            variables,
        };
        let req = types::OutgoingRequest {
            method: types::Method::Get,
            path: "/sobjects/Account/001xx000003DGb2AAG".into(),
            query: Some("fields=Name,Industry".into()),
            headers: vec![
                ("accept".into(), "application/json".into()),
                ("user-agent".into(), "bench/1".into()),
            ],
        };
        let base = url::Url::parse(&ctx.base_url)?;
        let bounds = portcullis::plugins::Bounds {
            base: &base,
            credential_header: None,
        };
        let routed = plugins.routes_cover(&plugin, &ctx, &req, bounds).await?;
        // The proxy asks only a plugin that shapes requests (`outbound`).
        let shapes = plugin.has(types::Hook::ShapeRequest);
        let ways: &[(&str, bool)] = if shapes {
            &[("call", true), ("proxy", false)]
        } else {
            &[("call", true)]
        };
        let mut out = Vec::new();
        for &c in &levels {
            let mut level = serde_json::json!({"concurrency": c});
            for &(way, by_call) in ways {
                // Warm up (pool slots, caches), then measure.
                run(&plugins, &plugin, &ctx, &req, by_call, c, calls / 10).await?;
                let (elapsed, lat) = run(&plugins, &plugin, &ctx, &req, by_call, c, calls).await?;
                level[way] = summary(elapsed, lat);
            }
            out.push(level);
        }
        println!(
            "{}",
            serde_json::json!({
                "plugin": id,
                "pooling": plugins.runtime().sizing().pooling,
                "routes_cover": routed,
                "shapes_requests": shapes,
                "levels": out,
            })
        );
        anyhow::Ok(())
    })
}

fn summary(elapsed: Duration, mut lat: Vec<Duration>) -> serde_json::Value {
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e6;
    serde_json::json!({
        "calls": lat.len(),
        "calls_per_sec": lat.len() as f64 / elapsed.as_secs_f64(),
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "mean_us": lat.iter().map(Duration::as_secs_f64).sum::<f64>() / lat.len() as f64 * 1e6,
    })
}

/// `calls` shapings over `concurrency` tasks, each by a plugin call (`by_call`) or as
/// the proxy shapes.
async fn run(
    plugins: &Arc<Plugins>,
    plugin: &Arc<portcullis::plugins::Plugin>,
    ctx: &types::Context,
    req: &types::OutgoingRequest,
    by_call: bool,
    concurrency: usize,
    calls: usize,
) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let started = Instant::now();
    let per_task = calls.div_ceil(concurrency);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (plugins, plugin, ctx, req) =
            (plugins.clone(), plugin.clone(), ctx.clone(), req.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_task);
            let base = url::Url::parse(&ctx.base_url)?;
            for _ in 0..per_task {
                let t = Instant::now();
                let bounds = portcullis::plugins::Bounds {
                    base: &base,
                    credential_header: None,
                };
                let (ctx, req) = (ctx.clone(), req.clone());
                if by_call {
                    plugins.shape_by_call(&plugin, ctx, req, bounds).await?;
                } else {
                    plugins.shape(&plugin, ctx, req, bounds).await?;
                }
                lat.push(t.elapsed());
                // Interleave with the other tasks, as requests waiting on I/O would.
                tokio::task::yield_now().await;
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::with_capacity(calls);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((started.elapsed(), all))
}
