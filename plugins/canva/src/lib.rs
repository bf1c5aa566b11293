//! Canva Connect API, OAuth 2.0 with PKCE.
//!
//! Facts (sources in `docs/providers.md`; canva.dev/docs/connect/authentication,
//! /api-reference/authentication, /error-responses, and the Connect OpenAPI spec of
//! 2026-07-30):
//! - Authorization at `www.canva.com/api/oauth/authorize`; **PKCE with S256 is
//!   required**. Scopes are space-separated (`design:meta:read`, `design:content:write`,
//!   `profile:read`, …).
//! - Token, revocation and introspection endpoints are under `api.canva.com/auth/v1/oauth/`
//!   (the spec marks the older `api.canva.com/rest/v1/oauth/` as deprecated). HTTP Basic
//!   client auth is the recommended one; the body is a form.
//! - Access tokens last 4 hours (`expires_in: 14400`); a refresh returns a new refresh
//!   token. Revoking a refresh token revokes its access tokens and the user's consent.
//! - Errors, the token endpoint's included, are `{"code": ..., "message": ...}` (the spec
//!   also allows RFC 6749's `{error, error_description}`): `invalid_grant` is a dead
//!   grant; `invalid_access_token` and `revoked_access_token` (401) mean re-auth;
//!   `too_many_requests` (429) comes without rate-limit headers.
//! - The API is `api.canva.com/rest/v1/...`; no version header.

use portcullis_sdk::prelude::*;
use serde_json::{Value, json};

struct Canva;

#[portcullis_sdk::provider]
impl Provider for Canva {
    fn defaults() -> Defaults {
        let oauth = OauthDefaults::new(
            "https://www.canva.com/api/oauth/authorize",
            "https://api.canva.com/auth/v1/oauth/token",
        )
        .revocation_url("https://api.canva.com/auth/v1/oauth/revoke")
        .scopes([
            "profile:read",
            "design:meta:read",
            "design:content:read",
            "design:content:write",
            "folder:read",
        ])
        .pkce(PkcePolicy::Required)
        .client_auth(ClientAuth::Basic)
        .grant(TokenGrant::standard("default"))
        .rotates_refresh_token();
        Defaults::new("https://api.canva.com/rest")
            .docs_url("https://www.canva.dev/docs/connect/")
            .mcp_url("https://mcp.canva.com/mcp")
            .oauth(oauth)
            .classify_statuses([400..=599])
            .classify_body_bytes(4 * 1024)
    }

    fn read_token_response(
        _ctx: &Context,
        status: u16,
        body: &str,
    ) -> Result<TokenInfo, TokenError> {
        let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        // Canva's own error shape; RFC 6749's is read by the SDK below.
        if let Some(code) = json.get("code").and_then(Value::as_str) {
            let message = json.get("message").and_then(Value::as_str);
            let dead = matches!(code, "invalid_grant" | "unauthorized_user");
            return Err(portcullis_sdk::token_error("Canva", code, message, dead));
        }
        portcullis_sdk::standard_token_response(status, body)
    }

    fn classify_response(
        _ctx: &Context,
        status: u16,
        headers: &[Header],
        body: &[u8],
    ) -> Classification {
        let json = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
        let code = json.get("code").and_then(Value::as_str).unwrap_or_default();
        let message = json.get("message").and_then(Value::as_str).unwrap_or(code);
        match code {
            "too_many_requests" => {
                Classification::RateLimited(portcullis_sdk::retry_after(headers))
            }
            "invalid_access_token" | "revoked_access_token" => {
                Classification::Reauth(format!("Canva: {message}"))
            }
            _ => portcullis_sdk::classify_by_status(status, headers),
        }
    }

    fn list_tools(_ctx: &Context) -> Vec<Tool> {
        let design_id = json!({"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,50}$", "description": "a design id, e.g. DAFVztcvd9z"});
        vec![
            Tool::new(
                "get_me",
                "The connected Canva user and team ids.",
                json!({"type": "object", "properties": {}}),
            )
            .read_only(),
            Tool::new(
                "search_designs",
                "Find the user's designs by text, best matches first (each with title, page count and edit and view links valid for 30 days).",
                json!({"type": "object", "properties": {
                    "query": {"type": "string", "maxLength": 255},
                    "ownership": {"type": "string", "enum": ["any", "owned", "shared"], "default": "any"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 25},
                    "continuation": {"type": "string", "description": "from a previous page"}
                }}),
            )
            .read_only(),
            Tool::new(
                "get_design",
                "Read one design's metadata.",
                json!({"type": "object", "required": ["design_id"], "properties": {"design_id": design_id}}),
            )
            .read_only(),
            Tool::new(
                "create_design",
                "Create an empty design of a preset type (doc, email, presentation, whiteboard).",
                json!({"type": "object", "required": ["design_type"], "properties": {
                    "design_type": {"type": "string", "enum": ["doc", "email", "presentation", "whiteboard"]},
                    "title": {"type": "string", "minLength": 1, "maxLength": 255}
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
            "get_me" => ToolRequest::get("/v1/users/me"),
            "search_designs" => {
                let ownership =
                    args.one_of("ownership", &["any", "owned", "shared"], Some("any"))?;
                // Relevance needs something to be relevant to.
                let sort = if args.str("query").is_some() {
                    "relevance"
                } else {
                    "modified_descending"
                };
                ToolRequest::get("/v1/designs")
                    .query_opt("query", args.str("query"))
                    .query("ownership", ownership)
                    .query("sort_by", sort)
                    .query("limit", args.u64("limit").unwrap_or(25).clamp(1, 100))
                    .query_opt("continuation", args.str("continuation"))
            }
            "get_design" => {
                let id = args.require_str("design_id")?;
                let ok = !id.is_empty()
                    && id.len() <= 50
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if !ok {
                    return Err(PluginError::InvalidInput(format!(
                        "\"design_id\" must be a Canva design id (letters, digits, '_', '-'), not \"{id}\""
                    )));
                }
                ToolRequest::get(&format!("/v1/designs/{id}"))
            }
            "create_design" => {
                let preset = args.one_of(
                    "design_type",
                    &["doc", "email", "presentation", "whiteboard"],
                    None,
                )?;
                let mut body = json!({
                    "type": "type_and_asset",
                    "design_type": {"type": "preset", "name": preset},
                });
                if let Some(title) = args.str("title") {
                    body["title"] = title.into();
                }
                ToolRequest::post("/v1/designs").json(&body)
            }
            other => return Err(portcullis_sdk::unknown_tool(other)),
        })
    }
}
