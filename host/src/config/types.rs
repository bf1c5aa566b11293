//! Config types. Each section is decoded on its own so one bad section does not hide
//! problems in another; unknown keys are collected, not silently dropped.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Deserialize;

/// The whole, validated configuration: an immutable snapshot.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub identity: IdentityConfig,
    pub vault: VaultConfig,
    pub registry: RegistryConfig,
    pub egress: EgressConfig,
    pub http: HttpConfig,
    pub mcp: McpConfig,
    /// The URL agents and browsers reach this host at (`https://ai.example.ts.net`).
    /// OAuth redirect URIs are built from it; without it, from the request's `Host`.
    pub public_url: Option<url::Url>,
    /// Connectors by ID, in ID order.
    pub connectors: BTreeMap<String, Connector>,
    pub grants: Vec<Grant>,
    /// Feature flags (`{"connectors": {"value": true}}`), accepted for compatibility; no effect.
    pub flags: BTreeMap<String, Flag>,
}

/// Default listen address when neither config, flag nor environment names one.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// tailscaled's LocalAPI socket on Linux.
pub const DEFAULT_TAILSCALED_SOCKET: &str = "/var/run/tailscale/tailscaled.sock";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
pub enum IdentityMode {
    /// Ask tailscaled's LocalAPI `whois` about every peer.
    #[serde(rename = "tailscale")]
    Tailscale,
    /// Behind `tailscale serve`: trust `Tailscale-User-*` headers from loopback peers only.
    #[serde(rename = "serve-headers")]
    ServeHeaders,
    /// Local development: loopback callers are `(loopback)`; nobody else gets in.
    #[serde(rename = "loopback")]
    Loopback,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(default)]
#[schemars(deny_unknown_fields)]
pub struct IdentityConfig {
    pub mode: IdentityMode,
    /// Path of tailscaled's LocalAPI Unix socket.
    pub socket: PathBuf,
    /// How long a whois answer is reused for the same peer address.
    pub cache_ttl_secs: u64,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            mode: IdentityMode::Tailscale,
            socket: PathBuf::from(DEFAULT_TAILSCALED_SOCKET),
            cache_ttl_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(default)]
#[schemars(deny_unknown_fields)]
pub struct VaultConfig {
    /// Master key file; default `<data-dir>/master.key`. `PORTCULLIS_MASTER_KEY` wins.
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(default)]
#[schemars(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Provider registry folder; `--registry` / `PORTCULLIS_REGISTRY` win.
    pub dir: Option<PathBuf>,
}

/// The `egress` section: owned by the egress client, which is its only reader.
pub use crate::egress::Settings as EgressConfig;

/// What the host answers to, for browsers ([`crate::browser`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(default)]
#[schemars(deny_unknown_fields)]
pub struct HttpConfig {
    /// Names (or `name:port`) the host answers to besides loopback names, IP addresses
    /// and `public_url`'s host: the DNS-rebinding guard. An empty list turns it off.
    pub allowed_hosts: Option<Vec<String>>,
    /// Web origins (`https://tools.example.com`) whose pages may call the host from a
    /// browser with the browser user's identity. None by default.
    pub cors_origins: Vec<String>,
}

/// The aggregated MCP endpoint `/v1/mcp` and its upstream sessions.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(default)]
#[schemars(deny_unknown_fields)]
pub struct McpConfig {
    /// Deprecated: `http.allowed_hosts`, which covers every route.
    #[schemars(extend("deprecated" = true))]
    pub allowed_hosts: Option<Vec<String>>,
    /// How often shared-credential MCP servers are asked for their catalogs again.
    pub poll_interval_secs: u64,
    /// A user's upstream session on a per-user connector closes after this long unused.
    pub idle_session_secs: u64,
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            allowed_hosts: None,
            poll_interval_secs: 5,
            idle_session_secs: 1800,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Mcp,
}

/// A connector as written in `connectors.servers.<id>`.
#[derive(Debug, Clone)]
pub struct Connector {
    pub id: String,
    pub protocol: Protocol,
    pub url: Option<url::Url>,
    pub auth: Auth,
    pub description: String,
    pub context: Option<serde_json::Value>,
    pub provider: String,
    /// Variables for the provider plugin set before any auth (Salesforce
    /// `api_version`, Atlassian `site`): `provider_vars` in the config.
    pub provider_vars: BTreeMap<String, String>,
    pub labels: Vec<String>,
}

/// The raw server entry before `auth` is decoded per type.
#[derive(Debug, Deserialize)]
pub(crate) struct RawServer {
    pub protocol: Protocol,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub auth: Option<serde_json::Value>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub context: Option<serde_json::Value>,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub provider_vars: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: Vec<String>,
}

/// A secret as written in config: inline, or named by environment variable or vault
/// reference. Never printed: `Debug` masks it.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    Inline(String),
    /// `{"env": "NAME"}`: read from the environment when the config is loaded.
    Env(String),
    /// `{"vault": "NAME"}`: a secret the host already sealed in its vault.
    Vault(String),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inline(_) => f.write_str("SecretRef::Inline(********)"),
            Self::Env(name) => write!(f, "SecretRef::Env({name})"),
            Self::Vault(name) => write!(f, "SecretRef::Vault({name})"),
        }
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SecretRef;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, {\"env\": \"VARIABLE\"} or {\"vault\": \"NAME\"}")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SecretRef, E> {
                Ok(SecretRef::Inline(v.to_owned()))
            }

            // serde's default messages quote the value; for a secret, say only what is wrong.
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<SecretRef, E> {
                Err(E::custom("a secret must be a string: put it in quotes"))
            }

            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<SecretRef, E> {
                Err(E::custom("a secret must be a string: put it in quotes"))
            }

            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<SecretRef, E> {
                Err(E::custom("a secret must be a string: put it in quotes"))
            }

            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<SecretRef, E> {
                Err(E::custom("a secret must be a string: put it in quotes"))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<SecretRef, A::Error> {
                use serde::de::Error;
                let mut found: Option<SecretRef> = None;
                while let Some(key) = map.next_key::<String>()? {
                    let value: String = map.next_value()?;
                    let r = match key.as_str() {
                        "env" => SecretRef::Env(value),
                        "vault" => SecretRef::Vault(value),
                        other => return Err(A::Error::unknown_field(other, &["env", "vault"])),
                    };
                    if found.replace(r).is_some() {
                        return Err(A::Error::custom(
                            "a secret reference names exactly one of \"env\" or \"vault\"",
                        ));
                    }
                }
                found.ok_or_else(|| {
                    A::Error::custom("a secret reference names one of \"env\" or \"vault\"")
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Where an API key goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyLocation {
    Header,
    Query,
}

/// `auth` of a connector, decoded strictly per `type`.
#[derive(Debug, Clone, Default)]
pub enum Auth {
    #[default]
    None,
    BearerToken(BearerToken),
    ApiKey(ApiKey),
    Basic(Basic),
    ClientCredentials(ClientCredentials),
    AuthorizationCode(AuthorizationCode),
    Dcr(Dcr),
}

impl Auth {
    /// Each secret with its field name (one of [`secret_fields`]) and whether it is
    /// sent in a header (where control characters cannot go).
    pub fn secrets(&self) -> Vec<(&'static str, &SecretRef, bool)> {
        match self {
            Self::None => vec![],
            Self::Dcr(d) => d
                .client_secret
                .iter()
                .map(|s| ("client_secret", s, false))
                .collect(),
            Self::BearerToken(b) => vec![("secret", &b.secret, true)],
            Self::ApiKey(k) => vec![("secret", &k.secret, k.location == KeyLocation::Header)],
            Self::Basic(b) => vec![("password", &b.password, true)],
            Self::ClientCredentials(c) => c
                .client_secret
                .iter()
                .map(|s| ("client_secret", s, false))
                .chain(c.private_key.iter().map(|k| ("private_key", k, false)))
                .collect(),
            Self::AuthorizationCode(a) => a
                .client_secret
                .iter()
                .map(|s| ("client_secret", s, false))
                .collect(),
        }
    }

    /// The `type` string as written in config.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::BearerToken(_) => "bearer_token",
            Self::ApiKey(_) => "api_key",
            Self::Basic(_) => "basic",
            Self::ClientCredentials(_) => "oauth2_client_credentials",
            Self::AuthorizationCode(_) => "oauth2_authorization_code",
            Self::Dcr(_) => "oauth2_dcr",
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(inline, deny_unknown_fields)]
pub struct BearerToken {
    pub secret: SecretRef,
    /// The `Authorization` scheme the token is sent with: `Bearer` unless the API wants
    /// another (`Bot` for a Discord bot token).
    #[serde(default)]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    )]
    pub scheme: Option<String>,
}

impl BearerToken {
    /// The `Authorization` scheme to send.
    pub fn scheme(&self) -> &str {
        self.scheme.as_deref().unwrap_or("Bearer")
    }
}

/// Whether `s` can be an `Authorization` scheme: an HTTP token (RFC 9110 §5.6.2) of at
/// most 64 bytes.
pub fn is_auth_scheme(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(inline, deny_unknown_fields)]
pub struct ApiKey {
    pub secret: SecretRef,
    pub name: String,
    #[serde(rename = "in")]
    pub location: KeyLocation,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(inline, deny_unknown_fields)]
pub struct Basic {
    pub username: String,
    pub password: SecretRef,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(inline, deny_unknown_fields)]
pub struct ClientCredentials {
    #[schemars(length(min = 1))]
    pub client_id: String,
    /// The client's secret; or, instead, `private_key`.
    #[serde(default)]
    pub client_secret: Option<SecretRef>,
    /// A PKCS#8 PEM private key (P-256 or RSA) the client authenticates with by signed
    /// assertion (RFC 7523 `private_key_jwt`) instead of a secret.
    #[serde(default)]
    pub private_key: Option<SecretRef>,
    /// Without it, the token endpoint is discovered from the connector's `url` (its
    /// authorization server's metadata, as for `oauth2_dcr`).
    #[serde(default)]
    #[schemars(url, regex(pattern = "^https?://"))]
    pub token_url: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(inline, deny_unknown_fields)]
pub struct AuthorizationCode {
    #[schemars(length(min = 1))]
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<SecretRef>,
    #[schemars(url, regex(pattern = "^https?://"))]
    pub authorization_url: String,
    #[schemars(url, regex(pattern = "^https?://"))]
    pub token_url: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub auth_params: BTreeMap<String, String>,
    /// RFC 7009 revocation endpoint (a Portcullis addition; the provider's plugin
    /// supplies one when this is absent).
    #[serde(default)]
    #[schemars(url, regex(pattern = "^https?://"))]
    pub revocation_url: Option<String>,
    /// Where refresh grants go when not `token_url` (a Portcullis addition; the
    /// provider's plugin supplies one when this is absent: Figma's).
    #[serde(default)]
    #[schemars(url, regex(pattern = "^https?://"))]
    pub refresh_url: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[schemars(inline, deny_unknown_fields)]
pub struct Dcr {
    /// Asked for instead of what discovery finds (the server's challenge or
    /// `scopes_supported`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// A client registered in advance at the discovered authorization server; used
    /// instead of a client ID metadata document or dynamic registration.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub client_id: Option<String>,
    /// The pre-registered client's secret (only with `client_id`).
    #[serde(default)]
    pub client_secret: Option<SecretRef>,
    /// The https URL of the client ID metadata document to use as `client_id` where the
    /// server supports them; default: Portcullis's own document for the connector under
    /// an https `public_url`.
    #[serde(default)]
    #[schemars(url, regex(pattern = "^https://"))]
    pub client_metadata_url: Option<String>,
}

/// The fields each auth type accepts, for messages about unknown fields.
pub(crate) fn auth_fields(type_name: &str) -> Option<&'static [&'static str]> {
    Some(match type_name {
        "none" => &["type"],
        "bearer_token" => &["type", "secret", "scheme"],
        "api_key" => &["type", "secret", "name", "in"],
        "basic" => &["type", "username", "password"],
        "oauth2_client_credentials" => &[
            "type",
            "client_id",
            "client_secret",
            "private_key",
            "token_url",
            "scopes",
        ],
        "oauth2_authorization_code" => &[
            "type",
            "client_id",
            "client_secret",
            "authorization_url",
            "token_url",
            "scopes",
            "auth_params",
            "revocation_url",
            "refresh_url",
        ],
        "oauth2_dcr" => &[
            "type",
            "scopes",
            "client_id",
            "client_secret",
            "client_metadata_url",
        ],
        _ => return None,
    })
}

/// The fields each auth type cannot do without.
pub(crate) fn required_auth_fields(type_name: &str) -> &'static [&'static str] {
    match type_name {
        "bearer_token" => &["secret"],
        "api_key" => &["secret", "name", "in"],
        "basic" => &["username", "password"],
        "oauth2_client_credentials" => &["client_id"],
        "oauth2_authorization_code" => &["client_id", "authorization_url", "token_url"],
        _ => &[],
    }
}

/// The `auth` fields of each type that hold a secret: masked when the config is read
/// back, moved into the vault when it is saved.
pub fn secret_fields(type_name: &str) -> &'static [&'static str] {
    match type_name {
        "bearer_token" | "api_key" => &["secret"],
        "basic" => &["password"],
        "oauth2_client_credentials" => &["client_secret", "private_key"],
        "oauth2_authorization_code" | "oauth2_dcr" => &["client_secret"],
        _ => &[],
    }
}

pub(crate) const AUTH_TYPES: &[&str] = &[
    "none",
    "bearer_token",
    "api_key",
    "basic",
    "oauth2_client_credentials",
    "oauth2_authorization_code",
    "oauth2_dcr",
];

/// One entry of `grants`.
#[derive(Debug, Clone)]
pub struct Grant {
    pub src: Vec<String>,
    /// Values of `app["tailscale.com/cap/aperture"]`, decoded.
    pub caps: Vec<Capability>,
}

/// The capability key Portcullis reads, shared with Aperture and the tailnet policy file.
pub const APERTURE_CAP: &str = "tailscale.com/cap/aperture";

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

/// One capability object inside a grant (or delivered by whois).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
pub struct Capability {
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default, deserialize_with = "one_or_many")]
    #[schemars(with = "super::schema::OneOrMany")]
    pub connectors: Vec<String>,
    /// May read `/metrics`.
    #[serde(default)]
    pub read_metrics: bool,
    /// Deprecated Aperture fields, translated to `connectors` patterns.
    #[serde(default)]
    #[schemars(extend("deprecated" = true))]
    pub mcp_tools: Option<String>,
    #[serde(default)]
    #[schemars(extend("deprecated" = true))]
    pub mcp_resources: Option<String>,
    #[serde(default)]
    #[schemars(extend("deprecated" = true))]
    pub mcp_templates: Option<String>,
    // Aperture LLM-gateway fields: accepted so a shared policy loads, but unused here.
    #[serde(default)]
    pub models: Option<serde_json::Value>,
    #[serde(default)]
    pub quotas: Option<serde_json::Value>,
    #[serde(default)]
    pub send_hooks: Option<serde_json::Value>,
    #[serde(default)]
    pub add_headers: Option<serde_json::Value>,
    #[serde(default)]
    pub enable_chat_ui: Option<serde_json::Value>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(d)
        .map_err(|_| serde::de::Error::custom("expected a pattern string or a list of them"))?
    {
        OneOrMany::One(s) => Ok(vec![s]),
        OneOrMany::Many(v) => Ok(v),
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct Flag {
    pub value: serde_json::Value,
}
