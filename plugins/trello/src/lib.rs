//! Trello API, API key and token.
//!
//! Facts (sources in `docs/providers.md`; developer.atlassian.com/cloud/trello guides
//! rest-api/authorization and rate-limits, and the REST reference):
//! - Trello's long-standing scheme is not OAuth 2.0: an app's **API key** (public by
//!   design; from the Power-Up admin page) and a member's **token** (secret), which the
//!   member creates at `trello.com/1/authorize?key=...&scope=read,write&
//!   expiration=never&response_type=token&name=...`. Requests carry both as `key` and
//!   `token` query parameters. Here the token is the connector's secret, injected by the
//!   host as the `token` parameter (WIT `auth-extras`), and the key is a provider
//!   variable (`api_key`) this plugin adds to every request.
//! - Atlassian added OAuth 2.0 (3LO) for Trello in September 2026; key and token stay
//!   supported and are what this plugin uses until that flow's details are documented.
//! - API at `api.trello.com/1`. A bad, expired or revoked token answers 401 with plain
//!   text (`invalid token`). Limits: 300 requests per 10 s per key and 100 per 10 s per
//!   token (`/1/search` and `/1/members` stricter); a 429 answers
//!   `{"error": "API_TOKEN_LIMIT_EXCEEDED", ...}` without `Retry-After`, so the wait is
//!   the 10 s window.
//! - `fields` parameters keep answers to what a model needs.
//! - Atlassian's Trello MCP server (`mcp.trello.com/v1`) signs in with Atlassian OAuth,
//!   not with key and token: add it as an MCP connector of its own.

use portcullis_sdk::prelude::*;
use serde_json::json;

struct Trello;

const CARD_FIELDS: &str = "name,desc,due,dueComplete,closed,idList,labels,url,dateLastActivity";

/// The connector's Trello app key (`provider_vars.api_key`), when it is one.
fn api_key(ctx: &Context) -> Result<&str, PluginError> {
    let key = ctx
        .var("api_key")
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            PluginError::InvalidInput(
                "set provider_vars.api_key on the connector to your Trello app's API key"
                    .to_owned(),
            )
        })?;
    if !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(PluginError::InvalidInput(
            "provider_vars.api_key is not a Trello API key (letters and digits)".to_owned(),
        ));
    }
    Ok(key)
}

#[portcullis_sdk::provider]
impl Provider for Trello {
    fn defaults() -> Defaults {
        Defaults::new("https://api.trello.com/1")
            .docs_url("https://developer.atlassian.com/cloud/trello/rest/")
            .input(Input::new(
                "api_key",
                "Your Trello app's API key (public by design: trello.com/power-ups/admin, your app, API key). The connector's secret is a member's token made with it.",
            ))
            .static_credential(StaticCredential::Query("token".to_owned()))
            .classify_statuses([401..=401, 429..=429])
            .classify_body_bytes(512)
    }

    fn shape_request(ctx: &Context, req: OutgoingRequest) -> Result<ShapedRequest, PluginError> {
        let key = api_key(ctx)?;
        // The connector's key, never one the agent put in the query (its name read as the
        // host reads it when it adds the token: `k%65y` is `key`).
        let own = format!("key={key}");
        let query: Vec<&str> = req
            .query
            .as_deref()
            .unwrap_or_default()
            .split('&')
            .filter(|p| {
                let name = p.split_once('=').map_or(*p, |(n, _)| n);
                !p.is_empty() && form_decode(name) != "key"
            })
            .chain([own.as_str()])
            .collect();
        let query = query.join("&");
        Ok(ShapedRequest::join(&ctx.base_url, &req.path, Some(&query)))
    }

    /// `shape_request` as a route once the connector has a usable key; without one,
    /// none, so `shape_request` refuses each request and says why.
    fn request_routes(ctx: &Context) -> Vec<Route> {
        match api_key(ctx) {
            Ok(key) => vec![Route::new("", &ctx.base_url).query_param("key", key)],
            Err(_) => Vec::new(),
        }
    }

    fn classify_response(
        _ctx: &Context,
        status: u16,
        headers: &[Header],
        body: &[u8],
    ) -> Classification {
        match status {
            401 => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                Classification::Reauth(format!(
                    "Trello: {}; the member's token is invalid, expired or revoked: make a new one",
                    if text.is_empty() { "401" } else { text }
                ))
            }
            // Limits are per 10-second window and Trello sends no Retry-After.
            429 => Classification::RateLimited(Some(
                portcullis_sdk::retry_after(headers).unwrap_or(Duration::from_secs(10)),
            )),
            _ => portcullis_sdk::classify_by_status(status, headers),
        }
    }

    fn list_tools(_ctx: &Context) -> Vec<Tool> {
        let id = |what: &str| json!({"type": "string", "pattern": "^([0-9a-fA-F]{24}|[A-Za-z0-9]{8})$", "description": what});
        vec![
            Tool::new(
                "get_me",
                "The member the token belongs to: username, full name.",
                json!({"type": "object", "properties": {}}),
            )
            .read_only(),
            Tool::new(
                "list_boards",
                "The member's open boards: id, name, link.",
                json!({"type": "object", "properties": {}}),
            )
            .read_only(),
            Tool::new(
                "list_lists",
                "A board's open lists (columns): id and name.",
                json!({"type": "object", "required": ["board"], "properties": {"board": id("a board id or the 8-character short link from its URL")}}),
            )
            .read_only(),
            Tool::new(
                "list_cards",
                "The open cards in a list: name, description, due date, labels, link.",
                json!({"type": "object", "required": ["list"], "properties": {"list": id("a list id from list_lists")}}),
            )
            .read_only(),
            Tool::new(
                "get_card",
                "One card with its checklists.",
                json!({"type": "object", "required": ["card"], "properties": {"card": id("a card id or the short link from its URL")}}),
            )
            .read_only(),
            Tool::new(
                "search",
                "Search the member's boards and cards by text.",
                json!({"type": "object", "required": ["query"], "properties": {
                    "query": {"type": "string", "minLength": 1, "maxLength": 16384},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}
                }}),
            )
            .read_only(),
            Tool::new(
                "create_card",
                "Add a card to a list.",
                json!({"type": "object", "required": ["list", "name"], "properties": {
                    "list": id("a list id from list_lists"),
                    "name": {"type": "string", "minLength": 1, "maxLength": 16384},
                    "desc": {"type": "string", "maxLength": 16384},
                    "due": {"type": "string", "description": "an ISO 8601 date or time"},
                    "position": {"type": "string", "enum": ["top", "bottom"], "default": "bottom"}
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
            "get_me" => ToolRequest::get("/members/me").query("fields", "username,fullName,url"),
            "list_boards" => ToolRequest::get("/members/me/boards")
                .query("filter", "open")
                .query("fields", "name,url,dateLastActivity"),
            "list_lists" => {
                ToolRequest::get(&format!("/boards/{}/lists", trello_id(args, "board")?))
                    .query("filter", "open")
                    .query("fields", "name,pos")
            }
            "list_cards" => ToolRequest::get(&format!("/lists/{}/cards", trello_id(args, "list")?))
                .query("fields", CARD_FIELDS),
            "get_card" => ToolRequest::get(&format!("/cards/{}", trello_id(args, "card")?))
                .query("fields", CARD_FIELDS)
                .query("checklists", "all")
                .query("checklist_fields", "name"),
            "search" => {
                let limit = args.u64("limit").unwrap_or(20).clamp(1, 100);
                ToolRequest::get("/search")
                    .query("query", args.require_str("query")?)
                    .query("modelTypes", "cards,boards")
                    .query("cards_limit", limit)
                    .query("boards_limit", limit.min(20))
                    .query("card_fields", "name,desc,due,idList,url")
                    .query("board_fields", "name,url")
            }
            "create_card" => {
                let position = args.one_of("position", &["top", "bottom"], Some("bottom"))?;
                let mut body = json!({
                    "idList": trello_id(args, "list")?,
                    "name": args.require_str("name")?,
                    "pos": position,
                });
                for field in ["desc", "due"] {
                    if let Some(v) = args.str(field) {
                        body[field] = v.into();
                    }
                }
                ToolRequest::post("/cards").json(&body)
            }
            other => return Err(portcullis_sdk::unknown_tool(other)),
        })
    }
}

/// A Trello id (24 hex digits) or a board's or card's 8-character short link: one path
/// segment either way.
fn trello_id<'a>(args: &'a Args, key: &str) -> Result<&'a str, PluginError> {
    let id = args.require_str(key)?;
    let long = id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit());
    let short = id.len() == 8 && id.bytes().all(|b| b.is_ascii_alphanumeric());
    if long || short {
        Ok(id)
    } else {
        Err(PluginError::InvalidInput(format!(
            "\"{key}\" must be a Trello id (24 hex digits) or short link (8 letters and digits), not \"{id}\""
        )))
    }
}
