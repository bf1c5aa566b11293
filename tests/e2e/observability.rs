//! Request logs (route, path, connector, caller, method, status, latency; header names,
//! never values), what the log leaves out by default, and `/metrics`.

use portcullis_e2e::mcp_server::{Expect, McpServer};
use portcullis_e2e::upstream::Upstream;
use portcullis_e2e::{Host, HostOptions, client, error_at, grant, mcp_agent_stateless};
use serde_json::json;

use crate::loopback_config;

#[tokio::test]
async fn request_log_names_headers_but_never_values_or_secrets() {
    let up = Upstream::start().await;
    let connectors = json!({"api": {"protocol": "http", "url": up.url(), "auth": {"type": "bearer_token", "secret": "never-log-this-secret"}}});
    let host = Host::start(&loopback_config(
        connectors,
        json!([grant("(loopback)", &["api/**"], true)]),
    ));
    let resp = client()
        .get(host.url("/v1/connectors/api/items?api_key=query-secret"))
        .header("authorization", "Bearer caller-secret-token")
        .header("x-trace", "trace-value")
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 200);
    let logs = host.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("route=\"proxy\""))
        .unwrap_or_else(|| panic!("no request log:\n{logs}"));
    for field in [
        "path=\"/v1/connectors/api/items\"",
        "connector=\"api\"",
        "caller=\"(loopback)\"",
        "method=GET",
        "status=200",
        "latency_us=",
        "upstream_us=",
        "authorization",
        "x-trace",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    for secret in [
        "never-log-this-secret",
        "caller-secret-token",
        "trace-value",
        "query-secret",
    ] {
        assert!(!logs.contains(secret), "{secret} was logged");
    }
}

/// With no `RUST_LOG` and stderr a file: plain text (no colour codes), one line per
/// request with its route and path, none of the MCP library's own lines (per-session
/// INFO, an upstream's instructions, a dead upstream's worker errors), a dead upstream's
/// failure once and with its connector, and each config warning once.
#[tokio::test]
async fn logs_are_plain_lines_a_person_can_read() {
    let up = McpServer::start(Expect::Nothing).await;
    let dead = portcullis_e2e::refused_port();
    let connectors = json!({
        "docs": {"protocol": "mcp", "url": up.url()},
        "gone": {"protocol": "mcp", "url": format!("http://127.0.0.1:{}/mcp", dead.port)},
    });
    let mut host = Host::start_with(
        &loopback_config(connectors, json!([grant("(loopback)", &["**"], true)])),
        HostOptions {
            env_remove: vec!["RUST_LOG".into(), "NO_COLOR".into()],
            ..Default::default()
        },
    );
    // The catalog is discovered in the background; this asks for it now.
    let caps = portcullis_e2e::get_json(&host.url("/api/connectors/docs/capabilities")).await;
    assert!(
        caps["tools"].as_array().is_some_and(|t| !t.is_empty()),
        "{caps}"
    );
    let agent = mcp_agent_stateless(&host.url("/v1/mcp")).await;
    let tools = agent.list_all_tools().await.expect("tools/list");
    assert!(tools.iter().any(|t| t.name == "docs_echo"), "{tools:?}");
    drop(agent);
    // Long enough for the dead upstream to be retried a few times.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let logs = host.stop();

    assert!(!logs.contains('\u{1b}'), "colour codes in a file:\n{logs}");
    for noise in [
        "Service initialized",
        "serve_inner",
        "worker quit",
        "instructions",
    ] {
        assert!(!logs.contains(noise), "library noise {noise:?}:\n{logs}");
    }
    let mcp = logs
        .lines()
        .find(|l| l.contains("route=\"mcp\""))
        .unwrap_or_else(|| panic!("no MCP request line:\n{logs}"));
    assert!(mcp.contains("path=\"/v1/mcp\""), "{mcp}");
    let failures: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("discovery failed"))
        .collect();
    assert_eq!(failures.len(), 1, "the dead upstream once:\n{logs}");
    assert!(
        failures[0].contains("connector=\"gone\""),
        "{}",
        failures[0]
    );
    assert_eq!(
        logs.matches("loopback upstreams are allowed").count(),
        1,
        "the allow_loopback warning once:\n{logs}"
    );
}

#[tokio::test]
async fn metrics_in_prometheus_format_for_admins_only() {
    let up = Upstream::start().await;
    let connectors = json!({"api": {"protocol": "http", "url": up.url()}});
    let host = Host::start(&loopback_config(
        connectors.clone(),
        json!([grant("(loopback)", &["api/**"], true)]),
    ));
    client()
        .get(host.url("/v1/connectors/api/x"))
        .send()
        .await
        .expect("req");
    client()
        .get(host.url("/v1/connectors/api/y"))
        .send()
        .await
        .expect("req");
    let resp = client()
        .get(host.url("/metrics"))
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("application/openmetrics-text")
    );
    let text = resp.text().await.expect("text");
    assert!(
        text.contains(
            "portcullis_requests_total{route=\"proxy\",connector=\"api\",status=\"200\"} 2"
        ),
        "{text}"
    );
    assert!(
        text.contains("# TYPE portcullis_request_duration_seconds histogram"),
        "{text}"
    );

    let host = Host::start(&loopback_config(
        connectors,
        json!([grant("(loopback)", &["api/**"], false)]),
    ));
    let (s, code, _) = error_at(&host.url("/metrics")).await;
    assert_eq!((s, code.as_str()), (403, "forbidden"));
}

/// What operators alert on: each upstream request by connector and outcome, with its
/// latency; MCP tool calls by connector and outcome; whether each shared MCP upstream
/// answers.
#[tokio::test]
async fn metrics_per_connector_for_upstreams_and_mcp_calls() {
    use rmcp::model::CallToolRequestParams;

    let api = Upstream::start().await;
    let docs = McpServer::start(Expect::Nothing).await;
    let dead = portcullis_e2e::refused_port();
    let connectors = json!({
        "api": {"protocol": "http", "url": api.url()},
        "docs": {"protocol": "mcp", "url": docs.url()},
        "gone": {"protocol": "mcp", "url": format!("http://127.0.0.1:{}/mcp", dead.port)},
    });
    let host = Host::start(&loopback_config(
        connectors,
        json!([grant("(loopback)", &["**"], true)]),
    ));
    for path in ["/v1/connectors/api/x", "/v1/connectors/api/y"] {
        client().get(host.url(path)).send().await.expect("proxy");
    }
    // Both MCP upstreams asked at least once (the dead one fails).
    for id in ["docs", "gone"] {
        portcullis_e2e::get(&host.url(&format!("/api/connectors/{id}/capabilities"))).await;
    }
    let agent = mcp_agent_stateless(&host.url("/v1/mcp")).await;
    let ok = agent
        .call_tool(
            CallToolRequestParams::new("docs_echo").with_arguments(
                json!({"text": "hi"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ),
        )
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    let missing = agent
        .call_tool(CallToolRequestParams::new("docs_nosuch"))
        .await;
    assert!(missing.is_err(), "{missing:?}");
    // A tool of a connector that does not exist mints no series.
    let _ = agent
        .call_tool(CallToolRequestParams::new("invented_tool"))
        .await;
    drop(agent);

    let text = portcullis_e2e::metrics_from(&host, "127.0.0.1").await;
    for line in [
        "portcullis_upstream_requests_total{connector=\"api\",outcome=\"2xx\"} 2",
        "portcullis_upstream_duration_seconds_count{connector=\"api\"} 2",
        "portcullis_mcp_calls_total{connector=\"docs\",outcome=\"ok\"} 1",
        "portcullis_mcp_calls_total{connector=\"docs\",outcome=\"error\"} 1",
        "portcullis_upstream_up{connector=\"docs\"} 1",
        "portcullis_upstream_up{connector=\"gone\"} 0",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    assert!(
        text.lines().any(|l| l.starts_with(
            "portcullis_upstream_requests_total{connector=\"gone\",outcome=\"error\"}"
        )),
        "a refused connection counts as an error:\n{text}"
    );
    assert!(!text.contains("invented"), "{text}");
}
