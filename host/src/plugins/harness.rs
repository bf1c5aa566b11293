//! Fixture tests for a plugin, through the real runtime and the host's own checks
//! (re-exported to plugin authors as `portcullis_sdk::testing`).
//!
//! [`run_fixtures`] takes a plugin crate's folder, builds its component with cargo
//! (`cargo build --target wasm32-wasip2 --release`, so a stale `.wasm` can never pass:
//! cargo rebuilds whatever changed), loads it with the crate's `plugin.toml`, and runs
//! every `fixtures/*.json` file. [`Harness::load`] loads a given component file as it is
//! (a registry entry), without building anything.
//!
//! # Fixture files
//!
//! A fixture file is a JSON object; every key below is checked (an unknown one is an
//! error, so a typo cannot silently skip a check):
//!
//! ```json
//! {
//!   "context": {"connector": "sf", "base_url": "https://acme.my.salesforce.com", "variables": [["api_version", "62.0"]]},
//!   "cases": [
//!     {"name": "versioned data path",
//!      "shape_request": {"method": "Get", "path": "/sobjects/Account", "query": null, "headers": []},
//!      "expect": {"Ok": {"url": "https://acme.my.salesforce.com/services/data/v62.0/sobjects/Account"}}},
//!     {"name": "a dead refresh token",
//!      "read_token_response": {"status": 400, "body": {"error": "invalid_grant"}},
//!      "expect": {"result": {"Err": {"InvalidGrant": "invalid_grant"}}}}
//!   ]
//! }
//! ```
//!
//! - `context` (optional): the hook context for every case: `connector` (any name),
//!   `base_url` (the connector's URL) and `variables` (`[name, value]` pairs). Without
//!   one, cases run with connector `test`, the plugin's `api_url` and no variables.
//! - `cases`: each has a `name`, an optional `context` of its own, **exactly one** hook
//!   to call, and either `expect` or `error`.
//!
//! Hooks, with their input and what `expect` is matched against:
//!
//! | Key | Input | Output |
//! |---|---|---|
//! | `defaults` | `true` | the provider defaults as the host holds them (`id`, `display_name`, `description`, `api_url`, `oauth`, `inputs`, `hooks`, `classify_statuses`, ...), `oauth_requests`: `{"body": "form" or "json", "headers": [[n, v]]}` from `oauth-extras`, `entries` from `catalog`, and from `auth-extras` `refresh_url`, `static_auth` (the `auth` of a connector holding the provider's static credential, secret empty) and `url_inputs`, `shaped_results` from `tool-results`, and `ok_markers` (`[{"statuses", "member", "value"}]`) from `classify-markers` |
//! | `shape_request` | `{"method": "Get", "path", "query", "headers": [[n, v]]}` | `{"Ok": {"url", "set_headers", "remove_headers", "grant"}}` |
//! | `read_token_response` | `{"status", "body"}`, the provider's raw JSON: the harness redacts tokens as the host does | `{"result": {"Ok": {"variables", "expires_in"}}}` (or `"Err"` with `{"InvalidGrant": text}` or `{"Provider": text}`) and `"grants"`: the tokens the host read at the declared pointers |
//! | `discover` | `{"responses": [{"status", "headers", "body"}, ...]}`, replayed in order | `{"requests": [{"method", "url", "grant"}], "outcome": ...}`, the outcome `{"Done": vars}`, `{"Choose": selection}` or `{"Failed": text}` |
//! | `classify_response` | `{"status", "headers", "body"}` | `"Ok"`, `{"Retry": ms}`, `{"RateLimited": secs}`, `{"Reauth": text}`, `{"Failed": text}` (wire units) |
//! | `list_tools` | `true` | `[{"name", "description", "input_schema", "read_only"}]` (schemas as JSON) |
//! | `build_tool_call` | `{"name", "arguments": {...}}` | `{"Ok": {"method", "path", "query", "headers", "body"}}` |
//! | `shape_tool_result` | `{"name", "status", "body"}`: a tool's recorded upstream answer | `{"Ok": text}` (shown as JSON when it parses): what the model gets (WIT 0.1.2 `tool-results`) |
//!
//! - `expect` is matched as a subset: every member written must be present and equal
//!   (`null` also matches a member that is absent: how a case says something was left
//!   out); members left out are not checked; lists must have the same length. Enum values are
//!   written as in the WIT bindings (`"Get"`, `"ShapeRequest"`, `"Supported"`).
//! - Bodies are shown as JSON when they parse, else as text; recorded bodies are sent as
//!   they are when a string, else as JSON text.
//! - `"error": "text"` instead of `expect`: the call must fail with a message containing
//!   `text`. The host's checks count: URLs off the declared hosts, credential headers,
//!   tool paths outside the connector, traps, deadlines and memory limits.
//!
//! - A `shape_request` case also checks the plugin's routes (WIT 0.1.3 and 0.1.4): when
//!   one covers the request, the host would use it instead of calling `shape-request`, so
//!   its result must be the same (URL, headers set and removed, grant), and a route must
//!   not cover a request `shape-request` refuses.
//! - A `classify_response` case gives the plugin the body cut to `classify-body-bytes`,
//!   as the host does, and also checks the plugin's ok markers (WIT 0.1.5): when one
//!   matches the answer, the host calls it `ok` without asking the plugin, so the plugin
//!   must call it `ok` too. [`Harness::run_dir`] fails a plugin with a marker that no
//!   case matches.
//!
//! A failing case names the file, the case, the JSON path where the output differs, and
//! the whole actual output.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use super::manifest::Manifest;
use super::{DiscoveryOutcome, Plugin, Plugins, types};

/// A loaded plugin plus the runtime it runs on.
pub struct Harness {
    plugins: Arc<Plugins>,
    plugin: Arc<Plugin>,
    /// For each of the plugin's ok markers, whether a `classify_response` case of the
    /// current [`Harness::run_dir`] matched it, so that one no recorded answer tests is
    /// reported.
    marked: Vec<AtomicBool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureFile {
    #[serde(default)]
    context: Option<types::Context>,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    context: Option<types::Context>,
    #[serde(default)]
    defaults: Option<bool>,
    #[serde(default)]
    shape_request: Option<types::OutgoingRequest>,
    #[serde(default)]
    read_token_response: Option<TokenCase>,
    #[serde(default)]
    discover: Option<DiscoverCase>,
    #[serde(default)]
    classify_response: Option<RecordedResponse>,
    #[serde(default)]
    list_tools: Option<bool>,
    #[serde(default)]
    build_tool_call: Option<ToolCase>,
    #[serde(default)]
    shape_tool_result: Option<ResultCase>,
    #[serde(default)]
    expect: Option<Value>,
    #[serde(default)]
    error: Option<String>,
}

impl Case {
    /// The hooks this case names.
    fn hooks(&self) -> Vec<&'static str> {
        [
            ("defaults", self.defaults == Some(true)),
            ("shape_request", self.shape_request.is_some()),
            ("read_token_response", self.read_token_response.is_some()),
            ("discover", self.discover.is_some()),
            ("classify_response", self.classify_response.is_some()),
            ("list_tools", self.list_tools == Some(true)),
            ("build_tool_call", self.build_tool_call.is_some()),
            ("shape_tool_result", self.shape_tool_result.is_some()),
        ]
        .into_iter()
        .filter_map(|(hook, named)| named.then_some(hook))
        .collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenCase {
    status: u16,
    body: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscoverCase {
    responses: Vec<RecordedResponse>,
}

/// A response as recorded: replayed to discovery, or classified.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordedResponse {
    status: u16,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolCase {
    name: String,
    arguments: Value,
}

/// A tool's recorded upstream answer, for `tool-results`.
#[derive(Debug, Deserialize)]
struct ResultCase {
    name: String,
    status: u16,
    #[serde(default)]
    body: Value,
}

/// Outcome of one fixture case.
#[derive(Debug)]
pub struct CaseResult {
    pub file: PathBuf,
    pub name: String,
    pub failure: Option<String>,
}

/// The target plugins are built for.
const TARGET: &str = "wasm32-wasip2";

impl Harness {
    /// Builds the plugin crate in `dir` ([`build`]) and loads its component with the
    /// crate's `plugin.toml`.
    pub async fn for_crate(dir: &Path) -> anyhow::Result<Self> {
        let owned = dir.to_owned();
        let component = tokio::task::spawn_blocking(move || build(&owned)).await??;
        Self::load(&component, &dir.join("plugin.toml")).await
    }

    /// Loads a built component, exactly the given file (nothing is rebuilt), with the
    /// manifest from its source folder or registry entry. A manifest
    /// without a `[component]` section (as in a plugin's source tree) gets one for the
    /// given file.
    pub async fn load(component: &Path, manifest: &Path) -> anyhow::Result<Self> {
        let wasm = std::fs::read(component).with_context(|| {
            format!(
                "cannot read {}; build it first (cargo build --target wasm32-wasip2 --release)",
                component.display()
            )
        })?;
        let mut text = std::fs::read_to_string(manifest)
            .with_context(|| format!("cannot read {}", manifest.display()))?;
        let parsed = toml::from_str::<toml::Value>(&text)
            .with_context(|| format!("{} is not valid TOML", manifest.display()))?;
        if parsed.get("component").is_none() {
            use sha2::Digest as _;
            let sha = hex::encode(sha2::Sha256::digest(&wasm));
            text.push_str(&format!(
                "\n[component]\npath = \"plugin.wasm\"\nsha256 = \"{sha}\"\n"
            ));
        }
        let id = parsed
            .get("id")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        let manifest = Manifest::parse(&text, &id).map_err(anyhow::Error::msg)?;
        let plugins = Plugins::open(None, None, None).await?;
        let plugin = super::registry::load(plugins.runtime(), manifest, wasm)
            .await
            .map_err(anyhow::Error::msg)?;
        Ok(Self {
            marked: plugin
                .ok_markers
                .iter()
                .map(|_| AtomicBool::new(false))
                .collect(),
            plugins,
            plugin: Arc::new(plugin),
        })
    }

    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// Runs every `*.json` fixture file in `dir` (sorted).
    pub async fn run_dir(&self, dir: &Path) -> anyhow::Result<Vec<CaseResult>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read the fixtures folder {}", dir.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        if files.is_empty() {
            bail!("no *.json fixtures in {}", dir.display());
        }
        for m in &self.marked {
            m.store(false, Ordering::Relaxed);
        }
        let mut results = Vec::new();
        for f in files {
            results.extend(self.run_file(&f).await?);
        }
        for (marker, matched) in self.plugin.ok_markers.iter().zip(&self.marked) {
            if !matched.load(Ordering::Relaxed) {
                results.push(CaseResult {
                    file: dir.to_owned(),
                    name: "ok markers".to_owned(),
                    failure: Some(format!(
                        "no classify_response case matches the ok marker for \"{}\", so nothing checks that classify-response agrees with it: add a case whose body is a string opening as the marker says (a body written as a JSON object is sent with its members sorted)",
                        marker.member
                    )),
                });
            }
        }
        Ok(results)
    }

    pub async fn run_file(&self, file: &Path) -> anyhow::Result<Vec<CaseResult>> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let fixture: FixtureFile = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a fixture file", file.display()))?;
        let mut out = Vec::new();
        for case in fixture.cases {
            let ctx = case
                .context
                .clone()
                .or_else(|| fixture.context.clone())
                .unwrap_or_else(|| types::Context {
                    connector: "test".to_owned(),
                    base_url: self.plugin.defaults.api_url.clone(),
                    variables: Vec::new(),
                });
            let failure = match self.run_case(&case, ctx).await {
                Ok(actual) => judge(&case, Ok(actual)),
                Err(e) => judge(&case, Err(e)),
            };
            out.push(CaseResult {
                file: file.to_owned(),
                name: case.name,
                failure,
            });
        }
        Ok(out)
    }

    async fn run_case(&self, case: &Case, ctx: types::Context) -> Result<Value, String> {
        let p = &self.plugins;
        let plugin = &*self.plugin;
        let e = |e: super::CallError| e.to_string();
        let named = case.hooks();
        if named.len() > 1 {
            return Err(format!(
                "case \"{}\" names {} hooks ({}); a case calls exactly one",
                case.name,
                named.len(),
                named.join(", ")
            ));
        }
        let base = || url::Url::parse(&ctx.base_url).map_err(|e| format!("context.base_url: {e}"));
        if case.defaults == Some(true) {
            let mut defaults = normalize(to_json(&plugin.defaults));
            // What `oauth-extras` said, as the host holds it.
            let style = &plugin.oauth_style;
            let headers: Vec<(&str, String)> = style
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            defaults["oauth_requests"] = json!({
                "body": if style.json { "json" } else { "form" },
                "headers": headers,
            });
            // What `catalog` listed.
            defaults["entries"] = normalize(to_json(&plugin.entries));
            // What `auth-extras` said: the refresh URL, and the `auth` of a connector
            // holding the provider's static credential.
            defaults["refresh_url"] = json!(plugin.refresh_url.as_ref().map(url::Url::as_str));
            defaults["static_auth"] = match plugin.static_credential {
                Some(_) => plugin.template().static_auth(),
                None => Value::Null,
            };
            defaults["url_inputs"] = json!(plugin.url_inputs);
            // What `tool-results` reshapes.
            defaults["shaped_results"] = json!(plugin.shaped_results);
            defaults["ok_markers"] = plugin
                .ok_markers
                .iter()
                .map(|m| {
                    json!({
                        "statuses": m.statuses,
                        "member": m.member,
                        "value": String::from_utf8_lossy(&m.value),
                    })
                })
                .collect();
            return Ok(defaults);
        }
        if let Some(req) = &case.shape_request {
            let base = base()?;
            let bounds = super::Bounds {
                base: &base,
                credential_header: None,
            };
            // What the plugin's routes make of the request, if one covers it: it must be
            // what `shape-request` makes of it, since the host uses the route instead.
            // The host's path always starts with `/`: a fixture's without one would
            // compare routes and `shape-request` on a request the host never makes.
            let Some(below) = req.path.strip_prefix('/') else {
                return Err(format!(
                    "shape_request.path \"{}\" must start with \"/\", as every path the host gives does",
                    req.path
                ));
            };
            // Routes the host refuses fail the case: the plugin would lose them silently.
            let routed = match plugin.exports_routes() {
                true => p
                    .declared_routes(plugin, &ctx, bounds)
                    .await
                    .map_err(|err| {
                        format!("the plugin's routes for this context are refused: {err}")
                    })?
                    .shape(below, req.query.as_deref(), req.headers.as_slice()),
                false => None,
            };
            let called = p.shape_request(plugin, ctx, req.clone()).await;
            let shaped = match (called, routed) {
                (Ok(shaped), routed) => {
                    let checked =
                        Plugins::check_shaped(plugin, &base, shaped.clone(), None).map_err(e)?;
                    if let Some(routed) = routed {
                        same_shaping(plugin, &base, &req.path, &checked, routed)?;
                    }
                    shaped
                }
                (Err(err), Some(routed)) => {
                    return Err(format!(
                        "a route sends {} to {} but shape-request refuses it: {err}",
                        req.path, routed.url
                    ));
                }
                (Err(err), None) => return Err(e(err)),
            };
            return Ok(json!({ "Ok": normalize(to_json(&shaped)) }));
        }
        if let Some(t) = &case.read_token_response {
            let grants = plugin
                .defaults
                .oauth
                .as_ref()
                .map(|o| o.grants.clone())
                .unwrap_or_default();
            let tokens = super::extract_grants(&t.body, &grants);
            let mut redacted = t.body.clone();
            super::redact_tokens(&mut redacted, &grants);
            let info = p
                .read_token(plugin, ctx, t.status, redacted.to_string())
                .await
                .map_err(e)?;
            return Ok(json!({
                "result": normalize(to_json(&info)),
                "grants": match tokens { Ok(g) => to_json(&g), Err(why) => json!({"error": why}) },
            }));
        }
        if let Some(d) = &case.discover {
            let base = base()?;
            let mut recorded = d.responses.iter();
            let mut requests = Vec::new();
            let outcome = p
                .run_discovery(plugin, &base, &ctx, None, |req| {
                    requests.push(json!({
                        "method": req.method.as_str(),
                        "url": req.url.as_str(),
                        "grant": req.grant,
                    }));
                    let next = recorded.next().map(|r| types::Response {
                        status: r.status,
                        headers: r.headers.clone(),
                        body: body_bytes(&r.body),
                    });
                    async move {
                        next.ok_or_else(|| "the fixture has no more recorded responses".to_owned())
                    }
                })
                .await
                .map_err(e)?;
            let outcome = match outcome {
                DiscoveryOutcome::Done(vars) => json!({"Done": vars}),
                DiscoveryOutcome::Choose(sel) => json!({"Choose": to_json(&sel)}),
                DiscoveryOutcome::Failed(why) => json!({"Failed": why}),
            };
            return Ok(json!({"requests": requests, "outcome": outcome}));
        }
        if let Some(c) = &case.classify_response {
            let body = body_bytes(&c.body);
            let seen = &body[..body.len().min(plugin.defaults.classify_body_bytes as usize)];
            let mut marked = false;
            for (marker, matched) in plugin.ok_markers.iter().zip(&self.marked) {
                if marker.matches(c.status, seen) {
                    matched.store(true, Ordering::Relaxed);
                    marked = true;
                }
            }
            let class = p
                .classify_response(plugin, ctx, c.status, c.headers.clone(), seen.to_vec())
                .await
                .map_err(e)?;
            if marked && class != types::Classification::Ok {
                return Err(format!(
                    "an ok marker calls this answer ok without asking the plugin, but classify-response calls it {}",
                    to_json(&class)
                ));
            }
            return Ok(to_json(&class));
        }
        if case.list_tools == Some(true) {
            // What the host offers: the tools that pass its checks.
            let tools = p.tools(plugin, ctx).await.map_err(e)?;
            let tools = tools
                .into_iter()
                .map(|t| {
                    json!({
                        "name": t.name,
                        "description": t.description,
                        "input_schema": t.input_schema,
                        "read_only": t.read_only,
                    })
                })
                .collect();
            return Ok(Value::Array(tools));
        }
        if let Some(t) = &case.build_tool_call {
            let base = base()?;
            let bounds = super::Bounds {
                base: &base,
                credential_header: None,
            };
            let req = p
                .build_tool_call(plugin, ctx, t.name.clone(), t.arguments.to_string())
                .await
                .map_err(e)?;
            super::output::tool_call(plugin, bounds, req.clone()).map_err(e)?;
            return Ok(json!({ "Ok": normalize(to_json(&req)) }));
        }
        if let Some(r) = &case.shape_tool_result {
            let text = p
                .tool_result(plugin, ctx, r.name.clone(), r.status, body_bytes(&r.body))
                .await
                .map_err(e)?;
            // Shown as JSON when it parses, as the text otherwise.
            let shown = serde_json::from_str(&text).unwrap_or(Value::String(text));
            return Ok(json!({ "Ok": shown }));
        }
        Err(format!("case \"{}\" names no hook to call", case.name))
    }
}

/// Fails unless a route's shaping of the request for `path` is the checked result of
/// `shape-request`: the same URL, headers, removed headers and grant.
fn same_shaping(
    plugin: &Plugin,
    base: &url::Url,
    path: &str,
    called: &super::Shaped,
    routed: super::routes::Routed,
) -> Result<(), String> {
    let shown = routed.url.to_string();
    let routed = Plugins::check_routed(plugin, base, routed)
        .map_err(|e| format!("the route for {path} gives what the host refuses: {e}"))?;
    let differs = [
        ("URL", routed.url != called.url),
        ("headers", routed.set != called.set),
        ("removed headers", routed.remove != called.remove),
        ("grant", routed.grant != called.grant),
    ]
    .into_iter()
    .filter_map(|(what, differs)| differs.then_some(what))
    .collect::<Vec<_>>();
    if differs.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the route for {path} and shape-request disagree on the {}: the route gives {shown} \
         with headers {:?}, shape-request {} with headers {:?}",
        differs.join(", "),
        routed.set,
        called.url,
        called.set
    ))
}

fn judge(case: &Case, actual: Result<Value, String>) -> Option<String> {
    match (&case.expect, &case.error, actual) {
        (_, Some(want), Err(got)) if got.contains(want.as_str()) => None,
        (_, Some(want), Err(got)) => Some(format!(
            "expected an error containing \"{want}\", got error: {got}"
        )),
        (_, Some(want), Ok(v)) => {
            Some(format!("expected an error containing \"{want}\", got: {v}"))
        }
        (Some(want), None, Ok(got)) => {
            let mut path = String::new();
            subset(want, &got, &mut path).map(|why| format!("{why}\n  actual: {got:#}"))
        }
        (Some(_), None, Err(got)) => Some(format!("the call failed: {got}")),
        (None, None, _) => Some("the case has neither \"expect\" nor \"error\"".to_owned()),
    }
}

/// Checks that `want` is contained in `got`; returns where they differ.
fn subset(want: &Value, got: &Value, path: &mut String) -> Option<String> {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                let len = path.len();
                path.push('/');
                path.push_str(k);
                let r = match g.get(k) {
                    Some(gv) => subset(wv, gv, path),
                    // `null` asks for nothing there: null or absent.
                    None if wv.is_null() => None,
                    None => Some(format!("at {path}: missing")),
                };
                path.truncate(len);
                if r.is_some() {
                    return r;
                }
            }
            None
        }
        (Value::Array(w), Value::Array(g)) => {
            if w.len() != g.len() {
                return Some(format!(
                    "at {path}: expected {} items, got {}",
                    w.len(),
                    g.len()
                ));
            }
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                let len = path.len();
                path.push_str(&format!("/{i}"));
                let r = subset(wv, gv, path);
                path.truncate(len);
                if r.is_some() {
                    return r;
                }
            }
            None
        }
        _ if want == got => None,
        _ => Some(format!("at {path}: expected {want}, got {got}")),
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or_else(|e| json!({"unserializable": e.to_string()}))
}

/// Byte-list `body` members become JSON or text, so fixtures stay readable.
fn normalize(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    if k == "body"
                        && let Some(bytes) = as_bytes(child)
                    {
                        *child = parse_or_string(&bytes);
                        continue;
                    }
                    walk(child);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

fn as_bytes(v: &Value) -> Option<Vec<u8>> {
    v.as_array()?
        .iter()
        .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
        .collect()
}

fn parse_or_string(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// A recorded body: a string is sent as it is, anything else as JSON.
fn body_bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::Null => Vec::new(),
        Value::String(s) => s.clone().into_bytes(),
        other => other.to_string().into_bytes(),
    }
}

/// Builds the plugin crate in `dir` for `wasm32-wasip2` in release mode and returns its
/// component's path. Cargo rebuilds whatever changed since the last build, so the
/// component is always the one the sources build to. The build runs in `dir` (its
/// `.cargo/config.toml` applies) and honours `CARGO_TARGET_DIR`.
pub fn build(dir: &Path) -> anyhow::Result<PathBuf> {
    let manifest = dir.join("Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(dir)
        .args(["build", "--quiet", "--release", "--target", TARGET])
        .arg("--message-format=json-render-diagnostics")
        .arg("--manifest-path")
        .arg(&manifest)
        .output()
        .with_context(|| format!("cannot run cargo to build {}", dir.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "building the component failed. In {} run:\n    cargo build --target {TARGET} --release\n(add the target first if it is missing: `rustup target add {TARGET}`)\n\n{stderr}",
            dir.display()
        );
    }
    let manifest = manifest
        .canonicalize()
        .with_context(|| format!("cannot find {}", manifest.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let component = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|msg| {
            msg["reason"] == "compiler-artifact"
                && msg["manifest_path"]
                    .as_str()
                    .and_then(|p| Path::new(p).canonicalize().ok())
                    .is_some_and(|p| p == manifest)
        })
        .flat_map(|msg| match &msg["filenames"] {
            Value::Array(files) => files.clone(),
            _ => Vec::new(),
        })
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.extension().is_some_and(|e| e == "wasm"));
    component.with_context(|| {
        format!(
            "cargo built {} but no component came out: a plugin crate is a `cdylib` ([lib] crate-type = [\"cdylib\"])",
            dir.display()
        )
    })
}

/// For `#[test]`s: builds the plugin crate in `dir` ([`build`]), loads its component
/// with `dir/plugin.toml`, runs every fixture in `dir/fixtures`, and panics with a
/// report naming each failed case.
///
/// ```ignore
/// #[test]
/// fn fixtures() {
///     portcullis_sdk::testing::run_fixtures(env!("CARGO_MANIFEST_DIR"));
/// }
/// ```
pub fn run_fixtures(dir: impl AsRef<Path>) {
    let dir = dir.as_ref();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the harness");
    let results = rt.block_on(async {
        let h = Harness::for_crate(dir).await?;
        h.run_dir(&dir.join("fixtures")).await
    });
    let results = match results {
        Ok(r) => r,
        Err(e) => panic!("plugin fixtures could not run: {e:#}"),
    };
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| {
            r.failure
                .as_ref()
                .map(|f| format!("{} — {}: {f}", r.file.display(), r.name))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} fixture cases failed:\n{}",
        failed.len(),
        results.len(),
        failed.join("\n")
    );
}
