//! GitHub REST and GraphQL APIs, as the connecting user (OAuth app or GitHub App user
//! tokens).
//!
//! Facts (sources in `docs/providers.md` and `shared/research/providers.md` §2.5):
//! - OAuth at `github.com/login/oauth/authorize` and `github.com/login/oauth/access_token`
//!   (docs.github.com "Authorizing OAuth apps"). The token endpoint answers form-encoded
//!   unless asked for JSON (the host asks), and reports errors **with HTTP 200**:
//!   `{"error": "bad_verification_code", "error_description": …}`.
//! - PKCE (S256) is accepted since 2025-07-14 (github.blog changelog) and recommended.
//! - Scopes are space-separated; an OAuth app's token never expires and has no refresh
//!   token. A GitHub App's user token expires after 8 hours (`expires_in: 28800`) and
//!   comes with a refresh token good for 6 months that is **single use**: each refresh
//!   returns a new one (docs.github.com "Refreshing user access tokens"); a used or
//!   expired one answers `bad_refresh_token`.
//! - No RFC 7009 revocation: GitHub revokes with `DELETE /applications/{client_id}/token`
//!   under the app's Basic credentials, so disconnecting forgets the tokens and the user
//!   revokes the grant in their GitHub settings.
//! - REST at `api.github.com` with `Accept: application/vnd.github+json` and
//!   `X-GitHub-Api-Version: 2022-11-28`; GraphQL at `api.github.com/graphql` (on GitHub
//!   Enterprise Server: REST at `<host>/api/v3`, GraphQL at `<host>/api/graphql`).
//! - Rate limits: 429, or 403 with `x-ratelimit-remaining: 0` (primary) or with
//!   `retry-after` or a message naming a secondary rate limit; bad credentials are 401.
//! - Every request needs a `User-Agent` (a 403 otherwise); the plugin adds one when the
//!   agent sent none.
//! - GitHub's remote MCP server: `https://api.githubcopilot.com/mcp/`.
//!
//! The tools read through GraphQL where it lets them ask for only the fields a model
//! needs (a REST search result carries every user object and URL template).

use portcullis_sdk::prelude::*;
use serde_json::{Value, json};

struct GitHub;

const API_VERSION: &str = "2022-11-28";
/// GitHub requires a User-Agent on every API request.
const USER_AGENT: &str = "Portcullis";
/// GitHub's media type, sent when the agent asks for none in particular: without an
/// `accept`, or with one of these.
const MEDIA_TYPE: &str = "application/vnd.github+json";
const ANY_MEDIA_TYPE: &[&str] = &["", "*/*"];
/// Where GitHub serves GraphQL: below the REST root on github.com.
const GRAPHQL: &str = "/graphql";

/// Tools' GraphQL documents; variables carry every argument.
const LIST_REPOS: &str = "query($n: Int!, $after: String) { viewer { repositories(first: $n, after: $after, orderBy: {field: UPDATED_AT, direction: DESC}, affiliations: [OWNER, COLLABORATOR, ORGANIZATION_MEMBER]) { totalCount pageInfo { hasNextPage endCursor } nodes { nameWithOwner description url isPrivate isArchived isFork primaryLanguage { name } stargazerCount updatedAt } } } }";
const SEARCH: &str = "query($q: String!, $n: Int!, $after: String) { search(query: $q, type: ISSUE, first: $n, after: $after) { issueCount pageInfo { hasNextPage endCursor } nodes { __typename ... on Issue { number title url state createdAt updatedAt author { login } repository { nameWithOwner } labels(first: 10) { nodes { name } } comments { totalCount } } ... on PullRequest { number title url state isDraft createdAt updatedAt author { login } repository { nameWithOwner } labels(first: 10) { nodes { name } } comments { totalCount } } } } }";
const GET_ISSUE: &str = "query($owner: String!, $repo: String!, $number: Int!, $comments: Int!) { repository(owner: $owner, name: $repo) { issueOrPullRequest(number: $number) { __typename ... on Issue { number title url state body createdAt closedAt author { login } assignees(first: 10) { nodes { login } } labels(first: 20) { nodes { name } } comments(last: $comments) { totalCount nodes { author { login } body createdAt } } } ... on PullRequest { number title url state isDraft body createdAt mergedAt author { login } baseRefName headRefName additions deletions changedFiles assignees(first: 10) { nodes { login } } labels(first: 20) { nodes { name } } comments(last: $comments) { totalCount nodes { author { login } body createdAt } } } } } }";
const LIST_PULLS: &str = "query($owner: String!, $repo: String!, $states: [PullRequestState!], $n: Int!, $after: String) { repository(owner: $owner, name: $repo) { pullRequests(states: $states, first: $n, after: $after, orderBy: {field: UPDATED_AT, direction: DESC}) { totalCount pageInfo { hasNextPage endCursor } nodes { number title url state isDraft createdAt updatedAt author { login } baseRefName headRefName } } } }";

/// Where GitHub Enterprise Server serves GraphQL: beside its REST root (`/api/v3`), at
/// `/api/graphql`; `None` on github.com, where it is below the REST root.
fn graphql_root(base: &str) -> Option<String> {
    base.strip_suffix("/api/v3")
        .map(|root| format!("{root}/api"))
}

#[portcullis_sdk::provider]
impl Provider for GitHub {
    fn defaults() -> Defaults {
        let oauth = OauthDefaults::new(
            "https://github.com/login/oauth/authorize",
            "https://github.com/login/oauth/access_token",
        )
        .scopes(["repo", "read:user", "read:org"])
        .pkce(PkcePolicy::Supported)
        .client_auth(ClientAuth::Post)
        .grant(TokenGrant::standard("default"))
        // GitHub App user tokens: a new refresh token on every refresh.
        .rotates_refresh_token();
        Defaults::new("https://api.github.com")
            .docs_url("https://docs.github.com/en/rest")
            .mcp_url("https://api.githubcopilot.com/mcp/")
            .oauth(oauth)
            // Only errors need a closer look; a secondary rate limit can come as a 403
            // that only its message names.
            .classify_statuses([400..=599])
            .classify_body_bytes(1024)
    }

    fn shape_request(ctx: &Context, req: OutgoingRequest) -> Result<ShapedRequest, PluginError> {
        let base = ctx.base_url.trim_end_matches('/');
        let below_graphql = req
            .path
            .strip_prefix(GRAPHQL)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        let shaped = match graphql_root(base) {
            Some(root) if below_graphql => {
                ShapedRequest::join(&root, &req.path, req.query.as_deref())
            }
            _ => ShapedRequest::join(base, &req.path, req.query.as_deref()),
        };
        // The agent's own media type (raw file contents, diffs) and version win; "any"
        // (curl's and most HTTP clients' default) gets GitHub's.
        let mut shaped = shaped;
        let accept = portcullis_sdk::header(&req.headers, "accept").map(str::trim);
        if accept.is_none_or(|a| ANY_MEDIA_TYPE.contains(&a)) {
            shaped = shaped.header("accept", MEDIA_TYPE);
        }
        if portcullis_sdk::header(&req.headers, "x-github-api-version").is_none() {
            shaped = shaped.header("x-github-api-version", API_VERSION);
        }
        // GitHub refuses requests without one (403).
        if portcullis_sdk::header(&req.headers, "user-agent").is_none() {
            shaped = shaped.header("user-agent", USER_AGENT);
        }
        Ok(shaped)
    }

    /// `shape_request` as routes: every request shaped by the host, none by a call.
    fn request_routes(ctx: &Context) -> Vec<Route> {
        let base = ctx.base_url.trim_end_matches('/');
        let route = |prefix: &str, target: &str| {
            Route::new(prefix, target)
                .default_header_unless("accept", MEDIA_TYPE, ANY_MEDIA_TYPE)
                .default_header("x-github-api-version", API_VERSION)
                .default_header("user-agent", USER_AGENT)
        };
        let mut routes = vec![route("", base)];
        if let Some(root) = graphql_root(base) {
            routes.push(route(GRAPHQL, &format!("{root}{GRAPHQL}")));
        }
        routes
    }

    fn read_token_response(
        _ctx: &Context,
        status: u16,
        body: &str,
    ) -> Result<TokenInfo, TokenError> {
        // GitHub reports errors inside HTTP 200; anything else reads as RFC 6749.
        let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        if let Some(code) = json.get("error").and_then(Value::as_str) {
            let detail = json.get("error_description").and_then(Value::as_str);
            // A used, expired or revoked refresh token (or code) cannot be retried.
            let dead = matches!(
                code,
                "bad_refresh_token" | "bad_verification_code" | "invalid_grant"
            );
            return Err(portcullis_sdk::token_error("GitHub", code, detail, dead));
        }
        portcullis_sdk::standard_token_response(status, body)
    }

    fn classify_response(
        _ctx: &Context,
        status: u16,
        headers: &[Header],
        body: &[u8],
    ) -> Classification {
        let exhausted = portcullis_sdk::header(headers, "x-ratelimit-remaining")
            .is_some_and(|v| v.trim() == "0");
        let retry_after = portcullis_sdk::header(headers, "retry-after").is_some();
        let says_so = String::from_utf8_lossy(body)
            .to_ascii_lowercase()
            .contains("rate limit");
        if status == 429 || (status == 403 && (exhausted || retry_after || says_so)) {
            return Classification::RateLimited(portcullis_sdk::retry_after(headers));
        }
        portcullis_sdk::classify_by_status(status, headers)
    }

    fn list_tools(_ctx: &Context) -> Vec<Tool> {
        let limit = json!({"type": "integer", "minimum": 1, "maximum": 100, "default": 30});
        let after = json!({"type": "string", "description": "endCursor from a previous page"});
        let owner = json!({"type": "string", "description": "user or organization, e.g. octocat"});
        let repo = json!({"type": "string", "description": "repository name, e.g. hello-world"});
        vec![
            Tool::new(
                "list_repos",
                "List repositories the user owns, collaborates on or sees through an organization, most recently updated first.",
                json!({"type": "object", "properties": {"limit": limit, "after": after}}),
            )
            .read_only(),
            Tool::new(
                "search_issues",
                "Search issues and pull requests with GitHub's search syntax; include is:issue or is:pr, e.g. \"repo:owner/name is:issue is:open label:bug\" or \"is:pr author:@me\".",
                json!({"type": "object", "required": ["query"], "properties": {
                    "query": {"type": "string", "minLength": 1},
                    "limit": limit, "after": after
                }}),
            )
            .read_only(),
            Tool::new(
                "get_issue",
                "Read an issue or pull request with its latest comments.",
                json!({"type": "object", "required": ["owner", "repo", "number"], "properties": {
                    "owner": owner, "repo": repo,
                    "number": {"type": "integer", "minimum": 1},
                    "comments": {"type": "integer", "minimum": 0, "maximum": 100, "default": 20}
                }}),
            )
            .read_only(),
            Tool::new(
                "list_pull_requests",
                "List a repository's pull requests, most recently updated first.",
                json!({"type": "object", "required": ["owner", "repo"], "properties": {
                    "owner": owner, "repo": repo,
                    "state": {"type": "string", "enum": ["open", "closed", "merged", "all"], "default": "open"},
                    "limit": limit, "after": after
                }}),
            )
            .read_only(),
            Tool::new(
                "get_file",
                "Read a file's text from a repository, at a branch, tag or commit (the default branch when none is given).",
                json!({"type": "object", "required": ["owner", "repo", "path"], "properties": {
                    "owner": owner, "repo": repo,
                    "path": {"type": "string", "minLength": 1, "description": "path inside the repository, e.g. src/main.rs"},
                    "ref": {"type": "string"}
                }}),
            )
            .read_only(),
            Tool::new(
                "create_issue",
                "Open an issue in a repository.",
                json!({"type": "object", "required": ["owner", "repo", "title"], "properties": {
                    "owner": owner, "repo": repo,
                    "title": {"type": "string", "minLength": 1},
                    "body": {"type": "string"},
                    "labels": {"type": "array", "items": {"type": "string"}}
                }}),
            ),
        ]
    }

    fn build_tool_call(
        _ctx: &Context,
        name: &str,
        args: &Args,
    ) -> Result<ToolRequest, PluginError> {
        let limit = args.u64("limit").unwrap_or(30).clamp(1, 100);
        Ok(match name {
            "list_repos" => graphql(LIST_REPOS, json!({"n": limit, "after": args.str("after")})),
            "search_issues" => graphql(
                SEARCH,
                json!({"q": args.require_str("query")?, "n": limit, "after": args.str("after")}),
            ),
            "get_issue" => graphql(
                GET_ISSUE,
                json!({
                    "owner": segment(args, "owner")?,
                    "repo": segment(args, "repo")?,
                    "number": number(args)?,
                    "comments": args.u64("comments").unwrap_or(20).min(100),
                }),
            ),
            "list_pull_requests" => {
                let states = match args.one_of(
                    "state",
                    &["open", "closed", "merged", "all"],
                    Some("open"),
                )? {
                    "open" => json!(["OPEN"]),
                    "closed" => json!(["CLOSED"]),
                    "merged" => json!(["MERGED"]),
                    _ => json!(["OPEN", "CLOSED", "MERGED"]),
                };
                graphql(
                    LIST_PULLS,
                    json!({
                        "owner": segment(args, "owner")?,
                        "repo": segment(args, "repo")?,
                        "states": states, "n": limit, "after": args.str("after"),
                    }),
                )
            }
            "get_file" => {
                let path = args.require_str("path")?.trim_matches('/');
                if path.is_empty()
                    || path
                        .split('/')
                        .any(|s| s.is_empty() || s == "." || s == "..")
                {
                    return Err(PluginError::InvalidInput(format!(
                        "\"path\" must be a file's path inside the repository, not \"{path}\""
                    )));
                }
                let encoded: Vec<String> = path
                    .split('/')
                    .map(portcullis_sdk::percent_encode)
                    .collect();
                ToolRequest::get(&format!(
                    "/repos/{}/{}/contents/{}",
                    segment(args, "owner")?,
                    segment(args, "repo")?,
                    encoded.join("/")
                ))
                .query_opt("ref", args.str("ref"))
                // The file's bytes as text, not base64 inside a JSON envelope.
                .header("accept", "application/vnd.github.raw+json")
            }
            "create_issue" => {
                let mut body = json!({"title": args.require_str("title")?});
                if let Some(text) = args.str("body") {
                    body["body"] = text.into();
                }
                if let Some(labels) = args.get("labels") {
                    let labels = labels.as_array().filter(|l| l.iter().all(Value::is_string));
                    let Some(labels) = labels else {
                        return Err(PluginError::InvalidInput(
                            "\"labels\" must be a list of label names".to_owned(),
                        ));
                    };
                    body["labels"] = labels.clone().into();
                }
                ToolRequest::post(&format!(
                    "/repos/{}/{}/issues",
                    segment(args, "owner")?,
                    segment(args, "repo")?
                ))
                .json(&body)
            }
            other => return Err(portcullis_sdk::unknown_tool(other)),
        })
    }
}

fn graphql(query: &str, variables: Value) -> ToolRequest {
    ToolRequest::post("/graphql").json(&json!({"query": query, "variables": variables}))
}

/// An owner or repository name: one path segment GitHub could have made.
fn segment<'a>(args: &'a Args, key: &str) -> Result<&'a str, PluginError> {
    let v = args.require_str(key)?;
    let ok = !v.is_empty()
        && v != "."
        && v != ".."
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(v)
    } else {
        Err(PluginError::InvalidInput(format!(
            "\"{key}\" must be a GitHub {key} name (letters, digits, '-', '_', '.'), not \"{v}\""
        )))
    }
}

fn number(args: &Args) -> Result<u64, PluginError> {
    args.u64("number")
        .filter(|n| *n >= 1 && *n <= i32::MAX as u64)
        .ok_or_else(|| {
            PluginError::InvalidInput(
                "\"number\" is required: the issue or pull request number".to_owned(),
            )
        })
}
