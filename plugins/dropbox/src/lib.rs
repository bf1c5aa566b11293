//! Dropbox API v2, OAuth 2.0 with offline access.
//!
//! Facts (sources in `docs/providers.md`; dropbox.com/developers/documentation/http,
//! dropbox.tech "Using OAuth 2.0 with offline access", developers.dropbox.com
//! error-handling guide, the API spec `auth.stone`/`files.stone` and the official
//! Python SDK):
//! - Authorization at `www.dropbox.com/oauth2/authorize`; only
//!   `token_access_type=offline` yields a refresh token. Tokens at
//!   `api.dropboxapi.com/oauth2/token` (form body; the SDK puts the client in the body);
//!   PKCE (`S256`) accepted; scopes space-separated.
//! - Access tokens last four hours (`expires_in: 14400`); a refresh answer has no
//!   refresh token: the old one stays. The token response names the account
//!   (`account_id`, or `team_id` for team apps). A dead grant is `invalid_grant`.
//! - No RFC 7009 revocation: `/2/auth/token/revoke` takes the access token as its
//!   bearer, so disconnecting forgets the tokens (the user unlinks the app in Dropbox).
//! - Two hosts: RPC endpoints on `api.dropboxapi.com/2/...` (JSON in and out, POST) and
//!   content endpoints (`files/download`, `files/upload`, thumbnails, exports) on
//!   `content.dropboxapi.com/2/...`, whose arguments go in a `Dropbox-API-Arg` header as
//!   ASCII JSON. Agents write `/2/...`; the plugin picks the host by the path alone, so it
//!   declares that choice as routes and the host makes it without a call.
//! - Errors: 401 with `{"error": {".tag": "expired_access_token"}}` (or
//!   `invalid_access_token`) means re-auth; 409 is a route's own error (a path not
//!   found) for the agent; 429 carries `retry_after` in its JSON body and a
//!   `Retry-After` header.
//! - Dropbox's remote MCP server (open beta): `https://mcp.dropbox.com/mcp`.

use portcullis_sdk::prelude::*;
use serde_json::{Value, json};

struct Dropbox;

const RPC: &str = "https://api.dropboxapi.com";
const CONTENT: &str = "https://content.dropboxapi.com";

/// Endpoints served by the content host: each path and the paths under it (the host's
/// route rule, so the routes below and `shape_request` agree on every path).
const CONTENT_PATHS: &[&str] = &[
    "/2/files/download",
    "/2/files/download_zip",
    "/2/files/export",
    "/2/files/get_preview",
    "/2/files/get_thumbnail",
    "/2/files/get_thumbnail_v2",
    "/2/files/get_thumbnail_batch",
    "/2/files/upload",
    "/2/files/upload_session",
    "/2/files/paper/create",
    "/2/files/paper/update",
    "/2/sharing/get_shared_link_file",
];

/// Whether `path` is one of [`CONTENT_PATHS`] or under one.
fn on_content_host(path: &str) -> bool {
    CONTENT_PATHS.iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

#[portcullis_sdk::provider]
impl Provider for Dropbox {
    fn defaults() -> Defaults {
        let oauth = OauthDefaults::new(
            "https://www.dropbox.com/oauth2/authorize",
            "https://api.dropboxapi.com/oauth2/token",
        )
        .scopes([
            "account_info.read",
            "files.metadata.read",
            "files.content.read",
            "files.content.write",
        ])
        .auth_param("token_access_type", "offline")
        .pkce(PkcePolicy::Supported)
        .client_auth(ClientAuth::Post)
        .grant(TokenGrant::standard("default"))
        .keeps_refresh_token();
        Defaults::new(RPC)
            .docs_url("https://www.dropbox.com/developers/documentation/http/documentation")
            .mcp_url("https://mcp.dropbox.com/mcp")
            .oauth(oauth)
            .classify_statuses([400..=599])
            .classify_body_bytes(2 * 1024)
    }

    fn shape_request(ctx: &Context, req: OutgoingRequest) -> Result<ShapedRequest, PluginError> {
        // A connector pointed elsewhere keeps every request on its URL.
        let base = match ctx.base_url.trim_end_matches('/') {
            RPC if on_content_host(&req.path) => CONTENT,
            other => other,
        };
        Ok(ShapedRequest::join(base, &req.path, req.query.as_deref()))
    }

    /// The host picks the content host itself: shaping reads only the path.
    fn request_routes(ctx: &Context) -> Vec<Route> {
        let base = ctx.base_url.trim_end_matches('/');
        let content = CONTENT_PATHS
            .iter()
            .filter(|_| base == RPC)
            .map(|p| Route::new(p, &format!("{CONTENT}{p}")));
        content.chain([Route::new("", base)]).collect()
    }

    fn read_token_response(
        _ctx: &Context,
        status: u16,
        body: &str,
    ) -> Result<TokenInfo, TokenError> {
        let json = portcullis_sdk::token_json(status, body)?;
        Ok(TokenInfo::default().vars_at(
            &json,
            &[("account_id", "/account_id"), ("team_id", "/team_id")],
        ))
    }

    fn classify_response(
        _ctx: &Context,
        status: u16,
        headers: &[Header],
        body: &[u8],
    ) -> Classification {
        let json = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
        let tag = json.pointer("/error/.tag").and_then(Value::as_str);
        match (status, tag) {
            (429, _) => {
                let in_body = json
                    .pointer("/error/retry_after")
                    .and_then(Value::as_u64)
                    .map(std::time::Duration::from_secs);
                Classification::RateLimited(
                    in_body.or_else(|| portcullis_sdk::retry_after(headers)),
                )
            }
            (401, Some(t @ ("expired_access_token" | "invalid_access_token"))) => {
                Classification::Reauth(format!("Dropbox: {t}"))
            }
            _ => portcullis_sdk::classify_by_status(status, headers),
        }
    }

    fn list_tools(_ctx: &Context) -> Vec<Tool> {
        let path = |what: &str| json!({"type": "string", "description": what});
        vec![
            Tool::new(
                "list_folder",
                "List a folder's files and folders (name, path, size, modified time).",
                json!({"type": "object", "properties": {
                    "path": path("a folder path such as /Reports; empty or / for the root"),
                    "limit": {"type": "integer", "minimum": 1, "maximum": 2000, "default": 100},
                    "cursor": {"type": "string", "description": "cursor from a previous answer with has_more: true"}
                }}),
            )
            .read_only(),
            Tool::new(
                "search",
                "Find files and folders by name or content.",
                json!({"type": "object", "required": ["query"], "properties": {
                    "query": {"type": "string", "minLength": 1},
                    "path": path("search only below this folder"),
                    "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 20}
                }}),
            )
            .read_only(),
            Tool::new(
                "get_metadata",
                "A file's or folder's metadata.",
                json!({"type": "object", "required": ["path"], "properties": {"path": path("a path, id:... or rev:...")}}),
            )
            .read_only(),
            Tool::new(
                "read_file",
                "Download a file's contents (best for text files).",
                json!({"type": "object", "required": ["path"], "properties": {"path": path("a file path or id:...")}}),
            )
            .read_only(),
            Tool::new(
                "create_folder",
                "Create a folder.",
                json!({"type": "object", "required": ["path"], "properties": {"path": path("the new folder's path, e.g. /Reports/2026")}}),
            ),
        ]
    }

    fn build_tool_call(
        _ctx: &Context,
        name: &str,
        args: &Args,
    ) -> Result<ToolRequest, PluginError> {
        Ok(match name {
            "list_folder" => match args.str("cursor") {
                Some(cursor) => rpc("/2/files/list_folder/continue", json!({"cursor": cursor})),
                None => {
                    let path = args.str("path").unwrap_or_default();
                    // The root is "", not "/".
                    let path = if path == "/" { "" } else { path };
                    rpc(
                        "/2/files/list_folder",
                        json!({"path": checked(path)?, "limit": args.u64("limit").unwrap_or(100).clamp(1, 2000)}),
                    )
                }
            },
            "search" => {
                let mut options =
                    json!({"max_results": args.u64("limit").unwrap_or(20).clamp(1, 1000)});
                if let Some(p) = args.str("path").filter(|p| !p.is_empty() && *p != "/") {
                    options["path"] = checked(p)?.into();
                }
                rpc(
                    "/2/files/search_v2",
                    json!({"query": args.require_str("query")?, "options": options}),
                )
            }
            "get_metadata" => rpc(
                "/2/files/get_metadata",
                json!({"path": checked(args.require_str("path")?)?}),
            ),
            "read_file" => {
                let arg = json!({"path": checked(args.require_str("path")?)?});
                ToolRequest::post("/2/files/download").header("dropbox-api-arg", ascii_json(&arg))
            }
            "create_folder" => rpc(
                "/2/files/create_folder_v2",
                json!({"path": checked(args.require_str("path")?)?, "autorename": false}),
            ),
            other => return Err(portcullis_sdk::unknown_tool(other)),
        })
    }
}

fn rpc(path: &str, body: Value) -> ToolRequest {
    ToolRequest::post(path).json(&body)
}

/// A Dropbox path as the API takes it: empty (the root), `/...`, `id:...` or `rev:...`.
fn checked(path: &str) -> Result<&str, PluginError> {
    let ok = path.is_empty()
        || path.starts_with('/')
        || path.starts_with("id:")
        || path.starts_with("rev:");
    if ok && !path.chars().any(char::is_control) {
        Ok(path)
    } else {
        Err(PluginError::InvalidInput(format!(
            "\"path\" must start with / (or be id:... or rev:...), not \"{path}\""
        )))
    }
}

/// JSON with every non-ASCII character escaped (`\uXXXX`), as an HTTP header value
/// must be and as Dropbox documents for `Dropbox-API-Arg`.
fn ascii_json(value: &Value) -> String {
    let text = value.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}
