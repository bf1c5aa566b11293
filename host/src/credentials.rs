//! Credentials: one type per auth scheme, each answering "what goes on this request".
//!
//! Secrets are resolved (inline, environment or vault) when a config snapshot is built,
//! turned into sensitive header values once, and never formatted into logs or errors.
//! Client-credentials tokens are cached until shortly before expiry, persisted sealed in
//! the vault so a restart does not re-mint them, and fetched by one request at a time
//! however many requests are waiting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::config::{self, Auth, KeyLocation};
use crate::connections::{ConnError, Connections, PerUser};
use crate::egress::Egress;
use crate::oauth::{self, ClientAuth, TokenError};
use crate::telemetry::{Metrics, OutcomeLabels};
use crate::vault::{Table, Vault, resolve_secret};

/// Why a request could not be given its credential.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialError {
    #[error("could not obtain an access token for connector \"{connector}\": {source}")]
    Token {
        connector: String,
        source: TokenError,
    },
    /// The caller's own token (per-user OAuth) cannot be used.
    #[error(transparent)]
    PerUser(#[from] ConnError),
    #[error("could not obtain an access token: {0}")]
    Internal(String),
}

fn sensitive(value: &str, path: &str) -> anyhow::Result<HeaderValue> {
    let mut v = HeaderValue::from_str(value).map_err(|_| {
        anyhow::anyhow!("{path}: the secret contains characters not allowed in an HTTP header")
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// What a connector adds to each request.
#[derive(Clone)]
pub enum Credential {
    None,
    /// A fixed header: bearer token, basic, or an API key in a header.
    Header(HeaderName, HeaderValue),
    /// An API key in the query string.
    Query {
        name: String,
        value: Arc<Zeroizing<String>>,
    },
    ClientCredentials(Arc<ClientCredentials>),
    /// Per-user OAuth: the token depends on the caller ([`crate::connections`]).
    PerUser(Arc<PerUser>),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "Credential::None",
            Self::Header(..) => "Credential::Header(********)",
            Self::Query { .. } => "Credential::Query(********)",
            Self::ClientCredentials(_) => "Credential::ClientCredentials",
            Self::PerUser(_) => "Credential::PerUser",
        })
    }
}

impl Credential {
    /// Builds the credential for a connector, resolving its secrets now so that a missing
    /// environment variable fails the config load rather than a request.
    pub fn build(
        c: &config::Connector,
        vault: &Vault,
        tokens: &TokenSlots,
    ) -> anyhow::Result<Self> {
        let path = |field: &str| format!("connectors.servers.{}.auth.{field}", c.id);
        Ok(match &c.auth {
            Auth::None => Self::None,
            Auth::BearerToken(b) => {
                let secret = resolve_secret(&b.secret, vault, &path("secret"))?;
                Self::Header(
                    http::header::AUTHORIZATION,
                    sensitive(
                        &format!("{} {}", b.scheme(), secret.as_str()),
                        &path("secret"),
                    )?,
                )
            }
            Auth::Basic(b) => {
                let password = resolve_secret(&b.password, vault, &path("password"))?;
                let raw = Zeroizing::new(format!("{}:{}", b.username, password.as_str()));
                let enc = Zeroizing::new(
                    base64::engine::general_purpose::STANDARD.encode(raw.as_bytes()),
                );
                Self::Header(
                    http::header::AUTHORIZATION,
                    sensitive(&format!("Basic {}", enc.as_str()), &path("password"))?,
                )
            }
            Auth::ApiKey(k) => {
                let secret = resolve_secret(&k.secret, vault, &path("secret"))?;
                match k.location {
                    KeyLocation::Header => {
                        let name = HeaderName::try_from(k.name.as_str()).map_err(|_| {
                            anyhow::anyhow!("{}: not a valid header name", path("name"))
                        })?;
                        Self::Header(name, sensitive(&secret, &path("secret"))?)
                    }
                    KeyLocation::Query => Self::Query {
                        name: k.name.clone(),
                        value: Arc::new(secret),
                    },
                }
            }
            Auth::ClientCredentials(cc) => {
                let secret = match (&cc.client_secret, &cc.private_key) {
                    (Some(s), _) => {
                        ClientProof::Secret(resolve_secret(s, vault, &path("client_secret"))?)
                    }
                    (None, Some(k)) => {
                        let pem = resolve_secret(k, vault, &path("private_key"))?;
                        let key = oauth::AssertionKey::from_pem(&pem)
                            .map_err(|e| anyhow::anyhow!("{}: {e}", path("private_key")))?;
                        ClientProof::Key(pem, Arc::new(key))
                    }
                    (None, None) => anyhow::bail!(
                        "{}: oauth2_client_credentials needs client_secret or private_key",
                        path("client_secret")
                    ),
                };
                let token_url = match &cc.token_url {
                    Some(u) => TokenEndpoint::Fixed(
                        url::Url::parse(u)
                            .map_err(|e| anyhow::anyhow!("{}: {e}", path("token_url")))?,
                    ),
                    None => TokenEndpoint::Discovered {
                        resource: c.url.clone().ok_or_else(|| {
                            anyhow::anyhow!(
                                "{}: without token_url the token endpoint is discovered from the connector's url; set one of them",
                                path("token_url")
                            )
                        })?,
                        probe: if c.protocol == crate::config::Protocol::Mcp {
                            crate::authserver::Probe::Mcp
                        } else {
                            crate::authserver::Probe::Http
                        },
                        found: tokio::sync::OnceCell::new(),
                    },
                };
                let fingerprint = fingerprint(&[
                    &cc.client_id,
                    &token_url.key(),
                    &cc.scopes.join(" "),
                    secret.material(),
                ]);
                Self::ClientCredentials(Arc::new(ClientCredentials {
                    connector: c.id.clone(),
                    client_id: cc.client_id.clone(),
                    client_secret: secret,
                    token_url,
                    scopes: cc.scopes.clone(),
                    slot: tokens.slot(&c.id, &fingerprint),
                }))
            }
            Auth::AuthorizationCode(_) | Auth::Dcr(_) => {
                Self::PerUser(Arc::new(PerUser::build(c, vault)?.ok_or_else(|| {
                    anyhow::anyhow!("{}: not a per-user auth type", path("type"))
                })?))
            }
        })
    }

    /// Adds a shared credential to an outgoing request. Per-user credentials go through
    /// [`Credentials::apply`], which knows the caller.
    async fn apply_shared(
        &self,
        connector: &str,
        egress: &Egress,
        headers: &mut HeaderMap,
        url: &mut std::borrow::Cow<'_, url::Url>,
    ) -> Result<(), CredentialError> {
        match self {
            Self::None => {}
            Self::Header(name, value) => {
                headers.insert(name.clone(), value.clone());
            }
            Self::Query { name, value } => {
                let url = url.to_mut();
                // Drop any caller-supplied parameter of the same name first.
                let kept: Vec<(String, String)> = url
                    .query_pairs()
                    .filter(|(k, _)| k != name)
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                let had_query = url.query().is_some();
                if had_query || !kept.is_empty() {
                    url.set_query(None);
                }
                let mut q = url.query_pairs_mut();
                for (k, v) in &kept {
                    q.append_pair(k, v);
                }
                q.append_pair(name, value);
            }
            Self::ClientCredentials(cc) => {
                let header = ClientCredentials::header(cc, egress).await?;
                headers.insert(http::header::AUTHORIZATION, header);
            }
            Self::PerUser(_) => {
                return Err(CredentialError::Internal(format!(
                    "connector \"{connector}\" uses per-user OAuth; its token depends on the caller"
                )));
            }
        }
        Ok(())
    }

    /// A digest of what the credential sends, to tell whether a reloaded connector still
    /// authenticates the same way (an upstream session can then be kept).
    pub fn fingerprint(&self) -> String {
        match self {
            Self::None => "none".into(),
            Self::Header(name, value) => fingerprint(&[
                "header",
                name.as_str(),
                &String::from_utf8_lossy(value.as_bytes()),
            ]),
            Self::Query { name, value } => fingerprint(&["query", name, value]),
            Self::ClientCredentials(cc) => fingerprint(&[
                "client_credentials",
                &cc.client_id,
                &cc.token_url.key(),
                &cc.scopes.join(" "),
                cc.client_secret.material(),
            ]),
            Self::PerUser(pu) => fingerprint(&["per_user", &pu.connection]),
        }
    }

    /// Removes response headers that would hand a query-string key to the caller (a
    /// redirect's `Location` echoing the request URL, say). Header credentials never
    /// travel in URLs, so only query keys need this.
    pub fn scrub_response(&self, connector: &str, headers: &mut HeaderMap) {
        let Self::Query { value, .. } = self else {
            return;
        };
        let leaking: Vec<HeaderName> = headers
            .iter()
            .filter(|(_, v)| reveals(&String::from_utf8_lossy(v.as_bytes()), value))
            .map(|(k, _)| k.clone())
            .collect();
        for name in leaking {
            headers.remove(&name);
            tracing::warn!(connector, header = %name, "removed a response header that contained the connector's API key");
        }
    }

    /// Whether a rejection can lead to a different credential (a new client-credentials
    /// token, a refreshed user token), so that a request is worth sending again.
    pub fn renewable(&self) -> bool {
        matches!(self, Self::ClientCredentials(_) | Self::PerUser(_))
    }

    /// The header this credential sets, if any: plugins may never set it themselves.
    pub fn header_name(&self) -> Option<&HeaderName> {
        match self {
            Self::Header(name, _) => Some(name),
            Self::ClientCredentials(_) | Self::PerUser(_) => Some(&http::header::AUTHORIZATION),
            Self::None | Self::Query { .. } => None,
        }
    }
}

/// Does `text` carry `secret` in any URL encoding: as is, percent-encoded in either case
/// with any characters left unescaped, form-encoded (`+` for space), or encoded again?
/// Decoding the text and comparing, rather than encoding the secret a few ways, finds
/// every spelling.
fn reveals(text: &str, secret: &str) -> bool {
    let decode = |t: &str| {
        percent_encoding::percent_decode_str(t)
            .decode_utf8_lossy()
            .into_owned()
    };
    if secret.is_empty() {
        return false;
    }
    let mut t = text.to_owned();
    // Each round undoes one layer of encoding; three cover every proxy seen echoing URLs.
    for _ in 0..3 {
        if t.contains(secret) || decode(&t.replace('+', " ")).contains(secret) {
            return true;
        }
        let next = decode(&t);
        if next == t {
            return false;
        }
        t = next;
    }
    t.contains(secret)
}

/// Puts any connector's credential on a request, shared or per-user, through one code
/// path; and when an upstream rejects one, makes the next [`Credentials::apply`] get a
/// new one (a fresh client-credentials token, a refreshed user token). Every outbound
/// call asks this, so no caller special-cases an auth scheme.
#[derive(Clone)]
pub struct Credentials {
    egress: Egress,
    connections: Arc<Connections>,
}

impl Credentials {
    pub fn new(egress: Egress, connections: Arc<Connections>) -> Self {
        Self {
            egress,
            connections,
        }
    }

    /// Adds the credential to an outgoing request (after the caller's own credentials
    /// were stripped): the shared one, or `user`'s own token, never anyone else's, for
    /// per-user OAuth. `grant` picks one of a connection's tokens (Slack's `user`).
    /// Returns the `Authorization` value sent, so a 401 can be matched to its token.
    pub async fn apply(
        &self,
        connector: &str,
        credential: &Credential,
        user: Option<&str>,
        grant: Option<&str>,
        headers: &mut HeaderMap,
        url: &mut std::borrow::Cow<'_, url::Url>,
    ) -> Result<Option<HeaderValue>, CredentialError> {
        match credential {
            Credential::PerUser(pu) => {
                let user = user.ok_or_else(|| {
                    CredentialError::Internal(format!(
                        "connector \"{connector}\" uses per-user OAuth; its token depends on the caller"
                    ))
                })?;
                let header = self.connections.authorize(pu, user, grant).await?;
                headers.insert(http::header::AUTHORIZATION, header);
            }
            shared => {
                shared
                    .apply_shared(connector, &self.egress, headers, url)
                    .await?
            }
        }
        Ok(headers.get(http::header::AUTHORIZATION).cloned())
    }

    /// The upstream answered 401 to a request that carried `sent`: a cached token is
    /// forgotten (client credentials) or marked due (per-user), so the next
    /// [`Credentials::apply`] gets a new one. A static credential stays as it is.
    pub async fn rejected(
        &self,
        credential: &Credential,
        user: Option<&str>,
        sent: Option<&HeaderValue>,
    ) {
        let Some(sent) = sent else { return };
        match credential {
            Credential::ClientCredentials(cc) => cc.slot.invalidate(sent),
            Credential::PerUser(pu) => {
                if let Some(user) = user {
                    self.connections.rejected(pu, user, sent).await;
                }
            }
            Credential::None | Credential::Header(..) | Credential::Query { .. } => {}
        }
    }
}

impl Credentials {
    /// The upstream answered 403 with a Bearer challenge: `insufficient_scope` (RFC 6750
    /// §3.1) on a user's token means the user's next authorization asks for the scopes
    /// it names ([`crate::connections::Connections::insufficient_scope`]). Anything
    /// else about a 403 is the upstream's business.
    pub fn forbidden(&self, credential: &Credential, user: Option<&str>, headers: &HeaderMap) {
        let (Credential::PerUser(pu), Some(user)) = (credential, user) else {
            return;
        };
        let Some(challenge) = headers
            .get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(crate::authserver::Challenge::parse)
            .filter(crate::authserver::Challenge::insufficient_scope)
        else {
            return;
        };
        self.connections
            .insufficient_scope(pu, user, challenge.scopes());
    }
}

fn fingerprint(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A client-credentials connector's credential.
pub struct ClientCredentials {
    connector: String,
    client_id: String,
    client_secret: ClientProof,
    token_url: TokenEndpoint,
    scopes: Vec<String>,
    slot: Arc<TokenSlot>,
}

/// How a client-credentials connector's client proves itself.
enum ClientProof {
    Secret(Zeroizing<String>),
    /// The PEM (for the fingerprint) and the key it holds.
    Key(Zeroizing<String>, Arc<oauth::AssertionKey>),
}

impl ClientProof {
    /// What changes when the client's credential does.
    fn material(&self) -> &str {
        match self {
            Self::Secret(s) | Self::Key(s, _) => s,
        }
    }
}

/// Where a client-credentials token is asked for: the configured `token_url`, or the
/// token endpoint of the authorization server discovered from the connector's URL
/// ([`crate::authserver`], as an MCP server's machine clients find it: SEP-1046),
/// found once and kept for the config's life.
enum TokenEndpoint {
    Fixed(url::Url),
    Discovered {
        resource: url::Url,
        probe: crate::authserver::Probe,
        found: tokio::sync::OnceCell<Found>,
    },
}

/// A token endpoint, how the client authenticates there (HTTP Basic, unless the server
/// takes only `client_secret_post`), and the audience of a client assertion for it
/// (the issuer where known, else the endpoint).
#[derive(Clone)]
struct Found {
    url: url::Url,
    auth: ClientAuth,
    audience: String,
}

impl TokenEndpoint {
    /// What identifies the endpoint in the token cache's fingerprint.
    fn key(&self) -> String {
        match self {
            Self::Fixed(u) => u.to_string(),
            Self::Discovered { resource, .. } => resource.to_string(),
        }
    }

    async fn resolve(&self, egress: &Egress) -> Result<Found, String> {
        match self {
            Self::Fixed(u) => Ok(Found {
                url: u.clone(),
                auth: ClientAuth::Basic,
                audience: u.to_string(),
            }),
            Self::Discovered {
                resource,
                probe,
                found,
            } => found
                .get_or_try_init(|| async {
                    let server = crate::authserver::discover(egress, resource, *probe).await?;
                    let url = url::Url::parse(&server.token_endpoint).map_err(|e| {
                        format!("the discovered token endpoint is not a URL: {e}")
                    })?;
                    let m = &server.auth_methods;
                    let auth = if m.iter().any(|m| m == "client_secret_post")
                        && !m.iter().any(|m| m == "client_secret_basic")
                    {
                        ClientAuth::Body
                    } else {
                        ClientAuth::Basic
                    };
                    tracing::info!(resource = %resource, token_url = %url, "discovered the client-credentials token endpoint");
                    Ok(Found {
                        url,
                        auth,
                        audience: server.issuer,
                    })
                })
                .await
                .cloned(),
        }
    }
}

/// How long a token without `expires_in` is reused.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Longest a token is reused, whatever `expires_in` says (and a bound for time arithmetic).
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// A failed token request is not repeated for this long: requests arriving meanwhile get
/// the same error instead of queueing up to hammer a failing endpoint.
const FAILURE_HOLD: Duration = Duration::from_secs(2);

/// When to stop using a token that lives `lifetime`: a minute early, or a fifth of its
/// life early for short-lived tokens.
fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 5).min(Duration::from_secs(60))
}

impl ClientCredentials {
    async fn header(this: &Arc<Self>, egress: &Egress) -> Result<HeaderValue, CredentialError> {
        if let Some(h) = this.slot.fresh() {
            return Ok(h);
        }
        // The token request runs in its own task: a caller that gives up must not cancel
        // it for everyone else waiting on it.
        let (this, egress) = (this.clone(), egress.clone());
        tokio::spawn(async move { this.fetch(&egress).await })
            .await
            .unwrap_or_else(|e| Err(CredentialError::Internal(e.to_string())))
    }

    async fn fetch(&self, egress: &Egress) -> Result<HeaderValue, CredentialError> {
        // One token request at a time: later arrivals wait here, then find the new token.
        let mut fetch = self.slot.fetch.lock().await;
        if let Some(h) = self.slot.fresh() {
            return Ok(h);
        }
        if let Some((at, err)) = &fetch.last_failure
            && at.elapsed() < FAILURE_HOLD
        {
            return Err(err.clone());
        }
        let started = Instant::now();
        let found = match self.token_url.resolve(egress).await {
            Ok(found) => found,
            Err(detail) => {
                let err = CredentialError::Token {
                    connector: self.connector.clone(),
                    source: TokenError::Undiscovered {
                        resource: self.token_url.key(),
                        detail,
                    },
                };
                fetch.last_failure = Some((Instant::now(), err.clone()));
                return Err(err);
            }
        };
        let token_url = found.url.clone();
        let proof = match &self.client_secret {
            ClientProof::Secret(s) => Ok(oauth::ClientProof::Secret(s, found.auth)),
            ClientProof::Key(_, key) => key
                .sign(&self.client_id, &found.audience)
                .map(oauth::ClientProof::Assertion)
                .map_err(|detail| TokenError::BadResponse {
                    url: token_url.to_string(),
                    detail,
                }),
        };
        let result = match proof {
            Ok(proof) => {
                oauth::client_credentials(egress, &token_url, &self.client_id, proof, &self.scopes)
                    .await
            }
            Err(e) => Err(e),
        };
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.slot
            .metrics
            .token_requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        match result {
            Ok(token) => {
                let lifetime = token
                    .expires_in
                    .unwrap_or(DEFAULT_LIFETIME)
                    .min(MAX_LIFETIME);
                let header = sensitive(&format!("Bearer {}", token.access_token.as_str()), "token")
                    .map_err(|_| CredentialError::Token {
                        connector: self.connector.clone(),
                        source: TokenError::BadResponse {
                            url: token_url.to_string(),
                            detail: "the access token has characters not allowed in a header"
                                .into(),
                        },
                    })?;
                let use_until = started + lifetime.saturating_sub(refresh_margin(lifetime));
                self.slot.store(header.clone(), use_until);
                fetch.last_failure = None;
                self.slot
                    .persist(&token.access_token, SystemTime::now() + lifetime);
                tracing::info!(connector = %self.connector, expires_in_secs = lifetime.as_secs(), "minted a client-credentials token");
                Ok(header)
            }
            Err(source) => {
                let err = CredentialError::Token {
                    connector: self.connector.clone(),
                    source,
                };
                tracing::warn!(connector = %self.connector, error = %err, "token request failed");
                fetch.last_failure = Some((Instant::now(), err.clone()));
                Err(err)
            }
        }
    }
}

#[derive(Default)]
struct FetchState {
    last_failure: Option<(Instant, CredentialError)>,
}

/// One connector's cached token. Outlives config reloads while the connector's
/// credentials stay the same.
pub struct TokenSlot {
    connector: String,
    fingerprint: String,
    current: RwLock<Option<(HeaderValue, Instant)>>,
    fetch: tokio::sync::Mutex<FetchState>,
    vault: Arc<Vault>,
    metrics: Arc<Metrics>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct PersistedToken {
    fingerprint: String,
    access_token: String,
    expires_at_unix: u64,
}

impl TokenSlot {
    fn fresh(&self) -> Option<HeaderValue> {
        let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
        cur.as_ref()
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(h, _)| h.clone())
    }

    fn store(&self, header: HeaderValue, until: Instant) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some((header, until));
    }

    fn invalidate(&self, sent: &HeaderValue) {
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        if cur.as_ref().is_some_and(|(h, _)| h == sent) {
            *cur = None;
            tracing::info!(connector = %self.connector, "upstream rejected the access token; a new one will be minted");
        }
    }

    /// Seals the token into the vault so a restart can reuse it (off the request path).
    fn persist(&self, token: &str, expires_at: SystemTime) {
        let record = PersistedToken {
            fingerprint: self.fingerprint.clone(),
            access_token: token.to_owned(),
            expires_at_unix: expires_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
        };
        let Ok(bytes) = serde_json::to_vec(&record).map(Zeroizing::new) else {
            return;
        };
        let (vault, connector) = (self.vault.clone(), self.connector.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = vault.put(Table::ClientTokens, &connector, &bytes) {
                tracing::warn!(connector = %connector, error = %e, "could not persist the access token");
            }
        });
    }

    /// Primes the slot from the vault if a still-valid token for the same credentials is there.
    fn restore(&self) {
        let Ok(Some(bytes)) = self.vault.get(Table::ClientTokens, &self.connector) else {
            return;
        };
        let Ok(rec) = serde_json::from_slice::<PersistedToken>(&bytes) else {
            return;
        };
        let token = Zeroizing::new(rec.access_token.clone());
        if rec.fingerprint != self.fingerprint {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let Some(left) = rec
            .expires_at_unix
            .checked_sub(now)
            .map(Duration::from_secs)
        else {
            return;
        };
        let margin = refresh_margin(left.max(Duration::from_secs(1)));
        if left <= margin {
            return;
        }
        if let Ok(h) = sensitive(&format!("Bearer {}", token.as_str()), "token") {
            self.store(h, Instant::now() + (left - margin));
            tracing::info!(connector = %self.connector, "reusing the persisted access token");
        }
    }
}

/// Token slots by connector, kept across config reloads.
pub struct TokenSlots {
    slots: Mutex<HashMap<String, Arc<TokenSlot>>>,
    vault: Arc<Vault>,
    metrics: Arc<Metrics>,
}

impl TokenSlots {
    pub fn new(vault: Arc<Vault>, metrics: Arc<Metrics>) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            vault,
            metrics,
        }
    }

    /// The slot for `connector`; a new, empty one if its credentials changed.
    fn slot(&self, connector: &str, fingerprint: &str) -> Arc<TokenSlot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots
            .get(connector)
            .filter(|s| s.fingerprint == fingerprint)
        {
            return s.clone();
        }
        let slot = Arc::new(TokenSlot {
            connector: connector.to_owned(),
            fingerprint: fingerprint.to_owned(),
            current: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(FetchState::default()),
            vault: self.vault.clone(),
            metrics: self.metrics.clone(),
        });
        slot.restore();
        slots.insert(connector.to_owned(), slot.clone());
        slot
    }

    /// Forgets slots of connectors no longer in the config.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| live(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_key_is_found_in_every_encoding_an_upstream_may_echo() {
        let key = "k/1 2+3é";
        for echoed in [
            "https://api.example.com/x?key=k/1 2+3é",
            "https://api.example.com/x?key=k%2F1%202%2B3%C3%A9",
            "https://api.example.com/x?key=k%2f1%202%2b3%c3%a9",
            "https://api.example.com/x?key=k/1%202%2B3%C3%A9",
            "https://api.example.com/x?key=k%2F1+2%2B3%C3%A9",
            "https://api.example.com/x?key=k%252F1%25202%252B3%25C3%25A9",
        ] {
            assert!(reveals(echoed, key), "{echoed}");
        }
        assert!(!reveals("https://api.example.com/x?key=other", key));
        assert!(!reveals("anything", ""));
    }

    #[test]
    fn margin_is_a_minute_or_a_fifth() {
        assert_eq!(
            refresh_margin(Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(10)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn fingerprint_separates_fields() {
        assert_ne!(fingerprint(&["ab", "c"]), fingerprint(&["a", "bc"]));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let mut v = HeaderValue::from_static("Bearer hunter2");
        v.set_sensitive(true);
        let c = Credential::Header(http::header::AUTHORIZATION, v);
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
