//! Asana API, OAuth 2.0.
//!
//! Facts (sources in `docs/providers.md`; developers.asana.com/docs/oauth, /oauth-scopes,
//! /errors, /rate-limits, and Asana's OpenAPI spec `defs/asana_oas.yaml`):
//! - Authorization at `app.asana.com/-/oauth_authorize`, tokens at `/-/oauth_token` (form
//!   body, client secret in the body); PKCE (`S256`) accepted; scopes space-separated.
//!   An app is registered either with granular scopes (`tasks:read`, ...; it must ask for
//!   them) or with full permissions (`default`; it must not ask for granular ones): the
//!   defaults here are granular, an operator of a full-permissions app sets `default`.
//! - Access tokens last one hour. A refresh answer has no refresh token: the old one
//!   stays. The token response names the user (`data.gid`, `data.name`).
//! - Revocation at `/-/oauth_revoke` takes the **refresh** token (`token` form field) and
//!   deauthorizes its access tokens too.
//! - API at `app.asana.com/api/1.0`, answers wrapped in `{"data": ...}`, errors as
//!   `{"errors": [{"message": ...}]}`; 401 means an expired token, 402 a premium-only
//!   feature, 429 comes with `Retry-After` in seconds. `opt_fields` keeps results to
//!   the fields a model needs.
//! - Asana's remote MCP server: `https://mcp.asana.com/v2/mcp` (it takes tokens of an
//!   "MCP app", not of an API app).

use portcullis_sdk::prelude::*;
use serde_json::{Value, json};

struct Asana;

const TASK_FIELDS: &str =
    "name,completed,due_on,assignee.name,projects.name,permalink_url,modified_at";

#[portcullis_sdk::provider]
impl Provider for Asana {
    fn defaults() -> Defaults {
        let oauth = OauthDefaults::new(
            "https://app.asana.com/-/oauth_authorize",
            "https://app.asana.com/-/oauth_token",
        )
        .revocation_url("https://app.asana.com/-/oauth_revoke")
        .scopes([
            "users:read",
            "workspaces:read",
            "projects:read",
            "tasks:read",
            "tasks:write",
        ])
        .pkce(PkcePolicy::Supported)
        .client_auth(ClientAuth::Post)
        .grant(TokenGrant::standard("default"))
        .keeps_refresh_token();
        Defaults::new("https://app.asana.com/api/1.0")
            .docs_url("https://developers.asana.com/reference/rest-api-reference")
            .mcp_url("https://mcp.asana.com/v2/mcp")
            .oauth(oauth)
        // The host's reading of statuses (401 re-auth, 429 with Retry-After) is
        // Asana's; nothing hides in a success.
    }

    fn read_token_response(
        _ctx: &Context,
        status: u16,
        body: &str,
    ) -> Result<TokenInfo, TokenError> {
        let json = portcullis_sdk::token_json(status, body)?;
        Ok(TokenInfo::default().vars_at(
            &json,
            &[("user_gid", "/data/gid"), ("user_name", "/data/name")],
        ))
    }

    fn list_tools(_ctx: &Context) -> Vec<Tool> {
        let gid =
            |what: &str| json!({"type": "string", "pattern": "^[0-9]{1,30}$", "description": what});
        let limit = json!({"type": "integer", "minimum": 1, "maximum": 100, "default": 25});
        let offset =
            json!({"type": "string", "description": "next_page.offset from a previous page"});
        vec![
            Tool::new(
                "list_workspaces",
                "The workspaces and organizations the user belongs to; the other tools need a workspace gid.",
                json!({"type": "object", "properties": {}}),
            )
            .read_only(),
            Tool::new(
                "my_tasks",
                "The user's incomplete tasks in a workspace.",
                json!({"type": "object", "required": ["workspace"], "properties": {
                    "workspace": gid("a workspace gid from list_workspaces"),
                    "limit": limit, "offset": offset
                }}),
            )
            .read_only(),
            Tool::new(
                "list_projects",
                "The workspace's active projects.",
                json!({"type": "object", "required": ["workspace"], "properties": {
                    "workspace": gid("a workspace gid from list_workspaces"),
                    "limit": limit, "offset": offset
                }}),
            )
            .read_only(),
            Tool::new(
                "get_task",
                "Read a task: name, notes, assignee, due date, projects, link.",
                json!({"type": "object", "required": ["task"], "properties": {"task": gid("a task gid")}}),
            )
            .read_only(),
            Tool::new(
                "create_task",
                "Create a task in a workspace, assigned to the user unless told otherwise.",
                json!({"type": "object", "required": ["workspace", "name"], "properties": {
                    "workspace": gid("a workspace gid from list_workspaces"),
                    "name": {"type": "string", "minLength": 1},
                    "notes": {"type": "string"},
                    "due_on": {"type": "string", "description": "YYYY-MM-DD"},
                    "assign_to_me": {"type": "boolean", "default": true}
                }}),
            ),
        ]
    }

    fn build_tool_call(
        _ctx: &Context,
        name: &str,
        args: &Args,
    ) -> Result<ToolRequest, PluginError> {
        let limit = args.u64("limit").unwrap_or(25).clamp(1, 100);
        Ok(match name {
            "list_workspaces" => ToolRequest::get("/workspaces")
                .query("opt_fields", "name,is_organization")
                .query("limit", 100),
            "my_tasks" => ToolRequest::get("/tasks")
                .query("assignee", "me")
                .query("workspace", gid(args, "workspace")?)
                // Only tasks not completed.
                .query("completed_since", "now")
                .query("opt_fields", TASK_FIELDS)
                .query("limit", limit)
                .query_opt("offset", args.str("offset")),
            "list_projects" => ToolRequest::get("/projects")
                .query("workspace", gid(args, "workspace")?)
                .query("archived", "false")
                .query("opt_fields", "name,permalink_url,owner.name")
                .query("limit", limit)
                .query_opt("offset", args.str("offset")),
            "get_task" => ToolRequest::get(&format!("/tasks/{}", gid(args, "task")?)).query(
                "opt_fields",
                "name,notes,completed,due_on,assignee.name,projects.name,permalink_url,created_at,modified_at",
            ),
            "create_task" => {
                let mut data = json!({
                    "workspace": gid(args, "workspace")?,
                    "name": args.require_str("name")?,
                });
                if let Some(notes) = args.str("notes") {
                    data["notes"] = notes.into();
                }
                if let Some(due) = args.str("due_on") {
                    data["due_on"] = due.into();
                }
                if args.get("assign_to_me").and_then(Value::as_bool) != Some(false) {
                    data["assignee"] = "me".into();
                }
                ToolRequest::post("/tasks")
                    .query("opt_fields", TASK_FIELDS)
                    .json(&json!({"data": data}))
            }
            other => return Err(portcullis_sdk::unknown_tool(other)),
        })
    }
}

/// An Asana gid, as a path segment or query value.
fn gid(args: &Args, key: &str) -> Result<String, PluginError> {
    args.digits(key, "an Asana gid")
}
