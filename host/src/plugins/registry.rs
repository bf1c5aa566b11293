//! The registry folder: `registry/<id>/plugin.toml` + the component.
//!
//! Scanned at start and whenever the folder changes. Each entry is checked (manifest,
//! hash, WIT version, link, `defaults()` and its URLs against the declared hosts); a bad
//! entry becomes a [`Problem`] — logged, shown by `GET /api/registry` — and is skipped.
//! Nothing in the registry can stop the host from starting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::manifest::Manifest;
use super::runtime::{Call, Prepared, Reply, Runtime, types};

/// Largest component file read.
const MAX_COMPONENT_BYTES: u64 = 32 << 20;
/// Largest response-body prefix a plugin may ask to classify.
pub const MAX_CLASSIFY_BYTES: u32 = 64 * 1024;

/// Numbers each plugin loaded ([`Plugin::load`]).
static NEXT_LOAD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A loaded provider.
pub struct Plugin {
    pub manifest: Manifest,
    pub defaults: types::ProviderDefaults,
    /// `defaults.api_url`, parsed when the plugin loaded (checked: https on one of its
    /// `allowed_hosts`): the base URL of a connector that sets none, for every request
    /// it sends.
    pub api_url: url::Url,
    /// How its OAuth endpoints want requests (`oauth-extras`, checked); the form when
    /// the plugin does not say.
    pub oauth_style: crate::oauth::RequestStyle,
    /// Its products as picker entries of their own (`catalog`, checked); none when the
    /// plugin does not say.
    pub entries: Vec<super::runtime::catalog::Entry>,
    /// Where refresh grants go when not the token URL (`auth-extras`, checked: https on
    /// `allowed_hosts`).
    pub refresh_url: Option<url::Url>,
    /// How its static credential is sent (`auth-extras`, checked); `None`: the provider
    /// has none of its own (a pasted token goes as `Authorization: Bearer`).
    pub static_credential: Option<crate::config::StaticCredential>,
    /// Inputs that fill `{name}` in its OAuth URLs (`auth-extras`, checked).
    pub url_inputs: Vec<String>,
    /// The tools whose answers the plugin reshapes (`tool-results`, checked).
    pub shaped_results: std::collections::BTreeSet<String>,
    pub sha256: String,
    pub(super) prepared: Prepared,
    /// Its routes per context (`routes`, checked), asked at a context's first request.
    pub(super) routes: super::routes::Cache,
    /// Which load of a plugin this is, unique in the process: what a context's noted
    /// routes name their plugin by ([`super::ConnectionContext`]), where an address
    /// could be reused by a rescan's new plugin.
    pub(super) load: u64,
    /// The answers it calls `ok` by their first member (`classify-markers`, checked).
    pub(super) ok_markers: Vec<super::markers::OkMarker>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("id", &self.manifest.id)
            .field("version", &self.manifest.version)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    pub fn id(&self) -> &str {
        &self.manifest.id
    }

    pub fn has(&self, hook: types::Hook) -> bool {
        self.defaults.hooks.contains(&hook)
    }

    /// Whether it can declare routes (exports `routes`, WIT 0.1.3, or `routes-v2`, 0.1.4).
    pub fn exports_routes(&self) -> bool {
        self.prepared.has_routes()
    }

    /// What picker entry `key` (`gmail` of `google/gmail`) pre-fills: the provider's
    /// template with the entry's name, description, URL and scopes.
    pub fn entry_template(&self, key: &str) -> Option<crate::config::ProviderTemplate> {
        let entry = self
            .entries
            .iter()
            .find(|e| e.key.eq_ignore_ascii_case(key))?;
        let mut t = self.template();
        t.name = entry.display_name.clone();
        t.description = entry.description.clone();
        t.api_url = entry.api_url.clone();
        // An entry is one product's API; the provider's MCP server is offered on its own.
        t.mcp_url = None;
        // `Drive` for google/drive, `Gmail` for google/gmail: the key, capitalised.
        let mut id: String = entry
            .key
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        if let Some(first) = id.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        t.connector_id = Some(id);
        // An entry without scopes of its own asks for the provider's.
        if let Some(o) = t.oauth.as_mut().filter(|_| !entry.scopes.is_empty()) {
            o.scopes = entry.scopes.clone();
        }
        Some(t)
    }

    /// What this provider pre-fills in a connector, in config terms.
    pub fn template(&self) -> crate::config::ProviderTemplate {
        let d = &self.defaults;
        crate::config::ProviderTemplate {
            id: d.id.clone(),
            name: d.display_name.clone(),
            description: d.description.clone(),
            api_url: d.api_url.clone(),
            mcp_url: d.mcp_url.clone(),
            oauth: d.oauth.as_ref().map(|o| crate::config::OAuthTemplate {
                authorization_url: o.authorization_url.clone(),
                token_url: o.token_url.clone(),
                scopes: o.scopes.clone(),
                auth_params: o.auth_params.iter().cloned().collect(),
            }),
            static_credential: self.static_credential.clone(),
            url_inputs: self.url_inputs.clone(),
            vars: d
                .inputs
                .iter()
                .filter_map(|i| Some((i.name.clone(), i.default_value.clone()?)))
                .collect(),
            connector_id: None,
        }
    }

    /// Whether a response with this status goes to `classify-response`.
    pub fn classifies(&self, status: u16) -> bool {
        self.has(types::Hook::ClassifyResponse)
            && (self.defaults.classify_statuses.is_empty()
                || super::markers::in_ranges(&self.defaults.classify_statuses, status))
    }

    /// Whether one of its ok markers (`classify-markers`) calls the answer `ok` without
    /// a call; `body` is the first bytes the plugin would be given.
    pub fn marks_ok(&self, status: u16, body: &[u8]) -> bool {
        self.ok_markers.iter().any(|m| m.matches(status, body))
    }
}

/// A registry entry that did not load.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    /// The entry's folder name.
    pub entry: String,
    pub message: String,
}

/// One scan's result.
#[derive(Debug, Default)]
pub struct Catalog {
    pub plugins: BTreeMap<String, Arc<Plugin>>,
    pub problems: Vec<Problem>,
}

/// Scans `dir`. Entries are folders; files at the top level are ignored.
pub async fn scan(runtime: &Arc<Runtime>, dir: &Path) -> Catalog {
    let mut catalog = Catalog::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            catalog.problems.push(Problem {
                entry: String::new(),
                message: format!("cannot read the registry folder {}: {e}", dir.display()),
            });
            return catalog;
        }
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for path in dirs {
        let entry = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if entry.starts_with('.') {
            continue;
        }
        match load_entry(runtime, &path, &entry).await {
            Ok(plugin) => {
                tracing::info!(
                    plugin = %plugin.manifest.id,
                    version = %plugin.manifest.version,
                    "provider plugin loaded"
                );
                catalog.plugins.insert(entry, Arc::new(plugin));
            }
            Err(message) => {
                tracing::warn!(entry = %entry, "provider plugin skipped: {message}");
                catalog.problems.push(Problem { entry, message });
            }
        }
    }
    catalog
}

async fn load_entry(runtime: &Arc<Runtime>, dir: &Path, entry: &str) -> Result<Plugin, String> {
    let manifest_path = dir.join("plugin.toml");
    let text = std::fs::read_to_string(&manifest_path)
        .map_err(|e| format!("cannot read {}: {e}", manifest_path.display()))?;
    let manifest = Manifest::parse(&text, entry)?;
    let wasm_path = manifest.component_path(dir)?;
    let wasm = read_capped(&wasm_path)?;
    load(runtime, manifest, wasm)
        .await
        .map_err(|e| format!("{}: {e}", wasm_path.display()))
}

/// Loads a component whose manifest is already parsed: hash check, compile, link,
/// `defaults()`, and the defaults checked against the manifest.
pub async fn load(
    runtime: &Arc<Runtime>,
    manifest: Manifest,
    wasm: Vec<u8>,
) -> Result<Plugin, String> {
    let sha256 = hex::encode(Sha256::digest(&wasm));
    if !sha256.eq_ignore_ascii_case(&manifest.component.sha256) {
        return Err(format!(
            "the component does not match its manifest: sha256 is {sha256}, plugin.toml says {}; the file is corrupt or was replaced — rebuild with `cargo xtask plugins` or restore it",
            manifest.component.sha256
        ));
    }
    // Compiling is CPU-bound (Cranelift); keep it off the async workers.
    let rt = runtime.clone();
    let id = manifest.id.clone();
    let limits = manifest.limits;
    let hash = sha256.clone();
    let prepared = tokio::task::spawn_blocking(move || rt.prepare(&id, &wasm, &hash, limits))
        .await
        .map_err(|e| format!("compiling the component failed: {e}"))?
        .map_err(|e| e.to_string())?;
    let described = match runtime.call(&prepared, Call::Describe).await {
        Ok(Reply::Describe(d)) => *d,
        Ok(_) => return Err("describing the plugin returned the wrong reply".to_owned()),
        Err(e) => {
            return Err(format!(
                "describing the plugin (defaults() and the interfaces added since 0.1.0) failed: {e}"
            ));
        }
    };
    let api_url = check_defaults(&manifest, &described.defaults)?;
    check_entries(&manifest, &described.entries)?;
    // A plugin built before 0.1.2 said nothing: the earlier behaviour.
    let auth = described
        .auth_options
        .unwrap_or(super::runtime::auth_extras::AuthOptions {
            refresh_url: None,
            static_credential: None,
            url_inputs: Vec::new(),
        });
    let refresh_url = match &auth.refresh_url {
        Some(raw) => Some(check_url(&manifest, "auth-extras refresh-url", raw)?),
        None => None,
    };
    let static_credential = auth
        .static_credential
        .as_ref()
        .map(super::output::static_credential)
        .transpose()
        .map_err(|why| format!("auth-extras static-credential: {why}"))?;
    check_placeholders(&described.defaults, &auth.url_inputs)?;
    let ok_markers = super::output::ok_markers(&described.defaults, &described.ok_markers)
        .map_err(|why| format!("classify-markers: {why}"))?;
    let mut plugin = Plugin {
        manifest,
        defaults: described.defaults,
        api_url,
        oauth_style: crate::oauth::RequestStyle::default(),
        entries: described.entries,
        refresh_url,
        static_credential,
        url_inputs: auth.url_inputs,
        shaped_results: check_shaped(&described.shaped_results)?,
        routes: super::routes::Cache::default(),
        load: NEXT_LOAD.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        ok_markers,
        sha256,
        prepared,
    };
    // Its header check names the plugin.
    if let Some(o) = &described.oauth_options {
        plugin.oauth_style = super::output::oauth_style(&plugin, o).map_err(|e| e.to_string())?;
    }
    Ok(plugin)
}

/// A URL a plugin declares: https, on one of the manifest's `allowed_hosts`.
fn check_url(m: &Manifest, what: &str, raw: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("{what} \"{raw}\" is not a URL: {e}"))?;
    if url.scheme() != "https" {
        return Err(format!("{what} \"{raw}\" must use https"));
    }
    let host = url.host_str().unwrap_or_default();
    if !m.allows_host(host) {
        return Err(format!(
            "{what} host \"{host}\" is not in the manifest's allowed_hosts"
        ));
    }
    Ok(url)
}

/// `{name}` placeholders in the OAuth URLs: only in the authorization and token URLs,
/// each an input declared as a URL input (`auth-extras`) with a default, so a connector
/// made from the defaults always has whole URLs.
fn check_placeholders(d: &types::ProviderDefaults, url_inputs: &[String]) -> Result<(), String> {
    for name in url_inputs {
        let declared = d
            .inputs
            .iter()
            .any(|i| &i.name == name && i.default_value.is_some());
        if !declared {
            return Err(format!(
                "auth-extras url-inputs names \"{}\", which is not an input with a default",
                super::output::clip(name)
            ));
        }
    }
    let Some(o) = &d.oauth else {
        return Ok(());
    };
    let none: &[String] = &[];
    for (field, url, allowed) in [
        ("authorization-url", Some(&o.authorization_url), url_inputs),
        ("token-url", Some(&o.token_url), url_inputs),
        // Used at disconnect, with no connector variables at hand.
        ("revocation-url", o.revocation_url.as_ref(), none),
    ] {
        let Some(url) = url else { continue };
        let rest = allowed
            .iter()
            .fold(url.clone(), |u, n| u.replace(&format!("{{{n}}}"), ""));
        if rest.contains(['{', '}']) {
            let why = if field == "revocation-url" {
                " (the revocation URL takes none)"
            } else {
                ""
            };
            return Err(format!(
                "defaults().oauth.{field} \"{}\" has a placeholder that is not one of auth-extras url-inputs{why}",
                super::output::clip(url)
            ));
        }
    }
    Ok(())
}

/// Most tools whose answers one plugin reshapes.
const MAX_SHAPED_RESULTS: usize = 64;

/// `tool-results.shaped()`: tool names as MCP allows them (the part after
/// `<connector>_`), bounded.
fn check_shaped(names: &[String]) -> Result<std::collections::BTreeSet<String>, String> {
    if names.len() > MAX_SHAPED_RESULTS {
        return Err(format!(
            "tool-results.shaped() lists {} tools; at most {MAX_SHAPED_RESULTS}",
            names.len()
        ));
    }
    names
        .iter()
        .map(|n| {
            crate::mcp::valid_tool_name(n)
                .then(|| n.clone())
                .ok_or_else(|| {
                    format!(
                        "tool-results.shaped(): \"{}\" is not a tool name",
                        super::output::clip(n)
                    )
                })
        })
        .collect()
}

/// Most picker entries one plugin may list, and most scopes per entry.
const MAX_ENTRIES: usize = 32;
const MAX_ENTRY_SCOPES: usize = 64;
/// Longest entry name, description and scope.
const MAX_ENTRY_TEXT: usize = 512;

/// `catalog.entries()` must be well-formed: unique keys shaped like ids, bounded texts,
/// URLs as `defaults()`'s.
fn check_entries(m: &Manifest, entries: &[super::runtime::catalog::Entry]) -> Result<(), String> {
    if entries.len() > MAX_ENTRIES {
        return Err(format!(
            "catalog.entries() lists {} entries; at most {MAX_ENTRIES}",
            entries.len()
        ));
    }
    let mut keys = std::collections::BTreeSet::new();
    for e in entries {
        let what = format!("catalog.entries()[{}]", super::output::clip(&e.key));
        let key_ok = e.key.len() <= 64
            && e.key.starts_with(|c: char| c.is_ascii_lowercase())
            && e.key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !key_ok {
            return Err(format!(
                "{what}: the key must be lower-case letters, digits and '-', starting with a letter"
            ));
        }
        if !keys.insert(e.key.as_str()) {
            return Err(format!("{what}: the key is listed twice"));
        }
        let texts = [&e.display_name, &e.description]
            .into_iter()
            .chain(e.scopes.iter());
        if e.display_name.trim().is_empty()
            || e.scopes.len() > MAX_ENTRY_SCOPES
            || texts.into_iter().any(|t| t.len() > MAX_ENTRY_TEXT)
        {
            return Err(format!(
                "{what}: needs a name, at most {MAX_ENTRY_SCOPES} scopes and texts of at most {MAX_ENTRY_TEXT} bytes"
            ));
        }
        check_url(m, &format!("{what}.api-url"), &e.api_url)?;
    }
    Ok(())
}

fn read_capped(path: &Path) -> Result<Vec<u8>, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.len() > MAX_COMPONENT_BYTES {
        return Err(format!(
            "{} is {} bytes; components over {MAX_COMPONENT_BYTES} bytes are refused",
            path.display(),
            meta.len()
        ));
    }
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// `defaults()` must agree with the manifest: same id, every URL https on a declared host.
/// Returns the API URL, parsed.
fn check_defaults(m: &Manifest, d: &types::ProviderDefaults) -> Result<url::Url, String> {
    if d.id != m.id {
        return Err(format!(
            "defaults().id is \"{}\" but plugin.toml says \"{}\"",
            d.id, m.id
        ));
    }
    let mut urls = Vec::new();
    if let Some(u) = &d.mcp_url {
        urls.push(("mcp-url", u));
    }
    if let Some(o) = &d.oauth {
        urls.push(("authorization-url", &o.authorization_url));
        urls.push(("token-url", &o.token_url));
        if let Some(u) = &o.revocation_url {
            urls.push(("revocation-url", u));
        }
        if o.scope_separator.is_empty() || o.scope_separator.len() > 3 {
            return Err("defaults().oauth.scope-separator must be 1 to 3 characters".to_owned());
        }
        for g in &o.grants {
            let pointers = std::iter::once(&g.access_token)
                .chain(g.refresh_token.iter())
                .chain(g.expires_in.iter())
                .chain(g.scope.iter());
            for p in pointers {
                if !p.is_empty() && !p.starts_with('/') {
                    return Err(format!(
                        "defaults().oauth.grants[{}]: \"{p}\" is not a JSON pointer",
                        g.name
                    ));
                }
            }
        }
    }
    let api_url = check_url(m, "defaults().api-url", &d.api_url)?;
    for (field, raw) in urls {
        check_url(m, &format!("defaults().{field}"), raw)?;
    }
    if d.classify_body_bytes > MAX_CLASSIFY_BYTES {
        return Err(format!(
            "defaults().classify-body-bytes is {}; at most {MAX_CLASSIFY_BYTES}",
            d.classify_body_bytes
        ));
    }
    Ok(api_url)
}

/// Defaults of a made-up provider with no OAuth, inputs or hooks, for tests to vary.
#[cfg(test)]
pub(super) fn example_defaults() -> types::ProviderDefaults {
    types::ProviderDefaults {
        id: "acme".into(),
        display_name: "Acme".into(),
        description: String::new(),
        docs_url: None,
        api_url: "https://api.acme.example".into(),
        mcp_url: None,
        oauth: None,
        inputs: Vec::new(),
        hooks: Vec::new(),
        classify_body_bytes: 0,
        classify_statuses: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::runtime::catalog::Entry;
    use super::*;

    fn manifest() -> Manifest {
        Manifest::parse(
            "schema_version = 1\nid = \"acme\"\nname = \"Acme\"\nversion = \"1\"\n[component]\npath = \"plugin.wasm\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n[capabilities]\nallowed_hosts = [\"api.acme.example\"]\n",
            "acme",
        )
        .expect("manifest")
    }

    fn entry(key: &str, url: &str) -> Entry {
        Entry {
            key: key.to_owned(),
            display_name: "Mail".to_owned(),
            description: String::new(),
            api_url: url.to_owned(),
            scopes: vec!["mail.read".to_owned()],
        }
    }

    #[test]
    fn shaped_tool_names_are_names_and_bounded() {
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            check_shaped(&names(&["get_meeting", "list-x"])).map(|s| s.len()),
            Ok(2)
        );
        for bad in [vec![""], vec!["a b"], vec!["x/../y"]] {
            let got = check_shaped(&names(&bad));
            assert!(
                got.is_err_and(|e| e.contains("is not a tool name")),
                "{bad:?}"
            );
        }
        let many: Vec<String> = (0..=MAX_SHAPED_RESULTS).map(|i| format!("t{i}")).collect();
        assert!(check_shaped(&many).is_err_and(|e| e.contains("at most")));
    }

    /// `{name}` in the OAuth URLs only for declared URL inputs with a default, and never
    /// in the revocation URL.
    #[test]
    fn oauth_url_placeholders_must_be_declared_url_inputs() {
        let mut d = types::ProviderDefaults {
            oauth: Some(types::OauthDefaults {
                authorization_url: "https://api.acme.example/{tenant}/authorize".into(),
                token_url: "https://api.acme.example/{tenant}/token".into(),
                revocation_url: None,
                scopes: vec![],
                scope_separator: " ".into(),
                auth_params: vec![],
                user_scope_param: None,
                pkce: types::PkcePolicy::Supported,
                client_auth: types::ClientAuth::Basic,
                grants: vec![],
                refresh: types::RefreshPolicy {
                    rotates_refresh_token: false,
                    keeps_refresh_token: false,
                },
                dynamic_registration: false,
            }),
            inputs: vec![types::Input {
                name: "tenant".into(),
                description: String::new(),
                default_value: Some("common".into()),
            }],
            ..example_defaults()
        };
        let tenant = vec!["tenant".to_owned()];
        assert_eq!(check_placeholders(&d, &tenant), Ok(()));
        let undeclared = check_placeholders(&d, &[]);
        assert!(undeclared.is_err_and(|e| e.contains("not one of auth-extras url-inputs")));
        let unknown = check_placeholders(&d, &["region".to_owned()]);
        assert!(unknown.is_err_and(|e| e.contains("not an input with a default")));
        if let Some(o) = d.oauth.as_mut() {
            o.revocation_url = Some("https://api.acme.example/{tenant}/revoke".into());
        }
        let revocation = check_placeholders(&d, &tenant);
        assert!(revocation.is_err_and(|e| e.contains("revocation URL takes none")));
    }

    #[test]
    fn picker_entries_are_checked_like_defaults() {
        let m = manifest();
        let good = entry("mail", "https://api.acme.example/mail");
        assert_eq!(check_entries(&m, std::slice::from_ref(&good)), Ok(()));
        let refused = |entries: &[Entry]| check_entries(&m, entries).expect_err("refused");
        assert!(refused(&[entry("mail", "http://api.acme.example")]).contains("must use https"));
        assert!(
            refused(&[entry("mail", "https://evil.example")]).contains("allowed_hosts"),
            "an entry cannot point a connector off the declared hosts"
        );
        assert!(refused(&[entry("Mail", "https://api.acme.example")]).contains("lower-case"));
        assert!(refused(&[entry("a/b", "https://api.acme.example")]).contains("lower-case"));
        assert!(refused(&[good.clone(), good.clone()]).contains("twice"));
        let nameless = Entry {
            display_name: " ".to_owned(),
            ..good.clone()
        };
        assert!(refused(&[nameless]).contains("needs a name"));
        let many: Vec<Entry> = (0..=MAX_ENTRIES)
            .map(|i| entry(&format!("e{i}"), "https://api.acme.example"))
            .collect();
        assert!(refused(&many).contains("at most"));
    }
}
