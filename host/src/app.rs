//! Wiring: builds the state from config, owns the server, reloads and shutdown.
//!
//! Everything derived from the config lives in an immutable [`Snapshot`] swapped
//! atomically on reload: a request holds the snapshot it started with until it ends, so a
//! reload never drops or half-applies a request. A config that fails to load is logged and
//! the old snapshot keeps serving. State that must outlive reloads (vault, egress client,
//! token caches, metrics) lives in [`App`].

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use axum::{Extension, Json, Router};

use crate::admin;
use crate::config::{self, Config, Diagnostics, Protocol};
use crate::connections::{Connections, PerUser};
use crate::credentials::{Credential, TokenSlots};
use crate::egress::Egress;
use crate::error::{ApiError, ErrorCode};
use crate::identity::{Caller, Identifier, IdentityError};
use crate::plugins::Plugins;
use crate::policy::Policy;
use crate::proxy::{self, ConnectorTag};
use crate::telemetry::Metrics;
use crate::vault::{self, MasterKey, Vault};

/// Where `serve` gets its settings; flags and environment win over the config file.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub config: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub registry: Option<PathBuf>,
}

/// A connector ready to serve requests.
#[derive(Debug)]
pub struct Connector {
    pub id: String,
    pub protocol: Protocol,
    pub url: Option<url::Url>,
    pub credential: Credential,
    pub description: String,
    pub context: Option<serde_json::Value>,
    /// Registry id of the provider plugin; `None` for `"Custom"`.
    pub provider: Option<String>,
    /// The connector's `provider_vars`, passed to its plugin.
    pub provider_vars: Vec<(String, String)>,
}

/// Everything derived from one config.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub policy: Policy,
    pub connectors: HashMap<String, Arc<Connector>>,
    pub identity: Identifier,
    pub diagnostics: Diagnostics,
}

/// Why a config could not become a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config has errors:\n{0}")]
    Invalid(Diagnostics),
    #[error("{0:#}")]
    Build(anyhow::Error),
}

/// Validates a config completely (structure, then grants against its connectors) without
/// touching the vault or network: what `portcullis validate` runs.
pub fn check(text: &str) -> (Option<(Config, Policy)>, Diagnostics) {
    let (config, mut diags) = config::load(text);
    match config {
        Some(c) => {
            let policy = Policy::compile(&c, &mut diags);
            (Some((c, policy)), diags)
        }
        None => (None, diags),
    }
}

/// A config that passed [`check`], with its compiled policy and warnings.
type Validated = (Config, Policy, Diagnostics);

/// [`check`], as a `Result`: errors become [`LoadError::Invalid`].
fn validated(text: &str) -> Result<Validated, LoadError> {
    match check(text) {
        (Some((config, policy)), diagnostics) => Ok((config, policy, diagnostics)),
        (None, diagnostics) => Err(LoadError::Invalid(diagnostics)),
    }
}

/// The config text `serve` uses: the file, or the embedded default.
pub fn read_config(path: Option<&Path>) -> Result<String, LoadError> {
    match path {
        Some(p) => std::fs::read_to_string(p).map_err(|source| LoadError::Read {
            path: p.to_owned(),
            source,
        }),
        None => Ok(config::EMBEDDED_DEFAULT.to_owned()),
    }
}

/// Long-lived state.
pub struct App {
    snapshot: ArcSwap<Snapshot>,
    pub egress: Egress,
    pub vault: Arc<Vault>,
    pub tokens: TokenSlots,
    pub metrics: Arc<Metrics>,
    pub options: Options,
    /// The provider registry; rescanned on its own when the folder changes.
    pub plugins: Arc<Plugins>,
    /// Post-connect discovery results (per connector, and per user for per-user ones).
    pub discoveries: proxy::Discoveries,
    /// Per-user OAuth connections.
    pub connections: Arc<Connections>,
    /// The address the server is bound to (known once `serve` has bound it).
    pub bound: std::sync::OnceLock<SocketAddr>,
    /// Upstream MCP sessions, catalogs, and open `/v1/mcp` sessions.
    pub mcp: crate::mcp::Hub,
    reload_lock: tokio::sync::Mutex<()>,
    _registry_watcher: Option<notify::RecommendedWatcher>,
}

impl App {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Resolves the credentials of an already validated config into a snapshot.
    fn build_snapshot(
        (config, policy, diagnostics): Validated,
        vault: &Vault,
        tokens: &TokenSlots,
    ) -> Result<Snapshot, LoadError> {
        let mut connectors = HashMap::with_capacity(config.connectors.len());
        for c in config.connectors.values() {
            let credential = Credential::build(c, vault, tokens).map_err(LoadError::Build)?;
            connectors.insert(
                c.id.clone(),
                Arc::new(Connector {
                    id: c.id.clone(),
                    protocol: c.protocol,
                    url: c.url.clone(),
                    credential,
                    description: c.description.clone(),
                    context: c.context.clone(),
                    provider: (!c.provider.eq_ignore_ascii_case("custom"))
                        .then(|| c.provider.clone()),
                    provider_vars: c
                        .provider_vars
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                }),
            );
        }
        tokens.retain(|id| config.connectors.contains_key(id));
        let identity = Identifier::new(&config.identity);
        Ok(Snapshot {
            config: Arc::new(config),
            policy,
            connectors,
            identity,
            diagnostics,
        })
    }

    /// Re-reads the config file and swaps in the new snapshot, or keeps the old one.
    pub async fn reload(&self) -> Result<(), LoadError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let text = read_config(self.options.config.as_deref())?;
        let result =
            validated(&text).and_then(|v| Self::build_snapshot(v, &self.vault, &self.tokens));
        let outcome = if result.is_ok() {
            "applied"
        } else {
            "rejected"
        };
        self.metrics
            .config_reloads
            .get_or_create(&crate::telemetry::OutcomeLabels { outcome })
            .inc();
        let snap = result?;
        log_diagnostics(&snap.diagnostics);
        let old = self.snapshot();
        if old.config.listen != snap.config.listen && self.options.listen.is_none() {
            tracing::warn!(
                old = %old.config.listen,
                new = %snap.config.listen,
                "the listen address changed; it takes effect at the next restart"
            );
        }
        self.egress.reconfigure(&snap.config.egress);
        let gone = removed_connections(&old, &snap);
        self.snapshot.store(Arc::new(snap));
        self.discoveries.clear();
        self.mcp.sync(self);
        if !gone.is_empty() {
            // Removing a connector (or changing its OAuth client) ends every user's
            // authorization on it, revoked with the client it was made with.
            let connections = self.connections.clone();
            tokio::spawn(async move {
                for pu in gone {
                    tracing::info!(connector = %pu.connector, "connector removed or changed: revoking every user's tokens");
                    connections.revoke_all(&pu).await;
                }
            });
        }
        tracing::info!("config reloaded");
        Ok(())
    }
}

/// Per-user connections of `old` that no connector of `new` uses any more.
fn removed_connections(old: &Snapshot, new: &Snapshot) -> Vec<Arc<PerUser>> {
    let live: std::collections::HashSet<&str> = per_user_connectors(new)
        .map(|p| p.connection.as_str())
        .collect();
    let mut gone: Vec<Arc<PerUser>> = Vec::new();
    for pu in per_user_connectors(old) {
        if !live.contains(pu.connection.as_str())
            && !gone.iter().any(|g| g.connection == pu.connection)
        {
            gone.push(pu.clone());
        }
    }
    gone
}

/// The per-user OAuth settings of every connector in a snapshot.
pub fn per_user_connectors(s: &Snapshot) -> impl Iterator<Item = &Arc<PerUser>> {
    s.connectors.values().filter_map(|c| match &c.credential {
        Credential::PerUser(pu) => Some(pu),
        _ => None,
    })
}

/// How often stored connections are checked for a due refresh.
const REFRESH_TICK: Duration = Duration::from_secs(1);
/// How often abandoned authorizations are purged.
const PURGE_EVERY: u32 = 300;

/// Background refresh of per-user tokens before they expire, and the purge of
/// authorizations never completed.
fn spawn_refresher(app: &Arc<App>) {
    let weak = Arc::downgrade(app);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REFRESH_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u32 = 0;
        loop {
            tick.tick().await;
            let Some(app) = weak.upgrade() else { return };
            let live: Vec<Arc<PerUser>> = per_user_connectors(&app.snapshot()).cloned().collect();
            app.connections.refresh_due(&live).await;
            n = n.wrapping_add(1);
            if n.is_multiple_of(PURGE_EVERY) {
                let connections = app.connections.clone();
                let _ = tokio::task::spawn_blocking(move || connections.purge_pending()).await;
            }
        }
    });
}

fn log_diagnostics(d: &Diagnostics) {
    for w in d.warnings() {
        tracing::warn!(path = %w.path, "config: {}", w.message);
    }
}

/// The registry folder: `--registry`/`PORTCULLIS_REGISTRY`, else `registry.dir`, else
/// `./registry` when it exists. A folder named explicitly must exist.
fn registry_dir(opts: &Options, config: &Config) -> anyhow::Result<Option<PathBuf>> {
    let named = opts
        .registry
        .clone()
        .or_else(|| config.registry.dir.clone());
    match named {
        Some(dir) if dir.is_dir() => Ok(Some(dir)),
        Some(dir) => anyhow::bail!(
            "the provider registry folder {} does not exist; create it, fix --registry / PORTCULLIS_REGISTRY / registry.dir, or leave them unset",
            dir.display()
        ),
        None => {
            let default = PathBuf::from(DEFAULT_REGISTRY);
            if default.is_dir() {
                Ok(Some(default))
            } else {
                tracing::info!(
                    "no provider registry (./{DEFAULT_REGISTRY} does not exist); connectors with a \"provider\" will answer 503 until one is configured"
                );
                Ok(None)
            }
        }
    }
}

/// Registry folder used when none is configured, relative to the working directory.
pub const DEFAULT_REGISTRY: &str = "registry";

/// Builds the state and router for `opts`. Returns the app and the address to bind.
pub async fn build(opts: Options) -> anyhow::Result<(Arc<App>, SocketAddr, Router)> {
    let text = read_config(opts.config.as_deref())?;
    // Validate before creating any state, so a bad config leaves nothing behind.
    let checked = validated(&text)?;
    let config = &checked.0;

    std::fs::create_dir_all(&opts.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            opts.data_dir.display()
        )
    })?;
    let key_file = config
        .vault
        .key_file
        .clone()
        .unwrap_or_else(|| opts.data_dir.join(vault::KEY_FILE));
    vault::recover_interrupted_rotation(&opts.data_dir, &key_file)?;
    let (key, _) = MasterKey::load(&key_file)?;
    let vault = Arc::new(Vault::open(&opts.data_dir, &key)?);
    drop(key);

    let egress = Egress::new(&config.egress)?;
    let metrics = Metrics::new();
    let tokens = TokenSlots::new(vault.clone(), metrics.clone());
    let snapshot = App::build_snapshot(checked, &vault, &tokens)?;
    log_diagnostics(&snapshot.diagnostics);
    if snapshot.config.egress.allow_loopback {
        tracing::warn!(
            "egress.allow_loopback is on: upstreams on loopback are reachable (development and tests only)"
        );
    }
    let listen = opts.listen.unwrap_or(snapshot.config.listen);
    let registry = registry_dir(&opts, &snapshot.config)?;
    let plugins = Plugins::open(
        registry,
        Some(opts.data_dir.join("plugin-cache")),
        Some(metrics.clone()),
    )
    .await?;
    let registry_watcher = plugins.watch().unwrap_or_else(|e| {
        tracing::warn!("the registry folder is not watched ({e}); restart to pick up changes");
        None
    });
    let connections = Arc::new(Connections::open(
        vault.clone(),
        egress.clone(),
        plugins.clone(),
        metrics.clone(),
    ));
    let app = Arc::new(App {
        snapshot: ArcSwap::from_pointee(snapshot),
        egress,
        vault,
        tokens,
        metrics,
        options: opts,
        plugins,
        discoveries: proxy::Discoveries::default(),
        connections,
        bound: std::sync::OnceLock::new(),
        mcp: crate::mcp::Hub::new(),
        reload_lock: tokio::sync::Mutex::new(()),
        _registry_watcher: registry_watcher,
    });
    spawn_refresher(&app);
    crate::mcp::start(&app);
    let router = router(app.clone());
    Ok((app, listen, router))
}

/// The HTTP surface.
pub fn router(app: Arc<App>) -> Router {
    let identified = Router::new()
        .route("/v1/connectors/{id}", any(proxy::handle))
        .route("/v1/connectors/{id}/", any(proxy::handle))
        .route("/v1/connectors/{id}/{*path}", any(proxy::handle))
        .route("/metrics", get(metrics))
        .route("/api/whoami", get(whoami))
        .route("/api/registry", get(registry))
        .route("/api/connectors", get(admin::list))
        .route("/api/connectors/{id}/connect", post(admin::connect))
        .route("/api/connectors/{id}/connection", delete(admin::disconnect))
        .route("/aperture/auth/{id}/callback", get(admin::callback))
        .route(
            crate::mcp::ENDPOINT,
            any(crate::mcp::handle).with_state(crate::mcp::Entry::new(app.clone())),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), identify));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(identified)
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

/// Runs the server until SIGTERM or SIGINT; reloads on SIGHUP and when the file changes.
pub async fn serve(opts: Options) -> anyhow::Result<()> {
    let (app, listen, router) = build(opts).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}; is another process using it?"))?;
    let local = listener.local_addr()?;
    let _ = app.bound.set(local);
    tracing::info!(addr = %local, mode = ?app.snapshot().config.identity.mode, "portcullis listening");
    // A plain line on stdout for scripts and tests that wait for readiness.
    println!("portcullis listening on http://{local}");
    let _ = std::io::stdout().flush();

    if app.options.config.is_some() {
        spawn_reloaders(app.clone())?;
    }
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .context("server error")?;
    tracing::info!("portcullis stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

/// SIGHUP, and changes to the config file (watched through its directory, so editors
/// that replace the file by renaming are seen too), both trigger a reload.
fn spawn_reloaders(app: Arc<App>) -> anyhow::Result<()> {
    use notify::Watcher as _;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<&'static str>(8);

    let hup = tx.clone();
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while sighup.recv().await.is_some() {
            let _ = hup.send("SIGHUP").await;
        }
    });

    let path = app.options.config.clone().context("config path")?;
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let file_name = path.file_name().map(|n| n.to_owned());
    let fs_tx = tx.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            let ours = ev
                .paths
                .iter()
                .any(|p| p.file_name() == file_name.as_deref());
            if ours && (ev.kind.is_modify() || ev.kind.is_create()) {
                let _ = fs_tx.try_send("file change");
            }
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;

    tokio::spawn(async move {
        let _watcher = watcher; // lives as long as this task
        while let Some(why) = rx.recv().await {
            // Editors write in bursts: wait for quiet, then reload once.
            tokio::time::sleep(Duration::from_millis(200)).await;
            while rx.try_recv().is_ok() {}
            match app.reload().await {
                Ok(()) => tracing::info!(trigger = why, "new config in effect"),
                Err(e) => tracing::error!(
                    trigger = why,
                    "config reload rejected, the previous config keeps serving: {e}"
                ),
            }
        }
    });
    Ok(())
}

/// The caller's login, for the request log.
#[derive(Clone, Debug)]
struct CallerTag(String);

/// Identity before anything else: no caller, no service.
async fn identify(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let snapshot = app.snapshot();
    match snapshot.identity.identify(peer, req.headers()).await {
        Ok(caller) => {
            let login = caller.login.clone();
            // Handlers use this same snapshot, so a request sees one config throughout.
            req.extensions_mut().insert(snapshot.clone());
            req.extensions_mut().insert(caller);
            let mut resp = next.run(req).await;
            resp.extensions_mut().insert(CallerTag(login));
            resp
        }
        Err(IdentityError::Unknown(msg)) => {
            ApiError::unauthenticated(format!("cannot identify the caller: {msg}")).into_response()
        }
        Err(IdentityError::Unavailable(msg)) => ApiError::new(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "identity_unavailable",
            msg,
        )
        .into_response(),
    }
}

fn route_of(path: &str) -> &'static str {
    if path.starts_with(proxy::PREFIX) || path.starts_with("/v1/connectors") {
        "proxy"
    } else if path == "/healthz" {
        "healthz"
    } else if path == "/metrics" {
        "metrics"
    } else if path.starts_with("/api/") {
        "api"
    } else {
        "other"
    }
}

/// One log line and the metrics for every request.
async fn observe(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = route_of(req.uri().path());
    // Only built when the request log is on: this runs on every request.
    let header_names = tracing::enabled!(tracing::Level::INFO).then(|| {
        req.headers()
            .keys()
            .map(http::HeaderName::as_str)
            .collect::<Vec<_>>()
            .join(",")
    });
    let resp = next.run(req).await;
    let elapsed = started.elapsed();
    let status = resp.status().as_u16();
    let connector = resp
        .extensions()
        .get::<ConnectorTag>()
        .map(|t| t.0.as_str())
        .unwrap_or("");
    let caller = resp
        .extensions()
        .get::<CallerTag>()
        .map(|t| t.0.as_str())
        .unwrap_or("");
    let error = resp
        .extensions()
        .get::<ErrorCode>()
        .map(|e| e.0)
        .unwrap_or("");
    app.metrics.observe(route, connector, status, elapsed);
    if route != "healthz" {
        tracing::info!(
            route,
            connector,
            caller,
            method = %method,
            status,
            latency_us = elapsed.as_micros() as u64,
            error,
            headers = header_names.as_deref().unwrap_or_default(),
            "request"
        );
    }
    resp
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn metrics(
    State(app): State<Arc<App>>,
    Extension(snapshot): Extension<Arc<Snapshot>>,
    Extension(caller): Extension<Arc<Caller>>,
) -> Response {
    if !snapshot.policy.access(&caller).may_read_metrics() {
        return ApiError::forbidden(format!(
            "{} may not read metrics; grant role \"admin\" or {{\"read_metrics\": true}}",
            caller.login
        ))
        .into_response();
    }
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

/// Who the host thinks the caller is, and their role: the first thing to check when a
/// grant does not seem to work.
async fn whoami(
    Extension(snapshot): Extension<Arc<Snapshot>>,
    Extension(caller): Extension<Arc<Caller>>,
) -> Json<serde_json::Value> {
    let access = snapshot.policy.access(&caller);
    Json(serde_json::json!({
        "login": caller.login,
        "kind": format!("{:?}", caller.kind).to_lowercase(),
        "node": caller.node,
        "tags": caller.tags,
        "groups": caller.groups,
        "role": access.role(),
    }))
}

/// The provider registry for the picker: every loaded provider with its defaults, and
/// every entry that failed to load with the reason. Defaults hold no secrets, so any
/// identified caller may read them.
async fn registry(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(crate::plugins::registry_json(&app.plugins))
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!("nothing is served at {}", req.uri().path()))
}
