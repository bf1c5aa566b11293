//! `cargo xtask bench proxy`: what does routing a request through Portcullis cost?
//!
//! The same tiny upstream is measured three ways, one after another so they never
//! compete for the (few) cores: directly, through Portcullis's connector proxy, and
//! through nginx configured as an equivalent, tuned reverse proxy (upstream keep-alive
//! pool, injected `Authorization` header). Direct gives the floor; nginx gives a
//! well-known reference for "reasonable proxy overhead" on the same machine, so the
//! Portcullis numbers can be judged without comparing across machines.
//!
//! For each target we record latency at concurrency 1 (the per-request cost an agent
//! sees) and throughput at high concurrency (how much proxying the box can do).

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;

use super::host::{
    AtRest, free_port, prepare_portcullis, spawn_portcullis, wait_ready, with_child, with_log_tail,
};
use super::load::{self, CpuPerRequest, LoadSpec, Stats, Target};
use super::postgres::Postgres;
use super::{ChildGuard, LoadArgs, MachineInfo, ServerThread};

/// Fixed upstream response (~100 bytes of JSON): small enough that the benchmark
/// measures proxy overhead, not body copying. It opens with `"ok":true`, as Slack's
/// answers do, so the Slack plugin's ok marker applies to it.
pub(super) const UPSTREAM_BODY: &str = r#"{"ok":true,"id":42,"name":"portcullis-bench","items":[1,2,3,4,5],"note":"fixed upstream body"}"#;
/// Secret Portcullis and nginx inject; the upstream counts requests carrying it.
const SECRET: &str = "bench-secret-token";
/// Path below the connector prefix that is requested through the proxies.
pub(super) const UPSTREAM_PATH: &str = "/items/42?fields=id,name";
pub(super) const CONNECTOR_PREFIX: &str = "/v1/connectors/bench";

/// Options for `cargo xtask bench proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Concurrent connections in the throughput phase.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    concurrency_high: u64,
    /// Request cap for the throughput phase (capped by --duration).
    #[arg(long, default_value_t = 400_000, value_parser = clap::value_parser!(u64).range(1..))]
    requests_high: u64,
    /// Which targets to measure, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "direct,portcullis,portcullis-plugin,portcullis-slack,portcullis-plugin-calls,portcullis-postgres,portcullis-replicas,nginx,relay,relay-hyper"
    )]
    targets: Vec<TargetKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum TargetKind {
    Direct,
    Portcullis,
    /// Portcullis with the connector shaped by a verified provider plugin (Google), whose
    /// routes (WIT 0.1.3) cover every path.
    PortcullisPlugin,
    /// Portcullis with the connector of the Slack plugin, which classifies every answer
    /// (Slack reports failures inside HTTP 200): shaped by its routes (WIT 0.1.4), the
    /// answers classified by its ok marker (WIT 0.1.5), each without a call.
    PortcullisSlack,
    /// The same plugin as built before routes (WIT 0.1.2): a plugin call per request, as
    /// for providers whose shaping depends on more than the path.
    PortcullisPluginCalls,
    /// One Portcullis whose vault is a PostgreSQL database (what replicas share).
    PortcullisPostgres,
    /// Three Portcullis replicas on one PostgreSQL database, the load generator's
    /// connections spread over them as a balancer would.
    PortcullisReplicas,
    Nginx,
    /// The floor of a Rust HTTP hop: [`super::relay`], with none of a gateway's rules.
    Relay,
    /// The same relay on hyper's server and pooled client: what hyper costs before any
    /// gateway work.
    RelayHyper,
}

impl TargetKind {
    pub(super) fn label(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct (no proxy)",
            TargetKind::Portcullis => "Portcullis",
            TargetKind::PortcullisPlugin => "Portcullis + provider plugin",
            TargetKind::PortcullisSlack => "Portcullis + Slack plugin",
            TargetKind::PortcullisPluginCalls => "Portcullis + provider plugin, a call per request",
            TargetKind::PortcullisPostgres => "Portcullis on PostgreSQL",
            TargetKind::PortcullisReplicas => "3 Portcullis replicas on PostgreSQL",
            TargetKind::Nginx => "nginx",
            TargetKind::Relay => "minimal Rust relay (no checks)",
            TargetKind::RelayHyper => "hyper relay (no checks)",
        }
    }
}

type TargetResult = super::TargetResult<TargetKind, Measured>;

#[derive(Debug, serde::Serialize)]
struct Measured {
    /// Concurrency-1 phase.
    latency: Stats,
    /// High-concurrency phase.
    throughput: Stats,
    /// For proxies: whether the upstream saw the injected bearer token.
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_injected: Option<bool>,
    /// Requests the upstream received during both phases (including warm-ups).
    upstream_requests: u64,
    /// Connections the upstream accepted during both phases (including warm-ups).
    upstream_connections: u64,
    /// Portcullis before the load (Portcullis targets).
    #[serde(skip_serializing_if = "Option::is_none")]
    at_rest: Option<AtRest>,
}

pub fn run(root: &Path, args: ProxyArgs) -> Result<()> {
    super::install_interrupt_handler()?;
    let machine = MachineInfo::detect();
    let targets = super::unique(&args.targets);
    let wants = |k: TargetKind| targets.contains(&k);

    // Preparation failures only disqualify the target concerned, so the others still
    // produce numbers (useful while the host is under construction).
    let portcullis_bin = if wants(TargetKind::Portcullis)
        || wants(TargetKind::PortcullisPlugin)
        || wants(TargetKind::PortcullisSlack)
        || wants(TargetKind::PortcullisPluginCalls)
        || wants(TargetKind::PortcullisPostgres)
        || wants(TargetKind::PortcullisReplicas)
    {
        Some(prepare_portcullis(root, args.load.no_build))
    } else {
        None
    };
    super::check_interrupted()?;
    let postgres = (wants(TargetKind::PortcullisPostgres) || wants(TargetKind::PortcullisReplicas))
        .then(|| super::postgres::start().map_err(|e| format!("{e:#}")));
    super::check_interrupted()?;
    let nginx_bin = wants(TargetKind::Nginx).then(ensure_nginx);
    // The relays are this very binary (`xtask bench-relay`).
    let relay_bin = (wants(TargetKind::Relay) || wants(TargetKind::RelayHyper))
        .then(|| std::env::current_exe().map_err(|e| format!("cannot find the xtask binary: {e}")));
    super::check_interrupted()?;
    let nginx_version = nginx_version(&nginx_bin);

    let tmp = tempfile::Builder::new()
        .prefix("portcullis-bench-")
        .tempdir()
        .context("creating temp dir")?;
    let cpu_busy_before = super::busy_before();
    let ticks_at_start = super::CpuTicks::now();
    let upstream = Upstream::start(args.load.upstream_threads())?;
    eprintln!("bench: upstream listening on {}", upstream.addr);

    let (spec_c1, spec_high) = args.load.specs(args.concurrency_high, args.requests_high);

    let mut results = Vec::new();
    for &kind in &targets {
        super::check_interrupted()?;
        eprintln!("bench: measuring {}", kind.label());
        let outcome = match kind {
            TargetKind::Direct => {
                let target = Target::get(kind.label(), upstream.addr, UPSTREAM_PATH);
                measure(&target, &upstream, None, &spec_c1, &spec_high)
            }
            TargetKind::Portcullis
            | TargetKind::PortcullisPlugin
            | TargetKind::PortcullisSlack
            | TargetKind::PortcullisPluginCalls => {
                let dir = tmp.path().join(format!("{kind:?}").to_lowercase());
                let plugin = provider_of(kind, root, tmp.path());
                with_child(
                    &portcullis_bin,
                    |bin| {
                        let plugin = match plugin {
                            Some((registry, provider)) => Some((registry?, provider)),
                            None => None,
                        };
                        let plugin = plugin.as_ref().map(|(r, p)| (r.as_path(), *p));
                        start_portcullis(bin, &dir, upstream.addr, plugin)
                    },
                    &dir.join("stderr.log"),
                    |addr, guard| {
                        let target = proxied_target(kind, addr);
                        let measured =
                            measure(&target, &upstream, Some(guard), &spec_c1, &spec_high)?;
                        if kind == TargetKind::PortcullisSlack {
                            no_classify_calls(addr, "slack")?;
                        }
                        Ok(measured)
                    },
                )
            }
            TargetKind::PortcullisPostgres | TargetKind::PortcullisReplicas => {
                let replicas = if kind == TargetKind::PortcullisReplicas {
                    3
                } else {
                    1
                };
                on_postgres(
                    &portcullis_bin,
                    &postgres,
                    replicas,
                    &tmp.path().join(format!("{kind:?}").to_lowercase()),
                    upstream.addr,
                    |mut target, guard| {
                        target.name = kind.label().to_owned();
                        measure(&target, &upstream, Some(guard), &spec_c1, &spec_high)
                    },
                )
            }
            TargetKind::Nginx => with_nginx(
                &nginx_bin,
                tmp.path(),
                upstream.addr,
                SECRET,
                |addr, guard| {
                    let target = proxied_target(kind, addr);
                    measure(&target, &upstream, Some(guard), &spec_c1, &spec_high)
                },
            ),
            TargetKind::Relay | TargetKind::RelayHyper => {
                let (dir, stack) = match kind {
                    TargetKind::Relay => ("relay", "lean"),
                    _ => ("relay-hyper", "hyper"),
                };
                let dir = tmp.path().join(dir);
                with_child(
                    &relay_bin,
                    |bin| start_relay(bin, &dir, upstream.addr, stack),
                    &dir.join("stderr.log"),
                    |addr, guard| {
                        let target = proxied_target(kind, addr);
                        measure(&target, &upstream, Some(guard), &spec_c1, &spec_high)
                    },
                )
            }
        };
        super::check_interrupted()?;
        super::record(&mut results, kind, kind.label(), outcome);
    }
    drop(upstream);
    let postgres_version = match &postgres {
        Some(Ok(pg)) => Some(pg.version.clone()),
        _ => None,
    };
    drop(postgres);

    let report = Report {
        date: super::utc_now_string(),
        machine,
        args: &args,
        nginx_version,
        postgres_version,
        cpu_busy_before,
        steal: ticks_at_start.and_then(|t| t.steal_since()),
        results: &results,
    };
    let markdown = report.markdown();
    let (failures, complete) = super::summary(
        &results,
        |k| k.label(),
        &[
            TargetKind::Direct,
            TargetKind::Portcullis,
            TargetKind::PortcullisPlugin,
            TargetKind::PortcullisSlack,
            TargetKind::PortcullisPluginCalls,
            TargetKind::PortcullisPostgres,
            TargetKind::PortcullisReplicas,
            TargetKind::Nginx,
            TargetKind::Relay,
            TargetKind::RelayHyper,
        ],
    );
    args.load.finish(
        root,
        "proxy",
        &markdown,
        &report.json(),
        &failures,
        complete,
    )
}

pub(super) fn proxied_target(kind: TargetKind, addr: SocketAddr) -> Target {
    Target::get(
        kind.label(),
        addr,
        format!("{CONNECTOR_PREFIX}{UPSTREAM_PATH}"),
    )
}

/// Checks the target answers exactly like the upstream (and, for proxies, injects the
/// token), then runs both load phases against it.
fn measure(
    target: &Target,
    upstream: &Upstream,
    proxy: Option<&mut ChildGuard>,
    spec_c1: &LoadSpec,
    spec_high: &LoadSpec,
) -> Result<Measured> {
    let before = upstream.counters.snapshot();
    check_answer(target)?;
    let after = upstream.counters.snapshot();
    let auth_injected = proxy
        .is_some()
        .then_some(after.authorized > before.authorized);
    if auth_injected == Some(false) {
        eprintln!(
            "bench: WARNING: {} did not forward `Authorization: Bearer {SECRET}` upstream",
            target.name
        );
    }

    let at_rest = proxy.as_ref().and_then(|p| p.at_rest);
    let load_start = upstream.counters.snapshot();
    let (latency, throughput) = load::run_both(target, proxy, spec_c1, spec_high, "req")?;
    let load_end = upstream.counters.snapshot();
    Ok(Measured {
        latency,
        throughput,
        auth_injected,
        upstream_requests: load_end.requests - load_start.requests,
        upstream_connections: load_end.connections - load_start.connections,
        at_rest,
    })
}

/// Fails unless `target` answers a probe exactly as the upstream does: 200 with its
/// fixed body.
pub(super) fn check_answer(target: &Target) -> Result<()> {
    let (status, body) = load::probe(target.addr, &target.path)?;
    if status != StatusCode::OK || body != UPSTREAM_BODY.as_bytes() {
        bail!(
            "GET {} via {} returned {status} with body {:?} (expected 200 and the upstream's fixed body)",
            target.path,
            target.name,
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    Ok(())
}

/// Counters kept by the upstream: they show whether a proxy injected the token and
/// whether it reuses upstream connections (a proxy that reconnects per request pays a
/// TCP handshake each time, which explains a lot of overhead).
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    authorized: AtomicU64,
    connections: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct CounterSnapshot {
    requests: u64,
    authorized: u64,
    connections: u64,
}

impl Counters {
    fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            authorized: self.authorized.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
        }
    }
}

/// The loopback upstream: a hyper HTTP/1.1 server on its own thread (see
/// [`ServerThread`]).
pub(super) struct Upstream {
    pub(super) addr: SocketAddr,
    counters: Arc<Counters>,
    _server: ServerThread,
}

impl Upstream {
    pub(super) fn start(threads: usize) -> Result<Self> {
        let counters = Arc::new(Counters::default());
        let c = Arc::clone(&counters);
        let server = ServerThread::start("bench-upstream", threads, move |listener, shutdown| {
            serve_upstream(listener, c, shutdown)
        })?;
        Ok(Self {
            addr: server.addr,
            counters,
            _server: server,
        })
    }
}

async fn serve_upstream(
    listener: tokio::net::TcpListener,
    counters: Arc<Counters>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let body = Bytes::from_static(UPSTREAM_BODY.as_bytes());
    let expected_auth = HeaderValue::from_static("Bearer bench-secret-token");
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    eprintln!("bench: upstream accept error: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        counters.connections.fetch_add(1, Ordering::Relaxed);
        let counters = Arc::clone(&counters);
        let body = body.clone();
        let expected_auth = expected_auth.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                counters.requests.fetch_add(1, Ordering::Relaxed);
                if req.headers().get(AUTHORIZATION) == Some(&expected_auth) {
                    counters.authorized.fetch_add(1, Ordering::Relaxed);
                }
                let mut res = Response::new(Full::new(body.clone()));
                res.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                async move { Ok::<_, std::convert::Infallible>(res) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Fails unless the gateway at `addr` used `plugin` (its routes were asked for) and
/// classified every answer of its connector without a `classify-response` call (by its
/// ok marker), as the row's label says: a change to the upstream's body or to the plugin
/// would otherwise time a call per answer, or no plugin at all, under that label.
pub(super) fn no_classify_calls(addr: SocketAddr, plugin: &str) -> Result<()> {
    let (status, body) = load::probe(addr, "/metrics")?;
    let text = String::from_utf8_lossy(&body);
    let calls = |hook: &str| -> u64 {
        text.lines()
            .filter(|l| {
                l.starts_with("portcullis_plugin_calls_total{")
                    && l.contains(&format!("plugin=\"{plugin}\""))
                    && l.contains(&format!("hook=\"{hook}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let (routes, classified) = (calls("request-routes"), calls("classify-response"));
    if status != StatusCode::OK || routes == 0 || classified > 0 {
        bail!(
            "the {plugin} plugin was to shape every request by its routes and classify every answer by its ok marker, but /metrics answered {status} with {routes} request-routes and {classified} classify-response calls"
        );
    }
    Ok(())
}

/// `replicas` Portcullis processes sharing the vault in `postgres`, each in a folder of
/// its own below `dir`; `measure` gets the target spread over all of them and the first
/// one's guard (its memory is reported).
fn on_postgres<M>(
    bin: &Option<Result<PathBuf, String>>,
    postgres: &Option<Result<Postgres, String>>,
    replicas: usize,
    dir: &Path,
    upstream: SocketAddr,
    measure: impl FnOnce(Target, &mut ChildGuard) -> Result<M>,
) -> Result<M> {
    let bin = match bin {
        Some(Ok(bin)) => bin,
        Some(Err(e)) => bail!("{e}"),
        None => bail!("not selected"),
    };
    let db = match postgres {
        Some(Ok(pg)) => pg,
        Some(Err(e)) => bail!("PostgreSQL: {e}"),
        None => bail!("not selected"),
    };
    let env = [
        ("PORTCULLIS_DATABASE_URL", db.url("postgres")),
        ("PORTCULLIS_MASTER_KEY", REPLICA_KEY.to_owned()),
    ];
    let mut running: Vec<(ChildGuard, SocketAddr)> = Vec::new();
    for n in 0..replicas {
        let dir = dir.join(format!("replica-{n}"));
        match start_portcullis_with(bin, &dir, upstream, None, &env) {
            Ok(started) => running.push(started),
            Err(e) => {
                for (guard, _) in &mut running {
                    guard.stop();
                }
                return Err(with_log_tail(e, &dir.join("stderr.log")));
            }
        }
    }
    let Some(((first, addr), rest)) = running.split_first_mut() else {
        bail!("no replica to measure");
    };
    let mut target = proxied_target(TargetKind::PortcullisPostgres, *addr);
    target.replicas = rest.iter().map(|(_, a)| *a).collect();
    first.replicas = rest.iter().map(|(g, _)| g.pid()).collect();
    let measured = measure(target, first);
    for (guard, _) in &mut running {
        guard.stop();
    }
    measured.map_err(|e| with_log_tail(e, &dir.join("replica-0").join("stderr.log")))
}

/// The master key every replica shares (any 32 bytes; the benchmark's vault is empty).
const REPLICA_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// A Portcullis in `dir` whose connector points at `upstream`, made from `plugin`'s
/// provider (a registry and a provider id in it) when one is given.
fn start_portcullis(
    bin: &Path,
    dir: &Path,
    upstream: SocketAddr,
    plugin: Option<(&Path, &str)>,
) -> Result<(ChildGuard, SocketAddr)> {
    start_portcullis_with(bin, dir, upstream, plugin, &[])
}

fn start_portcullis_with(
    bin: &Path,
    dir: &Path,
    upstream: SocketAddr,
    plugin: Option<(&Path, &str)>,
    env: &[(&str, String)],
) -> Result<(ChildGuard, SocketAddr)> {
    let (config, registry) = portcullis_config(upstream, plugin);
    spawn_portcullis(bin, dir, &config, registry, env)
}

/// The config of a Portcullis target whose connector points at `upstream` (made from
/// `plugin`'s provider when one is given), and the registry it loads plugins from.
pub(super) fn portcullis_config<'r>(
    upstream: SocketAddr,
    plugin: Option<(&'r Path, &str)>,
) -> (serde_json::Value, Option<&'r Path>) {
    let mut connector = json!({
        "protocol": "http",
        "url": format!("http://{upstream}"),
        "auth": {"type": "bearer_token", "secret": SECRET},
    });
    let registry = plugin.map(|(registry, provider)| {
        connector["provider"] = json!(provider);
        registry
    });
    let config = json!({
        "identity": {"mode": "loopback"},
        "egress": {"allow_loopback": true},
        "connectors": {"servers": {"bench": connector}},
        "grants": [{
            "src": ["(loopback)"],
            "app": {"tailscale.com/cap/aperture": [{"role": "admin"}, {"connectors": ["bench/**"]}]},
        }],
    });
    (config, registry)
}

/// The registry and provider a Portcullis target's connector is made from, if any: the
/// verified registry's Google or Slack plugin, or the Google plugin before routes (in a
/// registry of its own below `tmp`).
pub(super) fn provider_of(
    kind: TargetKind,
    root: &Path,
    tmp: &Path,
) -> Option<(Result<PathBuf>, &'static str)> {
    match kind {
        TargetKind::PortcullisPlugin => Some((Ok(root.join("registry")), "google")),
        TargetKind::PortcullisSlack => Some((Ok(root.join("registry")), "slack")),
        TargetKind::PortcullisPluginCalls => Some((google_without_routes(root, tmp), "google")),
        _ => None,
    }
}

/// A registry holding only the Google plugin as built against WIT 0.1.2, before routes
/// (the component the compatibility test keeps in `tests/fixtures/plugins`).
fn google_without_routes(root: &Path, tmp: &Path) -> Result<PathBuf> {
    let from = root.join("tests/fixtures/plugins/google-wit-0.1.2");
    let registry = tmp.join("registry-wit-0.1.2");
    super::host::copy_registry_entry(&from, &registry.join("google"))?;
    Ok(registry)
}

/// Returns the nginx binary, installing it with apt-get if missing (the benchmark is
/// meant to be a one-command reproduction on a fresh Debian/Ubuntu box).
pub(super) fn ensure_nginx() -> Result<PathBuf, String> {
    if let Some(bin) = super::find_executable("nginx") {
        return Ok(bin);
    }
    super::apt_install("nginx", &["nginx-light", "nginx"])?;
    super::find_executable("nginx")
        .ok_or_else(|| "nginx was installed but is not on the PATH; install it by hand".into())
}

/// The version of the nginx [`ensure_nginx`] prepared, if it was.
pub(super) fn nginx_version(prepared: &Option<Result<PathBuf, String>>) -> Option<String> {
    let Some(Ok(bin)) = prepared else {
        return None;
    };
    let out = Command::new(bin).arg("-v").output().ok()?;
    // nginx prints its version to stderr: "nginx version: nginx/1.22.1".
    let text = String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find_map(|l| l.strip_prefix("nginx version: "))
        .map(|v| v.trim().to_string())
}

/// nginx as the reference proxy, tuned the way one would in production for this job:
/// upstream keep-alive pool, no access log, no per-connection request limits (which
/// would otherwise force reconnects every 1000 requests and penalise nginx unfairly),
/// and the upstream's own address as `Host`, as Portcullis sends it (an MCP server
/// refuses a host it does not know, its defence against DNS rebinding).
fn nginx_config(
    dir: &Path,
    listen: SocketAddr,
    upstream: SocketAddr,
    as_root: bool,
    secret: &str,
) -> String {
    let d = dir.display();
    // Workers would otherwise drop to `nobody`, which cannot enter the 0700 temp dir.
    let user = if as_root { "user root;\n" } else { "" };
    format!(
        r#"# Generated by `cargo xtask bench proxy` and `bench mcp`.
{user}daemon off;
master_process on;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    keepalive_timeout 75s;
    keepalive_requests 100000000;

    upstream bench_upstream {{
        server {upstream};
        keepalive 64;
        keepalive_requests 100000000;
    }}

    server {{
        listen {listen};
        location {CONNECTOR_PREFIX}/ {{
            proxy_pass http://bench_upstream/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host {upstream};
            proxy_set_header Authorization "Bearer {secret}";
        }}
    }}
}}
"#
    )
}

/// Runs `measure` against nginx started in `tmp`/nginx (see [`start_nginx`]), then stops
/// it; a failure carries the end of nginx's error log.
pub(super) fn with_nginx<M>(
    prepared: &Option<Result<PathBuf, String>>,
    tmp: &Path,
    upstream: SocketAddr,
    secret: &str,
    measure: impl FnOnce(SocketAddr, &mut ChildGuard) -> Result<M>,
) -> Result<M> {
    let dir = tmp.join("nginx");
    with_child(
        prepared,
        |bin| start_nginx(bin, &dir, upstream, secret),
        &dir.join("error.log"),
        measure,
    )
}

/// Writes the config, starts nginx in the foreground (so we own the master process)
/// and waits until it answers. It proxies [`CONNECTOR_PREFIX`]`/…` to the upstream's `/…`,
/// injecting `Authorization: Bearer <secret>`.
fn start_nginx(
    bin: &Path,
    dir: &Path,
    upstream: SocketAddr,
    secret: &str,
) -> Result<(ChildGuard, SocketAddr)> {
    fs::create_dir_all(dir).context("creating nginx dir")?;
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let conf = dir.join("nginx.conf");
    fs::write(
        &conf,
        nginx_config(dir, addr, upstream, super::is_root(), secret),
    )
    .context("writing nginx.conf")?;
    let stderr = fs::File::create(dir.join("stderr.log")).context("creating nginx stderr log")?;
    let child = Command::new(bin)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        // `-e` overrides the compiled-in error log path that nginx opens before reading
        // the config (/var/log/nginx/error.log), which may not be writable.
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut guard = ChildGuard::new("nginx", child, "QUIT");
    wait_ready(&mut guard, "nginx", addr, "/", false).map_err(|e| {
        let e = with_log_tail(e, &dir.join("stderr.log"));
        with_log_tail(e, &dir.join("error.log"))
    })?;
    Ok((guard, addr))
}

/// Starts [`super::relay`] from this very binary (`xtask bench-relay`) and waits until
/// it answers.
fn start_relay(
    bin: &Path,
    dir: &Path,
    upstream: SocketAddr,
    stack: &str,
) -> Result<(ChildGuard, SocketAddr)> {
    fs::create_dir_all(dir).context("creating the relay's dir")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let stderr = fs::File::create(dir.join("stderr.log")).context("creating the relay's log")?;
    let child = Command::new(bin)
        .arg("bench-relay")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--upstream")
        .arg(upstream.to_string())
        .arg("--prefix")
        .arg(CONNECTOR_PREFIX)
        .arg("--secret")
        .arg(SECRET)
        .arg("--stack")
        .arg(stack)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .context("starting the relay")?;
    let mut guard = ChildGuard::new("relay", child, "TERM");
    wait_ready(&mut guard, "relay", addr, "/", false)
        .map_err(|e| with_log_tail(e, &dir.join("stderr.log")))?;
    Ok((guard, addr))
}

/// Everything needed to render the results.
struct Report<'a> {
    date: String,
    machine: MachineInfo,
    args: &'a ProxyArgs,
    nginx_version: Option<String>,
    /// The PostgreSQL major version of the replica rows.
    postgres_version: Option<String>,
    /// CPU busy fraction sampled just before the first measurement.
    cpu_busy_before: Option<f64>,
    /// Share of the CPU time the hypervisor took during the run.
    steal: Option<f64>,
    results: &'a [TargetResult],
}

impl Report<'_> {
    fn measured(&self, kind: TargetKind) -> Option<&Measured> {
        self.results
            .iter()
            .find(|r| r.kind == kind)
            .and_then(|r| r.outcome.as_ref().ok())
    }

    fn markdown(&self) -> String {
        let a = self.args;
        let m = &self.machine;
        let high = a.concurrency_high;
        let direct = self.measured(TargetKind::Direct);
        let mut s = String::new();
        let _ = writeln!(s, "### Proxy overhead (`cargo xtask bench proxy`)\n");
        s.push_str(&m.header(&self.date, self.cpu_busy_before));
        s.push_str(&super::CpuTicks::steal_line(self.steal));
        let _ = writeln!(
            s,
            "- Request: `GET {CONNECTOR_PREFIX}{UPSTREAM_PATH}` (direct: `GET {UPSTREAM_PATH}`) \
             over keep-alive HTTP/1.1, \
             one connection per concurrent client; upstream is an in-process hyper server \
             ({} thread{}) answering 200 with a fixed {}-byte JSON body; proxies inject \
             `Authorization: Bearer …`",
            a.load.upstream_threads,
            if a.load.upstream_threads == 1 {
                ""
            } else {
                "s"
            },
            UPSTREAM_BODY.len()
        );
        if self.results.iter().any(|r| r.kind == TargetKind::Nginx) {
            let _ = writeln!(
                s,
                "- nginx reference: {}, 2 workers, upstream `keepalive 64`, access log off",
                self.nginx_version.as_deref().unwrap_or("version unknown")
            );
        }
        if self
            .results
            .iter()
            .any(|r| matches!(r.kind, TargetKind::Relay | TargetKind::RelayHyper))
        {
            let _ = writeln!(
                s,
                "- Relays (`xtask/src/bench/relay.rs`): measurements of what an HTTP/1.1 hop \
                 costs in Rust on these cores, not gateways. Each rewrites the path, `Host` \
                 and `Authorization` and has no identity, grants, header hygiene, egress \
                 check, limits, timeouts, audit or metrics. The {} parses heads in place \
                 (`httparse`), copies the rest and relays `Content-Length` bodies over one \
                 upstream connection per agent connection; the {} is hyper's HTTP/1 server \
                 and hyper-util's pooled client, the crates Portcullis uses, in their \
                 plainest setup (HTTP/1 only, plain TCP). Both run a single-threaded tokio \
                 runtime per core, as Portcullis does",
                TargetKind::Relay.label(),
                TargetKind::RelayHyper.label()
            );
        }
        if let Some(v) = &self.postgres_version {
            let _ = writeln!(
                s,
                "- PostgreSQL rows: Debian's PostgreSQL {v} on loopback (fsync on), one database \
                 for the vault; the replicas share the master key and the load generator's \
                 connections are spread over them in turn (their at-rest line is the first \
                 replica's)"
            );
        }
        s.push_str(
            &a.load
                .method_lines(high, a.requests_high, "requests", m.nproc),
        );
        s.push('\n');
        let _ = writeln!(
            s,
            "| Target | p50 µs (c=1) | p99 µs (c=1) | mean µs (c=1) | added p50 vs direct | \
             req/s (c={high}) | p50 µs (c={high}) | p99 µs (c={high}) | errors | \
             CPU µs/req, proxy (kernel) (c={high}) | CPU µs/req, bench (c={high}) |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in self.results {
            match &r.outcome {
                Ok(x) => {
                    let added = match (r.kind, direct) {
                        (TargetKind::Direct, _) => "—".to_string(),
                        (_, Some(d)) => format!("{:+.1} µs", x.latency.p50_us - d.latency.p50_us),
                        (_, None) => "n/a".to_string(),
                    };
                    let errors = x.latency.errors
                        + x.latency.bad_status
                        + x.throughput.errors
                        + x.throughput.bad_status;
                    let _ = writeln!(
                        s,
                        "| {} | {:.1} | {:.1} | {:.1} | {added} | {:.0} | {:.1} | {:.1} | {errors} \
                         | {} | {} |",
                        r.kind.label(),
                        x.latency.p50_us,
                        x.latency.p99_us,
                        x.latency.mean_us,
                        x.throughput.rps,
                        x.throughput.p50_us,
                        x.throughput.p99_us,
                        x.throughput.cpu.server_cell(),
                        CpuPerRequest::cell(x.throughput.cpu.bench_us),
                    );
                }
                Err(e) => {
                    let first = e.lines().next().unwrap_or("failed").replace('|', "\\|");
                    let _ = writeln!(
                        s,
                        "| {} | failed: {first} | | | | | | | | | |",
                        r.kind.label()
                    );
                }
            }
        }
        s.push('\n');
        let p = self.measured(TargetKind::Portcullis);
        let n = self.measured(TargetKind::Nginx);
        if let Some(d) = direct {
            for (kind, x) in [(TargetKind::Portcullis, p), (TargetKind::Nginx, n)] {
                if let Some(x) = x {
                    let _ = writeln!(
                        s,
                        "- {} adds {:+.1} µs at p50 and {:+.1} µs at p99 (concurrency 1) over direct.",
                        kind.label(),
                        x.latency.p50_us - d.latency.p50_us,
                        x.latency.p99_us - d.latency.p99_us
                    );
                }
            }
        }
        for (kind, how) in [
            (
                TargetKind::PortcullisPlugin,
                "Google plugin shaping every request through its routes",
            ),
            (
                TargetKind::PortcullisSlack,
                "Slack plugin shaping every request through its routes and classifying every \
                 answer by its ok marker",
            ),
            (
                TargetKind::PortcullisPluginCalls,
                "Google plugin of WIT 0.1.2 shaping every request by a call",
            ),
        ] {
            if let (Some(p), Some(pp)) = (p, self.measured(kind))
                && p.throughput.rps > 0.0
            {
                let _ = writeln!(
                    s,
                    "- Provider plugin cost ({how}): {:+.1} µs at p50 (concurrency 1); \
                     throughput {:.0} vs {:.0} req/s at concurrency {high} (**{:+.1}%**).",
                    pp.latency.p50_us - p.latency.p50_us,
                    pp.throughput.rps,
                    p.throughput.rps,
                    (pp.throughput.rps / p.throughput.rps - 1.0) * 100.0
                );
            }
        }
        if let (Some(p), Some(pg)) = (p, self.measured(TargetKind::PortcullisPostgres))
            && p.throughput.rps > 0.0
        {
            let three = self
                .measured(TargetKind::PortcullisReplicas)
                .map(|r| {
                    format!(
                        "; three replicas on it {:.0} req/s together ({:.2}× one on redb, \
                         on the same {} cores)",
                        r.throughput.rps,
                        r.throughput.rps / p.throughput.rps,
                        self.machine.nproc
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "- On PostgreSQL instead of redb, one replica: {:.0} vs {:.0} req/s at \
                 concurrency {high} (**{:+.1}%**), {:+.1} µs at p50 (concurrency 1){three}. \
                 A proxied request reads no record: credentials are in memory, and the \
                 database is asked only when a token is stored, refreshed or a config saved.",
                pg.throughput.rps,
                p.throughput.rps,
                (pg.throughput.rps / p.throughput.rps - 1.0) * 100.0,
                pg.latency.p50_us - p.latency.p50_us,
            );
        }
        if let (Some(p), Some(n)) = (p, n)
            && n.throughput.rps > 0.0
        {
            let _ = writeln!(
                s,
                "- Throughput ratio Portcullis / nginx at concurrency {high}: **{:.2}×** \
                 ({:.0} vs {:.0} req/s).",
                p.throughput.rps / n.throughput.rps,
                p.throughput.rps,
                n.throughput.rps
            );
            if let (Some(pc), Some(nc)) = (p.throughput.cpu.server_us, n.throughput.cpu.server_us)
                && nc > 0.0
            {
                let _ = writeln!(
                    s,
                    "- CPU per request at concurrency {high} (user + system, the proxy with its \
                     worker processes): Portcullis {pc:.1} µs ({} in the kernel), nginx \
                     {nc:.1} µs ({} in the kernel): **{:.2}×** nginx's. The load generator and \
                     the upstream share the same cores, so throughput follows the sum: {} and \
                     {} µs per request with the benchmark process's share.",
                    CpuPerRequest::cell(p.throughput.cpu.server_system_us),
                    CpuPerRequest::cell(n.throughput.cpu.server_system_us),
                    pc / nc,
                    CpuPerRequest::cell(p.throughput.cpu.total_us()),
                    CpuPerRequest::cell(n.throughput.cpu.total_us()),
                );
            }
        }
        if let Some(n) = n.filter(|n| n.throughput.rps > 0.0) {
            for kind in [TargetKind::Relay, TargetKind::RelayHyper] {
                let Some(r) = self.measured(kind) else {
                    continue;
                };
                let _ = writeln!(
                    s,
                    "- The {}: **{:.2}×** nginx's req/s at concurrency {high} ({:.0} vs {:.0}), \
                     {} µs of CPU a request ({} in the kernel){}.",
                    kind.label(),
                    r.throughput.rps / n.throughput.rps,
                    r.throughput.rps,
                    n.throughput.rps,
                    CpuPerRequest::cell(r.throughput.cpu.server_us),
                    CpuPerRequest::cell(r.throughput.cpu.server_system_us),
                    direct
                        .map(|d| format!(
                            "; it adds {:+.1} µs at p50 (concurrency 1)",
                            r.latency.p50_us - d.latency.p50_us
                        ))
                        .unwrap_or_default(),
                );
            }
        }
        let conns: Vec<String> = self
            .results
            .iter()
            .filter_map(|r| {
                let x = r.outcome.as_ref().ok()?;
                Some(format!(
                    "{} {} for {} requests",
                    r.kind.label(),
                    x.upstream_connections,
                    x.upstream_requests
                ))
            })
            .collect();
        if !conns.is_empty() {
            let _ = writeln!(
                s,
                "- Upstream connections opened during warm-ups and measurements: {}.",
                conns.join("; ")
            );
        }
        s.push_str(&AtRest::lines(self.results.iter().map(|r| {
            (
                r.kind.label(),
                r.outcome.as_ref().ok().and_then(|x| x.at_rest),
            )
        })));
        for r in self.results {
            if let Ok(x) = &r.outcome
                && x.auth_injected == Some(false)
            {
                let _ = writeln!(
                    s,
                    "- Warning: {} did not inject the bearer token upstream.",
                    r.kind.label()
                );
            }
        }
        s
    }

    fn json(&self) -> serde_json::Value {
        let a = self.args;
        let mut settings = a.load.settings(a.concurrency_high, a.requests_high);
        settings["upstream_body_bytes"] = json!(UPSTREAM_BODY.len());
        settings["nginx_version"] = json!(self.nginx_version);
        settings["postgres_version"] = json!(self.postgres_version);
        let targets: Vec<_> = self
            .results
            .iter()
            .map(|r| match &r.outcome {
                Ok(x) => json!({"target": r.kind, "ok": true, "latency": x.latency,
                                "throughput": x.throughput, "auth_injected": x.auth_injected,
                                "upstream_requests": x.upstream_requests,
                                "upstream_connections": x.upstream_connections,
                                "at_rest": x.at_rest}),
                Err(e) => json!({"target": r.kind, "ok": false, "error": e}),
            })
            .collect();
        let direct = self.measured(TargetKind::Direct);
        let p = self.measured(TargetKind::Portcullis);
        let n = self.measured(TargetKind::Nginx);
        let added = |x: Option<&Measured>| match (x, direct) {
            (Some(x), Some(d)) => Some(x.latency.p50_us - d.latency.p50_us),
            _ => None,
        };
        let ratio = match (p, n) {
            (Some(p), Some(n)) if n.throughput.rps > 0.0 => {
                Some(p.throughput.rps / n.throughput.rps)
            }
            _ => None,
        };
        json!({
            "benchmark": "proxy",
            "date": self.date,
            "machine": {"nproc": self.machine.nproc, "cpu_model": self.machine.cpu_model,
                        "kernel": self.machine.kernel},
            "cpu_busy_before_start": self.cpu_busy_before,
            "steal_share": self.steal,
            "settings": settings,
            "targets": targets,
            "summary": {"portcullis_added_p50_us": added(p), "nginx_added_p50_us": added(n),
                        "rps_ratio_portcullis_over_nginx": ratio},
        })
    }
}
