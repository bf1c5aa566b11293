//! Discord API: a bot token, or per-user OAuth 2.0.
//!
//! Facts (sources in `docs/providers.md`; discord.com/developers/docs topics/oauth2,
//! reference, topics/rate-limits, topics/opcodes-and-status-codes, resources/channel and
//! resources/message, from the discord/discord-api-docs repository):
//! - Two kinds of token. A **bot token** (from the application's Bot page) is sent as
//!   `Authorization: Bot <token>` and can read and post in the servers the bot was added
//!   to: the static credential here (WIT `auth-extras`). A **user's OAuth token** is sent
//!   as `Bearer` and covers what the user granted (`identify`, `guilds`: who they are,
//!   which servers they are in); it cannot read or post channel messages.
//! - OAuth: authorize at `discord.com/oauth2/authorize`, tokens at
//!   `discord.com/api/oauth2/token` (form bodies only; HTTP Basic or body client auth),
//!   revocation at `/api/oauth2/token/revoke` (RFC 7009; revoking one token revokes the
//!   whole authorization). PKCE (`S256`) is accepted; scopes are space-separated.
//!   Access tokens last 604,800 s (7 days); each refresh answers a new refresh token and
//!   the old one stops working, so it is stored at once.
//! - API at `discord.com/api/v10` (unversioned paths get a deprecated version). Every
//!   request needs `User-Agent: DiscordBot ($url, $version)`; Cloudflare may block
//!   others (error 40333).
//! - Errors are `{"code": n, "message": ...}` (50001 missing access, 50013 missing
//!   permissions); 401 is a missing or invalid token. 429 answers
//!   `{"message", "retry_after": seconds (fractional), "global"}` with `Retry-After`;
//!   10,000 401/403/429 answers in 10 minutes earn a temporary IP ban, so rate limits
//!   are passed on with their wait rather than retried blindly.
//! - Without the privileged Message Content intent a bot reads empty `content` in most
//!   messages (REST too); posting needs SEND_MESSAGES in the channel.
//! - Discord runs no remote MCP server for its API (only one for its documentation).
//! - Its objects are large (a guild carries its feature list, a message its embeds,
//!   components and flags); the tools' answers are trimmed to what a model needs
//!   (WIT `tool-results`).

use portcullis_sdk::prelude::*;
use serde_json::{Value, json};

struct Discord;

const USER_AGENT: &str = "DiscordBot (https://github.com/portcullis-gateway/portcullis, 0.1)";

#[portcullis_sdk::provider]
impl Provider for Discord {
    fn defaults() -> Defaults {
        let oauth = OauthDefaults::new(
            "https://discord.com/oauth2/authorize",
            "https://discord.com/api/oauth2/token",
        )
        .revocation_url("https://discord.com/api/oauth2/token/revoke")
        .scopes(["identify", "guilds"])
        .pkce(PkcePolicy::Supported)
        .client_auth(ClientAuth::Basic)
        .grant(TokenGrant::standard("default"))
        .rotates_refresh_token();
        Defaults::new("https://discord.com/api/v10")
            .docs_url("https://discord.com/developers/docs/reference")
            .oauth(oauth)
            .static_credential(StaticCredential::Authorization("Bot".to_owned()))
            .classify_statuses([401..=401, 429..=429])
            .classify_body_bytes(1024)
    }

    fn shape_request(ctx: &Context, req: OutgoingRequest) -> Result<ShapedRequest, PluginError> {
        let shaped = ShapedRequest::join(&ctx.base_url, &req.path, req.query.as_deref());
        // The agent's own User-Agent wins if it sent one.
        Ok(match portcullis_sdk::header(&req.headers, "user-agent") {
            Some(_) => shaped,
            None => shaped.header("user-agent", USER_AGENT),
        })
    }

    /// `shape_request` as one route: every path to the connector's URL, with Discord's
    /// User-Agent unless the agent sent one.
    fn request_routes(ctx: &Context) -> Vec<Route> {
        vec![Route::new("", &ctx.base_url).default_header("user-agent", USER_AGENT)]
    }

    fn classify_response(
        _ctx: &Context,
        status: u16,
        headers: &[Header],
        body: &[u8],
    ) -> Classification {
        let json = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
        match status {
            // `retry_after` has fractions of a second; `Retry-After` is whole seconds.
            429 => Classification::RateLimited(
                json.get("retry_after")
                    .and_then(Value::as_f64)
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(|s| Duration::from_secs_f64(s.min(86_400.0)))
                    .or_else(|| portcullis_sdk::retry_after(headers)),
            ),
            401 => Classification::Reauth(format!(
                "Discord: {}",
                json.get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("the token was rejected (401)")
            )),
            _ => portcullis_sdk::classify_by_status(status, headers),
        }
    }

    fn list_tools(_ctx: &Context) -> Vec<Tool> {
        let id = |what: &str| json!({"type": "string", "pattern": "^[0-9]{17,20}$", "description": what});
        vec![
            Tool::new(
                "get_me",
                "Who the token acts as: the bot or the connected user (id, username).",
                json!({"type": "object", "properties": {}}),
            )
            .read_only(),
            Tool::new(
                "list_guilds",
                "The servers (guilds) the bot was added to, or the user is in: id and name.",
                json!({"type": "object", "properties": {
                    "limit": {"type": "integer", "minimum": 1, "maximum": 200, "default": 100},
                    "after": id("a guild id: list those after it, for the next page")
                }}),
            )
            .read_only(),
            Tool::new(
                "list_channels",
                "A server's channels (bot token): id, name, type, topic.",
                json!({"type": "object", "required": ["guild_id"], "properties": {"guild_id": id("a guild id from list_guilds")}}),
            )
            .read_only(),
            Tool::new(
                "read_messages",
                "A channel's latest messages, newest first (bot token; content needs the Message Content intent).",
                json!({"type": "object", "required": ["channel_id"], "properties": {
                    "channel_id": id("a channel id from list_channels"),
                    "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 25},
                    "before": id("a message id: read those before it, for older messages")
                }}),
            )
            .read_only(),
            Tool::new(
                "send_message",
                "Post a message in a channel (bot token). Mentions do not ping anyone.",
                json!({"type": "object", "required": ["channel_id", "content"], "properties": {
                    "channel_id": id("a channel id from list_channels"),
                    "content": {"type": "string", "minLength": 1, "maxLength": 2000},
                    "reply_to": id("a message id to reply to")
                }}),
            ),
        ]
    }

    const SHAPED_TOOL_RESULTS: &'static [&'static str] = &[
        "list_guilds",
        "list_channels",
        "read_messages",
        "send_message",
    ];

    fn shape_tool_result(
        _ctx: &Context,
        name: &str,
        status: u16,
        body: &[u8],
    ) -> Result<String, PluginError> {
        let fields: &[&str] = match name {
            "list_guilds" => &["id", "name", "owner"],
            "list_channels" => &["id", "name", "type", "topic", "parent_id", "position"],
            "read_messages" | "send_message" => &[
                "id",
                "author.id",
                "author.username",
                "content",
                "timestamp",
                "message_reference.message_id",
                "attachments.filename",
                "attachments.url",
            ],
            _ => &[],
        };
        // Errors (`{code, message}`) and anything not JSON go to the model as they are.
        match serde_json::from_slice::<Value>(body) {
            Ok(answer) if (200..300).contains(&status) && !fields.is_empty() => {
                Ok(portcullis_sdk::pick(&answer, fields).to_string())
            }
            _ => Ok(String::from_utf8_lossy(body).into_owned()),
        }
    }

    fn build_tool_call(
        _ctx: &Context,
        name: &str,
        args: &Args,
    ) -> Result<ToolRequest, PluginError> {
        Ok(match name {
            "get_me" => ToolRequest::get("/users/@me"),
            "list_guilds" => ToolRequest::get("/users/@me/guilds")
                .query("limit", args.u64("limit").unwrap_or(100).clamp(1, 200))
                .query_opt("after", snowflake_opt(args, "after")?),
            "list_channels" => ToolRequest::get(&format!(
                "/guilds/{}/channels",
                snowflake(args, "guild_id")?
            )),
            "read_messages" => ToolRequest::get(&format!(
                "/channels/{}/messages",
                snowflake(args, "channel_id")?
            ))
            .query("limit", args.u64("limit").unwrap_or(25).clamp(1, 100))
            .query_opt("before", snowflake_opt(args, "before")?),
            "send_message" => {
                let content = args.require_str("content")?;
                if content.trim().is_empty() || content.chars().count() > 2000 {
                    return Err(PluginError::InvalidInput(
                        "\"content\" must be 1 to 2000 characters".to_owned(),
                    ));
                }
                // An agent's text never pings @everyone, roles or users.
                let mut body = json!({"content": content, "allowed_mentions": {"parse": []}});
                if let Some(reply) = snowflake_opt(args, "reply_to")? {
                    body["message_reference"] =
                        json!({"message_id": reply, "fail_if_not_exists": false});
                }
                ToolRequest::post(&format!(
                    "/channels/{}/messages",
                    snowflake(args, "channel_id")?
                ))
                .json(&body)
            }
            other => return Err(portcullis_sdk::unknown_tool(other)),
        })
    }
}

/// A Discord id (a snowflake), as a path segment or query value.
fn snowflake(args: &Args, key: &str) -> Result<String, PluginError> {
    args.digits(key, "a Discord id")
}

fn snowflake_opt(args: &Args, key: &str) -> Result<Option<String>, PluginError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => snowflake(args, key).map(Some),
    }
}
