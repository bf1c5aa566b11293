//! Microsoft Graph through one Microsoft Entra (v2) connection: Outlook, OneDrive, Teams.
//!
//! Facts (sources in `docs/providers.md`; learn.microsoft.com: "Microsoft identity
//! platform and OAuth 2.0 authorization code flow", "Refresh tokens", "AADSTS error
//! codes", Graph "Throttling guidance" and "Use query parameters"):
//! - Authorization at `login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize` and
//!   `.../token`; `{tenant}` is `common` (work, school and personal accounts),
//!   `organizations`, `consumers`, or a tenant id or domain. A single-tenant app
//!   registered after 2018-10-15 cannot use `common` (`AADSTS50194`), and guests must
//!   sign in at the resource tenant: the `tenant` input (default `common`) fills both
//!   URLs when a connector is made (WIT `auth-extras` url-inputs). A refresh must go to
//!   the tenant the grant came from, which the saved URLs ensure.
//! - Scopes are space-separated Graph permissions (`Mail.Read`); `offline_access` is
//!   what yields a refresh token. PKCE (S256) is accepted; the client secret goes in the
//!   body. A refresh returns a new refresh token that replaces the old (90-day sliding
//!   lifetime; `AADSTS700082` when it expired from inactivity).
//! - `interaction_required` and `consent_required` (MFA, a new consent) also mean the user
//!   must sign in again.
//! - Graph at `graph.microsoft.com/v1.0`; 401 `InvalidAuthenticationToken` means re-auth;
//!   throttling is 429 (and 503/504) with `Retry-After` in seconds. `$select` and `$top`
//!   keep results to what a model needs.
//! - Users meet Outlook, OneDrive and Teams as products of their own: each is a picker
//!   entry with its own scopes; their connectors share one connection per user.

use portcullis_sdk::prelude::*;
use serde_json::{Value, json};

struct Microsoft;

/// Sign-in and basic profile, and a refresh token.
const BASE_SCOPES: [&str; 2] = ["offline_access", "User.Read"];

#[portcullis_sdk::provider]
impl Provider for Microsoft {
    fn defaults() -> Defaults {
        let login = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0";
        let scopes = |more: &[&str]| -> Vec<String> {
            BASE_SCOPES
                .iter()
                .chain(more)
                .map(|s| (*s).to_owned())
                .collect()
        };
        let oauth = OauthDefaults::new(&format!("{login}/authorize"), &format!("{login}/token"))
            .scopes(scopes(&[
                "Mail.Read",
                "Calendars.Read",
                "Files.Read",
                "Team.ReadBasic.All",
            ]))
            .auth_param("response_mode", "query")
            .pkce(PkcePolicy::Supported)
            .client_auth(ClientAuth::Post)
            .grant(TokenGrant::standard("default"))
            .rotates_refresh_token();
        let graph = "https://graph.microsoft.com";
        Defaults::new(graph)
            .docs_url("https://learn.microsoft.com/en-us/graph/overview")
            .oauth(oauth)
            .input(
                Input::new(
                    "tenant",
                    "Where users sign in: common (work, school and personal accounts), organizations, consumers, or your tenant id or domain (required for a single-tenant app).",
                )
                .default_value("common"),
            )
            .oauth_url_input("tenant")
            .entry(
                Entry::new(
                    "outlook",
                    "Outlook",
                    "The user's mail and calendar in Outlook (Microsoft Graph /v1.0/me/messages, /v1.0/me/events).",
                    graph,
                )
                .scopes(scopes(&["Mail.Read", "Mail.Send", "Calendars.Read"])),
            )
            .entry(
                Entry::new(
                    "onedrive",
                    "OneDrive",
                    "The user's files in OneDrive and OneDrive for Business (Microsoft Graph /v1.0/me/drive).",
                    graph,
                )
                .scopes(scopes(&["Files.Read"])),
            )
            .entry(
                Entry::new(
                    "teams",
                    "Microsoft Teams",
                    "The teams and channels the user belongs to (Microsoft Graph /v1.0/me/joinedTeams).",
                    graph,
                )
                .scopes(scopes(&["Team.ReadBasic.All", "Channel.ReadBasic.All"])),
            )
            .classify_statuses([400..=599])
            .classify_body_bytes(4 * 1024)
    }

    fn read_token_response(
        _ctx: &Context,
        status: u16,
        body: &str,
    ) -> Result<TokenInfo, TokenError> {
        let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        if let Some(code) = json.get("error").and_then(Value::as_str) {
            let codes: Vec<u64> = json
                .get("error_codes")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            // Entra's descriptions run to several lines with trace ids; the first line
            // says what happened.
            let description = json
                .get("error_description")
                .and_then(Value::as_str)
                .and_then(|d| d.lines().next());
            if codes.contains(&50194) {
                return Err(TokenError::Provider(
                    "Microsoft: this app is single-tenant (AADSTS50194): make the connector with provider_vars.tenant set to its tenant id or domain (or put it in the connector's authorization_url and token_url instead of \"common\")".to_owned(),
                ));
            }
            let dead = matches!(
                code,
                "invalid_grant" | "interaction_required" | "consent_required"
            );
            return Err(portcullis_sdk::token_error(
                "Microsoft",
                code,
                description,
                dead,
            ));
        }
        portcullis_sdk::standard_token_response(status, body)
    }

    fn classify_response(
        _ctx: &Context,
        status: u16,
        headers: &[Header],
        body: &[u8],
    ) -> Classification {
        let code = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|j| Some(j.pointer("/error/code")?.as_str()?.to_owned()));
        match (status, code.as_deref()) {
            (429, _) => Classification::RateLimited(portcullis_sdk::retry_after(headers)),
            (_, Some("InvalidAuthenticationToken")) => Classification::Reauth(
                "Microsoft Graph: the access token is invalid or expired".to_owned(),
            ),
            _ => portcullis_sdk::classify_by_status(status, headers),
        }
    }

    fn list_tools(_ctx: &Context) -> Vec<Tool> {
        let top = |default: u32, max: u32| json!({"type": "integer", "minimum": 1, "maximum": max, "default": default});
        vec![
            Tool::new(
                "list_messages",
                "The user's latest mail (subject, sender, time, preview), newest first and optionally only unread; or the messages matching a search, best first.",
                json!({"type": "object", "properties": {
                    "limit": top(10, 50),
                    "unread": {"type": "boolean", "default": false},
                    "search": {"type": "string", "description": "words to look for in the messages"}
                }}),
            )
            .read_only(),
            Tool::new(
                "list_events",
                "The user's calendar events between two times, in order.",
                json!({"type": "object", "required": ["start", "end"], "properties": {
                    "start": {"type": "string", "description": "ISO 8601, e.g. 2026-03-15T00:00:00Z"},
                    "end": {"type": "string", "description": "ISO 8601"},
                    "limit": top(25, 100)
                }}),
            )
            .read_only(),
            Tool::new(
                "search_files",
                "Find the user's OneDrive files by name or content.",
                json!({"type": "object", "required": ["query"], "properties": {
                    "query": {"type": "string", "minLength": 1},
                    "limit": top(20, 100)
                }}),
            )
            .read_only(),
            Tool::new(
                "list_teams",
                "The Microsoft Teams teams the user is a member of.",
                json!({"type": "object", "properties": {}}),
            )
            .read_only(),
            Tool::new(
                "send_mail",
                "Send a plain-text email from the user's mailbox (needs Mail.Send).",
                json!({"type": "object", "required": ["to", "subject", "body"], "properties": {
                    "to": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "email"}},
                    "subject": {"type": "string"},
                    "body": {"type": "string"}
                }}),
            ),
        ]
    }

    fn build_tool_call(
        _ctx: &Context,
        name: &str,
        args: &Args,
    ) -> Result<ToolRequest, PluginError> {
        let top = |default: u64, max: u64| args.u64("limit").unwrap_or(default).clamp(1, max);
        Ok(match name {
            "list_messages" => {
                let mut q = vec![
                    ("$top", top(10, 50).to_string()),
                    (
                        "$select",
                        "subject,from,receivedDateTime,bodyPreview,isRead,webLink".to_owned(),
                    ),
                ];
                // Graph ranks search results itself and takes neither $orderby nor
                // $filter with $search.
                match args.str("search") {
                    Some(s) => q.push(("$search", format!("\"{}\"", s.replace('"', "")))),
                    None => {
                        q.push(("$orderby", "receivedDateTime desc".to_owned()));
                        if args.get("unread").and_then(Value::as_bool) == Some(true) {
                            q.push(("$filter", "isRead eq false".to_owned()));
                        }
                    }
                }
                with_odata(ToolRequest::get("/v1.0/me/messages"), &q)
            }
            "list_events" => with_odata(
                ToolRequest::get("/v1.0/me/calendarView"),
                &[
                    ("startDateTime", args.require_str("start")?.to_owned()),
                    ("endDateTime", args.require_str("end")?.to_owned()),
                    ("$top", top(25, 100).to_string()),
                    (
                        "$select",
                        "subject,start,end,location,organizer,webLink".to_owned(),
                    ),
                    ("$orderby", "start/dateTime".to_owned()),
                ],
            ),
            "search_files" => {
                // An OData string literal: a quote is written twice.
                let q = args.require_str("query")?.replace('\'', "''");
                let path = format!(
                    "/v1.0/me/drive/root/search(q='{}')",
                    portcullis_sdk::percent_encode(&q)
                );
                with_odata(
                    ToolRequest::get(&path),
                    &[
                        ("$top", top(20, 100).to_string()),
                        (
                            "$select",
                            "name,webUrl,size,lastModifiedDateTime,file,folder".to_owned(),
                        ),
                    ],
                )
            }
            "list_teams" => with_odata(
                ToolRequest::get("/v1.0/me/joinedTeams"),
                &[("$select", "id,displayName,description".to_owned())],
            ),
            "send_mail" => {
                let to = args
                    .get("to")
                    .and_then(Value::as_array)
                    .filter(|a| {
                        !a.is_empty()
                            && a.iter()
                                .all(|v| v.as_str().is_some_and(|s| s.contains('@')))
                    })
                    .ok_or_else(|| {
                        PluginError::InvalidInput(
                            "\"to\" must be a list of email addresses".to_owned(),
                        )
                    })?;
                let recipients: Vec<Value> = to
                    .iter()
                    .map(|a| json!({"emailAddress": {"address": a}}))
                    .collect();
                ToolRequest::post("/v1.0/me/sendMail").json(&json!({
                    "message": {
                        "subject": args.require_str("subject")?,
                        "body": {"contentType": "Text", "content": args.require_str("body")?},
                        "toRecipients": recipients,
                    },
                    "saveToSentItems": true,
                }))
            }
            other => return Err(portcullis_sdk::unknown_tool(other)),
        })
    }
}

/// Adds OData query options as Graph documents them (`$top`, not `%24top`), values
/// percent-encoded.
fn with_odata(mut req: ToolRequest, options: &[(&str, String)]) -> ToolRequest {
    let query: Vec<String> = options
        .iter()
        .map(|(k, v)| format!("{k}={}", portcullis_sdk::percent_encode(v)))
        .collect();
    req.query = Some(query.join("&"));
    req
}
