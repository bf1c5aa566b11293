//! The audit trail: every use of a connector or tool (granted, with the grant and the
//! outcome, or denied) and every admin change (who, what changed), one JSON object per
//! line in the `--audit-log` file, never a secret; without a file, in the log.

use std::time::{Duration, Instant};

use portcullis_e2e::mcp_server::{Expect, McpServer};
use portcullis_e2e::upstream::Upstream;
use portcullis_e2e::{Host, HostOptions, client, grant, mcp_agent};
use rmcp::model::{CallToolRequestParams, ReadResourceRequestParams};
use serde_json::{Value, json};

use crate::loopback_config;

/// The audit file's records, once there are at least `n` (the writer is asynchronous).
async fn records(path: &std::path::Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn find<'a>(records: &'a [Value], what: &[(&str, &str)]) -> &'a Value {
    records
        .iter()
        .find(|r| what.iter().all(|(k, v)| r[*k] == *v))
        .unwrap_or_else(|| panic!("no record with {what:?} in {records:#?}"))
}

#[tokio::test]
async fn calls_denials_and_admin_changes_are_audited_without_secrets() {
    let up = Upstream::start().await;
    let notes = McpServer::start(Expect::Nothing).await;
    let dir = tempfile::tempdir().expect("tmp");
    let audit = dir.path().join("audit.jsonl");
    let connectors = json!({
        "api": {"protocol": "http", "url": up.url(), "auth": {"type": "bearer_token", "secret": "audit-never-this"}},
        "other": {"protocol": "http", "url": up.url()},
        "notes": {"protocol": "mcp", "url": notes.url()},
    });
    let host = Host::start_with(
        &loopback_config(
            connectors,
            json!([grant(
                "(loopback)",
                &["api/**", "aperture/**", "notes/templates/**"],
                true
            )]),
        ),
        HostOptions {
            env: vec![("PORTCULLIS_AUDIT_LOG".into(), audit.display().to_string())],
            ..Default::default()
        },
    );

    let ok = client()
        .get(host.url("/v1/connectors/api/items?key=query-never-this"))
        .send()
        .await
        .expect("granted");
    assert_eq!(ok.status(), 200);
    let denied = client()
        .post(host.url("/v1/connectors/other/things"))
        .send()
        .await
        .expect("denied");
    assert_eq!(denied.status(), 403);

    let agent = mcp_agent(&host.url("/v1/mcp")).await;
    agent
        .call_tool(CallToolRequestParams::new("aperture_list_connectors"))
        .await
        .expect("tool");
    // The shared upstream's catalog loads in the background after start.
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent
        .list_all_resource_templates()
        .await
        .expect("templates")
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the notes catalog never loaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent
        .read_resource(ReadResourceRequestParams::new("notes-mem://notes/42"))
        .await
        .expect("a resource from the granted template");
    agent
        .read_resource(ReadResourceRequestParams::new("notes-mem://notes/readme"))
        .await
        .expect_err("a listed resource needs its own grant");
    agent.cancel().await.expect("close");

    let http = client();
    let set = http
        .put(host.url("/api/secrets/spare"))
        .json(&json!({"value": "secret-value-never-this"}))
        .send()
        .await
        .expect("secret");
    assert_eq!(set.status(), 200);
    let added = http
        .put(host.url("/api/config/connectors/extra"))
        .header("if-none-match", "*")
        .json(
            &json!({"protocol": "http", "url": "https://extra.example.com",
            "auth": {"type": "bearer_token", "secret": "inline-never-this"}}),
        )
        .send()
        .await
        .expect("add connector");
    assert_eq!(
        added.status(),
        201,
        "{}",
        added.text().await.unwrap_or_default()
    );

    let all = records(&audit, 7).await;
    let call = find(&all, &[("event", "call"), ("connector", "api")]);
    assert_eq!(call["caller"], "(loopback)");
    assert_eq!(call["via"], "proxy");
    assert_eq!(call["target"], "GET /items", "method and path, no query");
    assert_eq!(call["grant"], "grants[0] api/**");
    assert_eq!(call["outcome"], "200");
    assert!(
        call["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{call}"
    );

    let refused = find(&all, &[("event", "call"), ("connector", "other")]);
    assert_eq!(refused["outcome"], "denied");
    assert_eq!(refused["grant"], Value::Null);
    assert_eq!(refused["target"], "POST /things");

    let tool = find(&all, &[("event", "call"), ("via", "tool")]);
    assert_eq!(tool["connector"], "aperture");
    assert_eq!(tool["target"], "list_connectors");
    assert_eq!(tool["grant"], "grants[0] aperture/**");
    assert_eq!(tool["outcome"], "ok");

    let read = find(&all, &[("via", "resource"), ("outcome", "ok")]);
    assert_eq!(read["connector"], "notes");
    assert_eq!(read["target"], "mem://notes/42");
    assert_eq!(read["grant"], "grants[0] notes/templates/**");
    let unlisted = find(&all, &[("via", "resource"), ("outcome", "denied")]);
    assert_eq!(unlisted["target"], "mem://notes/readme");
    assert_eq!(unlisted["grant"], Value::Null);

    let secret = find(&all, &[("event", "admin"), ("action", "secret.set")]);
    assert_eq!(secret["changed"], json!(["spare"]));
    let save = find(&all, &[("event", "admin"), ("action", "connector.add")]);
    assert_eq!(save["caller"], "(loopback)");
    let changed: Vec<&str> = save["changed"]
        .as_array()
        .expect("changed")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        changed.contains(&"connectors.servers.extra (added)"),
        "{changed:?}"
    );
    assert!(
        changed
            .iter()
            .any(|c| c.starts_with("vault secret extra_secret")),
        "the inline secret's vault name is said: {changed:?}"
    );

    let text = std::fs::read_to_string(&audit).expect("audit");
    for secret in [
        "audit-never-this",
        "query-never-this",
        "secret-value-never-this",
        "inline-never-this",
    ] {
        assert!(!text.contains(secret), "{secret} reached the audit log");
    }
    // The file holds it all: the log does not repeat it.
    assert!(!host.logs().contains("audit {"), "{}", host.logs());
}

#[tokio::test]
async fn without_a_file_the_audit_trail_goes_to_the_log() {
    let up = Upstream::start().await;
    let host = Host::start_with(
        &loopback_config(
            json!({"api": {"protocol": "http", "url": up.url()}}),
            json!([grant("(loopback)", &["api/**"], true)]),
        ),
        // The trail is not a diagnostic: a quiet log keeps it.
        HostOptions {
            env: vec![("RUST_LOG".into(), "warn".into())],
            ..Default::default()
        },
    );
    let resp = client()
        .get(host.url("/v1/connectors/api/x"))
        .send()
        .await
        .expect("call");
    assert_eq!(resp.status(), 200);
    host.wait_for_log("audit {").await;
    let logs = host.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("audit {"))
        .expect("audit line");
    let record: Value =
        serde_json::from_str(&line[line.find('{').expect("json")..]).expect("JSON record");
    assert_eq!(record["connector"], "api");
    assert_eq!(record["grant"], "grants[0] api/**");
}

#[test]
fn an_audit_log_that_cannot_be_opened_stops_start_up() {
    let dir = tempfile::tempdir().expect("tmp");
    let err = Host::try_start(
        &loopback_config(json!({}), json!([grant("(loopback)", &["**"], true)])),
        HostOptions {
            env: vec![(
                "PORTCULLIS_AUDIT_LOG".into(),
                dir.path()
                    .join("missing/dir/audit.jsonl")
                    .display()
                    .to_string(),
            )],
            data_dir: Some(dir.path().join("data")),
            ..Default::default()
        },
    )
    .err()
    .expect("start-up fails");
    assert!(err.contains("cannot open the audit log"), "{err}");
    assert!(
        !dir.path().join("data/master.key").exists(),
        "checked before a master key is made"
    );
}
