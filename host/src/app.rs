//! Wiring: builds the state from config, the router behind the front stages
//! ([`crate::front`]), the server, reloads and shutdown. Nothing
//! below this module imports it.
//!
//! A reload builds a new [`Snapshot`] and puts it in force with [`App::install`]; a
//! config that fails to load is logged and the old snapshot keeps serving.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::middleware;
use axum::routing::{delete, get, post, put};

use crate::admin;
use crate::config;
use crate::configure::{
    ConfigFile, HostSurroundings, Trigger, VaultView, build_snapshot, log_diagnostics, reload,
    validated,
};
use crate::connections::Connections;
use crate::credentials::TokenSlots;
use crate::egress::Egress;
use crate::front::Front;
use crate::plugins::Plugins;
use crate::state::Parts;
pub use crate::state::{App, Options, Snapshot};
use crate::telemetry::Metrics;
use crate::threads::{ConnectionThreads, Flavor};
use crate::vault;

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
            let live: Vec<_> = app.snapshot().per_user().cloned().collect();
            app.connections.refresh_due(&live).await;
            n = n.wrapping_add(1);
            if n.is_multiple_of(PURGE_EVERY) {
                let connections = app.connections.clone();
                let _ = tokio::task::spawn_blocking(move || connections.purge_pending()).await;
            }
        }
    });
}

/// Builds the state and router for `opts`, with `homes` for the work many connections
/// share. Returns the app and the address to bind.
pub async fn build(
    opts: Options,
    homes: crate::threads::Homes,
) -> anyhow::Result<(Arc<App>, SocketAddr, Front)> {
    let location = vault::Location::new(&opts.data_dir, opts.database_url.clone());
    // Replicas keep the config in their shared vault, so it is opened first, with the
    // key from the environment or the data directory (the config cannot name its own).
    let shared = if ConfigFile::stored(&opts) {
        Some(Arc::new(vault::open(
            &location,
            &opts.data_dir.join(vault::KEY_FILE),
        )?))
    } else {
        None
    };
    let file = match &shared {
        Some(v) => ConfigFile::in_store(v.clone()),
        None => ConfigFile::for_options(&opts),
    };
    let current = file.read()?;
    let settings: config::Peeked = config::peek(&current.text);
    let metrics = Metrics::new();
    let audit = match &opts.audit_log {
        Some(path) => crate::audit::Audit::to_file(path, metrics.audit_dropped.clone())?,
        None => crate::audit::Audit::to_log(),
    };

    // The registry first: the validator checks every connector's provider against it.
    let registry =
        crate::plugins::registry_dir(opts.registry.clone(), settings.registry.dir.clone())?;
    let plugins = Plugins::open(
        registry,
        Some(opts.data_dir.join("plugin-cache")),
        Some(metrics.clone()),
    )
    .await?;
    let key_file = settings
        .vault
        .key_file
        .clone()
        .unwrap_or_else(|| opts.data_dir.join(vault::KEY_FILE));
    // An existing vault is opened to check vault references against it; a new one is
    // created only once the config is known to be good, so a bad one leaves no key behind.
    let existing = if let Some(v) = shared {
        Some(v)
    } else if location.exists() {
        Some(Arc::new(vault::open(&location, &key_file)?))
    } else {
        None
    };
    let checked = validated(
        &current.text,
        &HostSurroundings {
            vault: existing
                .as_deref()
                .map_or(VaultView::Empty, VaultView::Open),
            plugins: Some(&plugins),
        },
    )?;
    let vault = match existing {
        Some(v) => v,
        None => Arc::new(vault::open(&location, &key_file)?),
    };

    let egress = Egress::new(&checked.0.egress)?;
    let tokens = TokenSlots::new(vault.clone(), metrics.clone());
    let snapshot = build_snapshot(checked, &vault, &tokens)?;
    // (`egress.allow_loopback` is among them, as a warning.)
    log_diagnostics(&snapshot.diagnostics);
    let listen = opts.listen.unwrap_or(snapshot.config.listen);
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
    let app = Arc::new(App::new(Parts {
        snapshot,
        egress,
        vault,
        tokens,
        metrics,
        options: opts,
        plugins,
        connections,
        audit,
        registry_watcher,
        config_hash: current.hash,
        homes,
    }));
    spawn_refresher(&app);
    tokio::spawn(Connections::follow_store(Arc::downgrade(&app.connections)));
    let mcp = crate::mcp::Gateway::start(app.clone());
    let front = router(app.clone(), mcp);
    Ok((app, listen, front))
}

/// The HTTP surface: the routes, behind the front stages ([`crate::front`]).
pub fn router(app: Arc<App>, mcp: Arc<crate::mcp::Gateway>) -> Front {
    use crate::admin::{__path_callback, __path_capabilities, __path_config_schema};
    use crate::admin::{__path_client_metadata, __path_connect, __path_disconnect};
    use crate::admin::{__path_healthz, __path_list};
    use crate::admin::{__path_metrics, __path_registry, __path_whoami};
    use crate::admin::{config as cfg, secrets};
    use crate::openapi::{__path_serve as __path_openapi, path_of};
    use crate::ui::{__path_asset, __path_index, __path_to_root};
    // Paths come from the handlers' OpenAPI annotations ([`crate::openapi`]). The proxy's
    // and `/v1/mcp` are not routed here: the front stages send them to their handlers
    // themselves (`front::Hot`); the proxy's annotation documents its forms as one
    // (`{path}` of any depth).
    let mcp_entry = crate::mcp::Entry::new(mcp.clone());
    let identified = Router::new()
        .route(&path_of::<__path_metrics>(), get(admin::metrics))
        .route(&path_of::<__path_whoami>(), get(admin::whoami))
        .route(&path_of::<__path_registry>(), get(admin::registry))
        .route(
            &path_of::<__path_config_schema>(),
            get(admin::config_schema),
        )
        .route(&path_of::<__path_openapi>(), get(crate::openapi::serve))
        .route(&path_of::<__path_list>(), get(admin::list))
        .route(&path_of::<__path_connect>(), post(admin::connect))
        .route(&path_of::<__path_disconnect>(), delete(admin::disconnect))
        .route(
            &path_of::<__path_capabilities>(),
            get(admin::capabilities).with_state(mcp.clone()),
        )
        .route(&path_of::<cfg::__path_get>(), get(cfg::get).put(cfg::put))
        .route(&path_of::<cfg::__path_validate>(), post(cfg::validate))
        .route(
            &path_of::<cfg::__path_add_from_template>(),
            post(cfg::add_from_template),
        )
        .route(
            &path_of::<cfg::__path_get_connector>(),
            get(cfg::get_connector)
                .put(cfg::put_connector)
                .delete(cfg::delete_connector),
        )
        .route(&path_of::<secrets::__path_list>(), get(secrets::list))
        .route(
            &path_of::<secrets::__path_put>(),
            put(secrets::put).delete(secrets::delete),
        )
        .route(&path_of::<__path_callback>(), get(admin::callback))
        .route(
            &path_of::<crate::mcp::__path_handle_one>(),
            post(crate::mcp::handle_one)
                .get(crate::mcp::handle_one)
                .delete(crate::mcp::handle_one)
                .with_state(mcp_entry.clone()),
        )
        .fallback(admin::not_found)
        .layer(middleware::from_fn(crate::front::identify));
    let router = Router::new()
        .route(&path_of::<__path_healthz>(), get(admin::healthz))
        .route(
            &path_of::<__path_client_metadata>(),
            get(admin::client_metadata),
        )
        .route("/", get(crate::ui::to_root))
        .route(&path_of::<__path_to_root>(), get(crate::ui::to_root))
        .route(&path_of::<__path_index>(), get(crate::ui::index))
        .route(&path_of::<__path_asset>(), get(crate::ui::asset))
        .merge(identified)
        .with_state(app.clone());
    Front::new(app, router, mcp_entry)
}

/// Runs the server until SIGTERM or SIGINT; reloads on SIGHUP and when the file changes.
///
/// Everything that can be found wrong is found before the first request: the data
/// directory, the port (bound before a new data directory gets its master key), the
/// config, and an identity source that cannot work where it listens.
pub async fn serve(opts: Options) -> anyhow::Result<()> {
    if opts.data_dir.exists() && !opts.data_dir.is_dir() {
        anyhow::bail!(
            "the data directory {} is a file; point --data-dir (or PORTCULLIS_DATA_DIR) at a directory, which is created if missing",
            opts.data_dir.display()
        );
    }
    let bind = async |listen: SocketAddr| {
        tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}; is another process using it?"))
    };
    // The port first, so a new data directory gets no master key when it is taken; a
    // config kept in the shared vault names its port only once the vault is open.
    let early = if let Some(l) = opts.listen {
        Some(bind(l).await?)
    } else if ConfigFile::stored(&opts) {
        None
    } else {
        let listen = ConfigFile::for_options(&opts)
            .read()
            .ok()
            .and_then(|c| config::peek::<config::PeekedListen>(&c.text).listen)
            .unwrap_or_else(|| {
                config::DEFAULT_LISTEN
                    .parse()
                    .expect("the default listen address parses")
            });
        Some(bind(listen).await?)
    };
    // Before the state, whose first catalog loads open upstream MCP sessions on them.
    let threads = connection_threads(&opts);
    let homes = threads
        .as_ref()
        .map(ConnectionThreads::homes)
        .unwrap_or_default();
    let (app, configured, front) = build(opts, homes).await?;
    let listener = match early {
        Some(l) => l,
        None => bind(configured).await?,
    };
    let listen = listener.local_addr()?;
    check_identity_source(&app.snapshot().config, listen)?;
    watch_identity_source(&app).await;
    let local = listener.local_addr()?;
    let _ = app.bound.set(local);
    tracing::info!(addr = %local, mode = ?app.snapshot().config.identity.mode, "portcullis listening");
    // A plain line on stdout for scripts and tests that wait for readiness, after
    // everything logged so far (the log is written by a thread of its own).
    crate::telemetry::flush_log(Duration::from_secs(1));
    println!("portcullis listening on http://{local}");
    let _ = std::io::stdout().flush();

    spawn_reloaders(app.clone())?;
    accept(listener, front, threads).await;
    // The last audit records and spans, before the process ends (both block, so off the
    // runtime).
    let last = app.clone();
    let _ = tokio::task::spawn_blocking(move || {
        last.audit.flush(Duration::from_secs(5));
        crate::telemetry::otel::flush();
    })
    .await;
    tracing::info!("portcullis stopped");
    Ok(())
}

/// `serve-headers` trusts identity headers from loopback peers, which only `tailscale
/// serve` on the same machine should be: listening anywhere else can only refuse
/// everyone, so it is a mistake, and even on loopback every local process can claim any
/// identity, which the operator is told.
fn check_identity_source(config: &config::Config, listen: SocketAddr) -> anyhow::Result<()> {
    if config.identity.mode != config::IdentityMode::ServeHeaders {
        return Ok(());
    }
    crate::configure::identity_fits_listen(config.identity.mode, listen)
        .map_err(anyhow::Error::msg)?;
    tracing::warn!(
        "identity.mode is \"serve-headers\": any process on this machine can claim any tailnet identity by sending Tailscale-User-* headers; run it only where every local process is trusted, behind `tailscale serve`"
    );
    Ok(())
}

/// How often readiness asks tailscaled's LocalAPI whether it answers.
const IDENTITY_PROBE_EVERY: Duration = Duration::from_secs(5);

/// In `tailscale` mode, every request needs tailscaled: checked once now (a loud warning
/// if it cannot be reached), then every few seconds for `/healthz`, which answers 503
/// until it can. Follows reloads (the mode or the socket may change).
async fn watch_identity_source(app: &Arc<App>) {
    async fn probe(app: &App) -> Option<String> {
        let snap = app.snapshot();
        let id = &snap.config.identity;
        if id.mode != config::IdentityMode::Tailscale {
            return None;
        }
        crate::identity::tailscaled_reachable(&id.socket)
            .await
            .err()
            .map(|e| format!("{e}: every request gets 503 identity_unavailable until it can; start tailscaled, or fix identity.socket"))
    }
    let first = probe(app).await;
    if let Some(why) = &first {
        tracing::error!("{why}");
    }
    app.set_not_ready(first);
    let weak = Arc::downgrade(app);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(IDENTITY_PROBE_EVERY).await;
            let Some(app) = weak.upgrade() else { return };
            let why = probe(&app).await;
            if app.set_not_ready(why.clone()) {
                match why {
                    Some(why) => tracing::error!("{why}"),
                    None => tracing::info!("tailscaled's LocalAPI answers again; serving"),
                }
            }
        }
    });
}

/// Waits, at most [`crate::limits::HEADER_READ_TIMEOUT`], until a new connection has sent
/// enough to tell HTTP/1.1 from HTTP/2 (a byte that is not the HTTP/2 preface's, or the
/// whole preface). The server's own head timeout starts only after that, so without
/// this a connection that sends nothing would hold its slot for ever.
async fn first_bytes(stream: &tokio::net::TcpStream) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let wait = async {
        let mut buf = [0u8; PREFACE.len()];
        loop {
            match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) if n == PREFACE.len() || buf[..n] != PREFACE[..n] => return true,
                // Part of the preface so far: peek again once more has come.
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    };
    tokio::time::timeout(crate::limits::HEADER_READ_TIMEOUT, wait)
        .await
        .unwrap_or(false)
}

/// How long a shutdown waits for requests in flight before closing their connections:
/// under the 10 s container runtimes give before SIGKILL, since open MCP streams never
/// end by themselves.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);
/// How long the connection threads then have to drop what was cut off (and log it):
/// short, since the audit flush that follows needs what is left of the 10 s.
const THREADS_GRACE: Duration = Duration::from_millis(500);

/// The connection threads ([`crate::threads`]), or `None` (they could not start) to
/// serve every connection on the main runtime. With a PostgreSQL vault the few vault
/// calls a request makes in place wait on the database, so its threads run a runtime
/// where such a wait holds only its own request.
fn connection_threads(opts: &Options) -> Option<ConnectionThreads> {
    let flavor = match vault::Location::new(&opts.data_dir, opts.database_url.clone()) {
        vault::Location::Postgres(_) => Flavor::OneWorker,
        vault::Location::Redb { .. } => Flavor::SingleThreaded,
    };
    ConnectionThreads::per_core(flavor)
        .inspect_err(|e| tracing::warn!("serving connections on the main runtime: {e:#}"))
        .ok()
}

/// Serves HTTP/1.1 and HTTP/2 on `listener` until SIGTERM or SIGINT, then lets requests
/// in flight finish. The server's own head limits sit above [`crate::limits`], so
/// oversized requests are answered by the host in JSON, not by the server's bare status.
async fn accept(
    listener: tokio::net::TcpListener,
    front: Front,
    threads: Option<ConnectionThreads>,
) {
    use crate::limits;
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

    let mut server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    server
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits::HEADER_READ_TIMEOUT)
        .max_headers(limits::SERVER_MAX_HEADERS)
        .max_buf_size(limits::SERVER_MAX_HEAD_BYTES);
    server
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits::HEADER_READ_TIMEOUT)
        .max_header_list_size(limits::SERVER_MAX_HEAD_BYTES as u32);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let open = Arc::new(tokio::sync::Semaphore::new(limits::MAX_CONNECTIONS));
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = open.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break, // never closed
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = crate::front::for_connection(front.clone(), peer);
        let (server, watcher) = (server.clone(), graceful.watcher());
        // Handed over unregistered: the thread that serves it registers it with its own
        // runtime's I/O driver.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%peer, "cannot hand over a connection: {e}");
                continue;
            }
        };
        let serve = async move {
            let stream = match tokio::net::TcpStream::from_std(stream) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, "cannot serve a connection: {e}");
                    return;
                }
            };
            if !first_bytes(&stream).await {
                tracing::debug!(%peer, "closed a connection that sent no request in time");
                return; // the permit goes with it
            }
            let conn = server.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            drop(permit);
        };
        match &threads {
            Some(threads) => threads.run(serve),
            None => {
                tokio::spawn(serve);
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still in flight after {} s were cut off",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    if let Some(threads) = threads {
        threads.stop(THREADS_GRACE).await;
    }
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
    let (tx, rx) = tokio::sync::mpsc::channel::<Trigger>(8);

    let hup = tx.clone();
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while sighup.recv().await.is_some() {
            let _ = hup.send(Trigger::Always).await;
        }
    });

    let file = ConfigFile::of(&app);
    let Some(path) = file.path().map(Path::to_path_buf) else {
        // The config is in the shared vault: follow what other replicas save.
        if let Some(mut changes) = app.vault.changes() {
            let store_tx = tx.clone();
            tokio::spawn(async move {
                use crate::vault::{Table, store::Change};
                loop {
                    let trigger = match changes.recv().await {
                        Ok(Change::Record {
                            table: Table::Config,
                            ..
                        })
                        | Ok(Change::Resync)
                        | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            Trigger::FileChanged
                        }
                        Ok(Change::Record { .. }) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    };
                    if store_tx.send(trigger).await.is_err() {
                        return;
                    }
                }
            });
        }
        spawn_reload_loop(app, rx, None);
        return Ok(());
    };
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
                let _ = fs_tx.try_send(Trigger::FileChanged);
            }
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    spawn_reload_loop(app, rx, Some(watcher));
    Ok(())
}

/// Reloads once per burst of triggers. `watcher` lives as long as the loop.
fn spawn_reload_loop(
    app: Arc<App>,
    mut rx: tokio::sync::mpsc::Receiver<Trigger>,
    watcher: Option<notify::RecommendedWatcher>,
) {
    tokio::spawn(async move {
        let _watcher = watcher;
        while let Some(why) = rx.recv().await {
            // Editors write in bursts: wait for quiet, then reload once.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut trigger = why;
            while let Ok(also) = rx.try_recv() {
                if also == Trigger::Always {
                    trigger = also;
                }
            }
            match reload(&app, trigger).await {
                Ok(false) => {}
                Ok(true) => tracing::info!(?trigger, "new config in effect"),
                Err(e) => tracing::error!(
                    ?trigger,
                    "config reload rejected, the previous config keeps serving: {e}"
                ),
            }
        }
    });
}
