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

/// Status and body of an answer that must be a JSON-RPC error for the request `call-7`.
async fn jsonrpc_error(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("a JSON-RPC error body");
    assert_eq!(body["jsonrpc"], "2.0", "{body}");
    assert_eq!(body["id"], "call-7", "{body}");
    assert!(body["error"]["code"].is_i64(), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    (status, body)
}

/// An answer to HEAD carries no body, whichever stage wrote it, over HTTP/1.1 and over
/// HTTP/2, where a body would go out as data and break the client's stream.
#[tokio::test]
async fn answers_to_head_carry_no_body_over_either_http_version() {
    let up = Upstream::start().await;
    let host = Host::start(&loopback_config(
        json!({"api": {"protocol": "http", "url": up.url()}}),
        admin_everything(),
    ));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("h2 client");
    for (client, version) in [
        (client(), reqwest::Version::HTTP_11),
        (h2, reqwest::Version::HTTP_2),
    ] {
        // A rejection the host rewrites as JSON (the route takes POST only), a refusal of
        // the browser defence, and an answer of a route.
        let cross_site = client
            .head(host.url("/api/connectors"))
            .header("sec-fetch-site", "cross-site");
        for (req, status) in [
            (client.head(host.url("/api/connectors/api/connect")), 405),
            (cross_site, 403),
            (client.head(host.url("/api/connectors")), 200),
        ] {
            let resp = req.send().await.expect("an answer, not a reset stream");
            assert_eq!(resp.version(), version);
            assert_eq!(resp.status(), status, "{version:?}");
            let body = resp.bytes().await.expect("the answer ends cleanly");
            assert!(body.is_empty(), "{version:?} {status}: {body:?}");
        }
    }
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

    // The MCP transport's own refusals: a JSON-RPC error for the request's id, with the
    // host's error code beside it, so a client can match it to its call.
    let mcp = |accept: &'static str, session: Option<&'static str>| {
        let mut req = client()
            .post(host.url("/v1/mcp"))
            .header("content-type", "application/json")
            .header("accept", accept);
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        req.body(r#"{"jsonrpc": "2.0", "method": "tools/list", "id": "call-7"}"#)
            .send()
    };
    let (status, body) = jsonrpc_error(mcp("application/json", None).await.expect("mcp")).await;
    assert_eq!(status, 406);
    assert_eq!(body["error"]["data"]["code"], "not_acceptable", "{body}");
    assert_eq!(body["error"]["code"], -32600, "{body}");
    let both = "application/json, text/event-stream";
    let (status, body) =
        jsonrpc_error(mcp(both, Some("no-such-session")).await.expect("mcp")).await;
    assert!(matches!(status, 400 | 404), "{status}");
    assert!(body["error"]["data"]["code"].is_string(), "{body}");
    // JSON that does not parse: JSON-RPC's parse error, for no id.
    let garbled = client()
        .post(host.url("/v1/mcp"))
        .header("content-type", "application/json")
        .header("accept", both)
        .body(r#"{"jsonrpc": "2.0", "method": "tools/list", "id": "#)
        .send()
        .await
        .expect("mcp");
    assert_eq!(garbled.status(), 400);
    let body: Value = garbled.json().await.expect("a JSON-RPC error");
    assert_eq!(body["id"], Value::Null, "{body}");
    assert_eq!(body["error"]["code"], -32700, "{body}");
    assert_eq!(body["error"]["data"]["code"], "bad_request", "{body}");
    // Without a request id there is nothing to answer in JSON-RPC: the host's shape.
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
    let stream_without_session = client()
        .get(host.url("/v1/mcp"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("mcp");
    let (status, _, _) = json_error(stream_without_session).await;
    assert!(status >= 400, "{status}");

    // Request heads over the limits: refused by the host in JSON, not by the server bare.
    let long = format!("/v1/connectors/api/{}", "a".repeat(9 * 1024));
    let (status, text) = raw::request(host.addr, "GET", &long, &[]).await;
    assert_eq!(status, 414, "{text}");
    assert!(text.contains(r#""code":"uri_too_long""#), "{text}");
    let big = "v".repeat(16 * 1024);
    let headers: Vec<(&str, &str)> = ["x-a", "x-b", "x-c", "x-d", "x-e"]
        .into_iter()
        .map(|h| (h, big.as_str()))
        .collect();
    let (status, text) = raw::request(host.addr, "GET", "/v1/connectors/api/x", &headers).await;
    assert_eq!(status, 431, "{text}");
    assert!(text.contains(r#""code":"headers_too_large""#), "{text}");
    let names: Vec<String> = (0..150).map(|i| format!("x-h{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let (status, text) = raw::request(host.addr, "GET", "/v1/connectors/api/x", &many).await;
    assert_eq!(status, 431, "{text}");
    assert!(text.contains(r#""code":"headers_too_large""#), "{text}");

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
