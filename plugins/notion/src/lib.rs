//! Notion API, public connections (OAuth 2.0).
//!
//! Facts (sources in `docs/providers.md`; developers.notion.com: authorization guide,
//! reference/create-a-token, refresh-a-token, revoke-token, status-codes, versioning,
//! request-limits):
//! - Authorization at `api.notion.com/v1/oauth/authorize` with `owner=user`; **no
//!   scopes** (the connection's capabilities are set in Notion; the user picks pages).
//!   PKCE is not documented for these endpoints, so none is sent.
//! - The token endpoint (`/v1/oauth/token`, code and refresh alike) and the revocation
//!   endpoint (`/v1/oauth/revoke`, `{"token": ...}`) take **JSON bodies** with HTTP
//!   Basic client auth and a `Notion-Version` header (WIT `oauth-extras`, 0.1.1).
//! - The token response carries no `expires_in`; `refresh_token` may be null (older
//!   connections); a refresh returns a new access token **and a new refresh token**. It
//!   also names the workspace and bot (`workspace_id`, `workspace_name`, `bot_id`,
//!   `owner.user.id`), kept as variables.
//! - Errors are `{"object": "error", "status", "code", "message"}` (RFC 6749's
//!   `{error, error_description}` also seen on the token endpoint): `invalid_grant` is a
//!   dead grant; on the API `unauthorized` (401) means re-auth, `rate_limited` (429,
//!   `Retry-After` in seconds) and `service_overload` (529) mean later.
//! - Every API call needs `Notion-Version`: this plugin pins 2026-03-11 (the latest
//!   documented version; `archived` became `in_trash`); an agent's own header wins.
//! - Notion's remote MCP server: `https://mcp.notion.com/mcp`.

use portcullis_sdk::prelude::*;
use serde_json::{Value, json};

struct Notion;

const NOTION_VERSION: &str = "2026-03-11";

#[portcullis_sdk::provider]
impl Provider for Notion {
    fn defaults() -> Defaults {
        let oauth = OauthDefaults::new(
            "https://api.notion.com/v1/oauth/authorize",
            "https://api.notion.com/v1/oauth/token",
        )
        .revocation_url("https://api.notion.com/v1/oauth/revoke")
        .auth_param("owner", "user")
        .pkce(PkcePolicy::Unsupported)
        .client_auth(ClientAuth::Basic)
        .grant(TokenGrant::standard("default"))
        .rotates_refresh_token();
        Defaults::new("https://api.notion.com")
            .docs_url("https://developers.notion.com/reference/intro")
            .mcp_url("https://mcp.notion.com/mcp")
            .oauth(oauth)
            .json_oauth_requests()
            .oauth_request_header("notion-version", NOTION_VERSION)
            .classify_statuses([400..=599])
            .classify_body_bytes(4 * 1024)
    }

    fn shape_request(ctx: &Context, req: OutgoingRequest) -> Result<ShapedRequest, PluginError> {
        let shaped = ShapedRequest::join(&ctx.base_url, &req.path, req.query.as_deref());
        Ok(
            match portcullis_sdk::header(&req.headers, "notion-version") {
                Some(_) => shaped,
                None => shaped.header("notion-version", NOTION_VERSION),
            },
        )
    }

    /// `shape_request` as one route: every path to the connector's URL, with the API
    /// version unless the agent chose one.
    fn request_routes(ctx: &Context) -> Vec<Route> {
        vec![Route::new("", &ctx.base_url).default_header("notion-version", NOTION_VERSION)]
    }

    fn read_token_response(
        _ctx: &Context,
        status: u16,
        body: &str,
    ) -> Result<TokenInfo, TokenError> {
        let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        // Notion's own error object, or RFC 6749's.
        let code = json
            .get("code")
            .filter(|_| json.get("object").and_then(Value::as_str) == Some("error"))
            .or_else(|| json.get("error"))
            .and_then(Value::as_str);
        if let Some(code) = code {
            let detail = json
                .get("message")
                .or_else(|| json.get("error_description"))
                .and_then(Value::as_str);
            let dead = code == "invalid_grant";
            return Err(portcullis_sdk::token_error("Notion", code, detail, dead));
        }
        portcullis_sdk::standard_token_response(status, body)?;
        let kept = [
            ("workspace_id", "/workspace_id"),
            ("workspace_name", "/workspace_name"),
            ("bot_id", "/bot_id"),
            ("owner_user_id", "/owner/user/id"),
        ];
        Ok(TokenInfo::default().vars_at(&json, &kept))
    }

    fn classify_response(
        _ctx: &Context,
        status: u16,
        headers: &[Header],
        body: &[u8],
    ) -> Classification {
        let code = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|j| Some(j.get("code")?.as_str()?.to_owned()));
        match (status, code.as_deref()) {
            (429, _) | (_, Some("rate_limited")) => {
                Classification::RateLimited(portcullis_sdk::retry_after(headers))
            }
            (529, _) | (_, Some("service_overload")) => {
                Classification::Retry(portcullis_sdk::retry_after(headers))
            }
            (_, Some("unauthorized")) => {
                Classification::Reauth("Notion: the token is not valid (unauthorized)".to_owned())
            }
            _ => portcullis_sdk::classify_by_status(status, headers),
        }
    }

    fn list_tools(_ctx: &Context) -> Vec<Tool> {
        let page_id = json!({"type": "string", "description": "a page id, with or without dashes"});
        vec![
            Tool::new(
                "search",
                "Search the pages and data sources shared with the connection by title, most recently edited first.",
                json!({"type": "object", "properties": {
                    "query": {"type": "string"},
                    "only": {"type": "string", "enum": ["page", "data_source"], "description": "return only pages or only data sources"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
                    "start_cursor": {"type": "string", "description": "next_cursor from a previous page"}
                }}),
            )
            .read_only(),
            Tool::new(
                "get_page",
                "Read a page's properties (title, parent, URL, last edit).",
                json!({"type": "object", "required": ["page_id"], "properties": {"page_id": page_id}}),
            )
            .read_only(),
            Tool::new(
                "get_page_content",
                "Read a page's content: its top-level blocks, in order.",
                json!({"type": "object", "required": ["page_id"], "properties": {
                    "page_id": page_id,
                    "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 100},
                    "start_cursor": {"type": "string"}
                }}),
            )
            .read_only(),
            Tool::new(
                "create_page",
                "Create a page under another page, with a title and plain-text content (one paragraph per blank-line-separated block).",
                json!({"type": "object", "required": ["parent_page_id", "title"], "properties": {
                    "parent_page_id": page_id,
                    "title": {"type": "string", "minLength": 1, "maxLength": 2000},
                    "content": {"type": "string"}
                }}),
            ),
        ]
    }

    fn build_tool_call(
        _ctx: &Context,
        name: &str,
        args: &Args,
    ) -> Result<ToolRequest, PluginError> {
        Ok(match name {
            "search" => {
                let mut body = json!({
                    "sort": {"timestamp": "last_edited_time", "direction": "descending"},
                    "page_size": args.u64("limit").unwrap_or(10).clamp(1, 100),
                });
                if let Some(q) = args.str("query") {
                    body["query"] = q.into();
                }
                if args.get("only").is_some() {
                    let only = args.one_of("only", &["page", "data_source"], None)?;
                    body["filter"] = json!({"property": "object", "value": only});
                }
                if let Some(c) = args.str("start_cursor") {
                    body["start_cursor"] = c.into();
                }
                ToolRequest::post("/v1/search").json(&body)
            }
            "get_page" => ToolRequest::get(&format!("/v1/pages/{}", page_id(args, "page_id")?)),
            "get_page_content" => ToolRequest::get(&format!(
                "/v1/blocks/{}/children",
                page_id(args, "page_id")?
            ))
            .query("page_size", args.u64("limit").unwrap_or(100).clamp(1, 100))
            .query_opt("start_cursor", args.str("start_cursor")),
            "create_page" => {
                let title = args.require_str("title")?;
                let children: Vec<Value> = args
                    .str("content")
                    .unwrap_or_default()
                    .split("\n\n")
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(paragraph)
                    .collect();
                let body = json!({
                    "parent": {"page_id": page_id(args, "parent_page_id")?},
                    "properties": {"title": {"title": [{"type": "text", "text": {"content": title}}]}},
                    "children": children,
                });
                ToolRequest::post("/v1/pages").json(&body)
            }
            other => return Err(portcullis_sdk::unknown_tool(other)),
        })
    }
}

/// A paragraph block; Notion caps one text object at 2000 characters, so longer text is
/// split across several.
fn paragraph(text: &str) -> Value {
    let chars: Vec<char> = text.chars().collect();
    let rich: Vec<Value> = chars
        .chunks(2000)
        .map(|c| json!({"type": "text", "text": {"content": c.iter().collect::<String>()}}))
        .collect();
    json!({"object": "block", "type": "paragraph", "paragraph": {"rich_text": rich}})
}

/// A page id: 32 hex digits, dashes allowed (as Notion's URLs and API write them).
fn page_id<'a>(args: &'a Args, key: &str) -> Result<&'a str, PluginError> {
    let id = args.require_str(key)?;
    let hex = id.chars().filter(|c| *c != '-').count();
    let ok = hex == 32 && id.chars().all(|c| c == '-' || c.is_ascii_hexdigit());
    if ok {
        Ok(id)
    } else {
        Err(PluginError::InvalidInput(format!(
            "\"{key}\" must be a Notion page id (32 hex digits, dashes allowed), not \"{id}\""
        )))
    }
}
