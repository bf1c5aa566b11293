//! The shared state every handler reads: [`App`] (what outlives a config) and the
//! [`Snapshot`] of the config in force. It sits below the handlers and the wiring, so
//! handlers import it and nothing here imports a handler.
//!
//! Everything derived from the config lives in an immutable [`Snapshot`] swapped
//! atomically ([`App::install`]): a request holds the snapshot it started with until it
//! ends, so a new config never drops or half-applies a request. What depends on the
//! config in force (MCP catalogs, discovery results) follows [`App::configs`].

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;

use crate::config::{Config, Diagnostics};
use crate::connections::{Connections, PerUser};
use crate::connector::Connector;
use crate::credentials::TokenSlots;
use crate::egress::Egress;
use crate::health::Health;
use crate::identity::{Caller, Identifier};
use crate::outbound::Outbound;
use crate::plugins::Plugins;
use crate::policy::Policy;
use crate::telemetry::Metrics;
use crate::vault::Vault;

/// Where `serve` gets its settings; flags and environment win over the config file.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub config: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub registry: Option<PathBuf>,
    /// The PostgreSQL vault several replicas share; `None`: redb in `data_dir`.
    pub database_url: Option<crate::vault::DatabaseUrl>,
    /// Audit records go here, else to the log ([`crate::audit`]).
    pub audit_log: Option<PathBuf>,
}

/// Everything derived from one config.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub policy: Policy,
    pub connectors: HashMap<String, Arc<Connector>>,
    pub identity: Identifier,
    /// The browser defence's rules for this config.
    pub browser: crate::browser::Rules,
    pub diagnostics: Diagnostics,
}

impl Snapshot {
    /// Resolves the credentials of a validated config (its compiled policy and warnings
    /// alongside) into a snapshot.
    pub fn build(
        config: Config,
        policy: Policy,
        diagnostics: Diagnostics,
        vault: &Vault,
        tokens: &TokenSlots,
    ) -> anyhow::Result<Self> {
        let mut connectors = HashMap::with_capacity(config.connectors.len());
        for c in config.connectors.values() {
            connectors.insert(c.id.clone(), Arc::new(Connector::build(c, vault, tokens)?));
        }
        tokens.retain(|id| config.connectors.contains_key(id));
        let identity = Identifier::new(&config.identity);
        let browser = crate::browser::Rules::new(&config);
        Ok(Self {
            browser,
            config: Arc::new(config),
            policy,
            connectors,
            identity,
            diagnostics,
        })
    }

    /// The per-user OAuth settings of every connector.
    pub fn per_user(&self) -> impl Iterator<Item = &Arc<PerUser>> {
        self.connectors.values().filter_map(|c| c.per_user())
    }
}

/// A user completed a connector's authorization (the callback succeeded).
#[derive(Debug, Clone)]
pub struct Connected {
    pub caller: Arc<Caller>,
    pub connector: String,
}

/// Long-lived state: what outlives a config.
pub struct App {
    snapshot: ArcSwap<Snapshot>,
    /// Bumped by every [`App::install`].
    configs: tokio::sync::watch::Sender<u64>,
    /// Completed authorizations, for what loads per user (MCP catalogs).
    connected: tokio::sync::broadcast::Sender<Connected>,
    pub egress: Egress,
    pub vault: Arc<Vault>,
    pub tokens: TokenSlots,
    pub metrics: Arc<Metrics>,
    pub options: Options,
    /// The provider registry; rescanned on its own when the folder changes.
    pub plugins: Arc<Plugins>,
    /// Per-user OAuth connections.
    pub connections: Arc<Connections>,
    /// The one pipeline for every upstream call.
    pub outbound: Arc<Outbound>,
    /// Who used what, and every admin change.
    pub audit: crate::audit::Audit,
    /// What the host last saw of each connector's upstream.
    pub health: Arc<Health>,
    /// The address the server is bound to (known once `serve` has bound it).
    pub bound: OnceLock<SocketAddr>,
    /// Where work many connections share runs (upstream MCP sessions).
    pub homes: crate::threads::Homes,
    /// Serialises config changes (reloads, saves).
    pub config_lock: tokio::sync::Mutex<()>,
    /// Why the host cannot serve yet (`None`: ready), for `/healthz`: in `tailscale`
    /// mode, a LocalAPI that cannot be reached, when every request would get 503.
    not_ready: std::sync::RwLock<Option<String>>,
    /// Hash of the config text in force (what a save must name).
    config_hash: std::sync::Mutex<String>,
    /// Rescans the registry when its folder changes; stops when dropped.
    _registry_watcher: Option<notify::RecommendedWatcher>,
}

/// The parts [`App`] is made of.
pub struct Parts {
    pub snapshot: Snapshot,
    pub egress: Egress,
    pub vault: Arc<Vault>,
    pub tokens: TokenSlots,
    pub metrics: Arc<Metrics>,
    pub options: Options,
    pub plugins: Arc<Plugins>,
    pub connections: Arc<Connections>,
    pub audit: crate::audit::Audit,
    pub registry_watcher: Option<notify::RecommendedWatcher>,
    /// Hash of the config text the snapshot was built from.
    pub config_hash: String,
    /// The connection threads' runtimes, for work many connections share.
    pub homes: crate::threads::Homes,
}

impl App {
    pub fn new(p: Parts) -> Self {
        let health = Arc::new(Health::default());
        let outbound = Outbound::new(
            p.egress.clone(),
            p.plugins.clone(),
            p.connections.clone(),
            health.clone(),
            p.metrics.clone(),
        );
        Self {
            snapshot: ArcSwap::from_pointee(p.snapshot),
            configs: tokio::sync::watch::Sender::new(0),
            connected: tokio::sync::broadcast::Sender::new(64),
            egress: p.egress,
            vault: p.vault,
            tokens: p.tokens,
            metrics: p.metrics,
            options: p.options,
            plugins: p.plugins,
            connections: p.connections,
            outbound,
            audit: p.audit,
            health,
            bound: OnceLock::new(),
            homes: p.homes,
            config_lock: tokio::sync::Mutex::new(()),
            not_ready: std::sync::RwLock::new(None),
            config_hash: std::sync::Mutex::new(p.config_hash),
            _registry_watcher: p.registry_watcher,
        }
    }

    /// Why the host is not ready, if it is not.
    pub fn not_ready(&self) -> Option<String> {
        self.not_ready
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records readiness; returns whether it changed.
    pub fn set_not_ready(&self, why: Option<String>) -> bool {
        let mut cur = self.not_ready.write().unwrap_or_else(|p| p.into_inner());
        let changed = *cur != why;
        *cur = why;
        changed
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Puts a new config in force: the egress switches follow it, discovery starts
    /// afresh, every follower of [`App::configs`] hears of it, and the per-user
    /// connections no connector uses any more are revoked (removing a connector, or
    /// changing its OAuth client, ends every user's authorization on it, revoked with
    /// the client it was made with). Callers hold [`App::config_lock`].
    pub fn install(&self, snap: Snapshot, config_hash: String) {
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
        self.health.retain(|id| snap.connectors.contains_key(id));
        self.snapshot.store(Arc::new(snap));
        *self
            .config_hash
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = config_hash;
        self.outbound.config_changed();
        self.configs.send_modify(|n| *n = n.wrapping_add(1));
        if !gone.is_empty() {
            let connections = self.connections.clone();
            tokio::spawn(async move {
                for pu in gone {
                    tracing::info!(connector = %pu.connector, "connector removed or changed: revoking every user's tokens");
                    connections.revoke_all(&pu).await;
                }
            });
        }
    }

    /// Hash of the config text in force.
    pub fn config_hash(&self) -> String {
        self.config_hash
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Changes whenever a new config is put in force.
    pub fn configs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.configs.subscribe()
    }

    /// Reports a completed authorization to whoever follows [`App::connections_made`].
    pub fn connected(&self, caller: Arc<Caller>, connector: &str) {
        // No follower is fine: nothing then needs loading.
        let _ = self.connected.send(Connected {
            caller,
            connector: connector.to_owned(),
        });
    }

    /// Completed authorizations from now on.
    pub fn connections_made(&self) -> tokio::sync::broadcast::Receiver<Connected> {
        self.connected.subscribe()
    }
}

/// Per-user connections of `old` that no connector of `new` uses any more.
fn removed_connections(old: &Snapshot, new: &Snapshot) -> Vec<Arc<PerUser>> {
    let live: HashSet<&str> = new.per_user().map(|p| p.connection.as_str()).collect();
    let mut gone: Vec<Arc<PerUser>> = Vec::new();
    for pu in old.per_user() {
        if !live.contains(pu.connection.as_str())
            && !gone.iter().any(|g| g.connection == pu.connection)
        {
            gone.push(pu.clone());
        }
    }
    gone
}
