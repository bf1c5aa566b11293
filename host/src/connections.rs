//! Per-user OAuth connections (`oauth2_authorization_code`, `oauth2_dcr`): connect,
//! callback, sealed token storage, refresh, status and disconnect.
//!
//! A *connection* is one user's authorization at one OAuth client. Connectors of the
//! same registry provider with the same client (client id and token URL) share it, so a
//! Google authorization serves a Gmail and a Drive connector alike; other connectors
//! have a connection of their own. Tokens are stored sealed per (connection, user) and
//! cached in memory; nothing here ever formats a token into a log line or an error.
//!
//! Refresh is single-flight per (connection, user): one task holds the slot's lock,
//! re-reads the tokens after acquiring it (another request may have refreshed them
//! already), and stores a rotated refresh token before anyone can use it. `invalid_grant`
//! ends the connection (the user must connect again); anything else backs off and
//! keeps the tokens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::HeaderValue;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::authserver;
use crate::config::{self, Auth};
use crate::egress::Egress;
use crate::oauth::{self, ClientAuth};
use crate::plugins::{self, Plugin, Plugins, types};
use crate::telemetry::{Metrics, UserTokenLabels};
use crate::vault::resolve_secret;
use crate::vault::{Table, Vault};

/// How long a started authorization may take before its callback is refused.
pub const PENDING_TTL: Duration = Duration::from_secs(15 * 60);
/// Longest a token is trusted without a refresh, whatever `expires_in` says.
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// First wait after a failed refresh; doubles per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Authorize-request parameters the host sets itself; `auth_params` cannot replace them.
const RESERVED_PARAMS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "state",
    "scope",
    "code_challenge",
    "code_challenge_method",
    "resource",
];

/// The connection status a caller sees for a connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Status {
    #[serde(rename = "No access")]
    NoAccess,
    #[serde(rename = "Needs auth")]
    NeedsAuth,
    #[serde(rename = "Ready")]
    Ready,
    /// Connected, but without a refresh token: the provider was not asked for offline
    /// access, so the connection dies with its access token.
    #[serde(rename = "Misconfigured")]
    Misconfigured,
}

/// Why a per-user credential could not be used or obtained.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnError {
    #[error(
        "you have not connected \"{connector}\" yet (or the provider ended the connection); connect it first: POST /api/connectors/{connector}/connect and open the auth_url it returns in your browser"
    )]
    NeedsAuth { connector: String },
    #[error(
        "your \"{connector}\" connection has no refresh token and its access token expired; ask an admin to enable offline access for the connector, then reconnect"
    )]
    Misconfigured { connector: String },
    #[error(
        "refreshing your \"{connector}\" token failed ({detail}); Portcullis keeps your connection and retries in {retry_secs}s"
    )]
    RefreshFailed {
        connector: String,
        detail: String,
        retry_secs: u64,
    },
    #[error(
        "connector \"{connector}\" uses provider \"{provider}\", which is not loaded from the registry; GET /api/registry lists what loaded and why entries failed"
    )]
    ProviderUnavailable { connector: String, provider: String },
    #[error("connector \"{connector}\": {detail}")]
    Setup { connector: String, detail: String },
    #[error(
        "your \"{connector}\" connection has no \"{grant}\" token; reconnect and approve the scopes that grant it"
    )]
    NoSuchGrant { connector: String, grant: String },
    #[error("{0}")]
    Internal(String),
}

/// A per-user connector's OAuth settings, resolved from the config when the snapshot is
/// built. Secrets are resolved then too, so a missing one fails the load.
pub struct PerUser {
    pub connector: String,
    /// The connection key: connectors with the same key share users' tokens.
    pub connection: String,
    pub provider: Option<String>,
    pub scopes: Vec<String>,
    pub auth_params: Vec<(String, String)>,
    kind: Kind,
}

#[allow(
    clippy::large_enum_variant,
    reason = "one per connector, built once per config load"
)]
enum Kind {
    Code {
        client: oauth::Client,
        authorization_url: url::Url,
        token_url: url::Url,
        revocation_url: Option<url::Url>,
        refresh_url: Option<url::Url>,
    },
    /// The authorization server is discovered from the connector's URL
    /// ([`crate::authserver`]); the client is the one registered in advance (`client`),
    /// else a client ID metadata document, else registered dynamically (RFC 7591).
    Dcr {
        url: Option<url::Url>,
        client: Option<oauth::Client>,
        metadata_url: Option<url::Url>,
        probe: authserver::Probe,
    },
}

impl std::fmt::Debug for PerUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerUser")
            .field("connector", &self.connector)
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

impl PerUser {
    /// Is the OAuth client registered dynamically (`oauth2_dcr`)?
    pub fn is_dcr(&self) -> bool {
        matches!(self.kind, Kind::Dcr { .. })
    }

    /// Whether a stored registration is still the client the config asks for: a
    /// client set in the config (or one removed from it), or another metadata
    /// document, means discovering again.
    fn still_fits(&self, r: &Registration) -> bool {
        let Kind::Dcr {
            client,
            metadata_url,
            ..
        } = &self.kind
        else {
            return true;
        };
        match (client, r.source) {
            (Some(c), Source::PreRegistered) => c.id == r.client_id,
            (Some(_), _) | (None, Source::PreRegistered) => false,
            (None, Source::MetadataDocument) => {
                metadata_url
                    .as_ref()
                    .is_none_or(|u| u.as_str() == r.client_id)
                    && (metadata_url.is_some()
                        || own_metadata_document(&r.redirect_uri)
                            .is_some_and(|u| u.as_str() == r.client_id))
            }
            (None, Source::Registered) => true,
        }
    }

    /// `None` for connectors whose credential is shared by every user.
    pub fn build(c: &config::Connector, vault: &Vault) -> anyhow::Result<Option<Self>> {
        let provider = (!c.provider.eq_ignore_ascii_case("custom")).then(|| c.provider.clone());
        let path = |field: &str| format!("connectors.servers.{}.auth.{field}", c.id);
        let parse = |field: &str, u: &str| {
            url::Url::parse(u).map_err(|e| anyhow::anyhow!("{}: {e}", path(field)))
        };
        let (kind, scopes, auth_params, connection) = match &c.auth {
            Auth::AuthorizationCode(a) => {
                let secret = a
                    .client_secret
                    .as_ref()
                    .map(|s| resolve_secret(s, vault, &path("client_secret")))
                    .transpose()?;
                let token_url = parse("token_url", &a.token_url)?;
                // One authorization per user serves every connector of the same
                // provider and OAuth client.
                let connection = match &provider {
                    Some(p) => format!("{}|{}|{}", p.to_ascii_lowercase(), a.client_id, token_url),
                    None => format!("connector|{}|{}|{}", c.id, a.client_id, token_url),
                };
                let kind = Kind::Code {
                    client: oauth::Client {
                        id: a.client_id.clone(),
                        secret: secret.map(Arc::new),
                        auth: ClientAuth::Basic,
                        style: oauth::RequestStyle::default(),
                    },
                    authorization_url: parse("authorization_url", &a.authorization_url)?,
                    token_url,
                    revocation_url: a
                        .revocation_url
                        .as_deref()
                        .map(|u| parse("revocation_url", u))
                        .transpose()?,
                    refresh_url: a
                        .refresh_url
                        .as_deref()
                        .map(|u| parse("refresh_url", u))
                        .transpose()?,
                };
                let params = a
                    .auth_params
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                (kind, a.scopes.clone(), params, connection)
            }
            Auth::Dcr(d) => (
                Kind::Dcr {
                    url: c.url.clone(),
                    client: d
                        .client_id
                        .as_ref()
                        .map(|id| -> anyhow::Result<oauth::Client> {
                            let secret = d
                                .client_secret
                                .as_ref()
                                .map(|s| resolve_secret(s, vault, &path("client_secret")))
                                .transpose()?;
                            Ok(oauth::Client {
                                id: id.clone(),
                                secret: secret.map(Arc::new),
                                auth: ClientAuth::Basic,
                                style: oauth::RequestStyle::default(),
                            })
                        })
                        .transpose()?,
                    metadata_url: d
                        .client_metadata_url
                        .as_deref()
                        .map(|u| parse("client_metadata_url", u))
                        .transpose()?,
                    probe: if c.protocol == config::Protocol::Mcp {
                        authserver::Probe::Mcp
                    } else {
                        authserver::Probe::Http
                    },
                },
                d.scopes.clone(),
                Vec::new(),
                format!(
                    "dcr|{}|{}",
                    c.id,
                    c.url.as_ref().map(url::Url::as_str).unwrap_or_default()
                ),
            ),
            _ => return Ok(None),
        };
        Ok(Some(Self {
            connector: c.id.clone(),
            connection,
            provider,
            scopes,
            auth_params,
            kind,
        }))
    }
}

/// Which grant a token request is: it picks the endpoint (a provider may refresh
/// elsewhere) and labels the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Code,
    Refresh,
}

impl Grant {
    fn label(self) -> &'static str {
        match self {
            Self::Code => "code",
            Self::Refresh => "refresh",
        }
    }
}

/// Everything one token, authorize or revocation request needs: the config merged with
/// the provider plugin's defaults (and, for DCR, the registration).
struct Flow {
    client: oauth::Client,
    authorization_url: url::Url,
    token_url: url::Url,
    revocation_url: Option<url::Url>,
    /// Where refresh grants go when not `token_url` (Figma).
    refresh_url: Option<url::Url>,
    /// RFC 8707 resource indicator (DCR with protected-resource metadata).
    resource: Option<String>,
    pkce: bool,
    separator: String,
    user_scope_param: Option<String>,
    grants: Vec<types::TokenGrant>,
    plugin: Option<Arc<Plugin>>,
    base_url: String,
    /// The scopes discovery found (discovered connectors), asked for when the config
    /// names none.
    discovered: Vec<String>,
}

/// One grant's tokens as stored (sealed) in the vault.
#[derive(Clone, Serialize, Deserialize)]
struct StoredGrant {
    name: String,
    access_token: String,
    refresh_token: Option<String>,
    /// Unix milliseconds; `None` when the provider gave no lifetime at all.
    expires_at: Option<u64>,
    /// When to refresh: a little before `expires_at`.
    refresh_at: Option<u64>,
    scope: Option<String>,
}

/// A user's tokens on one connection.
#[derive(Clone, Serialize, Deserialize)]
struct Tokens {
    grants: Vec<StoredGrant>,
    /// What the provider's plugin kept from the token response (Salesforce
    /// `instance_url`); re-read on every refresh.
    variables: Vec<(String, String)>,
    /// The connector the user connected through.
    connector: String,
    connected_at: u64,
    refreshed_at: Option<u64>,
    /// The OAuth client the tokens were issued to (a DCR connector may have several
    /// registrations, one per redirect URI).
    #[serde(default)]
    client_id: Option<String>,
}

impl Tokens {
    fn has_refresh_token(&self) -> bool {
        self.grants.iter().any(|g| g.refresh_token.is_some())
    }

    fn expires(&self) -> bool {
        self.grants.iter().any(|g| g.expires_at.is_some())
    }

    /// Some grant's access token has expired (`now` in Unix milliseconds).
    fn expired(&self, now: u64) -> bool {
        self.grants
            .iter()
            .any(|g| g.expires_at.is_some_and(|at| now >= at))
    }

    /// The grant a request asked for, else the first one.
    fn grant(&self, name: Option<&str>) -> Option<&StoredGrant> {
        match name {
            Some(n) => self.grants.iter().find(|g| g.name == n),
            None => self.grants.first(),
        }
    }

    /// The grants that are due for a refresh and can have one.
    fn due(&self, now: u64) -> Vec<usize> {
        self.grants
            .iter()
            .enumerate()
            .filter(|(_, g)| g.refresh_token.is_some() && g.refresh_at.is_some_and(|at| now >= at))
            .map(|(i, _)| i)
            .collect()
    }

    /// Same access tokens (a refresh in between would have changed them).
    fn same_tokens(&self, other: &Tokens) -> bool {
        self.grants.len() == other.grants.len()
            && self
                .grants
                .iter()
                .zip(&other.grants)
                .all(|(a, b)| a.access_token == b.access_token)
    }
}

/// How many authorizations for wider scopes a user is asked for in a row (within
/// [`STEP_UP_WINDOW`]) before a resource that keeps answering `insufficient_scope` is
/// reported instead: a server that never accepts the scopes it names must not send the
/// user round in circles.
pub const MAX_STEP_UPS: u32 = 2;
const STEP_UP_WINDOW: Duration = Duration::from_secs(10 * 60);

/// A resource answered `insufficient_scope` (RFC 6750 §3.1) to a user's token.
#[derive(Debug, Clone)]
struct StepUp {
    /// What the next authorization adds to the connector's scopes.
    scopes: Vec<String>,
    /// Asked for and not yet authorized.
    pending: bool,
    /// Authorizations for wider scope completed since `since`.
    rounds: u32,
    since: Instant,
}

/// An authorization in progress, stored sealed under the hash of its `state`.
#[derive(Serialize, Deserialize)]
struct Pending {
    connector: String,
    connection: String,
    user: String,
    verifier: Option<String>,
    redirect_uri: String,
    created_at: u64,
}

/// A dynamically registered client, stored sealed per connector.
#[derive(Clone, Serialize, Deserialize)]
struct Registration {
    /// The connector URL and redirect URI it was registered for; either changing
    /// means registering again.
    resource_url: String,
    redirect_uri: String,
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    revocation_endpoint: Option<String>,
    resource: Option<String>,
    client_id: String,
    client_secret: Option<String>,
    auth_method: String,
    /// What discovery found to ask for, used when the connector names no scopes.
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    source: Source,
}

/// Where a discovered connector's client came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Source {
    #[default]
    Registered,
    MetadataDocument,
    PreRegistered,
}

/// The client ID metadata document Portcullis publishes for a connector, next to its
/// callback (`.../callback` → `.../client.json`); only for an https callback, as the
/// document's URL must be https.
pub fn own_metadata_document(redirect_uri: &str) -> Option<url::Url> {
    let base = redirect_uri.strip_suffix("/callback")?;
    url::Url::parse(&format!("{base}/client.json"))
        .ok()
        .filter(|u| u.scheme() == "https")
}

/// The callback's query (RFC 6749 §4.1.2).
#[derive(Default, Deserialize)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// Why a callback failed: each becomes a page that says what happened and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error(
        "This authorization link is unknown or was already used. Go back to the Connectors page and choose Connect again."
    )]
    UnknownState,
    #[error(
        "This authorization expired: it must be completed within 15 minutes. Go back to the Connectors page and choose Connect again."
    )]
    Expired,
    #[error(
        "This authorization was started for connector \"{0}\", not this one. Start again from the Connectors page."
    )]
    WrongConnector(String),
    #[error(
        "This authorization was started by another user. Sign in as the user who chose Connect, or start again from the Connectors page."
    )]
    WrongCaller,
    #[error(
        "The provider did not authorize the connection: {error}{description}. Check the scopes and the OAuth application's settings, then choose Connect again."
    )]
    Denied { error: String, description: String },
    #[error("The callback has no authorization code. Start again from the Connectors page.")]
    NoCode,
    #[error("Connector \"{0}\" is no longer configured for per-user OAuth.")]
    ConnectorGone(String),
    #[error(
        "The provider refused the authorization code: {0}. Choose Connect again; if it keeps failing, ask an admin to check the connector's client ID, secret and token URL."
    )]
    Exchange(String),
    #[error("{0}")]
    Setup(ConnError),
    #[error(
        "Portcullis could not store the connection: {0}. Try again, or ask an admin to check the host's logs."
    )]
    Internal(String),
}

impl CallbackError {
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Self::WrongCaller => S::FORBIDDEN,
            Self::ConnectorGone(_) => S::NOT_FOUND,
            Self::Exchange(_) | Self::Setup(_) => S::BAD_GATEWAY,
            Self::Internal(_) => S::INTERNAL_SERVER_ERROR,
            _ => S::BAD_REQUEST,
        }
    }
}

/// The outcome of reading a token response.
enum Read {
    Ok(Tokens),
    /// The grant is dead (`invalid_grant`): the user must connect again.
    Dead(String),
    /// Anything else: keep what we have and try again later.
    Failed(String),
}

#[derive(Default)]
struct RefreshState {
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<String>,
    /// The last refreshed tokens could not be stored: the ones in memory are newer than
    /// the vault's, whose refresh token the provider may already have retired.
    unsaved: bool,
}

/// Waits between tries to store refreshed tokens, while the refresh lock is held.
const STORE_RETRIES: [Duration; 2] = [Duration::from_millis(500), Duration::from_millis(1500)];

/// One (connection, user): its tokens in memory and the lock refreshes take.
struct Slot {
    tokens: RwLock<Option<Arc<Tokens>>>,
    refresh: tokio::sync::Mutex<RefreshState>,
}

impl Slot {
    fn current(&self) -> Option<Arc<Tokens>> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, t: Option<Arc<Tokens>>) {
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = t;
    }
}

/// Every user's connections.
pub struct Connections {
    vault: Arc<Vault>,
    egress: Egress,
    plugins: Arc<Plugins>,
    metrics: Arc<Metrics>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// One registration at a time per connector, so concurrent first connects register
    /// once (and one unreachable server holds up only its own connector).
    registering: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Wider scopes resources asked for (`insufficient_scope`), per (connection, user).
    step_ups: Mutex<HashMap<String, StepUp>>,
    /// Rings when a user connected or a connection ended (disconnect, dead grant,
    /// revocation), so what depends on who is connected (MCP catalogs) can follow.
    changed: tokio::sync::watch::Sender<u64>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn token_key(connection: &str, user: &str) -> String {
    format!("{connection}\n{user}")
}

fn state_key(state: &str) -> String {
    hex::encode(Sha256::digest(state.as_bytes()))
}

pub(crate) fn random_token() -> String {
    let mut buf = [0u8; 32];
    getrandom::fill(&mut buf).unwrap_or_else(|e| panic!("the OS random source failed: {e}"));
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

fn bearer(token: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::try_from(format!("Bearer {token}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

impl Connections {
    /// Opens the store and loads every stored connection (for background refresh).
    pub fn open(
        vault: Arc<Vault>,
        egress: Egress,
        plugins: Arc<Plugins>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let this = Self {
            vault,
            egress,
            plugins,
            metrics,
            slots: Mutex::new(HashMap::new()),
            registering: Mutex::new(HashMap::new()),
            step_ups: Mutex::new(HashMap::new()),
            changed: tokio::sync::watch::Sender::new(0),
        };
        match this.vault.keys(Table::UserTokens) {
            Ok(keys) => {
                for k in keys {
                    this.slot(&k);
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not list stored connections"),
        }
        this
    }

    /// The slot for a token key, loaded from the vault the first time.
    fn slot(&self, key: &str) -> Arc<Slot> {
        if let Some(s) = self.cached(key) {
            return s;
        }
        // Read outside the map's lock: other users' requests need not wait for the disk.
        self.insert(key, self.load(key))
    }

    /// The slot for `key`, created with `stored` unless another request made it first.
    fn insert(&self, key: &str, stored: Option<Arc<Tokens>>) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry(key.to_owned())
            .or_insert_with(|| {
                Arc::new(Slot {
                    tokens: RwLock::new(stored),
                    refresh: tokio::sync::Mutex::new(RefreshState::default()),
                })
            })
            .clone()
    }

    fn cached(&self, key: &str) -> Option<Arc<Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    fn load(&self, key: &str) -> Option<Arc<Tokens>> {
        self.stored(key).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "could not read a stored connection");
            None
        })
    }

    /// The stored tokens for `key`; an unreadable store is an error, not "none".
    fn stored(&self, key: &str) -> Result<Option<Arc<Tokens>>, crate::vault::VaultError> {
        Ok(self
            .vault
            .get(Table::UserTokens, key)?
            .and_then(|bytes| serde_json::from_slice::<Tokens>(&bytes).ok())
            .map(Arc::new))
    }

    /// Follows what other replicas sharing the store change: a user who connected,
    /// refreshed or disconnected on one is seen on this one at once. Returns at once when
    /// this process is the store's only writer (redb).
    pub async fn follow_store(this: std::sync::Weak<Self>) {
        use crate::vault::store::Change;
        use tokio::sync::broadcast::error::RecvError;
        let Some(mut changes) = this.upgrade().and_then(|c| c.vault.changes()) else {
            return;
        };
        loop {
            let change = changes.recv().await;
            let Some(this) = this.upgrade() else { return };
            let keys = match change {
                Ok(Change::Record {
                    table: Table::UserTokens,
                    key,
                }) => vec![key],
                Ok(Change::Record { .. }) => continue,
                Ok(Change::Resync) | Err(RecvError::Lagged(_)) => this
                    .slots
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .keys()
                    .cloned()
                    .collect(),
                Err(RecvError::Closed) => return,
            };
            for key in keys {
                this.reload(&key);
            }
        }
    }

    /// Replaces a cached slot's tokens with the stored ones when another replica changed
    /// them; rings when a connection began or ended. Uncached keys load on first use.
    fn reload(&self, key: &str) {
        let Some(slot) = self.cached(key) else { return };
        let stored = match self.stored(key) {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(error = %e, "could not re-read a connection another replica changed");
                return;
            }
        };
        let (presence, changed) = match (slot.current(), &stored) {
            (Some(a), Some(b)) => (false, !a.same_tokens(b)),
            (None, None) => (false, false),
            _ => (true, true),
        };
        if changed {
            slot.set(stored);
        }
        if presence {
            self.ring();
        }
    }

    /// The current tokens without creating a slot (status lists ask for every user).
    fn peek(&self, key: &str) -> Option<Arc<Tokens>> {
        match self.cached(key) {
            Some(s) => s.current(),
            // Only connected users get a slot; the loaded tokens are not read twice.
            None => {
                let stored = self.load(key)?;
                self.insert(key, Some(stored)).current()
            }
        }
    }

    /// Seals and stores tokens, then makes them current. Awaited before the tokens are
    /// used, so a rotated refresh token is on disk before its predecessor is forgotten.
    async fn store(&self, key: &str, tokens: Tokens) -> Result<Arc<Tokens>, ConnError> {
        let bytes = Zeroizing::new(
            serde_json::to_vec(&tokens).map_err(|e| ConnError::Internal(e.to_string()))?,
        );
        let (vault, k) = (self.vault.clone(), key.to_owned());
        let written = tokio::task::spawn_blocking(move || vault.put(Table::UserTokens, &k, &bytes))
            .await
            .map_err(|e| ConnError::Internal(e.to_string()))
            .and_then(|r| r.map_err(|e| ConnError::Internal(e.to_string())));
        let tokens = Arc::new(tokens);
        // Even if the disk write failed, the provider may already have retired the old
        // refresh token: keep the new one in memory rather than lose both.
        self.slot(key).set(Some(tokens.clone()));
        written?;
        Ok(tokens)
    }

    /// Changes whenever a user connects or a connection ends; each subscriber (MCP
    /// catalogs, the discovery cache) follows its own receiver.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn ring(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    async fn forget(&self, key: &str) {
        self.slot(key).set(None);
        self.ring();
        let (vault, k) = (self.vault.clone(), key.to_owned());
        let deleted =
            tokio::task::spawn_blocking(move || vault.delete(Table::UserTokens, &k)).await;
        if !matches!(deleted, Ok(Ok(_))) {
            tracing::warn!("could not delete a stored connection");
        }
    }

    /// The caller's status on a per-user connector they are granted.
    pub fn status(&self, pu: &PerUser, user: &str) -> Status {
        match self.peek(&token_key(&pu.connection, user)) {
            None => Status::NeedsAuth,
            Some(t) if !t.has_refresh_token() && t.expires() => match &pu.kind {
                // A discovered server decides alone whether it issues refresh tokens
                // (Portcullis asked for offline_access where it is offered): the
                // connection serves until its token expires, then asks the user again.
                Kind::Dcr { .. } if t.expired(now_ms()) => Status::NeedsAuth,
                Kind::Dcr { .. } => Status::Ready,
                Kind::Code { .. } => Status::Misconfigured,
            },
            Some(_) => Status::Ready,
        }
    }

    /// Variables the provider's plugin kept from the user's token responses.
    pub fn variables(&self, pu: &PerUser, user: &str) -> Vec<(String, String)> {
        self.peek(&token_key(&pu.connection, user))
            .map(|t| t.variables.clone())
            .unwrap_or_default()
    }

    /// The `Authorization` header for `user`'s request through `pu`, refreshing first if
    /// the token is due. `grant` picks one of several tokens (Slack's `user`).
    pub async fn authorize(
        self: &Arc<Self>,
        pu: &Arc<PerUser>,
        user: &str,
        grant: Option<&str>,
    ) -> Result<HeaderValue, ConnError> {
        let key = token_key(&pu.connection, user);
        let cur = self
            .slot(&key)
            .current()
            .ok_or_else(|| ConnError::NeedsAuth {
                connector: pu.connector.clone(),
            })?;
        let now = now_ms();
        let g = cur.grant(grant).ok_or_else(|| ConnError::NoSuchGrant {
            connector: pu.connector.clone(),
            grant: grant.unwrap_or_default().to_owned(),
        })?;
        let tokens = if g.refresh_at.is_none_or(|at| now < at) {
            cur
        } else {
            self.refresh(pu.clone(), user.to_owned(), Some(cur)).await?
        };
        let g = tokens.grant(grant).ok_or_else(|| ConnError::NoSuchGrant {
            connector: pu.connector.clone(),
            grant: grant.unwrap_or_default().to_owned(),
        })?;
        if g.expires_at.is_some_and(|at| now_ms() >= at) {
            // Still expired: never send a token the upstream will refuse.
            if g.refresh_token.is_none() {
                return Err(if pu.is_dcr() {
                    ConnError::NeedsAuth {
                        connector: pu.connector.clone(),
                    }
                } else {
                    ConnError::Misconfigured {
                        connector: pu.connector.clone(),
                    }
                });
            }
            let slot = self.slot(&key);
            let state = slot.refresh.lock().await;
            return Err(ConnError::RefreshFailed {
                connector: pu.connector.clone(),
                detail: state
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "no answer yet".into()),
                retry_secs: state
                    .retry_at
                    .map(|at| at.saturating_duration_since(Instant::now()).as_secs())
                    .unwrap_or(1)
                    .max(1),
            });
        }
        bearer(&g.access_token).ok_or_else(|| {
            ConnError::Internal("the access token has characters not allowed in a header".into())
        })
    }

    #[cfg(test)]
    fn authorize_cached(&self, pu: &PerUser, user: &str) -> Option<HeaderValue> {
        let t = self.slot(&token_key(&pu.connection, user)).current()?;
        bearer(&t.grant(None)?.access_token)
    }

    /// The upstream answered 401 to `sent`: if that is still the current token, mark it
    /// due so the next use refreshes it. A token that cannot be refreshed is dead: the
    /// connection ends and the user is asked to connect again.
    pub async fn rejected(&self, pu: &PerUser, user: &str, sent: &HeaderValue) {
        let key = token_key(&pu.connection, user);
        let slot = self.slot(&key);
        let dead = {
            let mut guard = slot.tokens.write().unwrap_or_else(|p| p.into_inner());
            let Some(cur) = guard.as_ref() else { return };
            let hit = cur
                .grants
                .iter()
                .position(|g| bearer(&g.access_token).is_some_and(|b| b == sent));
            let Some(i) = hit else { return };
            if cur.grants[i].refresh_token.is_some() {
                let mut t = (**cur).clone();
                t.grants[i].refresh_at = Some(0);
                *guard = Some(Arc::new(t));
                tracing::info!(connector = %pu.connector, user, "upstream rejected the access token; it will be refreshed");
                false
            } else {
                true
            }
        };
        if dead {
            tracing::warn!(connector = %pu.connector, user, "upstream rejected an access token that cannot be refreshed; the user must connect again");
            let _state = slot.refresh.lock().await;
            self.forget(&key).await;
        }
    }

    /// Refreshes (single-flight) in a task of its own, so a caller that gives up does not
    /// cancel the refresh for everyone waiting on it. `seen` is the tokens the caller
    /// found due; if another request replaced them meanwhile, those are returned.
    async fn refresh(
        self: &Arc<Self>,
        pu: Arc<PerUser>,
        user: String,
        seen: Option<Arc<Tokens>>,
    ) -> Result<Arc<Tokens>, ConnError> {
        let this = self.clone();
        tokio::spawn(async move { this.refresh_now(&pu, &user, seen).await })
            .await
            .unwrap_or_else(|e| Err(ConnError::Internal(e.to_string())))
    }

    async fn refresh_now(
        &self,
        pu: &PerUser,
        user: &str,
        seen: Option<Arc<Tokens>>,
    ) -> Result<Arc<Tokens>, ConnError> {
        let key = token_key(&pu.connection, user);
        let slot = self.slot(&key);
        let mut state = slot.refresh.lock().await;
        let needs_auth = || ConnError::NeedsAuth {
            connector: pu.connector.clone(),
        };
        let cur = slot.current().ok_or_else(needs_auth)?;
        let now = now_ms();
        let due = cur.due(now);
        let replaced = seen.as_ref().is_some_and(|s| !s.same_tokens(&cur));
        if due.is_empty() || replaced {
            return Ok(cur);
        }
        if state.retry_at.is_some_and(|at| Instant::now() < at) {
            // Backing off; the caller decides whether the old token is still usable.
            return Ok(cur);
        }
        // Replicas sharing the store: one refresh per expiry among all of them. The lock
        // is held until the new tokens are stored; whoever waited finds them on re-reading
        // and uses them, so a rotated refresh token is never spent twice.
        // The agent is told the store is down; where it is goes to the log only.
        let store_down = |e: crate::vault::VaultError| {
            tracing::error!(connector = %pu.connector, user, error = %e, "cannot refresh: the shared vault does not answer");
            ConnError::RefreshFailed {
                connector: pu.connector.clone(),
                detail: "the gateway's database does not answer".to_owned(),
                retry_secs: 5,
            }
        };
        let held = self
            .vault
            .lock(Table::UserTokens, &key)
            .await
            .map_err(store_down)?;
        let cur = if held.is_some() {
            let stored = self.stored(&key).map_err(store_down)?;
            match stored {
                // Disconnected on another replica.
                None => {
                    slot.set(None);
                    self.ring();
                    return Err(needs_auth());
                }
                // Ours were refreshed here but never stored, and nobody refreshed since:
                // the vault's are the older ones. Store ours now, under the lock.
                Some(stored)
                    if state.unsaved
                        && !stored.same_tokens(&cur)
                        && stored.refreshed_at <= cur.refreshed_at =>
                {
                    if self.store(&key, (*cur).clone()).await.is_ok() {
                        state.unsaved = false;
                    }
                    if cur.due(now_ms()).is_empty() {
                        return Ok(cur);
                    }
                    cur
                }
                Some(stored) if !stored.same_tokens(&cur) => {
                    state.unsaved = false;
                    slot.set(Some(stored.clone()));
                    if stored.due(now_ms()).is_empty() {
                        return Ok(stored);
                    }
                    stored
                }
                Some(_) => cur,
            }
        } else {
            cur
        };
        let due = cur.due(now_ms());
        let flow = self.flow(pu, None, cur.client_id.as_deref()).await?;
        // Each due grant with its own refresh token (Slack's bot and user tokens rotate
        // separately).
        let mut next = (*cur).clone();
        let mut refreshed = false;
        for i in due {
            let old = &cur.grants[i];
            let Some(refresh_token) = old.refresh_token.clone().map(Zeroizing::new) else {
                continue;
            };
            let params = vec![
                ("grant_type".to_owned(), "refresh_token".to_owned()),
                (
                    "refresh_token".to_owned(),
                    refresh_token.as_str().to_owned(),
                ),
            ];
            match self.exchange(&flow, pu, Grant::Refresh, params).await {
                Read::Ok(fresh) => {
                    // The grant by name, else the response's own (standard) layout.
                    let Some(mut got) = fresh
                        .grants
                        .iter()
                        .find(|g| g.name == old.name)
                        .or(fresh.grants.first())
                        .cloned()
                    else {
                        continue;
                    };
                    got.name = old.name.clone();
                    // A refresh answer without a refresh token keeps the old one (Google).
                    if got.refresh_token.is_none() {
                        got.refresh_token = old.refresh_token.clone();
                    }
                    next.grants[i] = got;
                    if !fresh.variables.is_empty() {
                        next.variables = fresh.variables;
                    }
                    refreshed = true;
                }
                Read::Dead(why) => {
                    tracing::warn!(connector = %pu.connector, user, reason = %why, "the provider ended the connection; the user must connect again");
                    self.forget(&key).await;
                    *state = RefreshState::default();
                    return Err(needs_auth());
                }
                Read::Failed(why) => {
                    state.failures = state.failures.saturating_add(1);
                    let wait = FIRST_BACKOFF
                        .saturating_mul(1 << state.failures.saturating_sub(1).min(16))
                        .min(MAX_BACKOFF);
                    state.retry_at = Some(Instant::now() + wait);
                    state.last_error = Some(why.clone());
                    tracing::warn!(connector = %pu.connector, user, error = %why, retry_secs = wait.as_secs(), "token refresh failed; keeping the tokens and retrying later");
                    break;
                }
            }
        }
        if !refreshed {
            return Ok(cur);
        }
        next.refreshed_at = Some(now_ms());
        if state.retry_at.is_none() {
            *state = RefreshState::default();
        }
        // Stored before the lock is let go: a replica that took it next would otherwise
        // read the old tokens and spend a refresh token the provider has retired.
        let mut saved = self.store(&key, next.clone()).await;
        for wait in STORE_RETRIES {
            if saved.is_ok() {
                break;
            }
            tokio::time::sleep(wait).await;
            saved = self.store(&key, next.clone()).await;
        }
        state.unsaved = saved.is_err();
        if let Err(e) = saved {
            tracing::error!(connector = %pu.connector, user, error = %e, "refreshed tokens could not be written to the vault; they are kept in memory and stored again at the next refresh");
        }
        tracing::info!(connector = %pu.connector, user, "refreshed the access token");
        slot.current().ok_or_else(needs_auth)
    }

    /// Refreshes every stored connection that is due, for connectors still configured.
    /// Runs from the host's background ticker.
    pub async fn refresh_due(self: &Arc<Self>, live: &[Arc<PerUser>]) {
        let by_connection: HashMap<&str, &Arc<PerUser>> =
            live.iter().map(|p| (p.connection.as_str(), p)).collect();
        let due: Vec<(Arc<PerUser>, String)> = {
            let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let now = now_ms();
            slots
                .iter()
                .filter(|(_, s)| s.current().is_some_and(|t| !t.due(now).is_empty()))
                .filter_map(|(k, _)| {
                    let (conn, user) = k.split_once('\n')?;
                    Some(((*by_connection.get(conn)?).clone(), user.to_owned()))
                })
                .collect()
        };
        // Concurrently: one slow token endpoint must not hold up everyone else's.
        // Errors are logged by the refresh itself; a request will see them too.
        let mut running = tokio::task::JoinSet::new();
        for (pu, user) in due {
            let this = self.clone();
            running.spawn(async move { this.refresh_now(&pu, &user, None).await });
        }
        while running.join_next().await.is_some() {}
    }

    /// The flow for `pu`: config, plugin defaults and (for DCR) the registration, which
    /// is made when `redirect_uri` is given and none fits. `client_id` picks the DCR
    /// registration existing tokens were issued to.
    async fn flow(
        &self,
        pu: &PerUser,
        redirect_uri: Option<&str>,
        client_id: Option<&str>,
    ) -> Result<Flow, ConnError> {
        let plugin = match &pu.provider {
            Some(p) => Some(
                self.plugins
                    .get(p)
                    .ok_or_else(|| ConnError::ProviderUnavailable {
                        connector: pu.connector.clone(),
                        provider: p.clone(),
                    })?,
            ),
            None => None,
        };
        let oauth_defaults = plugin.as_ref().and_then(|p| p.defaults.oauth.clone());
        let setup = |detail: String| ConnError::Setup {
            connector: pu.connector.clone(),
            detail,
        };
        let (
            client,
            authorization_url,
            token_url,
            revocation_url,
            refresh_url,
            resource,
            base_url,
            discovered,
        ) = match &pu.kind {
            Kind::Code {
                client,
                authorization_url,
                token_url,
                revocation_url,
                refresh_url,
            } => {
                let mut client = client.clone();
                if let Some(o) = &oauth_defaults {
                    client.auth = match o.client_auth {
                        types::ClientAuth::Basic => ClientAuth::Basic,
                        types::ClientAuth::Post => ClientAuth::Body,
                    };
                }
                if let Some(p) = &plugin {
                    client.style = p.oauth_style.clone();
                }
                let revocation = revocation_url.clone().or_else(|| {
                    oauth_defaults
                        .as_ref()
                        .and_then(|o| o.revocation_url.as_deref())
                        .and_then(|u| url::Url::parse(u).ok())
                });
                let base = plugin
                    .as_ref()
                    .map(|p| p.defaults.api_url.clone())
                    .unwrap_or_default();
                // The plugin's refresh endpoint belongs with its token endpoint: a
                // connector pointed at another token URL (a proxy, another region)
                // refreshes there too, unless it names a refresh_url of its own.
                let refresh = refresh_url.clone().or_else(|| {
                    let own_token_url = oauth_defaults.as_ref()?.token_url.as_str();
                    (token_url.as_str() == own_token_url)
                        .then(|| plugin.as_ref()?.refresh_url.clone())
                        .flatten()
                });
                (
                    client,
                    authorization_url.clone(),
                    token_url.clone(),
                    revocation,
                    refresh,
                    None,
                    base,
                    Vec::new(),
                )
            }
            Kind::Dcr {
                url,
                client: configured,
                ..
            } => {
                let resource_url = url
                    .clone()
                    .or_else(|| {
                        let d = &plugin.as_ref()?.defaults;
                        url::Url::parse(d.mcp_url.as_deref().unwrap_or(&d.api_url)).ok()
                    })
                    .ok_or_else(|| setup("oauth2_dcr needs the connector's url, where the authorization server is discovered".into()))?;
                let reg = self
                    .registration(pu, &resource_url, redirect_uri, client_id)
                    .await?;
                let parse = |what: &str, u: &str| {
                    url::Url::parse(u).map_err(|e| {
                        setup(format!("the registered {what} \"{u}\" is not a URL: {e}"))
                    })
                };
                // A pre-registered client's secret is the config's (it may have been
                // rotated since discovery).
                let secret = match (reg.source, configured) {
                    (Source::PreRegistered, Some(c)) => c.secret.clone(),
                    _ => reg
                        .client_secret
                        .clone()
                        .map(|s| Arc::new(Zeroizing::new(s))),
                };
                let client = oauth::Client {
                    id: reg.client_id.clone(),
                    secret,
                    auth: if reg.auth_method == "client_secret_post" {
                        ClientAuth::Body
                    } else {
                        ClientAuth::Basic
                    },
                    style: oauth::RequestStyle::default(),
                };
                (
                    client,
                    parse("authorization endpoint", &reg.authorization_endpoint)?,
                    parse("token endpoint", &reg.token_endpoint)?,
                    reg.revocation_endpoint
                        .as_deref()
                        .and_then(|u| url::Url::parse(u).ok()),
                    None,
                    reg.resource.clone(),
                    resource_url.to_string(),
                    reg.scopes.clone(),
                )
            }
        };
        let (pkce, separator, user_scope_param, grants) = match &oauth_defaults {
            Some(o) => (
                o.pkce != types::PkcePolicy::Unsupported,
                o.scope_separator.clone(),
                o.user_scope_param.clone(),
                o.grants.clone(),
            ),
            None => (true, " ".to_owned(), None, Vec::new()),
        };
        Ok(Flow {
            client,
            authorization_url,
            token_url,
            revocation_url,
            refresh_url,
            resource,
            pkce,
            separator,
            user_scope_param,
            grants,
            plugin,
            base_url,
            discovered,
        })
    }

    /// The DCR client for `pu`: the stored registration that fits (the redirect URI of a
    /// connect, the client a user's tokens were issued to), else (when connecting) a new
    /// one from the server's metadata.
    async fn registration(
        &self,
        pu: &PerUser,
        resource_url: &url::Url,
        redirect_uri: Option<&str>,
        client_id: Option<&str>,
    ) -> Result<Registration, ConnError> {
        // Registrations are kept per redirect URI: one made for another host name must
        // not replace the client other users' tokens were issued to.
        let load = || -> Option<Registration> {
            let prefix = format!("{}\n", pu.connector);
            let keys = self.vault.keys(Table::OAuthClients).ok()?;
            keys.iter()
                .filter(|k| k.starts_with(&prefix))
                .filter_map(|k| self.vault.get(Table::OAuthClients, k).ok()?)
                .filter_map(|b| serde_json::from_slice::<Registration>(&b).ok())
                .find(|r| {
                    r.resource_url == resource_url.as_str()
                        && redirect_uri.is_none_or(|u| u == r.redirect_uri)
                        && client_id.is_none_or(|c| c == r.client_id)
                        && pu.still_fits(r)
                })
        };
        if let Some(r) = load() {
            return Ok(r);
        }
        let Some(redirect_uri) = redirect_uri else {
            return Err(ConnError::NeedsAuth {
                connector: pu.connector.clone(),
            });
        };
        let lock = self
            .registering
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(pu.connector.clone())
            .or_default()
            .clone();
        let _one = lock.lock().await;
        if let Some(r) = load() {
            return Ok(r);
        }
        let reg = self
            .register(pu, resource_url, redirect_uri)
            .await
            .inspect_err(|e| {
                tracing::warn!(connector = %pu.connector, error = %e, "could not find or register at the authorization server");
            })?;
        let bytes = Zeroizing::new(
            serde_json::to_vec(&reg).map_err(|e| ConnError::Internal(e.to_string()))?,
        );
        self.vault
            .put(
                Table::OAuthClients,
                &format!("{}\n{redirect_uri}", pu.connector),
                &bytes,
            )
            .map_err(|e| ConnError::Internal(e.to_string()))?;
        tracing::info!(connector = %pu.connector, issuer = %reg.issuer, "registered an OAuth client (dynamic client registration)");
        Ok(reg)
    }

    /// Discovers the authorization server ([`authserver::discover`]) and picks the
    /// client there, in the order the MCP authorization specification gives: the one
    /// registered in advance (config), else a client ID metadata document where the
    /// server takes them, else dynamic registration (RFC 7591).
    async fn register(
        &self,
        pu: &PerUser,
        resource_url: &url::Url,
        redirect_uri: &str,
    ) -> Result<Registration, ConnError> {
        let fail = |detail: String| ConnError::Setup {
            connector: pu.connector.clone(),
            detail,
        };
        let Kind::Dcr {
            client,
            metadata_url,
            probe,
            ..
        } = &pu.kind
        else {
            return Err(ConnError::Internal("not a discovered connector".into()));
        };
        let server = authserver::discover(&self.egress, resource_url, *probe)
            .await
            .map_err(fail)?;
        let document = metadata_url
            .clone()
            .or_else(|| own_metadata_document(redirect_uri));
        let (source, client_id, client_secret, auth_method) = if let Some(c) = client {
            let method = match &c.secret {
                None => "none",
                // RFC 8414 §2: basic is the default when the server lists nothing.
                Some(_)
                    if server.auth_methods.is_empty()
                        || server
                            .auth_methods
                            .iter()
                            .any(|m| m == "client_secret_basic") =>
                {
                    "client_secret_basic"
                }
                Some(_) => "client_secret_post",
            };
            // The secret stays in the config (flows read it there), not in this record.
            (Source::PreRegistered, c.id.clone(), None, method.to_owned())
        } else if let Some(doc) = document.filter(|_| server.metadata_documents) {
            (
                Source::MetadataDocument,
                doc.to_string(),
                None,
                "none".to_owned(),
            )
        } else {
            let endpoint = server.registration_endpoint.as_deref().ok_or_else(|| {
                fail(format!(
                    "{} does not offer dynamic client registration or client ID metadata documents; register a client there and set its client_id (and client_secret) on the connector",
                    server.issuer
                ))
            })?;
            let reg_url = url::Url::parse(endpoint)
                .map_err(|e| fail(format!("registration_endpoint: {e}")))?;
            let request = serde_json::json!({
                "client_name": "Portcullis",
                "redirect_uris": [redirect_uri],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
            });
            let info = oauth::register(&self.egress, &reg_url, &request)
                .await
                .map_err(|e| fail(format!("dynamic client registration failed: {e}")))?;
            let id = info
                .get("client_id")
                .and_then(|v| v.as_str())
                .ok_or_else(|| fail("the registration response has no client_id".into()))?
                .to_owned();
            let secret = info
                .get("client_secret")
                .and_then(|v| v.as_str())
                .map(str::to_owned);
            // A server that issues a secret without naming the method means basic
            // (RFC 7591 §2 defaults to client_secret_basic).
            let method = info
                .get("token_endpoint_auth_method")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    if secret.is_some() {
                        "client_secret_basic"
                    } else {
                        "none"
                    }
                    .to_owned()
                });
            (Source::Registered, id, secret, method)
        };
        Ok(Registration {
            resource_url: resource_url.to_string(),
            redirect_uri: redirect_uri.to_owned(),
            issuer: server.issuer,
            authorization_endpoint: server.authorization_endpoint,
            token_endpoint: server.token_endpoint,
            revocation_endpoint: server.revocation_endpoint,
            resource: server.resource,
            client_id,
            client_secret,
            auth_method,
            scopes: server.scopes,
            source,
        })
    }

    /// One token request of `grant`, read.
    async fn exchange(
        &self,
        flow: &Flow,
        pu: &PerUser,
        grant: Grant,
        mut params: Vec<(String, String)>,
    ) -> Read {
        if let Some(r) = &flow.resource {
            params.push(("resource".into(), r.clone()));
        }
        let url = match (grant, &flow.refresh_url) {
            (Grant::Refresh, Some(refresh_url)) => refresh_url,
            _ => &flow.token_url,
        };
        let read = match oauth::token_request(&self.egress, url, &flow.client, params).await {
            Ok(answer) => self.read(flow, pu, answer).await,
            Err(e) => Read::Failed(e.to_string()),
        };
        // An endpoint that echoes the request would hand back the client's secret.
        let clean = |m: String| match &flow.client.secret {
            Some(secret) => crate::redact::known(&m, Some(&flow.client.id), &[secret.as_str()]),
            None => m,
        };
        let read = match read {
            Read::Dead(m) => Read::Dead(clean(m)),
            Read::Failed(m) => Read::Failed(clean(m)),
            ok => ok,
        };
        let outcome = match &read {
            Read::Ok(_) => "ok",
            Read::Dead(_) => "needs_auth",
            Read::Failed(_) => "failed",
        };
        self.metrics
            .user_token_requests
            .get_or_create(&UserTokenLabels {
                kind: grant.label(),
                outcome,
            })
            .inc();
        read
    }

    /// Reads a token endpoint answer: the plugin's `read-token-response` (on a redacted
    /// copy) decides success and keeps variables; the host reads the tokens themselves.
    async fn read(&self, flow: &Flow, pu: &PerUser, answer: oauth::TokenAnswer) -> Read {
        let mut lifetime_default = None;
        let mut variables = Vec::new();
        match flow
            .plugin
            .as_ref()
            .filter(|p| p.has(types::Hook::ReadTokenResponse))
        {
            Some(p) => {
                let mut redacted = answer.json.clone();
                plugins::redact_tokens(&mut redacted, &flow.grants);
                let ctx = types::Context {
                    connector: pu.connector.clone(),
                    base_url: flow.base_url.clone(),
                    variables: Vec::new(),
                };
                match self
                    .plugins
                    .read_token(p, ctx, answer.status, redacted.to_string())
                    .await
                {
                    Ok(Ok(info)) => {
                        lifetime_default = info.expires_in;
                        variables = info.variables;
                    }
                    Ok(Err(types::TokenError::InvalidGrant(m))) => {
                        return Read::Dead(crate::redact::text(&m));
                    }
                    Ok(Err(types::TokenError::Provider(m))) => {
                        return Read::Failed(crate::redact::text(&m));
                    }
                    Err(e) => return Read::Failed(e.to_string()),
                }
            }
            None => {
                if let Some((code, desc)) = answer.error() {
                    let text = format!(
                        "{code}{}",
                        desc.map(|d| format!(" ({d})")).unwrap_or_default()
                    );
                    return if code == "invalid_grant" {
                        Read::Dead(text)
                    } else {
                        Read::Failed(text)
                    };
                }
                if !(200..300).contains(&answer.status) {
                    return Read::Failed(format!("HTTP {}", answer.status));
                }
            }
        }
        let grants = match plugins::extract_grants(&answer.json, &flow.grants) {
            Ok(g) => g,
            Err(e) => return Read::Failed(e),
        };
        let now = now_ms();
        let grants = grants
            .into_iter()
            .map(|g| {
                let life = g
                    .expires_in
                    .or(lifetime_default)
                    .map(|s| Duration::from_secs(s).min(MAX_LIFETIME));
                StoredGrant {
                    name: g.name,
                    access_token: g.access_token,
                    refresh_token: g.refresh_token,
                    expires_at: life.map(|l| now + l.as_millis() as u64),
                    refresh_at: life.map(|l| now + (l - margin(l)).as_millis() as u64),
                    scope: g.scope,
                }
            })
            .collect();
        Read::Ok(Tokens {
            grants,
            variables,
            connector: pu.connector.clone(),
            connected_at: now,
            refreshed_at: None,
            client_id: Some(flow.client.id.clone()),
        })
    }

    /// Starts an authorization for `user`: stores the pending state (with the PKCE
    /// verifier, sealed) and returns the provider's authorize URL. `scopes` is the union
    /// over the connectors sharing the connection.
    pub async fn connect(
        &self,
        pu: &PerUser,
        scopes: &[String],
        user: &str,
        redirect_uri: &str,
    ) -> Result<url::Url, ConnError> {
        let flow = self.flow(pu, Some(redirect_uri), None).await?;
        let mut scopes = if scopes.is_empty() {
            flow.discovered.clone()
        } else {
            scopes.to_vec()
        };
        if let Some(up) = self.step_up(pu, user) {
            for s in up.scopes {
                if !scopes.contains(&s) {
                    scopes.push(s);
                }
            }
        }
        let state = random_token();
        let pkce = flow.pkce.then(oauth2::PkceCodeChallenge::new_random_sha256);
        let pending = Pending {
            connector: pu.connector.clone(),
            connection: pu.connection.clone(),
            user: user.to_owned(),
            verifier: pkce.as_ref().map(|(_, v)| v.secret().clone()),
            redirect_uri: redirect_uri.to_owned(),
            created_at: now_ms(),
        };
        let bytes = Zeroizing::new(
            serde_json::to_vec(&pending).map_err(|e| ConnError::Internal(e.to_string()))?,
        );
        self.vault
            .put(Table::OAuthPending, &state_key(&state), &bytes)
            .map_err(|e| ConnError::Internal(e.to_string()))?;

        let (user_scopes, app_scopes): (Vec<&str>, Vec<&str>) = scopes
            .iter()
            .map(String::as_str)
            .partition(|s| flow.user_scope_param.is_some() && s.starts_with("user:"));
        let mut url = flow.authorization_url.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code");
            q.append_pair("client_id", &flow.client.id);
            q.append_pair("redirect_uri", redirect_uri);
            if !app_scopes.is_empty() {
                q.append_pair("scope", &app_scopes.join(&flow.separator));
            }
            if let Some(param) = &flow.user_scope_param
                && !user_scopes.is_empty()
            {
                let list: Vec<&str> = user_scopes.iter().map(|s| &s["user:".len()..]).collect();
                q.append_pair(param, &list.join(&flow.separator));
            }
            q.append_pair("state", &state);
            if let Some((challenge, _)) = &pkce {
                q.append_pair("code_challenge", challenge.as_str());
                q.append_pair("code_challenge_method", "S256");
            }
            if let Some(r) = &flow.resource {
                q.append_pair("resource", r);
            }
            for (k, v) in &pu.auth_params {
                if RESERVED_PARAMS.contains(&k.as_str()) {
                    tracing::warn!(connector = %pu.connector, param = %k, "auth_params cannot set a parameter Portcullis sets itself; ignored");
                    continue;
                }
                q.append_pair(k, v);
            }
        }
        tracing::info!(connector = %pu.connector, user, "authorization started");
        Ok(url)
    }

    /// Completes an authorization: checks the state (known, unused, unexpired, for this
    /// connector and this caller), exchanges the code and stores the tokens. Returns the
    /// connector ID the authorization was for.
    pub async fn callback(
        &self,
        connector: &str,
        user: &str,
        q: &CallbackQuery,
        find: impl Fn(&str) -> Option<Arc<PerUser>>,
    ) -> Result<Status, CallbackError> {
        let state = q.state.as_deref().ok_or(CallbackError::UnknownState)?;
        let key = state_key(state);
        let bytes = self
            .vault
            .get(Table::OAuthPending, &key)
            .map_err(|e| CallbackError::Internal(e.to_string()))?
            .ok_or(CallbackError::UnknownState)?;
        let pending: Pending =
            serde_json::from_slice(&bytes).map_err(|e| CallbackError::Internal(e.to_string()))?;
        let age = Duration::from_millis(now_ms().saturating_sub(pending.created_at));
        if age > PENDING_TTL {
            let _ = self.vault.delete(Table::OAuthPending, &key);
            return Err(CallbackError::Expired);
        }
        if pending.connector != connector {
            return Err(CallbackError::WrongConnector(pending.connector));
        }
        if pending.user != user {
            // Kept: the user who started it may still finish it.
            tracing::warn!(
                connector,
                user,
                "an authorization callback came from a caller other than the one who started it; refused"
            );
            return Err(CallbackError::WrongCaller);
        }
        // Single use from here on: a replayed callback finds nothing.
        self.vault
            .delete(Table::OAuthPending, &key)
            .map_err(|e| CallbackError::Internal(e.to_string()))?;
        if let Some(error) = &q.error {
            let clean = |s: &str| -> String {
                crate::redact::text(&s.chars().filter(|c| !c.is_control()).collect::<String>())
            };
            return Err(CallbackError::Denied {
                error: clean(error),
                description: q
                    .error_description
                    .as_deref()
                    .map(|d| format!(" ({})", clean(d)))
                    .unwrap_or_default(),
            });
        }
        let code = q
            .code
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or(CallbackError::NoCode)?;
        let pu = find(&pending.connector)
            .filter(|p| p.connection == pending.connection)
            .ok_or_else(|| CallbackError::ConnectorGone(pending.connector.clone()))?;
        let flow = self
            .flow(&pu, Some(&pending.redirect_uri), None)
            .await
            .map_err(CallbackError::Setup)?;
        let mut params = vec![
            ("grant_type".to_owned(), "authorization_code".to_owned()),
            ("code".to_owned(), code.to_owned()),
            ("redirect_uri".to_owned(), pending.redirect_uri.clone()),
        ];
        if let Some(v) = &pending.verifier {
            params.push(("code_verifier".into(), v.clone()));
        }
        let read = self.exchange(&flow, &pu, Grant::Code, params).await;
        let tokens = match read {
            Read::Ok(t) => t,
            Read::Dead(why) | Read::Failed(why) => {
                tracing::warn!(connector, user, error = %why, "the authorization code exchange failed");
                return Err(CallbackError::Exchange(why));
            }
        };
        let status = if !tokens.has_refresh_token() && tokens.expires() && pu.is_dcr() {
            tracing::info!(
                connector,
                user,
                "connected without a refresh token (the server issues none): the user is asked again when the access token expires"
            );
            Status::Ready
        } else if !tokens.has_refresh_token() && tokens.expires() {
            tracing::warn!(
                connector,
                user,
                "connected without a refresh token: the connection ends when the access token expires; enable offline access for the connector"
            );
            Status::Misconfigured
        } else {
            Status::Ready
        };
        let tkey = token_key(&pu.connection, user);
        // A new authorization replaces the old one; a refresh of the old one in flight
        // must not overwrite it, so take the slot's refresh lock.
        let slot = self.slot(&tkey);
        let mut state = slot.refresh.lock().await;
        self.store(&tkey, tokens)
            .await
            .map_err(|e| CallbackError::Internal(e.to_string()))?;
        *state = RefreshState::default();
        self.stepped_up(&tkey);
        self.ring();
        tracing::info!(connector, user, "connected");
        Ok(status)
    }

    /// A resource refused `user`'s token on `pu` for want of `scopes`: the next
    /// authorization asks for them too. Returns whether the user is to be asked (false
    /// after [`MAX_STEP_UPS`] authorizations in a row did not satisfy the resource).
    pub fn insufficient_scope(&self, pu: &PerUser, user: &str, scopes: Vec<String>) -> bool {
        let key = token_key(&pu.connection, user);
        let mut all = self.step_ups.lock().unwrap_or_else(|p| p.into_inner());
        let up = all.entry(key).or_insert_with(|| StepUp {
            scopes: Vec::new(),
            pending: false,
            rounds: 0,
            since: Instant::now(),
        });
        if up.since.elapsed() > STEP_UP_WINDOW {
            up.rounds = 0;
            up.since = Instant::now();
        }
        if !up.pending && up.rounds >= MAX_STEP_UPS {
            tracing::warn!(connector = %pu.connector, user, rounds = up.rounds, "the resource still answers insufficient_scope after the user authorized the scopes it named; not asking again");
            return false;
        }
        for s in scopes {
            if !up.scopes.contains(&s) {
                up.scopes.push(s);
            }
        }
        up.pending = true;
        tracing::info!(connector = %pu.connector, user, scopes = %up.scopes.join(" "), "the resource asks for wider scopes; the user is asked to authorize again");
        true
    }

    /// A new authorization was stored under `key`: an asked-for step-up is done (and
    /// counts towards [`MAX_STEP_UPS`]).
    fn stepped_up(&self, key: &str) {
        if let Some(up) = self
            .step_ups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(key)
            .filter(|up| up.pending)
        {
            up.pending = false;
            up.rounds += 1;
        }
    }

    /// The wider authorization `user` is to be asked for on `pu`, if any.
    fn step_up(&self, pu: &PerUser, user: &str) -> Option<StepUp> {
        self.step_ups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&token_key(&pu.connection, user))
            .filter(|up| up.pending)
            .cloned()
    }

    /// The scopes `user`'s next authorization of `pu` adds, when a step-up is due.
    pub fn wanted_scopes(&self, pu: &PerUser, user: &str) -> Option<Vec<String>> {
        self.step_up(pu, user).map(|up| up.scopes)
    }

    /// Whether `user` must authorize `pu` again for wider scopes.
    pub fn needs_step_up(&self, pu: &PerUser, user: &str) -> bool {
        self.step_up(pu, user).is_some()
    }

    /// Deletes `user`'s tokens on `pu`'s connection and revokes them at the provider when
    /// it has a revocation endpoint. Returns whether there was a connection.
    pub async fn disconnect(&self, pu: &PerUser, user: &str) -> bool {
        let key = token_key(&pu.connection, user);
        self.step_ups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        let slot = self.slot(&key);
        let mut state = slot.refresh.lock().await;
        let Some(tokens) = slot.current() else {
            return false;
        };
        self.forget(&key).await;
        *state = RefreshState::default();
        drop(state);
        self.revoke(pu, user, &tokens).await;
        tracing::info!(connector = %pu.connector, user, "disconnected");
        true
    }

    /// Revokes every user's tokens on `pu`'s connection (the connector was removed or
    /// changed its OAuth client) and deletes them.
    pub async fn revoke_all(&self, pu: &PerUser) {
        let prefix = format!("{}\n", pu.connection);
        let keys: Vec<String> = match self.vault.keys(Table::UserTokens) {
            Ok(k) => k.into_iter().filter(|k| k.starts_with(&prefix)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "could not list stored connections");
                return;
            }
        };
        for key in keys {
            let user = key[prefix.len()..].to_owned();
            self.disconnect(pu, &user).await;
        }
        if matches!(pu.kind, Kind::Dcr { .. }) {
            let prefix = format!("{}\n", pu.connector);
            for k in self.vault.keys(Table::OAuthClients).unwrap_or_default() {
                if k.starts_with(&prefix) {
                    let _ = self.vault.delete(Table::OAuthClients, &k);
                }
            }
        }
    }

    async fn revoke(&self, pu: &PerUser, user: &str, tokens: &Tokens) {
        let flow = match self.flow(pu, None, tokens.client_id.as_deref()).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(connector = %pu.connector, user, error = %e, "tokens deleted but not revoked");
                return;
            }
        };
        let Some(url) = &flow.revocation_url else {
            tracing::info!(connector = %pu.connector, user, "the provider has no revocation endpoint; tokens deleted here only");
            return;
        };
        // The refresh token first: revoking it ends the whole grant at most servers.
        for g in &tokens.grants {
            let pairs = g
                .refresh_token
                .iter()
                .map(|t| (t.as_str(), "refresh_token"))
                .chain(std::iter::once((g.access_token.as_str(), "access_token")));
            for (token, hint) in pairs {
                if let Err(e) = oauth::revoke(&self.egress, url, &flow.client, token, hint).await {
                    tracing::warn!(connector = %pu.connector, user, error = %e, "revocation failed; the token was deleted here");
                }
            }
        }
    }

    /// Deletes authorizations that were never completed.
    pub fn purge_pending(&self) {
        let Ok(keys) = self.vault.keys(Table::OAuthPending) else {
            return;
        };
        let now = now_ms();
        for k in keys {
            let expired = match self.vault.get(Table::OAuthPending, &k) {
                Ok(Some(b)) => serde_json::from_slice::<Pending>(&b)
                    .map(|p| Duration::from_millis(now.saturating_sub(p.created_at)) > PENDING_TTL)
                    .unwrap_or(true),
                _ => false,
            };
            if expired {
                let _ = self.vault.delete(Table::OAuthPending, &k);
            }
        }
    }
}

/// Refresh this long before expiry: a minute, or a fifth of the life of short tokens.
fn margin(lifetime: Duration) -> Duration {
    (lifetime / 5).min(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_have_the_documented_spellings() {
        let s = serde_json::to_value([
            Status::NoAccess,
            Status::NeedsAuth,
            Status::Ready,
            Status::Misconfigured,
        ])
        .expect("json");
        assert_eq!(
            s,
            serde_json::json!(["No access", "Needs auth", "Ready", "Misconfigured"])
        );
    }

    #[test]
    fn state_is_random_and_stored_by_hash() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_ne!(state_key(&a), a);
        assert_eq!(state_key(&a), state_key(&a));
    }

    async fn connections() -> (tempfile::TempDir, Arc<Connections>) {
        let dir = tempfile::tempdir().expect("tmp");
        let vault = Arc::new(
            Vault::open(
                &crate::vault::Location::Redb {
                    data_dir: dir.path().to_owned(),
                },
                &crate::vault::MasterKey::generate(),
            )
            .expect("vault"),
        );
        let egress = Egress::new(&config::EgressConfig::default()).expect("egress");
        let plugins = Plugins::open(None, None, None).await.expect("plugins");
        let c = Connections::open(vault, egress, plugins, Metrics::new());
        (dir, Arc::new(c))
    }

    fn per_user(id: &str) -> Arc<PerUser> {
        let (cfg, diags) = config::load_permissive(&format!(
            r#"{{"connectors": {{"servers": {{"{id}": {{"protocol": "http", "url": "https://api.example.com",
                "auth": {{"type": "oauth2_authorization_code", "client_id": "c",
                  "authorization_url": "https://as.example.com/a", "token_url": "https://as.example.com/t"}}}}}}}}}}"#
        ));
        let cfg = cfg.unwrap_or_else(|| panic!("{diags}"));
        let dir = tempfile::tempdir().expect("tmp");
        let vault = Vault::open(
            &crate::vault::Location::Redb {
                data_dir: dir.path().to_owned(),
            },
            &crate::vault::MasterKey::generate(),
        )
        .expect("vault");
        Arc::new(
            PerUser::build(&cfg.connectors[id], &vault)
                .expect("build")
                .expect("per-user"),
        )
    }

    fn pending(c: &Connections, state: &str, user: &str, age: Duration) {
        let p = Pending {
            connector: "notes".into(),
            connection: "connector|notes".into(),
            user: user.into(),
            verifier: Some("v".into()),
            redirect_uri: "http://h/aperture/auth/notes/callback".into(),
            created_at: now_ms() - age.as_millis() as u64,
        };
        c.vault
            .put(
                Table::OAuthPending,
                &state_key(state),
                &serde_json::to_vec(&p).expect("json"),
            )
            .expect("put");
    }

    fn query(state: &str) -> CallbackQuery {
        CallbackQuery {
            code: Some("code".into()),
            state: Some(state.into()),
            ..CallbackQuery::default()
        }
    }

    #[tokio::test]
    async fn an_expired_authorization_is_refused_and_forgotten() {
        let (_d, c) = connections().await;
        pending(&c, "old", "alice", PENDING_TTL + Duration::from_secs(1));
        let pu = per_user("notes");
        let find = |_: &str| Some(pu.clone());
        let e = c.callback("notes", "alice", &query("old"), find).await;
        assert!(matches!(e, Err(CallbackError::Expired)), "{e:?}");
        let again = c.callback("notes", "alice", &query("old"), find).await;
        assert!(
            matches!(again, Err(CallbackError::UnknownState)),
            "{again:?}"
        );
    }

    #[tokio::test]
    async fn another_callers_callback_is_refused_without_consuming_the_state() {
        let (_d, c) = connections().await;
        pending(&c, "s1", "alice", Duration::ZERO);
        let pu = per_user("notes");
        let find = |_: &str| Some(pu.clone());
        let e = c.callback("notes", "mallory", &query("s1"), find).await;
        assert!(matches!(e, Err(CallbackError::WrongCaller)), "{e:?}");
        assert_eq!(e.expect_err("err").status(), http::StatusCode::FORBIDDEN);
        let e = c.callback("other", "alice", &query("s1"), find).await;
        assert!(matches!(e, Err(CallbackError::WrongConnector(_))), "{e:?}");
        // Still there for Alice: the provider's refusal is reported, then it is gone.
        let mut q = query("s1");
        q.error = Some("access_denied".into());
        let e = c.callback("notes", "alice", &q, find).await;
        assert!(matches!(e, Err(CallbackError::Denied { .. })), "{e:?}");
        let e = c.callback("notes", "alice", &q, find).await;
        assert!(matches!(e, Err(CallbackError::UnknownState)), "{e:?}");
    }

    #[tokio::test]
    async fn status_follows_the_stored_tokens() {
        let (_d, c) = connections().await;
        let pu = per_user("notes");
        assert_eq!(c.status(&pu, "alice"), Status::NeedsAuth);
        let grant = |refresh: Option<&str>, expires: Option<u64>| StoredGrant {
            name: "default".into(),
            access_token: "at".into(),
            refresh_token: refresh.map(str::to_owned),
            expires_at: expires,
            refresh_at: expires,
            scope: None,
        };
        let tokens = |g: StoredGrant| Tokens {
            grants: vec![g],
            variables: Vec::new(),
            connector: "notes".into(),
            connected_at: now_ms(),
            refreshed_at: None,
            client_id: None,
        };
        let key = token_key(&pu.connection, "alice");
        c.store(&key, tokens(grant(None, Some(now_ms() + 60_000))))
            .await
            .expect("store");
        assert_eq!(c.status(&pu, "alice"), Status::Misconfigured);
        c.store(&key, tokens(grant(None, None)))
            .await
            .expect("store");
        assert_eq!(
            c.status(&pu, "alice"),
            Status::Ready,
            "a token that never expires"
        );
        c.store(&key, tokens(grant(Some("rt"), Some(now_ms() + 60_000))))
            .await
            .expect("store");
        assert_eq!(c.status(&pu, "alice"), Status::Ready);
        assert_eq!(c.status(&pu, "bob"), Status::NeedsAuth, "per user");
        // Survives a reopen of the store (the vault, not memory, is the truth).
        let again = Connections::open(
            c.vault.clone(),
            c.egress.clone(),
            c.plugins.clone(),
            Metrics::new(),
        );
        assert_eq!(again.status(&pu, "alice"), Status::Ready);
        let header = again.authorize_cached(&pu, "alice");
        assert!(header.is_some());

        // A discovered server that issues no refresh token: usable until the token
        // expires, then the user is asked again (nothing for an operator to fix).
        let (cfg, diags) = config::load_permissive(
            r#"{"connectors": {"servers": {"wiki": {"protocol": "mcp", "url": "https://mcp.example.com/mcp",
                "auth": {"type": "oauth2_dcr"}}}}}"#,
        );
        let cfg = cfg.unwrap_or_else(|| panic!("{diags}"));
        let dcr = PerUser::build(&cfg.connectors["wiki"], &c.vault)
            .expect("build")
            .expect("per-user");
        let key = token_key(&dcr.connection, "alice");
        c.store(&key, tokens(grant(None, Some(now_ms() + 60_000))))
            .await
            .expect("store");
        assert_eq!(c.status(&dcr, "alice"), Status::Ready);
        c.store(&key, tokens(grant(None, Some(now_ms() - 1))))
            .await
            .expect("store");
        assert_eq!(c.status(&dcr, "alice"), Status::NeedsAuth);
    }

    #[tokio::test]
    async fn step_ups_widen_the_next_authorization_and_are_bounded() {
        let (_d, c) = connections().await;
        let pu = per_user("notes");
        let alice = token_key(&pu.connection, "alice");
        assert!(!c.needs_step_up(&pu, "alice"));
        assert!(c.insufficient_scope(&pu, "alice", vec!["read".into()]));
        assert!(c.insufficient_scope(&pu, "alice", vec!["read".into(), "write".into()]));
        assert!(c.needs_step_up(&pu, "alice"));
        assert!(!c.needs_step_up(&pu, "bob"), "per user");
        assert_eq!(
            c.step_up(&pu, "alice").map(|u| u.scopes),
            Some(vec!["read".to_owned(), "write".to_owned()]),
            "scopes accumulate, each once"
        );
        for round in 1..=MAX_STEP_UPS {
            c.stepped_up(&alice);
            assert!(
                !c.needs_step_up(&pu, "alice"),
                "authorized in round {round}"
            );
            let again = c.insufficient_scope(&pu, "alice", vec!["admin".into()]);
            assert_eq!(again, round < MAX_STEP_UPS, "round {round}");
        }
        assert!(
            !c.needs_step_up(&pu, "alice"),
            "a server that keeps refusing is not asked for again"
        );
        // Disconnecting starts over.
        c.disconnect(&pu, "alice").await;
        assert!(c.insufficient_scope(&pu, "alice", vec!["admin".into()]));
    }

    #[test]
    fn refresh_margin() {
        assert_eq!(margin(Duration::from_secs(3600)), Duration::from_secs(60));
        assert_eq!(margin(Duration::from_secs(10)), Duration::from_secs(2));
    }
}
