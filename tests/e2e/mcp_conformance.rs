//! The official MCP conformance suite (`@modelcontextprotocol/conformance`): every one
//! of its server scenarios, pending ones included, run against a connector's own
//! endpoint `/v1/mcp/<id>`, whose upstream implements the scenarios' reference tools,
//! resources and prompts. What the suite checks is then the gateway's relay: content of
//! every type, logging, progress, sampling and elicitation routed back to the calling
//! client, resumable SSE streams, JSON Schema 2020-12 kept intact, resource
//! subscriptions, prompts, completion, and its own DNS-rebinding defence.

use portcullis_e2e::conformance::{self, Check};
use portcullis_e2e::{Host, grant};
use serde_json::json;

use crate::loopback_config;

#[tokio::test]
async fn every_server_scenario_of_the_official_conformance_suite_passes_through_a_connectors_endpoint()
 {
    let upstream = conformance::Upstream::start();
    let connectors = json!({"conf": {"protocol": "mcp", "url": upstream.url()}});
    let host = Host::start(&loopback_config(
        connectors,
        json!([grant("(loopback)", &["conf/**"], false)]),
    ));

    let mut expected = conformance::server_scenarios().await;
    expected.sort();
    assert!(
        expected.len() >= 30,
        "the suite lists its server scenarios: {expected:?}"
    );
    let (results, console) = conformance::run_server_suite(&host.url("/v1/mcp/conf")).await;

    let ran: Vec<&String> = results.keys().collect();
    assert_eq!(
        ran,
        expected.iter().collect::<Vec<_>>(),
        "every server scenario ran\n{console}"
    );
    // Warnings count too: they are the suite's SHOULDs (SSE priming events, retry).
    let not_passed: Vec<String> = results
        .iter()
        .flat_map(|(scenario, checks)| {
            checks
                .iter()
                .filter(|c| c.status == "FAILURE" || c.status == "WARNING")
                .map(move |c: &Check| format!("{scenario}/{}: {} {:?}", c.id, c.status, c.error))
        })
        .collect();
    assert!(
        not_passed.is_empty(),
        "conformance checks that did not pass: {not_passed:#?}\n{console}"
    );
    for (scenario, checks) in &results {
        assert!(
            checks.iter().any(|c| c.status == "SUCCESS"),
            "{scenario} passed at least one check: {checks:?}"
        );
    }
    drop(host);
}
