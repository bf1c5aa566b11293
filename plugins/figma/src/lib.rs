//! Figma REST API, OAuth 2.0 (or a personal access token).
//!
//! Facts (sources in `docs/providers.md`; Figma's OpenAPI spec `figma/rest-api-spec`,
//! developers.figma.com/docs/rest-api authentication, scopes, errors and rate-limits):
//! - Authorization at `www.figma.com/oauth`; tokens at `api.figma.com/v1/oauth/token`
//!   (it replaced `www.figma.com/api/oauth/token` in February 2025); **refresh grants
//!   go to a second endpoint**, `api.figma.com/v1/oauth/refresh` (the spec's
//!   `refreshUrl`; WIT `auth-extras`). No revocation endpoint: users remove the app in
//!   their Figma settings.
//! - Client credentials as HTTP Basic; form bodies. A refresh answer carries only
//!   `access_token` and `expires_in`: the refresh token stays. Code exchanges answer
//!   `user_id_string` (kept as `user_id`). Access tokens last about 90 days. PKCE is not
//!   documented for REST apps, so it is not sent. (These rest on several independent
//!   client implementations; Figma's OAuth page is the authority.)
//! - Granular scopes (`current_user:read`, `file_content:read`, `file_metadata:read`,
//!   `file_comments:read`/`:write`, `projects:read`; `files:read` is deprecated),
//!   separated by commas as registries configured against Figma send them.
//! - Personal access tokens go in `X-Figma-Token` (the static credential here); OAuth
//!   tokens as `Bearer`.
//! - Errors come as `{"status": n, "err": "..."}` or, for 400/401,
//!   `{"error": true, "status": n, "message": "..."}`; 403 `Invalid token` / `Token
//!   expired` mean the token is bad. 429 carries `Retry-After` (seconds; it can be days
//!   on low-tier seats).
//! - A file's node tree carries every paint, effect and constraint; the file and node
//!   tools answer with the outline a model reads (id, name, type, text, children), and
//!   comments with who said what (WIT `tool-results`).
//! - Figma's remote MCP server (`mcp.figma.com/mcp`) admits only the clients on Figma's
//!   catalog, so a gateway cannot front it: the tools below use the REST API.

use portcullis_sdk::prelude::*;
use serde_json::{Value, json};

struct Figma;

#[portcullis_sdk::provider]
impl Provider for Figma {
    fn defaults() -> Defaults {
        let oauth = OauthDefaults::new(
            "https://www.figma.com/oauth",
            "https://api.figma.com/v1/oauth/token",
        )
        .scopes([
            "current_user:read",
            "file_content:read",
            "file_metadata:read",
            "file_comments:read",
            "file_comments:write",
            "projects:read",
        ])
        .scope_separator(",")
        .pkce(PkcePolicy::Unsupported)
        .client_auth(ClientAuth::Basic)
        .grant(TokenGrant::standard("default"))
        .keeps_refresh_token();
        Defaults::new("https://api.figma.com")
            .docs_url("https://developers.figma.com/docs/rest-api/")
            .oauth(oauth)
            .refresh_url("https://api.figma.com/v1/oauth/refresh")
            .static_credential(StaticCredential::Header("x-figma-token".to_owned()))
            .classify_statuses([401..=403, 429..=429])
            .classify_body_bytes(1024)
    }

    fn read_token_response(
        _ctx: &Context,
        status: u16,
        body: &str,
    ) -> Result<TokenInfo, TokenError> {
        let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        // Figma's own error shape; RFC 6749's is read by the SDK below.
        if json.get("error").and_then(Value::as_bool) == Some(true) {
            let message = json
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the token request was refused");
            let lower = message.to_ascii_lowercase();
            // A refresh token or code that is expired, used or revoked.
            let dead = lower.contains("invalid") || lower.contains("expired");
            let code = format!("HTTP {status}");
            return Err(portcullis_sdk::token_error(
                "Figma",
                &code,
                Some(message),
                dead,
            ));
        }
        let json = portcullis_sdk::token_json(status, body)?;
        Ok(TokenInfo::default().vars_at(&json, &[("user_id", "/user_id_string")]))
    }

    fn classify_response(
        _ctx: &Context,
        status: u16,
        headers: &[Header],
        body: &[u8],
    ) -> Classification {
        let json = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
        let message = json
            .get("err")
            .or_else(|| json.get("message"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let lower = message.to_ascii_lowercase();
        // Only the token's own failures; a 403 about a file or a scope is the agent's.
        let bad_token = lower.contains("invalid token") || lower.contains("token expired");
        match status {
            401 => Classification::Reauth(format!("Figma: {message}")),
            403 if bad_token => Classification::Reauth(format!("Figma: {message}")),
            _ => portcullis_sdk::classify_by_status(status, headers),
        }
    }

    fn list_tools(_ctx: &Context) -> Vec<Tool> {
        let file_key = json!({"type": "string", "pattern": "^[A-Za-z0-9]{10,64}$", "description": "the file key: the part after /design/ or /file/ in a Figma URL"});
        let node_ids = json!({"type": "string", "description": "node ids separated by commas, e.g. 1:2,1:3 (1-2 as in a URL works too)"});
        vec![
            Tool::new(
                "get_me",
                "The connected Figma user: id, handle, email.",
                json!({"type": "object", "properties": {}}),
            )
            .read_only(),
            Tool::new(
                "get_file",
                "A file's outline: name, last change, and its pages and top-level frames (depth 2), or pages only (depth 1).",
                json!({"type": "object", "required": ["file_key"], "properties": {
                    "file_key": file_key,
                    "depth": {"type": "integer", "minimum": 1, "maximum": 4, "default": 2}
                }}),
            )
            .read_only(),
            Tool::new(
                "get_nodes",
                "Read given nodes of a file (frames, components, text) with their children to a depth.",
                json!({"type": "object", "required": ["file_key", "ids"], "properties": {
                    "file_key": file_key, "ids": node_ids,
                    "depth": {"type": "integer", "minimum": 1, "maximum": 4, "default": 2}
                }}),
            )
            .read_only(),
            Tool::new(
                "render_images",
                "Render nodes as images; answers a URL per node (valid for 30 days).",
                json!({"type": "object", "required": ["file_key", "ids"], "properties": {
                    "file_key": file_key, "ids": node_ids,
                    "format": {"type": "string", "enum": ["png", "jpg", "svg", "pdf"], "default": "png"},
                    "scale": {"type": "number", "minimum": 0.01, "maximum": 4, "default": 1}
                }}),
            )
            .read_only(),
            Tool::new(
                "list_comments",
                "A file's comments, as Markdown.",
                json!({"type": "object", "required": ["file_key"], "properties": {"file_key": file_key}}),
            )
            .read_only(),
            Tool::new(
                "post_comment",
                "Comment on a file, or reply to a comment.",
                json!({"type": "object", "required": ["file_key", "message"], "properties": {
                    "file_key": file_key,
                    "message": {"type": "string", "minLength": 1, "maxLength": 5000},
                    "reply_to": {"type": "string", "pattern": "^[0-9]{1,32}$", "description": "a comment id from list_comments"}
                }}),
            ),
            Tool::new(
                "list_projects",
                "A team's projects (the team id is in the team page's URL: /files/team/<id>/).",
                json!({"type": "object", "required": ["team_id"], "properties": {"team_id": {"type": "string", "pattern": "^[0-9]{1,32}$"}}}),
            )
            .read_only(),
            Tool::new(
                "list_project_files",
                "The files in a project: key, name, last change.",
                json!({"type": "object", "required": ["project_id"], "properties": {"project_id": {"type": "string", "pattern": "^[0-9]{1,32}$"}}}),
            )
            .read_only(),
        ]
    }

    const SHAPED_TOOL_RESULTS: &'static [&'static str] =
        &["get_file", "get_nodes", "list_comments"];

    fn shape_tool_result(
        _ctx: &Context,
        name: &str,
        status: u16,
        body: &[u8],
    ) -> Result<String, PluginError> {
        let answer = match serde_json::from_slice::<Value>(body) {
            Ok(v) if (200..300).contains(&status) => v,
            // Errors go to the model as Figma wrote them.
            _ => return Ok(String::from_utf8_lossy(body).into_owned()),
        };
        let shaped = match name {
            "get_file" => {
                let mut file = portcullis_sdk::pick(
                    &answer,
                    &["name", "lastModified", "version", "editorType"],
                );
                if let Some(document) = answer.get("document") {
                    file["document"] = outline(document);
                }
                file
            }
            "get_nodes" => {
                let mut out = portcullis_sdk::pick(&answer, &["name", "lastModified"]);
                let nodes: serde_json::Map<String, Value> = answer
                    .get("nodes")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .map(|(id, node)| {
                        let document = node.get("document").map_or(Value::Null, outline);
                        (id.clone(), document)
                    })
                    .collect();
                out["nodes"] = Value::Object(nodes);
                out
            }
            "list_comments" => portcullis_sdk::pick(
                &answer,
                &[
                    "comments.id",
                    "comments.parent_id",
                    "comments.user.handle",
                    "comments.message",
                    "comments.created_at",
                    "comments.resolved_at",
                ],
            ),
            _ => answer,
        };
        Ok(shaped.to_string())
    }

    fn build_tool_call(
        _ctx: &Context,
        name: &str,
        args: &Args,
    ) -> Result<ToolRequest, PluginError> {
        let depth = || args.u64("depth").unwrap_or(2).clamp(1, 4);
        Ok(match name {
            "get_me" => ToolRequest::get("/v1/me"),
            "get_file" => {
                ToolRequest::get(&format!("/v1/files/{}", file_key(args)?)).query("depth", depth())
            }
            "get_nodes" => ToolRequest::get(&format!("/v1/files/{}/nodes", file_key(args)?))
                .query("ids", node_ids(args)?)
                .query("depth", depth()),
            "render_images" => {
                let format = args.one_of("format", &["png", "jpg", "svg", "pdf"], Some("png"))?;
                let scale = args
                    .get("scale")
                    .and_then(Value::as_f64)
                    .unwrap_or(1.0)
                    .clamp(0.01, 4.0);
                ToolRequest::get(&format!("/v1/images/{}", file_key(args)?))
                    .query("ids", node_ids(args)?)
                    .query("format", format)
                    .query("scale", scale)
            }
            "list_comments" => ToolRequest::get(&format!("/v1/files/{}/comments", file_key(args)?))
                .query("as_md", "true"),
            "post_comment" => {
                let mut body = json!({"message": args.require_str("message")?});
                if args.get("reply_to").is_some() {
                    body["comment_id"] = args.digits("reply_to", "a comment id")?.into();
                }
                ToolRequest::post(&format!("/v1/files/{}/comments", file_key(args)?)).json(&body)
            }
            "list_projects" => ToolRequest::get(&format!(
                "/v1/teams/{}/projects",
                args.digits("team_id", "a team id")?
            )),
            "list_project_files" => ToolRequest::get(&format!(
                "/v1/projects/{}/files",
                args.digits("project_id", "a project id")?
            )),
            other => return Err(portcullis_sdk::unknown_tool(other)),
        })
    }
}

/// A node and its children as a model reads them: id, name, type, a text node's
/// characters; paints, effects, geometry and constraints left out.
fn outline(node: &Value) -> Value {
    let mut out = portcullis_sdk::pick(node, &["id", "name", "type", "characters"]);
    if let Some(children) = node.get("children").and_then(Value::as_array) {
        out["children"] = Value::Array(children.iter().map(outline).collect());
    }
    out
}

/// A file key: letters and digits, so it stays one path segment.
fn file_key(args: &Args) -> Result<&str, PluginError> {
    let key = args.require_str("file_key")?;
    if (10..=64).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(key)
    } else {
        Err(PluginError::InvalidInput(format!(
            "\"file_key\" must be a Figma file key (the letters and digits after /design/ in the file's URL), not \"{key}\""
        )))
    }
}

/// Node ids as Figma's `ids` parameter: `1:2` (or `1-2`, as URLs write it), instance
/// paths such as `I5:6;7:8`, separated by commas; at most 50.
fn node_ids(args: &Args) -> Result<String, PluginError> {
    let raw = args.require_str("ids")?;
    let ids: Vec<String> = raw
        .split(',')
        .map(|id| id.trim().replace('-', ":"))
        .filter(|id| !id.is_empty())
        .collect();
    let valid = |id: &String| {
        id.len() <= 64
            && id.contains(':')
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b':' || b == b';')
    };
    if ids.is_empty() || ids.len() > 50 || !ids.iter().all(valid) {
        return Err(PluginError::InvalidInput(format!(
            "\"ids\" must be up to 50 node ids such as 1:2 separated by commas, not \"{raw}\""
        )));
    }
    Ok(ids.join(","))
}
