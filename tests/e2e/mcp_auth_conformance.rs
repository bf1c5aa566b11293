//! The official MCP conformance suite's client auth scenarios with Portcullis as the
//! client under test: for a per-user MCP connector, Portcullis is the upstream server's
//! OAuth client. For each scenario the driver (`tests/peers/conformance/client.mjs`)
//! adds a connector naming only the scenario's server URL (plus the client registered in
//! advance or the client ID metadata document URL the scenario provides), connects it
//! as the user through the scenario's authorization server, and calls the server's tool
//! through `/v1/mcp/<id>`, following the URL elicitation Portcullis sends when the
//! server asks for wider scopes. The suite checks discovery at every metadata location,
//! the 2025-03-26 fallbacks, scope selection and step-up, PKCE, client authentication,
//! pre-registered clients, client ID metadata documents, resource checks,
//! `offline_access`, and (SEP-1046) a shared `oauth2_client_credentials` connector whose
//! token endpoint is discovered, with a secret or a signed client assertion.

use portcullis_e2e::conformance::{self, Check};
use portcullis_e2e::{Host, grant};
use serde_json::json;

use crate::loopback_config;

/// What the suite's authorization servers expect as a client ID metadata document URL
/// (an operator hosting Portcullis's document at an address of their own).
const METADATA_DOCUMENT: &str = "https://conformance-test.local/client-metadata.json";

/// Scenarios Portcullis does not pass, and why (also in docs/configuration.md).
const EXPECTED_FAILURES: &[(&str, &str)] = &[(
    "auth/cross-app-access-complete-flow",
    "SEP-990 enterprise-managed authorization (an ID-JAG token exchange at the enterprise's identity provider): Portcullis identifies users by their tailnet identity and holds no identity-provider token to exchange",
)];

#[tokio::test]
async fn portcullis_passes_the_client_auth_scenarios_of_the_official_conformance_suite() {
    let host = Host::start(&loopback_config(
        json!({}),
        json!([grant("(loopback)", &["**"], true)]),
    ));
    let gateway = host.url("");
    let gateway = gateway.trim_end_matches('/');
    let mut results = std::collections::BTreeMap::new();
    let mut console = String::new();
    for suite in ["auth", "backcompat", "draft", "extensions"] {
        let (r, c) = conformance::run_client_suite(suite, gateway, METADATA_DOCUMENT).await;
        assert!(!r.is_empty(), "the {suite} suite ran scenarios\n{c}");
        results.extend(r);
        console.push_str(&c);
    }
    for needed in [
        "auth/metadata-var3",
        "auth/scope-step-up",
        "auth/pre-registration",
        "auth/basic-cimd",
        "auth/2025-03-26-oauth-metadata-backcompat",
        "auth/2025-03-26-oauth-endpoint-fallback",
        "auth/resource-mismatch",
        "auth/offline-access-scope",
        "auth/client-credentials-basic",
        "auth/client-credentials-jwt",
    ] {
        assert!(
            results.contains_key(needed),
            "{needed} ran: {:?}",
            results.keys()
        );
    }
    let mut not_passed = Vec::new();
    for (scenario, checks) in &results {
        let failed: Vec<&Check> = checks
            .iter()
            .filter(|c| c.status == "FAILURE" || c.status == "WARNING")
            .collect();
        match EXPECTED_FAILURES.iter().find(|(s, _)| s == scenario) {
            // An expected failure that passes means the list (and the docs) are stale.
            Some((_, why)) => assert!(
                !failed.is_empty(),
                "{scenario} was expected to fail ({why}) but passed: update EXPECTED_FAILURES and the docs"
            ),
            None => {
                not_passed.extend(
                    failed
                        .iter()
                        .map(|c| format!("{scenario}/{}: {} {:?}", c.id, c.status, c.error)),
                );
                assert!(
                    checks.iter().any(|c| c.status == "SUCCESS"),
                    "{scenario} passed at least one check: {checks:?}"
                );
            }
        }
    }
    assert!(
        not_passed.is_empty(),
        "conformance checks that did not pass: {not_passed:#?}\n{console}"
    );
    // The step-up went through the in-session URL elicitation, and the server whose
    // metadata names another resource was refused before any authorization.
    let logs = host.logs();
    assert!(
        logs.contains("the resource asks for wider scopes"),
        "step-up was asked for:\n{logs}"
    );
    assert!(
        logs.contains("refusing it (RFC 9728 §3.3)"),
        "the resource mismatch was refused:\n{logs}"
    );
    // Nothing a scenario's servers sent back as a secret reached the log.
    assert!(!logs.contains("test-client-secret"), "{logs}");
}
