//! Cost of shaping one request with a provider plugin, two ways: by a plugin call (a
//! fresh store, instantiate, call, drop), and as the proxy does it (by the plugin's
//! routes where they cover the path, else by a call; a plugin without a
//! `shape-request` hook is not asked at all, so that way is not measured for it). Then
//! what classifying a successful answer costs as the proxy does it, where the proxy
//! classifies one at all (by the plugin's ok markers where one matches, else by a call).
//! Run by `cargo xtask bench plugins` (release build); prints one JSON object.
//!
//! `plugin_bench <registry-dir> <plugin-id> <calls-per-level> <concurrency>...`

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::plugins::{ConnectionContext, Outgoing, Plugins, types};

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
        let req = Request {
            path: "sobjects/Account/001xx000003DGb2AAG".into(),
            query: Some("fields=Name,Industry".into()),
            headers: http::HeaderMap::from_iter([
                (
                    http::header::ACCEPT,
                    http::HeaderValue::from_static("application/json"),
                ),
                (
                    http::header::USER_AGENT,
                    http::HeaderValue::from_static("bench/1"),
                ),
            ]),
        };
        let base = url::Url::parse(&ctx.base_url)?;
        let bounds = portcullis::plugins::Bounds {
            base: &base,
            credential_header: None,
        };
        // As a shared connection's requests have it: kept, its routes noted once found.
        let kept = Arc::new(ConnectionContext::from(ctx.clone()));
        let routed = plugins
            .routes_cover(&plugin, &kept, &req.outgoing(), bounds)
            .await?;
        // A successful JSON answer, opening as Slack's do.
        let answer = Classifying {
            plugins: plugins.clone(),
            plugin: plugin.clone(),
            ctx: ctx.clone(),
            headers: http::HeaderMap::from_iter([(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            )]),
            body: br#"{"ok":true,"id":"001xx000003DGb2AAG","name":"Acme","industry":"Energy"}"#,
        };
        let classified = if !plugin.has(types::Hook::ClassifyResponse) {
            "hook"
        } else if !plugin.classifies(200) {
            "statuses"
        } else if plugin.marks_ok(200, answer.body) {
            "marker"
        } else {
            "call"
        };
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
                let shape = Shaping {
                    plugins: plugins.clone(),
                    plugin: plugin.clone(),
                    ctx: kept.clone(),
                    req: req.clone(),
                    base: base.clone(),
                    by_call,
                };
                // Warm up (pool slots, caches), then measure.
                measure(c, calls / 10, shape.clone()).await?;
                let (elapsed, lat) = measure(c, calls, shape).await?;
                level[way] = summary(elapsed, lat);
            }
            if matches!(classified, "marker" | "call") {
                measure(c, calls / 10, answer.clone()).await?;
                let (elapsed, lat) = measure(c, calls, answer.clone()).await?;
                level["classify"] = summary(elapsed, lat);
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
                "classifies_ok": classified,
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

/// What is timed: one shaping or one classification.
trait Timed: Clone + Send + Sync + 'static {
    fn once(&self) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// The request shaped: a GET with an agent's usual headers.
#[derive(Clone)]
struct Request {
    /// Below the connector, without a leading `/`, as the pipeline has it.
    path: String,
    query: Option<String>,
    headers: http::HeaderMap,
}

impl Request {
    /// As the proxy hands it to the plugin stage (path and query its own, the headers
    /// the request's).
    fn outgoing(&self) -> Outgoing<'_> {
        Outgoing {
            method: types::Method::Get,
            path: &self.path,
            query: self.query.clone(),
            headers: &self.headers,
        }
    }
}

/// Shaping `req`, by a plugin call (`by_call`) or as the proxy shapes.
#[derive(Clone)]
struct Shaping {
    plugins: Arc<Plugins>,
    plugin: Arc<portcullis::plugins::Plugin>,
    ctx: Arc<ConnectionContext>,
    req: Request,
    base: url::Url,
    by_call: bool,
}

impl Timed for Shaping {
    async fn once(&self) -> anyhow::Result<()> {
        let bounds = portcullis::plugins::Bounds {
            base: &self.base,
            credential_header: None,
        };
        let req = self.req.outgoing();
        if self.by_call {
            self.plugins
                .shape_by_call(&self.plugin, self.ctx.wit().clone(), req.into_wit(), bounds)
                .await?;
        } else {
            self.plugins
                .shape(&self.plugin, &self.ctx, req, bounds)
                .await?;
        }
        Ok(())
    }
}

/// Classifying a successful answer as the proxy classifies it.
#[derive(Clone)]
struct Classifying {
    plugins: Arc<Plugins>,
    plugin: Arc<portcullis::plugins::Plugin>,
    ctx: types::Context,
    headers: http::HeaderMap,
    body: &'static [u8],
}

impl Timed for Classifying {
    async fn once(&self) -> anyhow::Result<()> {
        self.plugins
            .classify(&self.plugin, &self.ctx, 200, &self.headers, self.body)
            .await?;
        Ok(())
    }
}

/// `calls` runs of `each` over `concurrency` tasks, each run timed.
async fn measure(
    concurrency: usize,
    calls: usize,
    each: impl Timed,
) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let started = Instant::now();
    let per_task = calls.div_ceil(concurrency);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let each = each.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_task);
            for _ in 0..per_task {
                let t = Instant::now();
                each.once().await?;
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
