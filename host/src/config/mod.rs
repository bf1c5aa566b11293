//! Configuration: HuJSON text → validated, immutable [`Config`] plus [`Diagnostics`].
//!
//! Each section is decoded on its own (with `serde_path_to_error` for the path of a type
//! error and `serde_ignored` for every unknown key), so one mistake never hides another.
//! Unknown keys are warnings, except inside `auth`, where a typo such as `secert` would
//! silently drop a credential: there they are errors.

mod diag;
pub mod edit;
pub mod schema;
mod surroundings;
mod types;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

pub use diag::{Diagnostic, Diagnostics, JsonPath, Severity};
#[cfg(test)]
pub use surroundings::Fixture;
pub use surroundings::{
    FillError, FromTemplate, OAuthTemplate, Provider, ProviderTemplate, StaticCredential,
    Surroundings,
};
pub use types::*;

/// The config `portcullis serve` uses when given none: loopback identity, admin for
/// `(loopback)`, and the built-in `aperture` connector.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.hujson");

/// Connector IDs the host keeps for itself.
pub const RESERVED_IDS: &[&str] = &["aperture", "tailscale", "internal"];

/// Labels the host keeps for its own connectors.
pub const RESERVED_LABELS: &[&str] = &["system"];

/// Longest connector ID: it prefixes tool names, which clients limit in length.
pub const MAX_ID_LEN: usize = 32;

/// Top-level sections of Aperture's config that Portcullis accepts but does not use
/// (they configure Aperture's LLM gateway), so a shared file still loads.
const APERTURE_ONLY_SECTIONS: &[&str] = &[
    "providers",
    "quotas",
    "hooks",
    "exporters",
    "auto_cost_basis",
    "database",
    "temp_grants",
    "chat_models",
];

/// [`load`] where every secret reference resolves and no provider exists: for tests
/// about something else.
#[cfg(test)]
pub fn load_permissive(text: &str) -> (Option<Config>, Diagnostics) {
    load(
        text,
        &Fixture {
            permissive: true,
            ..Default::default()
        },
    )
}

/// The one validator: parses a config and checks everything that could make it unusable
/// (structure, values and their bounds, and every reference into `env`: secrets,
/// providers), reporting every problem at once. `config` is `None` when there are errors.
///
/// `validate`, `serve`, reloads and saves all come here; they differ only in `env`.
pub fn load(text: &str, env: &dyn Surroundings) -> (Option<Config>, Diagnostics) {
    let mut diags = Diagnostics::default();
    let root = match parse_hujson(text) {
        Ok(v) => v,
        Err(msg) => {
            diags.error("", msg);
            return (None, diags);
        }
    };
    find_duplicate_keys(text, &mut diags);
    let config = build(&root, env, &mut diags);
    if diags.has_errors() {
        (None, diags)
    } else {
        (config, diags)
    }
}

/// HuJSON: JSON plus comments and trailing commas, and nothing else (no JSON5 extras).
pub(crate) const HUJSON: jsonc_parser::ParseOptions = jsonc_parser::ParseOptions {
    allow_comments: true,
    allow_trailing_commas: true,
    allow_loose_object_property_names: false,
    allow_missing_commas: false,
    allow_single_quoted_strings: false,
    allow_hexadecimal_numbers: false,
    allow_unary_plus_numbers: false,
    allow_bare_decimal_point_numbers: false,
    allow_non_finite_numbers: false,
    allow_extended_string_escapes: false,
};

/// Parses HuJSON text into a JSON value.
pub fn parse_hujson(text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Err("config must not be empty".into());
    }
    jsonc_parser::parse_to_serde_value::<Value>(text, &HUJSON)
        .map_err(|e| format!("not valid HuJSON: {e}"))
}

/// Settings read before the config is validated (where the registry and the vault key
/// are), leniently: `T`'s defaults when the text does not decode (the validator then
/// reports why). Unknown keys are ignored.
pub fn peek<T: DeserializeOwned + Default>(text: &str) -> T {
    parse_hujson(text)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

/// The settings [`peek`] is for: where the registry and the vault key are.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct Peeked {
    pub registry: RegistryConfig,
    pub vault: VaultConfig,
}

/// The listen address alone, peeked so the port is bound before anything is created on
/// disk (apart from [`Peeked`], so a bad `listen` leaves the vault settings readable).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct PeekedListen {
    pub listen: Option<std::net::SocketAddr>,
}

/// Duplicate keys are errors: a JSON parser keeps the last one, so an earlier value an
/// operator believes in would silently lose. (Also for JSON the admin API receives.)
pub fn duplicate_keys(text: &str) -> Diagnostics {
    let mut diags = Diagnostics::default();
    find_duplicate_keys(text, &mut diags);
    diags
}

fn find_duplicate_keys(text: &str, diags: &mut Diagnostics) {
    fn walk(node: &jsonc_parser::cst::CstNode, at: &JsonPath, diags: &mut Diagnostics) {
        if let Some(obj) = node.as_object() {
            let mut seen = HashSet::new();
            for prop in obj.properties() {
                let Some(name) = prop.name().and_then(|n| n.decoded_value().ok()) else {
                    continue;
                };
                let here = at.key(&name);
                if !seen.insert(name.clone()) {
                    diags.error(
                        &here,
                        format!("duplicate key \"{name}\": only the last one would count; remove or rename the other"),
                    );
                }
                if let Some(v) = prop.value() {
                    walk(&v, &here, diags);
                }
            }
        } else if let Some(list) = node.as_array() {
            for (i, el) in list.elements().iter().enumerate() {
                walk(el, &at.index(i), diags);
            }
        }
    }
    if let Ok(root) = jsonc_parser::cst::CstRootNode::parse(text, &HUJSON)
        && let Some(v) = root.value()
    {
        walk(&v, &JsonPath::root(), diags);
    }
}

/// The bounds of every number in the config: `(section, key, min, max)`.
/// Outside them a value is an error, not clamped: a typo of a few zeros should be seen.
pub const BOUNDS: &[(&str, &str, u64, u64)] = &[
    ("identity", "cache_ttl_secs", 0, 3600),
    ("egress", "connect_timeout_secs", 1, 300),
    ("egress", "read_timeout_secs", 1, 3600),
    ("mcp", "poll_interval_secs", 1, 86_400),
    ("mcp", "idle_session_secs", 1, 604_800),
];

fn bounds(root: &Map<String, Value>, diags: &mut Diagnostics) {
    for (section, key, min, max) in BOUNDS {
        let Some(v) = root.get(*section).and_then(|s| s.get(*key)) else {
            continue;
        };
        // Type errors are the decoder's to report.
        if let Some(n) = v.as_u64()
            && !(*min..=*max).contains(&n)
        {
            diags.error(
                JsonPath::root().key(section).key(key),
                format!("{n} is out of range: {key} takes {min} to {max}"),
            );
        }
    }
}

fn build(root: &Value, env: &dyn Surroundings, diags: &mut Diagnostics) -> Option<Config> {
    let Some(obj) = root.as_object() else {
        diags.error("", "the config must be a JSON object");
        return None;
    };
    let top = JsonPath::root();
    for key in obj.keys() {
        let known = matches!(
            key.as_str(),
            "$schema"
                | "listen"
                | "identity"
                | "vault"
                | "registry"
                | "egress"
                | "http"
                | "mcp"
                | "public_url"
                | "connectors"
                | "grants"
                | "flags"
        );
        if APERTURE_ONLY_SECTIONS.contains(&key.as_str()) {
            diags.warn(
                top.key(key),
                format!(
                    "section \"{key}\" configures Aperture's LLM gateway; Portcullis ignores it"
                ),
            );
        } else if !known {
            diags.warn(top.key(key), format!("unknown config key \"{key}\""));
        }
    }

    let listen = match obj.get("listen") {
        None => DEFAULT_LISTEN.parse().ok(),
        Some(v) => match v.as_str().map(str::parse::<SocketAddr>) {
            Some(Ok(addr)) => Some(addr),
            _ => {
                diags.error(
                    top.key("listen"),
                    "expected \"ADDRESS:PORT\", e.g. \"127.0.0.1:8080\"",
                );
                None
            }
        },
    };
    let identity: Option<IdentityConfig> = section(obj, "identity", diags);
    let vault: Option<VaultConfig> = section(obj, "vault", diags);
    let registry: Option<RegistryConfig> = section(obj, "registry", diags);
    let egress: Option<EgressConfig> = section(obj, "egress", diags);
    let mcp: Option<McpConfig> = section(obj, "mcp", diags);
    let http: Option<HttpConfig> = section(obj, "http", diags);
    let http = http.and_then(|h| http_section(h, mcp.as_ref(), diags));
    bounds(obj, diags);
    let flags: Option<BTreeMap<String, Flag>> = section(obj, "flags", diags);
    if let Some(e) = &egress
        && e.allow_loopback
    {
        diags.notice(
            top.key("egress").key("allow_loopback"),
            "loopback upstreams are allowed: a development and test switch, never for production",
        );
    }
    let public_url = public_url(obj.get("public_url"), &top.key("public_url"), diags);
    let allow_loopback = egress.as_ref().is_some_and(|e| e.allow_loopback);
    let connectors = connectors(obj.get("connectors"), allow_loopback, env, diags);
    let grants = grants(obj.get("grants"), diags);

    Some(Config {
        listen: listen?,
        identity: identity?,
        vault: vault?,
        registry: registry?,
        egress: egress?,
        http: http?,
        mcp: mcp?,
        public_url: public_url?,
        connectors: connectors?,
        grants: grants?,
        flags: flags?,
    })
}

/// `http`: origins must be origins; `mcp.allowed_hosts` (which guarded only `/v1/mcp`)
/// still counts, with a warning to move it.
fn http_section(
    mut http: HttpConfig,
    mcp: Option<&McpConfig>,
    diags: &mut Diagnostics,
) -> Option<HttpConfig> {
    let at = JsonPath::root().key("http");
    if let Some(old) = mcp.and_then(|m| m.allowed_hosts.clone()) {
        // An empty old list turned the check off for /v1/mcp alone; it must not turn
        // the guard off for every route now, so it adds nothing.
        let note = if old.is_empty() {
            "mcp.allowed_hosts is deprecated and an empty list is ignored: the Host check now guards every route (set http.allowed_hosts: [] to turn it off, which is unsafe)"
        } else {
            "mcp.allowed_hosts is deprecated: move it to http.allowed_hosts, which guards every route"
        };
        diags.warn(JsonPath::root().key("mcp").key("allowed_hosts"), note);
        if !old.is_empty() {
            http.allowed_hosts.get_or_insert_with(Vec::new).extend(old);
        }
    }
    if http.allowed_hosts.as_ref().is_some_and(Vec::is_empty) {
        diags.warn(
            at.key("allowed_hosts"),
            "an empty list turns the DNS-rebinding guard off: any web page whose name points here can use its visitors' tailnet identity",
        );
    }
    let mut ok = true;
    for (i, o) in http.cors_origins.iter().enumerate() {
        let origin = url::Url::parse(o).ok().filter(|u| {
            matches!(u.scheme(), "http" | "https")
                && u.host().is_some()
                && u.path() == "/"
                && u.query().is_none()
                && u.fragment().is_none()
                && u.username().is_empty()
                && u.password().is_none()
        });
        if origin.is_none() {
            diags.error(
                at.key("cors_origins").index(i),
                format!("\"{}\" is not an origin: write scheme, host and port only, e.g. \"https://tools.example.com\" (no \"*\", no path)", shown(o)),
            );
            ok = false;
        }
    }
    ok.then_some(http)
}

/// `public_url`: an http(s) origin, optionally with a path prefix, and nothing else.
fn public_url(
    v: Option<&Value>,
    at: &JsonPath,
    diags: &mut Diagnostics,
) -> Option<Option<url::Url>> {
    let Some(v) = v else { return Some(None) };
    let parsed = v.as_str().map(url::Url::parse);
    match parsed {
        Some(Ok(u))
            if matches!(u.scheme(), "http" | "https")
                && u.host().is_some()
                && u.username().is_empty()
                && u.password().is_none()
                && u.query().is_none()
                && u.fragment().is_none() =>
        {
            Some(Some(u))
        }
        _ => {
            diags.error(
                at,
                "expected the host's external URL, e.g. \"https://ai.example.ts.net\" (no query, fragment or credentials)",
            );
            None
        }
    }
}

/// Decodes `value` as `T`, reporting a type error at its exact path and every ignored
/// (unknown) key at `unknown` severity. Returns `None` on a type error.
fn decode<T: DeserializeOwned>(
    value: &Value,
    at: &JsonPath,
    unknown: Severity,
    diags: &mut Diagnostics,
    describe_unknown: impl Fn(&str) -> String,
) -> Option<T> {
    let mut ignored = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(value, &mut track);
    let result: Result<T, _> = serde_ignored::deserialize(de, |p| {
        let last = match &p {
            serde_ignored::Path::Map { key, .. } => key.clone(),
            other => other.to_string(),
        };
        ignored.push((at.join_serde(&p), last));
    });
    match result {
        Ok(v) => {
            for (path, key) in ignored {
                diags.push(unknown, path, describe_unknown(&key));
            }
            Some(v)
        }
        Err(e) => {
            diags.error(at.join_tracked(&track.path()), e.to_string());
            None
        }
    }
}

/// A top-level section with defaults when absent.
fn section<T: DeserializeOwned + Default>(
    obj: &Map<String, Value>,
    name: &str,
    diags: &mut Diagnostics,
) -> Option<T> {
    match obj.get(name) {
        None | Some(Value::Null) => Some(T::default()),
        Some(v) => decode(
            v,
            &JsonPath::root().key(name),
            Severity::Warning,
            diags,
            |k| format!("unknown config key \"{k}\" in \"{name}\""),
        ),
    }
}

/// Is `id` a valid connector ID (`[a-zA-Z][a-zA-Z0-9]*`, at most 32 characters)?
pub fn valid_connector_id(id: &str) -> bool {
    let mut chars = id.chars();
    id.len() <= MAX_ID_LEN
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric())
}

fn connectors(
    value: Option<&Value>,
    allow_loopback: bool,
    env: &dyn Surroundings,
    diags: &mut Diagnostics,
) -> Option<BTreeMap<String, Connector>> {
    let at = JsonPath::root().key("connectors");
    let mut out = BTreeMap::new();
    let Some(value) = value else { return Some(out) };
    let Some(obj) = value.as_object() else {
        diags.error(&at, "expected an object with a \"servers\" map");
        return None;
    };
    for key in obj.keys().filter(|k| *k != "servers") {
        diags.warn(
            at.key(key),
            format!("unknown config key \"{key}\" in \"connectors\""),
        );
    }
    let Some(servers) = obj.get("servers") else {
        return Some(out);
    };
    let Some(servers) = servers.as_object() else {
        diags.error(
            at.key("servers"),
            "expected a map of connector ID to server",
        );
        return None;
    };
    let mut ok = true;
    for (id, raw) in servers {
        let here = at.key("servers").key(id);
        match connector(id, raw, &here, allow_loopback, env, diags) {
            Some(c) => {
                out.insert(id.clone(), c);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn connector(
    id: &str,
    raw: &Value,
    at: &JsonPath,
    allow_loopback: bool,
    env: &dyn Surroundings,
    diags: &mut Diagnostics,
) -> Option<Connector> {
    let mut ok = true;
    if !valid_connector_id(id) {
        diags.error(
            at,
            format!(
                "connector ID \"{id}\" is invalid: it must start with a letter, contain only letters \
                 and digits (no \"_\" or \"-\": it prefixes tool names) and have at most {MAX_ID_LEN} characters"
            ),
        );
        ok = false;
    }
    if RESERVED_IDS.contains(&id) {
        diags.error(
            at,
            format!("connector ID \"{id}\" is reserved; choose another"),
        );
        ok = false;
    }
    let server: RawServer = decode(raw, at, Severity::Warning, diags, |k| {
        format!("unknown field \"{k}\" in connector \"{id}\"")
    })?;

    let template = match server.provider.as_deref() {
        None => None,
        Some(p) if p.eq_ignore_ascii_case("custom") => None,
        Some(p) => match env.provider(p) {
            Provider::Loaded(t) => Some(t),
            problem => {
                diags.error(at.key("provider"), provider_problem(p, problem));
                ok = false;
                None
            }
        },
    };
    let url = match &server.url {
        None => {
            let default = template
                .as_ref()
                .map(|t| match (server.protocol, &t.mcp_url) {
                    (Protocol::Mcp, Some(u)) => u.as_str(),
                    _ => t.api_url.as_str(),
                });
            diags.warn(
                at.key("url"),
                match default {
                    Some(u) => format!(
                        "connector \"{id}\" has no url; add the provider's: \"url\": \"{u}\""
                    ),
                    None => format!("connector \"{id}\" has no url; requests to it will fail"),
                },
            );
            None
        }
        Some(u) => match url::Url::parse(u) {
            Ok(parsed)
                if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() =>
            {
                if let Some(reason) = crate::egress::unsafe_url_reason(&parsed, allow_loopback) {
                    diags.warn(
                        at.key("url"),
                        format!("connector \"{id}\" points at {reason}; connections to it will be refused"),
                    );
                }
                if parsed.query().is_some() || parsed.fragment().is_some() {
                    diags.error(
                        at.key("url"),
                        "the url is a base URL: remove its query string and fragment",
                    );
                    ok = false;
                }
                if !parsed.username().is_empty() || parsed.password().is_some() {
                    diags.error(at.key("url"), "put credentials in \"auth\", not in the url");
                    ok = false;
                }
                Some(parsed)
            }
            Ok(_) => {
                diags.error(
                    at.key("url"),
                    format!("\"{}\" is not an http:// or https:// URL", shown(u)),
                );
                ok = false;
                None
            }
            Err(e) => {
                diags.error(
                    at.key("url"),
                    format!("\"{}\" is not a valid URL: {e}", shown(u)),
                );
                ok = false;
                None
            }
        },
    };

    if let Some(ctx) = &server.context
        && !(ctx.is_string() || ctx.is_object())
    {
        diags.error(
            at.key("context"),
            "context must be a string or a JSON object",
        );
        ok = false;
    }
    for (i, label) in server.labels.iter().enumerate() {
        if label.is_empty() {
            diags.error(at.key("labels").index(i), "labels must not be empty");
            ok = false;
        } else if RESERVED_LABELS.contains(&label.as_str()) {
            diags.error(
                at.key("labels").index(i),
                format!("the label \"{label}\" is reserved for built-in connectors"),
            );
            ok = false;
        }
    }

    for name in server.provider_vars.keys() {
        let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            diags.error(
                at.key("provider_vars").key(name),
                "provider variable names are lower-case letters, digits and '_', starting with a letter",
            );
            ok = false;
        }
    }
    if !server.provider_vars.is_empty()
        && server
            .provider
            .as_deref()
            .is_none_or(|p| p.eq_ignore_ascii_case("custom"))
    {
        diags.warn(
            at.key("provider_vars"),
            "provider_vars has no effect without a \"provider\" from the registry",
        );
    }

    let auth = match &server.auth {
        None | Some(Value::Null) => {
            if let Some(t) = &template
                && t.oauth.is_some()
            {
                diags.warn(
                    at.key("auth"),
                    format!(
                        "connector \"{id}\" has no auth; provider {} signs users in with OAuth: \"auth\": {}",
                        t.id,
                        t.connector(server.protocol)["auth"]
                    ),
                );
            }
            Some(Auth::None)
        }
        Some(v) => auth(id, v, &at.key("auth"), template.as_deref(), diags),
    };
    match &auth {
        Some(Auth::AuthorizationCode(a)) => {
            for (field, u) in [
                ("authorization_url", &a.authorization_url),
                ("token_url", &a.token_url),
            ]
            .into_iter()
            .chain(a.revocation_url.as_ref().map(|u| ("revocation_url", u)))
            .chain(a.refresh_url.as_ref().map(|u| ("refresh_url", u)))
            {
                check_endpoint_url(u, &at.key("auth").key(field), diags);
            }
        }
        Some(Auth::ClientCredentials(c)) => {
            if let Some(u) = &c.token_url {
                check_endpoint_url(u, &at.key("auth").key("token_url"), diags);
            }
        }
        _ => {}
    }
    if let Some(a) = &auth {
        check_secrets(a, &at.key("auth"), env, diags);
    }

    let auth = auth?;
    if !ok || diags_for(at, diags) {
        return None;
    }
    Some(Connector {
        id: id.to_owned(),
        protocol: server.protocol,
        url,
        auth,
        description: server.description,
        context: server.context,
        provider: server.provider.unwrap_or_else(|| "Custom".into()),
        provider_vars: server.provider_vars,
        labels: server.labels,
    })
}

/// What is wrong with a connector's `provider`, and what to do.
fn provider_problem(name: &str, problem: Provider) -> String {
    match problem {
        Provider::Loaded(_) => String::new(),
        Provider::Broken(why) => format!(
            "provider \"{name}\" is in the registry but did not load ({why}); fix or replace it (GET /api/registry lists registry problems)"
        ),
        Provider::Unknown { known } if known.is_empty() => format!(
            "unknown provider \"{name}\": the registry has no providers; write \"Custom\" for a connector without one"
        ),
        Provider::Unknown { known } => format!(
            "unknown provider \"{name}\"; the registry has: {} (or write \"Custom\" for a connector without one)",
            known.join(", ")
        ),
        Provider::NoRegistry => format!(
            "provider \"{name}\" needs the provider registry, and none is loaded: point --registry, PORTCULLIS_REGISTRY or registry.dir at it, or write \"Custom\""
        ),
    }
}

/// Every secret of a connector must resolve to a usable value now, not at the first
/// request. Values are never quoted in a message.
fn check_secrets(auth: &Auth, at: &JsonPath, env: &dyn Surroundings, diags: &mut Diagnostics) {
    for (field, secret, in_header) in auth.secrets() {
        let here = at.key(field);
        let value = match secret {
            SecretRef::Inline(v) => Some(zeroize::Zeroizing::new(v.clone())),
            SecretRef::Env(name) => {
                let v = env.env(name);
                if v.is_none() {
                    diags.error(
                        &here,
                        format!(
                            "environment variable {name} is not set (or not UTF-8): set it where Portcullis runs, or keep the secret in the vault (`portcullis secret set NAME`, then {{\"vault\": \"NAME\"}})"
                        ),
                    );
                }
                v
            }
            SecretRef::Vault(name) => match env.vault(name) {
                Ok(Some(v)) => Some(v),
                Ok(None) => {
                    diags.error(
                        &here,
                        format!(
                            "the vault has no secret named \"{name}\": add it with `portcullis secret set {name}` or PUT /api/secrets/{name}"
                        ),
                    );
                    None
                }
                Err(why) => {
                    diags.warn(
                        &here,
                        format!("vault secret \"{name}\" was not checked: {why}"),
                    );
                    None
                }
            },
        };
        let Some(value) = value else { continue };
        if value.is_empty() {
            diags.error(&here, "the secret is empty: set its value");
        } else if in_header && value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            diags.error(
                &here,
                "the secret contains a line break or another control character, so it cannot be sent in a header; check how it was copied",
            );
        }
    }
}

/// A URL as messages show it: with any user name and password replaced, since a URL
/// someone wrote into the config may carry credentials.
fn shown(u: &str) -> String {
    match url::Url::parse(u) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let _ = parsed.set_username("***");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        // Parsed with an authority and no credentials in it: nothing to hide.
        Ok(parsed) if parsed.has_host() => u.to_owned(),
        // Unparsable (`http://user:pa/ss@host`), or read as something else
        // (`user:secret@host` is scheme `user`): hide everything up to the last "@".
        _ => match u.rfind('@') {
            Some(at) => {
                let start = u.find("://").map_or(0, |i| i + 3);
                format!("{}***@{}", &u[..start.min(at)], &u[at + 1..])
            }
            None => u.to_owned(),
        },
    }
}

/// Were errors reported under `at`? (Decoding helpers report and carry on.)
fn diags_for(at: &JsonPath, diags: &Diagnostics) -> bool {
    diags.errors().any(|d| d.path.starts_with(at.as_str()))
}

fn check_endpoint_url(u: &str, at: &JsonPath, diags: &mut Diagnostics) {
    match url::Url::parse(u) {
        Ok(p) if !p.username().is_empty() || p.password().is_some() => {
            // Never echo it: the userinfo may be a secret.
            diags.error(
                at,
                "remove the credentials from this URL; put them in the auth fields",
            )
        }
        Ok(p) if matches!(p.scheme(), "http" | "https") && p.host().is_some() => {}
        Ok(_) => diags.error(
            at,
            format!("\"{}\" is not an http:// or https:// URL", shown(u)),
        ),
        Err(e) => diags.error(at, format!("\"{}\" is not a valid URL: {e}", shown(u))),
    }
}

/// Decodes `auth` strictly: the `type` picks the field set, and any other field is an
/// error that names the field, the connector and the fields that type takes. Every
/// missing field is reported at once, with the provider's default when there is one.
fn auth(
    id: &str,
    v: &Value,
    at: &JsonPath,
    template: Option<&ProviderTemplate>,
    diags: &mut Diagnostics,
) -> Option<Auth> {
    let Some(obj) = v.as_object() else {
        diags.error(
            at,
            format!("auth of connector \"{id}\" must be an object with a \"type\""),
        );
        return None;
    };
    let Some(ty) = obj.get("type").and_then(Value::as_str) else {
        diags.error(
            at.key("type"),
            format!(
                "auth of connector \"{id}\" needs a \"type\": one of {}",
                AUTH_TYPES.join(", ")
            ),
        );
        return None;
    };
    let Some(fields) = auth_fields(ty) else {
        diags.error(
            at.key("type"),
            format!(
                "connector \"{id}\": unknown auth type \"{ty}\"; expected one of {}",
                AUTH_TYPES.join(", ")
            ),
        );
        return None;
    };
    // Report every unknown and every missing field first (serde would stop at the first).
    let mut bad = false;
    let mut missing = false;
    for key in obj.keys().filter(|k| !fields.contains(&k.as_str())) {
        diags.error(
            at.key(key),
            format!(
                "unknown field \"{key}\" in auth of connector \"{id}\" (type \"{ty}\" takes: {})",
                fields.join(", ")
            ),
        );
        bad = true;
    }
    for field in required_auth_fields(ty)
        .iter()
        .filter(|f| !obj.contains_key(**f))
    {
        let hint = match template.and_then(|t| t.auth_default(field).map(|d| (t, d))) {
            Some((t, default)) => format!("; provider {}'s: \"{field}\": {default}", t.id),
            None => format!(
                " (type \"{ty}\" needs: {})",
                required_auth_fields(ty).join(", ")
            ),
        };
        diags.error(
            at.key(field),
            format!("missing field \"{field}\" in auth of connector \"{id}\"{hint}"),
        );
        missing = true;
    }
    if ty == "oauth2_authorization_code" {
        oauth_defaults_missing(id, obj, at, template, diags);
    }
    if missing {
        return None;
    }
    // Decode the known fields even when there were unknown ones, so a bad value is
    // reported in the same pass.
    let body: Map<String, Value> = obj
        .iter()
        .filter(|(k, _)| *k != "type" && fields.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let body = Value::Object(body);
    let unknown = |k: &str| format!("unknown field \"{k}\" in auth of connector \"{id}\"");
    let auth = match ty {
        "none" => Some(Auth::None),
        "bearer_token" => decode(&body, at, Severity::Error, diags, unknown).map(Auth::BearerToken),
        "api_key" => decode(&body, at, Severity::Error, diags, unknown).map(Auth::ApiKey),
        "basic" => decode(&body, at, Severity::Error, diags, unknown).map(Auth::Basic),
        "oauth2_client_credentials" => {
            decode(&body, at, Severity::Error, diags, unknown).map(Auth::ClientCredentials)
        }
        "oauth2_authorization_code" => {
            decode(&body, at, Severity::Error, diags, unknown).map(Auth::AuthorizationCode)
        }
        "oauth2_dcr" => decode(&body, at, Severity::Error, diags, unknown).map(Auth::Dcr),
        _ => None,
    }?;
    let mut ok = !bad;
    let client_id = match &auth {
        Auth::ClientCredentials(c) => Some(&c.client_id),
        Auth::AuthorizationCode(a) => Some(&a.client_id),
        Auth::Dcr(d) => d.client_id.as_ref(),
        _ => None,
    };
    if client_id.is_some_and(|c| c.trim().is_empty()) {
        diags.error(
            at.key("client_id"),
            "client_id is empty: paste the client ID of the OAuth application registered at the provider",
        );
        ok = false;
    }
    if let Auth::ClientCredentials(c) = &auth
        && c.client_secret.is_some() == c.private_key.is_some()
    {
        diags.error(
            at.key("client_secret"),
            "oauth2_client_credentials needs exactly one of client_secret (the client's secret) and private_key (a PKCS#8 PEM key for signed client assertions)",
        );
        ok = false;
    }
    if let Auth::Dcr(d) = &auth
        && d.client_secret.is_some()
        && d.client_id.is_none()
    {
        diags.error(
            at.key("client_secret"),
            "client_secret belongs to a client registered in advance: add its client_id too, or remove the secret to let Portcullis register a client",
        );
        ok = false;
    }
    if let Auth::BearerToken(BearerToken {
        scheme: Some(scheme),
        ..
    }) = &auth
        && !is_auth_scheme(scheme)
    {
        diags.error(
            at.key("scheme"),
            format!(
                "\"{scheme}\" is not an Authorization scheme: one word of letters, digits and !#$%&'*+-.^_`|~ (for example Bearer or Bot)"
            ),
        );
        ok = false;
    }
    if let Auth::ApiKey(k) = &auth {
        if k.name.is_empty() {
            diags.error(at.key("name"), "the API key needs a non-empty name");
            ok = false;
        } else if k.location == KeyLocation::Header
            && http::HeaderName::try_from(k.name.as_str()).is_err()
        {
            diags.error(
                at.key("name"),
                format!("\"{}\" is not a valid HTTP header name", k.name),
            );
            ok = false;
        }
    }
    ok.then_some(auth)
}

/// Per-user OAuth without `scopes` asks for nothing, and without a provider's
/// `auth_params` may get no refresh token: say so, with the defaults to paste.
fn oauth_defaults_missing(
    id: &str,
    obj: &Map<String, Value>,
    at: &JsonPath,
    template: Option<&ProviderTemplate>,
    diags: &mut Diagnostics,
) {
    let oauth = template.and_then(|t| t.oauth.as_ref().map(|o| (t, o)));
    if !obj.contains_key("scopes") {
        match oauth {
            Some((t, o)) if !o.scopes.is_empty() => diags.error(
                at.key("scopes"),
                format!(
                    "connector \"{id}\" has no scopes, so users would authorize nothing; provider {}'s: \"scopes\": {}",
                    t.id,
                    serde_json::json!(o.scopes)
                ),
            ),
            _ => diags.warn(
                at.key("scopes"),
                format!(
                    "connector \"{id}\" has no scopes: the authorization asks for none (write \"scopes\": [] if that is meant)"
                ),
            ),
        }
    }
    if let Some((t, o)) = oauth
        && !o.auth_params.is_empty()
        && !obj.contains_key("auth_params")
    {
        diags.warn(
            at.key("auth_params"),
            format!(
                "connector \"{id}\" has no auth_params; provider {} needs them for refresh tokens: \"auth_params\": {}",
                t.id,
                serde_json::json!(o.auth_params)
            ),
        );
    }
}

fn grants(value: Option<&Value>, diags: &mut Diagnostics) -> Option<Vec<Grant>> {
    let at = JsonPath::root().key("grants");
    let Some(value) = value else {
        return Some(Vec::new());
    };
    let Some(list) = value.as_array() else {
        diags.error(&at, "grants must be a list");
        return None;
    };
    let mut out = Vec::with_capacity(list.len());
    let mut ok = true;
    for (i, g) in list.iter().enumerate() {
        let here = at.index(i);
        let Some(obj) = g.as_object() else {
            diags.error(&here, "a grant must be an object with \"src\" and \"app\"");
            ok = false;
            continue;
        };
        for key in obj.keys() {
            match key.as_str() {
                "src" | "app" => {}
                "dst" | "ip" => diags.warn(
                    here.key(key),
                    format!("\"{key}\" belongs in tailnet policy-file grants; config grants always target this host, so it is ignored"),
                ),
                _ => diags.warn(here.key(key), format!("unknown field \"{key}\" in grant")),
            }
        }
        let src: Option<Vec<String>> = match obj.get("src") {
            None => {
                diags.error(here.key("src"), "a grant needs \"src\": who it applies to");
                None
            }
            Some(v) => decode(v, &here.key("src"), Severity::Warning, diags, |k| {
                format!("unknown key {k}")
            }),
        };
        if src.as_ref().is_some_and(Vec::is_empty) {
            diags.warn(here.key("src"), "empty \"src\": this grant matches nobody");
        }
        let mut caps = Vec::new();
        if let Some(app) = obj.get("app") {
            let Some(app) = app.as_object() else {
                diags.error(
                    here.key("app"),
                    "\"app\" must map capability names to lists",
                );
                ok = false;
                continue;
            };
            // Other capability names are for other applications; Portcullis reads only its own.
            if let Some(list) = app.get(APERTURE_CAP) {
                let cap_at = here.key("app").key(APERTURE_CAP);
                match list.as_array() {
                    None => {
                        diags.error(&cap_at, "expected a list of capability objects");
                        ok = false;
                    }
                    Some(items) => {
                        for (j, item) in items.iter().enumerate() {
                            let item_at = cap_at.index(j);
                            if let Some(c) = decode::<Capability>(
                                item,
                                &item_at,
                                Severity::Warning,
                                diags,
                                |k| format!("unknown capability field \"{k}\"; it is ignored"),
                            ) {
                                deprecations(&c, &item_at, diags);
                                caps.push(c);
                            } else {
                                ok = false;
                            }
                        }
                    }
                }
            }
        }
        match src {
            Some(src) => out.push(Grant { src, caps }),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn deprecations(c: &Capability, at: &JsonPath, diags: &mut Diagnostics) {
    for (field, cat) in [
        ("mcp_tools", &c.mcp_tools),
        ("mcp_resources", &c.mcp_resources),
        ("mcp_templates", &c.mcp_templates),
    ] {
        if cat.is_some() {
            diags.warn(
                at.key(field),
                format!("\"{field}\" is deprecated; write \"connectors\" patterns (\"id/category/resource\") instead"),
            );
        }
    }
}

#[cfg(test)]
mod tests;
