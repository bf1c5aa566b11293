//! `/v1/mcp` with rmcp on both sides: an rmcp MCP server as the upstream (behind bearer,
//! API-key and client-credentials connectors) and rmcp's client as the agent. Naming and
//! prefix stripping, grants at list and call time, discovery failure and recovery,
//! `list_changed`, large results, and the seed's bare curl request.

use std::time::{Duration, Instant};

use portcullis_e2e::fixture::Fixture;
use portcullis_e2e::mcp_server::{Expect, McpServer};
use portcullis_e2e::whois::Whois;
use portcullis_e2e::{Host, client, client_from, grant, mcp_agent};
use rmcp::model::{CallToolRequestParams, ReadResourceRequestParams};
use serde_json::{Value, json};

use crate::loopback_config;

/// `{id: connector}`: an MCP connector at `url` with a bearer token.
fn bearer(id: &str, url: &str, secret: &str) -> Value {
    json!({id: bearer_connector(url, secret)})
}

fn bearer_connector(url: &str, secret: &str) -> Value {
    json!({"protocol": "mcp", "url": url, "auth": {"type": "bearer_token", "secret": secret}})
}

fn config(connectors: Value, grants: Value, poll_secs: u64) -> String {
    let mut c: Value = serde_json::from_str(&loopback_config(connectors, grants)).expect("json");
    c["mcp"] = json!({"poll_interval_secs": poll_secs});
    c.to_string()
}

/// An MCP server that answers only requests carrying `Authorization: Bearer <token>`.
async fn upstream_with_token(token: &str) -> McpServer {
    McpServer::start(Expect::Header(
        "authorization".into(),
        format!("Bearer {token}"),
    ))
    .await
}

fn everything() -> Value {
    json!([grant("(loopback)", &["**"], true)])
}

fn names(tools: &[rmcp::model::Tool]) -> Vec<String> {
    tools.iter().map(|t| t.name.to_string()).collect()
}

/// Lists tools until `pred` holds (discovery runs in the background), for at most 15 s.
async fn tools_until(
    agent: &rmcp::service::Peer<rmcp::service::RoleClient>,
    pred: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = names(&agent.list_all_tools().await.expect("tools/list"));
        if pred(&now) || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A bare JSON-RPC POST to `/v1/mcp`, as curl sends it (no session).
async fn post_raw(host: &Host, host_header: Option<&str>, accept: &str) -> reqwest::Response {
    let mut req = client()
        .post(host.url("/v1/mcp"))
        .header("content-type", "application/json")
        .header("accept", accept);
    if let Some(h) = host_header {
        req = req.header("host", h);
    }
    req.body(r#"{"jsonrpc": "2.0", "method": "tools/list", "id": 1}"#)
        .send()
        .await
        .expect("post")
}

const BOTH: &str = "application/json, text/event-stream";

fn call(name: &str, args: Value) -> CallToolRequestParams {
    let mut p = CallToolRequestParams::new(name.to_owned());
    if let Value::Object(m) = args {
        p = p.with_arguments(m);
    }
    p
}

fn text_of(r: &rmcp::model::CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect()
}

#[tokio::test]
async fn tools_resources_and_templates_are_prefixed_and_forwarded_stripped() {
    let up = upstream_with_token("tok-1").await;
    let host = Host::start(&config(
        bearer("notes", &up.url(), "tok-1"),
        everything(),
        60,
    ));
    let agent = mcp_agent(&host.url("/v1/mcp")).await;
    let tools = tools_until(&agent, |t| t.contains(&"notes_echo".into())).await;
    for expected in [
        "aperture_list_connectors",
        "notes_echo",
        "notes_big",
        "notes_secret",
        "notes_add_tool",
    ] {
        assert!(
            tools.contains(&expected.to_owned()),
            "{expected} missing from {tools:?}"
        );
    }
    assert!(
        !tools.iter().any(|t| t.contains(' ')),
        "invalid names are left out: {tools:?}"
    );
    host.wait_for_log("upstream tool left out").await;

    let r = agent
        .call_tool(call("notes_echo", json!({"text": "hi"})))
        .await
        .expect("call");
    assert_eq!(text_of(&r), "echo: hi");
    assert_eq!(up.calls(), ["echo"], "the prefix is stripped upstream");

    let resources = agent.list_all_resources().await.expect("resources/list");
    let uris: Vec<&str> = resources.iter().map(|r| r.uri.as_str()).collect();
    assert_eq!(
        uris,
        ["notes-mem://notes/readme", "notes-mem://private/keys"]
    );
    let templates = agent
        .list_all_resource_templates()
        .await
        .expect("templates");
    assert_eq!(templates[0].uri_template, "notes-mem://notes/{id}");

    let read = |uri: &str| {
        let agent = agent.clone();
        let uri = uri.to_owned();
        async move {
            agent
                .read_resource(ReadResourceRequestParams::new(uri))
                .await
        }
    };
    let r = read("notes-mem://notes/readme").await.expect("read");
    let json = serde_json::to_value(&r).expect("ser");
    assert_eq!(json["contents"][0]["uri"], "notes-mem://notes/readme");
    assert_eq!(
        json["contents"][0]["text"],
        "contents of mem://notes/readme"
    );
    let r = read("notes-mem://notes/42")
        .await
        .expect("a URI from the granted template");
    assert_eq!(
        serde_json::to_value(&r).expect("ser")["contents"][0]["text"],
        "contents of mem://notes/42"
    );
    assert!(read("other-mem://x").await.is_err(), "unknown connector");
    // A template grant covers exactly what the template makes: one `{id}`, no more
    // segments, no way around through dot segments.
    for uri in [
        "notes-mem://notes/a/b",
        "notes-mem://notes/../private/keys",
        "notes-mem://notes/%2e%2e",
        "notes-mem://elsewhere/42",
    ] {
        let err = read(uri).await.expect_err(uri);
        assert!(err.to_string().contains("not available"), "{uri}: {err}");
    }

    // Ask Portcullis about its HTTP connectors: none here.
    let r = agent
        .call_tool(call("aperture_list_connectors", json!({})))
        .await
        .expect("builtin");
    assert!(
        text_of(&r).starts_with("Aperture HTTP API Connectors"),
        "{}",
        text_of(&r)
    );
    agent.cancel().await.expect("close");
}

#[tokio::test]
async fn grants_decide_listing_and_calls_alike() {
    let up = upstream_with_token("tok-1").await;
    let grants = json!([grant(
        "(loopback)",
        &[
            "notes/tools/echo",
            "notes/tools/add_*",
            "notes/resources/mem:%2F%2Fnotes%2F*"
        ],
        false
    )]);
    let host = Host::start(&config(bearer("notes", &up.url(), "tok-1"), grants, 60));
    let agent = mcp_agent(&host.url("/v1/mcp")).await;
    let tools = tools_until(&agent, |t| t.contains(&"notes_echo".into())).await;
    assert_eq!(
        tools,
        ["notes_echo", "notes_add_tool"],
        "no aperture grant, no secret grant"
    );

    let err = agent
        .call_tool(call("notes_secret", json!({})))
        .await
        .expect_err("an ungranted tool by its exact name is refused");
    assert!(err.to_string().contains("not available"), "{err}");
    assert!(
        agent
            .call_tool(call("aperture_list_connectors", json!({})))
            .await
            .is_err()
    );
    assert!(
        !up.calls().contains(&"secret".to_owned()),
        "never reached the upstream"
    );

    let resources = agent.list_all_resources().await.expect("resources");
    let uris: Vec<&str> = resources.iter().map(|r| r.uri.as_str()).collect();
    assert_eq!(uris, ["notes-mem://notes/readme"]);
    assert!(
        agent
            .list_all_resource_templates()
            .await
            .expect("templates")
            .is_empty()
    );
    let read = |uri: &str| agent.read_resource(ReadResourceRequestParams::new(uri.to_owned()));
    assert!(read("notes-mem://notes/readme").await.is_ok());
    assert!(
        read("notes-mem://private/keys").await.is_err(),
        "not granted"
    );
    assert!(
        read("notes-mem://notes/42").await.is_err(),
        "templates not granted"
    );
    agent.cancel().await.expect("close");
}

#[tokio::test]
async fn a_template_grant_reads_what_the_template_makes_but_no_listed_resource() {
    let up = McpServer::start(Expect::Nothing).await;
    let connectors = json!({"notes": {"protocol": "mcp", "url": up.url()}});
    let grants = json!([grant(
        "(loopback)",
        &["notes/tools/echo", "notes/templates/*"],
        false
    )]);
    let host = Host::start(&config(connectors, grants, 60));
    let agent = mcp_agent(&host.url("/v1/mcp")).await;
    tools_until(&agent, |t| t.contains(&"notes_echo".into())).await;
    let read = |uri: &str| agent.read_resource(ReadResourceRequestParams::new(uri.to_owned()));
    let r = read("notes-mem://notes/42")
        .await
        .expect("made by the template");
    assert_eq!(
        serde_json::to_value(&r).expect("ser")["contents"][0]["text"],
        "contents of mem://notes/42"
    );
    // `mem://notes/readme` is listed: it needs its own grant, under any spelling.
    for uri in ["notes-mem://notes/readme", "notes-mem://notes/readm%65"] {
        let err = read(uri).await.expect_err(uri);
        assert!(err.to_string().contains("not available"), "{uri}: {err}");
    }
    agent.cancel().await.expect("close");
}

#[tokio::test]
async fn aperture_list_connectors_names_what_the_proxy_lets_you_reach() {
    let connectors = json!({
        "github": {"protocol": "http", "url": "https://api.github.com", "description": "GitHub"},
        "jira": {"protocol": "http", "url": "https://jira.example.com"},
        "stripe": {"protocol": "http", "url": "https://api.stripe.com/v1"},
    });
    let grants = json!([grant(
        "(loopback)",
        &["aperture/**", "github/proxy/repos/**", "jira/tools/*"],
        false
    )]);
    let host = Host::start(&config(connectors, grants, 60));
    let agent = mcp_agent(&host.url("/v1/mcp")).await;
    let r = agent
        .call_tool(call("aperture_list_connectors", json!({})))
        .await
        .expect("builtin");
    let text = text_of(&r);
    assert!(
        text.lines().any(|l| l == "## github"),
        "a partial proxy grant is a proxy grant:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == "- Upstream: https://api.github.com"),
        "{text}"
    );
    assert!(
        !text.contains("## jira"),
        "a tool grant does not open the proxy:\n{text}"
    );
    assert!(!text.contains("## stripe"), "not granted:\n{text}");
    agent.cancel().await.expect("close");
}

#[tokio::test]
async fn api_key_and_client_credentials_connectors_list_and_call() {
    let keyed = McpServer::start(Expect::Header("x-api-key".into(), "k-123".into())).await;
    let cc = upstream_with_token("cc-token").await;
    let tokens = Fixture::start().await;
    tokens.json(
        "/oauth2/token",
        200,
        json!({"access_token": "cc-token", "token_type": "Bearer", "expires_in": 3600}),
    );
    let connectors = json!({
        "keyed": {"protocol": "mcp", "url": keyed.url(),
                  "auth": {"type": "api_key", "secret": "k-123", "name": "X-Api-Key", "in": "header"}},
        "analytics": {"protocol": "mcp", "url": cc.url(),
                  "auth": {"type": "oauth2_client_credentials", "client_id": "aperture-analytics",
                           "client_secret": "secret-example",
                           "token_url": format!("{}/oauth2/token", tokens.url()),
                           "scopes": ["read:data"]}},
    });
    let host = Host::start(&config(connectors, everything(), 60));
    let agent = mcp_agent(&host.url("/v1/mcp")).await;
    let tools = tools_until(&agent, |t| {
        t.contains(&"keyed_echo".into()) && t.contains(&"analytics_echo".into())
    })
    .await;
    assert!(
        tools.contains(&"keyed_echo".into()) && tools.contains(&"analytics_echo".into()),
        "{tools:?}"
    );
    let r = agent
        .call_tool(call("analytics_echo", json!({"text": "cc"})))
        .await
        .expect("call");
    assert_eq!(text_of(&r), "echo: cc");
    let r = agent
        .call_tool(call("keyed_echo", json!({"text": "key"})))
        .await
        .expect("call");
    assert_eq!(text_of(&r), "echo: key");
    assert_eq!(
        tokens.seen_at("/oauth2/token").len(),
        1,
        "one token serves discovery and calls"
    );
    let logs = host.logs();
    assert!(
        !logs.contains("k-123") && !logs.contains("cc-token") && !logs.contains("secret-example")
    );
    agent.cancel().await.expect("close");
}

#[tokio::test]
async fn an_unreachable_server_lists_nothing_then_recovers() {
    let mut up = McpServer::start(Expect::Nothing).await;
    let connectors = json!({"notes": {"protocol": "mcp", "url": up.url()}});
    let host = Host::start(&config(connectors, everything(), 1));
    let agent = mcp_agent(&host.url("/v1/mcp")).await;
    let tools = tools_until(&agent, |t| t.contains(&"notes_echo".into())).await;
    assert!(tools.contains(&"notes_echo".into()), "{tools:?}");

    up.stop().await;
    let tools = tools_until(&agent, |t| !t.iter().any(|n| n.starts_with("notes_"))).await;
    assert_eq!(
        tools,
        ["aperture_list_connectors"],
        "an unreachable server's tools go away"
    );
    host.wait_for_log("MCP server discovery failed").await;
    let err = agent
        .call_tool(call("notes_echo", json!({})))
        .await
        .expect_err("unavailable");
    assert!(err.to_string().contains("not available"), "{err}");

    up.restart().await;
    let tools = tools_until(&agent, |t| t.contains(&"notes_echo".into())).await;
    assert!(tools.contains(&"notes_echo".into()), "recovered: {tools:?}");
    host.wait_for_log("reachable again").await;
    let r = agent
        .call_tool(call("notes_echo", json!({"text": "back"})))
        .await
        .expect("call");
    assert_eq!(text_of(&r), "echo: back");
    agent.cancel().await.expect("close");
}

#[tokio::test]
async fn a_rejected_credential_leaves_the_list_empty_and_says_why_in_the_log() {
    let up = upstream_with_token("right").await;
    let host = Host::start(&config(
        bearer("notes", &up.url(), "wrong"),
        everything(),
        60,
    ));
    host.wait_for_log("MCP server discovery failed").await;
    let logs = host.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("MCP server discovery failed"))
        .expect("log line");
    assert!(line.contains("notes"), "names the connector: {line}");
    assert!(!logs.contains("wrong"), "the secret stays out of the logs");
    assert!(up.rejected() > 0);
    let agent = mcp_agent(&host.url("/v1/mcp")).await;
    assert_eq!(
        names(&agent.list_all_tools().await.expect("list")),
        ["aperture_list_connectors"]
    );
    // Its status is about authorization, not health: still listed as usable.
    let view = portcullis_e2e::get_json(&host.url("/api/connectors")).await;
    let notes = view["connectors"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["id"] == "notes"))
        .cloned()
        .expect("notes listed");
    assert_eq!(notes["status"], "Ready", "{notes}");
    agent.cancel().await.expect("close");
}

#[tokio::test]
async fn upstream_list_changed_reaches_open_sessions() {
    let up = McpServer::start(Expect::Nothing).await;
    let connectors = json!({"notes": {"protocol": "mcp", "url": up.url()}});
    let host = Host::start(&config(connectors, everything(), 600));
    let agent = mcp_agent(&host.url("/v1/mcp")).await;
    tools_until(&agent, |t| t.contains(&"notes_echo".into())).await;
    let changed = agent.service().tools_changed.clone();
    let r = agent
        .call_tool(call("notes_add_tool", json!({"name": "fresh"})))
        .await
        .expect("call");
    assert_eq!(text_of(&r), "added");
    // Each notification sends the agent to list again, as clients do; the new tool must
    // show up that way well before the next poll (ten minutes away).
    let deadline = Instant::now() + Duration::from_secs(10);
    let tools = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, changed.notified())
            .await
            .expect("notifications/tools/list_changed arrives");
        let tools = names(&agent.list_all_tools().await.expect("list"));
        if tools.contains(&"notes_fresh".into()) {
            break tools;
        }
    };
    assert!(tools.contains(&"notes_fresh".into()), "{tools:?}");
    let r = agent
        .call_tool(call("notes_fresh", json!({})))
        .await
        .expect("call new tool");
    assert_eq!(text_of(&r), "fresh ran");
    agent.cancel().await.expect("close");
}

/// A tool the upstream offers before the gateway has listed it (its notice went to
/// another replica's client, or was never sent) runs when called, because the miss lists
/// the upstream again. Names that exist nowhere stay refused, and a burst of them costs the
/// upstream one listing a second at most.
#[tokio::test]
async fn a_tool_the_gateway_has_not_listed_yet_runs_and_misses_cost_one_listing_a_second() {
    let up = McpServer::start(Expect::Nothing).await;
    let connectors = json!({"notes": {"protocol": "mcp", "url": up.url()}});
    let host = Host::start(&config(connectors, everything(), 600));
    let agent = mcp_agent(&host.url("/v1/mcp")).await;
    tools_until(&agent, |t| t.contains(&"notes_echo".into())).await;

    up.add_tool_unannounced("quiet");
    let r = agent
        .call_tool(call("notes_quiet", json!({})))
        .await
        .expect("a tool the upstream has, not yet listed here, runs");
    assert_eq!(text_of(&r), "quiet ran");
    assert!(
        names(&agent.list_all_tools().await.expect("list")).contains(&"notes_quiet".into()),
        "the listing the miss made is the gateway's catalog from then on"
    );

    let lists_before = up.tool_lists();
    let started = Instant::now();
    for _ in 0..20 {
        let refused = agent
            .call_tool(call("notes_nowhere", json!({})))
            .await
            .expect_err("a tool that exists nowhere is refused");
        assert!(refused.to_string().contains("notes_nowhere"), "{refused}");
    }
    let seconds = started.elapsed().as_secs() as usize;
    let lists = up.tool_lists() - lists_before;
    assert!(
        lists <= seconds + 1,
        "20 misses in {seconds} s listed the upstream {lists} times"
    );
    assert!(
        up.calls().iter().all(|c| c != "nowhere"),
        "a refused name never reaches the upstream"
    );
    agent.cancel().await.expect("close");
}

#[tokio::test]
async fn python_sdk_agent_hears_list_changed_and_gets_large_results() {
    use portcullis_e2e::peers_mcp::python_agent;
    let up = upstream_with_token("tok-1").await;
    let host = Host::start(&config(
        bearer("notes", &up.url(), "tok-1"),
        everything(),
        600,
    ));
    let rust_agent = mcp_agent(&host.url("/v1/mcp")).await;
    tools_until(&rust_agent, |t| t.contains(&"notes_echo".into())).await;
    rust_agent.cancel().await.expect("close");

    // Sessions are answered over SSE (rmcp), and the Python SDK refuses SSE events over
    // 1 MiB, even straight from an upstream; the rmcp agent's 6 MB case is in
    // `large_results_and_restarted_upstreams`.
    const BIG: usize = 1_000_000;
    let results = python_agent(
        &host.url("/v1/mcp"),
        json!([
            {"op": "call_tool", "name": "notes_big", "arguments": {"bytes": BIG}},
            {"op": "call_tool", "name": "notes_add_tool", "arguments": {"name": "pyfresh"}},
            {"op": "wait_tools_changed", "timeout": 10},
            {"op": "list_tools"},
            {"op": "call_tool", "name": "notes_pyfresh", "arguments": {}},
        ]),
    )
    .await;
    let big = results[0]["ok"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(
        big.len(),
        BIG,
        "a 1 MB result arrives whole: {}",
        results[0].to_string().chars().take(300).collect::<String>()
    );
    assert!(big.bytes().all(|b| b == b'x'));
    assert!(
        results[2]["ok"]["count"].as_u64().is_some_and(|n| n >= 1),
        "notifications/tools/list_changed reached the Python SDK: {}",
        results[2]
    );
    let tools: Vec<&str> = results[3]["ok"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(tools.contains(&"notes_pyfresh"), "{tools:?}");
    assert_eq!(
        results[4]["ok"]["content"][0]["text"], "pyfresh ran",
        "{}",
        results[4]
    );
}

#[tokio::test]
async fn a_2026_07_28_agent_lists_calls_and_listens_for_changes_without_a_session() {
    use rmcp::model::SubscriptionFilter;
    let up = McpServer::start(Expect::Nothing).await;
    let connectors = json!({"notes": {"protocol": "mcp", "url": up.url()}});
    let host = Host::start(&config(connectors, everything(), 600));
    let agent = portcullis_e2e::mcp_agent_stateless(&host.url("/v1/mcp")).await;
    tools_until(&agent, |t| t.contains(&"notes_echo".into())).await;
    let r = agent
        .call_tool(call("notes_echo", json!({"text": "no session"})))
        .await
        .expect("call");
    assert_eq!(text_of(&r), "echo: no session");

    let mut sub = agent
        .peer()
        .listen(
            SubscriptionFilter::builder()
                .tools_list_changed()
                .resources_list_changed()
                .build(),
        )
        .await
        .expect("subscriptions/listen is acknowledged");
    assert_eq!(sub.acknowledged().tools_list_changed, Some(true));
    let r = agent
        .call_tool(call("notes_add_tool", json!({"name": "heard"})))
        .await
        .expect("call");
    assert_eq!(text_of(&r), "added");
    let note = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a notification within 10 s")
        .expect("the subscription stays open");
    assert!(
        matches!(
            note,
            Some(rmcp::model::ServerNotification::ToolListChangedNotification(_))
        ),
        "{note:?}"
    );
    let tools = names(&agent.list_all_tools().await.expect("list"));
    assert!(tools.contains(&"notes_heard".into()), "{tools:?}");
    agent.cancel().await.expect("close");
}

#[tokio::test]
async fn large_results_and_restarted_upstreams() {
    let mut up = McpServer::start(Expect::Nothing).await;
    let connectors = json!({"notes": {"protocol": "mcp", "url": up.url()}});
    let host = Host::start(&config(connectors, everything(), 600));
    let agent = mcp_agent(&host.url("/v1/mcp")).await;
    tools_until(&agent, |t| t.contains(&"notes_big".into())).await;
    let r = agent
        .call_tool(call("notes_big", json!({"bytes": 6_000_000})))
        .await
        .expect("big");
    let text = text_of(&r);
    assert_eq!(text.len(), 6_000_000);
    assert!(text.bytes().all(|b| b == b'x'));

    // The upstream restarts and forgets its sessions: the next call still works.
    up.stop().await;
    up.restart().await;
    let r = agent
        .call_tool(call("notes_echo", json!({"text": "again"})))
        .await
        .expect("after restart");
    assert_eq!(text_of(&r), "echo: again");
    agent.cancel().await.expect("close");
}

#[tokio::test]
async fn the_seed_curl_request_lists_prefixed_tools_without_a_session() {
    let up = upstream_with_token("sk-example-token").await;
    let host = Host::start(&config(
        bearer("snowflake", &up.url(), "sk-example-token"),
        everything(),
        60,
    ));
    let deadline = Instant::now() + Duration::from_secs(15);
    let tools = loop {
        let resp = post_raw(&host, None, BOTH).await;
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers().get("mcp-session-id").is_none(),
            "served statelessly"
        );
        let body: Value = resp.json().await.expect("a plain JSON answer");
        let tools: Vec<String> = body["result"]["tools"]
            .as_array()
            .expect("tools array")
            .iter()
            .map(|t| t["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        if tools.iter().any(|t| t == "snowflake_echo") || Instant::now() > deadline {
            break tools;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(tools.contains(&"snowflake_echo".into()), "{tools:?}");

    // Without both media types the request is refused, as the transport requires.
    let resp = post_raw(&host, None, "application/json").await;
    assert_eq!(resp.status(), 406);
    // A Host the config does not allow is refused (DNS-rebinding guard), in JSON.
    let resp = post_raw(&host, Some("evil.example"), BOTH).await;
    assert_eq!(resp.status(), 421);
    let body: serde_json::Value = resp.json().await.expect("JSON error");
    assert_eq!(body["error"]["code"], "unknown_host");
}

#[tokio::test]
async fn python_sdk_agent_through_portcullis_to_server_everything() {
    use portcullis_e2e::peers_mcp::{Everything, python_agent};
    let everything = Everything::start();
    let connectors = bearer("demo", &everything.url(), "demo-token");
    let grants = json!([grant(
        "(loopback)",
        &[
            "demo/tools/echo",
            "demo/tools/get-sum",
            "demo/resources/*",
            "demo/templates/*"
        ],
        false
    )]);
    let host = Host::start(&config(connectors, grants, 60));
    let rust_agent = mcp_agent(&host.url("/v1/mcp")).await;
    let tools = tools_until(&rust_agent, |t| t.contains(&"demo_echo".into())).await;
    assert_eq!(
        tools,
        ["demo_echo", "demo_get-sum"],
        "only granted tools are listed"
    );
    rust_agent.cancel().await.expect("close");

    let results = python_agent(
        &host.url("/v1/mcp"),
        json!([
            {"op": "list_tools"},
            {"op": "call_tool", "name": "demo_echo", "arguments": {"message": "through the gateway"}},
            {"op": "call_tool", "name": "demo_get-sum", "arguments": {"a": 2, "b": 3}},
            {"op": "call_tool", "name": "demo_get-env", "arguments": {}},
            {"op": "list_resources"},
            {"op": "list_templates"},
            {"op": "read_resource", "uri": "demo-demo://resource/dynamic/text/7"},
        ]),
    )
    .await;
    let tools: Vec<&str> = results[0]["ok"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(tools, ["demo_echo", "demo_get-sum"]);
    assert_eq!(
        results[1]["ok"]["content"][0]["text"],
        "Echo: through the gateway"
    );
    assert!(
        results[2]["ok"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .contains('5'),
        "{}",
        results[2]
    );
    assert!(
        results[3]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not available"),
        "an ungranted tool is refused: {}",
        results[3]
    );
    let uris: Vec<&str> = results[4]["ok"]["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["uri"].as_str())
        .collect();
    assert!(
        uris.contains(&"demo-demo://resource/static/document/features.md"),
        "{uris:?}"
    );
    let templates: Vec<&str> = results[5]["ok"]["resourceTemplates"]
        .as_array()
        .expect("templates")
        .iter()
        .filter_map(|r| r["uriTemplate"].as_str())
        .collect();
    assert!(
        templates.contains(&"demo-demo://resource/dynamic/text/{resourceId}"),
        "{templates:?}"
    );
    assert_eq!(
        results[6]["ok"]["contents"][0]["uri"],
        "demo-demo://resource/dynamic/text/7"
    );
    assert!(
        results[6]["ok"]["contents"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Resource 7"),
        "{}",
        results[6]
    );
}

#[tokio::test]
async fn a_legacy_http_sse_server_is_reached_through_the_fallback() {
    use portcullis_e2e::peers_mcp::{Everything, Mode};
    // server-everything's HTTP+SSE mode (MCP 2024-11-05): a POST to /sse is refused with
    // 404, which sends Portcullis to the event stream and the endpoint it names.
    let mut legacy = Everything::start_on(Mode::LegacySse, None);
    let connectors = bearer("old", &legacy.url(), "legacy-token");
    let grants = json!([grant(
        "(loopback)",
        &[
            "old/tools/echo",
            "old/tools/get-sum",
            "old/resources/**",
            "old/templates/**"
        ],
        false
    )]);
    let host = Host::start(&config(connectors, grants, 60));
    let agent = mcp_agent(&host.url("/v1/mcp")).await;
    let tools = tools_until(&agent, |t| t.contains(&"old_echo".into())).await;
    assert_eq!(
        tools,
        ["old_echo", "old_get-sum"],
        "granted tools, prefixed"
    );
    host.wait_for_log("trying LegacySse").await;

    let r = agent
        .call_tool(call("old_echo", json!({"message": "over SSE"})))
        .await
        .expect("call over the legacy transport");
    assert_eq!(text_of(&r), "Echo: over SSE");
    let r = agent
        .call_tool(call("old_get-sum", json!({"a": 40, "b": 2})))
        .await
        .expect("second call on the same session");
    assert!(text_of(&r).contains("42"), "{}", text_of(&r));
    let read = agent
        .read_resource(ReadResourceRequestParams::new(
            "old-demo://resource/dynamic/text/3",
        ))
        .await
        .expect("resource from a template");
    let json = serde_json::to_value(&read).expect("json");
    assert_eq!(
        json["contents"][0]["uri"],
        "old-demo://resource/dynamic/text/3"
    );

    // The server restarts and its event stream ends: the next call opens a new session,
    // straight over HTTP+SSE this time.
    let port = legacy.port;
    legacy.stop();
    let _legacy = Everything::start_on(Mode::LegacySse, Some(port));
    let r = agent
        .call_tool(call("old_echo", json!({"message": "again"})))
        .await
        .expect("call after the server restarted");
    assert_eq!(text_of(&r), "Echo: again");
    assert_eq!(
        host.logs().matches("trying LegacySse").count(),
        1,
        "the transport that worked is remembered"
    );
    agent.cancel().await.expect("close");
}

#[tokio::test]
async fn a_legacy_server_gets_the_credential_on_every_request_and_never_another_origin() {
    use portcullis_e2e::legacy_server::LegacyServer;
    use std::sync::atomic::Ordering::SeqCst;
    let good = LegacyServer::start("legacy-secret", None).await;
    // This one names an endpoint on `elsewhere`, another origin.
    let elsewhere = LegacyServer::start("legacy-secret", None).await;
    let tricky = LegacyServer::start("legacy-secret", Some(elsewhere.base())).await;
    let strict = LegacyServer::start("legacy-secret", None).await;
    let connectors = json!({
        "old": bearer_connector(&good.url(), "legacy-secret"),
        "tricky": bearer_connector(&tricky.url(), "legacy-secret"),
        "wrong": bearer_connector(&strict.url(), "not-the-token"),
    });
    let host = Host::start(&config(connectors, everything(), 60));
    let agent = mcp_agent(&host.url("/v1/mcp")).await;
    let tools = tools_until(&agent, |t| t.contains(&"old_whoami".into())).await;
    assert!(tools.contains(&"old_whoami".into()), "{tools:?}");
    let r = agent
        .call_tool(call("old_whoami", json!({})))
        .await
        .expect("call over HTTP+SSE");
    assert_eq!(text_of(&r), "legacy whoami ran");
    // The event stream and every post (initialize, initialized, tools/list, the call)
    // carried the token; the streamable attempt before them did too.
    assert_eq!(good.seen.rejected.load(SeqCst), 0);
    assert!(good.seen.authorized.load(SeqCst) >= 5);

    host.wait_for_log("another origin").await;
    assert!(
        !tools.iter().any(|t| t.starts_with("tricky_")),
        "a server naming a foreign endpoint lists nothing: {tools:?}"
    );
    assert_eq!(
        elsewhere.seen.requests.load(SeqCst),
        0,
        "nothing, and no credential, went to the other origin"
    );

    // A rejected credential: the stream is refused, nothing is listed, the log says why.
    assert!(!tools.iter().any(|t| t.starts_with("wrong_")), "{tools:?}");
    let logs = host.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("discovery failed") && l.contains("wrong")),
        "{logs}"
    );
    assert!(strict.seen.rejected.load(SeqCst) > 0);
    assert_eq!(strict.seen.authorized.load(SeqCst), 0);

    // Accepted, then the stream closed without an answer: an error that says the call
    // may have run, and it is not sent again.
    let calls = good.seen.calls.load(SeqCst);
    let err = agent
        .call_tool(call("old_vanish", json!({})))
        .await
        .expect_err("no answer");
    assert!(err.to_string().contains("not repeated"), "{err}");
    assert_eq!(good.seen.calls.load(SeqCst), calls + 1, "sent exactly once");
    let r = agent
        .call_tool(call("old_whoami", json!({})))
        .await
        .expect("the next call opens a new session");
    assert_eq!(text_of(&r), "legacy whoami ran");

    let logs = host.logs();
    assert!(
        !logs.contains("legacy-secret") && !logs.contains("not-the-token"),
        "no credential in the logs"
    );
    assert!(!err.to_string().contains("legacy-secret"));
    agent.cancel().await.expect("close");
}

#[tokio::test]
async fn an_answer_slower_than_the_read_timeout_fails_and_the_next_call_works() {
    let up = upstream_with_token("slow-token").await;
    let mut c: Value = serde_json::from_str(&config(
        bearer("notes", &up.url(), "slow-token"),
        everything(),
        60,
    ))
    .expect("json");
    c["egress"]["read_timeout_secs"] = json!(1);
    let host = Host::start(&c.to_string());
    let agent = mcp_agent(&host.url("/v1/mcp")).await;
    tools_until(&agent, |t| t.contains(&"notes_sleep".into())).await;
    let err = agent
        .call_tool(call("notes_sleep", json!({"ms": 3000})))
        .await
        .expect_err("too slow");
    assert!(
        err.to_string().contains("did not answer within 1 s"),
        "{err}"
    );
    assert!(!err.to_string().contains("slow-token"), "{err}");
    let r = agent
        .call_tool(call("notes_echo", json!({"text": "still here"})))
        .await
        .expect("a fresh session answers");
    assert_eq!(text_of(&r), "echo: still here");
    assert!(
        !host.logs().contains("slow-token"),
        "no credential in the logs"
    );
    agent.cancel().await.expect("close");
}

/// A session belongs to the caller who opened it: another tailnet user who learns its id
/// is answered as for an unknown session (a JSON-RPC error for their request), and the
/// owner's session goes on working.
#[tokio::test]
async fn another_callers_session_id_is_answered_as_unknown() {
    const ALICE: &str = "127.0.0.2";
    const BOB: &str = "127.0.0.3";
    let up = upstream_with_token("tok-1").await;
    let whois = Whois::start().await;
    whois.user(ALICE, "alice@example.com", &[], json!({}));
    whois.user(BOB, "bob@example.com", &[], json!({}));
    let host = Host::start(
        &json!({
            "identity": {"mode": "tailscale", "socket": whois.socket, "cache_ttl_secs": 0},
            "egress": {"allow_loopback": true},
            "connectors": {"servers": bearer("notes", &up.url(), "tok-1")},
            "grants": [
                grant("alice@example.com", &["notes/**"], false),
                grant("bob@example.com", &["notes/**"], false),
            ],
        })
        .to_string(),
    );
    let post = |from: &str, session: Option<&str>, body: Value| {
        let mut req = client_from(from)
            .post(host.url("/v1/mcp"))
            .header("accept", BOTH)
            .json(&body);
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        req.send()
    };
    let opened = post(
        ALICE,
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "e2e", "version": "1"}}}),
    )
    .await
    .expect("initialize");
    assert_eq!(opened.status(), 200);
    let session = opened
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .expect("a session id")
        .to_owned();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let resp = post(ALICE, Some(&session), initialized)
        .await
        .expect("initialized");
    assert!(resp.status().is_success(), "{}", resp.status());

    let list = |id: &str| json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"});
    let stolen = post(BOB, Some(&session), list("bob-1")).await.expect("bob");
    assert_eq!(stolen.status(), 404);
    let body: Value = stolen.json().await.expect("a JSON-RPC error");
    assert_eq!(body["id"], "bob-1", "{body}");
    assert_eq!(body["error"]["code"], -32001, "{body}");
    assert_eq!(body["error"]["data"]["code"], "not_found", "{body}");

    let own = post(ALICE, Some(&session), list("alice-2"))
        .await
        .expect("alice");
    assert_eq!(own.status(), 200, "the owner's session is untouched");
    let text = own.text().await.expect("body");
    assert!(text.contains("alice-2"), "{text}");

    // Ending it: another caller cannot, its owner can, once; then it is gone.
    let delete = |from: &str, session: &str| {
        client_from(from)
            .delete(host.url("/v1/mcp"))
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-06-18")
            .send()
    };
    assert_eq!(delete(BOB, &session).await.expect("bob").status(), 404);
    let ended = delete(ALICE, &session).await.expect("end");
    assert!(ended.status().is_success(), "{}", ended.status());
    let again = delete(ALICE, &session).await.expect("again");
    assert_eq!(again.status(), 404, "an ended session is unknown");
    let (status, code, _) = portcullis_e2e::error_of(again).await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
    let made_up = delete(ALICE, "no-such-session").await.expect("made up");
    assert_eq!(made_up.status(), 404, "an unknown session is not accepted");
    let after = post(ALICE, Some(&session), list("alice-3"))
        .await
        .expect("after");
    assert_eq!(after.status(), 404);
}

/// A sessionless `tools/call` with nothing in its `_meta` skips rmcp's per-request
/// service (`mcp::direct`). It must answer exactly as the transport answers the same call
/// with something in its `_meta`, which rmcp serves: granted, refused, unknown, a tool
/// that logs while it runs, a malformed request, on both endpoints and under either
/// protocol-version header. The handler counts both alike.
#[tokio::test]
async fn a_sessionless_tool_call_answers_as_rmcps_transport_answers_it() {
    let up = upstream_with_token("tok-1").await;
    let grants = json!([grant(
        "(loopback)",
        &["notes/tools/echo", "notes/tools/log"],
        // An admin, for /metrics: the admin API is not a connector grant.
        true
    )]);
    let host = Host::start(&config(bearer("notes", &up.url(), "tok-1"), grants, 60));
    let post = |path: &str, body: &Value, version: Option<&str>| {
        let mut req = client()
            .post(host.url(path))
            .header("content-type", "application/json")
            .header("accept", BOTH)
            .body(body.to_string());
        if let Some(v) = version {
            req = req.header("mcp-protocol-version", v);
        }
        async move {
            let resp = req.send().await.expect("post");
            let status = resp.status().as_u16();
            let kind = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            assert!(resp.headers().get("mcp-session-id").is_none());
            let body: Value = resp.json().await.expect("a JSON answer");
            (status, kind, body)
        }
    };
    let call = |id: u32, name: &str, args: Value| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": name, "arguments": args}})
    };
    // Discovery runs in the background: call until the tool is known.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, _, body) = post(
            "/v1/mcp",
            &call(0, "notes_echo", json!({"text": "hi"})),
            None,
        )
        .await;
        if body["result"].is_object() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counted = |outcome: &'static str| {
        let host = &host;
        async move {
            let metrics = portcullis_e2e::metrics_from(host, "127.0.0.1").await;
            let series =
                format!("portcullis_mcp_calls_total{{connector=\"notes\",outcome=\"{outcome}\"}} ");
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&series))
                .map_or(0, |n| n.trim().parse::<u64>().expect("a count"))
        }
    };
    let (ok_before, error_before) = (counted("ok").await, counted("error").await);
    let calls = [
        ("/v1/mcp", call(1, "notes_echo", json!({"text": "hi"}))),
        ("/v1/mcp/notes", call(2, "echo", json!({"text": "one"}))),
        ("/v1/mcp", call(3, "notes_log", json!({}))),
        ("/v1/mcp", call(4, "notes_secret", json!({}))),
        ("/v1/mcp", call(5, "nowhere_tool", json!({}))),
        ("/v1/mcp", call(6, "aperture_list_connectors", json!({}))),
        (
            "/v1/mcp",
            json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": 7}}),
        ),
    ];
    for version in [None, Some("2025-06-18")] {
        for (path, plain) in &calls {
            let direct = post(path, plain, version).await;
            // The same request with a `_meta` entry, which rmcp's transport serves.
            let mut through_rmcp = plain.clone();
            if let Some(params) = through_rmcp["params"].as_object_mut() {
                params.insert("_meta".into(), json!({"example.com/note": "x"}));
            }
            let served = post(path, &through_rmcp, version).await;
            assert_eq!(direct, served, "{path} {plain} ({version:?})");
            assert_eq!(direct.0, 200, "{:?}", direct.2);
            assert_eq!(direct.1, "application/json");
        }
    }
    let (_, _, echoed) = post("/v1/mcp", &calls[0].1, None).await;
    assert_eq!(echoed["id"], 1);
    assert_eq!(
        echoed["result"]["content"][0]["text"], "echo: hi",
        "{echoed}"
    );
    let (_, _, refused) = post("/v1/mcp", &calls[3].1, None).await;
    assert_eq!(refused["error"]["code"], -32602, "{refused}");
    assert!(!up.calls().contains(&"secret".to_owned()), "never reached");
    // Both ways the handler counts the call: three granted tools that ran and one
    // refused, each sent four ways, and the two calls just above.
    assert_eq!(counted("ok").await - ok_before, 3 * 4 + 1);
    assert_eq!(counted("error").await - error_before, 4 + 1);
}

/// A server that names no session at `initialize` gets a session of its own from each
/// connection thread, and calls from a thread then go out on that thread's own upstream
/// connection (the egress pools are per thread); a server that names sessions keeps
/// exactly one, whatever thread its calls come from (a second would split its state).
/// Every call reaches the upstream once, and after the stateless server restarts, calls
/// from every thread still go through. (On a one-core machine the host has one
/// connection thread, and both servers have one session.)
#[tokio::test]
async fn a_stateless_server_gets_a_session_per_connection_thread_a_stateful_one_only_one() {
    let mut lean = McpServer::start_stateless(Expect::Nothing).await;
    let kept = McpServer::start(Expect::Nothing).await;
    let connectors = json!({
        "lean": {"protocol": "mcp", "url": lean.url()},
        "kept": {"protocol": "mcp", "url": kept.url()},
    });
    let host = Host::start(&config(connectors, everything(), 600));
    // The host serves connections on one thread per core, dealt in turn.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Each call on a connection of its own (a fresh client).
    let call = |name: &'static str, text: String| {
        let host = &host;
        async move {
            let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": name, "arguments": {"text": text}}});
            let resp = client()
                .post(host.url("/v1/mcp"))
                .header("content-type", "application/json")
                .header("accept", BOTH)
                .body(body.to_string())
                .send()
                .await
                .expect("post");
            assert_eq!(resp.status(), 200);
            let answer: Value = resp.json().await.expect("a JSON answer");
            answer["result"]["content"][0]["text"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("no text in {answer}"))
        }
    };
    let sent = std::cell::Cell::new(0);
    // `n` calls to each server, each server's back to back: with nothing else connecting,
    // `threads` calls in a row come from every connection thread once.
    let both = |n: usize| {
        let call = &call;
        let start = sent.get();
        sent.set(start + n);
        async move {
            for tool in ["lean_echo", "kept_echo"] {
                for i in start..start + n {
                    assert_eq!(
                        call(tool, format!("{i}")).await,
                        format!("echo: {i}"),
                        "{tool}"
                    );
                }
            }
        }
    };
    // Discovery runs in the background: until both catalogs are in.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (a, b) = (
            call("lean_echo", "x".into()).await,
            call("kept_echo", "x".into()).await,
        );
        if (a == "echo: x" && b == "echo: x") || Instant::now() > deadline {
            assert_eq!((a.as_str(), b.as_str()), ("echo: x", "echo: x"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let warm_up = lean.calls().len();
    // A thread's own session opens in the background on its first call.
    let deadline = Instant::now() + Duration::from_secs(15);
    while lean.initializes() < threads && Instant::now() < deadline {
        both(threads).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        lean.initializes(),
        threads,
        "one session per connection thread"
    );
    let opened = lean.call_peers().len();
    both(8 * threads).await;
    assert_eq!(
        lean.initializes(),
        threads,
        "no more sessions once each thread has one"
    );
    // One shared session would send every call from its own thread's pool: one kept-alive
    // connection for calls made one at a time. (At least: a pool may open another.)
    let peers: std::collections::HashSet<_> = lean.call_peers()[opened..]
        .iter()
        .map(|p| p.expect("the server saw the caller's address"))
        .collect();
    assert!(
        peers.len() >= threads,
        "the calls went out on each thread's own connection: {peers:?}"
    );
    assert_eq!(
        kept.initializes(),
        1,
        "a server that names sessions keeps one"
    );
    assert_eq!(
        lean.calls().len(),
        warm_up + sent.get(),
        "every call reached the stateless server exactly once"
    );

    // The server restarts: its connections break, and calls on every thread still work.
    lean.stop().await;
    lean.restart().await;
    both(4 * threads).await;
    assert_eq!(kept.initializes(), 1);
}
