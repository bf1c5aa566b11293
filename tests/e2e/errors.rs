//! One error shape: every error the host answers itself is `{"error": {"code",
//! "message"}}`, including what its HTTP framework and the MCP transport would answer in
//! plain text; an upstream's own answers are relayed as they came.

use portcullis_e2e::upstream::Upstream;
use portcullis_e2e::{Host, client, raw};
use serde_json::{Value, json};

use crate::{admin_everything, loopback_config};

/// Status, error code and headers of an answer that must be a JSON error.
async fn json_error(resp: reqwest::Response) -> (u16, String, http::HeaderMap) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body: Value = resp.json().await.expect("a JSON error body");
    let code = body["error"]["code"]
        .as_str()
        .expect("error.code")
        .to_owned();
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    (status, code, headers)
}

#[tokio::test]
async fn framework_and_transport_rejections_are_json_and_upstream_answers_are_not_touched() {
    let up = Upstream::start().await;
    let host = Host::start(&loopback_config(
        json!({"api": {"protocol": "http", "url": up.url()}}),
        admin_everything(),
    ));

    // A route that does not take the method: 405, with what it takes.
    let resp = client()
        .get(host.url("/api/connectors/api/connect"))
        .send()
        .await
        .expect("request");
    let (status, code, headers) = json_error(resp).await;
    assert_eq!((status, code.as_str()), (405, "method_not_allowed"));
    assert!(headers.contains_key("allow"));

    // A path parameter that is not UTF-8.
    let (status, text) = raw::request(host.addr, "POST", "/api/connectors/%FF/connect", &[]).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains(r#""code":"bad_request""#), "{text}");

    // The MCP transport's own refusals.
    let mcp = |accept: &'static str, session: Option<&'static str>| {
        let mut req = client()
            .post(host.url("/v1/mcp"))
            .header("content-type", "application/json")
            .header("accept", accept);
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        req.body(r#"{"jsonrpc": "2.0", "method": "tools/list", "id": 1}"#)
            .send()
    };
    let (status, code, _) = json_error(mcp("application/json", None).await.expect("mcp")).await;
    assert_eq!((status, code.as_str()), (406, "not_acceptable"));
    let both = "application/json, text/event-stream";
    let unknown = mcp(both, Some("no-such-session")).await.expect("mcp");
    let (status, _, _) = json_error(unknown).await;
    assert!(matches!(status, 400 | 404), "{status}");
    let wrong_type = client()
        .post(host.url("/v1/mcp"))
        .header("content-type", "text/plain")
        .header("accept", both)
        .body("x")
        .send()
        .await
        .expect("mcp");
    let (status, code, _) = json_error(wrong_type).await;
    assert_eq!((status, code.as_str()), (415, "unsupported_media_type"));

    // An upstream's error is its own: status and body as it sent them.
    for code in [404, 405, 500] {
        let resp = client()
            .get(host.url(&format!("/v1/connectors/api/__text_status/{code}")))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status().as_u16(), code);
        assert_eq!(
            resp.text().await.expect("body"),
            format!("upstream says {code}")
        );
    }
}
