//! Fixture tests for a built plugin, through the real runtime and the host's own checks.
//!
//! A fixture file (`fixtures/*.json`) holds cases; each calls one hook with recorded
//! input and states what must come back. Expectations are matched as a subset: every
//! member written in `expect` must be present and equal; members left out are not
//! checked. Bodies (`body` as bytes) are shown as JSON when they parse, else as text.
//!
//! ```json
//! {
//!   "context": {"connector": "sf", "base_url": "https://acme.my.salesforce.com", "variables": []},
//!   "cases": [
//!     {"name": "versioned data path",
//!      "shape_request": {"method": "Get", "path": "/sobjects/Account", "query": null, "headers": []},
//!      "expect": {"Ok": {"url": "https://acme.my.salesforce.com/services/data/v63.0/sobjects/Account"}}}
//!   ]
//! }
//! ```
//!
//! Hooks: `defaults` (`true`), `shape_request`, `read_token_response`
//! (`{"status", "body"}` with the raw provider JSON; the harness redacts tokens exactly as
//! the host does and also reports the tokens it read as `grants`), `discover`
//! (`{"responses": [...]}` replayed in order; the result has `requests` and `outcome`),
//! `classify_response` (`{"status", "headers", "body"}`), `list_tools`, and
//! `build_tool_call` (`{"name", "arguments"}`). A case may override `context`.
//! Set `"error": "text"` instead of `expect` when the call must fail with a message
//! containing `text` (the host's checks included: URLs off the declared hosts,
//! credential headers, traps, deadlines).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use super::manifest::Manifest;
use super::{DiscoveryOutcome, Plugin, Plugins, types};

/// A loaded plugin plus the runtime it runs on.
pub struct Harness {
    plugins: Arc<Plugins>,
    plugin: Arc<Plugin>,
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
    expect: Option<Value>,
    #[serde(default)]
    error: Option<String>,
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

/// Outcome of one fixture case.
#[derive(Debug)]
pub struct CaseResult {
    pub file: PathBuf,
    pub name: String,
    pub failure: Option<String>,
}

impl Harness {
    /// Loads a built component with the manifest from its source folder. A manifest
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
        let mut results = Vec::new();
        for f in files {
            results.extend(self.run_file(&f).await?);
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
        if case.defaults == Some(true) {
            return Ok(normalize(to_json(&plugin.defaults)));
        }
        if let Some(req) = &case.shape_request {
            let base =
                url::Url::parse(&ctx.base_url).map_err(|e| format!("context.base_url: {e}"))?;
            let shaped = p.shape_request(plugin, ctx, req.clone()).await.map_err(e)?;
            Plugins::check_shaped(plugin, &base, shaped.clone(), None).map_err(e)?;
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
                .read_token_response(plugin, ctx, t.status, redacted.to_string())
                .await
                .map_err(e)?;
            return Ok(json!({
                "result": normalize(to_json(&info)),
                "grants": match tokens { Ok(g) => to_json(&g), Err(why) => json!({"error": why}) },
            }));
        }
        if let Some(d) = &case.discover {
            let base =
                url::Url::parse(&ctx.base_url).map_err(|e| format!("context.base_url: {e}"))?;
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
            let class = p
                .classify_response(
                    plugin,
                    ctx,
                    c.status,
                    c.headers.clone(),
                    body_bytes(&c.body),
                )
                .await
                .map_err(e)?;
            return Ok(to_json(&class));
        }
        if case.list_tools == Some(true) {
            let tools = p.list_tools(plugin, ctx).await.map_err(e)?;
            let tools: Vec<Value> = tools
                .iter()
                .map(|t| {
                    let mut v = to_json(t);
                    if let Some(schema) = v.get_mut("input_schema") {
                        *schema = parse_or_string(schema.as_str().unwrap_or_default().as_bytes());
                    }
                    v
                })
                .collect();
            return Ok(Value::Array(tools));
        }
        if let Some(t) = &case.build_tool_call {
            let req = p
                .build_tool_call(plugin, ctx, t.name.clone(), t.arguments.to_string())
                .await
                .map_err(e)?;
            return Ok(json!({ "Ok": normalize(to_json(&req)) }));
        }
        Err(format!("case \"{}\" names no hook to call", case.name))
    }
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

/// For `#[test]`s: loads `component` with `manifest`, runs every fixture in `fixtures`,
/// and panics with a report naming each failed case.
pub fn run_fixtures(
    component: impl AsRef<Path>,
    manifest: impl AsRef<Path>,
    fixtures: impl AsRef<Path>,
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the harness");
    let results = rt.block_on(async {
        let h = Harness::load(component.as_ref(), manifest.as_ref()).await?;
        h.run_dir(fixtures.as_ref()).await
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
