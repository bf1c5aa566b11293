//! Tools the host runs itself: the built-in `aperture` connector, and the tools provider
//! plugins define for HTTP connectors (run through the outbound pipeline with the
//! caller's credential).

use std::sync::Arc;

use http_body_util::BodyExt as _;
use rmcp::model::{CallToolResult, ContentBlock as Content, Tool, ToolAnnotations};
use serde_json::{Map, Value};

use super::{Gateway, Kind, prefixed, visible};
use crate::config::Protocol;
use crate::connector::Connector;
use crate::identity::Caller;
use crate::plugins::types::Hook;
use crate::policy::Access;
use crate::state::Snapshot;

/// The built-in connector's ID.
pub const APERTURE: &str = "aperture";
const LIST_CONNECTORS: &str = "list_connectors";

/// Largest plugin-tool response passed back to the agent.
const MAX_TOOL_RESPONSE: usize = super::transport::MAX_MESSAGE_BYTES;
/// Largest answer a plugin reshapes (`tool-results`; the WIT promises it no more).
const MAX_SHAPED_ANSWER: usize = crate::plugins::output::MAX_BODY_BYTES;

fn object_schema(v: Value) -> Arc<Map<String, Value>> {
    match v {
        Value::Object(m) => Arc::new(m),
        _ => Arc::new(Map::from_iter([("type".to_owned(), Value::from("object"))])),
    }
}

/// Adds the built-in and plugin tools `access` may see.
pub async fn tools(app: &Gateway, snap: &Snapshot, access: &Access<'_>, out: &mut Vec<Tool>) {
    if visible(access, APERTURE, Kind::Tool, LIST_CONNECTORS) {
        let mut t = Tool::new(
            prefixed(APERTURE, Kind::Tool, LIST_CONNECTORS),
            "List the HTTP APIs you can call through this gateway's authenticated proxy: each connector's ID, proxy endpoint, upstream URL, description and usage context.",
            object_schema(serde_json::json!({"type": "object", "properties": {}})),
        );
        t.annotations = Some(ToolAnnotations::new().read_only(true));
        out.push(t);
    }
    let mut http: Vec<&Arc<Connector>> = snap
        .connectors
        .values()
        .filter(|c| c.protocol == Protocol::Http && c.provider.is_some() && access.any_on(&c.id))
        .collect();
    http.sort_by(|a, b| a.id.cmp(&b.id));
    for c in http {
        connector_tools(app, access, c, out).await;
    }
}

/// Adds the tools `access` may see of one HTTP connector's provider plugin.
pub async fn connector_tools(
    app: &Gateway,
    access: &Access<'_>,
    c: &Connector,
    out: &mut Vec<Tool>,
) {
    for t in plugin_tools(app, c).await.iter() {
        if visible(access, &c.id, Kind::Tool, &t.name) {
            let mut t = t.clone();
            t.name = prefixed(&c.id, Kind::Tool, &t.name).into();
            out.push(t);
        }
    }
}

/// A provider plugin's tools for `connector` (cached until the config or registry
/// changes). A plugin's listing does not depend on the caller.
async fn plugin_tools(app: &Gateway, c: &Connector) -> Arc<Vec<Tool>> {
    let Some(plugin) = c.provider.as_deref().and_then(|p| app.plugins.get(p)) else {
        return Arc::default();
    };
    if !plugin.has(Hook::Tools) {
        return Arc::default();
    }
    let key = format!("{}\n{:p}", c.id, Arc::as_ptr(&plugin));
    if let Some(t) = app
        .hub
        .plugin_tools
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
    {
        return t.clone();
    }
    let Some(ctx) = app.outbound.plugin_context(c, None, &plugin) else {
        return Arc::default();
    };
    let listed = match app.plugins.tools(&plugin, ctx).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(connector = %c.id, "the provider plugin could not list its tools: {e}");
            return Arc::default();
        }
    };
    let tools: Vec<Tool> = listed
        .into_iter()
        .filter(|t| {
            let ok = super::valid_tool_name(&prefixed(&c.id, Kind::Tool, &t.name));
            if !ok {
                tracing::warn!(connector = %c.id, tool = %t.name, "plugin tool left out: not a valid MCP tool name");
            }
            ok
        })
        .map(|t| {
            let mut tool = Tool::new(t.name, t.description, Arc::new(t.input_schema));
            tool.annotations = Some(ToolAnnotations::new().read_only(t.read_only));
            tool
        })
        .collect();
    let tools = Arc::new(tools);
    app.hub
        .plugin_tools
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, tools.clone());
    tools
}

/// Runs a tool of a non-MCP connector: `None` when `connector` has no such tool.
pub async fn call(
    app: &Gateway,
    snap: &Snapshot,
    caller: &Caller,
    base_url: &str,
    connector: &str,
    name: &str,
    arguments: Option<&Map<String, Value>>,
) -> Option<CallToolResult> {
    if connector == APERTURE {
        return (name == LIST_CONNECTORS).then(|| list_connectors(app, snap, caller, base_url));
    }
    let c = snap.connectors.get(connector)?;
    if c.protocol != Protocol::Http {
        return None;
    }
    if !plugin_tools(app, c).await.iter().any(|t| t.name == name) {
        return None;
    }
    let plugin = c.provider.as_deref().and_then(|p| app.plugins.get(p))?;
    let args = Value::Object(arguments.cloned().unwrap_or_default());
    let resp = match app
        .outbound
        .tool_call(c, &caller.login, &plugin, name, &args)
        .await
    {
        Ok(r) => r.response,
        Err(e) => return Some(CallToolResult::error(vec![Content::text(e.to_string())])),
    };
    let status = resp.status();
    let body = match http_body_util::Limited::new(resp.into_body(), MAX_TOOL_RESPONSE)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Some(CallToolResult::error(vec![Content::text(format!(
                "reading the {connector} response failed: {e}"
            ))]));
        }
    };
    // The plugin reshapes this tool's answers (trimmed, credentials the API returns
    // removed). The raw answer never goes around it: one too big to reshape, or a reshape
    // that fails, is reported without it; after a success that says the call went through,
    // so a model does not repeat a write.
    let text = if plugin.shaped_results.contains(name) {
        match shape_answer(app, c, caller, &plugin, name, status, &body).await {
            Ok(text) => text,
            Err(why) if status.is_success() => {
                return Some(CallToolResult::success(vec![Content::text(format!(
                    "HTTP {status}: the call went through, but its answer is not shown: {why}"
                ))]));
            }
            Err(why) => {
                return Some(CallToolResult::error(vec![Content::text(format!(
                    "HTTP {status}: the answer is not shown: {why}"
                ))]));
            }
        }
    } else {
        String::from_utf8_lossy(&body).into_owned()
    };
    Some(if status.is_success() {
        CallToolResult::success(vec![Content::text(text)])
    } else {
        CallToolResult::error(vec![Content::text(format!("HTTP {status}: {text}"))])
    })
}

/// A tool's upstream answer through its plugin's `tool-results`, or why not.
async fn shape_answer(
    app: &Gateway,
    c: &Connector,
    caller: &Caller,
    plugin: &crate::plugins::Plugin,
    name: &str,
    status: http::StatusCode,
    body: &[u8],
) -> Result<String, String> {
    if body.len() > MAX_SHAPED_ANSWER {
        return Err(format!(
            "it is {} bytes, more than the {} MiB its provider's plugin reshapes; ask for less (a smaller page, depth or limit)",
            body.len(),
            MAX_SHAPED_ANSWER >> 20
        ));
    }
    let ctx = app
        .outbound
        .plugin_context(c, Some(&caller.login), plugin)
        .ok_or_else(|| format!("connector \"{}\" has no provider context", c.id))?;
    app.plugins
        .tool_result(plugin, ctx, name.to_owned(), status.as_u16(), body.to_vec())
        .await
        .map_err(|e| e.to_string())
}

/// `aperture_list_connectors`: the HTTP connectors the caller may reach through the proxy
/// (a `proxy` grant, whole or partial), in the layout of Aperture's connector guide, so
/// prompts written for it keep working.
fn list_connectors(
    app: &Gateway,
    snap: &Snapshot,
    caller: &Caller,
    base_url: &str,
) -> CallToolResult {
    let access = snap.policy.access(caller);
    let mut http: Vec<&Arc<Connector>> = snap
        .connectors
        .values()
        .filter(|c| c.protocol == Protocol::Http && access.any_in(&c.id, "proxy"))
        .collect();
    http.sort_by(|a, b| a.id.cmp(&b.id));
    let base = base_url.trim_end_matches('/');
    let mut out = String::from(
        "Aperture HTTP API Connectors\n\
         ============================\n\n\
         The following HTTP APIs are available through authenticated proxy endpoints.\n\
         Aperture handles all authentication automatically.\n\n",
    );
    out.push_str(&format!(
        "Base URL: {base}\nMake requests to {{Base URL}}/v1/connectors/{{id}}/{{path}}\n\n"
    ));
    if http.is_empty() {
        out.push_str(
            "No HTTP connectors are available to you. Ask an admin for a connectors grant.\n",
        );
        return CallToolResult::success(vec![Content::text(out)]);
    }
    out.push_str("Available connectors:\n");
    for c in http {
        out.push_str(&format!(
            "\n## {id}\n- Endpoint: {base}/v1/connectors/{id}/\n",
            id = c.id
        ));
        // The connector's URL, or the API its provider plugin defaults to.
        let upstream = c.url.as_ref().map(|u| u.to_string()).or_else(|| {
            let p = app.plugins.get(c.provider.as_deref()?)?;
            Some(p.defaults.api_url.clone())
        });
        if let Some(u) = upstream.filter(|u| !u.is_empty()) {
            out.push_str(&format!("- Upstream: {}\n", u.trim_end_matches('/')));
        }
        if !c.description.is_empty() {
            out.push_str(&format!("- Description: {}\n", c.description));
        }
        match &c.context {
            Some(Value::String(s)) if !s.is_empty() => {
                out.push_str(&format!("- Context: {s}\n"));
            }
            Some(v @ Value::Object(_)) => out.push_str(&format!("- Context: {v}\n")),
            _ => {}
        }
    }
    CallToolResult::success(vec![Content::text(out)])
}
