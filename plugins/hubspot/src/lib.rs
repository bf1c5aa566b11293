//! HubSpot CRM API, OAuth 2.0 (the date-versioned 2026-03 token endpoints).
//!
//! Facts (sources in `docs/providers.md`; developers.hubspot.com: working-with-oauth,
//! scopes, manage-oauth-tokens (2026-03), the v1 migration guide, the changelogs on token
//! responses and standardized errors, usage guidelines, api-error-responses):
//! - Authorization at `app.hubspot.com/oauth/authorize`; scopes space-separated, and
//!   every app needs the `oauth` scope (an install without it fails with a mismatch).
//! - Tokens at `api.hubapi.com/oauth/2026-03/token` (the v1 endpoints sunset on
//!   2027-02-16): every parameter in the form body, the client secret included; the token
//!   request takes `code_verifier`. Access tokens last 30 minutes (`expires_in: 1800`);
//!   a refresh answer carries a refresh token (kept as it comes; the old one is kept if
//!   one ever does not). The answer names the portal and user (`hub_id`, `user_id`,
//!   numbers) and lists `scopes` as an array.
//! - A dead refresh token: `{"error": "invalid_grant", ..., "status": "BAD_REFRESH_TOKEN"}`
//!   (older answers: only `status`). Revocation at `/oauth/2026-03/token/revoke` (form
//!   `token`, `token_type_hint`, client credentials).
//! - API errors `{"status": "error", "message", "category", ...}`: 401 with
//!   `EXPIRED_AUTHENTICATION` or `INVALID_AUTHENTICATION`; 403 `MISSING_SCOPES`; 429 with
//!   `errorType: RATE_LIMIT` (no `Retry-After` promised). `properties` keeps CRM results
//!   to what a model needs.
//! - HubSpot's remote MCP server: `https://mcp.hubspot.com` (an "MCP auth app", PKCE).

use portcullis_sdk::prelude::*;
use serde_json::{Value, json};

struct HubSpot;

const CONTACT_PROPERTIES: [&str; 6] = [
    "email",
    "firstname",
    "lastname",
    "company",
    "phone",
    "lifecyclestage",
];
const DEAL_PROPERTIES: &str = "dealname,amount,dealstage,closedate,pipeline";

#[portcullis_sdk::provider]
impl Provider for HubSpot {
    fn defaults() -> Defaults {
        let oauth = OauthDefaults::new(
            "https://app.hubspot.com/oauth/authorize",
            "https://api.hubapi.com/oauth/2026-03/token",
        )
        .revocation_url("https://api.hubapi.com/oauth/2026-03/token/revoke")
        .scopes([
            "oauth",
            "crm.objects.contacts.read",
            "crm.objects.contacts.write",
            "crm.objects.deals.read",
        ])
        .pkce(PkcePolicy::Supported)
        .client_auth(ClientAuth::Post)
        .grant(TokenGrant::standard("default"))
        .keeps_refresh_token();
        Defaults::new("https://api.hubapi.com")
            .docs_url("https://developers.hubspot.com/docs/api-reference/overview")
            .mcp_url("https://mcp.hubspot.com")
            .oauth(oauth)
            .classify_statuses([400..=599])
            .classify_body_bytes(2 * 1024)
    }

    fn read_token_response(
        _ctx: &Context,
        status: u16,
        body: &str,
    ) -> Result<TokenInfo, TokenError> {
        let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let text = |k: &str| json.get(k).and_then(Value::as_str);
        let legacy = text("status").filter(|s| *s != "error");
        if let Some(code) = text("error").or(legacy) {
            let detail = text("error_description").or(text("message"));
            let dead = code == "invalid_grant" || legacy == Some("BAD_REFRESH_TOKEN");
            return Err(portcullis_sdk::token_error("HubSpot", code, detail, dead));
        }
        if let (Some(category), false) = (text("category"), json.get("access_token").is_some()) {
            return Err(portcullis_sdk::token_error(
                "HubSpot",
                category,
                text("message"),
                false,
            ));
        }
        portcullis_sdk::standard_token_response(status, body)?;
        // Numbers in the answer; variables are text.
        Ok(["hub_id", "user_id"]
            .iter()
            .fold(TokenInfo::default(), |info, key| {
                match json.get(*key).and_then(Value::as_u64) {
                    Some(n) => info.var(key, &n.to_string()),
                    None => info,
                }
            }))
    }

    fn classify_response(
        _ctx: &Context,
        status: u16,
        headers: &[Header],
        body: &[u8],
    ) -> Classification {
        let json = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
        let field = |k: &str| json.get(k).and_then(Value::as_str);
        if status == 429 || field("errorType") == Some("RATE_LIMIT") {
            return Classification::RateLimited(portcullis_sdk::retry_after(headers));
        }
        match field("category") {
            Some(c @ ("EXPIRED_AUTHENTICATION" | "INVALID_AUTHENTICATION")) => {
                Classification::Reauth(format!("HubSpot: {c}"))
            }
            _ => portcullis_sdk::classify_by_status(status, headers),
        }
    }

    fn list_tools(_ctx: &Context) -> Vec<Tool> {
        let id = json!({"type": "string", "pattern": "^[0-9]{1,20}$"});
        vec![
            Tool::new(
                "search_contacts",
                "Find contacts by name, email, phone or company (a text search over their default properties).",
                json!({"type": "object", "required": ["query"], "properties": {
                    "query": {"type": "string", "minLength": 1, "maxLength": 3000},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
                    "after": {"type": "string", "description": "paging.next.after from a previous page"}
                }}),
            )
            .read_only(),
            Tool::new(
                "get_contact",
                "Read a contact by its id, with the companies it is associated with.",
                json!({"type": "object", "required": ["contact_id"], "properties": {"contact_id": id}}),
            )
            .read_only(),
            Tool::new(
                "list_deals",
                "List deals: name, amount, stage, close date.",
                json!({"type": "object", "properties": {
                    "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                    "after": {"type": "string"}
                }}),
            )
            .read_only(),
            Tool::new(
                "create_note",
                "Add a note to a contact's timeline.",
                json!({"type": "object", "required": ["contact_id", "body", "timestamp"], "properties": {
                    "contact_id": id,
                    "body": {"type": "string", "minLength": 1, "maxLength": 65536},
                    "timestamp": {"type": "string", "description": "when it happened, ISO 8601, e.g. 2026-09-01T10:00:00Z"}
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
            "search_contacts" => {
                let mut body = json!({
                    "query": args.require_str("query")?,
                    "properties": CONTACT_PROPERTIES,
                    "limit": args.u64("limit").unwrap_or(10).clamp(1, 100),
                });
                if let Some(after) = args.str("after") {
                    body["after"] = after.into();
                }
                ToolRequest::post("/crm/v3/objects/contacts/search").json(&body)
            }
            "get_contact" => ToolRequest::get(&format!(
                "/crm/v3/objects/contacts/{}",
                object_id(args, "contact_id")?
            ))
            .query("properties", CONTACT_PROPERTIES.join(","))
            .query("associations", "companies"),
            "list_deals" => ToolRequest::get("/crm/v3/objects/deals")
                .query("limit", args.u64("limit").unwrap_or(20).clamp(1, 100))
                .query("properties", DEAL_PROPERTIES)
                .query_opt("after", args.str("after")),
            "create_note" => ToolRequest::post("/crm/v3/objects/notes").json(&json!({
                "properties": {
                    "hs_timestamp": args.require_str("timestamp")?,
                    "hs_note_body": args.require_str("body")?,
                },
                "associations": [{
                    "to": {"id": object_id(args, "contact_id")?},
                    // HubSpot's note-to-contact association.
                    "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 202}],
                }],
            })),
            other => return Err(portcullis_sdk::unknown_tool(other)),
        })
    }
}

/// A CRM object id, as a path segment.
fn object_id(args: &Args, key: &str) -> Result<String, PluginError> {
    args.digits(key, "a HubSpot object id")
}
