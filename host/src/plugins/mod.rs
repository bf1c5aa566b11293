//! Provider plugins: sandboxed WASI components that supply a provider's defaults and
//! shape its traffic.
//!
//! A plugin is a pure function of its inputs (the WIT world is `wit/provider.wit`). It
//! returns data and request descriptions; the host performs all I/O and re-checks
//! everything a plugin returns before acting on it:
//!
//! - URLs must stay on the provider's declared hosts (the manifest's `allowed_hosts`)
//!   or on the connector's own configured host ([`Plugins::check_shaped`]);
//! - plugins may not set credential headers: credentials are added after shaping;
//! - tokens never enter a plugin: token responses are redacted ([`redact_tokens`]).
//!
//! # Layout
//!
//! - [`manifest`] reads and checks `plugin.toml`.
//! - [`runtime`]: engine, per-call store with limits, the generated bindings.
//! - [`registry`]: scanning the registry folder into a `Catalog`.
//! - [`routes`]: shaping by path, the agent's headers and fixed query parameters that a
//!   plugin declares once per context (WIT 0.1.3, widened in 0.1.4), applied without a
//!   call.
//! - [`markers`]: answers a plugin calls `ok` by their first member (WIT 0.1.5), so the
//!   host classifies them without a call.
//! - [`harness`]: fixtures run through the real runtime (used by the SDK's `testing`).

pub mod harness;
pub mod manifest;
pub mod markers;
pub mod output;
pub mod registry;
pub mod routes;
pub mod runtime;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;

pub use output::{Bounds, CheckedRequest, CheckedTool, Shaped, ToolCall};
pub use registry::{Catalog, Plugin, Problem};
use runtime::{Call, Reply};
pub use runtime::{CallError, Runtime, types};

/// Most discovery round trips before the host gives up.
pub const MAX_DISCOVERY_STEPS: u32 = 8;
/// Quiet period after a registry change before rescanning.
const RESCAN_DEBOUNCE: Duration = Duration::from_millis(300);

/// The registry folder: `--registry`/`PORTCULLIS_REGISTRY`, else `registry.dir`, else
/// `./registry` when it exists. A folder named explicitly must exist.
pub fn registry_dir(
    flag: Option<PathBuf>,
    configured: Option<PathBuf>,
) -> anyhow::Result<Option<PathBuf>> {
    let named = flag.or(configured);
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
                    "no provider registry (./{DEFAULT_REGISTRY} does not exist); a connector naming a provider is refused until one is configured"
                );
                Ok(None)
            }
        }
    }
}

/// Registry folder used when none is configured, relative to the working directory.
pub const DEFAULT_REGISTRY: &str = "registry";

/// The loaded registry and the runtime behind it.
pub struct Plugins {
    runtime: Arc<Runtime>,
    dir: Option<PathBuf>,
    catalog: ArcSwap<Catalog>,
    scan_lock: tokio::sync::Mutex<()>,
    metrics: Option<Arc<crate::telemetry::Metrics>>,
    /// Rings after each rescan, so what plugins contribute (MCP tools) is re-read.
    rescanned: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugins")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Plugins {
    /// Opens the registry at `dir` (none: no providers) and scans it once.
    /// `cache_dir` keeps compiled components between starts.
    pub async fn open(
        dir: Option<PathBuf>,
        cache_dir: Option<PathBuf>,
        metrics: Option<Arc<crate::telemetry::Metrics>>,
    ) -> anyhow::Result<Arc<Self>> {
        let runtime = Runtime::new(cache_dir)?;
        let plugins = Arc::new(Self {
            runtime,
            dir,
            catalog: ArcSwap::from_pointee(Catalog::default()),
            scan_lock: tokio::sync::Mutex::new(()),
            metrics,
            rescanned: Arc::new(tokio::sync::Notify::new()),
        });
        plugins.rescan().await;
        Ok(plugins)
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn dir(&self) -> Option<&std::path::Path> {
        self.dir.as_deref()
    }

    /// Scans the registry folder again and swaps the result in; in-flight calls keep the
    /// plugins they started with.
    pub async fn rescan(&self) {
        let Some(dir) = &self.dir else { return };
        let _one = self.scan_lock.lock().await;
        let catalog = registry::scan(&self.runtime, dir).await;
        tracing::info!(
            loaded = catalog.plugins.len(),
            skipped = catalog.problems.len(),
            dir = %dir.display(),
            "provider registry scanned"
        );
        self.catalog.store(Arc::new(catalog));
        self.rescanned.notify_one();
    }

    /// Rings after every rescan of the registry.
    pub fn changes(&self) -> Arc<tokio::sync::Notify> {
        self.rescanned.clone()
    }

    /// Rescans whenever something under the registry folder changes (debounced).
    pub fn watch(self: &Arc<Self>) -> anyhow::Result<Option<notify::RecommendedWatcher>> {
        use notify::Watcher as _;
        let Some(dir) = self.dir.clone() else {
            return Ok(None);
        };
        if !dir.is_dir() {
            return Ok(None);
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if ev.is_ok_and(|e| !e.kind.is_access()) {
                let _ = tx.send(());
            }
        })?;
        watcher.watch(&dir, notify::RecursiveMode::Recursive)?;
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // Debounce: copying a component in triggers many events.
                loop {
                    match tokio::time::timeout(RESCAN_DEBOUNCE, rx.recv()).await {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
                let Some(plugins) = me.upgrade() else { return };
                plugins.rescan().await;
            }
        });
        Ok(Some(watcher))
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    /// The plugin for a connector's `provider` (case-insensitive: configs say
    /// `"Salesforce"` as often as `"salesforce"`).
    pub fn get(&self, provider: &str) -> Option<Arc<Plugin>> {
        let catalog = self.catalog.load();
        catalog.plugins.get(provider).cloned().or_else(|| {
            catalog
                .plugins
                .iter()
                .find(|(id, _)| id.eq_ignore_ascii_case(provider))
                .map(|(_, p)| p.clone())
        })
    }

    /// The raw hook; everything outside `plugins` gets [`Plugins::shape`].
    pub(super) async fn shape_request(
        &self,
        plugin: &Plugin,
        ctx: types::Context,
        req: types::OutgoingRequest,
    ) -> Result<types::ShapedRequest, CallError> {
        match self.call(plugin, Call::ShapeRequest(ctx, req)).await? {
            Reply::ShapeRequest(r) => r.map_err(|e| refused(plugin, &e)),
            _ => Err(wrong_reply(plugin)),
        }
    }

    /// Shapes one request and checks the result ([`output`]); a result the host refuses
    /// is logged and counted like a failed call. A request one of the plugin's routes
    /// covers is shaped here without a call ([`routes`]); any other by `shape-request`.
    pub async fn shape(
        &self,
        plugin: &Plugin,
        ctx: &ConnectionContext,
        req: Outgoing<'_>,
        bounds: Bounds<'_>,
    ) -> Result<Shaped, CallError> {
        let routed = match self.routes(plugin, ctx, bounds).await? {
            Some(routes) => req.routed(&routes),
            None => None,
        };
        match routed {
            Some(routed) => self.checked(
                plugin,
                "shape-request",
                output::routed(plugin, bounds, routed),
            ),
            // Only a call needs the context of its own (routes run for every request).
            None => {
                self.shape_by_call(plugin, ctx.wit.clone(), req.into_wit(), bounds)
                    .await
            }
        }
    }

    /// [`Plugins::shape`] by a `shape-request` call even where the plugin's routes cover
    /// the path: what a request its routes do not cover costs. The plugin benchmark
    /// measures both.
    pub async fn shape_by_call(
        &self,
        plugin: &Plugin,
        ctx: types::Context,
        req: types::OutgoingRequest,
        bounds: Bounds<'_>,
    ) -> Result<Shaped, CallError> {
        // A failed call was logged and counted where it failed.
        let shaped = self.shape_request(plugin, ctx, req).await?;
        self.checked(
            plugin,
            "shape-request",
            output::shaped(plugin, bounds, shaped),
        )
    }

    /// Whether one of the plugin's routes shapes `req` (without a call) for `ctx`.
    pub async fn routes_cover(
        &self,
        plugin: &Plugin,
        ctx: &ConnectionContext,
        req: &Outgoing<'_>,
        bounds: Bounds<'_>,
    ) -> Result<bool, CallError> {
        Ok(self
            .routes(plugin, ctx, bounds)
            .await?
            .is_some_and(|routes| req.routed(&routes).is_some()))
    }

    /// The plugin's routes for `ctx`: asked at the context's first request (once, while
    /// the requests that arrive meanwhile wait) and kept with the plugin. `None` when it
    /// declares none, or when its answer was refused or its call failed: the plugin
    /// answers a context the same way every time, so that context is shaped by calls
    /// from then on. A busy runtime fails the request, as for any plugin call. Once
    /// found, they are also noted on `ctx` ([`ConnectionContext`]).
    async fn routes(
        &self,
        plugin: &Plugin,
        ctx: &ConnectionContext,
        bounds: Bounds<'_>,
    ) -> Result<Option<Arc<routes::Routes>>, CallError> {
        if !plugin.exports_routes() {
            return Ok(None);
        }
        if let Some(found) = ctx.routes_for(plugin) {
            return Ok(found.clone());
        }
        let ctx_wit = &ctx.wit;
        let routes = plugin
            .routes
            .get_or_ask(ctx_wit, || async {
                match self.declared_routes(plugin, ctx_wit, bounds).await {
                    Err(busy @ CallError::Busy { .. }) => Err(busy),
                    // Logged and counted where it failed.
                    Err(_) => Ok(routes::Routes::default()),
                    Ok(routes) => Ok(routes),
                }
            })
            .await?;
        let found = (!routes.is_empty()).then_some(routes);
        ctx.note_routes(plugin, found.clone());
        Ok(found)
    }

    /// Asks for the routes of `ctx` and checks them ([`output::routes`]); a failure is
    /// logged and counted under `request-routes`.
    pub(super) async fn declared_routes(
        &self,
        plugin: &Plugin,
        ctx: &types::Context,
        bounds: Bounds<'_>,
    ) -> Result<routes::Routes, CallError> {
        let declared = match self.call(plugin, Call::RequestRoutes(ctx.clone())).await? {
            Reply::RequestRoutes(declared) => Ok(declared),
            _ => Err(wrong_reply(plugin)),
        };
        self.checked(
            plugin,
            "request-routes",
            declared.and_then(|d| output::routes(plugin, bounds, d)),
        )
    }

    /// Logs and counts a refused output.
    fn checked<T>(
        &self,
        plugin: &Plugin,
        hook: &'static str,
        result: Result<T, CallError>,
    ) -> Result<T, CallError> {
        result.inspect_err(|e| {
            tracing::warn!(plugin = %plugin.id(), hook, kind = e.kind(), "{e}");
            self.count(plugin, hook, e.kind());
        })
    }

    fn count(&self, plugin: &Plugin, hook: &'static str, outcome: &'static str) {
        if let Some(m) = &self.metrics {
            m.plugin_calls
                .get_or_create(&crate::telemetry::PluginLabels {
                    plugin: plugin.id().to_owned(),
                    hook,
                    outcome,
                })
                .inc();
        }
    }

    /// The raw hook; everything outside `plugins` gets [`Plugins::read_token`].
    pub(super) async fn read_token_response(
        &self,
        plugin: &Plugin,
        ctx: types::Context,
        status: u16,
        body: String,
    ) -> Result<Result<types::TokenInfo, types::TokenError>, CallError> {
        match self
            .call(plugin, Call::ReadTokenResponse(ctx, status, body))
            .await?
        {
            Reply::ReadTokenResponse(r) => Ok(r),
            _ => Err(wrong_reply(plugin)),
        }
    }

    /// Reads the non-token parts of a token response, checked. `body` must already be
    /// redacted ([`redact_tokens`]).
    pub async fn read_token(
        &self,
        plugin: &Plugin,
        ctx: types::Context,
        status: u16,
        body: String,
    ) -> Result<Result<types::TokenInfo, types::TokenError>, CallError> {
        match self.read_token_response(plugin, ctx, status, body).await? {
            Ok(mut info) => {
                info.variables = self.checked(
                    plugin,
                    "read-token-response",
                    output::variables(plugin, info.variables),
                )?;
                Ok(Ok(info))
            }
            Err(e) => Ok(Err(e)),
        }
    }

    async fn discover(
        &self,
        plugin: &Plugin,
        ctx: types::Context,
        state: String,
        last: Option<types::Response>,
    ) -> Result<types::Discovery, CallError> {
        match self.call(plugin, Call::Discover(ctx, state, last)).await? {
            Reply::Discover(d) => Ok(d),
            _ => Err(wrong_reply(plugin)),
        }
    }

    /// What an answer means (`body`: the first bytes the plugin wants of it), with the
    /// plugin's delay and texts bounded. An answer one of the plugin's ok markers
    /// matches is `ok` without a call ([`markers`]).
    pub async fn classify(
        &self,
        plugin: &Plugin,
        ctx: &types::Context,
        status: u16,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<types::Classification, CallError> {
        if plugin.marks_ok(status, body) {
            return Ok(types::Classification::Ok);
        }
        self.classify_response(
            plugin,
            ctx.clone(),
            status,
            wit_headers(headers),
            body.to_vec(),
        )
        .await
        .map(output::classification)
    }

    /// The raw hook; everything outside `plugins` gets [`Plugins::classify`].
    pub(super) async fn classify_response(
        &self,
        plugin: &Plugin,
        ctx: types::Context,
        status: u16,
        headers: Vec<types::Header>,
        body: Vec<u8>,
    ) -> Result<types::Classification, CallError> {
        match self
            .call(plugin, Call::ClassifyResponse(ctx, status, headers, body))
            .await?
        {
            Reply::ClassifyResponse(c) => Ok(c),
            _ => Err(wrong_reply(plugin)),
        }
    }

    /// The plugin's tools, each checked; those that fail are left out and logged.
    pub async fn tools(
        &self,
        plugin: &Plugin,
        ctx: types::Context,
    ) -> Result<Vec<CheckedTool>, CallError> {
        let listed = self.list_tools(plugin, ctx).await?;
        self.checked(plugin, "list-tools", output::tools(plugin, listed))
    }

    /// The raw hook; everything outside `plugins` gets [`Plugins::tools`].
    pub(super) async fn list_tools(
        &self,
        plugin: &Plugin,
        ctx: types::Context,
    ) -> Result<Vec<types::Tool>, CallError> {
        match self.call(plugin, Call::ListTools(ctx)).await? {
            Reply::ListTools(t) => Ok(t),
            _ => Err(wrong_reply(plugin)),
        }
    }

    /// Turns a tool call into a checked request below the connector.
    pub async fn tool_call(
        &self,
        plugin: &Plugin,
        ctx: types::Context,
        name: String,
        arguments: String,
        bounds: Bounds<'_>,
    ) -> Result<ToolCall, CallError> {
        let req = self.build_tool_call(plugin, ctx, name, arguments).await?;
        self.checked(
            plugin,
            "build-tool-call",
            output::tool_call(plugin, bounds, req),
        )
    }

    /// A tool's upstream answer as the text the model gets, for a tool whose answers the
    /// plugin reshapes (`tool-results`, WIT 0.1.2; [`Plugin::shaped_results`]); bounded
    /// like any tool answer.
    pub async fn tool_result(
        &self,
        plugin: &Plugin,
        ctx: types::Context,
        name: String,
        status: u16,
        body: Vec<u8>,
    ) -> Result<String, CallError> {
        let text = match self
            .call(plugin, Call::ShapeResult(ctx, name, status, body))
            .await?
        {
            Reply::ShapeResult(r) => r.map_err(|e| refused(plugin, &e))?,
            _ => return Err(wrong_reply(plugin)),
        };
        self.checked(plugin, "shape-result", output::tool_result(plugin, text))
    }

    /// The raw hook; everything outside `plugins` gets [`Plugins::tool_call`].
    pub(super) async fn build_tool_call(
        &self,
        plugin: &Plugin,
        ctx: types::Context,
        name: String,
        arguments: String,
    ) -> Result<types::ToolRequest, CallError> {
        match self
            .call(plugin, Call::BuildToolCall(ctx, name, arguments))
            .await?
        {
            Reply::BuildToolCall(r) => r.map_err(|e| refused(plugin, &e)),
            _ => Err(wrong_reply(plugin)),
        }
    }

    async fn call(&self, plugin: &Plugin, call: Call) -> Result<Reply, CallError> {
        let hook = call.hook();
        let started = std::time::Instant::now();
        // Boxed: the sandbox's call is kilobytes of future, and held inline it would
        // size every future that can reach a call (the outbound pipeline's, through
        // shaping and classifying), which are moved whole into their boxes on every
        // request, most of which make no call. Its type erased here, where it is proven
        // `Send` once, not again inside every future that holds it.
        let call: Pin<Box<dyn Future<Output = Result<Reply, CallError>> + Send + '_>> =
            Box::pin(self.runtime.call(&plugin.prepared, call));
        let result = call.await;
        if let Some(m) = &self.metrics {
            m.plugin_duration
                .get_or_create(&crate::telemetry::PluginHookLabels {
                    plugin: plugin.id().to_owned(),
                    hook,
                })
                .observe(started.elapsed().as_secs_f64());
        }
        if let Err(e) = &result {
            tracing::warn!(plugin = %plugin.id(), hook, kind = e.kind(), "plugin call failed: {e}");
        }
        self.count(
            plugin,
            hook,
            result.as_ref().map_or_else(CallError::kind, |_| "ok"),
        );
        result
    }

    /// Checks a shaped request the way [`Plugins::shape`] does (for the fixture harness).
    pub(super) fn check_shaped(
        plugin: &Plugin,
        base: &url::Url,
        shaped: types::ShapedRequest,
        credential_header: Option<&http::HeaderName>,
    ) -> Result<Shaped, CallError> {
        output::shaped(
            plugin,
            Bounds {
                base,
                credential_header,
            },
            shaped,
        )
    }

    /// Checks a request a route covers the way [`Plugins::shape`] does (for the fixture
    /// harness).
    pub(super) fn check_routed(
        plugin: &Plugin,
        base: &url::Url,
        routed: routes::Routed,
    ) -> Result<Shaped, CallError> {
        output::routed(
            plugin,
            Bounds {
                base,
                credential_header: None,
            },
            routed,
        )
    }
}

/// How post-connect discovery ended.
#[derive(Debug, Clone, PartialEq)]
pub enum DiscoveryOutcome {
    Done(Vec<(String, String)>),
    /// A person must choose (several Atlassian sites).
    Choose(types::Selection),
    Failed(String),
}

impl Plugins {
    /// Runs the plugin's discovery step machine; `send` performs each request (with the
    /// connection's credential) and returns the response, or why it failed.
    pub async fn run_discovery<F, Fut>(
        &self,
        plugin: &Plugin,
        base: &url::Url,
        ctx: &types::Context,
        credential_header: Option<&http::HeaderName>,
        mut send: F,
    ) -> Result<DiscoveryOutcome, CallError>
    where
        F: FnMut(CheckedRequest) -> Fut,
        Fut: std::future::Future<Output = Result<types::Response, String>>,
    {
        let mut state = String::new();
        let mut last = None;
        for _ in 0..MAX_DISCOVERY_STEPS {
            match self
                .discover(plugin, ctx.clone(), state, last.take())
                .await?
            {
                types::Discovery::Next((req, next)) => {
                    let bounds = Bounds {
                        base,
                        credential_header,
                    };
                    let checked =
                        self.checked(plugin, "discover", output::request(plugin, bounds, req))?;
                    match send(checked).await {
                        Ok(resp) => last = Some(resp),
                        Err(e) => {
                            return Ok(DiscoveryOutcome::Failed(format!(
                                "a discovery request failed: {e}"
                            )));
                        }
                    }
                    state = next;
                }
                types::Discovery::Done(vars) => {
                    let vars = self.checked(plugin, "discover", output::variables(plugin, vars))?;
                    return Ok(DiscoveryOutcome::Done(vars));
                }
                types::Discovery::Choose(sel) => return Ok(DiscoveryOutcome::Choose(sel)),
                types::Discovery::Fail(why) => return Ok(DiscoveryOutcome::Failed(why)),
            }
        }
        Ok(DiscoveryOutcome::Failed(format!(
            "discovery did not finish within {MAX_DISCOVERY_STEPS} requests"
        )))
    }
}

/// The WIT method as an HTTP method.
pub fn method_of(m: types::Method) -> http::Method {
    match m {
        types::Method::Get => http::Method::GET,
        types::Method::Head => http::Method::HEAD,
        types::Method::Post => http::Method::POST,
        types::Method::Put => http::Method::PUT,
        types::Method::Patch => http::Method::PATCH,
        types::Method::Delete => http::Method::DELETE,
        types::Method::Options => http::Method::OPTIONS,
    }
}

/// An HTTP method as the WIT method; `None` for methods connectors never forward.
pub fn wit_method(m: &http::Method) -> Option<types::Method> {
    Some(match *m {
        http::Method::GET => types::Method::Get,
        http::Method::HEAD => types::Method::Head,
        http::Method::POST => types::Method::Post,
        http::Method::PUT => types::Method::Put,
        http::Method::PATCH => types::Method::Patch,
        http::Method::DELETE => types::Method::Delete,
        http::Method::OPTIONS => types::Method::Options,
        _ => return None,
    })
}

/// A connector's plugin context, kept once built where it is the same on every request
/// (no user's variables in it and a plugin that discovers nothing, as on a shared
/// connection; the outbound pipeline decides): building it copies the connector's id,
/// base URL and variables, on every request the plugin shapes or classifies, and a
/// context built anew finds its routes by hashing and comparing it. Kept per plugin: a
/// registry rescan that replaces the plugin builds it again. A connector belongs to one
/// config snapshot, so a new config starts with none.
pub type KeptContext = Kept<Plugin, ConnectionContext>;

/// A plugin's context as the outbound pipeline holds it for one plugin: what the plugin
/// is given, and the routes it declared for it once [`Plugins::shape`] has found them.
/// Kept with a connector ([`KeptContext`]), it spares each of its requests the lookup
/// in the plugin's route cache.
#[derive(Debug)]
pub struct ConnectionContext {
    /// Read-only once built: the routes noted are this context's.
    wit: types::Context,
    /// The plugin they were found for (which load of it) and the routes. Given another
    /// plugin (a rescan's), the routes are looked up in that plugin's cache as for a
    /// new context.
    routes: OnceLock<(u64, Option<Arc<routes::Routes>>)>,
}

impl From<types::Context> for ConnectionContext {
    fn from(wit: types::Context) -> Self {
        Self {
            wit,
            routes: OnceLock::new(),
        }
    }
}

impl ConnectionContext {
    /// What the plugin is given.
    pub fn wit(&self) -> &types::Context {
        &self.wit
    }

    fn routes_for(&self, plugin: &Plugin) -> Option<&Option<Arc<routes::Routes>>> {
        self.routes
            .get()
            .filter(|(load, _)| *load == plugin.load)
            .map(|(_, routes)| routes)
    }

    fn note_routes(&self, plugin: &Plugin, routes: Option<Arc<routes::Routes>>) {
        let _ = self.routes.set((plugin.load, routes));
    }
}

/// A value kept for one owner (a plugin), built again for another.
#[derive(Debug)]
pub struct Kept<O, V>(arc_swap::ArcSwapOption<(std::sync::Weak<O>, Arc<V>)>);

impl<O, V> Default for Kept<O, V> {
    fn default() -> Self {
        Self(arc_swap::ArcSwapOption::empty())
    }
}

impl<O, V> Kept<O, V> {
    /// The value kept for `owner`, or the one `build` makes, kept from now on.
    pub fn get_or_build(&self, owner: &Arc<O>, build: impl FnOnce() -> V) -> Arc<V> {
        // The weak pointer keeps the old owner's allocation, so a new owner can never
        // sit at the address a kept value names.
        if let Some(kept) = &*self.0.load()
            && std::ptr::eq(kept.0.as_ptr(), Arc::as_ptr(owner))
        {
            return kept.1.clone();
        }
        let value = Arc::new(build());
        self.0
            .store(Some(Arc::new((Arc::downgrade(owner), value.clone()))));
        value
    }
}

/// An agent's request as a plugin shapes it ([`Plugins::shape`]): what `shape-request`
/// is given, its headers still the request's own map. A request one of the plugin's
/// routes covers is shaped from them as they are; they are converted into the plugin
/// interface's list ([`wit_headers`]) only for a call.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    pub method: types::Method,
    /// The path below the connector as it goes upstream, without a leading `/`; a
    /// plugin is given it with one.
    pub path: &'a str,
    pub query: Option<String>,
    pub headers: &'a http::HeaderMap,
}

impl Outgoing<'_> {
    fn routed(&self, routes: &routes::Routes) -> Option<routes::Routed> {
        routes.shape(self.path, self.query.as_deref(), self.headers)
    }

    /// The request as `shape-request` is given it.
    pub fn into_wit(self) -> types::OutgoingRequest {
        types::OutgoingRequest {
            method: self.method,
            path: ["/", self.path].concat(),
            query: self.query,
            headers: wit_headers(self.headers),
        }
    }
}

/// Headers as a plugin is given them: lower-case names, values as text (bytes that are
/// not UTF-8 replaced).
pub fn wit_headers(headers: &http::HeaderMap) -> Vec<types::Header> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// The tokens of one grant, read by the host from a token response.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GrantTokens {
    pub name: String,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in: Option<u64>,
    pub scope: Option<String>,
}

/// Reads each declared grant from a token response (the RFC 6749 layout when the
/// plugin declares none). At least one grant must be present.
pub fn extract_grants(
    json: &serde_json::Value,
    grants: &[types::TokenGrant],
) -> Result<Vec<GrantTokens>, String> {
    let standard;
    let grants = if grants.is_empty() {
        standard = [types::TokenGrant {
            name: "default".to_owned(),
            access_token: "/access_token".to_owned(),
            refresh_token: Some("/refresh_token".to_owned()),
            expires_in: Some("/expires_in".to_owned()),
            scope: Some("/scope".to_owned()),
            required: true,
        }];
        &standard[..]
    } else {
        grants
    };
    let text = |p: &Option<String>| -> Option<String> {
        let v = json.pointer(p.as_deref()?)?;
        match v {
            serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
            serde_json::Value::Array(items) => Some(
                items
                    .iter()
                    .filter_map(|i| i.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            _ => None,
        }
    };
    let mut out = Vec::new();
    for g in grants {
        let access = json
            .pointer(&g.access_token)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty());
        let Some(access) = access else {
            if g.required {
                return Err(format!(
                    "the token response has no access token for grant \"{}\" (at {})",
                    g.name, g.access_token
                ));
            }
            continue;
        };
        let expires_in = g
            .expires_in
            .as_deref()
            .and_then(|p| json.pointer(p))
            .and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                    .or_else(|| v.as_str()?.trim().parse().ok())
            });
        out.push(GrantTokens {
            name: g.name.clone(),
            access_token: access.to_owned(),
            refresh_token: text(&g.refresh_token),
            expires_in,
            scope: text(&g.scope),
        });
    }
    if out.is_empty() {
        return Err("the token response has no access token".to_owned());
    }
    Ok(out)
}

fn refused(plugin: &Plugin, e: &types::PluginError) -> CallError {
    let detail = match e {
        types::PluginError::InvalidInput(m) => m.clone(),
        types::PluginError::Unsupported(m) => format!("unsupported: {m}"),
        types::PluginError::Internal(m) => format!("internal error: {m}"),
    };
    CallError::Refused {
        plugin: plugin.prepared.id().clone(),
        detail,
    }
}

fn wrong_reply(plugin: &Plugin) -> CallError {
    CallError::Trap {
        plugin: plugin.prepared.id().clone(),
        detail: "the runtime returned a reply for a different call".to_owned(),
    }
}

/// Replaces every token in a token response with `"[redacted]"` before a plugin sees
/// it: the values at the plugin's declared grant pointers, and any member named like a
/// token anywhere in the document.
pub fn redact_tokens(json: &mut serde_json::Value, grants: &[types::TokenGrant]) {
    const TOKEN_KEYS: &[&str] = &[
        "access_token",
        "refresh_token",
        "id_token",
        "client_secret",
        "registration_access_token",
    ];
    for g in grants {
        for p in std::iter::once(&g.access_token).chain(g.refresh_token.iter()) {
            if let Some(v) = json.pointer_mut(p) {
                *v = serde_json::Value::String("[redacted]".to_owned());
            }
        }
    }
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    if TOKEN_KEYS.contains(&k.as_str()) && !child.is_null() {
                        *child = serde_json::Value::String("[redacted]".to_owned());
                    } else {
                        walk(child);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(json);
}

/// The registry as the picker and `GET /api/registry` show it.
pub fn registry_json(plugins: &Plugins) -> serde_json::Value {
    let catalog = plugins.catalog();
    let providers: Vec<serde_json::Value> = catalog
        .plugins
        .values()
        .flat_map(|p| {
            let base = provider_json(p);
            let entries: Vec<serde_json::Value> =
                p.entries.iter().map(|e| entry_json(p, e, &base)).collect();
            std::iter::once(base).chain(entries)
        })
        .collect();
    serde_json::json!({
        "dir": plugins.dir().map(|d| d.display().to_string()),
        "wit": format!("{}@{}", runtime::PLUGIN_INTERFACE, runtime::SUPPORTED_WIT),
        "providers": providers,
        "errors": catalog.problems,
    })
}

/// A picker entry (`google/gmail`): its provider's listing with the entry's identity,
/// URL, scopes and connector template, and `provider`/`entry` saying where it comes from.
fn entry_json(
    p: &Plugin,
    e: &runtime::catalog::Entry,
    base: &serde_json::Value,
) -> serde_json::Value {
    let mut j = base.clone();
    j["id"] = format!("{}/{}", p.id(), e.key).into();
    j["provider"] = p.id().into();
    j["entry"] = e.key.clone().into();
    j["name"] = e.display_name.clone().into();
    j["description"] = e.description.clone().into();
    j["url"] = e.api_url.clone().into();
    j["mcp_url"] = serde_json::Value::Null;
    if j["oauth"].is_object() && !e.scopes.is_empty() {
        j["oauth"]["scopes"] = serde_json::json!(e.scopes);
    }
    if let Some(t) = p.entry_template(&e.key) {
        j["connector"] = serde_json::json!({
            "id": t.connector_id(),
            "server": t.connector(crate::config::Protocol::Http),
            "mcp_server": null,
        });
    }
    j
}

fn provider_json(p: &Plugin) -> serde_json::Value {
    let d = &p.defaults;
    let template = p.template();
    let hooks: Vec<&str> = d
        .hooks
        .iter()
        .map(|h| match h {
            types::Hook::ShapeRequest => "shape-request",
            types::Hook::ReadTokenResponse => "read-token-response",
            types::Hook::Discover => "discover",
            types::Hook::ClassifyResponse => "classify-response",
            types::Hook::Tools => "tools",
        })
        .collect();
    let oauth = d.oauth.as_ref().map(|o| {
        serde_json::json!({
            "authorization_url": o.authorization_url,
            "token_url": o.token_url,
            "revocation_url": o.revocation_url,
            "refresh_url": p.refresh_url.as_ref().map(url::Url::as_str),
            // `{name}` in the two URLs above is filled from these provider variables.
            "url_inputs": p.url_inputs,
            "scopes": o.scopes,
            "scope_separator": o.scope_separator,
            "auth_params": o.auth_params.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "user_scope_param": o.user_scope_param,
            "pkce": match o.pkce {
                types::PkcePolicy::Required => "required",
                types::PkcePolicy::Supported => "supported",
                types::PkcePolicy::Unsupported => "unsupported",
            },
            "client_auth": match o.client_auth {
                types::ClientAuth::Basic => "client_secret_basic",
                types::ClientAuth::Post => "client_secret_post",
            },
            "rotates_refresh_token": o.refresh.rotates_refresh_token,
            "keeps_refresh_token": o.refresh.keeps_refresh_token,
            "dynamic_registration": o.dynamic_registration,
        })
    });
    serde_json::json!({
        "id": d.id,
        "name": d.display_name,
        "description": d.description,
        "category": p.manifest.category(),
        "docs_url": d.docs_url,
        "version": p.manifest.version,
        "sha256": p.sha256,
        "status": "loaded",
        "allowed_hosts": p.manifest.capabilities.allowed_hosts,
        "hooks": hooks,
        "classify_statuses": d.classify_statuses,
        "inputs": d.inputs.iter().map(|i| serde_json::json!({
            "name": i.name, "description": i.description, "default": i.default_value,
        })).collect::<Vec<_>>(),
        "url": d.api_url,
        "mcp_url": d.mcp_url,
        "oauth": oauth,
        // The `auth` of a connector holding the provider's own static credential (a
        // Discord bot token), when it has one: the dashboard offers it next to OAuth.
        "static_auth": template.static_credential.is_some().then(|| template.static_auth()),
        // What the picker drops into `connectors.servers` (the client ID and secret
        // are the operator's to fill in); POST /api/config/connectors saves it.
        "connector": {
            "id": template.connector_id(),
            "server": template.connector(crate::config::Protocol::Http),
            "mcp_server": d.mcp_url.is_some().then(|| template.connector(crate::config::Protocol::Mcp)),
        },
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A kept value is built once for its owner, again for a new owner (a plugin a
    /// rescan loaded in its place), and never handed to an owner it was not built for.
    #[test]
    fn a_kept_value_belongs_to_the_owner_it_was_built_for() {
        let kept: Kept<String, u32> = Kept::default();
        let (first, second) = (Arc::new("first".to_owned()), Arc::new("second".to_owned()));
        let mut builds = 0;
        let mut get = |owner: &Arc<String>, value: u32| {
            *kept.get_or_build(owner, || {
                builds += 1;
                value
            })
        };
        assert_eq!(get(&first, 1), 1);
        assert_eq!(get(&first, 2), 1, "kept");
        assert_eq!(get(&second, 3), 3, "another owner builds its own");
        assert_eq!(get(&first, 4), 4, "and the first builds again");
        // An owner dropped and another made in its place is another owner, even at
        // the same address: the kept weak pointer holds the old allocation.
        drop(first);
        let third = Arc::new("third".to_owned());
        assert_eq!(get(&third, 5), 5);
        assert_eq!(get(&third, 6), 5);
        assert_eq!(builds, 4);
    }

    fn grant(name: &str, prefix: &str, required: bool) -> types::TokenGrant {
        types::TokenGrant {
            name: name.to_owned(),
            access_token: format!("{prefix}/access_token"),
            refresh_token: Some(format!("{prefix}/refresh_token")),
            expires_in: Some(format!("{prefix}/expires_in")),
            scope: Some(format!("{prefix}/scope")),
            required,
        }
    }

    #[test]
    fn tokens_are_redacted_at_declared_pointers_and_by_name_anywhere() {
        let mut body = json!({
            "ok": true,
            "access_token": "xoxb-1",
            "authed_user": {"id": "U1", "access_token": "xoxp-1", "refresh_token": "r-1"},
            "nested": [{"id_token": "eyJ"}],
            "custom_token_field": "tok-2",
            "instance_url": "https://acme.my.salesforce.com",
        });
        let grants = [
            grant("bot", "", false),
            types::TokenGrant {
                access_token: "/custom_token_field".to_owned(),
                ..grant("other", "", false)
            },
        ];
        redact_tokens(&mut body, &grants);
        let text = body.to_string();
        for secret in ["xoxb-1", "xoxp-1", "r-1", "eyJ", "tok-2"] {
            assert!(!text.contains(secret), "{secret} survived: {text}");
        }
        assert_eq!(body["instance_url"], "https://acme.my.salesforce.com");
        assert_eq!(body["authed_user"]["id"], "U1");
    }

    #[test]
    fn grants_are_read_by_pointer_with_optional_ones_skipped() {
        let body = json!({
            "authed_user": {"access_token": "xoxp-1", "expires_in": "43200", "scope": ["a", "b"]},
        });
        let got = extract_grants(
            &body,
            &[
                grant("bot", "", false),
                grant("user", "/authed_user", false),
            ],
        )
        .expect("user grant");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].name, "user");
        assert_eq!(got[0].expires_in, Some(43200));
        assert_eq!(got[0].scope.as_deref(), Some("a b"));
        assert_eq!(got[0].refresh_token, None);
    }

    #[test]
    fn a_missing_required_grant_or_no_grant_at_all_is_an_error() {
        let body = json!({"token_type": "Bearer"});
        let e = extract_grants(&body, &[grant("default", "", true)]).expect_err("required");
        assert!(e.contains("grant \"default\""), "{e}");
        let e = extract_grants(&body, &[grant("bot", "", false)]).expect_err("none found");
        assert!(e.contains("no access token"), "{e}");
        // No declared grants: the RFC 6749 layout.
        let ok = extract_grants(&json!({"access_token": "a", "expires_in": 3599.0}), &[])
            .expect("standard");
        assert_eq!(ok[0].expires_in, Some(3599));
    }
}
