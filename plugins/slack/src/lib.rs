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
//!   with `Retry-After`.
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

impl Provider for Slack {
    fn defaults() -> Defaults {
        let mut oauth = OauthDefaults::new(
            "https://slack.com/oauth/v2/authorize",
            "https://slack.com/api/oauth.v2.access",
        );
        oauth.scopes = vec![
            "channels:read".into(),
            "channels:history".into(),
            "chat:write".into(),
            "users:read".into(),
        ];
        oauth.scope_separator = ",".into();
        oauth.user_scope_param = Some("user_scope".into());
        oauth.pkce = PkcePolicy::Unsupported;
        oauth.client_auth = ClientAuth::Basic;
        let mut bot = TokenGrant::standard("bot");
        bot.required = false;
        let mut user = TokenGrant::at("user", "/authed_user");
        user.required = false;
        oauth.grants = vec![bot, user];
        oauth.refresh = RefreshPolicy {
            rotates_refresh_token: true,
            keeps_refresh_token: false,
        };

        let mut d = Defaults::new("slack", "Slack", "https://slack.com/api");
        d.description =
            "Slack Web API: channels, messages and users of the installing workspace.".into();
        d.docs_url = Some("https://docs.slack.dev/reference/methods".into());
        d.mcp_url = Some("https://mcp.slack.com/mcp".into());
        d.oauth = Some(oauth);
        d.hooks = vec![
            Hook::ShapeRequest,
            Hook::ReadTokenResponse,
            Hook::ClassifyResponse,
            Hook::Tools,
        ];
        d.classify_body_bytes = 16 * 1024;
        d
    }

    fn shape_request(ctx: &Context, req: OutgoingRequest) -> Result<ShapedRequest, PluginError> {
        let grant = match portcullis_sdk::header(&req.headers, TOKEN_HEADER).map(str::trim) {
            None | Some("bot") => None,
            Some("user") => Some("user".to_owned()),
            Some(other) => {
                return Err(PluginError::InvalidInput(format!(
                    "{TOKEN_HEADER} must be \"bot\" or \"user\", not \"{other}\""
                )));
            }
        };
        let mut shaped = ShapedRequest::to(portcullis_sdk::join_url(
            &ctx.base_url,
            &req.path,
            req.query.as_deref(),
        ));
        shaped.remove_headers.push(TOKEN_HEADER.into());
        shaped.grant = grant;
        Ok(shaped)
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
        let mut variables = Vec::new();
        let mut keep = |name: &str, pointer: &str| {
            if let Some(v) = json.pointer(pointer).and_then(Value::as_str) {
                variables.push((name.to_owned(), v.to_owned()));
            }
        };
        keep("team_id", "/team/id");
        keep("team_name", "/team/name");
        keep("enterprise_id", "/enterprise/id");
        keep("bot_user_id", "/bot_user_id");
        keep("app_id", "/app_id");
        keep("authed_user_id", "/authed_user/id");
        Ok(TokenInfo {
            variables,
            expires_in: None,
        })
    }

    fn classify_response(
        _ctx: &Context,
        status: u16,
        headers: &[Header],
        body: &[u8],
    ) -> Classification {
        if status == 429 {
            return Classification::RateLimited(portcullis_sdk::retry_after_secs(headers));
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
                Classification::RateLimited(portcullis_sdk::retry_after_secs(headers))
            }
            c if REAUTH_ERRORS.contains(&c) => Classification::Reauth(format!("Slack: {c}")),
            "internal_error" | "service_unavailable" | "fatal_error" | "request_timeout" => {
                Classification::Retry(None)
            }
            c => Classification::Failed(format!("Slack: {c}")),
        }
    }

    fn list_tools(_ctx: &Context) -> Vec<Tool> {
        vec![
            tool(
                "list_channels",
                "List public channels in the workspace (name, id, topic, member count).",
                json!({"type": "object", "properties": {
                    "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                    "cursor": {"type": "string", "description": "next_cursor from a previous call"}
                }}),
                true,
            ),
            tool(
                "read_channel",
                "Read recent messages of a channel, newest first.",
                json!({"type": "object", "required": ["channel"], "properties": {
                    "channel": {"type": "string", "description": "channel id, e.g. C0123456"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 20},
                    "cursor": {"type": "string"}
                }}),
                true,
            ),
            tool(
                "post_message",
                "Post a message to a channel, optionally as a thread reply.",
                json!({"type": "object", "required": ["channel", "text"], "properties": {
                    "channel": {"type": "string"},
                    "text": {"type": "string"},
                    "thread_ts": {"type": "string", "description": "ts of the parent message"}
                }}),
                false,
            ),
            tool(
                "list_users",
                "List the workspace's members (id, name, real name).",
                json!({"type": "object", "properties": {
                    "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                    "cursor": {"type": "string"}
                }}),
                true,
            ),
        ]
    }

    fn build_tool_call(
        _ctx: &Context,
        name: &str,
        arguments: &str,
    ) -> Result<ToolRequest, PluginError> {
        let args: Value = serde_json::from_str(arguments)
            .map_err(|e| PluginError::InvalidInput(format!("arguments are not JSON: {e}")))?;
        let text = |key: &str| args.get(key).and_then(Value::as_str).map(str::to_owned);
        let required = |key: &str| {
            text(key).ok_or_else(|| PluginError::InvalidInput(format!("\"{key}\" is required")))
        };
        let query = |pairs: &[(&str, Option<String>)]| {
            let q: Vec<String> = pairs
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
                .collect();
            (!q.is_empty()).then(|| q.join("&"))
        };
        let limit = |default: u64| {
            Some(
                args.get("limit")
                    .and_then(Value::as_u64)
                    .unwrap_or(default)
                    .clamp(1, 1000)
                    .to_string(),
            )
        };
        Ok(match name {
            "list_channels" => ToolRequest::get(
                "/conversations.list",
                query(&[
                    ("types", Some("public_channel".into())),
                    ("exclude_archived", Some("true".into())),
                    ("limit", limit(100)),
                    ("cursor", text("cursor")),
                ]),
            ),
            "read_channel" => ToolRequest::get(
                "/conversations.history",
                query(&[
                    ("channel", Some(required("channel")?)),
                    ("limit", limit(20)),
                    ("cursor", text("cursor")),
                ]),
            ),
            "post_message" => {
                let mut body = json!({"channel": required("channel")?, "text": required("text")?});
                if let Some(ts) = text("thread_ts") {
                    body["thread_ts"] = Value::String(ts);
                }
                ToolRequest::post_json("/chat.postMessage", &body)
            }
            "list_users" => ToolRequest::get(
                "/users.list",
                query(&[("limit", limit(100)), ("cursor", text("cursor"))]),
            ),
            other => {
                return Err(PluginError::InvalidInput(format!(
                    "unknown tool \"{other}\""
                )));
            }
        })
    }
}

fn tool(name: &str, description: &str, schema: Value, read_only: bool) -> Tool {
    Tool {
        name: name.into(),
        description: description.into(),
        input_schema: schema.to_string(),
        read_only,
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

portcullis_sdk::export_provider!(Slack);
