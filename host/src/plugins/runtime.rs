//! The sandbox: one wasmtime [`Engine`], a fresh [`Store`] per call.
//!
//! - The engine uses the pooling allocator (slots are reused with copy-on-write memory
//!   images, so instantiation is microseconds) and epoch interruption driven by a ticker
//!   thread. Each linear memory reserves only the largest memory a plugin may have, not
//!   the 4 GiB of wasm's index space, and the pool is sized to the process's address
//!   space limit ([`Sizing`]), so the host starts under a `ulimit -v` of a few GiB.
//! - Each plugin is compiled once ([`Runtime::prepare`]) into an `InstancePre`;
//!   compiled code is cached on disk keyed by the component's SHA-256 and the engine's
//!   compatibility hash.
//! - Each call gets its own store: a memory cap, a wall-clock deadline, no filesystem,
//!   network, environment or inherited stdio. A trap, a loop or a memory bomb ends that
//!   store and fails that call only; nothing carries over to the next call.
//! - A semaphore sized to the pool bounds concurrent calls.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use wasmtime::component::{
    Component, ComponentExportIndex, ComponentNamedList, ComponentType, InstancePre, Lift, Linker,
    Lower, ResourceTable, types::ComponentItem,
};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    Trap, UpdateDeadline,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::manifest::Limits;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "provider-base",
    exports: { default: async },
    // `Eq` and `Hash`: a context is the key of a plugin's routes (`routes::Cache`).
    additional_derives: [serde::Serialize, serde::Deserialize, PartialEq, Eq, Hash],
});

pub use self::portcullis::provider::types;
pub use exports::portcullis::provider::plugin::Guest;
pub use since_0_1_1::exports::portcullis::provider::{catalog, oauth_extras};
pub use since_0_1_2::exports::portcullis::provider::auth_extras;
pub use since_0_1_3::exports::portcullis::provider::routes::Route as DeclaredRouteV1;
pub use since_0_1_4::exports::portcullis::provider::routes_v2::{
    DefaultHeader, GrantHeader, Route as DeclaredRoute,
};
pub use since_0_1_5::exports::portcullis::provider::classify_markers::OkMarker as DeclaredOkMarker;

/// Interfaces added in 0.1.1 (`oauth-extras`, `catalog`), which a plugin built against
/// 0.1.0 does not export: probed for at load ([`Runtime::prepare`]) and called only
/// when present.
mod since_0_1_1 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "since-0-1-1",
        exports: { default: async },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
    });
}

/// The interfaces added in 0.1.2 (`auth-extras`, `tool-results`), probed for like
/// [`since_0_1_1`].
mod since_0_1_2 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "since-0-1-2",
        exports: { default: async },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        // `tool-results` takes the shared types: the base world's, not copies.
        with: { "portcullis:provider/types": super::portcullis::provider::types },
    });
}

/// The interface added in 0.1.3 (`routes`), probed for like [`since_0_1_1`].
mod since_0_1_3 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "since-0-1-3",
        exports: { default: async },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        with: { "portcullis:provider/types": super::portcullis::provider::types },
    });
}

/// The interface added in 0.1.4 (`routes-v2`), probed for like [`since_0_1_1`].
mod since_0_1_4 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "since-0-1-4",
        exports: { default: async },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        with: { "portcullis:provider/types": super::portcullis::provider::types },
    });
}

/// The interface added in 0.1.5 (`classify-markers`), probed for like [`since_0_1_1`].
mod since_0_1_5 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "since-0-1-5",
        exports: { default: async },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
    });
}

/// The interfaces 0.1.1 added (see [`since_0_1_1`]); a 0.1.1 plugin exports both.
const SINCE_0_1_1_INTERFACES: [&str; 2] = [
    "portcullis:provider/oauth-extras",
    "portcullis:provider/catalog",
];
/// The interfaces 0.1.2 added (see [`since_0_1_2`]); a 0.1.2 plugin exports both.
const SINCE_0_1_2_INTERFACES: [&str; 2] = ["portcullis:provider/auth-extras", TOOL_RESULTS];
const TOOL_RESULTS: &str = "portcullis:provider/tool-results";
/// The interface 0.1.3 added (see [`since_0_1_3`]).
const SINCE_0_1_3_INTERFACES: [&str; 1] = [ROUTES];
const ROUTES: &str = "portcullis:provider/routes";
/// The interface 0.1.4 added (see [`since_0_1_4`]).
const SINCE_0_1_4_INTERFACES: [&str; 1] = [ROUTES_V2];
const ROUTES_V2: &str = "portcullis:provider/routes-v2";
/// The interface 0.1.5 added (see [`since_0_1_5`]).
const SINCE_0_1_5_INTERFACES: [&str; 1] = ["portcullis:provider/classify-markers"];

/// The WIT package and interface every plugin must export, and the versions this host
/// runs. Within 0.x only the same minor is compatible.
pub const PLUGIN_INTERFACE: &str = "portcullis:provider/plugin";
pub const SUPPORTED_WIT: &str = "0.1.x";
const SUPPORTED_MAJOR_MINOR: (u64, u64) = (0, 1);

/// Concurrent plugin calls (and pool slots) when the address space is not limited.
const POOL_SLOTS: u32 = 128;
/// Below this many slots the pool is not worth its reservation: on-demand allocation.
const MIN_POOL_SLOTS: u32 = 4;
/// Linear memories per plugin instance (a component's own plus one spare).
const MEMORIES_PER_SLOT: u64 = 2;
/// Address space each linear memory reserves: the largest memory a plugin may declare.
/// Below wasm's 4 GiB index space the compiled code checks bounds explicitly instead of
/// relying on a 4 GiB guard region; that costs little next to instantiation and keeps a
/// pool of 128 slots at about 17 GiB of address space instead of a terabyte.
const MEMORY_RESERVATION: u64 = (super::manifest::MAX_MEMORY_MB as u64) << 20;
/// Guard pages after (and before) each linear memory; lets small constant offsets skip
/// their bounds check.
const MEMORY_GUARD: u64 = 2 << 20;
/// Stack of the fiber each async call runs on.
const ASYNC_STACK: usize = 2 << 20;
/// Share of a limited address space the pool may take; the rest is the host's own
/// (heap, thread stacks, compiled code).
const POOL_SHARE_OF_LIMIT: u64 = 2;
/// Pool slots returned before their pages are released in one batch.
const DECOMMIT_BATCH: usize = 16;
/// Bytes of each linear memory reset with `memset` (and kept resident) instead of
/// `madvise`. Plugins built with the SDK's 64 KiB stack touch little beyond this, so a
/// reused slot takes no page faults; measured in docs/performance-log.md.
const KEEP_RESIDENT_MEMORY: usize = 256 * 1024;
const KEEP_RESIDENT_TABLE: usize = 16 * 1024;
/// Idle pool slots that keep their plugin's memory (and its resident bytes) for the next
/// call of the same plugin. wasmtime's default keeps 100: every plugin and every
/// overlap of calls warms slots of its own, each holding up to [`KEEP_RESIDENT_MEMORY`]
/// per memory for good, so a gateway's resting memory grew with the traffic it had
/// seen. Past this many, a call reuses the least recently used idle slot (remapping
/// its memory image, a few µs) instead of warming a new one.
const WARM_SLOTS: u32 = 4;
/// Epoch tick: deadlines are enforced to about this granularity.
const TICK: Duration = Duration::from_millis(5);
/// How long a call waits for a free slot before failing as busy.
const QUEUE_WAIT: Duration = Duration::from_secs(2);
/// Captured guest stderr (panic messages), per call.
const STDERR_BYTES: usize = 4096;
/// Log lines a single call may emit; the rest are dropped with one notice.
const LOG_LINES_PER_CALL: u32 = 32;
/// Longest log line kept.
const LOG_LINE_BYTES: usize = 2048;

/// Why a plugin call failed. The call fails; the plugin and the host keep serving.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("plugin \"{plugin}\" ran past its {limit_ms} ms deadline and was stopped")]
    Timeout { plugin: Arc<str>, limit_ms: u32 },
    #[error(
        "plugin \"{plugin}\" tried to use more than its {limit_mb} MiB memory limit and was stopped"
    )]
    Memory { plugin: Arc<str>, limit_mb: u32 },
    #[error("plugin \"{plugin}\" crashed: {detail}")]
    Trap { plugin: Arc<str>, detail: String },
    #[error("plugin \"{plugin}\" is busy ({slots} calls in flight); try again")]
    Busy { plugin: Arc<str>, slots: u32 },
    #[error("plugin \"{plugin}\" returned something the host refuses: {detail}")]
    Invalid { plugin: Arc<str>, detail: String },
    #[error("plugin \"{plugin}\" refused: {detail}")]
    Refused { plugin: Arc<str>, detail: String },
}

impl CallError {
    /// Short kind for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "timeout",
            Self::Memory { .. } => "memory",
            Self::Trap { .. } => "trap",
            Self::Busy { .. } => "busy",
            Self::Invalid { .. } => "invalid",
            Self::Refused { .. } => "refused",
        }
    }
}

/// Why a component could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    #[error(
        "built against {found}; this host supports {PLUGIN_INTERFACE}@{SUPPORTED_WIT}: rebuild the plugin with a matching portcullis-sdk, or upgrade Portcullis"
    )]
    UnsupportedWit { found: String },
    #[error("does not export {PLUGIN_INTERFACE}@{SUPPORTED_WIT}; exports found: {found}")]
    NotAPlugin { found: String },
    #[error("cannot be linked: {0}")]
    Link(String),
}

/// Store data: WASI state with nothing granted, the memory limiter, the deadline.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    plugin: Arc<str>,
    deadline: Instant,
    log_lines: u32,
    stderr: MemoryOutputPipe,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl self::portcullis::provider::types::Host for State {}

impl self::portcullis::provider::log::Host for State {
    fn log(&mut self, level: self::portcullis::provider::log::Level, message: String) {
        use self::portcullis::provider::log::Level;
        self.log_lines += 1;
        if self.log_lines > LOG_LINES_PER_CALL {
            if self.log_lines == LOG_LINES_PER_CALL + 1 {
                tracing::warn!(target: "plugin", plugin = %self.plugin, "more than {LOG_LINES_PER_CALL} log lines in one call; dropping the rest");
            }
            return;
        }
        let mut msg = message;
        if msg.len() > LOG_LINE_BYTES {
            let mut cut = LOG_LINE_BYTES;
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            msg.truncate(cut);
            msg.push('…');
        }
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(target: "plugin", plugin, "{msg}"),
            Level::Debug => tracing::debug!(target: "plugin", plugin, "{msg}"),
            Level::Info => tracing::info!(target: "plugin", plugin, "{msg}"),
            Level::Warn => tracing::warn!(target: "plugin", plugin, "{msg}"),
            Level::Error => tracing::error!(target: "plugin", plugin, "{msg}"),
        }
    }
}

/// Caps linear memory per store and remembers that it did, so the error can say so.
struct Limiter {
    max_memory: usize,
    denied: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.denied = true;
            return Err(wasmtime::format_err!(
                "memory limit of {} bytes reached",
                self.max_memory
            ));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// A compiled plugin, ready to instantiate.
pub struct Prepared {
    /// Instantiates the plugin for a hook's call: see [`Exports`].
    pre: InstancePre<State>,
    exports: Exports,
    /// bindgen's bindings, for [`Call::Describe`] only. Instantiating through them
    /// type-checks every function of the base interface, so a plugin whose functions do
    /// not have the WIT's types is refused at load.
    base: ProviderBasePre<State>,
    /// The 0.1.1 interfaces, when the plugin exports them (for `Describe`).
    since_0_1_1: Option<since_0_1_1::Since011Pre<State>>,
    /// The 0.1.2 interfaces, when the plugin exports them (for `Describe`).
    since_0_1_2: Option<since_0_1_2::Since012Pre<State>>,
    /// The 0.1.5 interface, when the plugin exports it (for `Describe`).
    since_0_1_5: Option<since_0_1_5::Since015Pre<State>>,
    id: Arc<str>,
    limits: Limits,
}

/// The functions the hooks call, looked up once when the plugin is prepared. A hook's
/// call instantiates the plugin and type-checks only the function it runs: bindgen's
/// instantiation type-checks the base interface's seven functions every time, about a
/// tenth of a `shape-request` call (docs/performance-log.md).
struct Exports {
    shape_request: ComponentExportIndex,
    read_token_response: ComponentExportIndex,
    discover: ComponentExportIndex,
    classify_response: ComponentExportIndex,
    list_tools: ComponentExportIndex,
    build_tool_call: ComponentExportIndex,
    /// `tool-results.shape-result`, when the plugin exports 0.1.2.
    shape_result: Option<ComponentExportIndex>,
    /// Where the plugin's routes come from: `routes-v2` (0.1.4) when it exports it,
    /// else `routes` (0.1.3).
    request_routes: Option<RoutesExport>,
}

/// The `request-routes` a plugin exports, newest first.
enum RoutesExport {
    V1(ComponentExportIndex),
    V2(ComponentExportIndex),
}

impl Exports {
    fn find(
        engine: &Engine,
        component: &Component,
        since_0_1_2: bool,
        since_0_1_3: bool,
        since_0_1_4: bool,
    ) -> Result<Self, PrepareError> {
        let base = functions(engine, component, PLUGIN_INTERFACE);
        Ok(Self {
            shape_request: base("shape-request")?,
            read_token_response: base("read-token-response")?,
            discover: base("discover")?,
            classify_response: base("classify-response")?,
            list_tools: base("list-tools")?,
            build_tool_call: base("build-tool-call")?,
            shape_result: since_0_1_2
                .then(|| functions(engine, component, TOOL_RESULTS)("shape-result"))
                .transpose()?,
            request_routes: if since_0_1_4 {
                Some(RoutesExport::V2(functions(engine, component, ROUTES_V2)(
                    "request-routes",
                )?))
            } else if since_0_1_3 {
                Some(RoutesExport::V1(functions(engine, component, ROUTES)(
                    "request-routes",
                )?))
            } else {
                None
            },
        })
    }
}

impl Prepared {
    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether the plugin exports `routes` (0.1.3) or `routes-v2` (0.1.4).
    pub fn has_routes(&self) -> bool {
        self.exports.request_routes.is_some()
    }
}

/// One call into a plugin.
#[derive(Debug)]
pub enum Call {
    /// Everything a plugin says about itself at load: [`Description`].
    Describe,
    ShapeRequest(types::Context, types::OutgoingRequest),
    ReadTokenResponse(types::Context, u16, String),
    Discover(types::Context, String, Option<types::Response>),
    ClassifyResponse(types::Context, u16, Vec<types::Header>, Vec<u8>),
    ListTools(types::Context),
    BuildToolCall(types::Context, String, String),
    /// `tool-results.shape-result` (0.1.2): context, tool, status, body.
    ShapeResult(types::Context, String, u16, Vec<u8>),
    /// `routes-v2.request-routes` (0.1.4), or `routes.request-routes` (0.1.3) as
    /// routes of 0.1.4.
    RequestRoutes(types::Context),
}

impl Call {
    /// The hook's WIT name, for logs and metrics.
    pub fn hook(&self) -> &'static str {
        match self {
            Self::Describe => "describe",
            Self::ShapeRequest(..) => "shape-request",
            Self::ReadTokenResponse(..) => "read-token-response",
            Self::Discover(..) => "discover",
            Self::ClassifyResponse(..) => "classify-response",
            Self::ListTools(..) => "list-tools",
            Self::BuildToolCall(..) => "build-tool-call",
            Self::ShapeResult(..) => "shape-result",
            Self::RequestRoutes(..) => "request-routes",
        }
    }
}

/// What a plugin says about itself at load: `defaults()` and what each interface added
/// since 0.1.0 answers, when the plugin exports it.
#[derive(Debug)]
pub struct Description {
    pub defaults: types::ProviderDefaults,
    /// `oauth-extras.options()` (0.1.1).
    pub oauth_options: Option<oauth_extras::OauthOptions>,
    /// `catalog.entries()` (0.1.1); empty before.
    pub entries: Vec<catalog::Entry>,
    /// `auth-extras.options()` (0.1.2).
    pub auth_options: Option<auth_extras::AuthOptions>,
    /// `tool-results.shaped()` (0.1.2); empty before.
    pub shaped_results: Vec<String>,
    /// `classify-markers.ok-markers()` (0.1.5); empty before.
    pub ok_markers: Vec<DeclaredOkMarker>,
}

/// What the call returned (one variant per [`Call`]).
#[derive(Debug)]
pub enum Reply {
    Describe(Box<Description>),
    ShapeRequest(Result<types::ShapedRequest, types::PluginError>),
    ReadTokenResponse(Result<types::TokenInfo, types::TokenError>),
    Discover(types::Discovery),
    ClassifyResponse(types::Classification),
    ListTools(Vec<types::Tool>),
    BuildToolCall(Result<types::ToolRequest, types::PluginError>),
    ShapeResult(Result<String, types::PluginError>),
    RequestRoutes(Vec<DeclaredRoute>),
}

/// The engine, linker and call slots; shared by every plugin.
pub struct Runtime {
    engine: Engine,
    linker: Linker<State>,
    permits: Arc<Semaphore>,
    cache_dir: Option<PathBuf>,
    sizing: Sizing,
    ticker: Ticker,
}

impl Runtime {
    /// Builds the engine (pooling if the address space allows, on-demand otherwise) and
    /// starts the epoch ticker. `cache_dir` holds compiled code; `None` disables it.
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Arc<Self>> {
        let limit = address_space_limit();
        let mut sizing = Sizing::for_limit(limit);
        let engine = match Engine::new(&config(sizing)) {
            Ok(e) => e,
            Err(e) if sizing.pooling => {
                tracing::warn!(
                    "the pooling allocator is unavailable ({e:#}); plugins use on-demand allocation"
                );
                sizing.pooling = false;
                Engine::new(&config(sizing)).map_err(|e| anyhow::anyhow!("{e:#}"))?
            }
            Err(e) => return Err(anyhow::anyhow!("{e:#}")),
        };
        match limit {
            Some(bytes) => tracing::info!(
                address_space_limit_mib = bytes >> 20,
                concurrent_calls = sizing.slots,
                pooling = sizing.pooling,
                "plugin sandbox sized to the address space limit"
            ),
            None => tracing::debug!(
                concurrent_calls = sizing.slots,
                pooling = sizing.pooling,
                "plugin sandbox"
            ),
        }
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("linking WASI: {e:#}"))?;
        ProviderBase::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("linking the provider world: {e:#}"))?;
        let cache_dir = cache_dir.and_then(|d| match private_dir(&d) {
            Ok(()) => Some(d),
            Err(e) => {
                tracing::warn!(dir = %d.display(), "compiled-plugin cache disabled: {e:#}");
                None
            }
        });
        let ticker = Ticker::spawn(&engine);
        Ok(Arc::new(Self {
            engine,
            linker,
            permits: Arc::new(Semaphore::new(sizing.slots as usize)),
            cache_dir,
            sizing,
            ticker,
        }))
    }

    /// How calls are allocated and how many run at once.
    pub fn sizing(&self) -> Sizing {
        self.sizing
    }

    /// Compiles (or loads from the cache) and links a component whose bytes hash to
    /// `sha256`, checking that it exports a supported WIT version.
    pub fn prepare(
        &self,
        id: &str,
        wasm: &[u8],
        sha256: &str,
        limits: Limits,
    ) -> Result<Prepared, PrepareError> {
        let component = self.compile(wasm, sha256)?;
        check_wit_version(&self.engine, &component)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PrepareError::Link(format!("{e:#}")))?;
        let since_0_1_1 = probe(&self.engine, &component, &SINCE_0_1_1_INTERFACES, "0.1.1")?
            .then(|| since_0_1_1::Since011Pre::new(pre.clone()))
            .transpose()
            .map_err(|e| PrepareError::Link(format!("{e:#}")))?;
        let since_0_1_2 = probe(&self.engine, &component, &SINCE_0_1_2_INTERFACES, "0.1.2")?
            .then(|| since_0_1_2::Since012Pre::new(pre.clone()))
            .transpose()
            .map_err(|e| PrepareError::Link(format!("{e:#}")))?;
        let since_0_1_3 = probe(&self.engine, &component, &SINCE_0_1_3_INTERFACES, "0.1.3")?;
        let since_0_1_4 = probe(&self.engine, &component, &SINCE_0_1_4_INTERFACES, "0.1.4")?;
        let since_0_1_5 = probe(&self.engine, &component, &SINCE_0_1_5_INTERFACES, "0.1.5")?
            .then(|| since_0_1_5::Since015Pre::new(pre.clone()))
            .transpose()
            .map_err(|e| PrepareError::Link(format!("{e:#}")))?;
        let exports = Exports::find(
            &self.engine,
            &component,
            since_0_1_2.is_some(),
            since_0_1_3,
            since_0_1_4,
        )?;
        let base =
            ProviderBasePre::new(pre.clone()).map_err(|e| PrepareError::Link(format!("{e:#}")))?;
        Ok(Prepared {
            pre,
            exports,
            base,
            since_0_1_1,
            since_0_1_2,
            since_0_1_5,
            id: Arc::from(id),
            limits,
        })
    }

    fn compile(&self, wasm: &[u8], sha256: &str) -> Result<Component, PrepareError> {
        let cached = self.cache_dir.as_ref().map(|dir| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.engine.precompile_compatibility_hash().hash(&mut h);
            dir.join(format!("{sha256}-{:016x}.cwasm", h.finish()))
        });
        if let Some(path) = cached.as_deref().filter(|p| p.is_file()) {
            match load_cached(&self.engine, path) {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(file = %path.display(), "ignoring a cached compiled plugin: {e:#}")
                }
            }
        }
        let compiled = self.compile_and_cache(wasm, cached.as_deref());
        // After the compile and the cache's serialization, which both free what they used.
        release_freed_memory();
        compiled
    }

    /// Compiles `wasm` and, with a cache file, writes it there and serves it from that
    /// file, as every later start will: its code pages are then the page cache's
    /// (shared, reclaimable), not anonymous memory held for the process's life.
    fn compile_and_cache(
        &self,
        wasm: &[u8],
        cached: Option<&Path>,
    ) -> Result<Component, PrepareError> {
        let component = Component::new(&self.engine, wasm)
            .map_err(|e| PrepareError::Compile(format!("{e:#}")))?;
        let Some(path) = cached else {
            return Ok(component);
        };
        if let Err(e) = store_cached(&component, path) {
            tracing::warn!(file = %path.display(), "cannot cache a compiled plugin: {e:#}");
            return Ok(component);
        }
        match load_cached(&self.engine, path) {
            Ok(mapped) => Ok(mapped),
            Err(e) => {
                tracing::warn!(file = %path.display(), "cannot map a compiled plugin just cached: {e:#}");
                Ok(component)
            }
        }
    }

    /// Runs one call in a fresh store with the plugin's memory cap and deadline.
    pub async fn call(&self, p: &Prepared, call: Call) -> Result<Reply, CallError> {
        // One permit per instance the call makes, so the pool always has their slots
        // (without a pool, where there may be fewer permits, one each is enough).
        let instances = match call {
            Call::Describe => {
                1 + u32::from(p.since_0_1_1.is_some())
                    + u32::from(p.since_0_1_2.is_some())
                    + u32::from(p.since_0_1_5.is_some())
            }
            _ => 1,
        }
        .min(self.sizing.slots);
        let _permit =
            match tokio::time::timeout(QUEUE_WAIT, self.permits.acquire_many(instances)).await {
                Ok(Ok(permit)) => permit,
                _ => {
                    return Err(CallError::Busy {
                        plugin: p.id.clone(),
                        slots: self.sizing.slots,
                    });
                }
            };
        let budget = Duration::from_millis(u64::from(p.limits.timeout_ms));
        let stderr = MemoryOutputPipe::new(STDERR_BYTES);
        let wasi = WasiCtxBuilder::new().stderr(stderr.clone()).build();
        let mut store = Store::new(
            &self.engine,
            State {
                wasi,
                table: ResourceTable::new(),
                limiter: Limiter {
                    max_memory: p.limits.max_memory_mb as usize * 1024 * 1024,
                    denied: false,
                },
                plugin: p.id.clone(),
                deadline: Instant::now() + budget,
                log_lines: 0,
                stderr,
            },
        );
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            Ok(if Instant::now() >= ctx.data().deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });
        let _ticking = self.ticker.running();
        let run = run(p, &mut store, call);
        // The epoch callback stops a looping guest; this backstops a host-side stall.
        let outcome = tokio::time::timeout(budget + TICK * 4, run).await;
        match outcome {
            Ok(Ok(reply)) => Ok(reply),
            Err(_) => Err(CallError::Timeout {
                plugin: p.id.clone(),
                limit_ms: p.limits.timeout_ms,
            }),
            Ok(Err(e)) => Err(call_error(e, store.data(), p)),
        }
    }
}

async fn run(p: &Prepared, store: &mut Store<State>, call: Call) -> wasmtime::Result<Reply> {
    let e = &p.exports;
    Ok(match call {
        Call::Describe => Reply::Describe(Box::new(describe(p, store).await?)),
        Call::ShapeRequest(ctx, req) => {
            Reply::ShapeRequest(run_one(p, store, &e.shape_request, (&ctx, &req)).await?)
        }
        Call::ReadTokenResponse(ctx, status, body) => Reply::ReadTokenResponse(
            run_one(p, store, &e.read_token_response, (&ctx, status, &body)).await?,
        ),
        Call::Discover(ctx, state, last) => {
            Reply::Discover(run_one(p, store, &e.discover, (&ctx, &state, last.as_ref())).await?)
        }
        Call::ClassifyResponse(ctx, status, headers, body) => Reply::ClassifyResponse(
            run_one(
                p,
                store,
                &e.classify_response,
                (&ctx, status, &headers, &body),
            )
            .await?,
        ),
        Call::ListTools(ctx) => Reply::ListTools(run_one(p, store, &e.list_tools, (&ctx,)).await?),
        Call::BuildToolCall(ctx, name, args) => {
            Reply::BuildToolCall(run_one(p, store, &e.build_tool_call, (&ctx, &name, &args)).await?)
        }
        Call::ShapeResult(ctx, name, status, body) => {
            let Some(f) = &e.shape_result else {
                return Err(wasmtime::format_err!(
                    "the plugin does not export tool-results (WIT 0.1.2)"
                ));
            };
            Reply::ShapeResult(run_one(p, store, f, (&ctx, &name, status, &body)).await?)
        }
        Call::RequestRoutes(ctx) => Reply::RequestRoutes(match &e.request_routes {
            Some(RoutesExport::V2(f)) => run_one(p, store, f, (&ctx,)).await?,
            Some(RoutesExport::V1(f)) => {
                let v1: Vec<DeclaredRouteV1> = run_one(p, store, f, (&ctx,)).await?;
                v1.into_iter().map(route_of_v1).collect()
            }
            None => {
                return Err(wasmtime::format_err!(
                    "the plugin does not export routes (WIT 0.1.3)"
                ));
            }
        }),
    })
}

/// A 0.1.3 route as 0.1.4 says it: the same route, with nothing of what 0.1.4 added.
fn route_of_v1(r: DeclaredRouteV1) -> DeclaredRoute {
    DeclaredRoute {
        prefix: r.prefix,
        target: r.target,
        default_headers: r
            .default_headers
            .into_iter()
            .map(|(name, value)| DefaultHeader {
                name,
                value,
                unless: Vec::new(),
            })
            .collect(),
        query: Vec::new(),
        grant_header: None,
    }
}

/// Instantiates the plugin in `store` and runs the function at `f`, which returns one
/// value (every hook does). Only that function is type-checked; a mismatch fails the
/// call, as bindgen's would.
async fn run_one<P, R>(
    p: &Prepared,
    store: &mut Store<State>,
    f: &ComponentExportIndex,
    args: P,
) -> wasmtime::Result<R>
where
    P: ComponentNamedList + Lower + Send + Sync,
    R: ComponentType + Lift + Send + Sync + 'static,
{
    let instance = p.pre.instantiate_async(&mut *store).await?;
    let f = instance.get_typed_func::<P, (R,)>(&mut *store, f)?;
    let (r,) = f.call_async(&mut *store, args).await?;
    Ok(r)
}

/// `defaults()` and the later interfaces' load-time answers. Each later interface gets an
/// instance of its own binding (they are separate worlds); all share the call's store,
/// so a plugin of every version takes four instances (and permits) and up to four times
/// its memory cap here, once, at load.
async fn describe(p: &Prepared, store: &mut Store<State>) -> wasmtime::Result<Description> {
    let base = p.base.instantiate_async(&mut *store).await?;
    let defaults = base
        .portcullis_provider_plugin()
        .call_defaults(&mut *store)
        .await?;
    let (oauth_options, entries) = match &p.since_0_1_1 {
        Some(pre) => {
            let i = pre.instantiate_async(&mut *store).await?;
            let options = i
                .portcullis_provider_oauth_extras()
                .call_options(&mut *store)
                .await?;
            let entries = i
                .portcullis_provider_catalog()
                .call_entries(&mut *store)
                .await?;
            (Some(options), entries)
        }
        None => (None, Vec::new()),
    };
    let (auth_options, shaped_results) = match &p.since_0_1_2 {
        Some(pre) => {
            let i = pre.instantiate_async(&mut *store).await?;
            let options = i
                .portcullis_provider_auth_extras()
                .call_options(&mut *store)
                .await?;
            let shaped = i
                .portcullis_provider_tool_results()
                .call_shaped(&mut *store)
                .await?;
            (Some(options), shaped)
        }
        None => (None, Vec::new()),
    };
    let ok_markers = match &p.since_0_1_5 {
        Some(pre) => {
            pre.instantiate_async(&mut *store)
                .await?
                .portcullis_provider_classify_markers()
                .call_ok_markers(&mut *store)
                .await?
        }
        None => Vec::new(),
    };
    Ok(Description {
        defaults,
        oauth_options,
        entries,
        auth_options,
        shaped_results,
        ok_markers,
    })
}

/// Whether `component` exports the interfaces one version added: all of them, or none
/// (a plugin built before it); some but not all is a build against a mismatched SDK.
fn probe(
    engine: &Engine,
    component: &Component,
    interfaces: &[&str],
    version: &str,
) -> Result<bool, PrepareError> {
    let (has, lacks): (Vec<&str>, Vec<&str>) = interfaces
        .iter()
        .partition(|i| exported_interface(engine, component, i).is_some());
    match (has.is_empty(), lacks.is_empty()) {
        (true, _) => Ok(false),
        (false, true) => Ok(true),
        (false, false) => Err(PrepareError::Link(format!(
            "exports {} but not {}; they all came with WIT {version}: rebuild the plugin with a matching portcullis-sdk",
            has.join(", "),
            lacks.join(", ")
        ))),
    }
}

/// Turns a wasmtime error into what happened, in words an operator can act on.
fn call_error(e: wasmtime::Error, state: &State, p: &Prepared) -> CallError {
    let plugin = p.id.clone();
    if state.limiter.denied {
        return CallError::Memory {
            plugin,
            limit_mb: p.limits.max_memory_mb,
        };
    }
    if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return CallError::Timeout {
            plugin,
            limit_ms: p.limits.timeout_ms,
        };
    }
    // A Rust guest prints its panic message to stderr before trapping.
    let stderr = state.stderr.contents();
    let panic = String::from_utf8_lossy(&stderr);
    let panic = panic.trim();
    let detail = match e.downcast_ref::<Trap>() {
        Some(trap) if !panic.is_empty() => format!("{trap}: {panic}"),
        Some(trap) => trap.to_string(),
        None => format!("{e:#}"),
    };
    CallError::Trap { plugin, detail }
}

/// How many plugin calls run at once and whether their instances come from a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// Concurrent calls; with pooling, also the pool's slots.
    pub slots: u32,
    pub pooling: bool,
}

/// Address space one pool slot reserves: its linear memories with their guards, and
/// the async stack with its guard page.
const SLOT_ADDRESS_SPACE: u64 =
    MEMORIES_PER_SLOT * (MEMORY_RESERVATION + 2 * MEMORY_GUARD) + ASYNC_STACK as u64 + (64 << 10);

impl Sizing {
    /// `limit` is the process's address space limit in bytes (`None`: unlimited). The
    /// pool takes at most half of a limit; when fewer than [`MIN_POOL_SLOTS`] fit,
    /// instances are allocated on demand and calls are bounded the same way, so a busy
    /// host answers `busy` rather than failing to map memory.
    pub fn for_limit(limit: Option<u64>) -> Self {
        let Some(limit) = limit else {
            return Self {
                slots: POOL_SLOTS,
                pooling: true,
            };
        };
        let fits = (limit / POOL_SHARE_OF_LIMIT / SLOT_ADDRESS_SPACE).min(u64::from(POOL_SLOTS));
        let fits = u32::try_from(fits).unwrap_or(POOL_SLOTS);
        Self {
            slots: fits.max(1),
            pooling: fits >= MIN_POOL_SLOTS,
        }
    }
}

/// The soft `RLIMIT_AS` (what `ulimit -v` sets), `None` when unlimited.
fn address_space_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rustix::process::getrlimit(rustix::process::Resource::As).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

fn config(sizing: Sizing) -> Config {
    let mut cfg = Config::new();
    cfg.wasm_component_model(true)
        .epoch_interruption(true)
        .memory_init_cow(true)
        .memory_reservation(MEMORY_RESERVATION)
        .memory_guard_size(MEMORY_GUARD)
        // A memory that outgrows its reservation would be moved; plugins are capped
        // below it, so nothing is reserved for growth.
        .memory_reservation_for_growth(0)
        // Plugin stacks stay small; deep recursion traps instead of growing.
        .max_wasm_stack(512 * 1024)
        .async_stack_size(ASYNC_STACK);
    if sizing.pooling {
        let slots = sizing.slots;
        let mut p = PoolingAllocationConfig::default();
        p.total_component_instances(slots)
            .total_core_instances(8 * slots)
            .total_memories(MEMORIES_PER_SLOT as u32 * slots)
            .total_tables(8 * slots)
            .total_stacks(slots)
            .max_memories_per_component(MEMORIES_PER_SLOT as u32)
            .max_tables_per_component(8)
            .max_memory_size((super::manifest::MAX_MEMORY_MB as usize) << 20)
            // Returning a slot to the pool costs a madvise and a TLB shootdown across
            // threads, and reusing it page faults; resetting the small part a call
            // touches with memset and batching the rest takes both off the hot path.
            .decommit_batch_size(DECOMMIT_BATCH)
            .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
            .table_keep_resident(KEEP_RESIDENT_TABLE)
            .max_unused_warm_slots(WARM_SLOTS);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
    }
    cfg
}

/// Returns to the OS the memory Cranelift freed on this thread. Compiling a component
/// allocates tens of MiB and frees them when done, but the allocator (mimalloc, the
/// binary's global allocator) keeps a thread's freed pages until that thread allocates
/// again, and a blocking thread that compiled and then idles would keep them for good.
/// For the same reason components compile on the calling thread: wasmtime's
/// `parallel-compilation` feature is off, as its pool of compiler threads would idle
/// holding the pages they freed. A plugin compiles once per version (then it comes from
/// the cache), so the one-off cost is small (the four verified plugins: about 0.6 s
/// instead of 0.4 s at a first start). Measured: a gateway that compiled the four
/// verified plugins at start rests at about 39 MiB, not 57 MiB (docs/performance-log.md).
#[allow(unsafe_code)]
fn release_freed_memory() {
    // SAFETY: `mi_collect` takes no pointers and only walks the allocator's own state
    // for the calling thread and its arenas; it may be called at any time, and when
    // mimalloc is not the global allocator (unit tests) it finds nothing to free.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Advances the engine's epoch every [`TICK`] while a plugin call runs, and sleeps
/// otherwise: an idle gateway wakes no thread for its plugins.
struct Ticker {
    shared: Arc<Ticks>,
}

/// What the ticker thread and the calls share.
#[derive(Default)]
struct Ticks {
    /// Calls running now.
    running: AtomicUsize,
    /// Set when the runtime is dropped: the thread ends.
    stop: AtomicBool,
    /// Epoch increments so far.
    made: AtomicU64,
    /// The ticker thread, woken when the first call starts and at the end.
    thread: std::sync::OnceLock<std::thread::Thread>,
}

/// A call in progress: the epoch moves until the last one is dropped.
struct Ticking<'a>(&'a Ticks);

impl Ticker {
    fn spawn(engine: &Engine) -> Self {
        let shared = Arc::new(Ticks::default());
        let (weak, ticks) = (engine.weak(), shared.clone());
        let spawned = std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while !ticks.stop.load(Ordering::Acquire) {
                    // Checked after each wake-up: a call that started between the
                    // check and `park` has unparked it already, so `park` returns.
                    if ticks.running.load(Ordering::Acquire) == 0 {
                        std::thread::park();
                        continue;
                    }
                    let Some(engine) = weak.upgrade() else { return };
                    engine.increment_epoch();
                    ticks.made.fetch_add(1, Ordering::Relaxed);
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            });
        match spawned {
            Ok(handle) => {
                let _ = shared.thread.set(handle.thread().clone());
            }
            Err(e) => tracing::error!(
                "cannot start the plugin deadline ticker ({e}); looping plugins are stopped only by the host-side timeout"
            ),
        }
        Self { shared }
    }

    /// Keeps the epoch moving until the returned guard is dropped.
    fn running(&self) -> Ticking<'_> {
        if self.shared.running.fetch_add(1, Ordering::AcqRel) == 0
            && let Some(t) = self.shared.thread.get()
        {
            t.unpark();
        }
        Ticking(&self.shared)
    }
}

impl Drop for Ticking<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.shared.thread.get() {
            t.unpark();
        }
    }
}

/// The name under which `component` exports a 0.1.x version of `interface` (a
/// semver-compatible match, as wasmtime's lookups make), if it does.
fn exported_interface(engine: &Engine, component: &Component, interface: &str) -> Option<String> {
    component
        .component_type()
        .exports(engine)
        .find(|(name, _)| {
            name.strip_prefix(interface)
                .and_then(|v| v.strip_prefix('@'))
                .is_some_and(|v| {
                    let mut parts = v.split('.').map(|p| p.parse::<u64>().ok());
                    (parts.next().flatten(), parts.next().flatten())
                        == (Some(SUPPORTED_MAJOR_MINOR.0), Some(SUPPORTED_MAJOR_MINOR.1))
                })
        })
        .map(|(name, _)| name.to_owned())
}

/// Finds functions by name in the plugin's export of `interface`, which is looked up
/// once for all of them.
fn functions<'a>(
    engine: &Engine,
    component: &'a Component,
    interface: &'a str,
) -> impl Fn(&str) -> Result<ComponentExportIndex, PrepareError> + 'a {
    let exported = exported_interface(engine, component, interface)
        .and_then(|i| component.get_export_index(None, i.as_str()));
    move |name| {
        exported
            .as_ref()
            .and_then(|i| component.get_export_index(Some(i), name))
            .ok_or_else(|| {
                PrepareError::Link(format!(
                    "does not export {name} in {interface}; rebuild the plugin with a matching portcullis-sdk"
                ))
            })
    }
}

/// Checks that `component` exports the plugin interface at a WIT version this host runs.
fn check_wit_version(engine: &Engine, component: &Component) -> Result<(), PrepareError> {
    let ty = component.component_type();
    let mut names = Vec::new();
    for (name, item) in ty.exports(engine) {
        if !matches!(item.ty, ComponentItem::ComponentInstance(_)) {
            names.push(name.to_owned());
            continue;
        }
        if let Some(version) = name
            .strip_prefix(PLUGIN_INTERFACE)
            .and_then(|v| v.strip_prefix('@'))
        {
            let mut parts = version.split('.').map(|p| p.parse::<u64>().ok());
            let (major, minor) = (parts.next().flatten(), parts.next().flatten());
            if (major, minor) == (Some(SUPPORTED_MAJOR_MINOR.0), Some(SUPPORTED_MAJOR_MINOR.1)) {
                return Ok(());
            }
            return Err(PrepareError::UnsupportedWit {
                found: name.to_owned(),
            });
        }
        names.push(name.to_owned());
    }
    Err(PrepareError::NotAPlugin {
        found: if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        },
    })
}

/// Creates the cache folder with mode 0700, or checks that an existing one is private:
/// compiled code is loaded without validation, so only this host may write it.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    crate::vault::private_dir(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.permissions().mode() & 0o077 != 0 {
        anyhow::bail!(
            "{} is readable or writable by other users; chmod 700 it",
            dir.display()
        );
    }
    Ok(())
}

/// Loads compiled code this host wrote earlier.
#[allow(unsafe_code)]
fn load_cached(engine: &Engine, path: &Path) -> anyhow::Result<Component> {
    // SAFETY: `deserialize_file` trusts its input to be code wasmtime produced. The file
    // lives in this host's private (0700, checked in `private_dir`) cache folder and was
    // written by `store_cached` from a component compiled here; wasmtime still checks
    // its version and engine compatibility and fails cleanly on a mismatch.
    unsafe { Component::deserialize_file(engine, path) }.map_err(|e| anyhow::anyhow!("{e:#}"))
}

/// Writes compiled code atomically (temp file + rename) with mode 0600.
fn store_cached(component: &Component, path: &Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let bytes = component
        .serialize()
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_moves_only_while_a_call_runs() {
        let engine = Engine::default();
        let ticker = Ticker::spawn(&engine);
        let made = || ticker.shared.made.load(Ordering::Relaxed);
        let ticks_while = |call: Ticking<'_>| {
            let (from, until) = (made(), Instant::now() + Duration::from_secs(10));
            while made() < from + 3 {
                assert!(Instant::now() < until, "the epoch moves while a call runs");
                std::thread::sleep(TICK);
            }
            drop(call);
        };
        std::thread::sleep(TICK * 10);
        assert_eq!(made(), 0, "no call has run: the ticker has not woken");
        ticks_while(ticker.running());
        let after = made();
        std::thread::sleep(TICK * 10);
        // One increment may have been on its way as the call ended; no more follow.
        assert!(
            made() <= after + 1,
            "{} ticks after the call",
            made() - after
        );
        // Calls overlapping: the epoch moves until the last one ends.
        let first = ticker.running();
        ticks_while(ticker.running());
        ticks_while(first);
    }

    #[test]
    fn the_pool_fits_in_half_of_an_address_space_limit() {
        assert_eq!(
            Sizing::for_limit(None),
            Sizing {
                slots: POOL_SLOTS,
                pooling: true
            }
        );
        let four_gib = Sizing::for_limit(Some(4 << 30));
        assert!(four_gib.pooling, "{four_gib:?}");
        assert!(four_gib.slots >= MIN_POOL_SLOTS, "{four_gib:?}");
        assert!(u64::from(four_gib.slots) * SLOT_ADDRESS_SPACE <= 2 << 30);
        // A roomy limit is capped at the usual pool.
        assert_eq!(Sizing::for_limit(Some(1 << 40)).slots, POOL_SLOTS);
        // Too small for a pool: on demand, still at least one call at a time.
        let tiny = Sizing::for_limit(Some(256 << 20));
        assert_eq!(
            tiny,
            Sizing {
                slots: 1,
                pooling: false
            }
        );
    }

    #[test]
    fn an_engine_sized_for_four_gib_builds_with_pooling() {
        let sizing = Sizing::for_limit(Some(4 << 30));
        Engine::new(&config(sizing)).expect("pooling engine for a 4 GiB limit");
    }
}
