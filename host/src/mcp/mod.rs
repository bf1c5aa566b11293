//! The aggregated MCP endpoint `/v1/mcp`: one MCP server in front of every granted MCP
//! connector, the built-in `aperture` connector and the tools of provider plugins.
//!
//! # Layout
//!
//! - `transport`: rmcp's HTTP client over the outbound pipeline, so every upstream MCP
//!   message carries the connector's (or the user's) credential, renewed on a 401.
//! - [`upstream`]: one [`upstream::Session`] per shared connector, or per (user,
//!   connector) for per-user OAuth. Streamable HTTP first; a server that refuses it
//!   with a 4xx gets `legacy`, the HTTP+SSE transport of MCP 2024-11-05.
//! - `per_thread`: with a server that names no session, a session of its own on each
//!   connection thread, so calls do not cross to the shared session's thread.
//! - `catalog` (this file): [`Hub`] keeps the upstreams and their catalogs. Shared
//!   connectors are discovered in the background (at start, on reload, every
//!   `mcp.poll_interval_secs`, and at once on the upstream's `list_changed`); per-user ones
//!   on the user's first request, then again when stale.
//! - `server`: the rmcp [`rmcp::ServerHandler`] that names, filters and routes, and the
//!   HTTP entry that serves sessionless requests statelessly and keeps sessions to the
//!   caller that opened them.
//! - `direct`: a sessionless `tools/call` that can be sent nothing while it runs, handed
//!   to the same handler without starting an rmcp service for it.
//! - `rounds`: multi round-trip requests (2026-07-28): an upstream's question to a
//!   client without a session goes back in an `InputRequiredResult`, the upstream call
//!   parked until the client answers with its next round.
//! - `builtin`: `aperture_list_connectors`, and plugin tools run through the outbound
//!   pipeline with the caller's credential.
//! - `sessions`: sessions sealed into a shared vault, so they move between replicas.
//! - `template`: RFC 6570 matching, for reads of URIs a granted resource template makes.
//!
//! Names: tools `<id>_<tool>`, prompts `<id>_<prompt>`, resources `<id>-<uri>`,
//! templates `<id>-<uriTemplate>`. Connector IDs have neither `_` nor `-`, so the first
//! one splits a name unambiguously. `/v1/mcp/<id>` serves one connector with its names
//! unprefixed ([`Scope`]): the prefix is added to what comes in and taken off what goes
//! out, so routing and grants see the same names on both endpoints.
//! [`visible`] is the one grant decision for listing and for use.

mod builtin;
mod direct;
mod legacy;
mod per_thread;
mod rounds;
mod server;
mod sessions;
pub(crate) mod template;
mod transport;
pub mod upstream;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rmcp::model::{Prompt, Resource, ResourceTemplate, Tool};
use tokio::sync::Notify;

use crate::config::Protocol;
use crate::connections::Status;
use crate::connector::Connector;
use crate::credentials::Credential;
use crate::identity::Caller;
use crate::policy::Access;
use crate::state::App;
use crate::state::Snapshot;
use transport::UpstreamHttp;
use upstream::{Flavor, Listener, Listing, Session, Unrelayed};

/// The MCP side of the gateway: the shared state, and the [`Hub`] of upstream sessions
/// and open client sessions. Reads of the shared state go through to [`App`].
pub struct Gateway {
    pub app: Arc<App>,
    pub hub: Hub,
}

impl std::ops::Deref for Gateway {
    type Target = App;

    fn deref(&self) -> &App {
        &self.app
    }
}

impl Gateway {
    /// Starts the MCP side: catalogs now, and the background work that follows configs,
    /// connections, the registry and idle sessions.
    pub fn start(app: Arc<App>) -> Arc<Self> {
        let gw = Arc::new(Self {
            app,
            hub: Hub::new(),
        });
        start(&gw);
        gw
    }
}

pub use server::{__path_handle, __path_handle_one, ENDPOINT, Entry, handle, handle_one};

/// What an MCP name refers to, as grants see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tool,
    Prompt,
    Resource,
    Template,
}

impl Kind {
    fn category(self) -> &'static str {
        match self {
            Self::Tool => "tools",
            Self::Prompt => "prompts",
            Self::Resource => "resources",
            Self::Template => "templates",
        }
    }

    fn separator(self) -> char {
        match self {
            Self::Tool | Self::Prompt => '_',
            Self::Resource | Self::Template => '-',
        }
    }
}

/// Which connectors an MCP endpoint serves: all of them with prefixed names (`/v1/mcp`),
/// or one with its upstream's own names (`/v1/mcp/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Scope {
    #[default]
    All,
    One(Arc<str>),
}

impl Scope {
    /// A name as a client of this endpoint sent it, as the aggregated endpoint names it.
    pub fn inbound<'a>(&self, kind: Kind, name: &'a str) -> std::borrow::Cow<'a, str> {
        match self {
            Self::All => name.into(),
            Self::One(id) => prefixed(id, kind, name).into(),
        }
    }

    /// An aggregated name as a client of this endpoint sees it.
    pub fn outbound(&self, kind: Kind, name: &str) -> String {
        match self {
            Self::One(id) => match split(kind, name) {
                Some((of, rest)) if of == &**id => rest.to_owned(),
                _ => name.to_owned(),
            },
            Self::All => name.to_owned(),
        }
    }
}

/// The grant decision for one upstream name, used by listing and by calls alike.
pub fn visible(access: &Access<'_>, connector: &str, kind: Kind, name: &str) -> bool {
    grant(access, connector, kind, name).is_some()
}

/// [`visible`], naming the grant that allows it (for the audit trail).
pub fn grant(
    access: &Access<'_>,
    connector: &str,
    kind: Kind,
    name: &str,
) -> Option<crate::policy::GrantRef> {
    access.grant_for(connector, kind.category(), name)
}

/// `<connector><sep><name>`.
pub fn prefixed(connector: &str, kind: Kind, name: &str) -> String {
    let mut s = String::with_capacity(connector.len() + 1 + name.len());
    s.push_str(connector);
    s.push(kind.separator());
    s.push_str(name);
    s
}

/// Splits an aggregated name into connector and upstream name.
pub fn split(kind: Kind, full: &str) -> Option<(&str, &str)> {
    full.split_once(kind.separator())
        .filter(|(id, rest)| crate::config::valid_connector_id(id) && !rest.is_empty())
}

/// SEP-986: 1 to 128 characters from `[A-Za-z0-9_.-]`.
pub fn valid_tool_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Keeps the tools whose prefixed names are valid. The others are logged when they
/// first appear, not on every poll; `left_out` holds the names dropped last time.
fn usable(connector: &str, mut listing: Listing, left_out: &mut Vec<String>) -> Listing {
    let mut dropped = Vec::new();
    listing.tools.retain(|t| {
        let ok = valid_tool_name(&prefixed(connector, Kind::Tool, &t.name));
        if !ok {
            if !left_out.iter().any(|n| *n == *t.name) {
                tracing::warn!(
                    connector,
                    tool = %t.name.chars().take(200).collect::<String>(),
                    "upstream tool left out: its prefixed name is not a valid MCP tool name (1-128 of A-Z a-z 0-9 _ . -)"
                );
            }
            dropped.push(t.name.to_string());
        }
        ok
    });
    *left_out = dropped;
    listing
}

/// What identifies an upstream across reloads: its URL and credential fingerprint. A
/// reload that changes neither keeps the session.
fn upstream_key(c: &Connector) -> Option<String> {
    let url = c.url.as_ref()?;
    Some(format!("{url}\n{}", c.credential.fingerprint()))
}

/// Longest wait to open an upstream session (the `initialize` handshake, and over
/// HTTP+SSE the `endpoint` event). The upstream's session lock is held meanwhile, so
/// callers of a server that hangs wait this long, not the whole read timeout.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// `opening` (a session's `initialize` handshake) if it completes within
/// [`OPEN_TIMEOUT`].
async fn within_open_timeout<T>(
    opening: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(OPEN_TIMEOUT, opening)
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "the MCP server did not complete the initialize handshake within {} s",
                OPEN_TIMEOUT.as_secs()
            ))
        })
}

/// Ends `s` unless a call still holds it (the last holder's drop then ends it).
async fn close(s: Arc<Session>) {
    if let Ok(s) = Arc::try_unwrap(s) {
        s.close().await;
    }
}

/// How long calls on a connection thread whose own session with a server that names no
/// session could not be opened keep to the shared session before another is tried.
const PER_THREAD_RETRY: Duration = Duration::from_secs(30);

/// Least time between two listings an upstream gets because a caller named something its
/// catalog lacks (see [`Upstream::find_listed`]).
const RELIST_ON_MISS: Duration = Duration::from_secs(1);

/// One upstream MCP server as one identity sees it (the connector's shared credential,
/// or one user's token).
pub struct Upstream {
    connector: Arc<Connector>,
    /// URL and credential fingerprint: a reload that changes neither keeps the session.
    key: String,
    http: UpstreamHttp,
    url: url::Url,
    session: tokio::sync::Mutex<Slot>,
    listing: RwLock<Arc<Listing>>,
    state: Mutex<UpstreamState>,
    /// Rings when the upstream announced a change.
    wake: Arc<Notify>,
    hub_changed: Arc<Notify>,
    /// Client sessions subscribed to this upstream's resources.
    pub(crate) subscribers: Arc<upstream::Subscribers>,
    /// Held while the upstream's subscriptions change (see `server`'s `subscribe`).
    pub(crate) subscribing: tokio::sync::Mutex<()>,
    /// Held while a caller's miss lists the upstream again, so misses arriving together
    /// wait for that one listing (see [`Upstream::find_listed`]).
    relisting: tokio::sync::Mutex<()>,
    /// Where its per-user session's log messages about no call go.
    logs: tokio::sync::mpsc::Sender<UpstreamLog>,
    /// The refresher task of a shared connector, stopped when the upstream goes.
    task: Mutex<Option<tokio::task::AbortHandle>>,
    /// Whose view this is (`None`: the shared credential's), for health reports.
    user: Option<String>,
    health: Arc<crate::health::Health>,
    /// Where its session runs, and its key there (the connector, and the user of a
    /// per-user view), so sessions spread over the connection threads.
    homes: crate::threads::Homes,
    home: String,
    /// The index of the home's connection thread.
    home_index: Option<usize>,
    /// With a server that names no session: a session on each other connection thread.
    per_thread: per_thread::PerThread<Session>,
}

/// The live session, and the transport to try first when opening the next one.
struct Slot {
    live: Option<Arc<Session>>,
    /// The transport that worked last.
    flavor: Flavor,
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            live: None,
            flavor: Flavor::Streamable,
        }
    }
}

#[derive(Default)]
struct UpstreamState {
    loaded_at: Option<Instant>,
    /// When a caller's miss last listed the upstream again.
    relisted_at: Option<Instant>,
    failing: Option<String>,
    last_used: Option<Instant>,
    /// Tool names left out of the last listing (already logged).
    left_out: Vec<String>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
    }
}

impl Upstream {
    /// The upstream of `connector` as `user` sees it (`None`: the shared credential).
    fn new(app: &Gateway, connector: Arc<Connector>, user: Option<&str>) -> Option<Arc<Self>> {
        let url = connector.url.clone()?;
        let key = upstream_key(&connector)?;
        let home = match user {
            Some(u) => format!("{}\n{u}", connector.id),
            None => connector.id.to_string(),
        };
        let hub = &app.hub;
        Some(Arc::new(Self {
            http: UpstreamHttp::new(
                app.outbound.clone(),
                connector.clone(),
                user.map(Into::into),
            ),
            connector,
            key,
            url,
            session: tokio::sync::Mutex::default(),
            listing: RwLock::new(Arc::default()),
            state: Mutex::default(),
            wake: Arc::new(Notify::new()),
            hub_changed: hub.changed.clone(),
            subscribers: Arc::default(),
            subscribing: tokio::sync::Mutex::default(),
            relisting: tokio::sync::Mutex::default(),
            logs: hub.logs.clone(),
            task: Mutex::new(None),
            home_index: app.homes.index_of(&home),
            home,
            user: user.map(Into::into),
            health: app.health.clone(),
            per_thread: per_thread::PerThread::new(app.homes.count(), PER_THREAD_RETRY),
            homes: app.homes.clone(),
        }))
    }

    fn listing(&self) -> Arc<Listing> {
        self.listing
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What `find` finds in the catalog, which is listed again first when `find` finds
    /// nothing. The upstream may offer what a caller names before this gateway has listed
    /// it: the caller heard `list_changed` through another replica, or this replica's
    /// refresh is still on its way. Such a call then runs instead of being refused. A miss
    /// lists again at most once per [`RELIST_ON_MISS`] and misses arriving together share
    /// one listing, so naming what does not exist cannot make every call a listing.
    pub(crate) async fn find_listed<T>(&self, find: impl Fn(&Listing) -> Option<T>) -> Option<T> {
        if let Some(found) = find(&self.listing()) {
            return Some(found);
        }
        let _one = self.relisting.lock().await;
        let due = {
            let mut st = self.state();
            let due = st.relisted_at.is_none_or(|t| t.elapsed() >= RELIST_ON_MISS);
            if due {
                st.relisted_at = Some(Instant::now());
            }
            due
        };
        if due {
            self.refresh().await;
        }
        find(&self.listing())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, UpstreamState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session for a call from here: this connection thread's own, with a server
    /// that names no session (`per_thread`), once it is open; else the shared one,
    /// opened now if there is none or it broke.
    async fn session(&self) -> anyhow::Result<Arc<Session>> {
        if let Some(own) = self.per_thread.here(self.home_index) {
            return Ok(own);
        }
        let shared = self.shared_session().await?;
        if shared.stateless() {
            self.per_thread.open_here(self.home_index, || {
                let (http, listener) = self.session_parts();
                let (url, id) = (self.url.clone(), self.connector.id.clone());
                Box::pin(async move {
                    Session::open_stateless(http, &url, listener)
                        .await
                        .inspect_err(|e| {
                            tracing::info!(
                                connector = %id,
                                "could not open a session of this connection thread's own with the MCP server; calls here use the shared session for {} s: {e:#}",
                                PER_THREAD_RETRY.as_secs()
                            )
                        })
                })
            });
        }
        Ok(shared)
    }

    /// The shared session, opened now if there is none or it broke.
    async fn shared_session(&self) -> anyhow::Result<Arc<Session>> {
        let mut slot = self.session.lock().await;
        if let Some(s) = slot.live.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let (http, listener) = self.session_parts();
        // Boxed: opening is rare, and its large future would otherwise sit inline in
        // every call's future, which rmcp's tasks copy on each request.
        // Opened on its home connection thread, where its tasks then run for every
        // caller (`threads::Homes`).
        let (url, flavor) = (self.url.clone(), slot.flavor);
        let open = Box::pin(self.homes.run(&self.home, async move {
            Session::open(http, &url, listener, flavor).await
        }));
        let s = match within_open_timeout(open).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                // The server may have changed transport: start from streamable HTTP again.
                slot.flavor = Flavor::Streamable;
                return Err(e.context("could not open a session with the MCP server"));
            }
        };
        slot.flavor = s.flavor();
        slot.live = Some(s.clone());
        drop(slot);
        // A server that now names a session keeps its state there: the threads' own
        // sessions would split it.
        if !s.stateless() {
            for own in self.per_thread.take_all() {
                tokio::spawn(close(own));
            }
        }
        self.subscribe_again(&s);
        Ok(s)
    }

    /// A new session's HTTP client and listener, reporting to this upstream.
    fn session_parts(&self) -> (UpstreamHttp, Listener) {
        let wake = self.wake.clone();
        let (logs, connector, user) = (
            self.logs.clone(),
            self.connector.id.clone(),
            self.user.clone(),
        );
        let unrelayed = Arc::new(Unrelayed::default());
        let listener = Listener::new(
            Arc::new(move || wake.notify_one()),
            self.subscribers.clone(),
            Arc::new(move |params| {
                // A shared session's log message about no call is nobody's to hear
                // (`server::deliver_log`): not even queued.
                if user.is_none() {
                    return;
                }
                let log = UpstreamLog {
                    connector: connector.clone(),
                    user: user.clone(),
                    params,
                };
                if logs.try_send(log).is_err() {
                    tracing::debug!("dropped an upstream log message: too many waiting");
                }
            }),
            self.user.is_some(),
            unrelayed.clone(),
        );
        let mut http = self.http.clone();
        http.unrelayed = Some(unrelayed);
        (http, listener)
    }

    /// Subscriptions belong to a session: a new one subscribes to every URI that still
    /// has a subscriber, in the background (an upstream slow to answer holds nobody up),
    /// each within the open timeout.
    fn subscribe_again(&self, s: &Arc<Session>) {
        let uris = self.subscribers.uris();
        if uris.is_empty() {
            return;
        }
        let (s, id) = (s.clone(), self.connector.id.clone());
        tokio::spawn(async move {
            for uri in uris {
                match tokio::time::timeout(OPEN_TIMEOUT, s.subscribe(&uri)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(connector = %id, "could not subscribe again to a resource on the new MCP session: {e}")
                    }
                    Err(_) => {
                        tracing::warn!(connector = %id, "the MCP server did not answer a resource subscription on the new session")
                    }
                }
            }
        });
    }

    /// Forgets `broken` (if it is still the current session, shared or a thread's own)
    /// so the next use reconnects.
    async fn reset(&self, broken: &Arc<Session>) {
        if self.per_thread.forget(broken) {
            return;
        }
        let mut slot = self.session.lock().await;
        if slot.live.as_ref().is_some_and(|s| Arc::ptr_eq(s, broken)) {
            slot.live = None;
        }
    }

    async fn close(&self) {
        let shared = self.session.lock().await.live.take();
        for s in shared.into_iter().chain(self.per_thread.take_all()) {
            close(s).await;
        }
    }

    /// Runs `op` on the session; a connection that broke before the server took the
    /// message gets one more try on a new session (see [`upstream::worth_retrying`]).
    /// An answer that does not come within the egress read timeout fails the request and
    /// sends the next one to a new session (a silent server or event stream is broken).
    async fn with_session<T, F, Fut>(&self, op: F) -> anyhow::Result<T>
    where
        F: Fn(Arc<Session>) -> Fut,
        Fut: std::future::Future<Output = Result<T, rmcp::service::ServiceError>>,
    {
        self.state().last_used = Some(Instant::now());
        let s = self.session().await?;
        // Boxed where it is made: the request's future (rmcp's send and wait, about 4 KB)
        // would otherwise be copied into each layer above it that awaits it, once per
        // layer and call.
        match self.answer(&s, Box::pin(op(s.clone()))).await? {
            Err(e) if upstream::worth_retrying(&e, s.flavor()) => {
                tracing::info!(connector = %self.connector.id, "upstream MCP connection broke ({e}); retrying once on a new session");
                self.reset(&s).await;
                let s = self.session().await?;
                let answer = self.answer(&s, Box::pin(op(s.clone()))).await?;
                answer.map_err(anyhow::Error::from)
            }
            Err(rmcp::service::ServiceError::TransportClosed) => {
                self.reset(&s).await;
                Err(anyhow::anyhow!(
                    "the MCP server's event stream closed before it answered; the call may have run, so it was not repeated"
                ))
            }
            other => other.map_err(anyhow::Error::from),
        }
    }

    /// Waits for `answer` up to the egress read timeout.
    async fn answer<T>(
        &self,
        s: &Arc<Session>,
        answer: impl std::future::Future<Output = T>,
    ) -> anyhow::Result<T> {
        let limit = self.http.read_timeout();
        match tokio::time::timeout(limit, answer).await {
            Ok(a) => Ok(a),
            Err(_) => {
                self.reset(s).await;
                Err(anyhow::anyhow!(
                    "the MCP server did not answer within {} s (egress.read_timeout_secs)",
                    limit.as_secs()
                ))
            }
        }
    }

    /// Asks the upstream for its catalog ([`Upstream::load_catalog`]). Boxed: a request
    /// waits for it only on a first use or a miss, and inline its large future would sit
    /// in every call's future, which rmcp's tasks copy on each request.
    fn refresh(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(self.load_catalog())
    }

    /// Asks the upstream for its catalog. A failure empties the catalog and logs why
    /// (once per new reason); success after failure logs the recovery.
    async fn load_catalog(&self) {
        let id = self.connector.id.as_str();
        let result = self.with_session(|s| async move { s.list().await }).await;
        let report = match &result {
            Ok(listing) => Ok(Some(listing.tools.len())),
            Err(e) => Err(format!("{e:#}")),
        };
        self.health.record(
            id,
            self.user.as_deref(),
            crate::health::Check::McpCatalog,
            report.as_ref().map(|t| *t).map_err(String::as_str),
        );
        let new = match result {
            Ok(listing) => {
                let was = self.state().failing.take();
                if was.is_some() {
                    tracing::info!(
                        connector = id,
                        "MCP server reachable again; its tools are listed again"
                    );
                }
                let mut left_out = std::mem::take(&mut self.state().left_out);
                let listing = usable(id, listing, &mut left_out);
                self.state().left_out = left_out;
                listing
            }
            Err(e) => {
                let why = format!("{e:#}");
                {
                    let mut st = self.state();
                    if st.failing.as_deref() != Some(why.as_str()) {
                        tracing::warn!(connector = id, error = %why, "MCP server discovery failed; its tool list is empty until it recovers");
                    }
                    st.failing = Some(why);
                }
                // Whichever session failed, every one starts again.
                self.session.lock().await.live.take();
                drop(self.per_thread.take_all());
                Listing::default()
            }
        };
        self.state().loaded_at = Some(Instant::now());
        let changed = {
            let mut cur = self.listing.write().unwrap_or_else(|p| p.into_inner());
            let changed = **cur != new;
            if changed {
                *cur = Arc::new(new);
            }
            changed
        };
        if changed {
            self.hub_changed.notify_one();
        }
    }
}

/// Keeps `up`'s catalog current: on the upstream's `list_changed`, and every `poll`
/// (read each time, so a reload's new interval applies) when given. Stops when the
/// upstream is dropped, or aborted through `up.task`.
fn spawn_refresher(up: &Arc<Upstream>, poll: Option<Arc<AtomicU64>>, now: bool) {
    let weak = Arc::downgrade(up);
    let wake = up.wake.clone();
    let task = tokio::spawn(async move {
        let mut wait = !now;
        loop {
            if wait {
                match &poll {
                    Some(p) => {
                        let every = Duration::from_secs(p.load(Ordering::Relaxed).max(1));
                        tokio::select! {
                            () = tokio::time::sleep(every) => {}
                            () = wake.notified() => {}
                        }
                    }
                    None => wake.notified().await,
                }
            }
            wait = true;
            let Some(up) = weak.upgrade() else { return };
            up.refresh().await;
        }
    });
    *up.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
}

/// A log message a per-user upstream session sent about no call: for that user's client
/// sessions that see the upstream (see [`server::deliver_log`]).
pub struct UpstreamLog {
    connector: String,
    /// Whose per-user session it came from (`None`: the shared one).
    user: Option<String>,
    #[allow(deprecated)] // Logging is deprecated by SEP-2577, not yet gone.
    params: rmcp::model::LoggingMessageNotificationParam,
}

/// How many log messages may wait for delivery before more are dropped.
const LOG_QUEUE: usize = 1024;

/// The upstreams and their catalogs, and the open client sessions to tell about changes.
pub struct Hub {
    shared: Mutex<HashMap<String, Arc<Upstream>>>,
    users: Mutex<HashMap<(String, String), Arc<Upstream>>>,
    /// Rings when any catalog or the config changed; the notifier then checks sessions.
    changed: Arc<Notify>,
    sessions: server::Sessions,
    /// Calls parked between a 2026-07-28 client's rounds.
    rounds: Arc<rounds::Rounds>,
    plugin_tools: Mutex<HashMap<String, Arc<Vec<Tool>>>>,
    /// `mcp.poll_interval_secs` of the current config, read by the refreshers.
    poll: Arc<AtomicU64>,
    logs: tokio::sync::mpsc::Sender<UpstreamLog>,
    /// The other end of `logs`, taken by the delivery task at start.
    log_queue: Mutex<Option<tokio::sync::mpsc::Receiver<UpstreamLog>>>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        let (logs, log_queue) = tokio::sync::mpsc::channel(LOG_QUEUE);
        Self {
            logs,
            log_queue: Mutex::new(Some(log_queue)),
            shared: Mutex::default(),
            users: Mutex::default(),
            changed: Arc::new(Notify::new()),
            sessions: server::Sessions::default(),
            rounds: Arc::default(),
            plugin_tools: Mutex::default(),
            poll: Arc::new(AtomicU64::new(5)),
        }
    }

    /// Something that decides what callers see changed (config, a user's connection).
    pub fn changed(&self) {
        self.plugin_tools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.changed.notify_one();
    }

    /// Brings the shared upstreams in line with the current config: new and changed
    /// connectors are discovered now, removed ones closed. Per-user sessions of removed or
    /// changed connectors close too.
    pub fn sync(&self, app: &Gateway) {
        let snap = app.snapshot();
        self.poll
            .store(snap.config.mcp.poll_interval_secs, Ordering::Relaxed);
        let mut started = Vec::new();
        let mut gone = Vec::new();
        {
            let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            let mut want: HashMap<String, Arc<Connector>> = snap
                .connectors
                .values()
                .filter(|c| {
                    c.protocol == Protocol::Mcp && !matches!(c.credential, Credential::PerUser(_))
                })
                .map(|c| (c.id.clone(), c.clone()))
                .collect();
            shared.retain(|id, up| {
                let keep = want
                    .get(id)
                    .is_some_and(|c| upstream_key(c).as_ref() == Some(&up.key));
                if keep {
                    want.remove(id);
                } else {
                    gone.push(up.clone());
                }
                keep
            });
            for (id, c) in want {
                let Some(up) = Upstream::new(app, c, None) else {
                    tracing::warn!(connector = %id, "MCP connector has no url; it lists nothing until an admin sets one");
                    continue;
                };
                shared.insert(id, up.clone());
                started.push(up);
            }
        }
        {
            let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
            users.retain(|(id, _), up| {
                let keep = snap
                    .connectors
                    .get(id)
                    .is_some_and(|c| upstream_key(c).as_ref() == Some(&up.key));
                if !keep {
                    gone.push(up.clone());
                }
                keep
            });
        }
        for up in gone {
            tokio::spawn(async move { up.close().await });
        }
        for up in started {
            spawn_refresher(&up, Some(self.poll.clone()), true);
        }
        self.changed();
    }

    /// The upstream for `caller` on `connector`: the shared one, or the caller's own for a
    /// per-user connector whose connection is ready (created, and its catalog loaded, on
    /// first use).
    async fn upstream(
        &self,
        app: &Gateway,
        connector: &Arc<Connector>,
        caller: &Caller,
        load: bool,
    ) -> Option<Arc<Upstream>> {
        let Credential::PerUser(pu) = &connector.credential else {
            return self
                .shared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&connector.id)
                .cloned();
        };
        if app.connections.status(pu, &caller.login) != Status::Ready {
            return None;
        }
        let key = (connector.id.clone(), caller.login.clone());
        // Built for this very connector (the usual case, no hashing), or for an equal
        // one from an earlier reload.
        let existing = self
            .users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .filter(|up| {
                Arc::ptr_eq(&up.connector, connector)
                    || upstream_key(connector).as_ref() == Some(&up.key)
            })
            .cloned();
        let up = match existing {
            Some(up) => up,
            None if !load => return None,
            None => {
                let fresh = Upstream::new(app, connector.clone(), Some(&caller.login))?;
                let (adopted, old) = self.adopt(app, key, &fresh, false);
                if let Some(old) = old {
                    tokio::spawn(async move { old.close().await });
                }
                match adopted {
                    Some(up) => {
                        if Arc::ptr_eq(&up, &fresh) {
                            // Loaded below; afterwards its own `list_changed` reloads it.
                            spawn_refresher(&up, None, false);
                        }
                        up
                    }
                    // The request carries a config a reload replaced: this upstream
                    // serves it alone and goes with it.
                    None => fresh,
                }
            }
        };
        if load {
            let (loaded, stale) = {
                let st = up.state();
                let poll = Duration::from_secs(app.snapshot().config.mcp.poll_interval_secs);
                (
                    st.loaded_at.is_some(),
                    st.loaded_at.is_none_or(|t| t.elapsed() >= poll),
                )
            };
            if !loaded {
                up.refresh().await;
            } else if stale {
                let bg = up.clone();
                tokio::spawn(async move { bg.refresh().await });
            }
        }
        Some(up)
    }

    /// Puts `fresh` in the map as `key`'s upstream if it was built for the config in
    /// force: a request or a load racing a reload may carry the old one. The snapshot is
    /// read under the map's lock, and a reload stores its snapshot before [`Hub::sync`]
    /// prunes the map under that lock, so a stale upstream is either refused here or
    /// pruned there. With `replace`, an upstream already there for the same config gives
    /// way (a new authorization); without, it stays and is returned. Returns the
    /// upstream now in the map (`None`: `fresh` is for a replaced config) and the one
    /// that gave way.
    fn adopt(
        &self,
        app: &Gateway,
        key: (String, String),
        fresh: &Arc<Upstream>,
        replace: bool,
    ) -> (Option<Arc<Upstream>>, Option<Arc<Upstream>>) {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let current = app
            .snapshot()
            .connectors
            .get(&key.0)
            .and_then(|c| upstream_key(c));
        if current.as_ref() != Some(&fresh.key) {
            return (None, None);
        }
        match users.get(&key) {
            Some(up) if up.key == fresh.key && !replace => (Some(up.clone()), None),
            _ => {
                let old = users.insert(key, fresh.clone());
                (Some(fresh.clone()), old)
            }
        }
    }

    /// `caller` has just connected `connector`. Every per-user MCP connector on that
    /// connection they have a grant on gets a new upstream session under the new
    /// authorization, its catalog loaded now, so open client sessions are told about the
    /// tools at once instead of on their next listing. A session from an earlier
    /// authorization serves until the new catalog is in, then closes.
    pub fn connected(&self, app: &Arc<Gateway>, caller: &Caller, connector: &str) {
        let snap = app.snapshot();
        let Some(Credential::PerUser(pu)) = snap.connectors.get(connector).map(|c| &c.credential)
        else {
            return;
        };
        // Not Ready (connected without offline access): nothing to load; the
        // connection's change reaches `reconcile_users` anyway.
        if app.connections.status(pu, &caller.login) != Status::Ready {
            return;
        }
        let access = snap.policy.access(caller);
        for c in snap.connectors.values() {
            let Credential::PerUser(other) = &c.credential else {
                continue;
            };
            if c.protocol != Protocol::Mcp
                || other.connection != pu.connection
                || !access.any_on(&c.id)
            {
                continue;
            }
            let Some(fresh) = Upstream::new(app, c.clone(), Some(&caller.login)) else {
                continue;
            };
            let app = app.clone();
            let key = (c.id.clone(), caller.login.clone());
            let pu = other.clone();
            tokio::spawn(async move {
                fresh.refresh().await;
                let ready = |app: &Gateway| app.connections.status(&pu, &key.1) == Status::Ready;
                // A failed load does not push out a working session of the same config.
                let working_old = fresh.state().failing.is_some()
                    && app
                        .hub
                        .users
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&key)
                        .is_some_and(|old| old.key == fresh.key && old.state().failing.is_none());
                if working_old || !ready(&app) {
                    fresh.close().await;
                    return;
                }
                let (adopted, old) = app.hub.adopt(&app, key.clone(), &fresh, true);
                if adopted.is_none() {
                    // A reload while loading changed the connector.
                    fresh.close().await;
                    return;
                }
                spawn_refresher(&fresh, None, false);
                app.hub.changed();
                if let Some(old) = old {
                    old.close().await;
                }
                // A disconnect between the check above and the adoption.
                if !ready(&app) {
                    app.hub.reconcile_users(&app);
                }
            });
        }
    }

    /// Closes the per-user sessions whose connection ended (disconnect, a dead grant,
    /// revocation) or whose connector is no longer per-user, and has client sessions
    /// told what they lost.
    fn reconcile_users(&self, app: &Gateway) {
        let snap = app.snapshot();
        let entries: Vec<((String, String), Arc<Upstream>)> = self
            .users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, up)| (k.clone(), up.clone()))
            .collect();
        // Statuses are read outside the map's lock: one may need the vault.
        let ended: Vec<((String, String), Arc<Upstream>)> = entries
            .into_iter()
            .filter(
                |((id, login), _)| match snap.connectors.get(id).map(|c| &c.credential) {
                    Some(Credential::PerUser(pu)) => {
                        app.connections.status(pu, login) != Status::Ready
                    }
                    _ => true,
                },
            )
            .collect();
        let gone: Vec<Arc<Upstream>> = {
            let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
            ended
                .into_iter()
                .filter_map(|(k, up)| {
                    let same = users.get(&k).is_some_and(|cur| Arc::ptr_eq(cur, &up));
                    if same { users.remove(&k) } else { None }
                })
                .collect()
        };
        for up in gone {
            tokio::spawn(async move { up.close().await });
        }
        self.changed();
    }

    /// Closes per-user sessions nobody used for `idle`.
    async fn close_idle(&self, idle: Duration) {
        let gone: Vec<Arc<Upstream>> = {
            let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
            let mut gone = Vec::new();
            users.retain(|_, up| {
                let keep = up.state().last_used.is_some_and(|t| t.elapsed() < idle);
                if !keep {
                    gone.push(up.clone());
                }
                keep
            });
            gone
        };
        for up in gone {
            up.close().await;
        }
    }
}

/// What one caller sees: every item already prefixed and filtered by grants.
#[derive(Default)]
pub struct View {
    pub tools: Vec<Tool>,
    pub prompts: Vec<Prompt>,
    pub resources: Vec<Resource>,
    pub templates: Vec<ResourceTemplate>,
}

impl View {
    /// The view as a client of `scope` sees it: on `/v1/mcp/<id>`, names without the
    /// connector's prefix.
    fn scoped(mut self, scope: &Scope) -> Self {
        if *scope == Scope::All {
            return self;
        }
        for t in &mut self.tools {
            t.name = scope.outbound(Kind::Tool, &t.name).into();
        }
        for p in &mut self.prompts {
            p.name = scope.outbound(Kind::Prompt, &p.name);
        }
        for r in &mut self.resources {
            r.uri = scope.outbound(Kind::Resource, &r.uri);
        }
        for t in &mut self.templates {
            t.uri_template = scope.outbound(Kind::Template, &t.uri_template);
        }
        self
    }
}

/// What a client of `scope` sees: [`view`] for the aggregated endpoint, the one
/// connector's part of it (unprefixed) for `/v1/mcp/<id>`.
pub async fn scoped_view(
    app: &Gateway,
    snap: &Snapshot,
    caller: &Caller,
    scope: &Scope,
    load: bool,
) -> View {
    match scope {
        Scope::All => view(app, snap, caller, load).await,
        Scope::One(id) => match snap.connectors.get(&**id) {
            Some(c) => connector_view(app, snap, caller, c, load)
                .await
                .scoped(scope),
            None => View::default(),
        },
    }
}

/// Builds `caller`'s view. With `load`, per-user catalogs not yet fetched are fetched now.
pub async fn view(app: &Gateway, snap: &Snapshot, caller: &Caller, load: bool) -> View {
    let access = snap.policy.access(caller);
    let mut v = View::default();
    builtin::tools(app, snap, &access, &mut v.tools).await;
    let mut ids: Vec<&Arc<Connector>> = snap
        .connectors
        .values()
        .filter(|c| c.protocol == Protocol::Mcp && access.any_on(&c.id))
        .collect();
    ids.sort_by(|a, b| a.id.cmp(&b.id));
    for c in ids {
        add_upstream(app, &access, caller, c, load, &mut v).await;
    }
    v
}

/// One connector's part of `caller`'s view: what the dashboard lists as the connector's
/// capabilities, and what `/v1/mcp/<id>` serves. With `load`, a catalog not yet fetched
/// is fetched now; nothing when the caller has no grant on the connector.
pub async fn connector_view(
    app: &Gateway,
    snap: &Snapshot,
    caller: &Caller,
    c: &Arc<Connector>,
    load: bool,
) -> View {
    let access = snap.policy.access(caller);
    let mut v = View::default();
    if !access.any_on(&c.id) {
        return v;
    }
    match c.protocol {
        Protocol::Mcp => {
            if let Some(up) = app.hub.upstream(app, c, caller, load).await {
                // A shared upstream whose first discovery has not finished (just after
                // start or a reload) is asked now: an empty list would read as "lists
                // nothing".
                let never_listed = up.state().loaded_at.is_none();
                if load && never_listed {
                    up.refresh().await;
                }
                add_listing(&access, c, &up, &mut v);
            }
        }
        Protocol::Http if c.provider.is_some() => {
            builtin::connector_tools(app, &access, c, &mut v.tools).await;
        }
        Protocol::Http => {}
    }
    v
}

/// Adds what `access` may see of MCP connector `c`'s upstream, as `caller` reaches it.
async fn add_upstream(
    app: &Gateway,
    access: &Access<'_>,
    caller: &Caller,
    c: &Arc<Connector>,
    load: bool,
    v: &mut View,
) {
    if let Some(up) = app.hub.upstream(app, c, caller, load).await {
        add_listing(access, c, &up, v);
    }
}

/// Adds what `access` may see of `up`'s catalog, named as agents call it.
fn add_listing(access: &Access<'_>, c: &Connector, up: &Upstream, v: &mut View) {
    let l = up.listing();
    let id = c.id.as_str();
    for t in &l.tools {
        if visible(access, id, Kind::Tool, &t.name) {
            let mut t = t.clone();
            t.name = prefixed(id, Kind::Tool, &t.name).into();
            v.tools.push(t);
        }
    }
    for r in &l.resources {
        if visible(access, id, Kind::Resource, &r.uri) {
            let mut r = r.clone();
            r.uri = prefixed(id, Kind::Resource, &r.uri);
            v.resources.push(r);
        }
    }
    for t in &l.templates {
        if visible(access, id, Kind::Template, &t.uri_template) {
            let mut t = t.clone();
            t.uri_template = prefixed(id, Kind::Template, &t.uri_template);
            v.templates.push(t);
        }
    }
    for p in &l.prompts {
        if visible(access, id, Kind::Prompt, &p.name) {
            let mut p = p.clone();
            p.name = prefixed(id, Kind::Prompt, &p.name);
            v.prompts.push(p);
        }
    }
}

/// Runs `on_change` each time `changes` rings, for as long as the gateway lives.
fn follow(app: &Arc<Gateway>, changes: Arc<Notify>, on_change: fn(&Arc<Gateway>)) {
    let weak = Arc::downgrade(app);
    tokio::spawn(async move {
        loop {
            changes.notified().await;
            let Some(app) = weak.upgrade() else { return };
            on_change(&app);
        }
    });
}

/// Runs `on_change` each time `changes` moves on, for as long as the gateway lives.
fn follow_watch(
    app: &Arc<Gateway>,
    mut changes: tokio::sync::watch::Receiver<u64>,
    on_change: fn(&Arc<Gateway>),
) {
    let weak = Arc::downgrade(app);
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let Some(app) = weak.upgrade() else { return };
            on_change(&app);
        }
    });
}

/// Starts the background work: catalog sync now, session notifications (on catalog,
/// config, connection and registry changes), per-user catalogs loaded as users connect,
/// idle cleanup.
fn start(app: &Arc<Gateway>) {
    app.hub.sync(app);
    server::spawn_notifier(app);
    follow_watch(app, app.configs(), |app| {
        app.hub.sync(app);
        app.hub.changed();
    });
    follow_watch(app, app.connections.changes(), |app| {
        app.hub.reconcile_users(app)
    });
    follow(app, app.plugins.changes(), |app| app.hub.changed());
    let queue = app
        .hub
        .log_queue
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(mut queue) = queue {
        let weak = Arc::downgrade(app);
        tokio::spawn(async move {
            while let Some(log) = queue.recv().await {
                let Some(app) = weak.upgrade() else { return };
                server::deliver_log(&app, log).await;
            }
        });
    }
    let weak = Arc::downgrade(app);
    let mut made = app.connections_made();
    tokio::spawn(async move {
        loop {
            match made.recv().await {
                Ok(c) => {
                    let Some(app) = weak.upgrade() else { return };
                    app.hub.connected(&app, &c.caller, &c.connector);
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let weak = Arc::downgrade(app);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let Some(app) = weak.upgrade() else { return };
            let idle = Duration::from_secs(app.snapshot().config.mcp.idle_session_secs);
            app.hub.close_idle(idle).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_at_the_first_separator() {
        assert_eq!(
            split(Kind::Tool, "github_search_code"),
            Some(("github", "search_code"))
        );
        assert_eq!(
            split(Kind::Resource, "local-file:///a-b"),
            Some(("local", "file:///a-b"))
        );
        assert_eq!(split(Kind::Tool, "_x"), None);
        assert_eq!(split(Kind::Tool, "github_"), None);
        assert_eq!(split(Kind::Tool, "nounderscore"), None);
        assert_eq!(split(Kind::Tool, "9lives_x"), None);
        assert_eq!(prefixed("a", Kind::Template, "t://{x}"), "a-t://{x}");
    }

    #[test]
    fn one_connector_endpoints_name_things_as_the_upstream_does() {
        let one = Scope::One("notes".into());
        assert_eq!(one.inbound(Kind::Tool, "search"), "notes_search");
        assert_eq!(one.inbound(Kind::Prompt, "brief"), "notes_brief");
        assert_eq!(one.inbound(Kind::Resource, "mem://a"), "notes-mem://a");
        assert_eq!(one.outbound(Kind::Tool, "notes_search"), "search");
        assert_eq!(
            one.outbound(Kind::Template, "notes-mem://{id}"),
            "mem://{id}"
        );
        // A name under another prefix is not this endpoint's to shorten.
        assert_eq!(one.outbound(Kind::Tool, "other_search"), "other_search");
        // An upstream name that itself contains the separator survives the round trip.
        let full = one.inbound(Kind::Tool, "a_b");
        assert_eq!(split(Kind::Tool, &full), Some(("notes", "a_b")));
        assert_eq!(one.outbound(Kind::Tool, &full), "a_b");
        assert_eq!(Scope::All.inbound(Kind::Tool, "x_y"), "x_y");
        assert_eq!(Scope::All.outbound(Kind::Tool, "x_y"), "x_y");
    }

    #[test]
    fn tool_names_follow_sep_986() {
        assert!(valid_tool_name("snowflake_query"));
        assert!(valid_tool_name("a.b-c_D9"));
        assert!(!valid_tool_name(""));
        assert!(!valid_tool_name("has space"));
        assert!(!valid_tool_name("slash/name"));
        assert!(!valid_tool_name("ünicode"));
        assert!(valid_tool_name(&"x".repeat(128)));
        assert!(!valid_tool_name(&"x".repeat(129)));
    }
}
