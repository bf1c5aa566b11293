//! Linear's GraphQL API, OAuth 2.0 with rotating refresh tokens.
//!
//! Facts (sources in `docs/providers.md`; linear.app/developers/oauth-2-0-authentication,
//! /graphql, /rate-limiting):
//! - OAuth at `linear.app/oauth/authorize` and `api.linear.app/oauth/token` (form body).
//!   Scopes are requested **comma-separated** (`read`, `write`, `issues:create`,
//!   `comments:create`, `admin`); the response's `scope` is space-separated, or a list
//!   for apps created before December 2023. PKCE (`S256`) is accepted.
//! - Access tokens last 24 hours (`expires_in: 86399`); every refresh returns a new
//!   refresh token (all apps since 2026-04-01). Revocation at `api.linear.app/oauth/revoke`
//!   with the token in a `token` form field (RFC 7009).
//! - One endpoint, `POST api.linear.app/graphql`. GraphQL can fail inside a 200; errors
//!   carry `extensions.code` (`AUTHENTICATION_ERROR`, `FORBIDDEN`, `RATELIMITED`, …) and
//!   `extensions.type` (`authentication error`, `ratelimited`, …). A rate limit comes as
//!   HTTP 400 with `RATELIMITED` (its reset headers are epoch milliseconds), so errors
//!   are classified by their code, not their status.
//! - Linear's remote MCP server: `https://mcp.linear.app/mcp`.

use portcullis_sdk::prelude::*;
use serde_json::{Value, json};

struct Linear;

const LIST_TEAMS: &str = "query($n: Int!, $after: String) { teams(first: $n, after: $after) { nodes { id key name description } pageInfo { hasNextPage endCursor } } }";
const SEARCH: &str = "query($term: String!, $n: Int!, $after: String, $teamId: String) { searchIssues(term: $term, first: $n, after: $after, teamId: $teamId) { totalCount nodes { id identifier title url priorityLabel state { name type } assignee { name } team { key } updatedAt } pageInfo { hasNextPage endCursor } } }";
const GET_ISSUE: &str = "query($id: String!) { issue(id: $id) { id identifier title description url priorityLabel estimate dueDate createdAt updatedAt state { name type } assignee { name email } creator { name } team { key name } project { name } labels { nodes { name } } comments(first: 20) { nodes { body createdAt user { name } } } } }";
const MY_ISSUES: &str = "query($n: Int!, $after: String) { viewer { name assignedIssues(first: $n, after: $after, orderBy: updatedAt, filter: {state: {type: {nin: [\"completed\", \"canceled\"]}}}) { nodes { id identifier title url priorityLabel state { name } team { key } updatedAt } pageInfo { hasNextPage endCursor } } } }";
const CREATE_ISSUE: &str = "mutation($input: IssueCreateInput!) { issueCreate(input: $input) { success issue { id identifier title url } } }";
const ADD_COMMENT: &str = "mutation($input: CommentCreateInput!) { commentCreate(input: $input) { success comment { id url } } }";

#[portcullis_sdk::provider]
impl Provider for Linear {
    fn defaults() -> Defaults {
        let oauth = OauthDefaults::new(
            "https://linear.app/oauth/authorize",
            "https://api.linear.app/oauth/token",
        )
        .revocation_url("https://api.linear.app/oauth/revoke")
        .scopes(["read", "write"])
        .scope_separator(",")
        .pkce(PkcePolicy::Supported)
        .client_auth(ClientAuth::Post)
        .grant(TokenGrant::standard("default"))
        .rotates_refresh_token();
        Defaults::new("https://api.linear.app")
            .docs_url("https://linear.app/developers/graphql")
            .mcp_url("https://mcp.linear.app/mcp")
            .oauth(oauth)
            // Errors only; their code is in the body.
            .classify_statuses([400..=599])
            .classify_body_bytes(8 * 1024)
    }

    fn classify_response(
        _ctx: &Context,
        status: u16,
        headers: &[Header],
        body: &[u8],
    ) -> Classification {
        let json = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
        let errors = json.get("errors").and_then(Value::as_array);
        for e in errors.into_iter().flatten() {
            let ext = e.get("extensions");
            let code = ext
                .and_then(|x| x.get("code"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            let kind = ext
                .and_then(|x| x.get("type"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            if code == "RATELIMITED" || kind == "ratelimited" {
                return Classification::RateLimited(portcullis_sdk::retry_after(headers));
            }
            if code == "AUTHENTICATION_ERROR" || kind == "authentication error" {
                let message = e
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("authentication required");
                return Classification::Reauth(format!("Linear: {message}"));
            }
        }
        portcullis_sdk::classify_by_status(status, headers)
    }

    fn list_tools(_ctx: &Context) -> Vec<Tool> {
        let limit = json!({"type": "integer", "minimum": 1, "maximum": 100, "default": 25});
        let after = json!({"type": "string", "description": "endCursor from a previous page"});
        vec![
            Tool::new(
                "list_teams",
                "List the workspace's teams (id, key such as ENG, name); create_issue needs a team id.",
                json!({"type": "object", "properties": {"limit": limit, "after": after}}),
            )
            .read_only(),
            Tool::new(
                "search_issues",
                "Search issues by text, optionally in one team, best matches first.",
                json!({"type": "object", "required": ["term"], "properties": {
                    "term": {"type": "string", "minLength": 1},
                    "team_id": {"type": "string", "description": "a team id from list_teams"},
                    "limit": limit, "after": after
                }}),
            )
            .read_only(),
            Tool::new(
                "get_issue",
                "Read an issue with its description and first comments.",
                json!({"type": "object", "required": ["id"], "properties": {
                    "id": {"type": "string", "description": "the issue's identifier (ENG-123) or id"}
                }}),
            )
            .read_only(),
            Tool::new(
                "list_my_issues",
                "List open issues assigned to the connected user, most recently updated first.",
                json!({"type": "object", "properties": {"limit": limit, "after": after}}),
            )
            .read_only(),
            Tool::new(
                "create_issue",
                "Create an issue in a team (it lands in the team's backlog or triage).",
                json!({"type": "object", "required": ["team_id", "title"], "properties": {
                    "team_id": {"type": "string", "description": "a team id from list_teams"},
                    "title": {"type": "string", "minLength": 1},
                    "description": {"type": "string", "description": "Markdown"},
                    "priority": {"type": "integer", "minimum": 0, "maximum": 4, "description": "0 none, 1 urgent, 2 high, 3 medium, 4 low"}
                }}),
            ),
            Tool::new(
                "add_comment",
                "Comment on an issue.",
                json!({"type": "object", "required": ["issue_id", "body"], "properties": {
                    "issue_id": {"type": "string", "description": "the issue's identifier (ENG-123) or id"},
                    "body": {"type": "string", "minLength": 1, "description": "Markdown"}
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
        let after = args.str("after");
        Ok(match name {
            "list_teams" => graphql(LIST_TEAMS, json!({"n": limit, "after": after})),
            "search_issues" => graphql(
                SEARCH,
                json!({"term": args.require_str("term")?, "n": limit, "after": after,
                       "teamId": args.str("team_id")}),
            ),
            "get_issue" => graphql(GET_ISSUE, json!({"id": args.require_str("id")?})),
            "list_my_issues" => graphql(MY_ISSUES, json!({"n": limit, "after": after})),
            "create_issue" => {
                let mut input = json!({
                    "teamId": args.require_str("team_id")?,
                    "title": args.require_str("title")?,
                });
                if let Some(d) = args.str("description") {
                    input["description"] = d.into();
                }
                if let Some(p) = args.get("priority") {
                    match p.as_u64().filter(|p| *p <= 4) {
                        Some(p) => input["priority"] = p.into(),
                        None => {
                            return Err(PluginError::InvalidInput(
                                "\"priority\" must be 0 (none) to 4 (low)".to_owned(),
                            ));
                        }
                    }
                }
                graphql(CREATE_ISSUE, json!({"input": input}))
            }
            "add_comment" => graphql(
                ADD_COMMENT,
                json!({"input": {"issueId": args.require_str("issue_id")?, "body": args.require_str("body")?}}),
            ),
            other => return Err(portcullis_sdk::unknown_tool(other)),
        })
    }
}

fn graphql(query: &str, variables: Value) -> ToolRequest {
    ToolRequest::post("/graphql").json(&json!({"query": query, "variables": variables}))
}
