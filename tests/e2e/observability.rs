//! Request logs (connector, caller, method, status, latency; header names, never values)
//! and `/metrics`.

use portcullis_e2e::upstream::Upstream;
use portcullis_e2e::{Host, client, error_at, grant};
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
        "connector=\"api\"",
        "caller=\"(loopback)\"",
        "method=GET",
        "status=200",
        "latency_us=",
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
