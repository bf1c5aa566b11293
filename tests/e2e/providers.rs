//! Each verified provider as an operator and an agent meet it, through the real host and
//! the registry's component, against a fixture server that answers as the provider's
//! documentation says: connect (the authorize URL the plugin shapes, the code exchange)
//! → a proxied call → a tool call over `/v1/mcp` → refresh (rotation where the provider
//! rotates) → a dead grant → reconnect → disconnect. The golden fixtures under
//! `plugins/<id>/fixtures` check each hook on its own (`plugins.rs`).

use portcullis_e2e::fixture::{Canned, Fixture};
use portcullis_e2e::{client, registry_copy};
use serde_json::{Value, json};

use crate::per_user::{
    fixture_connect, fixture_connector, fixture_host, form, query_param, start_connect, status,
};
use crate::plugins::call_text;

/// An agent connected to the host's `/v1/mcp`.
type McpAgent = rmcp::service::RunningService<rmcp::service::RoleClient, portcullis_e2e::Agent>;

/// Tools `agent` lists.
async fn tool_names(agent: &McpAgent) -> Vec<String> {
    agent
        .list_all_tools()
        .await
        .expect("tools/list")
        .iter()
        .map(|t| t.name.to_string())
        .collect()
}

/// Calls tool `name` with `args` (a JSON object).
async fn call_tool(agent: &McpAgent, name: &str, args: Value) -> rmcp::model::CallToolResult {
    let params = rmcp::model::CallToolRequestParams::new(name.to_owned())
        .with_arguments(args.as_object().cloned().expect("arguments object"));
    agent.call_tool(params).await.expect("tools/call")
}

/// Disconnects the loopback caller from connector `id`.
async fn disconnect(host: &portcullis_e2e::Host, id: &str) {
    let v: Value = client()
        .delete(host.url(&format!("/api/connectors/{id}/connection")))
        .send()
        .await
        .expect("disconnect")
        .json()
        .await
        .expect("json");
    assert_eq!(v["disconnected"], true, "{v}");
}

/// The requests `fx` received at `/revoke`, waiting (up to 10 s) for the first: a
/// disconnect revokes in the background.
async fn revoked_at(fx: &Fixture) -> Vec<portcullis_e2e::fixture::Seen> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fx.seen_at("/revoke").is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let seen = fx.seen_at("/revoke");
    assert!(!seen.is_empty(), "nothing was revoked within 10 s");
    seen
}

/// `GET /v1/connectors/<path>` from loopback: status and JSON body.
async fn call(host: &portcullis_e2e::Host, path: &str) -> (u16, Value) {
    let resp = client()
        .get(host.url(&format!("/v1/connectors/{path}")))
        .send()
        .await
        .expect("proxied call");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// GitHub App user tokens: PKCE on the authorize URL, 8-hour tokens whose single-use
/// refresh token rotates on every refresh, errors inside HTTP 200, GitHub's media type
/// and API version on every call, and the tools reading through GraphQL.
#[tokio::test]
async fn github_connect_call_tools_rotating_refresh_dead_grant_and_disconnect() {
    let reg = registry_copy(&["github"]);
    let gh = Fixture::start().await;
    let app_token = |n: &str| {
        Canned::json(
            200,
            json!({"access_token": format!("ghu_{n}"), "expires_in": 28800,
                   "refresh_token": format!("ghr_{n}"), "refresh_token_expires_in": 15811200,
                   "scope": "", "token_type": "bearer"}),
        )
    };
    gh.on(
        "/token",
        vec![
            app_token("one"),
            app_token("two"),
            // GitHub reports a used or expired refresh token with HTTP 200.
            Canned::json(
                200,
                json!({"error": "bad_refresh_token", "error_description": "The refresh token passed is incorrect or expired."}),
            ),
            app_token("three"),
        ],
    );
    let bad_credentials = Canned::json(
        401,
        json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}),
    );
    let me = Canned::json(200, json!({"login": "octocat", "id": 1}));
    gh.on(
        "/user",
        vec![bad_credentials.clone(), me.clone(), bad_credentials, me],
    );
    gh.json(
        "/graphql",
        200,
        json!({"data": {"search": {"issueCount": 1, "pageInfo": {"hasNextPage": false, "endCursor": "Y3Vyc29yOjE="},
            "nodes": [{"__typename": "Issue", "number": 1347, "title": "Found a bug", "url": "https://github.com/octocat/hello-world/issues/1347",
                       "state": "OPEN", "author": {"login": "octocat"}, "repository": {"nameWithOwner": "octocat/hello-world"}}]}}}),
    );
    let host = fixture_host(
        reg.path(),
        json!({"github": fixture_connector("github", &gh, &["repo", "read:user"])}),
    );

    // Connect: PKCE (S256) and space-separated scopes; the code exchange carries the
    // verifier and the client credentials in the form.
    let auth_url = start_connect(&host, "127.0.0.1", "github").await;
    assert_eq!(
        query_param(&auth_url, "scope").as_deref(),
        Some("repo read:user")
    );
    assert_eq!(
        query_param(&auth_url, "code_challenge_method").as_deref(),
        Some("S256")
    );
    let (s, page) = fixture_connect(&host, "github").await;
    assert_eq!(s, 200, "{page}");
    let exchange = &gh.seen_at("/token")[0];
    let sent = form(&exchange.body);
    assert_eq!(sent["grant_type"], "authorization_code");
    assert_eq!(sent["client_secret"], "fixture-secret");
    assert_eq!(sent["code_verifier"].len(), 43);
    assert_eq!(exchange.headers["accept"], "application/json");
    assert_eq!(status(&host, "127.0.0.1", "github").await, "Ready");

    // A call the provider refuses (401) refreshes and is sent again, with GitHub's
    // media type and API version.
    let (s, v) = call(&host, "github/user").await;
    assert_eq!((s, &v["login"]), (200, &json!("octocat")), "{v}");
    let seen = gh.seen_at("/user");
    assert_eq!(seen[0].headers["authorization"], "Bearer ghu_one");
    assert_eq!(seen[1].headers["authorization"], "Bearer ghu_two");
    assert_eq!(seen[1].headers["accept"], "application/vnd.github+json");
    assert_eq!(seen[1].headers["x-github-api-version"], "2022-11-28");

    // A tool over MCP: GraphQL with only the fields a model needs, the user's token.
    let agent = portcullis_e2e::mcp_agent(&host.url("/v1/mcp")).await;
    let tools = tool_names(&agent).await;
    for t in [
        "github_list_repos",
        "github_search_issues",
        "github_get_issue",
        "github_get_file",
    ] {
        assert!(tools.contains(&t.to_owned()), "{t} missing: {tools:?}");
    }
    let r = call_tool(
        &agent,
        "github_search_issues",
        json!({"query": "repo:octocat/hello-world is:open", "limit": 5}),
    )
    .await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    assert!(call_text(&r).contains("Found a bug"), "{}", call_text(&r));
    let graphql = &gh.seen_at("/graphql")[0];
    assert_eq!(graphql.headers["authorization"], "Bearer ghu_two");
    // GitHub refuses a request without a User-Agent; a tool call has none of its own.
    assert_eq!(graphql.headers["user-agent"], "Portcullis");
    let body: Value = serde_json::from_str(&graphql.body).expect("GraphQL body");
    assert_eq!(
        body["variables"],
        json!({"q": "repo:octocat/hello-world is:open", "n": 5, "after": null})
    );
    assert!(
        body["query"]
            .as_str()
            .is_some_and(|q| q.contains("search("))
    );
    // A bad argument is refused before anything is sent, as an error the model reads.
    let r = call_tool(
        &agent,
        "github_get_file",
        json!({"owner": "octocat", "repo": "hello-world", "path": "../../etc/passwd"}),
    )
    .await;
    assert_eq!(r.is_error, Some(true), "{r:?}");
    assert!(call_text(&r).contains("\"path\""), "{}", call_text(&r));
    agent.cancel().await.expect("close");

    // The next refresh uses the refresh token the last one returned; GitHub says it is
    // dead (inside a 200): the user must connect again.
    let (s, _) = call(&host, "github/user").await;
    assert_ne!(s, 200);
    let refreshes: Vec<String> = gh.seen_at("/token")[1..]
        .iter()
        .map(|s| form(&s.body)["refresh_token"].clone())
        .collect();
    assert_eq!(refreshes, ["ghr_one", "ghr_two"], "rotation");
    assert_eq!(status(&host, "127.0.0.1", "github").await, "Needs auth");

    // Reconnect, call, disconnect.
    assert_eq!(fixture_connect(&host, "github").await.0, 200);
    let (s, v) = call(&host, "github/user").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        gh.seen_at("/user").last().expect("seen").headers["authorization"],
        "Bearer ghu_three"
    );
    disconnect(&host, "github").await;
    assert_eq!(status(&host, "127.0.0.1", "github").await, "Needs auth");
    let (s, _) = call(&host, "github/user").await;
    assert_ne!(s, 200, "no token after disconnecting");
    assert_eq!(gh.seen_at("/user").len(), 4, "nothing sent without a token");

    // Every request, proxied or a tool's, was shaped by the plugin's routes: asked once
    // for the connection's context, never a call per request.
    portcullis_e2e::assert_plugin_calls(
        &host,
        "github",
        &[("request-routes", "ok", 1), ("shape-request", "ok", 0)],
    )
    .await;
}

/// Linear: comma-separated scopes and PKCE on the authorize URL, one GraphQL endpoint
/// whose errors are read from the body (an authentication error refreshes, a rate limit
/// inside HTTP 400 is marked for the agent), rotating refresh tokens, tools over MCP,
/// and a disconnect that revokes the token at Linear's RFC 7009 endpoint.
#[tokio::test]
async fn linear_connect_graphql_errors_rotating_refresh_tools_and_revoking_disconnect() {
    let reg = registry_copy(&["linear"]);
    let lin = Fixture::start().await;
    let token = |n: &str| {
        Canned::json(
            200,
            json!({"access_token": format!("lin_oauth_{n}"), "token_type": "Bearer", "expires_in": 86399,
                   "scope": "read write", "refresh_token": format!("lin_refresh_{n}")}),
        )
    };
    lin.on("/token", vec![token("one"), token("two")]);
    lin.json("/revoke", 200, json!({}));
    let unauthenticated = Canned::json(
        401,
        json!({"errors": [{"message": "Authentication required, not authenticated",
            "extensions": {"type": "authentication error", "code": "AUTHENTICATION_ERROR", "statusCode": 401}}]}),
    );
    let rate_limited = Canned::json(
        400,
        json!({"errors": [{"message": "Rate limit exceeded. Only 5000 requests are allowed per 1 hour and you have made 5000 requests in the last hour.",
            "extensions": {"code": "RATELIMITED", "statusCode": 429}}]}),
    )
    .header("x-ratelimit-requests-remaining", "0");
    let viewer = Canned::json(
        200,
        json!({"data": {"viewer": {"id": "u1", "name": "Mia"}}}),
    );
    let teams = Canned::json(
        200,
        json!({"data": {"teams": {"nodes": [{"id": "team-1", "key": "ENG", "name": "Engineering"}],
            "pageInfo": {"hasNextPage": false, "endCursor": null}}}}),
    );
    lin.on(
        "/graphql",
        vec![unauthenticated, teams, viewer, rate_limited],
    );
    let mut connector = fixture_connector("linear", &lin, &["read", "write"]);
    connector["auth"]["revocation_url"] = json!(format!("{}/revoke", lin.url()));
    let host = fixture_host(reg.path(), json!({"linear": connector}));

    let auth_url = start_connect(&host, "127.0.0.1", "linear").await;
    assert_eq!(
        query_param(&auth_url, "scope").as_deref(),
        Some("read,write")
    );
    assert_eq!(
        query_param(&auth_url, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(fixture_connect(&host, "linear").await.0, 200);

    // A tool over MCP; Linear's authentication error refreshes and the call is sent
    // again with the new token.
    let agent = portcullis_e2e::mcp_agent(&host.url("/v1/mcp")).await;
    let r = call_tool(&agent, "linear_list_teams", json!({})).await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    assert!(call_text(&r).contains("Engineering"), "{}", call_text(&r));
    let seen = lin.seen_at("/graphql");
    assert_eq!(seen[0].headers["authorization"], "Bearer lin_oauth_one");
    assert_eq!(seen[1].headers["authorization"], "Bearer lin_oauth_two");
    assert_eq!(seen[0].body, seen[1].body, "the same request again");
    let body: Value = serde_json::from_str(&seen[1].body).expect("GraphQL body");
    assert!(body["query"].as_str().is_some_and(|q| q.contains("teams(")));
    assert_eq!(body["variables"]["n"], 25);
    assert_eq!(
        form(&lin.seen_at("/token")[1].body)["refresh_token"],
        "lin_refresh_one"
    );
    agent.cancel().await.expect("close");

    // The agent's own GraphQL through the proxy; a rate limit inside HTTP 400 reaches
    // the agent marked as one, and is no reason to refresh.
    let viewer_query = json!({"query": "{ viewer { id name } }"});
    let graphql = || {
        client()
            .post(host.url("/v1/connectors/linear/graphql"))
            .json(&viewer_query)
            .send()
    };
    let resp = graphql().await.expect("graphql");
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["data"]["viewer"]["name"], "Mia", "{v}");
    let resp = graphql().await.expect("graphql");
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.headers()
            .get("portcullis-upstream-class")
            .and_then(|v| v.to_str().ok()),
        Some("rate-limited")
    );
    assert_eq!(lin.seen_at("/token").len(), 2, "a rate limit is no refresh");

    // Disconnect revokes the tokens at Linear (RFC 7009 `token` field).
    disconnect(&host, "linear").await;
    let revoked: Vec<String> = revoked_at(&lin)
        .await
        .iter()
        .map(|s| form(&s.body)["token"].clone())
        .collect();
    assert!(
        revoked
            .iter()
            .any(|t| t == "lin_refresh_two" || t == "lin_oauth_two"),
        "{revoked:?}"
    );
    assert_eq!(status(&host, "127.0.0.1", "linear").await, "Needs auth");
}

/// Zoom: HTTP Basic client auth on every token request, PKCE, one-hour tokens whose
/// refresh token rotates, error code 124 as re-auth, tools on the user's meetings, and a
/// disconnect that revokes at Zoom's revocation endpoint.
#[tokio::test]
async fn zoom_basic_client_auth_code_124_rotation_meeting_tools_and_revocation() {
    let reg = registry_copy(&["zoom"]);
    let zoom = Fixture::start().await;
    let token = |n: &str| {
        Canned::json(
            200,
            json!({"access_token": format!("zoom-at-{n}"), "token_type": "bearer", "refresh_token": format!("zoom-rt-{n}"),
                   "expires_in": 3599, "scope": "user:read:user meeting:read:list_meetings", "api_url": "https://api.zoom.us"}),
        )
    };
    zoom.on("/token", vec![token("1"), token("2"), token("3")]);
    zoom.json("/revoke", 200, json!({"status": "success"}));
    let expired = Canned::json(
        401,
        json!({"code": 124, "message": "Access token is expired."}),
    );
    zoom.on(
        "/users/me",
        vec![
            expired.clone(),
            Canned::json(200, json!({"id": "KDcuGIm1QgePTO8WbOqwIQ", "email": "mia@example.com", "timezone": "Europe/Berlin"})),
        ],
    );
    zoom.json(
        "/meetings/93123456789",
        200,
        json!({"id": 93123456789u64, "topic": "Q1 Planning Meeting", "type": 2,
               "start_url": "https://zoom.us/s/93123456789?zak=eyJzdiI6IjAwMDAwMSJ9.host-credential",
               "join_url": "https://zoom.us/j/93123456789"}),
    );
    zoom.on(
        "/users/me/meetings",
        vec![
            expired,
            Canned::json(200, json!({"page_size": 30, "total_records": 1, "next_page_token": "",
                "meetings": [{"id": 93123456789u64, "topic": "Q1 Planning Meeting", "type": 2, "start_time": "2026-03-15T10:00:00Z", "duration": 60,
                              "join_url": "https://zoom.us/j/93123456789"}]})),
        ],
    );
    let mut connector = fixture_connector(
        "zoom",
        &zoom,
        &["user:read:user", "meeting:read:list_meetings"],
    );
    connector["auth"]["revocation_url"] = json!(format!("{}/revoke", zoom.url()));
    let host = fixture_host(reg.path(), json!({"zoom": connector}));

    let auth_url = start_connect(&host, "127.0.0.1", "zoom").await;
    assert_eq!(
        query_param(&auth_url, "scope").as_deref(),
        Some("user:read:user meeting:read:list_meetings")
    );
    assert!(query_param(&auth_url, "code_challenge").is_some());
    assert_eq!(fixture_connect(&host, "zoom").await.0, 200);
    let exchange = &zoom.seen_at("/token")[0];
    assert!(exchange.headers["authorization"].starts_with("Basic "));
    assert!(!form(&exchange.body).contains_key("client_secret"));

    let agent = portcullis_e2e::mcp_agent(&host.url("/v1/mcp")).await;
    let r = call_tool(&agent, "zoom_get_me", json!({})).await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    assert!(
        call_text(&r).contains("mia@example.com"),
        "{}",
        call_text(&r)
    );
    let r = call_tool(&agent, "zoom_list_meetings", json!({"limit": 5})).await;
    assert!(
        call_text(&r).contains("Q1 Planning Meeting"),
        "{}",
        call_text(&r)
    );
    let listed = &zoom.seen_at("/users/me/meetings")[1];
    assert_eq!(listed.query.as_deref(), Some("type=upcoming&page_size=5"));
    assert_eq!(listed.headers["authorization"], "Bearer zoom-at-3");
    let r = call_tool(&agent, "zoom_get_meeting", json!({"meeting_id": "1; DROP"})).await;
    assert_eq!(r.is_error, Some(true), "{r:?}");
    // The meeting's start_url starts it as its host: the model never gets it.
    let r = call_tool(
        &agent,
        "zoom_get_meeting",
        json!({"meeting_id": "93123456789"}),
    )
    .await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    let meeting: Value = serde_json::from_str(&call_text(&r)).expect("json");
    assert_eq!(meeting["join_url"], "https://zoom.us/j/93123456789");
    assert!(meeting.get("start_url").is_none(), "{meeting}");
    assert!(!call_text(&r).contains("zak="), "{}", call_text(&r));
    agent.cancel().await.expect("close");

    // Each code 124 refreshed with the refresh token the previous refresh returned, with
    // Basic client auth.
    let refreshes = &zoom.seen_at("/token")[1..];
    let used: Vec<String> = refreshes
        .iter()
        .map(|s| form(&s.body)["refresh_token"].clone())
        .collect();
    assert_eq!(used, ["zoom-rt-1", "zoom-rt-2"]);
    assert!(
        refreshes
            .iter()
            .all(|s| s.headers["authorization"].starts_with("Basic "))
    );

    disconnect(&host, "zoom").await;
    let revoke = revoked_at(&zoom).await;
    assert!(revoke[0].headers["authorization"].starts_with("Basic "));
    assert!(form(&revoke[0].body)["token"].starts_with("zoom-"));
}

/// Canva: PKCE (required by Canva) on the authorize URL and the exchange, its own error shape on
/// the token endpoint and the API (a revoked access token refreshes; a dead refresh token
/// asks the user to connect again), and the design tools.
#[tokio::test]
async fn canva_pkce_its_error_shape_a_dead_refresh_token_and_design_tools() {
    let reg = registry_copy(&["canva"]);
    let canva = Fixture::start().await;
    canva.on(
        "/token",
        vec![
            Canned::json(200, json!({"access_token": "canva-at-1", "refresh_token": "canva-rt-1", "token_type": "Bearer", "expires_in": 14400, "scope": "design:meta:read"})),
            Canned::json(400, json!({"code": "invalid_grant", "message": "Invalid refresh token"})),
            Canned::json(200, json!({"access_token": "canva-at-2", "refresh_token": "canva-rt-2", "token_type": "Bearer", "expires_in": 14400, "scope": "design:meta:read design:content:write"})),
        ],
    );
    canva.on(
        "/v1/designs",
        vec![
            Canned::json(200, json!({"items": [{"id": "DAFVztcvd9z", "title": "My summer holiday", "page_count": 5}], "continuation": "RkFGMgXlsVTDbMd"})),
            Canned::json(401, json!({"code": "revoked_access_token", "message": "Access token is revoked"})),
            Canned::json(200, json!({"design": {"id": "DAGirp_1ZUA", "title": "My Holiday Presentation"}})),
        ],
    );
    let host = fixture_host(
        reg.path(),
        json!({"canva": fixture_connector("canva", &canva, &["design:meta:read"])}),
    );
    let auth_url = start_connect(&host, "127.0.0.1", "canva").await;
    assert_eq!(
        query_param(&auth_url, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(fixture_connect(&host, "canva").await.0, 200);
    assert_eq!(
        form(&canva.seen_at("/token")[0].body)["code_verifier"].len(),
        43
    );

    let agent = portcullis_e2e::mcp_agent(&host.url("/v1/mcp")).await;
    let r = call_tool(&agent, "canva_search_designs", json!({"query": "summer"})).await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    assert!(
        call_text(&r).contains("My summer holiday"),
        "{}",
        call_text(&r)
    );
    assert_eq!(
        canva.seen_at("/v1/designs")[0].query.as_deref(),
        Some("query=summer&ownership=any&sort_by=relevance&limit=25")
    );
    // Revoked at Canva: the refresh token is dead too, so the user must connect again.
    let r = call_tool(&agent, "canva_search_designs", json!({})).await;
    assert_eq!(r.is_error, Some(true), "{r:?}");
    assert_eq!(status(&host, "127.0.0.1", "canva").await, "Needs auth");
    assert_eq!(
        form(&canva.seen_at("/token")[1].body)["refresh_token"],
        "canva-rt-1"
    );
    assert_eq!(fixture_connect(&host, "canva").await.0, 200);
    let r = call_tool(
        &agent,
        "canva_create_design",
        json!({"design_type": "presentation", "title": "My Holiday Presentation"}),
    )
    .await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    let created = canva
        .seen_at("/v1/designs")
        .last()
        .cloned()
        .expect("created");
    assert_eq!(created.method, "POST");
    assert_eq!(created.headers["authorization"], "Bearer canva-at-2");
    let body: Value = serde_json::from_str(&created.body).expect("json");
    assert_eq!(
        body,
        json!({"type": "type_and_asset", "design_type": {"type": "preset", "name": "presentation"}, "title": "My Holiday Presentation"})
    );
    agent.cancel().await.expect("close");
}

/// Notion: the token and revocation endpoints take JSON bodies with HTTP Basic client
/// auth and `Notion-Version` (WIT `oauth-extras`); no scopes, no PKCE, `owner=user`;
/// every API call carries the pinned `Notion-Version`; an `unauthorized` answer refreshes
/// (the refresh token rotates) and the tool call is sent again.
#[tokio::test]
async fn notion_json_token_requests_version_header_rotation_tools_and_revocation() {
    let reg = registry_copy(&["notion"]);
    let notion = Fixture::start().await;
    let token = |n: &str| {
        Canned::json(
            200,
            json!({"access_token": format!("ntn_{n}"), "token_type": "bearer", "refresh_token": format!("nrt_{n}"),
                   "bot_id": "b3414d65-1224-4e27-8f5a-cc9d8773d601", "workspace_name": "Ada's Notion Workspace",
                   "workspace_id": "6f2b6e52-7c3d-4b0e-9a43-2c1f0d9e8a11", "workspace_icon": null,
                   "owner": {"type": "user", "user": {"object": "user", "id": "d40e767c-d7af-4b18-a86d-55c61f1e39a4"}},
                   "duplicated_template_id": null, "request_id": "3c90c3cc-0d44-4b50-8888-8dd25736052a"}),
        )
    };
    notion.on("/token", vec![token("one"), token("two")]);
    notion.json(
        "/revoke",
        200,
        json!({"request_id": "3c90c3cc-0d44-4b50-8888-8dd25736052a"}),
    );
    notion.on(
        "/v1/search",
        vec![
            Canned::json(401, json!({"object": "error", "status": 401, "code": "unauthorized", "message": "API token is invalid."})),
            Canned::json(200, json!({"object": "list", "has_more": false, "next_cursor": null, "type": "page_or_data_source",
                "results": [{"object": "page", "id": "59833787-2cf9-4fdf-8782-e53db20768a5", "url": "https://www.notion.so/Roadmap-598337872cf94fdf8782e53db20768a5",
                             "properties": {"title": {"title": [{"plain_text": "Roadmap"}]}}}]})),
        ],
    );
    notion.json(
        "/v1/pages",
        200,
        json!({"object": "page", "id": "c0ffee00-0000-4000-8000-000000000001", "url": "https://www.notion.so/Meeting-notes-c0ffee0000004000800000000000000"}),
    );
    let mut connector = fixture_connector("notion", &notion, &[]);
    connector["auth"]["revocation_url"] = json!(format!("{}/revoke", notion.url()));
    connector["auth"]["auth_params"] = json!({"owner": "user"});
    let host = fixture_host(reg.path(), json!({"notion": connector}));

    let auth_url = start_connect(&host, "127.0.0.1", "notion").await;
    assert_eq!(query_param(&auth_url, "owner").as_deref(), Some("user"));
    assert_eq!(query_param(&auth_url, "code_challenge"), None, "no PKCE");
    let (s, page) = fixture_connect(&host, "notion").await;
    assert_eq!(s, 200, "{page}");
    let exchange = &notion.seen_at("/token")[0];
    assert_eq!(exchange.headers["content-type"], "application/json");
    assert_eq!(exchange.headers["notion-version"], "2026-03-11");
    assert!(exchange.headers["authorization"].starts_with("Basic "));
    let sent: Value = serde_json::from_str(&exchange.body).expect("a JSON token request");
    assert_eq!(sent["grant_type"], "authorization_code");
    assert_eq!(sent["code"], "fixture-code");
    assert!(sent.get("client_secret").is_none(), "{sent}");
    assert!(sent.get("code_verifier").is_none(), "{sent}");

    let agent = portcullis_e2e::mcp_agent(&host.url("/v1/mcp")).await;
    let tools = tool_names(&agent).await;
    for t in ["notion_search", "notion_get_page", "notion_create_page"] {
        assert!(tools.contains(&t.to_owned()), "{t} missing: {tools:?}");
    }
    let r = call_tool(
        &agent,
        "notion_search",
        json!({"query": "roadmap", "only": "page"}),
    )
    .await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    assert!(call_text(&r).contains("Roadmap"), "{}", call_text(&r));
    let searched = notion.seen_at("/v1/search");
    assert_eq!(searched[0].headers["authorization"], "Bearer ntn_one");
    assert_eq!(searched[1].headers["authorization"], "Bearer ntn_two");
    assert_eq!(searched[1].headers["notion-version"], "2026-03-11");
    let refresh: Value =
        serde_json::from_str(&notion.seen_at("/token")[1].body).expect("a JSON refresh");
    assert_eq!(
        refresh,
        json!({"grant_type": "refresh_token", "refresh_token": "nrt_one"})
    );
    let r = call_tool(
        &agent,
        "notion_create_page",
        json!({"parent_page_id": "598337872cf94fdf8782e53db20768a5", "title": "Meeting notes", "content": "Agenda"}),
    )
    .await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    let created: Value = serde_json::from_str(&notion.seen_at("/v1/pages")[0].body).expect("json");
    assert_eq!(
        created["parent"]["page_id"],
        "598337872cf94fdf8782e53db20768a5"
    );
    agent.cancel().await.expect("close");

    disconnect(&host, "notion").await;
    let revoke = revoked_at(&notion).await;
    assert_eq!(revoke[0].headers["content-type"], "application/json");
    assert_eq!(revoke[0].headers["notion-version"], "2026-03-11");
    let revoked: Value = serde_json::from_str(&revoke[0].body).expect("a JSON revocation");
    // Only the member Notion documents: no RFC 7009 hint.
    let token = revoked["token"].as_str().unwrap_or_default();
    assert!(token.ends_with("_two"), "{revoked}");
    assert_eq!(revoked, json!({"token": token}));
}

/// Microsoft 365: Outlook and OneDrive connectors (the provider's picker entries) with
/// one Entra app share a user's connection, and its authorization asks for both sets of
/// scopes; Graph's OData options reach Graph as it documents them; an invalid token
/// refreshes with the client secret in the body and the rotated refresh token.
#[tokio::test]
async fn microsoft_outlook_and_onedrive_share_one_connection_and_query_graph() {
    let reg = registry_copy(&["microsoft"]);
    let ms = Fixture::start().await;
    let token = |n: &str| {
        Canned::json(
            200,
            json!({"token_type": "Bearer", "expires_in": 3599, "scope": "Mail.Read Files.Read User.Read",
                   "access_token": format!("ms-at-{n}"), "refresh_token": format!("ms-rt-{n}")}),
        )
    };
    ms.on("/token", vec![token("1"), token("2")]);
    ms.json(
        "/v1.0/me/messages",
        200,
        json!({"value": [{"subject": "Quarterly report", "from": {"emailAddress": {"address": "ada@example.com"}}, "isRead": false}]}),
    );
    ms.on(
        "/v1.0/me/drive/root/search(q='plan')",
        vec![
            Canned::json(401, json!({"error": {"code": "InvalidAuthenticationToken", "message": "Access token has expired or is not yet valid."}})),
            Canned::json(200, json!({"value": [{"name": "plan.docx", "webUrl": "https://contoso-my.sharepoint.com/plan.docx"}]})),
        ],
    );
    let connector = |scopes: &[&str]| {
        let mut c = fixture_connector("microsoft", &ms, scopes);
        c["auth"]["client_id"] = json!("ms-shared");
        c["auth"]["auth_params"] = json!({"response_mode": "query"});
        c
    };
    let host = fixture_host(
        reg.path(),
        json!({
            "outlook": connector(&["offline_access", "User.Read", "Mail.Read"]),
            "onedrive": connector(&["offline_access", "User.Read", "Files.Read"]),
        }),
    );

    // One sign-in for both, asking for both products' scopes.
    let auth_url = start_connect(&host, "127.0.0.1", "outlook").await;
    let scope = query_param(&auth_url, "scope").expect("scope");
    for s in ["offline_access", "Mail.Read", "Files.Read"] {
        assert!(scope.split(' ').any(|x| x == s), "{s} missing in {scope}");
    }
    assert_eq!(fixture_connect(&host, "outlook").await.0, 200);
    assert_eq!(status(&host, "127.0.0.1", "onedrive").await, "Ready");
    assert_eq!(
        form(&ms.seen_at("/token")[0].body)["client_secret"],
        "fixture-secret"
    );

    let agent = portcullis_e2e::mcp_agent(&host.url("/v1/mcp")).await;
    let r = call_tool(
        &agent,
        "outlook_list_messages",
        json!({"limit": 5, "unread": true}),
    )
    .await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    assert!(
        call_text(&r).contains("Quarterly report"),
        "{}",
        call_text(&r)
    );
    let listed = &ms.seen_at("/v1.0/me/messages")[0];
    let query = listed.query.as_deref().unwrap_or_default();
    assert!(query.starts_with("$top=5&$select="), "{query}");
    assert!(query.contains("$filter=isRead%20eq%20false"), "{query}");
    assert_eq!(listed.headers["authorization"], "Bearer ms-at-1");

    let r = call_tool(&agent, "onedrive_search_files", json!({"query": "plan"})).await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    assert!(call_text(&r).contains("plan.docx"), "{}", call_text(&r));
    let refresh = form(&ms.seen_at("/token")[1].body);
    assert_eq!(refresh["refresh_token"], "ms-rt-1");
    assert_eq!(refresh["client_secret"], "fixture-secret");
    // The shared connection's new token serves Outlook too.
    call_tool(&agent, "outlook_list_messages", json!({})).await;
    assert_eq!(
        ms.seen_at("/v1.0/me/messages")[1].headers["authorization"],
        "Bearer ms-at-2"
    );
    let r = call_tool(
        &agent,
        "outlook_send_mail",
        json!({"to": ["not an address"], "subject": "s", "body": "b"}),
    )
    .await;
    assert_eq!(r.is_error, Some(true), "{r:?}");
    agent.cancel().await.expect("close");

    // A single-tenant app: the tenant input fills both sign-in URLs of a new connector;
    // one that would leave its URL segment is refused and nothing is saved.
    let add = |vars: Value| {
        client()
            .post(host.url("/api/config/connectors"))
            .json(
                &json!({"provider": "microsoft/teams", "id": "Teams", "client_id": "app-1",
                          "client_secret": "s3cret", "provider_vars": vars}),
            )
            .send()
    };
    let resp = add(json!({"tenant": "../evil.example/x"}))
        .await
        .expect("add");
    assert_eq!(resp.status(), 422);
    let refused: Value = resp.json().await.expect("json");
    assert_eq!(refused["error"]["code"], "invalid_config", "{refused}");
    assert!(
        refused.to_string().contains("provider_vars.tenant"),
        "{refused}"
    );
    let resp = add(json!({"tenant": "contoso.onmicrosoft.com"}))
        .await
        .expect("add");
    let status = resp.status();
    let added: Value = resp.json().await.expect("json");
    assert_eq!(status, 201, "{added}");
    assert_eq!(
        added["server"]["auth"]["authorization_url"],
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize",
        "{added}"
    );
    assert_eq!(
        added["server"]["auth"]["token_url"],
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
}

/// Asana: PKCE and the client secret in the body, the user named by the token response,
/// refresh answers without a refresh token (the first is kept and used again), tools
/// trimmed with `opt_fields`, and a disconnect that revokes the refresh token first (the
/// only kind Asana's revocation endpoint takes).
#[tokio::test]
async fn asana_kept_refresh_token_opt_fields_tools_and_refresh_token_revocation() {
    let reg = registry_copy(&["asana"]);
    let asana = Fixture::start().await;
    let user = json!({"id": 4673218951u64, "gid": "4673218951", "name": "Greg Sanchez", "email": "gsanchez@example.com"});
    asana.on(
        "/token",
        vec![
            Canned::json(200, json!({"access_token": "asana-at-1", "expires_in": 3600, "token_type": "bearer", "data": user, "refresh_token": "asana-rt"})),
            Canned::json(200, json!({"access_token": "asana-at-2", "expires_in": 3600, "token_type": "bearer", "data": user})),
            Canned::json(200, json!({"access_token": "asana-at-3", "expires_in": 3600, "token_type": "bearer", "data": user})),
        ],
    );
    asana.json("/revoke", 200, json!({}));
    let expired = Canned::json(
        401,
        json!({"errors": [{"message": "The bearer token has expired. If you have a refresh token, please use it to request a new bearer token, otherwise allow the user to re-authenticate."}]}),
    );
    asana.on(
        "/workspaces",
        vec![
            expired.clone(),
            Canned::json(200, json!({"data": [{"gid": "12345", "name": "Acme", "is_organization": true, "resource_type": "workspace"}], "next_page": null})),
        ],
    );
    asana.on(
        "/tasks/1204567890123456",
        vec![
            expired,
            Canned::json(200, json!({"data": {"gid": "1204567890123456", "name": "Ship the release", "completed": false, "due_on": "2026-12-10"}})),
        ],
    );
    let mut connector = fixture_connector("asana", &asana, &["workspaces:read", "tasks:read"]);
    connector["auth"]["revocation_url"] = json!(format!("{}/revoke", asana.url()));
    let host = fixture_host(reg.path(), json!({"asana": connector}));

    let auth_url = start_connect(&host, "127.0.0.1", "asana").await;
    assert_eq!(
        query_param(&auth_url, "scope").as_deref(),
        Some("workspaces:read tasks:read")
    );
    assert!(query_param(&auth_url, "code_challenge").is_some());
    assert_eq!(fixture_connect(&host, "asana").await.0, 200);
    assert_eq!(
        form(&asana.seen_at("/token")[0].body)["client_secret"],
        "fixture-secret"
    );

    let agent = portcullis_e2e::mcp_agent(&host.url("/v1/mcp")).await;
    let r = call_tool(&agent, "asana_list_workspaces", json!({})).await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    assert!(call_text(&r).contains("Acme"), "{}", call_text(&r));
    assert_eq!(
        asana.seen_at("/workspaces")[1].query.as_deref(),
        Some("opt_fields=name%2Cis_organization&limit=100")
    );
    let r = call_tool(
        &agent,
        "asana_get_task",
        json!({"task": "1204567890123456"}),
    )
    .await;
    assert!(
        call_text(&r).contains("Ship the release"),
        "{}",
        call_text(&r)
    );
    assert_eq!(
        asana.seen_at("/tasks/1204567890123456")[1].headers["authorization"],
        "Bearer asana-at-3"
    );
    // Both refreshes used the one refresh token: Asana's answers carry none.
    let used: Vec<String> = asana.seen_at("/token")[1..]
        .iter()
        .map(|s| form(&s.body)["refresh_token"].clone())
        .collect();
    assert_eq!(used, ["asana-rt", "asana-rt"]);
    agent.cancel().await.expect("close");

    disconnect(&host, "asana").await;
    let revoke = revoked_at(&asana).await;
    assert_eq!(
        form(&revoke[0].body)["token"],
        "asana-rt",
        "the refresh token first"
    );
    assert_eq!(form(&revoke[0].body)["client_secret"], "fixture-secret");
}

/// Dropbox: `token_access_type=offline` on the authorize URL, an expired-token 401 read
/// from its JSON error, a refresh answer without a refresh token, the RPC tools' JSON
/// bodies, and a download whose argument travels in an ASCII `Dropbox-API-Arg` header.
#[tokio::test]
async fn dropbox_offline_access_expired_token_rpc_tools_and_ascii_download_argument() {
    let reg = registry_copy(&["dropbox"]);
    let dbx = Fixture::start().await;
    dbx.on(
        "/token",
        vec![
            Canned::json(200, json!({"access_token": "sl.u.one", "expires_in": 14400, "token_type": "bearer", "refresh_token": "dbx-rt",
                "account_id": "dbid:AAH4f99T0taONIb-OurWxbNQ6ywGRopQngc", "scope": "files.metadata.read files.content.read"})),
            Canned::json(200, json!({"access_token": "sl.u.two", "expires_in": 14400, "token_type": "bearer"})),
        ],
    );
    dbx.on(
        "/2/files/list_folder",
        vec![
            Canned::json(401, json!({"error_summary": "expired_access_token/...", "error": {".tag": "expired_access_token"}})),
            Canned::json(200, json!({"entries": [{".tag": "file", "name": "Prime_Numbers.txt", "path_display": "/Homework/math/Prime_Numbers.txt", "size": 7212}], "cursor": "c1", "has_more": false})),
        ],
    );
    dbx.on(
        "/2/files/download",
        vec![Canned {
            status: 200,
            headers: vec![("content-type".into(), "application/octet-stream".into())],
            body: "2, 3, 5, 7, 11".into(),
        }],
    );
    let mut connector = fixture_connector(
        "dropbox",
        &dbx,
        &["files.metadata.read", "files.content.read"],
    );
    connector["auth"]["auth_params"] = json!({"token_access_type": "offline"});
    let host = fixture_host(reg.path(), json!({"dropbox": connector}));

    let auth_url = start_connect(&host, "127.0.0.1", "dropbox").await;
    assert_eq!(
        query_param(&auth_url, "token_access_type").as_deref(),
        Some("offline")
    );
    assert_eq!(fixture_connect(&host, "dropbox").await.0, 200);

    let agent = portcullis_e2e::mcp_agent(&host.url("/v1/mcp")).await;
    let r = call_tool(
        &agent,
        "dropbox_list_folder",
        json!({"path": "/Homework/math"}),
    )
    .await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    assert!(
        call_text(&r).contains("Prime_Numbers.txt"),
        "{}",
        call_text(&r)
    );
    let listed = &dbx.seen_at("/2/files/list_folder")[1];
    assert_eq!(listed.headers["authorization"], "Bearer sl.u.two");
    let body: Value = serde_json::from_str(&listed.body).expect("json");
    assert_eq!(body, json!({"path": "/Homework/math", "limit": 100}));
    assert_eq!(
        form(&dbx.seen_at("/token")[1].body)["refresh_token"],
        "dbx-rt"
    );

    let r = call_tool(
        &agent,
        "dropbox_read_file",
        json!({"path": "/Homework/math/Primzahlen – Übung.txt"}),
    )
    .await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    assert!(
        call_text(&r).contains("2, 3, 5, 7, 11"),
        "{}",
        call_text(&r)
    );
    let arg = &dbx.seen_at("/2/files/download")[0].headers["dropbox-api-arg"];
    assert!(arg.is_ascii(), "{arg}");
    let decoded: Value = serde_json::from_str(arg).expect("the argument is JSON");
    assert_eq!(decoded["path"], "/Homework/math/Primzahlen – Übung.txt");
    let r = call_tool(&agent, "dropbox_get_metadata", json!({"path": "Homework"})).await;
    assert_eq!(r.is_error, Some(true), "{r:?}");
    agent.cancel().await.expect("close");
}

/// HubSpot: the `oauth` scope and PKCE on the authorize URL, the 2026-03 token endpoint
/// with every parameter in the body, the portal id kept, an expired-token 401 read from
/// its category, a legacy `BAD_REFRESH_TOKEN` answer as a dead grant, and CRM tools.
#[tokio::test]
async fn hubspot_body_parameters_portal_id_expired_token_dead_grant_and_crm_tools() {
    let reg = registry_copy(&["hubspot"]);
    let hs = Fixture::start().await;
    let token = |n: &str| {
        Canned::json(
            200,
            json!({"token_type": "bearer", "token_use": "access_token", "access_token": format!("hs-at-{n}"), "expires_in": 1800,
                   "refresh_token": "na1-ab12-cd34", "hub_id": 62515, "user_id": 123456,
                   "scopes": ["oauth", "crm.objects.contacts.read"]}),
        )
    };
    hs.on(
        "/token",
        vec![
            token("1"),
            token("2"),
            Canned::json(400, json!({"status": "BAD_REFRESH_TOKEN", "message": "missing or invalid refresh token"})),
        ],
    );
    let expired = Canned::json(
        401,
        json!({"status": "error", "message": "The OAuth token used to make this call expired 75 second(s) ago.", "correlationId": "c1", "category": "EXPIRED_AUTHENTICATION"}),
    );
    hs.on(
        "/crm/v3/objects/contacts/search",
        vec![
            expired.clone(),
            Canned::json(200, json!({"total": 1, "results": [{"id": "501", "properties": {"email": "ada@example.com", "firstname": "Ada"}}]})),
            expired,
        ],
    );
    let host = fixture_host(
        reg.path(),
        json!({"hubspot": fixture_connector("hubspot", &hs, &["oauth", "crm.objects.contacts.read"])}),
    );
    let auth_url = start_connect(&host, "127.0.0.1", "hubspot").await;
    assert_eq!(
        query_param(&auth_url, "scope").as_deref(),
        Some("oauth crm.objects.contacts.read")
    );
    assert_eq!(fixture_connect(&host, "hubspot").await.0, 200);
    let exchange = form(&hs.seen_at("/token")[0].body);
    assert_eq!(exchange["client_secret"], "fixture-secret");
    assert_eq!(exchange["code_verifier"].len(), 43);

    let agent = portcullis_e2e::mcp_agent(&host.url("/v1/mcp")).await;
    let r = call_tool(&agent, "hubspot_search_contacts", json!({"query": "ada"})).await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    assert!(
        call_text(&r).contains("ada@example.com"),
        "{}",
        call_text(&r)
    );
    let searched = &hs.seen_at("/crm/v3/objects/contacts/search")[1];
    assert_eq!(searched.headers["authorization"], "Bearer hs-at-2");
    let body: Value = serde_json::from_str(&searched.body).expect("json");
    assert_eq!(body["query"], "ada");
    assert_eq!(
        form(&hs.seen_at("/token")[1].body)["refresh_token"],
        "na1-ab12-cd34"
    );
    // Expired again, and HubSpot says the refresh token is dead: connect again.
    let r = call_tool(&agent, "hubspot_search_contacts", json!({"query": "ada"})).await;
    assert_eq!(r.is_error, Some(true), "{r:?}");
    assert_eq!(status(&host, "127.0.0.1", "hubspot").await, "Needs auth");
    let r = call_tool(
        &agent,
        "hubspot_get_contact",
        json!({"contact_id": "../deals"}),
    )
    .await;
    assert_eq!(r.is_error, Some(true), "{r:?}");
    agent.cancel().await.expect("close");
}

/// Figma: comma-separated scopes, no PKCE, HTTP Basic at the token endpoint; an expired
/// token (403 `Token expired`) refreshes at Figma's **separate refresh endpoint** (WIT
/// `auth-extras`; the connector's `refresh_url` points it at the fixture), whose answers
/// carry no refresh token, so the first one is used again; file tools trimmed by depth.
#[tokio::test]
async fn figma_refreshes_at_its_own_endpoint_keeps_the_refresh_token_and_reads_files() {
    let reg = registry_copy(&["figma"]);
    let figma = Fixture::start().await;
    figma.json(
        "/token",
        200,
        json!({"user_id_string": "1234567890", "access_token": "figu_at1", "expires_in": 7776000, "refresh_token": "figur_rt"}),
    );
    figma.on(
        "/refresh",
        vec![
            Canned::json(
                200,
                json!({"access_token": "figu_at2", "expires_in": 7776000}),
            ),
            Canned::json(
                200,
                json!({"access_token": "figu_at3", "expires_in": 7776000}),
            ),
        ],
    );
    let expired = Canned::json(403, json!({"status": 403, "err": "Token expired"}));
    figma.on(
        "/v1/me",
        vec![
            expired.clone(),
            Canned::json(
                200,
                json!({"id": "1234567890", "handle": "Ada", "email": "ada@example.com"}),
            ),
        ],
    );
    figma.on(
        "/v1/files/FYoTnfNJKNa8hj3iBP2H7B",
        vec![
            expired,
            Canned::json(200, json!({"name": "Checkout flow", "lastModified": "2026-11-30T10:00:00Z", "document": {"children": [{"id": "0:1", "name": "Page 1", "type": "CANVAS"}]}})),
        ],
    );
    let mut connector =
        fixture_connector("figma", &figma, &["current_user:read", "file_content:read"]);
    connector["auth"]["refresh_url"] = json!(format!("{}/refresh", figma.url()));
    let host = fixture_host(reg.path(), json!({"figma": connector}));

    let auth_url = start_connect(&host, "127.0.0.1", "figma").await;
    assert_eq!(
        query_param(&auth_url, "scope").as_deref(),
        Some("current_user:read,file_content:read")
    );
    assert!(query_param(&auth_url, "code_challenge").is_none());
    assert_eq!(fixture_connect(&host, "figma").await.0, 200);
    let exchange = &figma.seen_at("/token")[0];
    assert!(
        exchange.headers["authorization"].starts_with("Basic "),
        "{exchange:?}"
    );

    // 403 "Token expired" → a refresh at /refresh (never /token) → the call again.
    let (status, me) = call(&host, "figma/v1/me").await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["handle"], "Ada");
    assert_eq!(figma.seen_at("/token").len(), 1, "refreshes go to /refresh");
    let refresh = &figma.seen_at("/refresh")[0];
    assert_eq!(form(&refresh.body)["grant_type"], "refresh_token");
    assert_eq!(form(&refresh.body)["refresh_token"], "figur_rt");

    let agent = portcullis_e2e::mcp_agent(&host.url("/v1/mcp")).await;
    let r = call_tool(
        &agent,
        "figma_get_file",
        json!({"file_key": "FYoTnfNJKNa8hj3iBP2H7B", "depth": 1}),
    )
    .await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    assert!(call_text(&r).contains("Checkout flow"), "{}", call_text(&r));
    let reads = figma.seen_at("/v1/files/FYoTnfNJKNa8hj3iBP2H7B");
    assert_eq!(reads[1].query.as_deref(), Some("depth=1"));
    assert_eq!(reads[1].headers["authorization"], "Bearer figu_at3");
    // The refresh answers carried no refresh token: the first was used again.
    let used: Vec<String> = figma
        .seen_at("/refresh")
        .iter()
        .map(|s| form(&s.body)["refresh_token"].clone())
        .collect();
    assert_eq!(used, ["figur_rt", "figur_rt"]);
    let r = call_tool(&agent, "figma_get_file", json!({"file_key": "../v1/me"})).await;
    assert_eq!(r.is_error, Some(true), "{r:?}");
    assert!(call_text(&r).contains("file_key"), "{}", call_text(&r));
    agent.cancel().await.expect("close");
    // A refused token on a write is reported, not sent again: Figma may have acted.
    figma.json(
        "/v1/files/FYoTnfNJKNa8hj3iBP2H7B/comments",
        403,
        json!({"status": 403, "err": "Token expired"}),
    );
    let agent = portcullis_e2e::mcp_agent(&host.url("/v1/mcp")).await;
    let r = call_tool(
        &agent,
        "figma_post_comment",
        json!({"file_key": "FYoTnfNJKNa8hj3iBP2H7B", "message": "Looks good"}),
    )
    .await;
    assert_eq!(r.is_error, Some(true), "{r:?}");
    assert_eq!(
        figma
            .seen_at("/v1/files/FYoTnfNJKNa8hj3iBP2H7B/comments")
            .len(),
        1,
        "a POST is not resent"
    );
    agent.cancel().await.expect("close");
    // Figma has no revocation endpoint: disconnecting forgets the tokens here.
    disconnect(&host, "figma").await;
    assert_eq!(status_of(&host, "figma").await, "Needs auth");

    // A personal access token goes in X-Figma-Token (the plugin's static credential),
    // and no Authorization header is sent.
    let pat = json!({
        "protocol": "http", "url": figma.url(), "provider": "figma",
        "auth": {"type": "api_key", "name": "x-figma-token", "in": "header", "secret": "figd_pat"},
    });
    let host = fixture_host(reg.path(), json!({"figmapat": pat}));
    let (status, me) = call(&host, "figmapat/v1/me").await;
    assert_eq!(status, 200, "{me}");
    let sent = figma.seen_at("/v1/me").last().cloned().expect("sent");
    assert_eq!(sent.headers["x-figma-token"], "figd_pat");
    assert!(!sent.headers.contains_key("authorization"), "{sent:?}");
}

/// The connection status the loopback caller sees for connector `id`.
async fn status_of(host: &portcullis_e2e::Host, id: &str) -> String {
    status(host, "127.0.0.1", id).await
}

/// Discord both ways: a user's OAuth connection (PKCE, Basic client auth, a refresh token
/// that rotates on every refresh, revocation on disconnect) and a bot token sent as
/// `Authorization: Bot` (the plugin's static credential, WIT `auth-extras`), which is what
/// `POST /api/config/connectors` saves when given a token instead of an OAuth client.
/// Every call carries Discord's User-Agent form; messages ping nobody.
#[tokio::test]
async fn discord_user_oauth_with_rotation_and_a_bot_token_sent_as_bot() {
    let reg = registry_copy(&["discord"]);
    let discord = Fixture::start().await;
    discord.on(
        "/token",
        vec![
            Canned::json(200, json!({"access_token": "dc-at-1", "token_type": "Bearer", "expires_in": 604800, "refresh_token": "dc-rt-1", "scope": "identify guilds"})),
            Canned::json(200, json!({"access_token": "dc-at-2", "token_type": "Bearer", "expires_in": 604800, "refresh_token": "dc-rt-2", "scope": "identify guilds"})),
            Canned::json(200, json!({"access_token": "dc-at-3", "token_type": "Bearer", "expires_in": 604800, "refresh_token": "dc-rt-3", "scope": "identify guilds"})),
        ],
    );
    discord.json("/revoke", 200, json!({}));
    let unauthorized = Canned::json(401, json!({"message": "401: Unauthorized", "code": 0}));
    discord.on(
        "/users/@me",
        vec![
            unauthorized.clone(),
            Canned::json(200, json!({"id": "80351110224678912", "username": "nelly"})),
            unauthorized,
            Canned::json(200, json!({"id": "80351110224678912", "username": "nelly"})),
        ],
    );
    discord.json(
        "/channels/41771983423143937/messages",
        200,
        json!({"id": "1120000000000000001", "channel_id": "41771983423143937", "content": "Deployed",
               "author": {"id": "80351110224678912", "username": "portcullis-bot", "avatar": null, "bot": true},
               "embeds": [], "components": [], "flags": 0, "timestamp": "2026-12-04T07:00:00.000000+00:00"}),
    );
    let mut user = fixture_connector("discord", &discord, &["identify", "guilds"]);
    user["auth"]["revocation_url"] = json!(format!("{}/revoke", discord.url()));
    let bot = json!({
        "protocol": "http", "url": discord.url(), "provider": "discord",
        "auth": {"type": "bearer_token", "scheme": "Bot", "secret": "bot-token-1"},
    });
    let host = fixture_host(reg.path(), json!({"discord": user, "discordbot": bot}));

    let auth_url = start_connect(&host, "127.0.0.1", "discord").await;
    assert_eq!(
        query_param(&auth_url, "scope").as_deref(),
        Some("identify guilds")
    );
    assert!(query_param(&auth_url, "code_challenge").is_some());
    assert_eq!(fixture_connect(&host, "discord").await.0, 200);
    assert!(discord.seen_at("/token")[0].headers["authorization"].starts_with("Basic "));

    // Two 401s, two refreshes: each uses the refresh token the one before returned.
    for _ in 0..2 {
        let (status, me) = call(&host, "discord/users/@me").await;
        assert_eq!(status, 200, "{me}");
        assert_eq!(me["username"], "nelly");
    }
    let used: Vec<String> = discord.seen_at("/token")[1..]
        .iter()
        .map(|s| form(&s.body)["refresh_token"].clone())
        .collect();
    assert_eq!(used, ["dc-rt-1", "dc-rt-2"]);
    let me = discord.seen_at("/users/@me");
    assert_eq!(me[3].headers["authorization"], "Bearer dc-at-3");
    assert!(
        me[3].headers["user-agent"].starts_with("DiscordBot ("),
        "{:?}",
        me[3].headers
    );

    // The bot connector: `Authorization: Bot <token>`, and a message that pings nobody.
    let agent = portcullis_e2e::mcp_agent(&host.url("/v1/mcp")).await;
    let r = call_tool(
        &agent,
        "discordbot_send_message",
        json!({"channel_id": "41771983423143937", "content": "Deployed @everyone"}),
    )
    .await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    let sent = &discord.seen_at("/channels/41771983423143937/messages")[0];
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.headers["authorization"], "Bot bot-token-1");
    assert!(sent.headers["user-agent"].starts_with("DiscordBot ("));
    let body: Value = serde_json::from_str(&sent.body).expect("json");
    assert_eq!(body["allowed_mentions"], json!({"parse": []}));
    // An answer bigger than the plugin reshapes is not shown (never the raw answer), and
    // the model is told the call went through.
    let huge: Vec<Value> = (0..6000)
        .map(|i| json!({"id": format!("{}", 1120000000000000000u64 + i), "content": "x".repeat(200)}))
        .collect();
    discord.json("/channels/41771983423143938/messages", 200, json!(huge));
    let big = call_tool(
        &agent,
        "discordbot_read_messages",
        json!({"channel_id": "41771983423143938"}),
    )
    .await;
    assert_ne!(big.is_error, Some(true), "{big:?}");
    assert!(
        call_text(&big).contains("the call went through, but its answer is not shown"),
        "{}",
        call_text(&big)
    );
    // The answer the model gets is trimmed to who said what.
    let answer: Value = serde_json::from_str(&call_text(&r)).expect("json");
    assert_eq!(
        answer,
        json!({"id": "1120000000000000001", "author": {"id": "80351110224678912", "username": "portcullis-bot"},
               "content": "Deployed", "timestamp": "2026-12-04T07:00:00.000000+00:00"})
    );
    agent.cancel().await.expect("close");

    // An operator adding Discord with a token instead of an OAuth client gets a bot
    // connector; the token moves into the vault.
    let resp = client()
        .post(host.url("/api/config/connectors"))
        .json(&json!({"provider": "discord", "id": "Team", "secret": "bot-token-2"}))
        .send()
        .await
        .expect("add");
    assert_eq!(resp.status(), 201);
    let added: Value = resp.json().await.expect("json");
    assert_eq!(added["server"]["auth"]["type"], "bearer_token", "{added}");
    assert_eq!(added["server"]["auth"]["scheme"], "Bot", "{added}");
    assert!(!added.to_string().contains("bot-token-2"), "{added}");
    assert!(added.get("redirect_uri").is_none(), "{added}");
    // A token next to an OAuth client is refused, not half-used: nothing is saved and
    // the token is not echoed.
    let resp = client()
        .post(host.url("/api/config/connectors"))
        .json(&json!({"provider": "discord", "id": "Both", "client_id": "c", "secret": "bot-token-3"}))
        .send()
        .await
        .expect("add");
    assert_eq!(resp.status(), 422);
    let refused: Value = resp.json().await.expect("json");
    assert_eq!(refused["error"]["code"], "invalid_config", "{refused}");
    assert!(refused.to_string().contains("not both"), "{refused}");
    assert!(!refused.to_string().contains("bot-token-3"), "{refused}");
    let config = client()
        .get(host.url("/api/config"))
        .send()
        .await
        .expect("config")
        .text()
        .await
        .expect("text");
    assert!(
        config.contains("\"Team\"") && !config.contains("\"Both\""),
        "{config}"
    );
    assert!(!config.contains("bot-token-3"));

    disconnect(&host, "discord").await;
    let revoke = revoked_at(&discord).await;
    assert_eq!(form(&revoke[0].body)["token"], "dc-rt-3");
}

/// Trello: no OAuth; the member's token is the connector's secret, injected by the host
/// as the `token` query parameter (the plugin's static credential), and the app's API key
/// (a provider variable) is added by the plugin to every request; `fields` keep answers
/// small; a dead token (401 in plain text) reaches the agent as Trello said it.
#[tokio::test]
async fn trello_key_and_token_in_the_query_trimmed_tools_and_a_dead_token() {
    let reg = registry_copy(&["trello"]);
    let trello = Fixture::start().await;
    trello.json(
        "/members/me/boards",
        200,
        json!([{"id": "5abbe4b7ddc1b351ef961414", "name": "Launch", "url": "https://trello.com/b/nC8QJJoZ/launch"}]),
    );
    trello.json(
        "/cards",
        200,
        json!({"id": "5abbe4b7ddc1b351ef961415", "name": "Write the release notes"}),
    );
    trello.on(
        "/members/me",
        vec![Canned {
            status: 401,
            headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
            body: "invalid token".into(),
        }],
    );
    let key = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
    let connector = json!({
        "protocol": "http", "url": trello.url(), "provider": "trello",
        "provider_vars": {"api_key": key},
        "auth": {"type": "api_key", "name": "token", "in": "query", "secret": "member-token"},
    });
    let host = fixture_host(reg.path(), json!({"trello": connector}));

    let agent = portcullis_e2e::mcp_agent(&host.url("/v1/mcp")).await;
    let r = call_tool(&agent, "trello_list_boards", json!({})).await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    assert!(call_text(&r).contains("Launch"), "{}", call_text(&r));
    let seen = &trello.seen_at("/members/me/boards")[0];
    let query = form(seen.query.as_deref().unwrap_or_default());
    assert_eq!(query["key"], key);
    assert_eq!(query["token"], "member-token");
    assert_eq!(query["fields"], "name,url,dateLastActivity");
    assert!(!seen.headers.contains_key("authorization"), "{seen:?}");

    let r = call_tool(
        &agent,
        "trello_create_card",
        json!({"list": "5abbe4b7ddc1b351ef961414", "name": "Write the release notes"}),
    )
    .await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    let created = &trello.seen_at("/cards")[0];
    assert_eq!(created.method, "POST");
    let body: Value = serde_json::from_str(&created.body).expect("json");
    assert_eq!(body["idList"], "5abbe4b7ddc1b351ef961414");
    agent.cancel().await.expect("close");

    let resp = client()
        .get(host.url("/v1/connectors/trello/members/me"))
        .send()
        .await
        .expect("proxied call");
    assert_eq!(resp.status().as_u16(), 401);
    let text = resp.text().await.unwrap_or_default();
    assert!(!text.contains("member-token"), "{text}");
    // The key came from the plugin's route, asked once: no call per request.
    portcullis_e2e::assert_plugin_calls(
        &host,
        "trello",
        &[("request-routes", "ok", 1), ("shape-request", "ok", 0)],
    )
    .await;

    // Without the API key the operator is told what to set, not sent upstream.
    let no_key = json!({
        "protocol": "http", "url": trello.url(), "provider": "trello",
        "auth": {"type": "api_key", "name": "token", "in": "query", "secret": "member-token"},
    });
    let host = fixture_host(reg.path(), json!({"trello": no_key}));
    let before = trello.seen().len();
    let (status, body) = call(&host, "trello/members/me").await;
    assert!(status >= 400, "{status} {body}");
    assert!(body.to_string().contains("provider_vars.api_key"), "{body}");
    assert_eq!(trello.seen().len(), before, "nothing went upstream");
}
