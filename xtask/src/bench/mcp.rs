//! `cargo xtask bench mcp`: what does a `tools/call` through `/v1/mcp` cost?
//!
//! One trivial upstream tool is called, one target after the other so they never
//! compete for the cores: directly at the upstream, and through Portcullis's aggregated
//! endpoint (`bench_ping`, prefix stripped, bearer token injected, forwarded over the
//! connector's upstream session). Each is measured twice: as the bare JSON-RPC POST an
//! agent sends without a session (answered with plain JSON), and inside an MCP session
//! as the official SDKs call (`initialize` first, then every call with its
//! `Mcp-Session-Id`, answered as a server-sent event stream). The difference between
//! direct and Portcullis is what Portcullis adds: identity, grants, routing, and its own
//! rmcp client and server.
//!
//! Two plain HTTP hops are measured too, sessionless: nginx (the proxy benchmark's
//! configuration) and Portcullis's own HTTP connector path, both forwarding the same
//! POST for `ping` without reading its JSON-RPC. They are the floor a gateway in the
//! path costs on these cores, so the rows show how much of Portcullis's MCP cost is its
//! MCP work and how much any hop would add.
//!
//! The peer gateway, IBM ContextForge (see [`super::contextforge`]), is measured the same
//! way on the same upstream: its aggregated `/mcp` endpoint, sessionless (it issues no
//! sessions in its default configuration).
//!
//! The upstream is an rmcp server in this process on its own thread and runtime,
//! serving streamable HTTP statelessly and refusing requests without the bearer token
//! (so a Portcullis that forgot to inject it fails every call).

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use hyper::StatusCode;
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderName, HeaderValue};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorData,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::transport::StreamableHttpServerConfig;
use rmcp::transport::streamable_http_server::StreamableHttpService;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use serde_json::json;

use super::contextforge;
use super::host::{AtRest, prepare_portcullis, spawn_portcullis, with_child};
use super::load::{self, Body, CpuPerRequest, LoadSpec, Stats, Target};
use super::proxy::{CONNECTOR_PREFIX, ensure_nginx, nginx_version, with_nginx};
use super::{ChildGuard, LoadArgs, MachineInfo, ServerThread};

/// The token Portcullis injects and the upstream demands.
pub(super) const SECRET: &str = "bench-mcp-token";
/// The upstream tool's fixed answer.
const PONG: &str = "pong";
/// A call only counts when the body carries the answer as its text content.
pub(super) const PONG_CONTENT: &str = r#""text":"pong""#;
/// Portcullis's plain HTTP connector to the same upstream (the `portcullis-http` row).
const HTTP_CONNECTOR: &str = "benchhttp";
/// How long Portcullis may take to discover the upstream's tool.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Aims from the performance issue, reported next to the numbers: added p50 at
/// concurrency 1, and calls/s through Portcullis as a share of direct at high concurrency.
const AIM_ADDED_P50_US: f64 = 100.0;
const AIM_THROUGHPUT_RATIO: f64 = 0.7;
/// The protocol version the in-session rows negotiate (the newest with sessions).
const SESSION_PROTOCOL: &str = "2025-11-25";

/// Options for `cargo xtask bench mcp`.
#[derive(Debug, Args)]
pub struct McpArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Concurrent agents in the throughput phase.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
    concurrency_high: u64,
    /// Call cap for the throughput phase (capped by --duration).
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
    requests_high: u64,
    /// Which targets to measure, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "direct,nginx,portcullis-http,portcullis,contextforge,direct-session,portcullis-session,contextforge-session"
    )]
    targets: Vec<TargetKind>,
    /// ContextForge's worker processes (its tuning guide: about one per core).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    contextforge_workers: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
enum TargetKind {
    Direct,
    Nginx,
    PortcullisHttp,
    Portcullis,
    Contextforge,
    DirectSession,
    PortcullisSession,
    ContextforgeSession,
}

impl TargetKind {
    fn label(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct to the upstream",
            TargetKind::Nginx => "through nginx (HTTP proxy, no MCP)",
            TargetKind::PortcullisHttp => "through Portcullis /v1/connectors (HTTP proxy, no MCP)",
            TargetKind::Portcullis => "through Portcullis /v1/mcp",
            TargetKind::Contextforge => "through ContextForge /mcp",
            TargetKind::DirectSession => "direct to the upstream, in a session",
            TargetKind::PortcullisSession => "through Portcullis /v1/mcp, in a session",
            TargetKind::ContextforgeSession => "through ContextForge /mcp, in a session",
        }
    }

    fn in_session(self) -> bool {
        matches!(
            self,
            TargetKind::DirectSession
                | TargetKind::PortcullisSession
                | TargetKind::ContextforgeSession
        )
    }

    /// The direct target a gateway target is compared with (`None` for direct ones).
    fn baseline(self) -> Option<TargetKind> {
        match self {
            TargetKind::Nginx
            | TargetKind::PortcullisHttp
            | TargetKind::Portcullis
            | TargetKind::Contextforge => Some(TargetKind::Direct),
            TargetKind::PortcullisSession | TargetKind::ContextforgeSession => {
                Some(TargetKind::DirectSession)
            }
            TargetKind::Direct | TargetKind::DirectSession => None,
        }
    }
}

#[derive(Debug, serde::Serialize)]
struct Measured {
    latency: Stats,
    throughput: Stats,
    /// `tools/call` requests the upstream answered during both phases and warm-ups.
    upstream_calls: u64,
    /// Portcullis before the load (through-Portcullis targets).
    #[serde(skip_serializing_if = "Option::is_none")]
    at_rest: Option<AtRest>,
}

type TargetResult = super::TargetResult<TargetKind, Measured>;

pub fn run(root: &Path, args: McpArgs) -> Result<()> {
    super::install_interrupt_handler()?;
    let machine = MachineInfo::detect();
    let targets = super::unique(&args.targets);
    let portcullis_bin = targets
        .iter()
        .any(|k| {
            matches!(
                k,
                TargetKind::Portcullis | TargetKind::PortcullisHttp | TargetKind::PortcullisSession
            )
        })
        .then(|| prepare_portcullis(root, args.load.no_build));
    let nginx_bin = targets.contains(&TargetKind::Nginx).then(ensure_nginx);
    let nginx_version = nginx_version(&nginx_bin);
    let contextforge_venv = targets
        .iter()
        .any(|k| {
            matches!(
                k,
                TargetKind::Contextforge | TargetKind::ContextforgeSession
            )
        })
        .then(|| contextforge::prepare(root));
    super::check_interrupted()?;

    let tmp = tempfile::Builder::new()
        .prefix("portcullis-bench-mcp-")
        .tempdir()
        .context("creating temp dir")?;
    let cpu_busy_before = super::busy_before();
    let ticks_at_start = super::CpuTicks::now();
    let upstream = Upstream::start(args.load.upstream_threads())?;
    eprintln!("bench: upstream MCP server on http://{}/mcp", upstream.addr);

    let (spec_c1, spec_high) = args.load.specs(args.concurrency_high, args.requests_high);

    let mut results = Vec::new();
    for &kind in &targets {
        super::check_interrupted()?;
        eprintln!("bench: measuring {}", kind.label());
        let outcome = match kind {
            TargetKind::Direct | TargetKind::DirectSession => {
                let path = if kind.in_session() {
                    SESSION_PATH
                } else {
                    "/mcp"
                };
                call_target(kind, upstream.addr, path, "ping", Some(&upstream_token()))
                    .and_then(|target| measure(&target, &upstream, None, &spec_c1, &spec_high))
            }
            TargetKind::Portcullis | TargetKind::PortcullisHttp | TargetKind::PortcullisSession => {
                let dir = tmp.path().join(format!("{kind:?}").to_lowercase());
                let (path, tool) = match kind {
                    TargetKind::PortcullisHttp => {
                        (format!("/v1/connectors/{HTTP_CONNECTOR}/mcp"), "ping")
                    }
                    _ => ("/v1/mcp".to_owned(), "bench_ping"),
                };
                with_child(
                    &portcullis_bin,
                    |bin| start_portcullis(bin, &dir, upstream.addr),
                    &dir.join("stderr.log"),
                    |addr, guard| {
                        let target = call_target(kind, addr, &path, tool, None)?;
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
                    let path = format!("{CONNECTOR_PREFIX}/mcp");
                    let target = call_target(kind, addr, &path, "ping", None)?;
                    measure(&target, &upstream, Some(guard), &spec_c1, &spec_high)
                },
            ),
            TargetKind::Contextforge | TargetKind::ContextforgeSession => {
                let dir = tmp.path().join(format!("{kind:?}").to_lowercase());
                let stateful = kind.in_session();
                // Sessions live in one worker's memory: without Redis for its session
                // affinity, a second worker would not know them.
                let workers = if stateful {
                    1
                } else {
                    args.contextforge_workers
                };
                let authorization = std::cell::OnceCell::new();
                with_child(
                    &contextforge_venv,
                    |venv| {
                        let started = contextforge::start(
                            venv,
                            &dir,
                            upstream.addr,
                            SECRET,
                            contextforge::Mode { workers, stateful },
                        )?;
                        let _ = authorization.set(started.authorization);
                        Ok((started.guard, started.addr))
                    },
                    &dir.join("stderr.log"),
                    |addr, guard| {
                        let auth = authorization.get().context("no ContextForge token")?;
                        let target = call_target(
                            kind,
                            addr,
                            contextforge::MCP_PATH,
                            contextforge::TOOL,
                            Some(auth),
                        )?;
                        measure(&target, &upstream, Some(guard), &spec_c1, &spec_high)
                    },
                )
            }
        };
        super::check_interrupted()?;
        super::record(&mut results, kind, kind.label(), outcome);
    }
    drop(upstream);

    let report = Report {
        date: super::utc_now_string(),
        machine,
        args: &args,
        nginx_version,
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
            TargetKind::Nginx,
            TargetKind::PortcullisHttp,
            TargetKind::Portcullis,
            TargetKind::Contextforge,
            TargetKind::DirectSession,
            TargetKind::PortcullisSession,
            TargetKind::ContextforgeSession,
        ],
    );
    args.load
        .finish(root, "mcp", &markdown, &report.json(), &failures, complete)
}

/// The JSON-RPC body of one call, each with its own id as clients number them (ids in
/// a session must not collide; `initialize` took 0).
pub(super) fn call_body(tool: &str) -> Body {
    let params = json!({"name": tool, "arguments": {}});
    Body::numbered(
        r#"{"jsonrpc":"2.0","id":"#,
        &format!(r#","method":"tools/call","params":{params}}}"#),
        1,
    )
}

/// The `Authorization` the upstream demands (direct calls; Portcullis injects it).
fn upstream_token() -> HeaderValue {
    HeaderValue::from_static("Bearer bench-mcp-token")
}

/// The headers of every POST; `authorization` is the caller's credential where the
/// target needs one (the upstream's token direct, a JWT at ContextForge; Portcullis
/// identifies loopback callers), `session` the session's id and protocol version.
pub(super) fn post_headers(
    authorization: Option<&HeaderValue>,
    session: Option<&HeaderValue>,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = vec![
        (CONTENT_TYPE, HeaderValue::from_static("application/json")),
        (
            ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        ),
    ];
    if let Some(authorization) = authorization {
        headers.push((hyper::header::AUTHORIZATION, authorization.clone()));
    }
    if let Some(session) = session {
        headers.push((HeaderName::from_static("mcp-session-id"), session.clone()));
        headers.push((
            HeaderName::from_static("mcp-protocol-version"),
            HeaderValue::from_static(SESSION_PROTOCOL),
        ));
    }
    headers
}

/// A `tools/call` POST; for an in-session kind, the session is opened first and every
/// call carries its id and protocol version.
fn call_target(
    kind: TargetKind,
    addr: SocketAddr,
    path: &str,
    tool: &str,
    authorization: Option<&HeaderValue>,
) -> Result<Target> {
    let session = match kind.in_session() {
        true => Some(
            open_session(addr, path, authorization)
                .with_context(|| format!("opening an MCP session at {addr}{path}"))?,
        ),
        false => None,
    };
    Ok(Target::post(
        kind.label(),
        addr,
        path,
        call_body(tool),
        post_headers(authorization, session.as_ref()),
        Bytes::from_static(PONG_CONTENT.as_bytes()),
    ))
}

/// Opens a session as an SDK does (`initialize`, then `notifications/initialized`) and
/// returns its `Mcp-Session-Id`.
fn open_session(
    addr: SocketAddr,
    path: &str,
    authorization: Option<&HeaderValue>,
) -> Result<HeaderValue> {
    let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": SESSION_PROTOCOL, "capabilities": {},
        "clientInfo": {"name": "portcullis-bench", "version": "1"}}});
    let (status, headers, body) = load::probe_response(&Target::post(
        "initialize",
        addr,
        path,
        Bytes::from(initialize.to_string()),
        post_headers(authorization, None),
        Bytes::new(),
    ))?;
    let session = headers.get("mcp-session-id").cloned();
    let Some(session) = session.filter(|_| status == StatusCode::OK) else {
        bail!(
            "initialize answered {status} without a session id: {:?}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(300)
                .collect::<String>()
        );
    };
    let initialized = Target::post(
        "notifications/initialized",
        addr,
        path,
        Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
        post_headers(authorization, Some(&session)),
        Bytes::new(),
    );
    let (status, _) = load::probe_target(&initialized)?;
    if status != StatusCode::ACCEPTED {
        bail!("notifications/initialized answered {status} (expected 202)");
    }
    Ok(session)
}

fn start_portcullis(
    bin: &Path,
    dir: &Path,
    upstream: SocketAddr,
) -> Result<(ChildGuard, SocketAddr)> {
    let config = json!({
        "identity": {"mode": "loopback"},
        "egress": {"allow_loopback": true},
        "connectors": {"servers": {
            "bench": {
                "protocol": "mcp",
                "url": format!("http://{upstream}/mcp"),
                "auth": {"type": "bearer_token", "secret": SECRET},
            },
            HTTP_CONNECTOR: {
                "protocol": "http",
                "url": format!("http://{upstream}"),
                "auth": {"type": "bearer_token", "secret": SECRET},
            },
        }},
        "grants": [{
            "src": ["(loopback)"],
            "app": {"tailscale.com/cap/aperture": [
                {"connectors": ["bench/**", format!("{HTTP_CONNECTOR}/**")]},
            ]},
        }],
    });
    let (mut guard, addr) = spawn_portcullis(bin, dir, &config, None, &[])?;
    wait_for_tool(&mut guard, addr)?;
    Ok((guard, addr))
}

/// Discovery runs in the background after start: waits until `bench_ping` is listed at
/// `/v1/mcp`.
pub(super) fn wait_for_tool(guard: &mut ChildGuard, addr: SocketAddr) -> Result<()> {
    let list = Target::post(
        "tools/list",
        addr,
        "/v1/mcp",
        Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#),
        post_headers(None, None),
        Bytes::new(),
    );
    let deadline = Instant::now() + DISCOVERY_TIMEOUT;
    loop {
        super::check_interrupted()?;
        if let Some(status) = guard.exited() {
            bail!("portcullis exited during startup ({status})");
        }
        if let Ok((StatusCode::OK, body)) = load::probe_target(&list)
            && String::from_utf8_lossy(&body).contains("\"bench_ping\"")
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("portcullis did not list bench_ping within {DISCOVERY_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Checks one call answers `pong`, then runs both load phases.
fn measure(
    target: &Target,
    upstream: &Upstream,
    proxy: Option<&mut ChildGuard>,
    spec_c1: &LoadSpec,
    spec_high: &LoadSpec,
) -> Result<Measured> {
    let (status, body) = load::probe_target(target)?;
    let text = String::from_utf8_lossy(&body);
    if status != StatusCode::OK || !text.contains(PONG_CONTENT) {
        bail!(
            "tools/call via {} returned {status} with body {:?} (expected 200 and `{PONG}`)",
            target.name,
            text.chars().take(300).collect::<String>()
        );
    }
    let at_rest = proxy.as_ref().and_then(|p| p.at_rest);
    let calls_before = upstream.calls.load(Ordering::Relaxed);
    let (latency, throughput) = load::run_both(target, proxy, spec_c1, spec_high, "calls")?;
    Ok(Measured {
        latency,
        throughput,
        upstream_calls: upstream.calls.load(Ordering::Relaxed) - calls_before,
        at_rest,
    })
}

/// The upstream MCP server's one tool.
#[derive(Clone)]
struct Ping {
    calls: Arc<AtomicU64>,
}

impl rmcp::ServerHandler for Ping {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _page: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let schema = json!({"type": "object", "properties": {}});
        let schema = match schema {
            serde_json::Value::Object(m) => Arc::new(m),
            _ => Arc::default(),
        };
        Ok(ListToolsResult::with_all_items(vec![Tool::new(
            "ping",
            "Answers pong.",
            schema,
        )]))
    }

    async fn call_tool(
        &self,
        req: CallToolRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if req.name != "ping" {
            return Err(ErrorData::invalid_params("no such tool", None));
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        Ok(CallToolResponse::Complete(CallToolResult::success(vec![
            ContentBlock::text(PONG),
        ])))
    }
}

/// Where the upstream serves MCP with sessions (for the direct in-session row).
const SESSION_PATH: &str = "/mcp-session";

/// The upstream: rmcp's streamable HTTP server, stateless with JSON answers at `/mcp`
/// and with sessions (answers as event streams) at [`SESSION_PATH`], behind a
/// bearer-token check, on its own thread (see [`ServerThread`]).
pub(super) struct Upstream {
    pub(super) addr: SocketAddr,
    calls: Arc<AtomicU64>,
    _server: ServerThread,
}

impl Upstream {
    pub(super) fn start(threads: usize) -> Result<Self> {
        let calls = Arc::new(AtomicU64::new(0));
        let handler = Ping {
            calls: calls.clone(),
        };
        let server = ServerThread::start(
            "bench-mcp-upstream",
            threads,
            move |listener, shutdown| async move {
                let stateless = handler.clone();
                let svc = StreamableHttpService::new(
                    move || Ok(stateless.clone()),
                    Arc::new(NeverSessionManager::default()),
                    StreamableHttpServerConfig::default()
                        .with_legacy_session_mode(false)
                        .with_json_response(true),
                );
                let with_sessions = StreamableHttpService::new(
                    move || Ok(handler.clone()),
                    Arc::new(LocalSessionManager::default()),
                    StreamableHttpServerConfig::default(),
                );
                let app = axum::Router::new()
                    .nest_service("/mcp", svc)
                    .nest_service(SESSION_PATH, with_sessions)
                    .layer(axum::middleware::from_fn(require_token));
                // Session answers are event streams written in pieces: without
                // TCP_NODELAY each would wait ~40 ms for the client's delayed ACK.
                use axum::serve::ListenerExt as _;
                let listener = listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = shutdown.await;
                    })
                    .await;
            },
        )?;
        Ok(Self {
            addr: server.addr,
            calls,
            _server: server,
        })
    }
}

/// 401 for a request without the bench token.
async fn require_token(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if req.headers().get(hyper::header::AUTHORIZATION) != Some(&upstream_token()) {
        let mut resp = axum::response::Response::new(axum::body::Body::from("missing token"));
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
        return resp;
    }
    next.run(req).await
}

struct Report<'a> {
    date: String,
    machine: MachineInfo,
    args: &'a McpArgs,
    /// nginx's version, when its row was measured.
    nginx_version: Option<String>,
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
        let mut s = String::new();
        let _ = writeln!(s, "### MCP `tools/call` (`cargo xtask bench mcp`)\n");
        s.push_str(&m.header(&self.date, self.cpu_busy_before));
        s.push_str(&super::CpuTicks::steal_line(self.steal));
        let _ = writeln!(
            s,
            "- Call: a JSON-RPC `tools/call` POST with \
             `Accept: application/json, text/event-stream` over keep-alive HTTP/1.1 (one \
             connection per concurrent agent). Sessionless rows: the bare POST, answered \
             with plain JSON. In-session rows: one session per target opened as the SDKs \
             do (`initialize` at {SESSION_PROTOCOL}, `notifications/initialized`), every \
             call carrying its `Mcp-Session-Id` and answered as an event stream; all \
             concurrent agents share the session. Direct: `ping` at the upstream with the \
             bearer token. Through Portcullis: `bench_ping` at `/v1/mcp` (loopback \
             identity, a `bench/**` grant); Portcullis strips the prefix, injects the token \
             and forwards on its upstream MCP session."
        );
        if self.measured(TargetKind::Nginx).is_some()
            || self.measured(TargetKind::PortcullisHttp).is_some()
        {
            let _ = writeln!(
                s,
                "- Plain HTTP hops (sessionless, for the floor any gateway adds on these \
                 cores): the same POST for `ping`, forwarded without reading its JSON-RPC, \
                 through nginx ({}; the proxy benchmark's configuration: 2 workers, upstream \
                 `keepalive 64`, access log off, injecting `Authorization`) at \
                 `{CONNECTOR_PREFIX}/mcp`, and through Portcullis's HTTP connector path \
                 `/v1/connectors/{HTTP_CONNECTOR}/mcp` (an `http` connector to the same \
                 upstream, bearer token injected; identity, grant, header hygiene, egress \
                 check and audit as for any proxied request).",
                self.nginx_version.as_deref().unwrap_or("version unknown"),
            );
        }
        let _ = writeln!(
            s,
            "- Upstream: rmcp {} streamable HTTP server in the benchmark process (TCP_NODELAY \
             on its sockets): stateless with JSON answers at `/mcp` (sessionless rows, and \
             Portcullis's upstream in all rows), with sessions at `{SESSION_PATH}` (the direct \
             in-session row); one tool answering `pong`.",
            rmcp_version(),
        );
        let _ = writeln!(
            s,
            "- Peer gateway: IBM ContextForge {} (PyPI `mcp-contextforge-gateway`, installed \
             by the benchmark), `{}` at its `/mcp` with an administrator's JWT, the upstream \
             registered as a gateway with the same bearer token. Settings from its tuning \
             guide for a small machine: uvicorn worker processes (uvloop, httptools), access \
             log off, `LOG_LEVEL=ERROR`, SQLite migrated before the workers start, \
             `CACHE_TYPE=memory`, authentication on, and its per-user rate limit off \
             (`RATE_LIMITING_ENABLED=false`; by default it answers 429 after 100 calls a \
             minute). Sessionless: its default stateless JSON transport with {} workers (it \
             opens an upstream session per call). In a session: `USE_STATEFUL_SESSIONS=true` \
             with 1 worker (sessions live in one worker's memory; spreading them over workers \
             needs Redis for its session affinity), which reuses one upstream session per \
             client session and serialises the calls on it.",
            contextforge::version(),
            contextforge::TOOL,
            a.contextforge_workers,
        );
        s.push_str(&a.load.method_lines(high, a.requests_high, "calls", m.nproc));
        s.push_str("- A call counts only if it answered 200 with `pong` in the body.\n\n");
        let _ = writeln!(
            s,
            "| Target | concurrency | calls/s | p50 µs | p90 µs | p99 µs | max µs | failed | \
             CPU µs/call, gateway (kernel) | CPU µs/call, bench |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in self.results {
            match &r.outcome {
                Ok(x) => {
                    for st in [&x.latency, &x.throughput] {
                        let _ = writeln!(
                            s,
                            "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} | {} | {} | {} |",
                            r.kind.label(),
                            st.concurrency,
                            st.rps,
                            st.p50_us,
                            st.p90_us,
                            st.p99_us,
                            st.max_us,
                            st.errors + st.bad_status,
                            st.cpu.server_cell(),
                            CpuPerRequest::cell(st.cpu.bench_us),
                        );
                    }
                }
                Err(e) => {
                    let first = e.lines().next().unwrap_or("failed").replace('|', "\\|");
                    let _ = writeln!(
                        s,
                        "| {} | failed: {first} | | | | | | | | |",
                        r.kind.label()
                    );
                }
            }
        }
        s.push('\n');
        for kind in [TargetKind::Portcullis, TargetKind::PortcullisSession] {
            let Some(direct) = kind.baseline() else {
                continue;
            };
            let (Some(d), Some(p)) = (self.measured(direct), self.measured(kind)) else {
                continue;
            };
            let how = if kind.in_session() {
                "In a session"
            } else {
                "Sessionless"
            };
            against_direct(&mut s, how, "Portcullis", d, p);
            let added = p.latency.p50_us - d.latency.p50_us;
            let share = ratio(p.throughput.rps, d.throughput.rps);
            let _ = writeln!(
                s,
                "- {how}, aims: at most {AIM_ADDED_P50_US:.0} µs added at p50 (concurrency 1): \
                 **{}** ({added:+.1} µs); at least {AIM_THROUGHPUT_RATIO:.1}× direct's calls/s \
                 (concurrency {high}): **{}** ({share:.2}×). Upstream `tools/call`s answered, \
                 warm-ups included: direct {}, through Portcullis {}.",
                met(added <= AIM_ADDED_P50_US),
                met(share >= AIM_THROUGHPUT_RATIO),
                d.upstream_calls,
                p.upstream_calls
            );
            budget(
                &mut s,
                how,
                high,
                self.machine.nproc,
                &d.throughput,
                &p.throughput,
            );
        }
        s.push_str(&self.hop_lines());
        s.push_str(&self.peer_lines());
        s.push_str(&AtRest::lines(self.results.iter().map(|r| {
            (
                r.kind.label(),
                r.outcome.as_ref().ok().and_then(|x| x.at_rest),
            )
        })));
        s
    }

    /// The plain HTTP hops against direct, and what `/v1/mcp` costs beyond Portcullis's
    /// own hop: the MCP work (JSON-RPC decoding and encoding, per-tool grants, the
    /// aggregation, its two rmcp stacks) apart from the HTTP layer every request pays.
    fn hop_lines(&self) -> String {
        let mut s = String::new();
        let Some(d) = self.measured(TargetKind::Direct) else {
            return s;
        };
        for (kind, who) in [
            (TargetKind::Nginx, "nginx"),
            (TargetKind::PortcullisHttp, "Portcullis's HTTP path"),
        ] {
            if let Some(x) = self.measured(kind) {
                against_direct(&mut s, "Plain HTTP hop", who, d, x);
            }
        }
        if let (Some(h), Some(p)) = (
            self.measured(TargetKind::PortcullisHttp),
            self.measured(TargetKind::Portcullis),
        ) {
            let cpu = |x: &Measured| x.throughput.cpu.server_us;
            let _ = writeln!(
                s,
                "- What `/v1/mcp` adds over Portcullis's own HTTP hop, sessionless: {:+.1} µs \
                 at p50 (concurrency 1); {:.0} against {:.0} calls/s at concurrency {} \
                 ({:.2}×){}.",
                p.latency.p50_us - h.latency.p50_us,
                p.throughput.rps,
                h.throughput.rps,
                self.args.concurrency_high,
                ratio(p.throughput.rps, h.throughput.rps),
                match (cpu(p), cpu(h)) {
                    (Some(pc), Some(hc)) => format!(
                        "; the gateway's CPU a call {pc:.1} against {hc:.1} µs ({:+.1} µs)",
                        pc - hc
                    ),
                    _ => String::new(),
                }
            );
        }
        s
    }

    /// ContextForge against direct and against Portcullis, sessionless and in a session.
    fn peer_lines(&self) -> String {
        let mut s = String::new();
        for (peer, ours) in [
            (TargetKind::Contextforge, TargetKind::Portcullis),
            (
                TargetKind::ContextforgeSession,
                TargetKind::PortcullisSession,
            ),
        ] {
            let Some(c) = self.measured(peer) else {
                continue;
            };
            let how = if peer.in_session() {
                "in a session"
            } else {
                "sessionless"
            };
            if let Some(d) = peer.baseline().and_then(|k| self.measured(k)) {
                against_direct(
                    &mut s,
                    &format!("Peer gateway, {how}"),
                    "ContextForge",
                    d,
                    c,
                );
            }
            if let Some(p) = self.measured(ours) {
                let _ = writeln!(
                    s,
                    "- **Portcullis vs ContextForge**, {how}: p50 at concurrency 1 {:.1} vs \
                     {:.1} µs; calls/s at concurrency {} {:.0} vs {:.0} (**{:.0}×**).",
                    p.latency.p50_us,
                    c.latency.p50_us,
                    self.args.concurrency_high,
                    p.throughput.rps,
                    c.throughput.rps,
                    ratio(p.throughput.rps, c.throughput.rps)
                );
            }
        }
        s
    }

    fn json(&self) -> serde_json::Value {
        let a = self.args;
        let mut settings = a.load.settings(a.concurrency_high, a.requests_high);
        settings["rmcp"] = json!(rmcp_version());
        settings["nginx_version"] = json!(self.nginx_version);
        settings["contextforge"] = json!({"package": contextforge::PACKAGE,
                                          "workers": a.contextforge_workers});
        let targets: Vec<_> = self
            .results
            .iter()
            .map(|r| match &r.outcome {
                Ok(x) => json!({"target": r.kind, "ok": true, "latency": x.latency,
                                "throughput": x.throughput, "upstream_calls": x.upstream_calls,
                                "at_rest": x.at_rest}),
                Err(e) => json!({"target": r.kind, "ok": false, "error": e}),
            })
            .collect();
        json!({
            "benchmark": "mcp",
            "date": self.date,
            "machine": {"nproc": self.machine.nproc, "cpu_model": self.machine.cpu_model,
                        "kernel": self.machine.kernel},
            "cpu_busy_before_start": self.cpu_busy_before,
            "steal_share": self.steal,
            "settings": settings,
            "targets": targets,
        })
    }
}

/// The lines comparing a gateway (`who`) with direct (`d`), at both concurrencies.
fn against_direct(s: &mut String, lead: &str, who: &str, d: &Measured, x: &Measured) {
    for (d, x) in [(&d.latency, &x.latency), (&d.throughput, &x.throughput)] {
        let _ = writeln!(
            s,
            "- {lead}, concurrency {}: {who} adds {:+.1} µs at p50 and {:+.1} µs at p99; \
             {:.0} vs {:.0} calls/s ({:.2}× direct).",
            d.concurrency,
            x.p50_us - d.p50_us,
            x.p99_us - d.p99_us,
            x.rps,
            d.rps,
            ratio(x.rps, d.rps)
        );
    }
}

/// What the throughput aim leaves the gateway to spend per call on these cores: at the
/// aim's share of direct's calls/s, the cores give each call `nproc / calls_per_s` of
/// CPU at most, of which the benchmark process (load generator and upstream) takes what
/// it was measured to take with the gateway in the path.
fn budget(s: &mut String, lead: &str, high: u64, nproc: usize, d: &Stats, x: &Stats) {
    let (Some(bench_direct), Some(bench_through), Some(gateway), Some(kernel)) = (
        d.cpu.bench_us,
        x.cpu.bench_us,
        x.cpu.server_us,
        x.cpu.server_system_us,
    ) else {
        return;
    };
    let busy = |us: f64, rps: f64| us * rps / 1e6;
    let aimed = d.rps * AIM_THROUGHPUT_RATIO;
    let per_call = if aimed > 0.0 {
        nproc as f64 * 1e6 / aimed
    } else {
        0.0
    };
    let left = per_call - bench_through;
    let _ = writeln!(
        s,
        "- {lead}, CPU per call at concurrency {high} (user + system): the gateway \
         {gateway:.1} µs ({kernel:.1} in the kernel); the benchmark process (load generator \
         and upstream) {bench_through:.1} µs with it, {bench_direct:.1} µs direct. Cores busy: \
         {:.2} direct, {:.2} through Portcullis, of {nproc}. At {AIM_THROUGHPUT_RATIO:.1}× \
         direct's calls/s ({aimed:.0}/s) the cores give a call at most {per_call:.1} µs of CPU, \
         which leaves the gateway {}.",
        busy(bench_direct, d.rps),
        busy(bench_through + gateway, x.rps),
        if left > 0.0 {
            format!("about {left:.0} µs")
        } else {
            "nothing".to_owned()
        }
    );
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

fn met(yes: bool) -> &'static str {
    if yes { "met" } else { "missed" }
}

/// The rmcp release in use: the workspace locks one, for Portcullis and this upstream.
fn rmcp_version() -> String {
    let lock = super::super::workspace_root()
        .ok()
        .and_then(|r| fs::read_to_string(r.join("Cargo.lock")).ok())
        .unwrap_or_default();
    lock.split("[[package]]")
        .find(|p| p.contains("name = \"rmcp\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .map(|v| v.trim_end_matches('"').to_owned())
        .unwrap_or_else(|| "?".into())
}
