//! OpenTelemetry traces, opt-in through the standard `OTEL_*` environment: an OTLP/HTTP
//! collector stand-in on loopback receives a trace that continues the agent's
//! `traceparent`, with the gateway's server span and its client span to the upstream,
//! whose `traceparent` the upstream received; no secret, query or header value in any
//! span. Without the environment, nothing is exported and nothing is injected.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use portcullis_e2e::upstream::Upstream;
use portcullis_e2e::{Host, HostOptions, client, get_json, grant};
use serde_json::{Value, json};

use crate::loopback_config;

/// Accepts OTLP/HTTP JSON exports at `/v1/traces` and keeps every span.
struct Collector {
    url: String,
    bodies: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route(
                "/v1/traces",
                axum::routing::post(
                    |State(b): State<Arc<Mutex<Vec<String>>>>, body: String| async move {
                        b.lock().expect("lock").push(body);
                        axum::Json(json!({}))
                    },
                ),
            )
            .with_state(bodies.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, bodies, task }
    }

    /// Every span received so far, with its resource's attributes.
    fn spans(&self) -> Vec<(Value, Value)> {
        let mut out = Vec::new();
        for body in self.bodies.lock().expect("lock").iter() {
            let export: Value = serde_json::from_str(body).expect("OTLP JSON");
            for rs in export["resourceSpans"].as_array().into_iter().flatten() {
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for span in ss["spans"].as_array().into_iter().flatten() {
                        out.push((rs["resource"].clone(), span.clone()));
                    }
                }
            }
        }
        out
    }

    fn raw(&self) -> String {
        self.bodies.lock().expect("lock").join("\n")
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const AGENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_trace_spans_agent_gateway_and_upstream() {
    use portcullis_e2e::mcp_server::{Expect, McpServer};
    let collector = Collector::start().await;
    let up = Upstream::start().await;
    let notes = McpServer::start(Expect::Nothing).await;
    let host = Host::start_with(
        &loopback_config(
            json!({"api": {"protocol": "http", "url": up.url(),
                "auth": {"type": "bearer_token", "secret": "trace-never-this"}},
                "notes": {"protocol": "mcp", "url": notes.url()}}),
            json!([grant("(loopback)", &["api/**", "notes/**"], true)]),
        ),
        HostOptions {
            env: vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), collector.url.clone()),
                ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/json".into()),
                ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
                // Spans are not diagnostics: a quiet log keeps them.
                ("RUST_LOG".into(), "warn".into()),
            ],
            ..Default::default()
        },
    );
    let echo: Value = client()
        .get(host.url("/v1/connectors/api/items?key=query-never-this"))
        .header("traceparent", format!("00-{TRACE_ID}-{AGENT_SPAN}-01"))
        .header("x-agent", "header-never-this")
        .send()
        .await
        .expect("call")
        .json()
        .await
        .expect("echo");
    let sent = echo["headers"]["traceparent"][0]
        .as_str()
        .unwrap_or_else(|| panic!("the upstream got no traceparent: {echo}"))
        .to_owned();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!(
        parts[1], TRACE_ID,
        "the upstream continues the agent's trace"
    );
    assert_ne!(parts[2], AGENT_SPAN, "as a child of the gateway's span");

    let deadline = Instant::now() + Duration::from_secs(15);
    let (server, upstream) = loop {
        let spans = collector.spans();
        let server = spans
            .iter()
            .find(|(_, s)| s["traceId"] == TRACE_ID && s["parentSpanId"] == AGENT_SPAN)
            .cloned();
        let upstream = spans
            .iter()
            .find(|(_, s)| s["traceId"] == TRACE_ID && s["spanId"] == parts[2])
            .cloned();
        if let (Some(a), Some(b)) = (&server, &upstream) {
            break (a.clone(), b.clone());
        }
        assert!(
            Instant::now() < deadline,
            "the collector did not receive both spans: {spans:#?}\n{}",
            host.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (resource, server) = server;
    let (_, upstream) = upstream;
    assert_eq!(server["kind"], 2, "SPAN_KIND_SERVER: {server}");
    assert_eq!(upstream["kind"], 3, "SPAN_KIND_CLIENT: {upstream}");
    assert_eq!(upstream["parentSpanId"], server["spanId"]);
    assert_eq!(
        attribute(&server, "http.route"),
        Some(&json!({"stringValue": "proxy"}))
    );
    assert_eq!(
        attribute(&server, "url.path"),
        Some(&json!({"stringValue": "/v1/connectors/api/items"})),
        "the path without its query"
    );
    assert_eq!(server["name"], "GET proxy", "named by route, not by URL");
    let status = attribute(&server, "http.response.status_code").map(|v| v["intValue"].to_string());
    assert!(
        matches!(status.as_deref(), Some("\"200\"" | "200")),
        "{server}"
    );
    assert_eq!(
        attribute(&upstream, "portcullis.connector"),
        Some(&json!({"stringValue": "api"}))
    );
    assert_eq!(
        attribute(&upstream, "server.address"),
        Some(&json!({"stringValue": "127.0.0.1"}))
    );
    let service = resource["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["key"] == "service.name")
        .map(|a| a["value"]["stringValue"].clone());
    assert_eq!(service, Some(json!("portcullis")));
    let raw = collector.raw();
    for secret in ["trace-never-this", "query-never-this", "header-never-this"] {
        assert!(!raw.contains(secret), "{secret} was exported");
    }

    // Each request's audit record names its trace: a proxied request, and a tool call
    // through /v1/mcp (which the MCP library runs on a task of its own).
    const TOOL_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    let called: Value = client()
        .post(host.url("/v1/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("traceparent", format!("00-{TOOL_TRACE}-{AGENT_SPAN}-01"))
        .body(
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": "notes_echo", "arguments": {"text": "hi"}}})
            .to_string(),
        )
        .send()
        .await
        .expect("tools/call")
        .json()
        .await
        .expect("a JSON answer");
    assert!(called["result"].is_object(), "{called}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let record = |connector: &str| {
        host.logs()
            .lines()
            .filter_map(|l| l.split_once(" audit ").map(|(_, r)| r.to_owned()))
            .filter_map(|r| serde_json::from_str::<Value>(&r).ok())
            .find(|r| r["event"] == "call" && r["connector"] == connector)
    };
    let (proxied, tool) = loop {
        if let (Some(p), Some(t)) = (record("api"), record("notes")) {
            break (p, t);
        }
        assert!(
            Instant::now() < deadline,
            "no audit record of both calls:\n{}",
            host.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(proxied["trace_id"], TRACE_ID, "{proxied}");
    assert_eq!(tool["via"], "tool", "{tool}");
    assert_eq!(tool["trace_id"], TOOL_TRACE, "{tool}");
}

#[tokio::test]
async fn without_the_environment_nothing_is_traced() {
    let up = Upstream::start().await;
    let host = Host::start(&loopback_config(
        json!({"api": {"protocol": "http", "url": up.url()}}),
        json!([grant("(loopback)", &["api/**"], true)]),
    ));
    let echo = get_json(&host.url("/v1/connectors/api/items")).await;
    assert!(
        echo["headers"].get("traceparent").is_none(),
        "no trace context is made up: {echo}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let logs = loop {
        let logs = host.logs();
        if logs.contains(r#""event":"call""#) || Instant::now() > deadline {
            break logs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        logs.contains(r#""event":"call""#),
        "the call is audited:\n{logs}"
    );
    assert!(!logs.contains("trace_id"), "and names no trace:\n{logs}");
}
