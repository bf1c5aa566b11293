//! Zoom REST API, user-level OAuth (a "General" app).
//!
//! Facts (sources in `docs/providers.md`; developers.zoom.us/docs/integrations/oauth,
//! /docs/api/errors, devsupport.zoom.us "Access token change FAQ"):
//! - OAuth at `zoom.us/oauth/authorize` and `zoom.us/oauth/token` with HTTP Basic client
//!   auth and a form body; PKCE (`S256`) accepted; granular scopes
//!   (`meeting:read:list_meetings`), space-separated.
//! - Access tokens last one hour. Every refresh returns a new refresh token and the old
//!   one stops working ("Invalid Token!"); authorizing again revokes the previous pair.
//!   Revocation at `zoom.us/oauth/revoke` (Basic, form field `token`).
//! - The token response names the API host to use (`api_url`, regional for some
//!   accounts); the API lives under `/v2`. Tokens go in the `Authorization` header only.
//! - Errors are `{"code": <number>, "message": ...}`; code 124 is an invalid or expired
//!   access token. Rate limits: 429, `Retry-After` on daily limits (an ISO-8601 time,
//!   which the host cannot use as a delay, so none is passed on).
//! - Token errors look like `{"reason": "Invalid Token!", "error": "invalid_grant"}`.
//! - A meeting's `start_url` carries a host credential (ZAK); `list_meetings` does not
//!   return it, `get_meeting` and `create_meeting` do. Their answers go through
//!   `shape_tool_result` (WIT `tool-results`), which removes it, so a model never holds
//!   a link that starts the meeting as its host; `join_url` stays.

use portcullis_sdk::prelude::*;
use serde_json::{Value, json};

struct Zoom;

const DEFAULT_BASE: &str = "https://api.zoom.us/v2";

#[portcullis_sdk::provider]
impl Provider for Zoom {
    fn defaults() -> Defaults {
        let oauth = OauthDefaults::new(
            "https://zoom.us/oauth/authorize",
            "https://zoom.us/oauth/token",
        )
        .revocation_url("https://zoom.us/oauth/revoke")
        .scopes([
            "user:read:user",
            "meeting:read:list_meetings",
            "meeting:read:meeting",
            "meeting:write:meeting",
        ])
        .pkce(PkcePolicy::Supported)
        .client_auth(ClientAuth::Basic)
        .grant(TokenGrant::standard("default"))
        .rotates_refresh_token();
        Defaults::new(DEFAULT_BASE)
            .docs_url("https://developers.zoom.us/docs/api/")
            .mcp_url("https://mcp.zoom.us/mcp/zoom/streamable")
            .oauth(oauth)
            .classify_statuses([400..=599])
            .classify_body_bytes(4 * 1024)
    }

    fn shape_request(ctx: &Context, req: OutgoingRequest) -> Result<ShapedRequest, PluginError> {
        Ok(ShapedRequest::join(
            &api_base(ctx),
            &req.path,
            req.query.as_deref(),
        ))
    }

    /// `shape_request` as one route: every path to the same base.
    fn request_routes(ctx: &Context) -> Vec<Route> {
        vec![Route::new("", &api_base(ctx))]
    }

    fn read_token_response(
        _ctx: &Context,
        status: u16,
        body: &str,
    ) -> Result<TokenInfo, TokenError> {
        let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        if let Some(code) = json.get("error").and_then(Value::as_str) {
            let reason = json
                .get("reason")
                .or_else(|| json.get("error_description"))
                .and_then(Value::as_str);
            // A used (rotated), revoked or superseded token.
            let dead = code == "invalid_grant" || reason == Some("Invalid Token!");
            return Err(portcullis_sdk::token_error("Zoom", code, reason, dead));
        }
        portcullis_sdk::standard_token_response(status, body)?;
        Ok(match json.get("api_url").and_then(Value::as_str) {
            Some(url) if url.starts_with("https://") => TokenInfo::default().var("api_url", url),
            _ => TokenInfo::default(),
        })
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
        let code = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|j| j.get("code")?.as_u64());
        match code {
            Some(124) => {
                Classification::Reauth("Zoom: invalid or expired access token (124)".to_owned())
            }
            _ => portcullis_sdk::classify_by_status(status, headers),
        }
    }

    fn list_tools(_ctx: &Context) -> Vec<Tool> {
        let meeting_id = json!({"type": "string", "pattern": "^[0-9]{9,12}$", "description": "the meeting's number, e.g. 93123456789"});
        vec![
            Tool::new(
                "get_me",
                "The connected Zoom user: name, email, time zone, account.",
                json!({"type": "object", "properties": {}}),
            )
            .read_only(),
            Tool::new(
                "list_meetings",
                "List the user's meetings: upcoming by default.",
                json!({"type": "object", "properties": {
                    "type": {"type": "string", "enum": ["upcoming", "scheduled", "live", "previous_meetings"], "default": "upcoming"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 300, "default": 30},
                    "next_page_token": {"type": "string"}
                }}),
            )
            .read_only(),
            Tool::new(
                "get_meeting",
                "Read a meeting: topic, time, duration, agenda, join link.",
                json!({"type": "object", "required": ["meeting_id"], "properties": {"meeting_id": meeting_id}}),
            )
            .read_only(),
            Tool::new(
                "create_meeting",
                "Schedule a meeting for the user.",
                json!({"type": "object", "required": ["topic", "start_time"], "properties": {
                    "topic": {"type": "string", "minLength": 1, "maxLength": 200},
                    "start_time": {"type": "string", "description": "e.g. 2026-03-15T10:00:00Z, or local time with timezone"},
                    "duration": {"type": "integer", "minimum": 1, "maximum": 1440, "default": 30, "description": "minutes"},
                    "timezone": {"type": "string", "description": "IANA name, e.g. Europe/Berlin"},
                    "agenda": {"type": "string", "maxLength": 2000}
                }}),
            ),
        ]
    }

    const SHAPED_TOOL_RESULTS: &'static [&'static str] = &["get_meeting", "create_meeting"];

    fn shape_tool_result(
        _ctx: &Context,
        _name: &str,
        _status: u16,
        body: &[u8],
    ) -> Result<String, PluginError> {
        let Ok(mut meeting) = serde_json::from_slice::<Value>(body) else {
            return Ok(String::from_utf8_lossy(body).into_owned());
        };
        if let Some(m) = meeting.as_object_mut() {
            m.remove("start_url");
        }
        Ok(meeting.to_string())
    }

    fn build_tool_call(
        _ctx: &Context,
        name: &str,
        args: &Args,
    ) -> Result<ToolRequest, PluginError> {
        Ok(match name {
            "get_me" => ToolRequest::get("/users/me"),
            "list_meetings" => {
                let kind = args.one_of(
                    "type",
                    &["upcoming", "scheduled", "live", "previous_meetings"],
                    Some("upcoming"),
                )?;
                ToolRequest::get("/users/me/meetings")
                    .query("type", kind)
                    .query("page_size", args.u64("limit").unwrap_or(30).clamp(1, 300))
                    .query_opt("next_page_token", args.str("next_page_token"))
            }
            "get_meeting" => ToolRequest::get(&format!("/meetings/{}", meeting_id(args)?)),
            "create_meeting" => {
                let mut body = json!({
                    "topic": args.require_str("topic")?,
                    // A scheduled meeting.
                    "type": 2,
                    "start_time": args.require_str("start_time")?,
                    "duration": args.u64("duration").unwrap_or(30).clamp(1, 1440),
                });
                for key in ["timezone", "agenda"] {
                    if let Some(v) = args.str(key) {
                        body[key] = v.into();
                    }
                }
                ToolRequest::post("/users/me/meetings").json(&body)
            }
            other => return Err(portcullis_sdk::unknown_tool(other)),
        })
    }
}

/// A meeting number, the path segment of the meeting tools.
fn meeting_id(args: &Args) -> Result<String, PluginError> {
    args.digits("meeting_id", "the meeting's number")
}

/// The host the token response named, unless the operator set the connector's URL.
fn api_base(ctx: &Context) -> String {
    let regional = ctx
        .var("api_url")
        .map(|u| format!("{}/v2", u.trim_end_matches('/')));
    match regional {
        Some(r) if ctx.base_url.trim_end_matches('/') == DEFAULT_BASE => r,
        _ => ctx.base_url.clone(),
    }
}
