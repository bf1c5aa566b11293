//! The OpenAPI document: served at `/api/openapi.json`, the same as the checked-in
//! `docs/openapi.json`, and matching the routes. The router takes its paths from the
//! handlers' annotations, so here the running host is asked: every documented operation
//! is routed (not the fallback, not 405), every other method on a documented path is
//! 405, and the few routes written as literals in `app.rs` are documented or aliases.

use portcullis_e2e::upstream::Upstream;
use portcullis_e2e::{Host, client, grant, workspace};
use reqwest::Method;
use serde_json::{Value, json};

use crate::loopback_config;

/// Routes written as literals in the router, and the documented path each is part of.
const ALIASES: &[(&str, &str)] = &[("/", "/ui")];

const METHODS: &[&str] = &["get", "post", "put", "delete", "patch"];

fn concrete(path: &str, id: &str) -> String {
    path.replace("{id}", id)
        .replace("{name}", "never_set")
        .replace("{asset}", "app.js")
        .replace("{path}", "items")
}

#[tokio::test]
async fn the_document_is_checked_in_and_matches_the_routes() {
    let up = Upstream::start().await;
    let host = Host::start(&loopback_config(
        json!({"api": {"protocol": "http", "url": up.url()}}),
        json!([grant("(loopback)", &["**"], true)]),
    ));
    let resp = client()
        .get(host.url("/api/openapi.json"))
        .send()
        .await
        .expect("openapi");
    assert_eq!(resp.status(), 200);
    let doc: Value = resp.json().await.expect("json");
    assert_eq!(doc, portcullis::openapi::document());
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );

    let file = workspace().join("docs/openapi.json");
    let pretty = format!("{}\n", serde_json::to_string_pretty(&doc).expect("pretty"));
    // `PORTCULLIS_UPDATE_DOCS=1` rewrites the checked-in copy after an API change.
    if std::env::var_os("PORTCULLIS_UPDATE_DOCS").is_some() {
        std::fs::write(&file, &pretty).expect("write docs/openapi.json");
    }
    assert!(
        std::fs::read_to_string(&file).unwrap_or_default() == pretty,
        "docs/openapi.json is not what the handlers generate: run the e2e test `openapi::the_document_is_checked_in_and_matches_the_routes` with PORTCULLIS_UPDATE_DOCS=1 and review the difference"
    );

    let paths = doc["paths"].as_object().expect("paths");
    let http = client();
    for (path, item) in paths {
        for method in METHODS {
            let documented = item.get(*method).is_some();
            // DELETE with the connector's ID would remove it: deletes are asked about a
            // connector that does not exist.
            let id = if *method == "delete" { "zz" } else { "api" };
            let url = host.url(&concrete(path, id));
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let resp = http.request(m, &url).send().await.expect("request");
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            if documented {
                assert_ne!(
                    status, 405,
                    "{method} {path} is documented but not routed: {body}"
                );
                assert!(
                    !body.contains("nothing is served at"),
                    "{method} {path} is documented but falls through: {body}"
                );
            } else if path.as_str() != "/v1/connectors/{id}/{path}" {
                assert_eq!(
                    status, 405,
                    "{method} {path} is routed but not documented: {body}"
                );
            }
        }
    }

    // Routes the router writes as literals are documented, or aliases of a documented one.
    let source = std::fs::read_to_string(workspace().join("host/src/app.rs")).expect("app.rs");
    let literals: Vec<&str> = source
        .match_indices(".route(\"")
        .filter_map(|(i, m)| {
            let rest = &source[i + m.len()..];
            rest.find('"').map(|end| &rest[..end])
        })
        .collect();
    assert!(!literals.is_empty(), "no route found in app.rs");
    for literal in literals {
        let documented = paths.contains_key(literal)
            || ALIASES
                .iter()
                .any(|(alias, of)| *alias == literal && paths.contains_key(*of));
        assert!(
            documented,
            "the route {literal} is not in the OpenAPI document"
        );
    }
    // The proxy is routed by the front stages, not the router: its three forms, which the
    // document gives as one, reach it.
    for path in [
        "/v1/connectors/api",
        "/v1/connectors/api/",
        "/v1/connectors/api/x/y",
    ] {
        let resp = http.get(host.url(path)).send().await.expect("request");
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        assert!(
            status != 405 && !body.contains("nothing is served at"),
            "GET {path} does not reach the proxy: {status} {body}"
        );
    }
    assert!(
        paths.contains_key("/v1/mcp"),
        "the MCP endpoint is documented"
    );
}
