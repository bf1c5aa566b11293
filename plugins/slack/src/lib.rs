//! Slack Web API, OAuth v2.
//!
//! Facts (sources in `shared/research/providers.md` §2.3):
//! - OAuth at `slack.com/oauth/v2/authorize` and `slack.com/api/oauth.v2.access`. Bot
//!   scopes go in `scope`, **comma-separated**; user scopes in a separate `user_scope`.
//!   Slack recommends HTTP Basic for the client credentials.
//! - PKCE turns the app into a public client for good (30-day refresh tokens), so this
//!   plugin never asks for it.
//! - The token response holds two tokens: the bot token (`xoxb`) at the top level and
//!   the user token (`xoxp`) under `authed_user`, each with its own scope and, with
//!   rotation on, its own refresh token (single use) and 12-hour expiry.
//! - Errors come as HTTP 200 with `{"ok": false, "error": "..."}`; rate limits as 429
//!   with `Retry-After`. Successful answers open with `"ok": true`, so the host
//!   recognises them by that marker and classifies them without a call.
//! - Requests choose their token: the bot token by default; an agent sends
//!   `X-Slack-Token: user` for the user token (the header is not forwarded).

use portcullis_sdk::prelude::*;
use serde_json::{Value, json};

struct Slack;

/// Header an agent sets to pick the token (`bot` or `user`).
const TOKEN_HEADER: &str = "x-slack-token";

/// Slack error codes that mean the token is no longer any good.
const REAUTH_ERRORS: &[&str] = &[
    "invalid_auth",
    "not_authed",
    "token_revoked",
    "token_expired",
    "account_inactive",
    "no_permission",
];

#[portcullis_sdk::provider]
impl Provider for Slack {
    fn defaults() -> Defaults {
        let oauth = OauthDefaults::new(
            "https://slack.com/oauth/v2/authorize",
            "https://slack.com/api/oauth.v2.access",
        )
        .scopes([
            "channels:read",
            "channels:history",
            "chat:write",
            "users:read",
        ])
        .scope_separator(",")
        .user_scope_param("user_scope")
        .pkce(PkcePolicy::Unsupported)
        .client_auth(ClientAuth::Basic)
        .grant(TokenGrant::standard("bot").optional())
        .grant(TokenGrant::at("user", "/authed_user").optional())
        .rotates_refresh_token();
        Defaults::new("https://slack.com/api")
            .docs_url("https://docs.slack.dev/reference/methods")
            .mcp_url("https://mcp.slack.com/mcp")
            .oauth(oauth)
            .classify_body_bytes(16 * 1024)
            // Every successful answer opens with `"ok":true`: the host calls it ok
            // without asking `classify_response`, which would say the same.
            .ok_when([200..=299], "ok", true)
    }

    fn shape_request(ctx: &Context, req: OutgoingRequest) -> Result<ShapedRequest, PluginError> {
        let shaped = ShapedRequest::join(&ctx.base_url, &req.path, req.query.as_deref())
            .remove_header(TOKEN_HEADER);
        match portcullis_sdk::header(&req.headers, TOKEN_HEADER).map(str::trim) {
            None | Some("bot") => Ok(shaped),
            Some("user") => Ok(shaped.grant("user")),
            Some(other) => Err(PluginError::InvalidInput(format!(
                "{TOKEN_HEADER} must be \"bot\" or \"user\", not \"{other}\""
            ))),
        }
    }

    /// `shape_request` as a route: the host picks the token by the header and refuses
    /// no value itself (one not listed is left to `shape_request`, which refuses it).
    fn request_routes(ctx: &Context) -> Vec<Route> {
        vec![
            Route::new("", &ctx.base_url)
                .grant_header(TOKEN_HEADER, &[("bot", None), ("user", Some("user"))]),
        ]
    }

    fn read_token_response(
        _ctx: &Context,
        status: u16,
        body: &str,
    ) -> Result<TokenInfo, TokenError> {
        let json: Value = serde_json::from_str(body).map_err(|e| {
            TokenError::Provider(format!(
                "oauth.v2.access did not return JSON (HTTP {status}): {e}"
            ))
        })?;
        if json.get("ok").and_then(Value::as_bool) == Some(false) {
            let code = json
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("unknown_error");
            return Err(match code {
                "invalid_refresh_token"
                | "invalid_grant_type"
                | "token_revoked"
                | "token_expired" => TokenError::InvalidGrant(format!("Slack: {code}")),
                _ => TokenError::Provider(format!("Slack: {code}")),
            });
        }
        let kept = [
            ("team_id", "/team/id"),
            ("team_name", "/team/name"),
            ("enterprise_id", "/enterprise/id"),
            ("bot_user_id", "/bot_user_id"),
            ("app_id", "/app_id"),
            ("authed_user_id", "/authed_user/id"),
        ];
        Ok(TokenInfo::default().vars_at(&json, &kept))
    }

    fn classify_response(
        _ctx: &Context,
        status: u16,
        headers: &[Header],
        body: &[u8],
    ) -> Classification {
        if status == 429 {
            return Classification::RateLimited(portcullis_sdk::retry_after(headers));
        }
        let Ok(json) = serde_json::from_slice::<Value>(body) else {
            return portcullis_sdk::classify_by_status(status, headers);
        };
        if json.get("ok").and_then(Value::as_bool) != Some(false) {
            return portcullis_sdk::classify_by_status(status, headers);
        }
        let code = json
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("unknown_error");
        match code {
            "ratelimited" | "rate_limited" => {
                Classification::RateLimited(portcullis_sdk::retry_after(headers))
            }
            c if REAUTH_ERRORS.contains(&c) => Classification::Reauth(format!("Slack: {c}")),
            "internal_error" | "service_unavailable" | "fatal_error" | "request_timeout" => {
                Classification::Retry(None)
            }
            c => Classification::Failed(format!("Slack: {c}")),
        }
    }

    fn list_tools(_ctx: &Context) -> Vec<Tool> {
        let limit = |default: u32| json!({"type": "integer", "minimum": 1, "maximum": 1000, "default": default});
        vec![
            Tool::new(
                "list_channels",
                "List public channels in the workspace (name, id, topic, member count).",
                json!({"type": "object", "properties": {
                    "limit": limit(100),
                    "cursor": {"type": "string", "description": "next_cursor from a previous call"}
                }}),
            )
            .read_only(),
            Tool::new(
                "read_channel",
                "Read recent messages of a channel, newest first.",
                json!({"type": "object", "required": ["channel"], "properties": {
                    "channel": {"type": "string", "description": "channel id, e.g. C0123456"},
                    "limit": limit(20),
                    "cursor": {"type": "string"}
                }}),
            )
            .read_only(),
            Tool::new(
                "post_message",
                "Post a message to a channel, optionally as a thread reply.",
                json!({"type": "object", "required": ["channel", "text"], "properties": {
                    "channel": {"type": "string"},
                    "text": {"type": "string"},
                    "thread_ts": {"type": "string", "description": "ts of the parent message"}
                }}),
            ),
            Tool::new(
                "list_users",
                "List the workspace's members (id, name, real name).",
                json!({"type": "object", "properties": {
                    "limit": limit(100),
                    "cursor": {"type": "string"}
                }}),
            )
            .read_only(),
        ]
    }

    fn build_tool_call(
        _ctx: &Context,
        name: &str,
        args: &Args,
    ) -> Result<ToolRequest, PluginError> {
        let limit = |default: u64| args.u64("limit").unwrap_or(default).clamp(1, 1000);
        Ok(match name {
            "list_channels" => ToolRequest::get("/conversations.list")
                .query("types", "public_channel")
                .query("exclude_archived", "true")
                .query("limit", limit(100))
                .query_opt("cursor", args.str("cursor")),
            "read_channel" => ToolRequest::get("/conversations.history")
                .query("channel", args.require_str("channel")?)
                .query("limit", limit(20))
                .query_opt("cursor", args.str("cursor")),
            "post_message" => {
                let mut body = json!({
                    "channel": args.require_str("channel")?,
                    "text": args.require_str("text")?,
                });
                if let Some(ts) = args.str("thread_ts") {
                    body["thread_ts"] = ts.into();
                }
                ToolRequest::post("/chat.postMessage").json(&body)
            }
            "list_users" => ToolRequest::get("/users.list")
                .query("limit", limit(100))
                .query_opt("cursor", args.str("cursor")),
            other => return Err(portcullis_sdk::unknown_tool(other)),
        })
    }
}
