//! `oauth2_client_credentials` against a real authorization server (`oidc-provider`):
//! minting, caching, one token request however many requests wait, expiry, and the
//! failure modes (endpoint down, redirecting, credentials refused), none of which may
//! leak the client secret.

use std::sync::Arc;
use std::time::Duration;

use portcullis_e2e::oidc::{CC_CLIENT, CC_SECRET, Oidc};
use portcullis_e2e::upstream::Upstream;
use portcullis_e2e::{Host, client, error_at, error_of};
use serde_json::{Value, json};

use crate::{admin_everything, loopback_config};

pub fn cc_connector(up: &Upstream, token_url: &str, secret: &str) -> Value {
    json!({"analytics": {
        "protocol": "http",
        "url": up.url(),
        "description": "Analytics API (read-only)",
        "auth": {
            "type": "oauth2_client_credentials",
            "client_id": CC_CLIENT,
            "client_secret": secret,
            "token_url": token_url,
            "scopes": ["read:data"],
        },
    }})
}

async fn authorization(host: &Host) -> String {
    let resp = client()
        .get(host.url("/v1/connectors/analytics/report"))
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 200);
    let e: Value = resp.json().await.expect("json");
    e["headers"]["authorization"][0]
        .as_str()
        .expect("authorization injected")
        .to_owned()
}

#[tokio::test]
async fn token_minted_once_for_many_concurrent_requests_and_reused() {
    let oidc = Oidc::start(3600);
    let up = Upstream::start().await;
    let host = Arc::new(Host::start(&loopback_config(
        cc_connector(&up, &oidc.token_url(), CC_SECRET),
        admin_everything(),
    )));
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let host = host.clone();
        tasks.push(tokio::spawn(async move { authorization(&host).await }));
    }
    let mut seen = std::collections::HashSet::new();
    for t in tasks {
        seen.insert(t.await.expect("task"));
    }
    assert_eq!(seen.len(), 1, "every request carries the same token");
    let token = seen.into_iter().next().expect("one");
    assert!(token.starts_with("Bearer ") && token.len() > 20, "{token}");
    assert_eq!(oidc.token_requests().await, 1, "exactly one token request");
    assert_eq!(authorization(&host).await, token);
    assert_eq!(oidc.token_requests().await, 1);
    let logs = host.logs();
    assert!(!logs.contains(CC_SECRET), "client secret logged");
    assert!(!logs.contains(&token[7..]), "access token logged");
}

#[tokio::test]
async fn token_renewed_shortly_before_expiry() {
    let oidc = Oidc::start(3);
    let up = Upstream::start().await;
    let host = Host::start(&loopback_config(
        cc_connector(&up, &oidc.token_url(), CC_SECRET),
        admin_everything(),
    ));
    let first = authorization(&host).await;
    assert_eq!(authorization(&host).await, first);
    assert_eq!(oidc.token_requests().await, 1);
    // A 3 s token is used until 0.6 s before it expires.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let second = authorization(&host).await;
    assert_ne!(second, first);
    assert_eq!(oidc.token_requests().await, 2);
}

#[tokio::test]
async fn token_endpoint_down_is_502_without_leaking_the_secret() {
    let up = Upstream::start().await;
    let down = portcullis_e2e::refused_port();
    let host = Host::start(&loopback_config(
        cc_connector(
            &up,
            &format!("http://127.0.0.1:{}/token", down.port),
            CC_SECRET,
        ),
        admin_everything(),
    ));
    let resp = client()
        .get(host.url("/v1/connectors/analytics/x"))
        .send()
        .await
        .expect("req");
    let (s, code, msg) = error_of(resp).await;
    assert_eq!((s, code.as_str()), (502, "credential_unavailable"));
    assert!(
        msg.contains("analytics") && msg.contains("unreachable"),
        "{msg}"
    );
    assert!(!msg.contains(CC_SECRET));
    assert_eq!(up.hits(), 0);
    assert!(!host.logs().contains(CC_SECRET));
}

#[tokio::test]
async fn redirecting_token_endpoint_is_refused_and_never_followed() {
    let oidc = Oidc::start(3600);
    let up = Upstream::start().await;
    // A token URL that redirects to the real endpoint: following it would re-send the secret.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let redirector = listener.local_addr().expect("addr");
    let target = oidc.token_url();
    tokio::spawn(async move {
        let app = axum::Router::new().fallback(move || {
            let target = target.clone();
            async move { axum::response::Redirect::temporary(&target) }
        });
        let _ = axum::serve(listener, app).await;
    });
    let host = Host::start(&loopback_config(
        cc_connector(&up, &format!("http://{redirector}/oauth2/token"), CC_SECRET),
        admin_everything(),
    ));
    let (s, code, msg) = error_at(&host.url("/v1/connectors/analytics/x")).await;
    assert_eq!((s, code.as_str()), (502, "credential_unavailable"));
    assert!(
        msg.contains("redirect") && msg.contains("canonical token endpoint"),
        "{msg}"
    );
    assert_eq!(oidc.token_requests().await, 0, "the redirect was followed");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn refused_client_credentials_are_502_with_the_servers_reason() {
    let oidc = Oidc::start(3600);
    let up = Upstream::start().await;
    let host = Host::start(&loopback_config(
        cc_connector(&up, &oidc.token_url(), "wrong-secret-value"),
        admin_everything(),
    ));
    let (s, code, msg) = error_at(&host.url("/v1/connectors/analytics/x")).await;
    assert_eq!((s, code.as_str()), (502, "credential_unavailable"));
    assert!(msg.contains("invalid_client"), "{msg}");
    assert!(!msg.contains("wrong-secret-value"));
    assert!(!host.logs().contains("wrong-secret-value"));
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn upstream_401_discards_the_cached_token() {
    let oidc = Oidc::start(3600);
    let up = Upstream::start().await;
    let host = Host::start(&loopback_config(
        cc_connector(&up, &oidc.token_url(), CC_SECRET),
        admin_everything(),
    ));
    let first = authorization(&host).await;
    let resp = client()
        .get(host.url("/v1/connectors/analytics/__status/401"))
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 401, "the upstream's 401 is relayed");
    let second = authorization(&host).await;
    assert_ne!(first, second, "a rejected token was reused");
    assert_eq!(oidc.token_requests().await, 2);
}

/// A token endpoint whose error echoes the request it got: the client's credentials in
/// the Authorization header, the secret in a form field. Neither may reach the caller or
/// the log.
#[tokio::test]
async fn a_token_endpoint_echoing_the_request_leaks_no_credential() {
    use base64::Engine as _;
    // `~`, `@` and `/` change the Basic credential: both halves are form-encoded first.
    let secret = "echoed~cc@secret/42";
    let form = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    let basic = b64(format!("{CC_CLIENT}:{secret}"));
    let sent = b64(format!("{}:{}", form(CC_CLIENT), form(secret)));
    let as_ = portcullis_e2e::fixture::Fixture::start().await;
    as_.json(
        "/token",
        401,
        json!({"error": "invalid_client",
               "error_description": format!("no client for Authorization: Basic {basic} (got Authorization=Basic%20{sent}; client_secret={secret}; raw {secret})")}),
    );
    let up = Upstream::start().await;
    let host = Host::start(&loopback_config(
        cc_connector(&up, &format!("{}/token", as_.url()), secret),
        admin_everything(),
    ));
    let (status, _, message) = error_at(&host.url("/v1/connectors/analytics/report")).await;
    assert_eq!(status, 502, "{message}");
    assert!(message.contains("invalid_client"), "{message}");
    for leak in [basic.as_str(), sent.as_str(), secret, "secret%2F42"] {
        assert!(!message.contains(leak), "{message}");
        assert!(!host.logs().contains(leak), "logged");
    }
    assert_eq!(up.hits(), 0);
}
